// Private to src/schedule: where each (kind, stage, microbatch) sits in a schedule.
//
// validate() and lower() look actions up by key many times; at P=128, M=1024, v=2 a schedule
// holds about a million actions, so the table is a flat array whenever the key space is not
// much larger than the schedule (always the case for a complete schedule), and a hash map
// otherwise (a broken schedule that names huge microbatch numbers).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "pipetrain/schedule/action.h"

namespace pipetrain::detail {

/// A cell of the rank x step grid; rank < 0 when absent.
struct Cell {
  int rank = -1;
  int step = -1;
  bool found() const { return rank >= 0; }
};

class ActionIndex {
 public:
  /// Keys must satisfy 0 <= stage < num_stages and 0 <= microbatch < num_microbatches.
  ActionIndex(int num_stages, int num_microbatches, std::size_t num_actions)
      : num_stages_(num_stages), num_microbatches_(num_microbatches) {
    const auto keys = static_cast<std::uint64_t>(num_stages) *
                      static_cast<std::uint64_t>(num_microbatches) * kNumActionKinds;
    dense_ = keys <= std::max<std::uint64_t>(8 * static_cast<std::uint64_t>(num_actions), 4096);
    if (dense_) {
      table_.resize(static_cast<std::size_t>(keys));
    } else {
      map_.reserve(num_actions);
    }
  }

  Cell find(ActionKind kind, int stage, int microbatch) const {
    const std::uint64_t k = key(kind, stage, microbatch);
    if (dense_) return table_[static_cast<std::size_t>(k)];
    const auto it = map_.find(k);
    return it == map_.end() ? Cell{} : it->second;
  }
  Cell find(const Action& action) const {
    return find(action.kind, action.stage, action.microbatch);
  }

  /// Records `cell` for `action` unless the key is already present; returns the cell recorded
  /// before (absent when this is the first).
  Cell insert(const Action& action, Cell cell) {
    const std::uint64_t k = key(action.kind, action.stage, action.microbatch);
    if (dense_) {
      Cell& slot = table_[static_cast<std::size_t>(k)];
      if (slot.found()) return slot;
      slot = cell;
      return Cell{};
    }
    const auto [it, inserted] = map_.try_emplace(k, cell);
    return inserted ? Cell{} : it->second;
  }

  int num_stages() const { return num_stages_; }
  int num_microbatches() const { return num_microbatches_; }

 private:
  std::uint64_t key(ActionKind kind, int stage, int microbatch) const {
    return (static_cast<std::uint64_t>(stage) * static_cast<std::uint64_t>(num_microbatches_) +
            static_cast<std::uint64_t>(microbatch)) *
               kNumActionKinds +
           static_cast<std::uint64_t>(kind);
  }

  int num_stages_;
  int num_microbatches_;
  bool dense_;
  std::vector<Cell> table_;
  std::unordered_map<std::uint64_t, Cell> map_;
};

}  // namespace pipetrain::detail
