#include "layer_util.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/gpt_layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

struct LmHead::Saved {
  bool input_done = false;
  Tensor x, lnf, mean, rstd, dlogits, dlnf;

  std::size_t bytes() const {
    std::size_t n = 0;
    for (const Tensor* t : {&x, &lnf, &mean, &rstd, &dlogits, &dlnf}) n += detail::bytes_of(*t);
    return n;
  }
};

LmHead::LmHead(const GptConfig& config)
    : config_(config),
      lnf_w_(make_parameter("ln_f.weight", {config.channels}, false, config.dtype)),
      lnf_b_(make_parameter("ln_f.bias", {config.channels}, false, config.dtype)),
      own_lm_w_(make_parameter(config.tied_embeddings ? "wte" : "lm_head.weight",
                               {config.vocab_size, config.channels}, true, config.dtype)),
      lm_w_(&own_lm_w_) {
  config_.validate();
  lnf_w_.value.fill(1.0);
  init_normal(own_lm_w_, 0.02, config.seed);
}

std::vector<Parameter*> LmHead::parameters() {
  if (owns_lm_weight()) return {&lnf_w_, &lnf_b_, &own_lm_w_};
  return {&lnf_w_, &lnf_b_};
}

void LmHead::tie_to(Parameter& wte) {
  PIPETRAIN_CHECK_ARG(config_.tied_embeddings, "LmHead::tie_to",
                      "the config has tied_embeddings=false");
  PIPETRAIN_CHECK_ARG(wte.value.shape() == own_lm_w_.value.shape() &&
                          wte.value.dtype() == config_.dtype,
                      "LmHead::tie_to", "wte has shape ", shape_to_string(wte.value.shape()),
                      ", expected ", shape_to_string(own_lm_w_.value.shape()));
  lm_w_ = &wte;
  own_lm_w_ = Parameter{own_lm_w_.name, Tensor(), Tensor(), true};
}

template <typename T>
Tensor LmHead::run_forward(const Tensor& input, Saved* saved) {
  const std::int64_t b = input.size(0), t = input.size(1), c = config_.channels;
  const std::int64_t n = b * t, v = config_.vocab_size;
  const DType dt = config_.dtype;
  Tensor lnf = Tensor::empty({b, t, c}, dt), mean = Tensor::empty({n}, dt),
         rstd = Tensor::empty({n}, dt);
  cpu::layernorm_forward<T>(lnf.data<T>(), mean.data<T>(), rstd.data<T>(), input.data<T>(),
                            lnf_w_.value.data<T>(), lnf_b_.value.data<T>(), n, c);
  Tensor logits = Tensor::empty({b, t, v}, dt);
  cpu::linear_forward<T>(logits.data<T>(), lnf.data<T>(), lm_w_->value.data<T>(), nullptr, n, c,
                         v);
  if (saved != nullptr) {
    saved->x = input;
    saved->lnf = lnf;
    saved->mean = mean;
    saved->rstd = rstd;
  }
  return logits;
}

Tensor LmHead::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "LmHead::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  auto saved = std::make_shared<Saved>();
  Tensor out = detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, saved.get());
  });
  saved_[mb] = std::move(saved);
  return out;
}

Tensor LmHead::infer(const Tensor& input) {
  constexpr const char* kFn = "LmHead::infer";
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  return detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, nullptr);
  });
}

TensorSpec LmHead::output_spec(const TensorSpec& input) const {
  constexpr const char* kFn = "LmHead::output_spec";
  PIPETRAIN_CHECK_ARG(input.shape.size() == 3 && input.shape[2] == config_.channels, kFn,
                      "input has shape ", shape_to_string(input.shape), ", expected [B, T, ",
                      config_.channels, "]");
  PIPETRAIN_CHECK_ARG(input.dtype == config_.dtype, kFn, "input has dtype ",
                      to_string(input.dtype), ", expected ", to_string(config_.dtype));
  return {{input.shape[0], input.shape[1], config_.vocab_size}, config_.dtype};
}

Tensor LmHead::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "LmHead::backward_input";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no saved forward");
  Saved& s = *it->second;
  PIPETRAIN_CHECK_ARG(!s.input_done, kFn, "microbatch ", mb, " already ran backward_input");
  const std::int64_t b = s.x.size(0), t = s.x.size(1), c = config_.channels;
  const std::int64_t n = b * t, v = config_.vocab_size;
  PIPETRAIN_CHECK_ARG(grad_output.defined() && grad_output.shape() == Shape({b, t, v}) &&
                          grad_output.dtype() == config_.dtype,
                      kFn, "grad_output is ",
                      grad_output.defined() ? to_string(TensorSpec{grad_output.shape(),
                                                                   grad_output.dtype()})
                                            : std::string("undefined"),
                      ", expected ", to_string(TensorSpec{{b, t, v}, config_.dtype}));
  Tensor dlnf = Tensor::empty({b, t, c}, config_.dtype);
  Tensor dx = Tensor::empty({b, t, c}, config_.dtype);
  detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_backward_input<T>(dlnf.data<T>(), grad_output.data<T>(), lm_w_->value.data<T>(),
                                  n, c, v);
    cpu::layernorm_backward_input<T>(dx.data<T>(), dlnf.data<T>(), s.x.data<T>(),
                                     lnf_w_.value.data<T>(), s.mean.data<T>(), s.rstd.data<T>(),
                                     n, c);
  });
  s.dlogits = grad_output;
  s.dlnf = dlnf;
  s.input_done = true;
  return dx;
}

void LmHead::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "LmHead::backward_weight";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end() && it->second->input_done, kFn, "microbatch ", mb,
                      " has not run backward_input");
  const Saved& s = *it->second;
  const std::int64_t c = config_.channels, n = s.x.size(0) * s.x.size(1);
  detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::linear_backward_weight<T>(lm_w_->grad.data<T>(), nullptr, s.dlogits.data<T>(),
                                   s.lnf.data<T>(), n, c, config_.vocab_size);
    cpu::layernorm_backward_weight<T>(lnf_w_.grad.data<T>(), lnf_b_.grad.data<T>(),
                                      s.dlnf.data<T>(), s.x.data<T>(), s.mean.data<T>(),
                                      s.rstd.data<T>(), n, c);
  });
  saved_.erase(it);
}

std::size_t LmHead::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& [mb, s] : saved_) n += s->bytes();
  return n;
}

}  // namespace pipetrain::nn
