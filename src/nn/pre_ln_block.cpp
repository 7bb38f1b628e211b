// PreLnBlock: x + attn(ln1(x)), then + mlp(ln2(.)); the inner layers' split backwards chained
// through the two residual adds.
#include <initializer_list>

#include "attention_util.h"
#include "layer_state.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/attention.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

namespace {

// Checks the constructor's arguments; returns channels (for the initialiser list).
std::int64_t checked(std::int64_t channels, std::int64_t heads, std::int64_t hidden, DType dtype) {
  constexpr const char* kFn = "PreLnBlock";
  detail::check_heads(channels, heads, dtype, kFn);
  PIPETRAIN_CHECK_ARG(hidden >= 1, kFn, "hidden=", hidden, " must be >= 1");
  return channels;
}

// a += b over two tensors of one shape and dtype (a is the block's own, kept by no layer).
void add_to(Tensor& a, const Tensor& b, DType dtype, const char* fn) {
  detail::dispatch_float(dtype, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::residual_forward<T>(a.data<T>(), a.data<T>(), b.data<T>(), a.numel());
  });
}

}  // namespace

PreLnBlock::PreLnBlock(std::int64_t channels, std::int64_t heads, std::int64_t hidden, DType dtype,
                       std::uint64_t seed, std::string name)
    : channels_(checked(channels, heads, hidden, dtype)),
      dtype_(dtype),
      name_(std::move(name)),
      ln1_(channels, 1e-5, dtype, detail::param_name(name_, "ln1")),
      attn_(channels, heads, true, dtype, seed, detail::param_name(name_, "attn")),
      ln2_(channels, 1e-5, dtype, detail::param_name(name_, "ln2")),
      mlp_(channels, hidden, true, dtype, seed, detail::param_name(name_, "mlp")) {}

std::vector<Parameter*> PreLnBlock::parameters() {
  std::vector<Parameter*> out;
  for (Layer* layer : std::initializer_list<Layer*>{&ln1_, &attn_, &ln2_, &mlp_}) {
    for (Parameter* p : layer->parameters()) out.push_back(p);
  }
  return out;
}

TensorSpec PreLnBlock::output_spec(const TensorSpec& input) const {
  detail::check_sequence(input, channels_, dtype_, "PreLnBlock::output_spec", "input");
  return input;
}

Tensor PreLnBlock::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "PreLnBlock::forward";
  detail::check_new(saved_, mb, kFn);
  const TensorSpec spec = detail::spec_of(input, kFn, "input");
  detail::check_sequence(spec, channels_, dtype_, kFn, "input");
  try {
    // The attention's and the Mlp's outputs are fresh tensors kept by no layer: the residual
    // adds write into them.
    Tensor mid = attn_.forward(mb, ln1_.forward(mb, input));
    add_to(mid, input, dtype_, kFn);
    Tensor out = mlp_.forward(mb, ln2_.forward(mb, mid));
    add_to(out, mid, dtype_, kFn);
    saved_[mb].input = spec;
    return out;
  } catch (...) {
    ln1_.release(mb);
    attn_.release(mb);
    ln2_.release(mb);
    mlp_.release(mb);
    throw;
  }
}

Tensor PreLnBlock::infer(const Tensor& input) {
  constexpr const char* kFn = "PreLnBlock::infer";
  detail::check_sequence(detail::spec_of(input, kFn, "input"), channels_, dtype_, kFn, "input");
  Tensor mid = attn_.infer(ln1_.infer(input));
  add_to(mid, input, dtype_, kFn);
  Tensor out = mlp_.infer(ln2_.infer(mid));
  add_to(out, mid, dtype_, kFn);
  return out;
}

Tensor PreLnBlock::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "PreLnBlock::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, s.input, kFn);
  // Checked above: the inner layers cannot refuse, so a throw here is out of memory only.
  // The LayerNorms' input gradients are fresh tensors kept by no layer: the residual adds
  // write into them (the attention keeps grad_mid, so nothing writes into it afterwards).
  Tensor grad_mid = ln2_.backward_input(mb, mlp_.backward_input(mb, grad_output));
  add_to(grad_mid, grad_output, dtype_, kFn);
  Tensor grad_input = ln1_.backward_input(mb, attn_.backward_input(mb, grad_mid));
  add_to(grad_input, grad_mid, dtype_, kFn);
  s.input_done = true;
  return grad_input;
}

void PreLnBlock::backward_weight(MicrobatchId mb) {
  auto it = detail::for_weight(saved_, mb, "PreLnBlock::backward_weight");
  mlp_.backward_weight(mb);
  ln2_.backward_weight(mb);
  attn_.backward_weight(mb);
  ln1_.backward_weight(mb);
  saved_.erase(it);
}

void PreLnBlock::release(MicrobatchId mb) {
  saved_.erase(mb);
  ln1_.release(mb);
  attn_.release(mb);
  ln2_.release(mb);
  mlp_.release(mb);
}

std::size_t PreLnBlock::bytes_kept() const {
  return ln1_.bytes_kept() + attn_.bytes_kept() + ln2_.bytes_kept() + mlp_.bytes_kept();
}

void PreLnBlock::begin_step(std::int64_t step) {
  ln1_.begin_step(step);
  attn_.begin_step(step);
  ln2_.begin_step(step);
  mlp_.begin_step(step);
}

}  // namespace pipetrain::nn
