#include "checks.h"

#include <algorithm>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "pipetrain/error.h"

namespace train_gpt {
namespace {

std::string human_bytes(long double bytes) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB", "PB", "EB"};
  int u = 0;
  while (bytes >= 1000 && u < 6) {
    bytes /= 1000;
    ++u;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1Lf %s", bytes, units[u]);
  return buf;
}

}  // namespace

void check_finite_positive(const char* program, const char* flag, double value) {
  PIPETRAIN_CHECK_ARG(std::isfinite(value) && value > 0.0, program, flag, "=", value,
                      " must be finite and > 0");
}

void check_finite_non_negative(const char* program, const char* flag, double value,
                               const char* zero_means) {
  PIPETRAIN_CHECK_ARG(std::isfinite(value) && value >= 0.0, program, flag, "=", value,
                      " must be finite and >= 0 (0: ", zero_means, ")");
}

std::uint64_t check_text_file(const char* program, const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  PIPETRAIN_CHECK_ARG(fs::exists(st), program, "--data='", path, "' does not exist");
  PIPETRAIN_CHECK_ARG(!fs::is_directory(st), program, "--data='", path,
                      "' is a directory, expected a text file");
  PIPETRAIN_CHECK_ARG(fs::is_regular_file(st), program, "--data='", path,
                      "' is not a regular file, expected a text file");
  std::ifstream in(path, std::ios::binary);
  PIPETRAIN_CHECK_ARG(static_cast<bool>(in), program, "--data='", path,
                      "' cannot be opened for reading");
  const std::uint64_t size = fs::file_size(path, ec);
  PIPETRAIN_CHECK_ARG(!ec && size > 0, program, "--data='", path, "' is empty");
  return size;
}

void check_model_fits(const char* program, const ModelSize& m) {
  PIPETRAIN_CHECK_ARG(m.seq >= 1 && m.seq <= kMaxSeq, program, "--seq=", m.seq,
                      " must be in [1, ", kMaxSeq, "]");
  PIPETRAIN_CHECK_ARG(m.channels >= 1 && m.channels <= kMaxChannels, program,
                      "--channels=", m.channels, " must be in [1, ", kMaxChannels, "]");
  // Estimate in long double: the products overflow 64-bit integers long before they are
  // rejected. Parameters: embeddings and 12 C^2 + 13 C per block. Each is held four times
  // (value, gradient, AdamW m and v). Activations per sequence and block: about 16 C per
  // position plus the attention scores and probabilities (2 H T per position), and the logits.
  const long double C = m.channels, T = m.seq, L = m.layers, H = m.heads, V = m.vocab;
  const long double params = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C;
  const long double activations =
      static_cast<long double>(m.sequences_in_memory) * T * (L * (16 * C + 2 * H * T) + 2 * V);
  const long double shares = static_cast<long double>(std::max<std::int64_t>(1, m.shares));
  const long double need = 4.0L * (4 * params + activations) / shares;
  const long double have = static_cast<long double>(::sysconf(_SC_PHYS_PAGES)) *
                           static_cast<long double>(::sysconf(_SC_PAGE_SIZE));
  PIPETRAIN_CHECK_ARG(have <= 0 || need <= have, program, "--seq=", m.seq,
                      " --channels=", m.channels, " --layers=", m.layers, " --heads=", m.heads,
                      " need about ", human_bytes(need), m.shares > 1 ? " per rank" : "", " (",
                      human_bytes(16 * params / shares),
                      " for parameters, gradients and AdamW state, ",
                      human_bytes(4 * activations / shares), " for activations), more than the ",
                      human_bytes(have), " of memory of this machine");
}

void check_data_holds(const char* program, const std::string& data, std::uint64_t bytes,
                      std::int64_t seq, std::int64_t windows, const std::string& windows_text) {
  const long double need = static_cast<long double>(seq) * windows + 1;
  PIPETRAIN_CHECK_ARG(need <= static_cast<long double>(bytes), program, "--seq=", seq, " x ",
                      windows_text, " needs ", static_cast<std::uint64_t>(need),
                      " bytes of --data, '", data, "' holds ", bytes);
}

}  // namespace train_gpt
