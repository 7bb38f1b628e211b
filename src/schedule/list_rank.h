// Private to src/schedule: what the zero-bubble list schedulers know of one rank, and the counts
// over a rank's slots that memory limits look at.
//
// The list heuristic of Qi et al. 2024 runs twice: on the unit-step grid (zb_list_schedule in
// generators.cpp) and on the simulator's clock (timed_list_schedule in zero_bubble.cpp). Both
// decide differently *when* a rank runs what, but keep the same state and update it the same way
// once an action is placed; that part lives here.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "pipetrain/schedule/action.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain::detail {

/// A FIFO of actions (a rank's pending W) on one vector, emptied in place whenever it runs dry: a
/// std::deque allocated and freed a block every few dozen actions on the schedulers' hottest
/// path.
class ActionQueue {
 public:
  bool empty() const { return head_ == items_.size(); }
  const Action& front() const { return items_[head_]; }
  void push_back(const Action& a) {
    if (empty()) {
      items_.clear();
      head_ = 0;
    }
    items_.push_back(a);
  }
  void pop_front() { ++head_; }

 private:
  std::vector<Action> items_;
  std::size_t head_ = 0;  // items_ before it are done
};

/// One rank's state in a list scheduler of F, I and W.
struct ListRank {
  std::vector<int> stages;          // the rank's stages, later stage first
  std::vector<int> next_f, next_i;  // per local stage: the next microbatch to run
  ActionQueue pending_w;            // I done, W not yet, oldest first
  int activations = 0;              // F done, I not yet
  int held = 0;                     // F done, W not yet
  int forwards_left = 0, inputs_left = 0;
  bool warm = false;          // an I ran: the warm-up is over
  bool want_forward = false;  // in the steady state: the kind to run next

  /// Starts the rank on `stages_of_rank` (ascending, as Schedule::stages_of_rank gives them) with
  /// `num_microbatches` each; returns how many compute actions (F, I and W) it has to run.
  std::size_t start(std::vector<int> stages_of_rank, int num_microbatches) {
    stages = std::move(stages_of_rank);
    std::reverse(stages.begin(), stages.end());
    next_f.assign(stages.size(), 0);
    next_i.assign(stages.size(), 0);
    forwards_left = inputs_left = num_microbatches * static_cast<int>(stages.size());
    return 3 * static_cast<std::size_t>(forwards_left);
  }

  /// Records that `pick` was placed: the next F or I of one of the rank's stages, or the oldest
  /// pending W. After an F the rank wants an I next, after an I an F.
  void place(const Action& pick) {
    const auto local = static_cast<std::size_t>(
        std::find(stages.begin(), stages.end(), pick.stage) - stages.begin());
    if (pick.kind == ActionKind::kForward) {
      ++next_f[local];
      --forwards_left;
      ++activations;
      ++held;
      want_forward = false;
    } else if (pick.kind == ActionKind::kBackwardInput) {
      ++next_i[local];
      --inputs_left;
      --activations;
      pending_w.push_back({pick.stage, ActionKind::kBackwardWeight, pick.microbatch});
      warm = true;
      want_forward = true;
    } else {
      pending_w.pop_front();
      --held;
    }
  }
};

/// Walks one rank's slots in order and calls in_flight(a, w) after each F, B, I or W, with a the
/// stage-microbatches between F and B/I (activations kept) and w those between I and W (what a
/// W still needs) at that point. Send/receive slots and idle steps are passed over.
template <class InFlight>
void for_each_in_flight(const std::vector<Schedule::Slot>& slots, InFlight&& in_flight) {
  std::int64_t a = 0, w = 0;
  for (const Schedule::Slot& slot : slots) {
    if (!slot) continue;
    switch (slot->kind) {
      case ActionKind::kForward: ++a; break;
      case ActionKind::kBackward: --a; break;
      case ActionKind::kBackwardInput: --a; ++w; break;
      case ActionKind::kBackwardWeight: --w; break;
      default: continue;
    }
    in_flight(a, w);
  }
}

}  // namespace pipetrain::detail
