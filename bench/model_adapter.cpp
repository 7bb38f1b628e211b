#include "model_adapter.h"

#include "pipetrain/nn/gpt.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/tensor.h"

namespace bench_gpt {
namespace {

using pipetrain::Tensor;

class Gpt final : public LanguageModel {
 public:
  explicit Gpt(const ModelShape& shape) {
    config_.vocab_size = shape.vocab_size;
    config_.context_length = shape.max_seq_len;
    config_.num_layers = shape.layers;
    config_.num_heads = shape.heads;
    config_.channels = shape.channels;
    config_.seed = shape.seed;
    model_ = pipetrain::nn::make_model(config_);
  }

  // One microbatch in flight at a time, so a fixed id will do.
  double forward(const pipetrain::data::Batch& batch) override {
    const pipetrain::Microbatch mb = pipetrain::data::to_microbatch(batch);
    const pipetrain::TensorList logits = model_->forward(0, mb.inputs);
    return loss_.forward(0, logits, mb.targets);
  }

  void backward(double loss_scale) override { model_->backward(0, loss_.backward(0, loss_scale)); }

  double evaluate(const pipetrain::data::Batch& batch) override {
    const pipetrain::Microbatch mb = pipetrain::data::to_microbatch(batch);
    return loss_.evaluate(model_->infer(mb.inputs), mb.targets);
  }

  std::vector<float> next_token_logits(std::span<const pipetrain::data::Token> context) override {
    const auto n = static_cast<int>(context.size());
    const Tensor logits = model_->infer({Tensor::from_vector(
        std::vector<pipetrain::data::Token>(context.begin(), context.end()), {1, n})})[0];
    const std::vector<float> all = logits.to_vector<float>();
    const auto v = static_cast<std::size_t>(config_.vocab_size);
    return std::vector<float>(all.end() - static_cast<std::ptrdiff_t>(v), all.end());
  }

  std::vector<pipetrain::nn::Parameter*> parameters() override { return model_->parameters(); }

  double train_flops(std::int64_t n_tokens, int seq_len) const override {
    // Per token and layer, forward: qkv 2*C*3C, projection 2*C*C, MLP 2*(2*C*4C) = 24 C^2, and
    // attention scores + weighted values 2 * 2*T*C: the full T x T products, the usual count,
    // though the kernel now computes only the causal blocks (10/16 of them at T = 128 in blocks of
    // 32; docs/performance.md gives both readings).
    // Head: 2*C*V. Backward costs twice the forward.
    const double c = static_cast<double>(config_.channels);
    const double per_token = static_cast<double>(config_.num_layers) *
                                 (24.0 * c * c + 4.0 * seq_len * c) +
                             2.0 * c * static_cast<double>(config_.vocab_size);
    return 3.0 * per_token * static_cast<double>(n_tokens);
  }

 private:
  pipetrain::nn::GptConfig config_;
  std::unique_ptr<pipetrain::nn::GptStage> model_;
  pipetrain::nn::CrossEntropyLoss loss_;
};

}  // namespace

std::unique_ptr<LanguageModel> make_gpt(const ModelShape& shape) {
  return std::make_unique<Gpt>(shape);
}

}  // namespace bench_gpt
