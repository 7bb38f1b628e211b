// update_kernels.h (private): the element loops of the update rules, shared by the span
// functions of update_rules.h and the optimizers' fused, threaded passes (optimizer.cpp).
// Nothing here checks or throws: the callers check sizes first.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "pipetrain/optim/update_rules.h"

namespace pipetrain::optim::detail {

/// Elements per chunk of the threaded passes (src/core/parallel.h): 32768 fp32 values, 128 KiB
/// per array. Sums of squares are added chunk by chunk in this unit on every thread count.
constexpr std::int64_t kChunk = 32768;

/// The fp32 factors of one AdamW step, computed once per parameter (adamw_update()'s formula).
struct AdamWFactors {
  float b1, b2, one_minus_b1, one_minus_b2, eps, lr, wd, correction1, correction2;
};

inline AdamWFactors adamw_factors(const AdamWConfig& config, double lr, std::int64_t step,
                                  bool decay) {
  const auto t = static_cast<double>(step);
  // 1 - beta in fp64: in fp32, 1 - 0.999f is off by 1e-5 relative.
  return {static_cast<float>(config.beta1),
          static_cast<float>(config.beta2),
          static_cast<float>(1.0 - config.beta1),
          static_cast<float>(1.0 - config.beta2),
          static_cast<float>(config.eps),
          static_cast<float>(lr),
          static_cast<float>(decay ? config.weight_decay : 0.0),
          static_cast<float>(1.0 - std::pow(config.beta1, t)),
          static_cast<float>(1.0 - std::pow(config.beta2, t))};
}

/// AdamW on n elements. With kScaled, the gradient is first multiplied by `scale` in fp32 (as
/// scale_grads() does) and written back: clipping and the update in one pass.
template <bool kScaled>
inline void adamw_elements(float* value, float* grad, float* m, float* v, std::int64_t n,
                           const AdamWFactors& f, float scale) {
  for (std::int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    if constexpr (kScaled) {
      g *= scale;
      grad[i] = g;
    }
    const float mi = f.b1 * m[i] + f.one_minus_b1 * g;
    const float vi = f.b2 * v[i] + f.one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / f.correction1;
    const float v_hat = vi / f.correction2;
    value[i] -= f.lr * (m_hat / (std::sqrt(v_hat) + f.eps) + f.wd * value[i]);
  }
}

/// SGD on n elements (sgd_update()'s formula); kScaled as for adamw_elements.
template <bool kScaled>
inline void sgd_elements(float* value, float* grad, float* buffer, std::int64_t n,
                         const SgdConfig& config, float lr, bool first_step, bool decay,
                         float scale) {
  const auto wd = static_cast<float>(decay ? config.weight_decay : 0.0);
  const auto mu = static_cast<float>(config.momentum);
  const bool momentum = config.momentum != 0.0;
  for (std::int64_t i = 0; i < n; ++i) {
    float d = grad[i];
    if constexpr (kScaled) {
      d *= scale;
      grad[i] = d;
    }
    if (momentum) {
      buffer[i] = first_step ? d : mu * buffer[i] + d;
      d = config.nesterov ? d + mu * buffer[i] : buffer[i];
    }
    value[i] -= lr * (d + wd * value[i]);
  }
}

/// Sum of squares of at most kChunk values in fp64, in eight interleaved partial sums added
/// pairwise at the end (a fixed order; the compiler may keep the eight in vector registers).
inline double sum_of_squares_chunk(const float* x, std::int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) {
      const auto d = static_cast<double>(x[i + j]);
      acc[j] += d * d;
    }
  }
  for (int j = 0; i < n; ++i, ++j) {
    const auto d = static_cast<double>(x[i]);
    acc[j] += d * d;
  }
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace pipetrain::optim::detail
