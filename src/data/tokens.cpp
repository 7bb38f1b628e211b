#include "pipetrain/data/tokens.h"

#include <array>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "pipetrain/error.h"

namespace pipetrain::data {
namespace {

std::string quoted(const std::filesystem::path& path) {
  std::string out(1, '\'');
  out += path.string();
  out += '\'';
  return out;
}

// Reads the whole file; the size comes from the stream itself so nothing past the end is read.
std::vector<char> read_file(const std::filesystem::path& path, std::string_view function) {
  // A directory opens as a stream whose size reads as 2^63-1 (then bad_alloc); a FIFO or a
  // device never ends.
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status)) {
    throw Error(detail::message(function, quoted(path), " is ",
                                std::filesystem::is_directory(status) ? "a directory"
                                                                      : "not a regular file",
                                ", expected a data file"));
  }
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw Error(detail::message(function, "cannot open ", quoted(path)));
  const std::streamoff size = in.tellg();
  if (size < 0) throw Error(detail::message(function, "cannot read the size of ", quoted(path)));
  std::vector<char> bytes(static_cast<std::size_t>(size));
  in.seekg(0);
  if (size > 0 && !in.read(bytes.data(), size)) {
    throw Error(detail::message(function, "cannot read ", size, " bytes of ", quoted(path)));
  }
  return bytes;
}

// The file format is little-endian whatever the host is.
std::int32_t read_le_i32(const char* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  std::int32_t out;
  std::memcpy(&out, &v, sizeof out);
  return out;
}

void write_le_i32(std::int32_t value, char* p) {
  std::uint32_t v;
  std::memcpy(&v, &value, sizeof v);
  for (int i = 0; i < 4; ++i) p[i] = static_cast<char>((v >> (8 * i)) & 0xFF);
}

}  // namespace

std::vector<Token> encode_bytes(std::string_view text) {
  std::vector<Token> tokens(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) tokens[i] = static_cast<unsigned char>(text[i]);
  return tokens;
}

std::string decode_bytes(std::span<const Token> tokens) {
  std::string text(tokens.size(), '\0');
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    PIPETRAIN_CHECK_ARG(tokens[i] >= 0 && tokens[i] < kByteVocabSize, "decode_bytes", "token[", i,
                        "]=", tokens[i], " must be in [0, ", kByteVocabSize, ")");
    text[i] = static_cast<char>(static_cast<unsigned char>(tokens[i]));
  }
  return text;
}

std::vector<Token> load_text_tokens(const std::filesystem::path& path) {
  constexpr std::string_view kFn = "load_text_tokens";
  const std::vector<char> bytes = read_file(path, kFn);
  if (bytes.empty()) {
    throw ParseError(
        detail::message(kFn, quoted(path), ": file is empty, expected at least 1 byte"));
  }
  return encode_bytes(std::string_view(bytes.data(), bytes.size()));
}

std::vector<Token> load_llmc_tokens(const std::filesystem::path& path) {
  constexpr std::string_view kFn = "load_llmc_tokens";
  const std::vector<char> bytes = read_file(path, kFn);
  auto fail = [&](const auto&... what) {
    throw ParseError(detail::message(kFn, quoted(path), ": ", what...));
  };
  if (bytes.size() < kLlmcHeaderBytes) {
    fail("file holds ", bytes.size(), " bytes, the header needs ", kLlmcHeaderBytes);
  }
  const std::int32_t magic = read_le_i32(bytes.data());
  const std::int32_t version = read_le_i32(bytes.data() + 4);
  const std::int32_t count = read_le_i32(bytes.data() + 8);
  if (magic != kLlmcMagic) fail("header[0] magic=", magic, " must be ", kLlmcMagic);
  if (version != kLlmcVersion) fail("header[1] version=", version, " must be ", kLlmcVersion);
  if (count < 0) fail("header[2] token count=", count, " must be >= 0");
  const std::size_t payload = bytes.size() - kLlmcHeaderBytes;
  const std::size_t needed = static_cast<std::size_t>(count) * sizeof(std::uint16_t);
  if (payload != needed) {
    fail("header[2] token count=", count, " needs ", needed, " token bytes, the file holds ",
         payload);
  }
  std::vector<Token> tokens(static_cast<std::size_t>(count));
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data() + kLlmcHeaderBytes);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<Token>(p[2 * i] | (p[2 * i + 1] << 8));
  }
  return tokens;
}

void save_llmc_tokens(const std::filesystem::path& path, std::span<const Token> tokens) {
  constexpr std::string_view kFn = "save_llmc_tokens";
  PIPETRAIN_CHECK_ARG(
      tokens.size() <= static_cast<std::size_t>(std::numeric_limits<std::int32_t>::max()), kFn,
      "token count=", tokens.size(), " must be <= 2147483647");
  std::vector<char> bytes(kLlmcHeaderBytes + 2 * tokens.size(), '\0');
  write_le_i32(kLlmcMagic, bytes.data());
  write_le_i32(kLlmcVersion, bytes.data() + 4);
  write_le_i32(static_cast<std::int32_t>(tokens.size()), bytes.data() + 8);
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    PIPETRAIN_CHECK_ARG(tokens[i] >= 0 && tokens[i] <= 65535, kFn, "token[", i, "]=", tokens[i],
                        " must be in [0, 65535]");
    bytes[kLlmcHeaderBytes + 2 * i] = static_cast<char>(tokens[i] & 0xFF);
    bytes[kLlmcHeaderBytes + 2 * i + 1] = static_cast<char>((tokens[i] >> 8) & 0xFF);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(detail::message(kFn, "cannot open '", path.string(), "' for writing"));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw Error(detail::message(kFn, "cannot write '", path.string(), "'"));
}

double unigram_entropy_nats(std::span<const Token> tokens) {
  constexpr std::string_view kFn = "unigram_entropy_nats";
  PIPETRAIN_CHECK_ARG(!tokens.empty(), kFn, "tokens is empty, expected at least 1 token");
  std::vector<std::uint64_t> counts;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    const Token t = tokens[i];
    PIPETRAIN_CHECK_ARG(t >= 0, kFn, "token[", i, "]=", t, " must be >= 0");
    if (static_cast<std::size_t>(t) >= counts.size())
      counts.resize(static_cast<std::size_t>(t) + 1);
    ++counts[static_cast<std::size_t>(t)];
  }
  const double n = static_cast<double>(tokens.size());
  double entropy = 0.0;
  for (std::uint64_t c : counts) {
    if (c == 0) continue;
    const double p = static_cast<double>(c) / n;
    entropy -= p * std::log(p);
  }
  return entropy;
}

}  // namespace pipetrain::data
