// ReLU and GELU: elementwise, any shape, no parameters.
#include "layer_state.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

// ---- ReLU ------------------------------------------------------------------------------------

ReLU::ReLU(DType dtype, std::string name) : dtype_(dtype), name_(std::move(name)) {
  detail::dispatch_float(dtype_, "ReLU", [](auto) {});
}

std::size_t ReLU::Saved::bytes() const { return detail::bytes_of(input); }

TensorSpec ReLU::output_spec(const TensorSpec& input) const {
  detail::check_dtype(input, dtype_, "ReLU::output_spec", "input");
  return input;
}

Tensor ReLU::run(const Tensor& input, const char* fn) const {
  detail::check_dtype(detail::spec_of(input, fn, "input"), dtype_, fn, "input");
  Tensor out = Tensor::empty(input.shape(), dtype_);
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    const T* x = input.data<T>();
    T* y = out.data<T>();
    // x < 0 rather than x > 0 so that NaN stays NaN.
    for (std::int64_t i = 0; i < input.numel(); ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
  });
  return out;
}

Tensor ReLU::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "ReLU::forward";
  detail::check_new(saved_, mb, kFn);
  Tensor out = run(input, kFn);
  saved_[mb].input = input;
  return out;
}

Tensor ReLU::infer(const Tensor& input) { return run(input, "ReLU::infer"); }

Tensor ReLU::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "ReLU::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, {s.input.shape(), dtype_}, kFn);
  Tensor grad_input = Tensor::empty(s.input.shape(), dtype_);
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    const T* x = s.input.data<T>();
    const T* dy = grad_output.data<T>();
    T* dx = grad_input.data<T>();
    for (std::int64_t i = 0; i < s.input.numel(); ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
  });
  s.input = Tensor();  // backward_weight has nothing to compute
  s.input_done = true;
  return grad_input;
}

void ReLU::backward_weight(MicrobatchId mb) {
  saved_.erase(detail::for_weight(saved_, mb, "ReLU::backward_weight"));
}

std::size_t ReLU::bytes_kept() const { return detail::bytes_kept(saved_); }

// ---- GELU ------------------------------------------------------------------------------------

GELU::GELU(DType dtype, std::string name) : dtype_(dtype), name_(std::move(name)) {
  detail::dispatch_float(dtype_, "GELU", [](auto) {});
}

std::size_t GELU::Saved::bytes() const { return detail::bytes_of(input); }

TensorSpec GELU::output_spec(const TensorSpec& input) const {
  detail::check_dtype(input, dtype_, "GELU::output_spec", "input");
  return input;
}

Tensor GELU::run(const Tensor& input, const char* fn) const {
  detail::check_dtype(detail::spec_of(input, fn, "input"), dtype_, fn, "input");
  Tensor out = Tensor::empty(input.shape(), dtype_);
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::gelu_forward<T>(out.data<T>(), input.data<T>(), input.numel());
  });
  return out;
}

Tensor GELU::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "GELU::forward";
  detail::check_new(saved_, mb, kFn);
  Tensor out = run(input, kFn);
  saved_[mb].input = input;
  return out;
}

Tensor GELU::infer(const Tensor& input) { return run(input, "GELU::infer"); }

Tensor GELU::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "GELU::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, {s.input.shape(), dtype_}, kFn);
  Tensor grad_input = Tensor::empty(s.input.shape(), dtype_);
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::gelu_backward<T>(grad_input.data<T>(), s.input.data<T>(), grad_output.data<T>(),
                          s.input.numel());
  });
  s.input = Tensor();  // backward_weight has nothing to compute
  s.input_done = true;
  return grad_input;
}

void GELU::backward_weight(MicrobatchId mb) {
  saved_.erase(detail::for_weight(saved_, mb, "GELU::backward_weight"));
}

std::size_t GELU::bytes_kept() const { return detail::bytes_kept(saved_); }

}  // namespace pipetrain::nn
