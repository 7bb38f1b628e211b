#include "layer_state.h"
#include "pipetrain/nn/init.h"
#include "pipetrain/nn/layers.h"
#include "random_util.h"

namespace pipetrain::nn {
namespace {

// The key of one (seed, step, microbatch): the mask of element i is decided by
// splitmix64(key + i * golden), i.e. SplitMix64's stream from `key`, so every element is
// decided on its own (counter-based) and the mask needs no state.
std::uint64_t mask_key(std::uint64_t seed, std::int64_t step, MicrobatchId mb) {
  using detail::splitmix64;
  std::uint64_t k = splitmix64(seed);
  k = splitmix64(k ^ static_cast<std::uint64_t>(step));
  return splitmix64(k ^ static_cast<std::uint64_t>(mb));
}

// An element is kept when its 53-bit uniform u in [0, 1) is >= p: probability 1 - p.
bool kept(std::uint64_t key, std::int64_t index, double p) {
  const std::uint64_t h =
      detail::splitmix64(key + static_cast<std::uint64_t>(index) * detail::kGolden);
  return static_cast<double>(h >> 11) * 0x1.0p-53 >= p;
}

void check_floating(const TensorSpec& spec, const char* fn) {
  PIPETRAIN_CHECK_ARG(spec.dtype == DType::kFloat32 || spec.dtype == DType::kFloat64, fn,
                      "input has dtype ", to_string(spec.dtype), ", expected fp32 or fp64");
}

}  // namespace

Dropout::Dropout(double p, std::uint64_t seed, std::string name)
    // Salted like a parameter's stream, so that Dropout layers of one ModelSpec that share a
    // seed still drop different elements (see nn::InitScope).
    : p_(p), seed_(parameter_seed(seed, "dropout")), name_(std::move(name)) {
  PIPETRAIN_CHECK_ARG(p_ >= 0.0 && p_ < 1.0, "Dropout", "p=", p_, " must be in [0, 1)");
}

bool Dropout::keeps(std::int64_t step, MicrobatchId mb, std::int64_t index) const {
  return kept(mask_key(seed_, step, mb), index, p_);
}

TensorSpec Dropout::output_spec(const TensorSpec& input) const {
  check_floating(input, "Dropout::output_spec");
  return input;
}

// x * mask / (1 - p), into a new tensor.
Tensor Dropout::apply(const Tensor& x, std::int64_t step, MicrobatchId mb, const char* fn) const {
  Tensor out = Tensor::empty(x.shape(), x.dtype());
  const std::uint64_t key = mask_key(seed_, step, mb);
  detail::dispatch_float(x.dtype(), fn, [&](auto zero) {
    using T = decltype(zero);
    const T scale = static_cast<T>(1.0 / (1.0 - p_));
    const T* in = x.data<T>();
    T* y = out.data<T>();
    for (std::int64_t i = 0; i < x.numel(); ++i) y[i] = kept(key, i, p_) ? in[i] * scale : T(0);
  });
  return out;
}

Tensor Dropout::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "Dropout::forward";
  detail::check_new(saved_, mb, kFn);
  const TensorSpec spec = detail::spec_of(input, kFn, "input");
  check_floating(spec, kFn);
  Tensor out = apply(input, step_, mb, kFn);
  saved_[mb] = Saved{spec, step_, false};
  return out;
}

Tensor Dropout::infer(const Tensor& input) {
  constexpr const char* kFn = "Dropout::infer";
  check_floating(detail::spec_of(input, kFn, "input"), kFn);
  return input.clone();
}

Tensor Dropout::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "Dropout::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, s.spec, kFn);
  Tensor grad_input = apply(grad_output, s.step, mb, kFn);
  s.input_done = true;
  return grad_input;
}

void Dropout::backward_weight(MicrobatchId mb) {
  saved_.erase(detail::for_weight(saved_, mb, "Dropout::backward_weight"));
}

}  // namespace pipetrain::nn
