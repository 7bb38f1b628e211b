#include "layer_util.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/gpt_layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

GptEmbedding::GptEmbedding(const GptConfig& config)
    : config_(config),
      wte_(make_parameter("wte", {config.vocab_size, config.channels}, true, config.dtype)),
      wpe_(make_parameter("wpe", {config.context_length, config.channels}, true, config.dtype)) {
  config_.validate();
  init_normal(wte_, 0.02, config.seed);
  init_normal(wpe_, 0.02, config.seed);
}

Tensor GptEmbedding::run(const Tensor& input, const char* fn) const {
  detail::check_tokens(input, config_.context_length, fn, "input");
  detail::check_ids(input, config_.vocab_size, fn, "token");
  const std::int64_t b = input.size(0), t = input.size(1), c = config_.channels;
  Tensor out = Tensor::empty({b, t, c}, config_.dtype);
  detail::dispatch_float(config_.dtype, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::embedding_forward<T>(out.data<T>(), input.data<std::int32_t>(), wte_.value.data<T>(),
                              wpe_.value.data<T>(), b, t, c);
  });
  return out;
}

Tensor GptEmbedding::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "GptEmbedding::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  Tensor out = run(input, kFn);
  saved_[mb].tokens = input;
  return out;
}

Tensor GptEmbedding::infer(const Tensor& input) { return run(input, "GptEmbedding::infer"); }

Tensor GptEmbedding::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "GptEmbedding::backward_input";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no saved forward");
  PIPETRAIN_CHECK_ARG(!it->second.grad_output.defined(), kFn, "microbatch ", mb,
                      " already ran backward_input");
  detail::check_activation(grad_output, config_.channels, config_.dtype, kFn, "grad_output");
  const Tensor& tokens = it->second.tokens;
  PIPETRAIN_CHECK_ARG(
      grad_output.size(0) == tokens.size(0) && grad_output.size(1) == tokens.size(1), kFn,
      "grad_output has shape ", shape_to_string(grad_output.shape()), ", expected [",
      tokens.size(0), ", ", tokens.size(1), ", ", config_.channels, "]");
  it->second.grad_output = grad_output;
  return Tensor();
}

void GptEmbedding::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "GptEmbedding::backward_weight";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end() && it->second.grad_output.defined(), kFn, "microbatch ",
                      mb, " has not run backward_input");
  const Saved& s = it->second;
  detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::embedding_backward_weight<T>(wte_.grad.data<T>(), wpe_.grad.data<T>(),
                                      s.grad_output.data<T>(), s.tokens.data<std::int32_t>(),
                                      s.tokens.size(0), s.tokens.size(1), config_.channels);
  });
  saved_.erase(it);
}

std::size_t GptEmbedding::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& [mb, s] : saved_)
    n += detail::bytes_of(s.tokens) + detail::bytes_of(s.grad_output);
  return n;
}

TensorSpec GptEmbedding::output_spec(const TensorSpec& input) const {
  constexpr const char* kFn = "GptEmbedding::output_spec";
  PIPETRAIN_CHECK_ARG(input.dtype == DType::kInt32, kFn, "input has dtype ",
                      to_string(input.dtype), ", expected int32");
  PIPETRAIN_CHECK_ARG(input.shape.size() == 2 && input.shape[0] > 0 && input.shape[1] > 0, kFn,
                      "input has shape ", shape_to_string(input.shape), ", expected [B, T]");
  PIPETRAIN_CHECK_ARG(input.shape[1] <= config_.context_length, kFn, "input has T=",
                      input.shape[1], ", more than context_length=", config_.context_length);
  return {{input.shape[0], input.shape[1], config_.channels}, config_.dtype};
}

}  // namespace pipetrain::nn
