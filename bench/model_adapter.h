// bench_model: the narrow view of the GPT one device trains, one microbatch at a time.
//
// bench_model times this loop (forward + backward of the whole model on one thread of
// control) beside OpenBLAS's sgemm; keeping it behind this interface leaves one file
// (model_adapter.cpp) that knows how the library's GPT is called.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/nn/parameter.h"

namespace bench_gpt {

struct ModelShape {
  int vocab_size = 256;
  int max_seq_len = 128;
  int layers = 4;
  int heads = 4;
  int channels = 128;
  std::uint64_t seed = 0;
};

class LanguageModel {
 public:
  virtual ~LanguageModel() = default;

  /// Training forward on one microbatch: logits and loss, activations kept for backward().
  /// Returns the mean cross-entropy (nats/token).
  virtual double forward(const pipetrain::data::Batch& batch) = 0;

  /// Backward of the last forward(): gradients of loss_scale * mean loss are added to the
  /// parameters' gradients. Expects exactly one forward() since the last backward().
  virtual void backward(double loss_scale) = 0;

  /// forward() then backward(loss_scale). Returns the mean cross-entropy, not scaled.
  double forward_backward(const pipetrain::data::Batch& batch, double loss_scale) {
    const double loss = forward(batch);
    backward(loss_scale);
    return loss;
  }

  /// Mean cross-entropy (nats/token) of a batch, without touching gradients.
  virtual double evaluate(const pipetrain::data::Batch& batch) = 0;

  /// Logits of the token that follows `context` (at most max_seq_len tokens).
  virtual std::vector<float> next_token_logits(std::span<const pipetrain::data::Token> context) = 0;

  virtual std::vector<pipetrain::nn::Parameter*> parameters() = 0;

  /// Floating-point operations of one forward + backward pass over `tokens` tokens with
  /// sequence length `seq_len` (matrix products only).
  virtual double train_flops(std::int64_t tokens, int seq_len) const = 0;
};

/// Builds the library's GPT with this shape, initialised from shape.seed.
std::unique_ptr<LanguageModel> make_gpt(const ModelShape& shape);

}  // namespace bench_gpt
