#include "pipetrain/data/batch_sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>

#include "pipetrain/error.h"

namespace pipetrain::data {
namespace {

// Unbiased draw in [0, bound) by rejection (Lemire's multiply-shift would also do); unlike
// std::uniform_int_distribution its result is the same with every standard library.
std::uint64_t draw_below(std::mt19937_64& rng, std::uint64_t bound) {
  const std::uint64_t limit = std::numeric_limits<std::uint64_t>::max() -
                              std::numeric_limits<std::uint64_t>::max() % bound;
  std::uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % bound;
}

// Mixes the epoch into the seed so that consecutive epochs get unrelated orders.
std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

}  // namespace

void shuffle_deterministic(std::span<std::uint64_t> values, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t i = values.size(); i > 1; --i) {
    const std::uint64_t j = draw_below(rng, i);
    std::swap(values[i - 1], values[j]);
  }
}

TokenSplit split_tokens(std::span<const Token> tokens, double validation_fraction) {
  PIPETRAIN_CHECK_ARG(validation_fraction >= 0.0 && validation_fraction < 1.0, "split_tokens",
                      "validation_fraction=", validation_fraction, " must be in [0, 1)");
  const auto n_val = static_cast<std::size_t>(
      std::llround(validation_fraction * static_cast<double>(tokens.size())));
  const std::size_t n_train = tokens.size() - n_val;
  TokenSplit split;
  split.train.assign(tokens.begin(), tokens.begin() + static_cast<std::ptrdiff_t>(n_train));
  split.validation.assign(tokens.begin() + static_cast<std::ptrdiff_t>(n_train), tokens.end());
  return split;
}

std::string SamplerState::to_string() const {
  std::ostringstream out;
  out << "seed=" << seed << " epoch=" << epoch << " cursor=" << cursor;
  return out.str();
}

SamplerState SamplerState::parse(const std::string& text) {
  SamplerState s;
  std::istringstream in(text);
  std::string a, b, c, rest;
  bool ok = static_cast<bool>(in >> a >> b >> c) && !(in >> rest);
  auto field = [&ok](const std::string& word, std::string_view key, std::uint64_t& value) {
    if (!ok || word.size() <= key.size() || word.compare(0, key.size(), key) != 0) {
      ok = false;
      return;
    }
    const std::string digits = word.substr(key.size());
    if (digits.find_first_not_of("0123456789") != std::string::npos || digits.size() > 20) {
      ok = false;
      return;
    }
    try {
      std::size_t used = 0;
      value = std::stoull(digits, &used);
      ok = used == digits.size();
    } catch (const std::exception&) {
      ok = false;
    }
  };
  field(a, "seed=", s.seed);
  field(b, "epoch=", s.epoch);
  field(c, "cursor=", s.cursor);
  if (!ok) {
    throw ParseError(detail::message("SamplerState::parse", "'", text,
                                     "' must be 'seed=<u64> epoch=<u64> cursor=<u64>'"));
  }
  return s;
}

BatchSampler::BatchSampler(std::vector<Token> tokens, int seq_len, int batch_size,
                           std::uint64_t seed, bool shuffle)
    : tokens_(std::move(tokens)),
      seq_len_(seq_len),
      batch_size_(batch_size),
      seed_(seed),
      shuffle_(shuffle) {
  PIPETRAIN_CHECK_ARG(seq_len >= 1, "BatchSampler", "seq_len=", seq_len, " must be >= 1");
  PIPETRAIN_CHECK_ARG(batch_size >= 1, "BatchSampler", "batch_size=", batch_size, " must be >= 1");
  num_windows_ = tokens_.empty() ? 0 : (tokens_.size() - 1) / static_cast<std::size_t>(seq_len);
  PIPETRAIN_CHECK_ARG(num_windows_ >= static_cast<std::size_t>(batch_size), "BatchSampler",
                      tokens_.size(), " tokens hold ", num_windows_, " windows of seq_len=",
                      seq_len, ", fewer than batch_size=", batch_size);
  build_order();
}

void BatchSampler::build_order() {
  order_.resize(num_windows_);
  for (std::size_t i = 0; i < num_windows_; ++i) order_[i] = i;
  if (shuffle_) shuffle_deterministic(order_, splitmix64(seed_ ^ splitmix64(epoch_)));
}

Batch BatchSampler::next() {
  if (cursor_ + static_cast<std::uint64_t>(batch_size_) > num_windows_) {
    ++epoch_;
    cursor_ = 0;
    build_order();
  }
  Batch batch;
  batch.batch_size = batch_size_;
  batch.seq_len = seq_len_;
  const auto t = static_cast<std::size_t>(seq_len_);
  batch.inputs.resize(static_cast<std::size_t>(batch_size_) * t);
  batch.targets.resize(batch.inputs.size());
  for (std::size_t b = 0; b < static_cast<std::size_t>(batch_size_); ++b) {
    const std::size_t start = order_[cursor_ + b] * t;
    std::copy_n(tokens_.begin() + static_cast<std::ptrdiff_t>(start), t,
                batch.inputs.begin() + static_cast<std::ptrdiff_t>(b * t));
    std::copy_n(tokens_.begin() + static_cast<std::ptrdiff_t>(start + 1), t,
                batch.targets.begin() + static_cast<std::ptrdiff_t>(b * t));
  }
  cursor_ += static_cast<std::uint64_t>(batch_size_);
  return batch;
}

SamplerState BatchSampler::state() const { return SamplerState{seed_, epoch_, cursor_}; }

void BatchSampler::restore(const SamplerState& state) {
  PIPETRAIN_CHECK_ARG(state.cursor <= num_windows_, "BatchSampler::restore", "cursor=",
                      state.cursor, " must be <= num_windows=", num_windows_);
  seed_ = state.seed;
  epoch_ = state.epoch;
  cursor_ = state.cursor;
  build_order();
}

void BatchSampler::reset() { restore(SamplerState{seed_, 0, 0}); }

Microbatch to_microbatch(const Batch& batch) {
  const Shape shape{batch.batch_size, batch.seq_len};
  return Microbatch{{Tensor::from_vector(batch.inputs, shape)},
                    {Tensor::from_vector(batch.targets, shape)}};
}

std::vector<Microbatch> to_microbatches(const std::vector<Batch>& batches) {
  std::vector<Microbatch> out;
  out.reserve(batches.size());
  for (const Batch& b : batches) out.push_back(to_microbatch(b));
  return out;
}

}  // namespace pipetrain::data
