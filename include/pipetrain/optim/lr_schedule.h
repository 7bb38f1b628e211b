// pipetrain/optim/lr_schedule.h: learning rate as a function of the optimizer step.
#pragma once

#include <cstdint>

namespace pipetrain::optim {

/// Linear warmup, then cosine decay to a floor:
///   step <  warmup_steps:  lr = max_lr * (step + 1) / warmup_steps
///   step <  total_steps:   lr = min_lr + (max_lr - min_lr) * (1 + cos(pi * p)) / 2,
///                          p = (step - warmup_steps) / (total_steps - warmup_steps)
///   step >= total_steps:   lr = min_lr
/// with min_lr = min_fraction * max_lr. Steps count from 0, so step 0 already trains
/// (at max_lr / warmup_steps) and the last warmup step reaches max_lr.
class WarmupCosineSchedule {
 public:
  /// Throws InvalidArgument unless max_lr > 0, 0 <= warmup_steps <= total_steps,
  /// total_steps >= 1 and 0 <= min_fraction <= 1, e.g.
  ///   "[WarmupCosineSchedule] warmup_steps=20 must be <= total_steps=10"
  WarmupCosineSchedule(double max_lr, std::int64_t warmup_steps, std::int64_t total_steps,
                       double min_fraction);

  /// The learning rate of optimizer step `step` (>= 0; negative steps give the step-0 rate).
  double operator()(std::int64_t step) const;

  double max_lr() const { return max_lr_; }
  double min_lr() const { return max_lr_ * min_fraction_; }
  std::int64_t warmup_steps() const { return warmup_steps_; }
  std::int64_t total_steps() const { return total_steps_; }

 private:
  double max_lr_;
  std::int64_t warmup_steps_;
  std::int64_t total_steps_;
  double min_fraction_;
};

}  // namespace pipetrain::optim
