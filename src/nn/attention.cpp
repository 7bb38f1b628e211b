// CausalSelfAttention: the qkv Linear, the causal attention kernel, the output Linear.
#include "pipetrain/nn/attention.h"
#include "attention_util.h"
#include "layer_state.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

CausalSelfAttention::CausalSelfAttention(std::int64_t channels, std::int64_t heads, bool bias,
                                         DType dtype, std::uint64_t seed, std::string name)
    : channels_(detail::check_heads(channels, heads, dtype, "CausalSelfAttention")),
      heads_(heads),
      dtype_(dtype),
      name_(std::move(name)),
      qkv_(channels, 3 * channels, bias, dtype, seed, detail::param_name(name_, "qkv")),
      proj_(channels, channels, bias, dtype, seed, detail::param_name(name_, "proj")) {}

std::vector<Parameter*> CausalSelfAttention::parameters() {
  std::vector<Parameter*> out = qkv_.parameters();
  for (Parameter* p : proj_.parameters()) out.push_back(p);
  return out;
}

std::size_t CausalSelfAttention::Saved::bytes() const {
  return detail::bytes_of(qkv) + detail::bytes_of(att);
}

TensorSpec CausalSelfAttention::output_spec(const TensorSpec& input) const {
  detail::check_sequence(input, channels_, dtype_, "CausalSelfAttention::output_spec", "input");
  return input;
}

// The attention of packed qkv [B, T, 3C] -> [B, T, C]; the probabilities [B, heads, T, T] go
// to *att when given (forward keeps them for the backward), to a temporary otherwise.
Tensor CausalSelfAttention::attend(const Tensor& qkv, Tensor* att, const char* fn) const {
  const std::int64_t b = qkv.size(0), t = qkv.size(1);
  Tensor out = Tensor::empty({b, t, channels_}, dtype_);
  Tensor probs = Tensor::empty({b, heads_, t, t}, dtype_);
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    cpu::attention_forward<T>(out.data<T>(), probs.data<T>(), qkv.data<T>(), b, t, channels_,
                              heads_);
  });
  if (att != nullptr) *att = std::move(probs);
  return out;
}

Tensor CausalSelfAttention::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "CausalSelfAttention::forward";
  detail::check_new(saved_, mb, kFn);
  detail::check_sequence(detail::spec_of(input, kFn, "input"), channels_, dtype_, kFn, "input");
  try {
    Saved s;
    s.qkv = qkv_.forward(mb, input);
    Tensor out = proj_.forward(mb, attend(s.qkv, &s.att, kFn));
    saved_[mb] = std::move(s);
    return out;
  } catch (...) {
    qkv_.release(mb);
    proj_.release(mb);
    throw;
  }
}

Tensor CausalSelfAttention::infer(const Tensor& input) {
  constexpr const char* kFn = "CausalSelfAttention::infer";
  detail::check_sequence(detail::spec_of(input, kFn, "input"), channels_, dtype_, kFn, "input");
  return proj_.infer(attend(qkv_.infer(input), nullptr, kFn));
}

Tensor CausalSelfAttention::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "CausalSelfAttention::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  const std::int64_t b = s.qkv.size(0), t = s.qkv.size(1);
  detail::check_grad(grad_output, {{b, t, channels_}, dtype_}, kFn);
  // Checked above: the inner layers cannot refuse, so a throw here is out of memory only.
  const Tensor grad_att = proj_.backward_input(mb, grad_output);
  Tensor grad_qkv = Tensor::empty(s.qkv.shape(), dtype_);
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::attention_backward<T>(grad_qkv.data<T>(), grad_att.data<T>(), s.qkv.data<T>(),
                               s.att.data<T>(), b, t, channels_, heads_);
  });
  Tensor grad_input = qkv_.backward_input(mb, grad_qkv);
  s.qkv = Tensor();  // the weight gradients need neither
  s.att = Tensor();
  s.input_done = true;
  return grad_input;
}

void CausalSelfAttention::backward_weight(MicrobatchId mb) {
  auto it = detail::for_weight(saved_, mb, "CausalSelfAttention::backward_weight");
  proj_.backward_weight(mb);
  qkv_.backward_weight(mb);
  saved_.erase(it);
}

void CausalSelfAttention::release(MicrobatchId mb) {
  saved_.erase(mb);
  qkv_.release(mb);
  proj_.release(mb);
}

std::size_t CausalSelfAttention::bytes_kept() const {
  return detail::bytes_kept(saved_) + qkv_.bytes_kept() + proj_.bytes_kept();
}

void CausalSelfAttention::begin_step(std::int64_t step) {
  qkv_.begin_step(step);
  proj_.begin_step(step);
}

}  // namespace pipetrain::nn
