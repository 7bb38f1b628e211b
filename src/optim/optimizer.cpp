#include "pipetrain/optim/optimizer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "../core/parallel.h"
#include "pipetrain/error.h"
#include "pipetrain/tensor.h"
#include "update_kernels.h"

namespace pipetrain::optim {
namespace {

// The only places that touch the tensor API.
bool is_fp32(const Tensor& t) { return t.dtype() == DType::kFloat32; }
std::string dtype_name(const Tensor& t) { return std::string(to_string(t.dtype())); }
std::span<float> values_of(Tensor& t) {
  return {t.template data<float>(), static_cast<std::size_t>(t.numel())};
}

// The threaded passes over all the parameters' elements cut each parameter into chunks of
// detail::kChunk elements (the last one shorter) and hand the list of chunks to the threads
// (src/core/parallel.h). The cut depends on the sizes only, so the results do not depend on the
// thread count.
// `grad` is the parameter's gradient, resolved (and its dtype checked) before any thread runs.
struct Piece {
  std::size_t param;
  std::int64_t begin, end;
  float* grad;
};

std::vector<Piece> pieces_of(std::span<nn::Parameter* const> params) {
  std::vector<Piece> pieces;
  for (std::size_t i = 0; i < params.size(); ++i) {
    float* grad = values_of(params[i]->grad).data();
    const std::int64_t n = params[i]->grad.numel();
    for (std::int64_t b = 0; b < n; b += detail::kChunk) {
      pieces.push_back({i, b, std::min(n, b + detail::kChunk), grad});
    }
  }
  return pieces;
}

// body(piece) for every piece, in parallel.
template <typename Body>
void for_each_piece(const std::vector<Piece>& pieces, const Body& body) {
  pipetrain::detail::parallel_chunks(
      static_cast<std::int64_t>(pieces.size()), 1,
      [&](std::int64_t k, std::int64_t, std::int64_t) { body(pieces[k]); });
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
    PIPETRAIN_CHECK_ARG(p->grad.numel() == p->value.numel(), fn, "gradient of '", p->name, "' has ",
                        p->grad.numel(), " elements, the value has ", p->value.numel());
  }
}

void Optimizer::zero_grad() {
  for_each_piece(pieces_of(params_),
                 [&](const Piece& q) { std::fill(q.grad + q.begin, q.grad + q.end, 0.0f); });
}

void Optimizer::step(double lr, double grad_scale) {
  scale_grads(params_, grad_scale);
  step(lr);
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

void AdamW::step(double lr) { step(lr, 1.0); }

void AdamW::step(double lr, double grad_scale) {
  PIPETRAIN_CHECK_ARG(lr >= 0.0, "AdamW::step", "lr=", lr, " must be >= 0");
  PIPETRAIN_CHECK_ARG(grad_scale > 0.0 && std::isfinite(grad_scale), "AdamW::step",
                      "grad_scale=", grad_scale, " must be finite and > 0");
  ++step_;
  // The same arithmetic as adamw_update() on each parameter (update_kernels.h), chunks of all
  // the parameters in parallel.
  std::vector<detail::AdamWFactors> factors;
  factors.reserve(params_.size());
  for (const nn::Parameter* p : params_) {
    factors.push_back(detail::adamw_factors(config_, lr, step_, p->weight_decay));
  }
  const auto scale = static_cast<float>(grad_scale);
  for_each_piece(pieces_of(params_), [&](const Piece& q) {
    nn::Parameter* p = params_[q.param];
    float* value = values_of(p->value).data() + q.begin;
    float* grad = q.grad + q.begin;
    float* m = buffers_[2 * q.param].data.data() + q.begin;
    float* v = buffers_[2 * q.param + 1].data.data() + q.begin;
    if (grad_scale == 1.0) {
      detail::adamw_elements<false>(value, grad, m, v, q.end - q.begin, factors[q.param], 1.0f);
    } else {
      detail::adamw_elements<true>(value, grad, m, v, q.end - q.begin, factors[q.param], scale);
    }
  });
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

void Sgd::step(double lr) { step(lr, 1.0); }

void Sgd::step(double lr, double grad_scale) {
  PIPETRAIN_CHECK_ARG(lr >= 0.0, "Sgd::step", "lr=", lr, " must be >= 0");
  PIPETRAIN_CHECK_ARG(grad_scale > 0.0 && std::isfinite(grad_scale), "Sgd::step",
                      "grad_scale=", grad_scale, " must be finite and > 0");
  const bool first = step_ == 0;
  ++step_;
  const auto lr_f = static_cast<float>(lr);
  const auto scale = static_cast<float>(grad_scale);
  for_each_piece(pieces_of(params_), [&](const Piece& q) {
    nn::Parameter* p = params_[q.param];
    float* value = values_of(p->value).data() + q.begin;
    float* grad = q.grad + q.begin;
    float* buffer = buffers_.empty() ? nullptr : buffers_[q.param].data.data() + q.begin;
    if (grad_scale == 1.0) {
      detail::sgd_elements<false>(value, grad, buffer, q.end - q.begin, config_, lr_f, first,
                                  p->weight_decay, 1.0f);
    } else {
      detail::sgd_elements<true>(value, grad, buffer, q.end - q.begin, config_, lr_f, first,
                                 p->weight_decay, scale);
    }
  });
}

double local_grad_sum_of_squares(std::span<nn::Parameter* const> params) {
  // Chunks in parallel, then added in order: per parameter as sum_of_squares() adds them, then
  // parameter by parameter, the same bits on every thread count.
  const std::vector<Piece> pieces = pieces_of(params);
  std::vector<double> partial(pieces.size());
  pipetrain::detail::parallel_chunks(
      static_cast<std::int64_t>(pieces.size()), 1, [&](std::int64_t k, std::int64_t, std::int64_t) {
        const Piece& q = pieces[k];
        partial[k] = detail::sum_of_squares_chunk(q.grad + q.begin, q.end - q.begin);
      });
  double sum = 0.0, param_sum = 0.0;
  for (std::size_t k = 0; k < pieces.size(); ++k) {
    param_sum += partial[k];
    if (k + 1 == pieces.size() || pieces[k + 1].param != pieces[k].param) {
      sum += param_sum;
      param_sum = 0.0;
    }
  }
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
  for_each_piece(pieces_of(params), [&](const Piece& q) {
    for (std::int64_t i = q.begin; i < q.end; ++i) q.grad[i] *= s;
  });
}

double clip_grad_norm(std::span<nn::Parameter* const> params, double max_norm) {
  const double norm = std::sqrt(local_grad_sum_of_squares(params));
  scale_grads(params, clip_coefficient(norm, max_norm));
  return norm;
}

bool grads_are_finite(std::span<nn::Parameter* const> params) {
  const std::vector<Piece> pieces = pieces_of(params);
  std::vector<char> finite(pieces.size(), 1);
  for_each_piece(pieces, [&](const Piece& q) {
    finite[&q - pieces.data()] =
        all_finite({q.grad + q.begin, static_cast<std::size_t>(q.end - q.begin)});
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

bool is_finite(double value) { return std::isfinite(value); }

}  // namespace pipetrain::optim
