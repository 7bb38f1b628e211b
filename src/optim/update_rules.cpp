#include "pipetrain/optim/update_rules.h"

#include <algorithm>
#include <cmath>

#include "pipetrain/error.h"
#include "update_kernels.h"

namespace pipetrain::optim {

void adamw_update(std::span<float> value, std::span<const float> grad, std::span<float> m,
                  std::span<float> v, const AdamWConfig& config, double lr, std::int64_t step,
                  bool decay) {
  constexpr const char* kFn = "adamw_update";
  PIPETRAIN_CHECK_ARG(
      grad.size() == value.size() && m.size() == value.size() && v.size() == value.size(), kFn,
      "sizes value=", value.size(), " grad=", grad.size(), " m=", m.size(), " v=", v.size(),
      " must be equal");
  PIPETRAIN_CHECK_ARG(step >= 1, kFn, "step=", step, " must be >= 1");
  // Not scaled, so the gradient is only read.
  detail::adamw_elements<false>(value.data(), const_cast<float*>(grad.data()), m.data(), v.data(),
                                static_cast<std::int64_t>(value.size()),
                                detail::adamw_factors(config, lr, step, decay), 1.0f);
}

void sgd_update(std::span<float> value, std::span<const float> grad, std::span<float> buffer,
                const SgdConfig& config, double lr, bool first_step, bool decay) {
  constexpr const char* kFn = "sgd_update";
  const bool momentum = config.momentum != 0.0;
  PIPETRAIN_CHECK_ARG(grad.size() == value.size() && (!momentum || buffer.size() == value.size()),
                      kFn, "sizes value=", value.size(), " grad=", grad.size(),
                      " buffer=", buffer.size(), " must be equal");
  detail::sgd_elements<false>(value.data(), const_cast<float*>(grad.data()), buffer.data(),
                              static_cast<std::int64_t>(value.size()), config,
                              static_cast<float>(lr), first_step, decay, 1.0f);
}

double sum_of_squares(std::span<const float> values) {
  const auto n = static_cast<std::int64_t>(values.size());
  double sum = 0.0;
  for (std::int64_t i = 0; i < n; i += detail::kChunk) {
    sum += detail::sum_of_squares_chunk(values.data() + i, std::min(detail::kChunk, n - i));
  }
  return sum;
}

bool all_finite(std::span<const float> values) {
  for (float x : values) {
    if (!std::isfinite(x)) return false;
  }
  return true;
}

}  // namespace pipetrain::optim
