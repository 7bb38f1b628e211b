#include "pipetrain/optim/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "pipetrain/error.h"

namespace pipetrain::optim {

WarmupCosineSchedule::WarmupCosineSchedule(double max_lr, std::int64_t warmup_steps,
                                           std::int64_t total_steps, double min_fraction)
    : max_lr_(max_lr),
      warmup_steps_(warmup_steps),
      total_steps_(total_steps),
      min_fraction_(min_fraction) {
  constexpr const char* kFn = "WarmupCosineSchedule";
  PIPETRAIN_CHECK_ARG(std::isfinite(max_lr) && max_lr > 0.0, kFn, "max_lr=", max_lr,
                      " must be finite and > 0");
  PIPETRAIN_CHECK_ARG(total_steps >= 1, kFn, "total_steps=", total_steps, " must be >= 1");
  PIPETRAIN_CHECK_ARG(warmup_steps >= 0, kFn, "warmup_steps=", warmup_steps, " must be >= 0");
  PIPETRAIN_CHECK_ARG(warmup_steps <= total_steps, kFn, "warmup_steps=", warmup_steps,
                      " must be <= total_steps=", total_steps);
  PIPETRAIN_CHECK_ARG(min_fraction >= 0.0 && min_fraction <= 1.0, kFn,
                      "min_fraction=", min_fraction, " must be in [0, 1]");
}

double WarmupCosineSchedule::operator()(std::int64_t step) const {
  step = std::max<std::int64_t>(step, 0);
  if (step < warmup_steps_) {
    return max_lr_ * static_cast<double>(step + 1) / static_cast<double>(warmup_steps_);
  }
  const double min_lr = max_lr_ * min_fraction_;
  if (step >= total_steps_) return min_lr;
  const double progress = static_cast<double>(step - warmup_steps_) /
                          static_cast<double>(total_steps_ - warmup_steps_);
  return min_lr + (max_lr_ - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace pipetrain::optim
