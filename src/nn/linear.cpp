#include <cmath>

#include "layer_state.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/init.h"
#include "pipetrain/nn/layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

Linear::Linear(std::int64_t in_features, std::int64_t out_features, bool bias, DType dtype,
               std::uint64_t seed, std::string name)
    : in_(in_features), out_(out_features), has_bias_(bias), dtype_(dtype), name_(std::move(name)) {
  constexpr const char* kFn = "Linear";
  PIPETRAIN_CHECK_ARG(in_ >= 1, kFn, "in_features=", in_, " must be >= 1");
  PIPETRAIN_CHECK_ARG(out_ >= 1, kFn, "out_features=", out_, " must be >= 1");
  detail::dispatch_float(dtype_, kFn, [](auto) {});
  weight_ = make_parameter(detail::param_name(name_, "weight"), {out_, in_}, true, dtype_);
  // PyTorch's nn.Linear.reset_parameters: kaiming_uniform(a = sqrt(5)) for the weight, whose
  // bound is exactly 1 / sqrt(fan_in), and the same bound for the bias.
  const double bound = 1.0 / std::sqrt(static_cast<double>(in_));
  init_uniform(weight_, -bound, bound, seed);
  if (has_bias_) {
    bias_ = make_parameter(detail::param_name(name_, "bias"), {out_}, false, dtype_);
    init_uniform(bias_, -bound, bound, seed);
  }
}

std::vector<Parameter*> Linear::parameters() {
  if (has_bias_) return {&weight_, &bias_};
  return {&weight_};
}

std::size_t Linear::Saved::bytes() const {
  return detail::bytes_of(input) + detail::bytes_of(grad_output);
}

TensorSpec Linear::output_spec(const TensorSpec& input) const {
  detail::check_features(input, in_, dtype_, "Linear::output_spec", "input");
  TensorSpec out = input;
  out.shape.back() = out_;
  return out;
}

Tensor Linear::run(const Tensor& input, const char* fn) const {
  const TensorSpec spec = detail::spec_of(input, fn, "input");
  detail::check_features(spec, in_, dtype_, fn, "input");
  Shape shape = spec.shape;
  shape.back() = out_;
  Tensor out = Tensor::empty(std::move(shape), dtype_);
  const std::int64_t n = input.numel() / in_;
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_forward<T>(out.data<T>(), input.data<T>(), weight_.value.data<T>(),
                           has_bias_ ? bias_.value.data<T>() : nullptr, n, in_, out_);
  });
  return out;
}

Tensor Linear::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "Linear::forward";
  detail::check_new(saved_, mb, kFn);
  Tensor out = run(input, kFn);
  saved_[mb].input = input;
  return out;
}

Tensor Linear::infer(const Tensor& input) { return run(input, "Linear::infer"); }

Tensor Linear::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "Linear::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, output_spec({s.input.shape(), dtype_}), kFn);
  Tensor grad_input = Tensor::empty(s.input.shape(), dtype_);
  const std::int64_t n = s.input.numel() / in_;
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_backward_input<T>(grad_input.data<T>(), grad_output.data<T>(),
                                  weight_.value.data<T>(), n, in_, out_);
  });
  s.grad_output = grad_output;
  s.input_done = true;
  return grad_input;
}

void Linear::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "Linear::backward_weight";
  auto it = detail::for_weight(saved_, mb, kFn);
  const Saved& s = it->second;
  const std::int64_t n = s.input.numel() / in_;
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_backward_weight<T>(weight_.grad.data<T>(),
                                   has_bias_ ? bias_.grad.data<T>() : nullptr,
                                   s.grad_output.data<T>(), s.input.data<T>(), n, in_, out_);
  });
  saved_.erase(it);
}

std::size_t Linear::bytes_kept() const { return detail::bytes_kept(saved_); }

}  // namespace pipetrain::nn
