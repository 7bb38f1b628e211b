#include "layer_util.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/gpt_layers.h"

namespace pipetrain::nn {

namespace cpu = kernels::cpu;

// probs holds the softmax after the forward and is overwritten by dlogits in backward_input.
struct LmHead::Saved {
  bool input_done = false;
  Tensor x, lnf, mean, rstd, probs, targets, dlnf;

  std::size_t bytes() const {
    std::size_t n = 0;
    for (const Tensor* t : {&x, &lnf, &mean, &rstd, &probs, &targets, &dlnf}) {
      n += detail::bytes_of(*t);
    }
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

void LmHead::set_targets(MicrobatchId mb, const Tensor& targets) {
  constexpr const char* kFn = "LmHead::set_targets";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  detail::check_tokens(targets, config_.context_length, kFn, "targets");
  detail::check_ids(targets, config_.vocab_size, kFn, "target");
  targets_[mb] = targets;
}

const Tensor& LmHead::targets(MicrobatchId mb) const {
  auto it = targets_.find(mb);
  PIPETRAIN_CHECK_ARG(it != targets_.end(), "LmHead::targets", "microbatch ", mb,
                      " has no targets (call set_targets first)");
  return it->second;
}

template <typename T>
Tensor LmHead::run_forward(const Tensor& input, const Tensor* targets, Saved* saved) {
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
  if (targets == nullptr) return logits;
  Tensor losses = Tensor::empty({n}, dt);
  const double loss = cpu::cross_entropy_forward<T>(logits.data<T>(), losses.data<T>(),
                                                    logits.data<T>(),
                                                    targets->data<std::int32_t>(), n, v);
  if (saved != nullptr) {
    saved->x = input;
    saved->lnf = lnf;
    saved->mean = mean;
    saved->rstd = rstd;
    saved->probs = logits;
    saved->targets = *targets;
  }
  Tensor out = Tensor::empty({}, dt);
  out.fill(loss);
  return out;
}

namespace {
void check_targets_match(const Tensor& input, const Tensor& targets, const char* fn) {
  PIPETRAIN_CHECK_ARG(targets.size(0) == input.size(0) && targets.size(1) == input.size(1), fn,
                      "targets have shape ", shape_to_string(targets.shape()), ", expected [",
                      input.size(0), ", ", input.size(1), "]");
}
}  // namespace

Tensor LmHead::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "LmHead::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  auto target_it = targets_.find(mb);
  PIPETRAIN_CHECK_ARG(target_it != targets_.end(), kFn, "microbatch ", mb,
                      " has no targets (call set_targets first)");
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  check_targets_match(input, target_it->second, kFn);
  auto saved = std::make_shared<Saved>();
  Tensor out = detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, &target_it->second, saved.get());
  });
  targets_.erase(target_it);
  saved_[mb] = std::move(saved);
  return out;
}

Tensor LmHead::infer(const Tensor& input) {
  constexpr const char* kFn = "LmHead::infer";
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  return detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, nullptr, nullptr);
  });
}

Tensor LmHead::infer_loss(const Tensor& input, const Tensor& targets) {
  constexpr const char* kFn = "LmHead::infer_loss";
  detail::check_activation(input, config_.channels, config_.dtype, kFn, "input");
  detail::check_tokens(targets, config_.context_length, kFn, "targets");
  detail::check_ids(targets, config_.vocab_size, kFn, "target");
  check_targets_match(input, targets, kFn);
  return detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    return run_forward<decltype(zero)>(input, &targets, nullptr);
  });
}

Tensor LmHead::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "LmHead::backward_input";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no saved forward");
  Saved& s = *it->second;
  PIPETRAIN_CHECK_ARG(!s.input_done, kFn, "microbatch ", mb, " already ran backward_input");
  double scale = 1.0;
  if (grad_output.defined()) {
    PIPETRAIN_CHECK_ARG(grad_output.numel() == 1, kFn, "grad_output has shape ",
                        shape_to_string(grad_output.shape()), ", expected one value");
    scale = grad_output.to_vector<double>()[0];
  }
  const std::int64_t b = s.x.size(0), t = s.x.size(1), c = config_.channels;
  const std::int64_t n = b * t, v = config_.vocab_size;
  Tensor dlnf = Tensor::empty({b, t, c}, config_.dtype);
  Tensor dx = Tensor::empty({b, t, c}, config_.dtype);
  detail::dispatch_float(config_.dtype, kFn, [&](auto zero) {
    using T = decltype(zero);
    cpu::cross_entropy_backward<T>(s.probs.data<T>(), s.probs.data<T>(),
                                   s.targets.data<std::int32_t>(), scale, n, v);
    cpu::linear_backward_input<T>(dlnf.data<T>(), s.probs.data<T>(), lm_w_->value.data<T>(), n,
                                  c, v);
    cpu::layernorm_backward_input<T>(dx.data<T>(), dlnf.data<T>(), s.x.data<T>(),
                                     lnf_w_.value.data<T>(), s.mean.data<T>(), s.rstd.data<T>(),
                                     n, c);
  });
  s.targets = Tensor();
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
    cpu::linear_backward_weight<T>(lm_w_->grad.data<T>(), nullptr, s.probs.data<T>(),
                                   s.lnf.data<T>(), n, c, config_.vocab_size);
    cpu::layernorm_backward_weight<T>(lnf_w_.grad.data<T>(), lnf_b_.grad.data<T>(),
                                      s.dlnf.data<T>(), s.x.data<T>(), s.mean.data<T>(),
                                      s.rstd.data<T>(), n, c);
  });
  saved_.erase(it);
}

void LmHead::release(MicrobatchId mb) {
  saved_.erase(mb);
  targets_.erase(mb);
}

std::size_t LmHead::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& [mb, s] : saved_) n += s->bytes();
  for (const auto& [mb, t] : targets_) n += detail::bytes_of(t);
  return n;
}

}  // namespace pipetrain::nn
