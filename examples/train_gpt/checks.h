// Checks train_gpt runs on its options (validate_options in main.cpp) before it loads data or
// allocates a model, so a bad value is reported at once, naming the flag, the value and the
// limit, instead of as std::bad_alloc or NaN weights after the training.
#pragma once

#include <cstdint>
#include <string>

namespace train_gpt {

/// Largest --seq and --channels train_gpt accepts, whatever the memory.
inline constexpr std::int64_t kMaxSeq = 1 << 16;
inline constexpr std::int64_t kMaxChannels = 1 << 15;

/// Throws InvalidArgument "[program] --flag=value must be finite and > 0" unless it is.
void check_finite_positive(const char* program, const char* flag, double value);
/// Throws InvalidArgument "[program] --flag=value must be finite and >= 0 (0: off)" unless it is.
void check_finite_non_negative(const char* program, const char* flag, double value,
                               const char* zero_means);

/// Checks that `path` (the value of --data) is a regular file that can be opened for reading
/// and is not empty; returns its size in bytes. Throws InvalidArgument naming --data otherwise:
///   "[train_gpt] --data='runs' is a directory, expected a text file"
std::uint64_t check_text_file(const char* program, const std::string& path);

/// What a model and its training need, for check_model_fits().
struct ModelSize {
  std::int64_t vocab = 256, seq = 0, layers = 0, heads = 0, channels = 0;
  std::int64_t sequences_in_memory = 0;  ///< sequences whose activations are held at once
  /// The pipeline's P when each rank may be a machine of its own (the MPI transport): a rank
  /// holds about 1/P of the parameters and of the activations, and only that share must fit
  /// its machine. 1: the whole model in this machine's memory.
  std::int64_t shares = 1;
};

/// Checks --seq and --channels against kMaxSeq and kMaxChannels, then the estimated bytes of
/// parameters, gradients, AdamW state and activations (divided by `shares`) against the
/// machine's physical memory.
/// Throws InvalidArgument naming the flags, the values and the limit.
void check_model_fits(const char* program, const ModelSize& size);

/// Checks that `bytes` of byte-level text hold `windows` windows of --seq+1 bytes (the input
/// and its shifted target): "[train_gpt] --seq=4096 x --batch=8 in the training part needs 32769
/// bytes of --data, 'LICENSE' holds 10790" (`windows_text` names the windows: "--batch=8 in
/// the training part"; `bytes` is the size of that part).
void check_data_holds(const char* program, const std::string& data, std::uint64_t bytes,
                      std::int64_t seq, std::int64_t windows, const std::string& windows_text);

}  // namespace train_gpt
