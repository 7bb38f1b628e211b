// pipetrain/data/batch_sampler.h: (input, target) windows of a token sequence, in batches.
//
// A sequence of N tokens holds W = (N - 1) / T non-overlapping windows of length T; window w
// starts at token w*T, its input is tokens[w*T, w*T + T) and its target is the same range
// shifted by one token. Each epoch visits every window once, in an order shuffled from the seed
// and the epoch number (or in order when shuffling is off); a batch is B consecutive windows of
// that order, and an epoch ends when fewer than B windows remain.
//
// The shuffle is portable: std::mt19937_64 (whose output the standard fixes) drives a
// Fisher-Yates shuffle with its own unbiased bounded draw, so the same seed gives the same
// batches with every standard library.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "pipetrain/data/tokens.h"
#include "pipetrain/stage.h"

namespace pipetrain::data {

/// Two contiguous parts of a token sequence: the first for training, the tail for validation.
struct TokenSplit {
  std::vector<Token> train;
  std::vector<Token> validation;
};

/// Splits off the last round(validation_fraction * N) tokens as validation data.
/// Throws InvalidArgument unless 0 <= validation_fraction < 1:
///   "[split_tokens] validation_fraction=1.5 must be in [0, 1)"
TokenSplit split_tokens(std::span<const Token> tokens, double validation_fraction);

/// One batch, row-major [batch][seq_len].
struct Batch {
  int batch_size = 0;
  int seq_len = 0;
  std::vector<Token> inputs;
  std::vector<Token> targets;
};

/// The batch as a Microbatch for the runtime: inputs {int32 tokens [b, T]}, targets {int32
/// [b, T]} (copies).
Microbatch to_microbatch(const Batch& batch);
/// to_microbatch() of each batch.
std::vector<Microbatch> to_microbatches(const std::vector<Batch>& batches);

/// The position of a sampler in its data: everything needed to continue where it stopped.
struct SamplerState {
  std::uint64_t seed = 0;
  std::uint64_t epoch = 0;
  std::uint64_t cursor = 0;  ///< index of the next window in this epoch's order

  bool operator==(const SamplerState&) const = default;

  /// "seed=<s> epoch=<e> cursor=<c>", read back by parse().
  std::string to_string() const;
  /// Throws ParseError when `text` is not in the to_string() format:
  ///   "[SamplerState::parse] 'seed=1 epoch=x' must be 'seed=<u64> epoch=<u64> cursor=<u64>'"
  static SamplerState parse(const std::string& text);
};

class BatchSampler {
 public:
  /// Throws InvalidArgument when seq_len < 1 or batch_size < 1:
  ///   "[BatchSampler] seq_len=0 must be >= 1"
  /// or when the tokens hold fewer windows than one batch:
  ///   "[BatchSampler] 100 tokens hold 3 windows of seq_len=32, fewer than batch_size=4"
  BatchSampler(std::vector<Token> tokens, int seq_len, int batch_size, std::uint64_t seed,
               bool shuffle = true);

  /// The next batch; moves to the next epoch (with a new order) when this one is exhausted.
  Batch next();

  /// Where the sampler stands; restore() makes a sampler over the same tokens and sizes
  /// continue with exactly the batches this one would have produced.
  SamplerState state() const;
  /// Throws InvalidArgument when state.cursor > num_windows().
  void restore(const SamplerState& state);
  /// Back to the first batch of epoch 0.
  void reset();

  std::size_t num_windows() const { return num_windows_; }
  std::size_t batches_per_epoch() const {
    return num_windows_ / static_cast<std::size_t>(batch_size_);
  }
  std::uint64_t epoch() const { return epoch_; }
  int seq_len() const { return seq_len_; }
  int batch_size() const { return batch_size_; }
  std::span<const Token> tokens() const { return tokens_; }
  /// The window order of the current epoch (start token index / seq_len for each).
  std::span<const std::uint64_t> order() const { return order_; }

 private:
  void build_order();

  std::vector<Token> tokens_;
  int seq_len_;
  int batch_size_;
  std::uint64_t seed_;
  bool shuffle_;
  std::size_t num_windows_;
  std::uint64_t epoch_ = 0;
  std::uint64_t cursor_ = 0;
  std::vector<std::uint64_t> order_;
};

/// Portable Fisher-Yates shuffle of `values` driven by std::mt19937_64(seed).
void shuffle_deterministic(std::span<std::uint64_t> values, std::uint64_t seed);

}  // namespace pipetrain::data
