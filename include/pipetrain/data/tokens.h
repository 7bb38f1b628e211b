// pipetrain/data/tokens.h: token sequences from text files and llm.c token files.
//
// A token is a std::int32_t index into a vocabulary. Two sources:
//   - any text file, read byte by byte: vocabulary 256, token = byte value (kByteVocabSize);
//   - llm.c token files (.bin): a header of 256 little-endian int32 values (magic 20240520,
//     version 1, token count in header[2]) followed by exactly that many little-endian uint16
//     tokens.
// Loading reads the whole file into memory.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace pipetrain::data {

using Token = std::int32_t;

/// Vocabulary size of byte-level tokens: every byte value is its own token.
inline constexpr int kByteVocabSize = 256;

/// llm.c token file constants.
inline constexpr std::int32_t kLlmcMagic = 20240520;
inline constexpr std::int32_t kLlmcVersion = 1;
inline constexpr std::size_t kLlmcHeaderInts = 256;
inline constexpr std::size_t kLlmcHeaderBytes = kLlmcHeaderInts * sizeof(std::int32_t);

/// Byte-level encoding: one token per byte, value 0..255.
std::vector<Token> encode_bytes(std::string_view text);

/// Inverse of encode_bytes. Throws InvalidArgument when a token is outside 0..255:
///   "[decode_bytes] token[3]=300 must be in [0, 256)"
std::string decode_bytes(std::span<const Token> tokens);

/// Reads a text file as byte tokens.
/// Throws Error when the file cannot be opened or read ("[load_text_tokens] cannot open 'p'"),
/// ParseError when it is empty ("[load_text_tokens] 'p': file is empty, expected at least 1 byte").
std::vector<Token> load_text_tokens(const std::filesystem::path& path);

/// Reads an llm.c token file. Never reads past the end of the file. Throws Error when the file
/// cannot be opened, ParseError naming the path, the field and the values when it is malformed:
///   "[load_llmc_tokens] 'p': file holds 100 bytes, the header needs 1024"
///   "[load_llmc_tokens] 'p': header[0] magic=7 must be 20240520"
///   "[load_llmc_tokens] 'p': header[1] version=2 must be 1"
///   "[load_llmc_tokens] 'p': header[2] token count=-1 must be >= 0"
///   "[load_llmc_tokens] 'p': header[2] token count=10 needs 20 token bytes, the file holds 12"
/// (the last also when the file holds more bytes than the header claims).
std::vector<Token> load_llmc_tokens(const std::filesystem::path& path);

/// Writes `tokens` as an llm.c token file (header then uint16 tokens).
/// Throws InvalidArgument when a token is outside 0..65535 or there are more than INT32_MAX,
/// Error when the file cannot be written.
void save_llmc_tokens(const std::filesystem::path& path, std::span<const Token> tokens);

/// Entropy of the unigram (single-token frequency) distribution of `tokens`, in nats:
/// -sum p(t) ln p(t). This is the loss (cross-entropy, nats per token) of the best model that
/// ignores context, so a language model that learned anything beats it.
/// Throws InvalidArgument when `tokens` is empty or holds a negative token.
double unigram_entropy_nats(std::span<const Token> tokens);

}  // namespace pipetrain::data
