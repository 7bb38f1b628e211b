// Mlp: Linear(C, hidden) -> GELU -> Linear(hidden, C), the three layers' split backwards chained.
#include "layer_state.h"
#include "pipetrain/nn/attention.h"

namespace pipetrain::nn {

namespace {

// Checks the constructor's arguments; returns channels (for the initialiser list).
std::int64_t checked(std::int64_t channels, std::int64_t hidden, DType dtype) {
  constexpr const char* kFn = "Mlp";
  PIPETRAIN_CHECK_ARG(channels >= 1, kFn, "channels=", channels, " must be >= 1");
  PIPETRAIN_CHECK_ARG(hidden >= 1, kFn, "hidden=", hidden, " must be >= 1");
  detail::dispatch_float(dtype, kFn, [](auto) {});
  return channels;
}

}  // namespace

Mlp::Mlp(std::int64_t channels, std::int64_t hidden, bool bias, DType dtype, std::uint64_t seed,
         std::string name)
    : channels_(checked(channels, hidden, dtype)),
      hidden_(hidden),
      dtype_(dtype),
      name_(std::move(name)),
      fc_(channels, hidden, bias, dtype, seed, detail::param_name(name_, "fc")),
      gelu_(dtype),
      proj_(hidden, channels, bias, dtype, seed, detail::param_name(name_, "proj")) {}

std::vector<Parameter*> Mlp::parameters() {
  std::vector<Parameter*> out = fc_.parameters();
  for (Parameter* p : proj_.parameters()) out.push_back(p);
  return out;
}

TensorSpec Mlp::output_spec(const TensorSpec& input) const {
  detail::check_features(input, channels_, dtype_, "Mlp::output_spec", "input");
  return input;
}

Tensor Mlp::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "Mlp::forward";
  detail::check_new(saved_, mb, kFn);
  const TensorSpec spec = detail::spec_of(input, kFn, "input");
  detail::check_features(spec, channels_, dtype_, kFn, "input");
  try {
    Tensor out = proj_.forward(mb, gelu_.forward(mb, fc_.forward(mb, input)));
    saved_[mb].input = spec;
    return out;
  } catch (...) {
    fc_.release(mb);
    gelu_.release(mb);
    proj_.release(mb);
    throw;
  }
}

Tensor Mlp::infer(const Tensor& input) {
  constexpr const char* kFn = "Mlp::infer";
  detail::check_features(detail::spec_of(input, kFn, "input"), channels_, dtype_, kFn, "input");
  return proj_.infer(gelu_.infer(fc_.infer(input)));
}

Tensor Mlp::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "Mlp::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, s.input, kFn);
  // Checked above: the inner layers cannot refuse, so a throw here is out of memory only.
  Tensor grad_input =
      fc_.backward_input(mb, gelu_.backward_input(mb, proj_.backward_input(mb, grad_output)));
  s.input_done = true;
  return grad_input;
}

void Mlp::backward_weight(MicrobatchId mb) {
  auto it = detail::for_weight(saved_, mb, "Mlp::backward_weight");
  proj_.backward_weight(mb);
  gelu_.backward_weight(mb);
  fc_.backward_weight(mb);
  saved_.erase(it);
}

void Mlp::release(MicrobatchId mb) {
  saved_.erase(mb);
  fc_.release(mb);
  gelu_.release(mb);
  proj_.release(mb);
}

std::size_t Mlp::bytes_kept() const {
  return fc_.bytes_kept() + gelu_.bytes_kept() + proj_.bytes_kept();
}

void Mlp::begin_step(std::int64_t step) {
  fc_.begin_step(step);
  gelu_.begin_step(step);
  proj_.begin_step(step);
}

}  // namespace pipetrain::nn
