// Test helper: a schedule written as one row of space-separated cells per rank, "." for an empty
// slot, e.g. schedule_from_rows("1f1b", 1, 2, {"0F0 0F1 . 0B0 0B1", ". 1F0 1B0 1F1 1B1"}).
#pragma once

#include <sstream>
#include <string>
#include <vector>

#include "pipetrain/schedule/action.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain::testing {

inline Schedule schedule_from_rows(const std::string& name, int stages_per_rank, int microbatches,
                                   const std::vector<std::string>& rows,
                                   Placement placement = Placement::kLoop) {
  Schedule schedule(name, static_cast<int>(rows.size()), stages_per_rank, microbatches, placement);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    std::istringstream in(rows[r]);
    std::string cell;
    while (in >> cell) {
      if (cell == ".")
        schedule.append_idle(static_cast<int>(r));
      else
        schedule.append(static_cast<int>(r), parse_action(cell));
    }
  }
  return schedule;
}

}  // namespace pipetrain::testing
