// Cost-aware zero-bubble generation (generators.h, "cost-aware zero-bubble generation").
//
// The unit-grid ZB-H1 and ZB-H2 of generators.cpp run the list heuristic of Qi et al. 2024
// (section 3.1) on a grid of unit steps. Here the same heuristic runs on the simulator's clock:
// every action takes its cost, a transfer between ranks its transfer time, and a rank decides
// whenever it is free and something changed (an action ended, or an output arrived). With unit
// costs and no transfer time the two are the same algorithm, step for step (asserted by
// test_zero_bubble), so the rules below are the grid's rules, plus what other costs need:
//
//   warm-up    until its first I, a rank runs a ready I, else a ready F that its memory admits.
//              Variant `warmup_guard`: not an F whose end would come after the rank's next I is
//              ready (the paper's binary hyperparameter: an extra F may delay the first B).
//   steady     F and I alternate. When the one due is not ready: variant `greedy_other` runs the
//              other kind if ready; when F is due but the memory forbids it, the I runs if ready
//              (otherwise the rank could wait for memory only its own I frees).
//   W          the oldest pending W fills a gap: always when memory blocks the F, and otherwise
//              in any gap, or (variant `long_gaps_only`) only when the action due is not known to
//              be ready within the W's time. The W left run at the end.
//   V          with two stages per rank, the later stage first; an F of the first chunk (stage r)
//              keeps room for one more stage-microbatch, so the oldest microbatch's F of the
//              second chunk always fits and the heuristic cannot deadlock on memory.
//   memory     an F runs only while the rank stays within the family's limits (counts of
//              stage-microbatches, those of the unit-grid schedule) and the byte cap; with
//              pending_w_bytes > activation_bytes each activation is counted at the larger size,
//              so that no I can break the cap either.
//
// A second candidate generator, retime_w(), keeps the unit-grid schedule's order of F and I and
// places only its W on the clock (the V-Half and V-Min blocks fix that order; it gains most
// there). Each generator simulates the unit-grid schedule (when it fits the cap), both retimings
// and every list variant that finishes, and keeps the fastest, the unit-grid one on ties. Under
// costs where the unit grid is the clock (F = I = W on every stage, free transfers) it keeps the
// unit-grid schedule outright when it fits the cap: the list heuristic is faster there only
// for ZB-V with M < 2P-1 and V-Half with small M (see docs/schedules.md), and the published
// schedules stay what they are.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <deque>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <string>
#include <vector>

#include "layout.h"
#include "list_rank.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {
namespace {

constexpr ActionKind kF = ActionKind::kForward;
constexpr ActionKind kI = ActionKind::kBackwardInput;
constexpr ActionKind kW = ActionKind::kBackwardWeight;
constexpr double kNever = std::numeric_limits<double>::infinity();
constexpr std::int64_t kMaxBytes = std::int64_t{1} << 39;

using Orders = std::vector<std::vector<Action>>;

// Per-rank limits of a family, in stage-microbatches.
struct Limits {
  std::vector<int> max_activations;  // F done, I not yet
  std::vector<int> max_held;         // F done, W not yet
};

struct Variant {
  bool warmup_guard = false;
  bool long_gaps_only = false;
  bool greedy_other = false;
};

// End times of the placed actions per (stage, microbatch, kind); kNever until placed.
class Ends {
 public:
  Ends(int num_stages, int num_microbatches)
      : mb_(num_microbatches),
        table_(static_cast<std::size_t>(num_stages) * static_cast<std::size_t>(num_microbatches) *
                   3,
               kNever) {}
  double& at(ActionKind kind, int stage, int mb) {
    const std::size_t k = kind == kF ? 0 : kind == kW ? 2 : 1;
    return table_[(static_cast<std::size_t>(stage) * static_cast<std::size_t>(mb_) +
                   static_cast<std::size_t>(mb)) *
                      3 +
                  k];
  }

 private:
  int mb_;
  std::vector<double> table_;
};

// The timed list scheduler. Returns each rank's order, or nothing when the variant gets stuck.
std::optional<Orders> timed_list_schedule(const Schedule& shape, const Limits& limits,
                                          const ZeroBubbleCosts& zc, Variant variant) {
  const int num_ranks = shape.num_ranks();
  const int num_stages = shape.num_stages();
  const int num_mb = shape.num_microbatches();
  const bool v_shape = shape.placement() == Placement::kV;
  const CostModel& costs = zc.costs;
  const double transfer = costs.transfer_time();
  const std::int64_t cap = zc.memory_cap_bytes;
  const std::int64_t unit = std::max(zc.activation_bytes, zc.pending_w_bytes);
  Ends ends(num_stages, num_mb);

  struct RankState : detail::ListRank {
    double free_at = 0.0;  // when the rank's running action ends
  };
  std::vector<RankState> ranks(static_cast<std::size_t>(num_ranks));
  std::size_t remaining = 0;
  for (int r = 0; r < num_ranks; ++r)
    remaining += ranks[static_cast<std::size_t>(r)].start(shape.stages_of_rank(r), num_mb);
  // When the input of `a` is available on rank `r`: kNever while its producer is not placed.
  const auto available = [&](const Action& a, int r) -> double {
    Action producer{};
    if (a.kind == kF) {
      if (a.stage == 0) return 0.0;
      producer = {a.stage - 1, kF, a.microbatch};
    } else if (a.kind == kI) {
      producer = a.stage == num_stages - 1 ? Action{a.stage, kF, a.microbatch}
                                           : Action{a.stage + 1, kI, a.microbatch};
    } else {
      producer = {a.stage, kI, a.microbatch};
    }
    const double end = ends.at(producer.kind, producer.stage, producer.microbatch);
    if (end == kNever) return kNever;
    return shape.rank_of_stage(producer.stage) == r ? end : end + transfer;
  };

  Orders orders(static_cast<std::size_t>(num_ranks));
  std::priority_queue<double, std::vector<double>, std::greater<>> events;
  double t = 0.0;
  while (remaining > 0) {
    bool progress = true;
    while (progress) {  // more than one pass at a time only for actions that take no time
      progress = false;
      for (int r = 0; r < num_ranks; ++r) {
        RankState& st = ranks[static_cast<std::size_t>(r)];
        if (st.free_at > t) continue;
        const auto ru = static_cast<std::size_t>(r);
        // Whether an F of local stage k fits the limits and the cap.
        const auto admits = [&](std::size_t k) {
          const int reserve = v_shape && st.stages[k] < num_ranks ? 1 : 0;
          if (st.activations + 1 > limits.max_activations[ru]) return false;
          if (st.held + 1 + reserve > limits.max_held[ru]) return false;
          if (cap > 0) {
            const std::int64_t waiting_w = st.held - st.activations;
            if ((st.activations + 1 + reserve) * unit + waiting_w * zc.pending_w_bytes > cap)
              return false;
          }
          return true;
        };
        bool f_blocked_by_memory = false;
        // The local stage whose next action of `kind` is ready at t (F: and admitted).
        const auto ready = [&](ActionKind kind) -> std::optional<std::size_t> {
          for (std::size_t k = 0; k < st.stages.size(); ++k) {
            const int mb = kind == kF ? st.next_f[k] : st.next_i[k];
            if (mb >= num_mb) continue;
            if (kind == kI && mb >= st.next_f[k]) continue;
            if (available({st.stages[k], kind, mb}, r) > t) continue;
            if (kind == kF && !admits(k)) {
              f_blocked_by_memory = true;
              continue;
            }
            return k;
          }
          return std::nullopt;
        };
        // The earliest known time the next action of `kind` is ready (kNever: not known).
        const auto next_ready = [&](ActionKind kind) {
          double best = kNever;
          for (std::size_t k = 0; k < st.stages.size(); ++k) {
            const int mb = kind == kF ? st.next_f[k] : st.next_i[k];
            if (mb >= num_mb || (kind == kI && mb >= st.next_f[k])) continue;
            best = std::min(best, available({st.stages[k], kind, mb}, r));
          }
          return best;
        };
        const auto make = [&](std::size_t k, ActionKind kind) {
          return Action{st.stages[k], kind, kind == kF ? st.next_f[k] : st.next_i[k]};
        };
        std::optional<Action> pick;
        bool memory_wants_w = false;
        double due_ready = kNever;  // when the action due is known to be ready
        if (!st.warm) {
          if (auto k = ready(kI)) {
            pick = make(*k, kI);
          } else if (auto k = ready(kF)) {
            const Action f = make(*k, kF);
            const double first_i = next_ready(kI);
            if (!variant.warmup_guard || !(first_i < t + costs.compute_time(f))) pick = f;
          }
        } else {
          if (st.forwards_left == 0) st.want_forward = false;
          if (st.inputs_left == 0) st.want_forward = true;
          const ActionKind want = st.want_forward ? kF : kI;
          const ActionKind other = st.want_forward ? kI : kF;
          const int left = st.want_forward ? st.forwards_left : st.inputs_left;
          const int other_left = st.want_forward ? st.inputs_left : st.forwards_left;
          if (left > 0) {
            if (auto k = ready(want)) pick = make(*k, want);
          }
          if (!pick && want == kF && f_blocked_by_memory) {
            memory_wants_w = true;
            if (st.pending_w.empty() && other_left > 0) {
              if (auto k = ready(kI)) pick = make(*k, kI);
            }
          }
          if (!pick && variant.greedy_other && other_left > 0) {
            if (auto k = ready(other)) pick = make(*k, other);
          }
          if (!pick && left > 0) due_ready = next_ready(want);
        }
        if (!pick && !st.pending_w.empty()) {
          const Action& w = st.pending_w.front();
          const bool in_gap = !variant.long_gaps_only || !st.warm || memory_wants_w ||
                              st.forwards_left + st.inputs_left == 0 ||
                              !(due_ready < t + costs.compute_time(w));
          if (in_gap && ends.at(kI, w.stage, w.microbatch) <= t) pick = w;
        }
        if (!pick) continue;
        // Place it.
        const double end = t + costs.compute_time(*pick);
        orders[ru].push_back(*pick);
        ends.at(pick->kind, pick->stage, pick->microbatch) = end;
        st.free_at = end;
        events.push(end);
        if (transfer > 0.0) events.push(end + transfer);
        --remaining;
        progress = progress || end <= t;
        st.place(*pick);
      }
    }
    if (remaining == 0) break;
    while (!events.empty() && events.top() <= t) events.pop();
    if (events.empty()) return std::nullopt;  // nothing left to wait for: stuck
    t = events.top();
  }
  return orders;
}

// Keeps each rank's order of F and I from `base` and places its W on the clock: a rank runs its
// next F or I as soon as it is ready, and its oldest pending W when that action is not ready (or,
// with long_gaps_only, not known to be ready within the W's time), or when the F would raise the
// rank's held stage-microbatches above `base`'s peak or its bytes above the cap. `base`'s own
// order satisfies both limits, so the rank never waits for memory that only it can free: the
// result finishes whenever `base` does. Returns nothing when it cannot finish (a cap below
// `base`'s own peak).
std::optional<Orders> retime_w(const Schedule& base, const ZeroBubbleCosts& zc,
                               bool long_gaps_only) {
  const int num_ranks = base.num_ranks();
  const int num_stages = base.num_stages();
  const int num_mb = base.num_microbatches();
  const double transfer = zc.costs.transfer_time();
  const std::int64_t cap = zc.memory_cap_bytes;
  const std::int64_t unit = std::max(zc.activation_bytes, zc.pending_w_bytes);
  const MemoryProfile memory = analyze_memory(base);
  Ends ends(num_stages, num_mb);
  struct RankState {
    std::vector<Action> order;  // F and I of base, in order
    std::size_t next = 0;
    std::deque<Action> pending_w;
    int activations = 0, held = 0;
    double free_at = 0.0;
  };
  std::vector<RankState> ranks(static_cast<std::size_t>(num_ranks));
  std::size_t remaining = 0;
  for (int r = 0; r < num_ranks; ++r) {
    for (const Action& a : base.rank_actions(r)) {
      if (a.kind == kF || a.kind == kI) ranks[static_cast<std::size_t>(r)].order.push_back(a);
      if (is_compute(a.kind)) ++remaining;
    }
  }
  const auto available = [&](const Action& a, int r) -> double {
    Action producer{};
    if (a.kind == kF) {
      if (a.stage == 0) return 0.0;
      producer = {a.stage - 1, kF, a.microbatch};
    } else {
      producer = a.stage == num_stages - 1 ? Action{a.stage, kF, a.microbatch}
                                           : Action{a.stage + 1, kI, a.microbatch};
    }
    const double end = ends.at(producer.kind, producer.stage, producer.microbatch);
    if (end == kNever) return kNever;
    return base.rank_of_stage(producer.stage) == r ? end : end + transfer;
  };
  Orders orders(static_cast<std::size_t>(num_ranks));
  std::priority_queue<double, std::vector<double>, std::greater<>> events;
  double t = 0.0;
  while (remaining > 0) {
    bool progress = true;
    while (progress) {
      progress = false;
      for (int r = 0; r < num_ranks; ++r) {
        const auto ru = static_cast<std::size_t>(r);
        RankState& st = ranks[ru];
        if (st.free_at > t) continue;
        std::optional<Action> pick;
        bool memory_blocked = false;
        double due_ready = kNever;
        if (st.next < st.order.size()) {
          const Action& a = st.order[st.next];
          due_ready = available(a, r);
          if (a.kind == kF) {
            const std::int64_t waiting_w = st.held - st.activations;
            memory_blocked = st.held + 1 > memory.peak_held[ru] ||
                             (cap > 0 && (st.activations + 1) * unit +
                                                 waiting_w * zc.pending_w_bytes >
                                             cap);
          }
          if (due_ready <= t && !memory_blocked) pick = a;
        }
        if (!pick && !st.pending_w.empty()) {
          const Action& w = st.pending_w.front();
          const bool in_gap = !long_gaps_only || memory_blocked || st.next == st.order.size() ||
                              !(due_ready < t + zc.costs.compute_time(w));
          if (in_gap) pick = w;
        }
        if (!pick) continue;
        const double end = t + zc.costs.compute_time(*pick);
        orders[ru].push_back(*pick);
        ends.at(pick->kind, pick->stage, pick->microbatch) = end;
        st.free_at = end;
        events.push(end);
        if (transfer > 0.0) events.push(end + transfer);
        --remaining;
        progress = progress || end <= t;
        if (pick->kind == kF) {
          ++st.next;
          ++st.activations;
          ++st.held;
        } else if (pick->kind == kI) {
          ++st.next;
          --st.activations;
          st.pending_w.push_back({pick->stage, kW, pick->microbatch});
        } else {
          st.pending_w.pop_front();
          --st.held;
        }
      }
    }
    if (remaining == 0) break;
    while (!events.empty() && events.top() <= t) events.pop();
    if (events.empty()) return std::nullopt;
    t = events.top();
  }
  return orders;
}

Limits family_limits(std::string_view name, int p) {
  Limits limits;
  for (int r = 0; r < p; ++r) {
    if (name == "zb-h1") {
      limits.max_activations.push_back(p - r);
      limits.max_held.push_back(p);
    } else if (name == "zb-h2") {
      limits.max_activations.push_back(2 * (p - 1 - r) + 1);
      limits.max_held.push_back(2 * p - 1);
    } else {
      limits.max_activations.push_back(INT_MAX);
      limits.max_held.push_back(name == "zb-v"     ? 2 * p
                                : name == "v-half" ? 2 * (p / 2 + 1)
                                                   : 2 * ((p + 4) / 3));
    }
  }
  return limits;
}

const char* function_of(std::string_view name) {
  if (name == "zb-h1") return "zb_h1";
  if (name == "zb-h2") return "zb_h2";
  if (name == "zb-v") return "zb_v";
  if (name == "v-half") return "v_half";
  return "v_min";
}

// True when F, I and W take the same time on every stage and transfers are free: the unit grid
// is then the simulator's clock (scaled), and the unit-grid schedule is kept as it is.
bool unit_grid_costs(const CostModel& costs, int num_stages) {
  if (costs.transfer_time() != 0.0) return false;
  const double f = costs.compute_time({0, kF, 0});
  for (int s = 0; s < num_stages; ++s)
    for (ActionKind kind : {kF, kI, kW})
      if (costs.compute_time({s, kind, 0}) != f) return false;
  return true;
}

std::int64_t max_of(const std::vector<std::int64_t>& values) {
  std::int64_t best = 0;
  for (std::int64_t v : values) best = std::max(best, v);
  return best;
}

Schedule cost_aware(std::string_view name, int num_ranks, int num_microbatches,
                    const ZeroBubbleCosts& zc) {
  const char* function = function_of(name);
  // The unit-grid schedule first: it checks the shape and the limits.
  Schedule grid = make_schedule(name, num_ranks, num_microbatches);
  zc.check(function, grid.num_stages());
  const std::int64_t cap = zc.memory_cap_bytes;

  std::optional<Schedule> best;
  double best_time = kNever;
  const auto consider = [&](Schedule candidate) {
    if (cap > 0 && max_of(peak_stage_bytes(candidate, zc)) > cap) return;
    const double time = simulate(candidate, zc.costs).makespan;
    if (!best || time < best_time - 1e-9 * std::max(1.0, std::abs(best_time))) {
      best = std::move(candidate);
      best_time = time;
    }
  };
  consider(grid);
  if (best && unit_grid_costs(zc.costs, grid.num_stages())) return std::move(*best);
  const Limits limits = family_limits(name, num_ranks);
  const Schedule shape(grid.name(), grid.num_ranks(), grid.stages_per_rank(),
                       grid.num_microbatches(), grid.placement());
  for (bool long_gaps_only : {false, true})
    if (auto orders = retime_w(grid, zc, long_gaps_only))
      consider(detail::lay_out(shape, *orders));
  for (int bits = 0; bits < 8; ++bits) {
    const Variant variant{(bits & 1) != 0, (bits & 2) != 0, (bits & 4) != 0};
    if (auto orders = timed_list_schedule(shape, limits, zc, variant))
      consider(detail::lay_out(shape, *orders));
  }
  if (!best) {
    throw InvalidArgument(detail::message(
        function, "memory_cap_bytes=", cap, " is below what any ", grid.name(),
        " variant needs at P=", num_ranks, ", M=", num_microbatches, " (activation_bytes=",
        zc.activation_bytes, ", pending_w_bytes=", zc.pending_w_bytes, "; the unit-grid ",
        grid.name(), " peaks at ", max_of(peak_stage_bytes(grid, zc)), " bytes)"));
  }
  return std::move(*best);
}

}  // namespace

void ZeroBubbleCosts::check(const char* function, int num_stages) const {
  costs.check(function);
  for (const auto* values : {&costs.forward_per_stage, &costs.backward_per_stage,
                             &costs.backward_input_per_stage, &costs.backward_weight_per_stage})
    PIPETRAIN_CHECK_ARG(values->empty() || values->size() == static_cast<std::size_t>(num_stages),
                        function, "a per-stage vector of costs has ", values->size(),
                        " entries; expected 0 or num_stages=", num_stages);
  PIPETRAIN_CHECK_ARG(activation_bytes >= 0 && activation_bytes <= kMaxBytes, function,
                      "activation_bytes=", activation_bytes, " must be in [0, ", kMaxBytes, "]");
  PIPETRAIN_CHECK_ARG(pending_w_bytes >= 0 && pending_w_bytes <= kMaxBytes, function,
                      "pending_w_bytes=", pending_w_bytes, " must be in [0, ", kMaxBytes, "]");
  PIPETRAIN_CHECK_ARG(memory_cap_bytes >= 0, function, "memory_cap_bytes=", memory_cap_bytes,
                      " must be >= 0 (0: no cap)");
}

std::vector<std::int64_t> peak_stage_bytes(const Schedule& schedule,
                                           const ZeroBubbleCosts& memory) {
  (void)analyze_memory(schedule);  // rejects an order whose counts would go negative
  std::vector<std::int64_t> peaks(static_cast<std::size_t>(schedule.num_ranks()), 0);
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    std::int64_t peak = 0;
    detail::for_each_in_flight(schedule.rank_slots(r), [&](std::int64_t a, std::int64_t w) {
      peak = std::max(peak, a * memory.activation_bytes + w * memory.pending_w_bytes);
    });
    peaks[static_cast<std::size_t>(r)] = peak;
  }
  return peaks;
}

bool is_cost_aware(std::string_view name) {
  return name == "zb-h1" || name == "zb-h2" || name == "zb-v" || name == "v-half" ||
         name == "v-min";
}

Schedule make_cost_aware_schedule(std::string_view name, int num_ranks, int num_microbatches,
                                  const ZeroBubbleCosts& costs) {
  PIPETRAIN_CHECK_ARG(is_cost_aware(name), "make_cost_aware_schedule", "schedule '", name,
                      "' has no cost-aware version; expected one of zb-h1, zb-h2, zb-v, v-half, "
                      "v-min");
  return cost_aware(name, num_ranks, num_microbatches, costs);
}

Schedule zb_h1(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs) {
  return cost_aware("zb-h1", num_ranks, num_microbatches, costs);
}
Schedule zb_h2(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs) {
  return cost_aware("zb-h2", num_ranks, num_microbatches, costs);
}
Schedule zb_v(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs) {
  return cost_aware("zb-v", num_ranks, num_microbatches, costs);
}
Schedule v_half(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs) {
  return cost_aware("v-half", num_ranks, num_microbatches, costs);
}
Schedule v_min(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs) {
  return cost_aware("v-min", num_ranks, num_microbatches, costs);
}

}  // namespace pipetrain
