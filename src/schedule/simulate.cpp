#include "pipetrain/schedule/simulate.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {

namespace {

constexpr int kNumComputeKinds = 4;

// A table over (stage, microbatch, kind) keys: a flat array when the key space is not much larger
// than the schedule (always so for a complete schedule), a hash map otherwise, so that a schedule
// read from a file that names microbatch 999999999 costs no more than its actions.
template <typename T>
class KeyTable {
 public:
  KeyTable(std::uint64_t keys, std::size_t num_actions, T absent) : absent_(absent) {
    dense_ = keys <= std::max<std::uint64_t>(8 * static_cast<std::uint64_t>(num_actions), 4096);
    if (dense_)
      table_.assign(static_cast<std::size_t>(keys), absent);
    else
      map_.reserve(num_actions);
  }
  T get(std::uint64_t key) const {
    if (dense_) return table_[static_cast<std::size_t>(key)];
    const auto it = map_.find(key);
    return it == map_.end() ? absent_ : it->second;
  }
  T& at(std::uint64_t key) {
    if (dense_) return table_[static_cast<std::size_t>(key)];
    return map_.try_emplace(key, absent_).first->second;
  }

 private:
  T absent_;
  bool dense_ = true;
  std::vector<T> table_;
  std::unordered_map<std::uint64_t, T> map_;
};

// Flat position of a compute action's key; the caller has checked the ranges.
std::uint64_t pair_key(const Action& action, int num_microbatches) {
  return static_cast<std::uint64_t>(action.stage) * static_cast<std::uint64_t>(num_microbatches) +
         static_cast<std::uint64_t>(action.microbatch);
}

std::uint64_t compute_key(const Action& action, int num_microbatches) {
  return pair_key(action, num_microbatches) * kNumComputeKinds +
         static_cast<std::uint64_t>(action.kind);
}

std::uint64_t pair_keys(const Schedule& schedule) {
  return static_cast<std::uint64_t>(schedule.num_stages()) *
         static_cast<std::uint64_t>(schedule.num_microbatches());
}

bool in_range(const Schedule& schedule, const Action& action) {
  return action.stage >= 0 && action.stage < schedule.num_stages() && action.microbatch >= 0 &&
         action.microbatch < schedule.num_microbatches();
}

Violation range_violation(const Schedule& schedule, const Action& action, int rank, int step) {
  return Violation{Violation::Rule::kRange, rank, step,
                   to_string(action) + " at rank " + std::to_string(rank) + " step " +
                       std::to_string(step) + " is out of range: stages are [0, " +
                       std::to_string(schedule.num_stages()) + "), microbatches [0, " +
                       std::to_string(schedule.num_microbatches()) + ")"};
}

[[noreturn]] void throw_report(const char* function, const Schedule& schedule,
                               const ValidationReport& report, const std::string& what) {
  throw ScheduleError(detail::message(function, "schedule '", schedule.name(), "' ", what, ":\n",
                                      report.format(schedule)));
}

double per_stage(const std::vector<double>& values, double fallback, const Action& action,
                 const char* name) {
  if (values.empty()) return fallback;
  PIPETRAIN_CHECK_ARG(action.stage >= 0 && static_cast<std::size_t>(action.stage) < values.size(),
                      "CostModel::compute_time", "stage=", action.stage, " of ", to_string(action),
                      " must be in [0, ", values.size(), ") (", name, " has ", values.size(),
                      " entries)");
  return values[static_cast<std::size_t>(action.stage)];
}

}  // namespace

MemoryProfile analyze_memory(const Schedule& schedule) {
  const int ranks = schedule.num_ranks();
  const int microbatches = schedule.num_microbatches();
  MemoryProfile profile;
  profile.peak_activations.assign(static_cast<std::size_t>(ranks), 0);
  profile.peak_pending_w.assign(static_cast<std::size_t>(ranks), 0);
  profile.peak_held.assign(static_cast<std::size_t>(ranks), 0);

  // Per (stage, microbatch): what this rank has run so far. Each rank only touches the keys of
  // the actions it holds, so the table is shared by all ranks and cleared per rank lazily.
  enum : std::uint8_t { kSeenF = 1, kSeenI = 2 };
  KeyTable<std::uint8_t> seen(pair_keys(schedule), schedule.num_actions(), 0);
  ValidationReport report;
  for (int r = 0; r < ranks; ++r) {
    const auto& slots = schedule.rank_slots(r);
    int activations = 0;
    int pending_w = 0;
    int held = 0;
    auto& peak_a = profile.peak_activations[static_cast<std::size_t>(r)];
    auto& peak_p = profile.peak_pending_w[static_cast<std::size_t>(r)];
    auto& peak_h = profile.peak_held[static_cast<std::size_t>(r)];
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (!slots[i] || !is_compute(slots[i]->kind)) continue;
      const Action& a = *slots[i];
      const int step = static_cast<int>(i);
      if (!in_range(schedule, a)) {
        report.add(range_violation(schedule, a, r, step));
        continue;
      }
      std::uint8_t& state = seen.at(pair_key(a, microbatches));
      auto before = [&](ActionKind needed) {
        report.add(
            Violation{Violation::Rule::kDependency, r, step,
                      to_string(a) + " at rank " + std::to_string(r) + " step " +
                          std::to_string(step) + " comes before " +
                          to_string(Action{a.stage, needed, a.microbatch}) + " on that rank"});
      };
      switch (a.kind) {
        case ActionKind::kForward:
          state |= kSeenF;
          ++activations;
          ++held;
          break;
        case ActionKind::kBackward:
          if (!(state & kSeenF)) before(ActionKind::kForward);
          --activations;
          --held;
          break;
        case ActionKind::kBackwardInput:
          if (!(state & kSeenF)) before(ActionKind::kForward);
          state |= kSeenI;
          --activations;
          ++pending_w;
          break;
        case ActionKind::kBackwardWeight:
          if (!(state & kSeenF))
            before(ActionKind::kForward);
          else if (!(state & kSeenI))
            before(ActionKind::kBackwardInput);
          --pending_w;
          --held;
          break;
        default:
          break;
      }
      peak_a = std::max(peak_a, activations);
      peak_p = std::max(peak_p, pending_w);
      peak_h = std::max(peak_h, held);
    }
    // Clear what this rank set so that the next rank starts from nothing.
    for (const auto& slot : slots)
      if (slot && is_compute(slot->kind) && in_range(schedule, *slot))
        seen.at(pair_key(*slot, microbatches)) = 0;
  }
  if (!report.ok()) {
    const std::size_t n = report.num_found();
    throw_report("analyze_memory", schedule, report,
                 "has " + std::to_string(n) + (n == 1 ? " action" : " actions") +
                     " out of order or out of range");
  }
  return profile;
}

void CostModel::check(const char* function) const {
  auto time = [&](double value, const char* name) {
    PIPETRAIN_CHECK_ARG(std::isfinite(value) && value >= 0.0, function, "costs.", name, "=",
                        value, " must be finite and >= 0");
  };
  auto times = [&](const std::vector<double>& values, const char* name) {
    for (std::size_t i = 0; i < values.size(); ++i)
      PIPETRAIN_CHECK_ARG(std::isfinite(values[i]) && values[i] >= 0.0, function, "costs.", name,
                          "[", i, "]=", values[i], " must be finite and >= 0");
  };
  time(forward, "forward");
  time(backward, "backward");
  time(backward_input, "backward_input");
  time(backward_weight, "backward_weight");
  times(forward_per_stage, "forward_per_stage");
  times(backward_per_stage, "backward_per_stage");
  times(backward_input_per_stage, "backward_input_per_stage");
  times(backward_weight_per_stage, "backward_weight_per_stage");
  time(latency, "latency");
  time(overlap_overhead, "overlap_overhead");
  time(bytes_per_transfer, "bytes_per_transfer");
  PIPETRAIN_CHECK_ARG(bandwidth > 0.0, function, "costs.bandwidth=", bandwidth,
                      " must be > 0 (infinity: free)");
}

void CostModel::check(const char* function, int num_stages) const {
  check(function);
  auto entries = [&](const std::vector<double>& values, const char* name) {
    PIPETRAIN_CHECK_ARG(values.empty() || values.size() == static_cast<std::size_t>(num_stages),
                        function, "costs.", name, " has ", values.size(),
                        " entries, expected 0 or num_stages=", num_stages);
  };
  entries(forward_per_stage, "forward_per_stage");
  entries(backward_per_stage, "backward_per_stage");
  entries(backward_input_per_stage, "backward_input_per_stage");
  entries(backward_weight_per_stage, "backward_weight_per_stage");
}

CostModel CostModel::uniform(double forward_time) {
  CostModel costs;
  costs.forward = forward_time;
  costs.backward = 2.0 * forward_time;
  costs.backward_input = forward_time;
  costs.backward_weight = forward_time;
  return costs;
}

double CostModel::compute_time(const Action& action) const {
  switch (action.kind) {
    case ActionKind::kForward:
      return per_stage(forward_per_stage, forward, action, "forward_per_stage");
    case ActionKind::kBackward:
      return per_stage(backward_per_stage, backward, action, "backward_per_stage");
    case ActionKind::kBackwardInput:
      return per_stage(backward_input_per_stage, backward_input, action,
                       "backward_input_per_stage");
    case ActionKind::kBackwardWeight:
      return per_stage(backward_weight_per_stage, backward_weight, action,
                       "backward_weight_per_stage");
    default:
      return 0.0;
  }
}

double CostModel::transfer_time() const {
  if (bytes_per_transfer == 0.0) return latency;
  return latency + bytes_per_transfer / bandwidth;
}

SimulationResult simulate(const Schedule& schedule, const CostModel& costs) {
  const int ranks = schedule.num_ranks();
  const int stages = schedule.num_stages();
  const int microbatches = schedule.num_microbatches();
  costs.check("simulate", stages);
  const double transfer = costs.transfer_time();

  // Number the compute actions rank by rank: node ids [first[r], first[r+1]) belong to rank r.
  std::vector<std::size_t> first(static_cast<std::size_t>(ranks) + 1, 0);
  for (int r = 0; r < ranks; ++r) {
    std::size_t count = 0;
    for (const auto& slot : schedule.rank_slots(r))
      if (slot && is_compute(slot->kind)) ++count;
    first[static_cast<std::size_t>(r) + 1] = first[static_cast<std::size_t>(r)] + count;
  }
  const std::size_t n = first.back();
  std::vector<Action> action(n);
  std::vector<int> rank_of(n);
  std::vector<int> step_of(n);
  std::vector<char> pair_first(n, 0);  // node begins an overlapped slot with node + 1

  constexpr std::int64_t kAbsent = -1;
  KeyTable<std::int64_t> where(pair_keys(schedule) * kNumComputeKinds, n, kAbsent);
  ValidationReport report;
  for (int r = 0; r < ranks; ++r) {
    const auto& slots = schedule.rank_slots(r);
    const auto& marks = schedule.rank_overlaps(r);
    std::size_t next_mark = 0;
    std::size_t id = first[static_cast<std::size_t>(r)];
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (next_mark < marks.size() && marks[next_mark] == i) {
        ++next_mark;
        const bool pair = i + 1 < slots.size() && slots[i] && slots[i + 1] &&
                          can_overlap(*slots[i], *slots[i + 1]);
        if (pair) {
          pair_first[id] = 1;
        } else {
          report.add(Violation{Violation::Rule::kOverlap, r, static_cast<int>(i),
                               "rank " + std::to_string(r) + " step " + std::to_string(i) +
                                   ": marked as an overlapped slot, but this step and the next "
                                   "are not an F and a B or I of different microbatches"});
        }
      }
      if (!slots[i] || !is_compute(slots[i]->kind)) continue;
      action[id] = *slots[i];
      rank_of[id] = r;
      step_of[id] = static_cast<int>(i);
      if (!in_range(schedule, *slots[i])) {
        report.add(range_violation(schedule, *slots[i], r, static_cast<int>(i)));
      } else {
        // A duplicate keeps the first occurrence as the producer; validate() reports duplicates.
        std::int64_t& slot = where.at(compute_key(*slots[i], microbatches));
        if (slot == kAbsent) slot = static_cast<std::int64_t>(id);
      }
      ++id;
    }
  }
  if (!report.ok()) {
    const std::size_t count = report.num_found();
    const bool marks =
        std::any_of(report.violations.begin(), report.violations.end(),
                    [](const Violation& v) { return v.rule == Violation::Rule::kOverlap; });
    throw_report(
        "simulate", schedule, report,
        marks ? "has " + std::to_string(count) + " broken overlap marks or actions out of range"
              : "has " + std::to_string(count) + (count == 1 ? " action" : " actions") +
                    " out of range");
  }

  // producer[id]: the node whose output `id` consumes; kNone when it consumes nothing, n (a
  // node that never finishes) when that action is not in the schedule.
  constexpr std::int64_t kNone = -1;
  auto lookup = [&](int stage, ActionKind kind, int mb) {
    return where.get(compute_key(Action{stage, kind, mb}, microbatches));
  };
  std::vector<std::int64_t> producer(n, kNone);
  std::vector<Action> needed(n);  // what producer[id] stands for, for the error message
  for (std::size_t id = 0; id < n; ++id) {
    const Action& a = action[id];
    Action need{};
    bool has_need = true;
    switch (a.kind) {
      case ActionKind::kForward:
        has_need = a.stage > 0;
        need = Action{a.stage - 1, ActionKind::kForward, a.microbatch};
        break;
      case ActionKind::kBackward:
      case ActionKind::kBackwardInput:
        if (a.stage == stages - 1) {
          need = Action{a.stage, ActionKind::kForward, a.microbatch};
        } else {
          need = Action{a.stage + 1, ActionKind::kBackward, a.microbatch};
          if (lookup(need.stage, need.kind, need.microbatch) == kAbsent &&
              lookup(need.stage, ActionKind::kBackwardInput, need.microbatch) != kAbsent)
            need.kind = ActionKind::kBackwardInput;
        }
        break;
      default:  // W
        need = Action{a.stage, ActionKind::kBackwardInput, a.microbatch};
        break;
    }
    if (!has_need) continue;
    needed[id] = need;
    const std::int64_t p = lookup(need.stage, need.kind, need.microbatch);
    // A missing producer can never finish: point at a sentinel node that is never done.
    producer[id] = p == kAbsent ? static_cast<std::int64_t>(n) : p;
  }

  // Rank worklist: a rank runs while its next action's producer is done; otherwise it waits in
  // the producer's list and is pushed back when the producer ends. Each action runs once and
  // each wait is resolved once, so the whole run is linear in the number of actions.
  std::vector<double> begin(n, 0.0);
  std::vector<double> end(n + 1, 0.0);
  std::vector<char> done(n + 1, 0);
  std::vector<int> waiters(n + 1, -1);  // head of the ranks waiting on a node
  std::vector<int> next_waiter(static_cast<std::size_t>(ranks), -1);
  std::vector<std::size_t> cursor(first.begin(), first.end() - 1);
  std::vector<double> free_at(static_cast<std::size_t>(ranks), 0.0);
  std::vector<int> worklist;
  worklist.reserve(static_cast<std::size_t>(ranks));
  for (int r = ranks - 1; r >= 0; --r) worklist.push_back(r);
  SimulationResult result;
  result.busy.assign(static_cast<std::size_t>(ranks), 0.0);
  while (!worklist.empty()) {
    const int r = worklist.back();
    worklist.pop_back();
    const auto ru = static_cast<std::size_t>(r);
    const std::size_t stop = first[ru + 1];
    std::size_t& id = cursor[ru];
    while (id < stop) {
      // An overlapped slot is two nodes that start together, once both inputs are ready.
      const std::size_t count = pair_first[id] ? 2 : 1;
      double start = free_at[ru];
      bool ready = true;
      for (std::size_t k = id; k < id + count && ready; ++k) {
        const std::int64_t p = producer[k];
        if (p == kNone) continue;
        const auto pu = static_cast<std::size_t>(p);
        if (!done[pu]) {
          next_waiter[ru] = waiters[pu];
          waiters[pu] = r;
          ready = false;
          break;
        }
        start = std::max(start, rank_of[pu] == r ? end[pu] : end[pu] + transfer);
      }
      if (!ready) break;
      const double duration = count == 1 ? costs.compute_time(action[id])
                                         : std::max(costs.compute_time(action[id]),
                                                    costs.compute_time(action[id + 1])) +
                                               costs.overlap_overhead;
      for (std::size_t k = id; k < id + count; ++k) {
        begin[k] = start;
        end[k] = start + duration;
        done[k] = 1;
      }
      free_at[ru] = start + duration;
      result.busy[ru] += duration;
      for (std::size_t k = id; k < id + count; ++k) {
        for (int w = waiters[k]; w >= 0;) {
          const int next = next_waiter[static_cast<std::size_t>(w)];
          worklist.push_back(w);
          w = next;
        }
        waiters[k] = -1;
      }
      id += count;
    }
  }

  for (int r = 0; r < ranks; ++r) {
    const auto ru = static_cast<std::size_t>(r);
    if (cursor[ru] == first[ru + 1]) continue;
    std::size_t id = cursor[ru];
    // The half of an overlapped slot that waits.
    if (pair_first[id] && (producer[id] == kNone || done[static_cast<std::size_t>(producer[id])]))
      ++id;
    const Action& need = needed[id];
    const auto p = static_cast<std::size_t>(producer[id]);
    std::string why = to_string(action[id]) + " on rank " + std::to_string(r) + " step " +
                      std::to_string(step_of[id]) + " waits for " + to_string(need);
    if (p == n) {
      why += ", which is not in the schedule";
    } else {
      why += " (rank " + std::to_string(rank_of[p]) + " step " + std::to_string(step_of[p]) +
             "), which never runs";
    }
    report.add(
        Violation{Violation::Rule::kDeadlock, r, step_of[id], std::move(why)});
  }
  if (!report.ok()) {
    const std::size_t count = report.num_found();
    throw_report("simulate", schedule, report,
                 "cannot finish: " + std::to_string(count) +
                     (count == 1 ? " rank is stuck" : " ranks are stuck"));
  }

  result.actions.reserve(n);
  for (std::size_t id = 0; id < n; ++id) {
    result.actions.push_back(TimedAction{rank_of[id], step_of[id], action[id], begin[id], end[id]});
    result.makespan = std::max(result.makespan, end[id]);
  }
  // A rank's span runs from its first start to its last end.
  std::vector<double> span_begin(static_cast<std::size_t>(ranks), 0.0);
  std::vector<double> span_end(static_cast<std::size_t>(ranks), 0.0);
  for (std::size_t r = 0; r < static_cast<std::size_t>(ranks); ++r) {
    if (first[r] == first[r + 1]) continue;
    span_begin[r] = begin[first[r]];
    for (std::size_t id = first[r]; id < first[r + 1]; ++id)
      span_end[r] = std::max(span_end[r], end[id]);
  }
  result.idle.resize(static_cast<std::size_t>(ranks));
  result.span_idle.resize(static_cast<std::size_t>(ranks));
  double idle_sum = 0.0;
  double span_idle_sum = 0.0;
  double span_sum = 0.0;
  for (std::size_t r = 0; r < result.idle.size(); ++r) {
    result.idle[r] = result.makespan - result.busy[r];
    result.span_idle[r] = (span_end[r] - span_begin[r]) - result.busy[r];
    idle_sum += result.idle[r];
    span_idle_sum += result.span_idle[r];
    span_sum += span_end[r] - span_begin[r];
  }
  result.bubble_fraction =
      result.makespan > 0.0 ? idle_sum / (static_cast<double>(ranks) * result.makespan) : 0.0;
  result.span_bubble_fraction = span_sum > 0.0 ? span_idle_sum / span_sum : 0.0;
  return result;
}

}  // namespace pipetrain
