#include <cmath>

#include "layer_util.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/gpt_layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

// Everything microbatch mb's backward needs. The forward part is kept until backward_input,
// which drops what the weight gradients do not need and adds the gradients they do.
struct TransformerBlock::Saved {
  bool input_done = false;
  Tensor x, ln1, ln1_mean, ln1_rstd, qkv, att, atty, x2, ln2, ln2_mean, ln2_rstd, fch, fch_gelu;
  Tensor dres, dfch, dln2, dx2, dqkv, dln1;

  std::size_t bytes() const {
    std::size_t n = 0;
    for (const Tensor* t : {&x, &ln1, &ln1_mean, &ln1_rstd, &qkv, &att, &atty, &x2, &ln2,
                            &ln2_mean, &ln2_rstd, &fch, &fch_gelu, &dres, &dfch, &dln2, &dx2,
                            &dqkv, &dln1}) {
      n += detail::bytes_of(*t);
    }
    return n;
  }
};

TransformerBlock::TransformerBlock(const GptConfig& config, std::int64_t index)
    : config_(config), index_(index) {
  config_.validate();
  const std::int64_t c = config.channels;
  const std::string p = "h." + std::to_string(index) + ".";
  const DType dt = config.dtype;
  ln1_w_ = make_parameter(p + "ln_1.weight", {c}, false, dt);
  ln1_b_ = make_parameter(p + "ln_1.bias", {c}, false, dt);
  qkv_w_ = make_parameter(p + "attn.c_attn.weight", {3 * c, c}, true, dt);
  qkv_b_ = make_parameter(p + "attn.c_attn.bias", {3 * c}, false, dt);
  attn_proj_w_ = make_parameter(p + "attn.c_proj.weight", {c, c}, true, dt);
  attn_proj_b_ = make_parameter(p + "attn.c_proj.bias", {c}, false, dt);
  ln2_w_ = make_parameter(p + "ln_2.weight", {c}, false, dt);
  ln2_b_ = make_parameter(p + "ln_2.bias", {c}, false, dt);
  fc_w_ = make_parameter(p + "mlp.c_fc.weight", {4 * c, c}, true, dt);
  fc_b_ = make_parameter(p + "mlp.c_fc.bias", {4 * c}, false, dt);
  fc_proj_w_ = make_parameter(p + "mlp.c_proj.weight", {c, 4 * c}, true, dt);
  fc_proj_b_ = make_parameter(p + "mlp.c_proj.bias", {c}, false, dt);
  ln1_w_.value.fill(1.0);
  ln2_w_.value.fill(1.0);
  const double residual_std = 0.02 / std::sqrt(2.0 * static_cast<double>(config.num_layers));
  init_normal(qkv_w_, 0.02, config.seed);
  init_normal(attn_proj_w_, residual_std, config.seed);
  init_normal(fc_w_, 0.02, config.seed);
  init_normal(fc_proj_w_, residual_std, config.seed);
}

std::vector<Parameter*> TransformerBlock::parameters() {
  return {&ln1_w_, &ln1_b_, &qkv_w_, &qkv_b_, &attn_proj_w_, &attn_proj_b_,
          &ln2_w_, &ln2_b_, &fc_w_,  &fc_b_,  &fc_proj_w_,   &fc_proj_b_};
}

template <typename T>
Tensor TransformerBlock::run_forward(const Tensor& input, Saved* saved) {
  const std::int64_t b = input.size(0), t = input.size(1), c = config_.channels;
  const std::int64_t n = b * t, nh = config_.num_heads;
  const DType dt = config_.dtype;
  Tensor ln1 = Tensor::empty({b, t, c}, dt), mean1 = Tensor::empty({n}, dt),
         rstd1 = Tensor::empty({n}, dt);
  cpu::layernorm_forward<T>(ln1.data<T>(), mean1.data<T>(), rstd1.data<T>(), input.data<T>(),
                            ln1_w_.value.data<T>(), ln1_b_.value.data<T>(), n, c);
  Tensor qkv = Tensor::empty({b, t, 3 * c}, dt);
  cpu::linear_forward<T>(qkv.data<T>(), ln1.data<T>(), qkv_w_.value.data<T>(),
                         qkv_b_.value.data<T>(), n, c, 3 * c);
  Tensor att = Tensor::empty({b, nh, t, t}, dt), atty = Tensor::empty({b, t, c}, dt);
  cpu::attention_forward<T>(atty.data<T>(), att.data<T>(), qkv.data<T>(), b, t, c, nh);
  Tensor x2 = Tensor::empty({b, t, c}, dt);
  cpu::linear_forward<T>(x2.data<T>(), atty.data<T>(), attn_proj_w_.value.data<T>(),
                         attn_proj_b_.value.data<T>(), n, c, c);
  cpu::residual_forward<T>(x2.data<T>(), input.data<T>(), x2.data<T>(), n * c);
  Tensor ln2 = Tensor::empty({b, t, c}, dt), mean2 = Tensor::empty({n}, dt),
         rstd2 = Tensor::empty({n}, dt);
  cpu::layernorm_forward<T>(ln2.data<T>(), mean2.data<T>(), rstd2.data<T>(), x2.data<T>(),
                            ln2_w_.value.data<T>(), ln2_b_.value.data<T>(), n, c);
  Tensor fch = Tensor::empty({b, t, 4 * c}, dt), fch_gelu = Tensor::empty({b, t, 4 * c}, dt);
  cpu::linear_forward<T>(fch.data<T>(), ln2.data<T>(), fc_w_.value.data<T>(),
                         fc_b_.value.data<T>(), n, c, 4 * c);
  cpu::gelu_forward<T>(fch_gelu.data<T>(), fch.data<T>(), n * 4 * c);
  Tensor out = Tensor::empty({b, t, c}, dt);
  cpu::linear_forward<T>(out.data<T>(), fch_gelu.data<T>(), fc_proj_w_.value.data<T>(),
                         fc_proj_b_.value.data<T>(), n, 4 * c, c);
  cpu::residual_forward<T>(out.data<T>(), x2.data<T>(), out.data<T>(), n * c);
  if (saved != nullptr) {
    saved->x = input;
    saved->ln1 = ln1;
    saved->ln1_mean = mean1;
    saved->ln1_rstd = rstd1;
    saved->qkv = qkv;
    saved->att = att;
    saved->atty = atty;
    saved->x2 = x2;
    saved->ln2 = ln2;
    saved->ln2_mean = mean2;
    saved->ln2_rstd = rstd2;
    saved->fch = fch;
    saved->fch_gelu = fch_gelu;
  }
  return out;
}

Tensor TransformerBlock::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "TransformerBlock::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  auto saved = std::make_shared<Saved>();
  Tensor out = detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, saved.get());
  });
  saved_[mb] = std::move(saved);
  return out;
}

Tensor TransformerBlock::infer(const Tensor& input) {
  constexpr const char* kFn = "TransformerBlock::infer";
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  return detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, nullptr);
  });
}

template <typename T>
Tensor TransformerBlock::run_backward_input(Saved& s, const Tensor& dres) {
  const std::int64_t b = s.x.size(0), t = s.x.size(1), c = config_.channels;
  const std::int64_t n = b * t, nh = config_.num_heads;
  const DType dt = config_.dtype;
  Tensor dfch = Tensor::empty({b, t, 4 * c}, dt);
  cpu::linear_backward_input<T>(dfch.data<T>(), dres.data<T>(), fc_proj_w_.value.data<T>(), n,
                                4 * c, c);
  cpu::gelu_backward<T>(dfch.data<T>(), s.fch.data<T>(), dfch.data<T>(), n * 4 * c);
  Tensor dln2 = Tensor::empty({b, t, c}, dt);
  cpu::linear_backward_input<T>(dln2.data<T>(), dfch.data<T>(), fc_w_.value.data<T>(), n, c,
                                4 * c);
  Tensor dx2 = Tensor::empty({b, t, c}, dt);
  cpu::layernorm_backward_input<T>(dx2.data<T>(), dln2.data<T>(), s.x2.data<T>(),
                                   ln2_w_.value.data<T>(), s.ln2_mean.data<T>(),
                                   s.ln2_rstd.data<T>(), n, c);
  cpu::residual_forward<T>(dx2.data<T>(), dx2.data<T>(), dres.data<T>(), n * c);
  Tensor datty = Tensor::empty({b, t, c}, dt);
  cpu::linear_backward_input<T>(datty.data<T>(), dx2.data<T>(), attn_proj_w_.value.data<T>(), n,
                                c, c);
  Tensor dqkv = Tensor::empty({b, t, 3 * c}, dt);
  cpu::attention_backward<T>(dqkv.data<T>(), datty.data<T>(), s.qkv.data<T>(), s.att.data<T>(), b,
                             t, c, nh);
  Tensor dln1 = Tensor::empty({b, t, c}, dt);
  cpu::linear_backward_input<T>(dln1.data<T>(), dqkv.data<T>(), qkv_w_.value.data<T>(), n, c,
                                3 * c);
  Tensor dx = Tensor::empty({b, t, c}, dt);
  cpu::layernorm_backward_input<T>(dx.data<T>(), dln1.data<T>(), s.x.data<T>(),
                                   ln1_w_.value.data<T>(), s.ln1_mean.data<T>(),
                                   s.ln1_rstd.data<T>(), n, c);
  cpu::residual_forward<T>(dx.data<T>(), dx.data<T>(), dx2.data<T>(), n * c);
  // The weight gradients need the linear inputs, the LayerNorm inputs and statistics, and the
  // output gradients; the attention state and the pre-GELU activations can go now.
  s.qkv = Tensor();
  s.att = Tensor();
  s.fch = Tensor();
  s.dres = dres;
  s.dfch = dfch;
  s.dln2 = dln2;
  s.dx2 = dx2;
  s.dqkv = dqkv;
  s.dln1 = dln1;
  s.input_done = true;
  return dx;
}

Tensor TransformerBlock::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "TransformerBlock::backward_input";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no saved forward");
  Saved& s = *it->second;
  PIPETRAIN_CHECK_ARG(!s.input_done, kFn, "microbatch ", mb, " already ran backward_input");
  detail::check_activation(grad_output, config_.channels, config_.dtype, kFn, "grad_output");
  PIPETRAIN_CHECK_ARG(grad_output.shape() == s.x.shape(), kFn, "grad_output has shape ",
                      shape_to_string(grad_output.shape()), ", expected ",
                      shape_to_string(s.x.shape()));
  return detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_backward_input<decltype(zero)>(s, grad_output);
  });
}

template <typename T>
void TransformerBlock::run_backward_weight(Saved& s) {
  const std::int64_t c = config_.channels, n = s.x.size(0) * s.x.size(1);
  cpu::linear_backward_weight<T>(fc_proj_w_.grad.data<T>(), fc_proj_b_.grad.data<T>(),
                                 s.dres.data<T>(), s.fch_gelu.data<T>(), n, 4 * c, c);
  cpu::linear_backward_weight<T>(fc_w_.grad.data<T>(), fc_b_.grad.data<T>(), s.dfch.data<T>(),
                                 s.ln2.data<T>(), n, c, 4 * c);
  cpu::layernorm_backward_weight<T>(ln2_w_.grad.data<T>(), ln2_b_.grad.data<T>(),
                                    s.dln2.data<T>(), s.x2.data<T>(), s.ln2_mean.data<T>(),
                                    s.ln2_rstd.data<T>(), n, c);
  cpu::linear_backward_weight<T>(attn_proj_w_.grad.data<T>(), attn_proj_b_.grad.data<T>(),
                                 s.dx2.data<T>(), s.atty.data<T>(), n, c, c);
  cpu::linear_backward_weight<T>(qkv_w_.grad.data<T>(), qkv_b_.grad.data<T>(), s.dqkv.data<T>(),
                                 s.ln1.data<T>(), n, c, 3 * c);
  cpu::layernorm_backward_weight<T>(ln1_w_.grad.data<T>(), ln1_b_.grad.data<T>(),
                                    s.dln1.data<T>(), s.x.data<T>(), s.ln1_mean.data<T>(),
                                    s.ln1_rstd.data<T>(), n, c);
}

void TransformerBlock::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "TransformerBlock::backward_weight";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end() && it->second->input_done, kFn, "microbatch ", mb,
                      " has not run backward_input");
  detail::dispatch_float(config_.dtype, kFn,
                         [&](auto zero) { run_backward_weight<decltype(zero)>(*it->second); });
  saved_.erase(it);
}

std::size_t TransformerBlock::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& [mb, s] : saved_) n += s->bytes();
  return n;
}

TensorSpec TransformerBlock::output_spec(const TensorSpec& input) const {
  constexpr const char* kFn = "TransformerBlock::output_spec";
  PIPETRAIN_CHECK_ARG(input.shape.size() == 3 && input.shape[2] == config_.channels &&
                          input.shape[0] > 0 && input.shape[1] > 0,
                      kFn, "input has shape ", shape_to_string(input.shape), ", expected [B, T, ",
                      config_.channels, "]");
  PIPETRAIN_CHECK_ARG(input.dtype == config_.dtype, kFn, "input has dtype ",
                      to_string(input.dtype), ", expected ", to_string(config_.dtype));
  return input;
}

}  // namespace pipetrain::nn
