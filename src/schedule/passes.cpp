#include "pipetrain/schedule/passes.h"

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <utility>

#include "action_index.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {

namespace {

using detail::ActionIndex;
using detail::Cell;

// A communication action placed in the gap before a rank's compute action number `gap`
// (gap == number of compute actions that come before it).
struct CommEvent {
  int gap = 0;
  std::int64_t time = 0;  // when the message is sent, in the unit-time run
  bool recv = false;
  int peer = 0;
  Action action;
};

bool event_before(const CommEvent& a, const CommEvent& b) {
  return std::tie(a.gap, a.time, a.recv, a.peer, a.action) <
         std::tie(b.gap, b.time, b.recv, b.peer, b.action);
}

}  // namespace

// Why the placement below is deadlock-free and matched in order: run the compute schedule with
// every action taking one time unit and unbounded buffering. A message produced at time T is
// sent right after its producer (the sender's gap at T) and received in the receiver's gap at
// T: after the receiver's actions that end by T, before those that start at T or later (its
// consumer among them). Both ends of every message then sit at the same time T, every rank's
// groups are ordered by time, and a rank waiting in a group whose latest time is T can only
// wait on a peer whose current group ends before T; a cycle of waits would need times that
// decrease around the cycle, so none exists. A rank finishes at most one action per time unit
// and an action produces at most one message, so the messages between two ranks have distinct
// times, and sorting each receiver's gap by time puts receives in send order.
Schedule lower(const Schedule& schedule) {
  PIPETRAIN_CHECK_ARG(!schedule.has_comm(), "lower", "schedule '", schedule.name(),
                      "' already has communication actions");
  const ValidationReport report = validate(schedule);
  if (!report.ok())
    throw ScheduleError(detail::message("lower", "schedule '", schedule.name(),
                                        "' is not a valid compute schedule:\n",
                                        report.format(schedule)));

  const int num_ranks = schedule.num_ranks();
  const int num_stages = schedule.num_stages();
  const auto P = static_cast<std::size_t>(num_ranks);
  ActionIndex index(num_stages, schedule.num_microbatches(), schedule.num_actions());
  // Per rank: the steps of its compute actions, and the unit-time end of each.
  std::vector<std::vector<int>> steps(P);
  std::vector<std::vector<std::int64_t>> ends(P);
  std::vector<int> rank_of(static_cast<std::size_t>(num_stages));
  for (int s = 0; s < num_stages; ++s)
    rank_of[static_cast<std::size_t>(s)] = schedule.rank_of_stage(s);
  for (int r = 0; r < num_ranks; ++r) {
    const auto& row = schedule.rank_slots(r);
    for (std::size_t i = 0; i < row.size(); ++i) {
      if (!row[i]) continue;
      const auto k = static_cast<int>(steps[static_cast<std::size_t>(r)].size());
      index.insert(*row[i], Cell{r, k});  // step holds the compute index here
      steps[static_cast<std::size_t>(r)].push_back(static_cast<int>(i));
    }
    ends[static_cast<std::size_t>(r)].assign(steps[static_cast<std::size_t>(r)].size(), 0);
  }
  // The rows once: rank_slots() checks its argument on every call, and this is looked up per
  // action several times.
  std::vector<const std::vector<Schedule::Slot>*> rows(P);
  for (int r = 0; r < num_ranks; ++r) rows[static_cast<std::size_t>(r)] = &schedule.rank_slots(r);
  auto action_of = [&](int r, int k) -> const Action& {
    const auto ur = static_cast<std::size_t>(r);
    return *(*rows[ur])[static_cast<std::size_t>(steps[ur][static_cast<std::size_t>(k)])];
  };
  // The cross-rank producer of an action's input (compute index in `step`), or absent.
  auto input_of = [&](const Action& a, int r) -> Cell {
    if (a.kind == ActionKind::kForward && a.stage > 0 &&
        rank_of[static_cast<std::size_t>(a.stage - 1)] != r)
      return index.find(ActionKind::kForward, a.stage - 1, a.microbatch);
    if (is_input_backward(a.kind) && a.stage + 1 < num_stages &&
        rank_of[static_cast<std::size_t>(a.stage + 1)] != r) {
      const Cell b = index.find(ActionKind::kBackward, a.stage + 1, a.microbatch);
      return b.found() ? b : index.find(ActionKind::kBackwardInput, a.stage + 1, a.microbatch);
    }
    return Cell{};
  };

  // Unit-time run with unbounded buffering (validate() guarantees it finishes).
  std::vector<std::size_t> cursor(P, 0);
  std::vector<std::int64_t> free_at(P, 0);
  std::vector<Cell> waiting_for(P);
  std::vector<std::vector<int>> waiters(P);
  std::vector<int> work;
  for (int r = num_ranks - 1; r >= 0; --r) work.push_back(r);
  while (!work.empty()) {
    const auto r = static_cast<std::size_t>(work.back());
    work.pop_back();
    const std::size_t start = cursor[r];
    while (cursor[r] < steps[r].size()) {
      const int k = static_cast<int>(cursor[r]);
      const Cell input = input_of(action_of(static_cast<int>(r), k), static_cast<int>(r));
      std::int64_t begin = free_at[r];
      if (input.found()) {
        const auto q = static_cast<std::size_t>(input.rank);
        if (cursor[q] <= static_cast<std::size_t>(input.step)) {
          waiting_for[r] = input;
          waiters[q].push_back(static_cast<int>(r));
          break;
        }
        begin = std::max(begin, ends[q][static_cast<std::size_t>(input.step)]);
      }
      free_at[r] = ends[r][cursor[r]] = begin + 1;
      ++cursor[r];
    }
    if (cursor[r] == start) continue;
    auto& mine = waiters[r];
    for (std::size_t k = 0; k < mine.size();) {
      const auto w = static_cast<std::size_t>(mine[k]);
      if (cursor[r] > static_cast<std::size_t>(waiting_for[w].step)) {
        work.push_back(mine[k]);
        mine[k] = mine.back();
        mine.pop_back();
      } else {
        ++k;
      }
    }
  }

  // One send after each producer whose consumer is on another rank; the receive in the
  // receiver's gap at the same time.
  std::vector<std::vector<CommEvent>> events(P);
  for (int r = 0; r < num_ranks; ++r) {
    const auto ur = static_cast<std::size_t>(r);
    for (std::size_t k = 0; k < steps[ur].size(); ++k) {
      const Action& a = action_of(r, static_cast<int>(k));
      Action send, recv;
      if (a.kind == ActionKind::kForward && a.stage + 1 < num_stages) {
        send = Action{a.stage, ActionKind::kSendForward, a.microbatch};
        recv = Action{a.stage + 1, ActionKind::kRecvForward, a.microbatch};
      } else if (is_input_backward(a.kind) && a.stage > 0) {
        send = Action{a.stage, ActionKind::kSendBackward, a.microbatch};
        recv = Action{a.stage - 1, ActionKind::kRecvBackward, a.microbatch};
      } else {
        continue;
      }
      const int q = rank_of[static_cast<std::size_t>(recv.stage)];
      if (q == r) continue;
      const auto uq = static_cast<std::size_t>(q);
      const std::int64_t time = ends[ur][k];
      events[ur].push_back(CommEvent{static_cast<int>(k) + 1, time, false, q, send});
      const auto gap = std::upper_bound(ends[uq].begin(), ends[uq].end(), time) - ends[uq].begin();
      events[uq].push_back(CommEvent{static_cast<int>(gap), time, true, r, recv});
    }
  }

  // Lay the result on the input's columns: each rank's sends go right after their producer's
  // column, its receives right before their consumer's column, and every column of the input
  // grows by the most communication actions any rank puts after it, so the grid stays aligned.
  const std::size_t num_cols = schedule.num_steps();
  // placed[r]: (block, action) in order, where block b holds what goes after input column b-1
  // (b = 0: before column 0). Sorted events give nondecreasing blocks: within a gap the sends
  // (sent when the gap opens) come before the receives.
  std::vector<std::vector<std::pair<std::size_t, Action>>> placed(P);
  std::vector<std::size_t> width(num_cols + 1, 0);
  for (std::size_t r = 0; r < P; ++r) {
    // Bucket by gap (linear), then sort each gap's few events.
    std::vector<std::size_t> first(steps[r].size() + 2, 0);
    for (const CommEvent& e : events[r]) ++first[static_cast<std::size_t>(e.gap) + 1];
    for (std::size_t g = 1; g < first.size(); ++g) first[g] += first[g - 1];
    std::vector<CommEvent> sorted(events[r].size());
    for (const CommEvent& e : events[r]) sorted[first[static_cast<std::size_t>(e.gap)]++] = e;
    for (auto it = sorted.begin(); it != sorted.end();) {
      const auto end =
          std::find_if(it, sorted.end(), [&](const CommEvent& e) { return e.gap != it->gap; });
      std::sort(it, end, event_before);
      it = end;
    }
    events[r] = std::move(sorted);
    placed[r].reserve(events[r].size());
    std::size_t run = 0;
    for (const CommEvent& e : events[r]) {
      const auto gap = static_cast<std::size_t>(e.gap);
      std::size_t block;
      if (!e.recv || gap == steps[r].size())
        block = gap == 0 ? 0 : static_cast<std::size_t>(steps[r][gap - 1]) + 1;
      else
        block = static_cast<std::size_t>(steps[r][gap]);
      // Sorted events already give nondecreasing blocks; this keeps the order if they did not.
      if (!placed[r].empty()) block = std::max(block, placed[r].back().first);
      run = !placed[r].empty() && placed[r].back().first == block ? run + 1 : 1;
      placed[r].emplace_back(block, e.action);
      width[block] = std::max(width[block], run);
    }
  }
  std::size_t total = num_cols;
  for (std::size_t w : width) total += w;
  Schedule out(schedule.name(), num_ranks, schedule.stages_per_rank(), schedule.num_microbatches(),
               schedule.placement());
  for (std::size_t r = 0; r < P; ++r) {
    auto& row = out.rank_slots(static_cast<int>(r));
    const auto& in = schedule.rank_slots(static_cast<int>(r));
    row.reserve(total);
    std::size_t next = 0;
    for (std::size_t b = 0; b <= num_cols; ++b) {
      if (b > 0) row.push_back(b - 1 < in.size() ? in[b - 1] : std::nullopt);
      std::size_t used = 0;
      for (; next < placed[r].size() && placed[r][next].first == b; ++next, ++used)
        row.emplace_back(placed[r][next].second);
      row.resize(row.size() + width[b] - used);
    }
  }
  out.normalize();
  return out;
}

Schedule strip_comm(const Schedule& schedule) {
  Schedule out(schedule.name(), schedule.num_ranks(), schedule.stages_per_rank(),
               schedule.num_microbatches(), schedule.placement());
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    const auto& slots = schedule.rank_slots(r);
    const auto& marks = schedule.rank_overlaps(r);
    std::size_t next_mark = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      const bool marked = next_mark < marks.size() && marks[next_mark] == i;
      if (marked) ++next_mark;
      if (!slots[i] || !is_compute(slots[i]->kind)) continue;
      out.append(r, *slots[i]);
      // A pair's two compute actions stay adjacent; a mark no longer on a pair is dropped.
      if (marked && i + 1 < slots.size() && slots[i + 1] && can_overlap(*slots[i], *slots[i + 1])) {
        out.append(r, *slots[++i]);
        out.mark_overlap(r, out.rank_slots(r).size() - 2);
      }
    }
  }
  return out;
}

Schedule expand_overlap(const Schedule& schedule) {
  Schedule out = schedule;
  for (int r = 0; r < out.num_ranks(); ++r) {
    auto& slots = out.rank_slots(r);
    for (std::size_t i : schedule.rank_overlaps(r)) {
      if (i + 1 >= slots.size() || !slots[i + 1] || !slots[i]) continue;
      if (slots[i + 1]->kind == ActionKind::kForward && is_input_backward(slots[i]->kind))
        std::swap(slots[i], slots[i + 1]);
    }
  }
  out.clear_overlaps();
  return out;
}

Schedule merge_backward(const Schedule& schedule) {
  Schedule out = schedule;
  for (int r = 0; r < out.num_ranks(); ++r) {
    for (auto& slot : out.rank_slots(r)) {
      if (!slot) continue;
      if (slot->kind == ActionKind::kBackwardInput)
        slot->kind = ActionKind::kBackward;
      else if (slot->kind == ActionKind::kBackwardWeight)
        slot.reset();
    }
  }
  out.normalize();
  return out;
}

Schedule forward_only(const Schedule& schedule) {
  Schedule out(schedule.name() + "-forward", schedule.num_ranks(), schedule.stages_per_rank(),
               schedule.num_microbatches(), schedule.placement());
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    for (const auto& slot : schedule.rank_slots(r)) {
      const bool keep = slot && (slot->kind == ActionKind::kForward ||
                                 slot->kind == ActionKind::kSendForward ||
                                 slot->kind == ActionKind::kRecvForward);
      if (keep) {
        out.append(r, *slot);
      } else {
        out.append_idle(r);
      }
    }
  }
  out.normalize();
  return out;
}

}  // namespace pipetrain
