// Private to src/schedule: laying per-rank orders of compute actions out on the step grid.
#pragma once

#include <vector>

#include "pipetrain/schedule/schedule.h"

namespace pipetrain::detail {

/// Lays per-rank orders (orders[r]: rank r's compute actions in order) on `schedule`'s grid, one
/// step per action, each action as early as its rank and its producers allow, then normalize()s.
/// Throws Error (internal error) when the orders cannot finish.
Schedule lay_out(Schedule schedule, const std::vector<std::vector<Action>>& orders);

}  // namespace pipetrain::detail
