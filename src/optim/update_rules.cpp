#include "pipetrain/optim/update_rules.h"

#include <cmath>

#include "pipetrain/error.h"

namespace pipetrain::optim {

void adamw_update(std::span<float> value, std::span<const float> grad, std::span<float> m,
                  std::span<float> v, const AdamWConfig& config, double lr, std::int64_t step,
                  bool decay) {
  constexpr const char* kFn = "adamw_update";
  PIPETRAIN_CHECK_ARG(grad.size() == value.size() && m.size() == value.size() &&
                          v.size() == value.size(),
                      kFn, "sizes value=", value.size(), " grad=", grad.size(), " m=", m.size(),
                      " v=", v.size(), " must be equal");
  PIPETRAIN_CHECK_ARG(step >= 1, kFn, "step=", step, " must be >= 1");
  // 1 - beta in fp64: in fp32, 1 - 0.999f is off by 1e-5 relative.
  const auto b1 = static_cast<float>(config.beta1);
  const auto b2 = static_cast<float>(config.beta2);
  const auto one_minus_b1 = static_cast<float>(1.0 - config.beta1);
  const auto one_minus_b2 = static_cast<float>(1.0 - config.beta2);
  const auto eps = static_cast<float>(config.eps);
  const auto lr_f = static_cast<float>(lr);
  const auto wd = static_cast<float>(decay ? config.weight_decay : 0.0);
  const auto t = static_cast<double>(step);
  const auto correction1 = static_cast<float>(1.0 - std::pow(config.beta1, t));
  const auto correction2 = static_cast<float>(1.0 - std::pow(config.beta2, t));
  for (std::size_t i = 0; i < value.size(); ++i) {
    const float g = grad[i];
    const float mi = b1 * m[i] + one_minus_b1 * g;
    const float vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / correction1;
    const float v_hat = vi / correction2;
    value[i] -= lr_f * (m_hat / (std::sqrt(v_hat) + eps) + wd * value[i]);
  }
}

void sgd_update(std::span<float> value, std::span<const float> grad, std::span<float> buffer,
                const SgdConfig& config, double lr, bool first_step, bool decay) {
  constexpr const char* kFn = "sgd_update";
  const bool momentum = config.momentum != 0.0;
  PIPETRAIN_CHECK_ARG(grad.size() == value.size() && (!momentum || buffer.size() == value.size()),
                      kFn, "sizes value=", value.size(), " grad=", grad.size(),
                      " buffer=", buffer.size(), " must be equal");
  const auto lr_f = static_cast<float>(lr);
  const auto wd = static_cast<float>(decay ? config.weight_decay : 0.0);
  const auto mu = static_cast<float>(config.momentum);
  for (std::size_t i = 0; i < value.size(); ++i) {
    float d = grad[i];
    if (momentum) {
      buffer[i] = first_step ? d : mu * buffer[i] + d;
      d = config.nesterov ? d + mu * buffer[i] : buffer[i];
    }
    value[i] -= lr_f * (d + wd * value[i]);
  }
}

double sum_of_squares(std::span<const float> values) {
  double sum = 0.0;
  for (float x : values) sum += static_cast<double>(x) * static_cast<double>(x);
  return sum;
}

bool all_finite(std::span<const float> values) {
  for (float x : values) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace pipetrain::optim
