#include "pipetrain/optim/optimizer.h"

#include <cmath>
#include <algorithm>
#include <utility>

#include "pipetrain/error.h"
#include "pipetrain/tensor.h"

namespace pipetrain::optim {
namespace {

// The only places that touch the tensor API.
bool is_fp32(const Tensor& t) { return t.dtype() == DType::kFloat32; }
std::string dtype_name(const Tensor& t) { return std::string(to_string(t.dtype())); }
std::span<float> values_of(Tensor& t) {
  return {t.template data<float>(), static_cast<std::size_t>(t.numel())};
}
std::span<const float> values_of(const Tensor& t) {
  return {t.template data<float>(), static_cast<std::size_t>(t.numel())};
}

void check_unit_interval(double value, const char* fn, const char* name) {
  PIPETRAIN_CHECK_ARG(value >= 0.0 && value < 1.0, fn, name, "=", value, " must be in [0, 1)");
}

}  // namespace

Optimizer::Optimizer(std::string kind, std::vector<nn::Parameter*> params)
    : kind_(std::move(kind)), params_(std::move(params)) {
  const char* fn = kind_ == "adamw" ? "AdamW" : "Sgd";
  for (std::size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter* p = params_[i];
    PIPETRAIN_CHECK_ARG(p != nullptr, fn, "parameter ", i, " is null");
    PIPETRAIN_CHECK_ARG(is_fp32(p->value), fn, "parameter '", p->name, "' has dtype ",
                        dtype_name(p->value), ", expected fp32");
    PIPETRAIN_CHECK_ARG(is_fp32(p->grad), fn, "gradient of '", p->name, "' has dtype ",
                        dtype_name(p->grad), ", expected fp32");
    PIPETRAIN_CHECK_ARG(p->grad.numel() == p->value.numel(), fn, "gradient of '", p->name,
                        "' has ", p->grad.numel(), " elements, the value has ",
                        p->value.numel());
  }
}

void Optimizer::zero_grad() {
  for (nn::Parameter* p : params_) {
    for (float& g : values_of(p->grad)) g = 0.0f;
  }
}

OptimizerState Optimizer::state() const { return OptimizerState{kind_, step_, buffers_}; }

void Optimizer::load_state(const OptimizerState& state) {
  constexpr const char* kFn = "Optimizer::load_state";
  PIPETRAIN_CHECK_ARG(state.kind == kind_, kFn, "state of a '", state.kind,
                      "' optimizer cannot be loaded into '", kind_, "'");
  PIPETRAIN_CHECK_ARG(state.step >= 0, kFn, "step=", state.step, " must be >= 0");
  PIPETRAIN_CHECK_ARG(state.buffers.size() == buffers_.size(), kFn, "state holds ",
                      state.buffers.size(), " buffers, expected ", buffers_.size());
  for (std::size_t i = 0; i < buffers_.size(); ++i) {
    const StateBuffer& got = state.buffers[i];
    const StateBuffer& want = buffers_[i];
    PIPETRAIN_CHECK_ARG(got.name == want.name && got.data.size() == want.data.size(), kFn,
                        "buffer ", i, " is '", got.name, "' with ", got.data.size(),
                        " values, expected '", want.name, "' with ", want.data.size());
  }
  step_ = state.step;
  buffers_ = state.buffers;
}

AdamW::AdamW(std::vector<nn::Parameter*> params, AdamWConfig config)
    : Optimizer("adamw", std::move(params)), config_(config) {
  check_unit_interval(config.beta1, "AdamW", "beta1");
  check_unit_interval(config.beta2, "AdamW", "beta2");
  PIPETRAIN_CHECK_ARG(config.eps > 0.0, "AdamW", "eps=", config.eps, " must be > 0");
  PIPETRAIN_CHECK_ARG(config.weight_decay >= 0.0, "AdamW", "weight_decay=", config.weight_decay,
                      " must be >= 0");
  for (nn::Parameter* p : params_) {
    const auto n = static_cast<std::size_t>(p->value.numel());
    buffers_.push_back({p->name + "/m", std::vector<float>(n, 0.0f)});
    buffers_.push_back({p->name + "/v", std::vector<float>(n, 0.0f)});
  }
}

void AdamW::step(double lr) {
  PIPETRAIN_CHECK_ARG(lr >= 0.0, "AdamW::step", "lr=", lr, " must be >= 0");
  ++step_;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter* p = params_[i];
    adamw_update(values_of(p->value), values_of(std::as_const(p->grad)), buffers_[2 * i].data,
                 buffers_[2 * i + 1].data, config_, lr, step_, p->weight_decay);
  }
}

Sgd::Sgd(std::vector<nn::Parameter*> params, SgdConfig config)
    : Optimizer("sgd", std::move(params)), config_(config) {
  check_unit_interval(config.momentum, "Sgd", "momentum");
  PIPETRAIN_CHECK_ARG(config.weight_decay >= 0.0, "Sgd", "weight_decay=", config.weight_decay,
                      " must be >= 0");
  if (config.momentum != 0.0) {
    for (nn::Parameter* p : params_) {
      buffers_.push_back(
          {p->name + "/momentum", std::vector<float>(static_cast<std::size_t>(p->value.numel()))});
    }
  }
}

void Sgd::step(double lr) {
  PIPETRAIN_CHECK_ARG(lr >= 0.0, "Sgd::step", "lr=", lr, " must be >= 0");
  const bool first = step_ == 0;
  ++step_;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    nn::Parameter* p = params_[i];
    std::span<float> buffer;
    if (!buffers_.empty()) buffer = buffers_[i].data;
    sgd_update(values_of(p->value), values_of(std::as_const(p->grad)), buffer, config_, lr, first,
               p->weight_decay);
  }
}

double local_grad_sum_of_squares(std::span<nn::Parameter* const> params) {
  double sum = 0.0;
  for (const nn::Parameter* p : params) sum += sum_of_squares(values_of(p->grad));
  return sum;
}

double clip_coefficient(double global_norm, double max_norm) {
  PIPETRAIN_CHECK_ARG(max_norm > 0.0, "clip_coefficient", "max_norm=", max_norm, " must be > 0");
  if (!std::isfinite(global_norm)) return 1.0;
  return std::min(1.0, max_norm / (global_norm + 1e-6));
}

void scale_grads(std::span<nn::Parameter* const> params, double scale) {
  if (scale == 1.0) return;
  const auto s = static_cast<float>(scale);
  for (nn::Parameter* p : params) {
    for (float& g : values_of(p->grad)) g *= s;
  }
}

double clip_grad_norm(std::span<nn::Parameter* const> params, double max_norm) {
  const double norm = std::sqrt(local_grad_sum_of_squares(params));
  scale_grads(params, clip_coefficient(norm, max_norm));
  return norm;
}

bool grads_are_finite(std::span<nn::Parameter* const> params) {
  for (const nn::Parameter* p : params) {
    if (!all_finite(values_of(p->grad))) return false;
  }
  return true;
}

bool is_finite(double value) { return std::isfinite(value); }

}  // namespace pipetrain::optim
