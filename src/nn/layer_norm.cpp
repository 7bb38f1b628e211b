#include <cmath>

#include "layer_state.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

LayerNorm::LayerNorm(std::int64_t features, double eps, DType dtype, std::string name)
    : features_(features), eps_(eps), dtype_(dtype), name_(std::move(name)) {
  constexpr const char* kFn = "LayerNorm";
  PIPETRAIN_CHECK_ARG(features_ >= 1, kFn, "features=", features_, " must be >= 1");
  PIPETRAIN_CHECK_ARG(std::isfinite(eps_) && eps_ > 0.0, kFn, "eps=", eps_,
                      " must be finite and > 0");
  detail::dispatch_float(dtype_, kFn, [](auto) {});
  weight_ = make_parameter(detail::param_name(name_, "weight"), {features_}, false, dtype_);
  bias_ = make_parameter(detail::param_name(name_, "bias"), {features_}, false, dtype_);
  weight_.value.fill(1.0);
}

std::size_t LayerNorm::Saved::bytes() const {
  return detail::bytes_of(input) + detail::bytes_of(mean) + detail::bytes_of(rstd) +
         detail::bytes_of(grad_output);
}

TensorSpec LayerNorm::output_spec(const TensorSpec& input) const {
  detail::check_features(input, features_, dtype_, "LayerNorm::output_spec", "input");
  return input;
}

Tensor LayerNorm::run(const Tensor& input, Saved* saved, const char* fn) const {
  detail::check_features(detail::spec_of(input, fn, "input"), features_, dtype_, fn, "input");
  const std::int64_t n = input.numel() / features_;
  Tensor out = Tensor::empty(input.shape(), dtype_);
  Tensor mean = Tensor::empty({n}, dtype_), rstd = Tensor::empty({n}, dtype_);
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::layernorm_forward<T>(out.data<T>(), mean.data<T>(), rstd.data<T>(), input.data<T>(),
                              weight_.value.data<T>(), bias_.value.data<T>(), n, features_, eps_);
  });
  if (saved != nullptr) {
    saved->input = input;
    saved->mean = std::move(mean);
    saved->rstd = std::move(rstd);
  }
  return out;
}

Tensor LayerNorm::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "LayerNorm::forward";
  detail::check_new(saved_, mb, kFn);
  Saved s;
  Tensor out = run(input, &s, kFn);
  saved_[mb] = std::move(s);
  return out;
}

Tensor LayerNorm::infer(const Tensor& input) { return run(input, nullptr, "LayerNorm::infer"); }

Tensor LayerNorm::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "LayerNorm::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, {s.input.shape(), dtype_}, kFn);
  const std::int64_t n = s.input.numel() / features_;
  Tensor grad_input = Tensor::empty(s.input.shape(), dtype_);
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::layernorm_backward_input<T>(grad_input.data<T>(), grad_output.data<T>(), s.input.data<T>(),
                                     weight_.value.data<T>(), s.mean.data<T>(), s.rstd.data<T>(), n,
                                     features_);
  });
  s.grad_output = grad_output;
  s.input_done = true;
  return grad_input;
}

void LayerNorm::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "LayerNorm::backward_weight";
  auto it = detail::for_weight(saved_, mb, kFn);
  const Saved& s = it->second;
  const std::int64_t n = s.input.numel() / features_;
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::layernorm_backward_weight<T>(weight_.grad.data<T>(), bias_.grad.data<T>(),
                                      s.grad_output.data<T>(), s.input.data<T>(), s.mean.data<T>(),
                                      s.rstd.data<T>(), n, features_);
  });
  saved_.erase(it);
}

std::size_t LayerNorm::bytes_kept() const { return detail::bytes_kept(saved_); }

}  // namespace pipetrain::nn
