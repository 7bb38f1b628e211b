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
// and every list variant that finishes, and keeps the fastest, the unit-grid one on ties (a run
// that would repeat an earlier one decision for decision is skipped: see Run); on large shapes
// the runs go on several threads and are then taken in that order (run_concurrently()). Under
// costs where the unit grid is the clock (F = I = W on every stage, free transfers) it keeps the
// unit-grid schedule outright when it fits the cap: the list heuristic is faster there only
// for ZB-V with M < 2P-1 and V-Half with small M (see docs/schedules.md), and the published
// schedules stay what they are.
#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
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

// The switches of the list heuristic, one bit each (the variants are the 8 combinations).
enum VariantBit : unsigned {
  kWarmupGuard = 1,   // no F in the warm-up whose end comes after the rank's next I is ready
  kLongGapsOnly = 2,  // a W only in a gap at least as long as the W
  kGreedyOther = 4,   // the other kind of F/I when the one due is not ready
};

// What a run of a list scheduler gives: each rank's order (nothing when it got stuck) and the
// switches whose other setting would have changed some decision of this run. A run whose
// switches differ from this one's only outside `mattered` makes the same decisions at every
// step, so it gives the same orders (or gets stuck the same way) and need not run.
struct Run {
  std::optional<Orders> orders;
  std::vector<int> sequence;  // the rank of each action in the order they were placed
  unsigned mattered = 0;
};

// Index of F, I, W in per-action tables.
std::size_t kind_index(ActionKind kind) { return kind == kF ? 0 : kind == kW ? 2 : 1; }

// What the schedulers and makespan() look up per action, computed once per generation: the
// rank of each stage and each stage's F, I and W times (CostModel::compute_time's values, so
// the same doubles).
class Stages {
 public:
  Stages(const Schedule& shape, const CostModel& costs) : transfer_(costs.transfer_time()) {
    for (int s = 0; s < shape.num_stages(); ++s) {
      rank_.push_back(shape.rank_of_stage(s));
      for (ActionKind kind : {kF, kI, kW}) time_.push_back(costs.compute_time({s, kind, 0}));
    }
  }
  int num_stages() const { return static_cast<int>(rank_.size()); }
  int rank(int stage) const { return rank_[static_cast<std::size_t>(stage)]; }
  double transfer() const { return transfer_; }
  double time(const Action& a) const {
    return time_[static_cast<std::size_t>(a.stage) * 3 + kind_index(a.kind)];
  }
  // When an output of `stage` that was ready at `end` is on `rank`.
  double arrival(int stage, double end, int rank) const {
    return rank_[static_cast<std::size_t>(stage)] == rank ? end : end + transfer_;
  }

 private:
  double transfer_;
  std::vector<int> rank_;
  std::vector<double> time_;
};

// End times of the placed F and I per (stage, microbatch); kNever until placed. Nothing
// consumes a W, so its end is not kept (a smaller table: fewer cache misses).
class Ends {
 public:
  Ends(int num_stages, int num_microbatches)
      : mb_(num_microbatches),
        table_(
            static_cast<std::size_t>(num_stages) * static_cast<std::size_t>(num_microbatches) * 2,
            kNever) {}
  // The end of the F or I (`kind`) of (stage, mb).
  double& at(ActionKind kind, int stage, int mb) {
    return table_[(static_cast<std::size_t>(stage) * static_cast<std::size_t>(mb_) +
                   static_cast<std::size_t>(mb)) *
                      2 +
                  (kind == kF ? 0 : 1)];
  }
  void record(const Action& a, double end) {
    if (a.kind != kW) at(a.kind, a.stage, a.microbatch) = end;
  }

 private:
  int mb_;
  std::vector<double> table_;
};

// Pending calls of ranks at given times, earliest first. The times taken out never decrease
// (a call is pushed for a time after the current one), so this is a radix heap over the bits of
// the times (non-negative doubles order as their bit patterns): bucket b holds the calls whose
// time first differs from the last time taken out at bit b-1, bucket 0 those at that very time.
// A push is O(1); a call moves to a lower bucket at most once per bit, and in practice a few
// times, where a tree over the ranks cost log2(ranks) steps on every push and pop.
class Calls {
 public:
  bool empty() const { return size_ == 0; }
  // The earliest pending time, which becomes the current time (not empty()).
  double first_time() {
    if (buckets_[0].empty()) refill();
    return std::bit_cast<double>(last_);
  }
  // Whether a call is pending at the current time.
  bool any_now() const { return !buckets_[0].empty(); }
  // `time` must be >= the current time (and >= 0).
  void push(int rank, double time) {
    const auto key = std::bit_cast<std::uint64_t>(time);
    const int b = bucket_of(key);
    buckets_[static_cast<std::size_t>(b)].push_back({key, rank});
    nonempty_ |= std::uint64_t{1} << b;
    ++size_;
  }
  // Removes a call at the current time (any_now()) and returns its rank.
  int pop() {
    std::vector<Call>& now = buckets_[0];
    const int rank = now.back().rank;
    now.pop_back();
    --size_;
    return rank;
  }

 private:
  struct Call {
    std::uint64_t key;  // the time's bits
    int rank;
  };
  int bucket_of(std::uint64_t key) const { return std::bit_width(key ^ last_); }
  // Moves the calls of the lowest non-empty bucket down, their earliest time becoming last_.
  void refill() {
    const auto b = static_cast<std::size_t>(std::countr_zero(nonempty_ & ~std::uint64_t{1}));
    std::vector<Call>& from = buckets_[b];
    if (from.size() == 1) {  // the common case: nothing else to move
      last_ = from.front().key;
      buckets_[0].push_back(from.front());
      from.clear();
      nonempty_ &= ~(std::uint64_t{1} << b);
      return;
    }
    std::uint64_t least = from.front().key;
    for (const Call& c : from) least = std::min(least, c.key);
    last_ = least;
    std::uint64_t filled = 0;
    for (const Call& c : from) {
      const int to = bucket_of(c.key);  // below b: c.key and least agree from bit b-1 up
      buckets_[static_cast<std::size_t>(to)].push_back(c);
      filled |= std::uint64_t{1} << to;
    }
    from.clear();
    nonempty_ = (nonempty_ & ~(std::uint64_t{1} << b)) | filled;
  }
  // A time is >= 0, so its bits and last_'s agree on the sign bit: buckets 0 to 63.
  std::vector<Call> buckets_[64];
  std::uint64_t nonempty_ = 0;  // bit b (b >= 1) set: bucket b holds calls
  std::uint64_t last_ = 0;      // the bits of the last time taken out
  std::size_t size_ = 0;
};

// What a rank decided: to run `action` (ok), which ends at `end`, or to wait (!ok). Plain
// fields rather than std::optional<Action>: built field by field and copied whole, the optional
// stalled store forwarding on the hottest path.
struct Pick {
  Action action{};
  bool ok = false;
  double end = 0.0;
  explicit operator bool() const { return ok; }
  Pick& operator=(const Action& a) {
    action = a;
    ok = true;
    return *this;
  }
};

// Appends `a` field by field: a copy of the whole Action, whose fields were just written one by
// one, waited for them (store forwarding) on the schedulers' hottest line.
void append(std::vector<Action>& order, const Action& a) {
  Action& out = order.emplace_back();
  out.stage = a.stage;
  out.kind = a.kind;
  out.microbatch = a.microbatch;
}

// Runs a list scheduler's decisions: visit(r, t) is rank r's decision at time t, which places
// an action (and returns it) or waits. It is called as a loop over every event time t (an action
// ended, or an output arrived at another rank) would call it, for each rank free at t in rank
// order, the ranks again at the same t while actions that take no time ran, but only for the
// ranks whose decision can have changed since their last call: a rank that waited is called
// again when its own action ends or an output it consumes arrives. Both schedulers here decide
// so that nothing else can make a waiting rank act: an action becomes ready only when its
// input arrives, and what else a decision reads (the time, when the next input is expected)
// only makes the waits (warm-up guard, W only in long gaps) longer as time passes. So the calls
// left out are ones that would have waited, and the result is the step-by-step loop's. Each
// rank's call count is about its number of actions, instead of the number of event times.
// Appends the rank of each placed action to `sequence`. Returns false when the ranks wait for
// nothing that can come (stuck) before `remaining` actions are placed.
template <class Visit>
bool run_ranks(const Stages& stages, int num_ranks, std::size_t remaining,
               std::vector<int>& sequence, Visit&& visit) {
  Calls wakes;
  for (int r = 0; r < num_ranks; ++r) wakes.push(r, 0.0);
  std::vector<int> pass;  // the ranks to call at t, in rank order
  std::vector<int> next_pass;
  std::vector<char> in_pass(static_cast<std::size_t>(num_ranks), 0);
  std::vector<double> free_at(static_cast<std::size_t>(num_ranks), 0.0);
  const auto enter = [&](std::vector<int>& list, int r) {
    if (!in_pass[static_cast<std::size_t>(r)]) {
      in_pass[static_cast<std::size_t>(r)] = 1;
      list.push_back(r);
    }
  };
  sequence.reserve(remaining);
  while (remaining > 0) {
    if (wakes.empty()) return false;
    const double t = wakes.first_time();
    while (wakes.any_now()) enter(pass, wakes.pop());
    while (!pass.empty()) {
      if (pass.size() > 1) std::sort(pass.begin(), pass.end());
      for (std::size_t i = 0; i < pass.size(); ++i) {
        const int r = pass[i];
        in_pass[static_cast<std::size_t>(r)] = 0;
        const Pick placed = visit(r, t);
        if (!placed) continue;
        --remaining;
        sequence.push_back(r);
        free_at[static_cast<std::size_t>(r)] = placed.end;
        // Who can act on it, and when: this rank once free, the consumers once it arrived (a
        // consumer busy until then is called when it is free).
        const Action& a = placed.action;
        const auto wake = [&](int rank, double when) {
          const double busy_until = free_at[static_cast<std::size_t>(rank)];
          if (rank != r && busy_until > t && busy_until >= when) return;
          if (when > t) {
            wakes.push(rank, when);
          } else if (rank > r) {  // after an action that took no time: later in this pass
            if (!in_pass[static_cast<std::size_t>(rank)]) {
              in_pass[static_cast<std::size_t>(rank)] = 1;
              pass.insert(std::upper_bound(pass.begin() + static_cast<std::ptrdiff_t>(i) + 1,
                                           pass.end(), rank),
                          rank);
            }
          } else {
            next_pass.push_back(rank);
          }
        };
        wake(r, placed.end);
        if (a.kind == kF && a.stage + 1 < stages.num_stages())
          wake(stages.rank(a.stage + 1),
               stages.arrival(a.stage, placed.end, stages.rank(a.stage + 1)));
        if (a.kind == kI && a.stage > 0)
          wake(stages.rank(a.stage - 1),
               stages.arrival(a.stage, placed.end, stages.rank(a.stage - 1)));
      }
      pass.clear();
      for (int r : next_pass) enter(pass, r);
      next_pass.clear();
    }
  }
  return true;
}

// The timed list scheduler with the switches `variant` (VariantBit).
Run timed_list_schedule(const Schedule& shape, const Stages& stages, const Limits& limits,
                        const ZeroBubbleCosts& zc, unsigned variant) {
  const bool warmup_guard = (variant & kWarmupGuard) != 0;
  const bool long_gaps_only = (variant & kLongGapsOnly) != 0;
  const bool greedy_other = (variant & kGreedyOther) != 0;
  Run run;
  // Whether a switch's condition is needed: it is on, or whether it matters is not known yet.
  const auto consults = [&](unsigned bit, bool on) { return on || (run.mattered & bit) == 0; };
  const int num_ranks = shape.num_ranks();
  const int num_stages = shape.num_stages();
  const int num_mb = shape.num_microbatches();
  const bool v_shape = shape.placement() == Placement::kV;
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
    return stages.arrival(producer.stage, end, r);
  };

  Orders orders(static_cast<std::size_t>(num_ranks));
  for (int r = 0; r < num_ranks; ++r)
    orders[static_cast<std::size_t>(r)].reserve(
        3 * ranks[static_cast<std::size_t>(r)].stages.size() * static_cast<std::size_t>(num_mb));
  const auto visit = [&](int r, double t) -> Pick {
    const auto ru = static_cast<std::size_t>(r);
    RankState& st = ranks[ru];
    if (st.free_at > t) return {};
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
    Pick pick;
    bool memory_wants_w = false;
    double due_ready = kNever;  // when the action due is known to be ready
    if (!st.warm) {
      if (auto k = ready(kI)) {
        pick = make(*k, kI);
      } else if (auto k = ready(kF)) {
        const Action f = make(*k, kF);
        const bool guarded =
            consults(kWarmupGuard, warmup_guard) && next_ready(kI) < t + stages.time(f);
        if (guarded) run.mattered |= kWarmupGuard;
        if (!warmup_guard || !guarded) pick = f;
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
      // ready() may set f_blocked_by_memory, which nothing reads from here on.
      if (!pick && other_left > 0 && consults(kGreedyOther, greedy_other)) {
        if (auto k = ready(other)) {
          run.mattered |= kGreedyOther;
          if (greedy_other) pick = make(*k, other);
        }
      }
      if (!pick && left > 0 && consults(kLongGapsOnly, long_gaps_only))
        due_ready = next_ready(want);
    }
    if (!pick && !st.pending_w.empty()) {
      const Action& w = st.pending_w.front();
      const bool long_gap = !st.warm || memory_wants_w || st.forwards_left + st.inputs_left == 0 ||
                            !(due_ready < t + stages.time(w));
      if (ends.at(kI, w.stage, w.microbatch) <= t) {
        if (!long_gap) run.mattered |= kLongGapsOnly;
        if (!long_gaps_only || long_gap) pick = w;
      }
    }
    if (!pick) return pick;
    // Place it.
    const Action& a = pick.action;
    pick.end = t + stages.time(a);
    append(orders[ru], a);
    ends.record(a, pick.end);
    st.free_at = pick.end;
    st.place(a);
    return pick;
  };
  if (run_ranks(stages, num_ranks, remaining, run.sequence, visit)) run.orders = std::move(orders);
  return run;
}

// Keeps each rank's order of F and I from `base` and places its W on the clock: a rank runs its
// next F or I as soon as it is ready, and its oldest pending W when that action is not ready (or,
// with long_gaps_only, not known to be ready within the W's time), or when the F would raise the
// rank's held stage-microbatches above `base`'s peak or its bytes above the cap. `base`'s own
// order satisfies both limits, so the rank never waits for memory that only it can free: the
// result finishes whenever `base` does. Gives no orders when it cannot finish (a cap below
// `base`'s own peak); `mattered` holds kLongGapsOnly when that switch changed a decision.
// `memory` is analyze_memory(base).
Run retime_w(const Schedule& base, const MemoryProfile& memory, const Stages& stages,
             const ZeroBubbleCosts& zc, bool long_gaps_only) {
  Run run;
  const int num_ranks = base.num_ranks();
  const int num_stages = base.num_stages();
  const int num_mb = base.num_microbatches();
  const std::int64_t cap = zc.memory_cap_bytes;
  const std::int64_t unit = std::max(zc.activation_bytes, zc.pending_w_bytes);
  Ends ends(num_stages, num_mb);
  struct RankState {
    std::vector<Action> order;  // F and I of base, in order
    std::size_t next = 0;
    detail::ActionQueue pending_w;
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
    return stages.arrival(producer.stage, end, r);
  };
  Orders orders(static_cast<std::size_t>(num_ranks));
  for (int r = 0; r < num_ranks; ++r)
    orders[static_cast<std::size_t>(r)].reserve(ranks[static_cast<std::size_t>(r)].order.size() *
                                                3 / 2);
  const auto visit = [&](int r, double t) -> Pick {
    const auto ru = static_cast<std::size_t>(r);
    RankState& st = ranks[ru];
    if (st.free_at > t) return {};
    Pick pick;
    bool memory_blocked = false;
    double due_ready = kNever;
    if (st.next < st.order.size()) {
      const Action& a = st.order[st.next];
      due_ready = available(a, r);
      if (a.kind == kF) {
        const std::int64_t waiting_w = st.held - st.activations;
        memory_blocked =
            st.held + 1 > memory.peak_held[ru] ||
            (cap > 0 && (st.activations + 1) * unit + waiting_w * zc.pending_w_bytes > cap);
      }
      if (due_ready <= t && !memory_blocked) pick = a;
    }
    if (!pick && !st.pending_w.empty()) {
      const Action& w = st.pending_w.front();
      const bool long_gap =
          memory_blocked || st.next == st.order.size() || !(due_ready < t + stages.time(w));
      if (!long_gap) run.mattered |= kLongGapsOnly;
      if (!long_gaps_only || long_gap) pick = w;
    }
    if (!pick) return pick;
    const Action& placed = pick.action;
    pick.end = t + stages.time(placed);
    append(orders[ru], placed);
    ends.record(placed, pick.end);
    st.free_at = pick.end;
    if (placed.kind == kF) {
      ++st.next;
      ++st.activations;
      ++st.held;
    } else if (placed.kind == kI) {
      ++st.next;
      --st.activations;
      st.pending_w.push_back({placed.stage, kW, placed.microbatch});
    } else {
      st.pending_w.pop_front();
      --st.held;
    }
    return pick;
  };
  if (run_ranks(stages, num_ranks, remaining, run.sequence, visit)) run.orders = std::move(orders);
  return run;
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

// The unit-grid schedule as a candidate: each rank's compute actions in order, and their ranks
// step by step (each action's producer is at an earlier step).
Run run_of(const Schedule& schedule) {
  Run run;
  run.orders.emplace(static_cast<std::size_t>(schedule.num_ranks()));
  for (std::size_t step = 0; step < schedule.num_steps(); ++step) {
    for (int r = 0; r < schedule.num_ranks(); ++r) {
      const auto& slots = schedule.rank_slots(r);
      if (step < slots.size() && slots[step] && is_compute(slots[step]->kind)) {
        (*run.orders)[static_cast<std::size_t>(r)].push_back(*slots[step]);
        run.sequence.push_back(r);
      }
    }
  }
  return run;
}

// The highest bytes any rank of `orders` holds, counted as peak_stage_bytes() counts them.
std::int64_t peak_bytes(const Orders& orders, const ZeroBubbleCosts& zc) {
  std::int64_t best = 0;
  for (const std::vector<Action>& order : orders) {
    std::int64_t a = 0, w = 0;
    for (const Action& action : order) {
      if (action.kind == kF) {
        ++a;
      } else if (action.kind == kI) {
        --a;
        ++w;
      } else {
        --w;
      }
      best = std::max(best, a * zc.activation_bytes + w * zc.pending_w_bytes);
    }
  }
  return best;
}

// The makespan simulate() gives the schedule of `run`'s orders (F, I and W only), computed the
// same way (each action starts when its rank is free and its input has arrived, so the very same
// double), without laying the orders out and building a Schedule for each candidate. The actions
// are taken in the run's sequence, in which every producer comes before its consumers.
double makespan(const Stages& stages, int num_microbatches, const Run& run) {
  const Orders& orders = *run.orders;
  const int num_stages = stages.num_stages();
  Ends ends(num_stages, num_microbatches);
  std::vector<std::size_t> next(orders.size(), 0);
  std::vector<double> free_at(orders.size(), 0.0);
  double result = 0.0;
  for (const int r : run.sequence) {
    const auto ru = static_cast<std::size_t>(r);
    const Action& a = orders[ru][next[ru]++];
    double start = free_at[ru];
    if (a.kind != kF || a.stage > 0) {
      Action producer{a.stage, kI, a.microbatch};  // of a W
      if (a.kind == kF)
        producer = {a.stage - 1, kF, a.microbatch};
      else if (a.kind == kI && a.stage == num_stages - 1)
        producer = {a.stage, kF, a.microbatch};
      else if (a.kind == kI)
        producer = {a.stage + 1, kI, a.microbatch};
      start = std::max(
          start, stages.arrival(producer.stage,
                                ends.at(producer.kind, producer.stage, producer.microbatch), r));
    }
    const double end = start + stages.time(a);
    ends.record(a, end);
    free_at[ru] = end;
    result = std::max(result, end);
  }
  return result;
}

// A candidate pass: retime_w() (`retime`) or the list scheduler, with its switches.
struct Pass {
  bool retime;
  unsigned switches;
};

// A run as cost_aware() compares it: whether it finished within the cap, and its makespan.
struct Candidate {
  Run run;
  bool fits = false;
  double time = kNever;
};

// Below this many compute actions the passes run one after the other: starting threads would
// cost more than the passes (about 0.2 us per action each).
constexpr std::int64_t kConcurrentActions = 50000;

// Runs `passes` on up to `threads` threads (this one included) and returns each one's candidate,
// or nothing for a pass it found to repeat an earlier one of the same generator (Run::mattered)
// and for one it did not start after another threw (the first exception in pass order is
// rethrown). Every pass the sequential loop of cost_aware() would run either ran here or is
// left to it, so the caller gets the same candidates in the same order. A free thread takes the
// first pass whose earlier passes (of its generator) are all done or skipped, else the first
// that the switches which mattered in the runs done so far predict to be no repeat of a running
// or waiting one; when only passes predicted to repeat are left it waits for a run to finish
// rather than spend a core on a run that is likely thrown away.
template <class Execute>
std::vector<std::optional<Candidate>> run_concurrently(const std::vector<Pass>& passes,
                                                       unsigned threads, Execute&& execute) {
  enum class State { kWaiting, kRunning, kDone, kSkipped };
  const std::size_t n = passes.size();
  std::vector<std::optional<Candidate>> results(n);
  std::vector<State> state(n, State::kWaiting);
  std::vector<std::exception_ptr> errors(n);
  bool failed = false;
  std::mutex mutex;
  std::condition_variable changed;
  const auto repeats = [&](std::size_t earlier, std::size_t later, unsigned mattered) {
    return passes[earlier].retime == passes[later].retime &&
           ((passes[earlier].switches ^ passes[later].switches) & mattered) == 0;
  };
  // Under the lock: the pass to start, n to wait for a running one, n + 1 when none is left.
  const auto pick = [&]() -> std::size_t {
    if (failed) return n + 1;
    unsigned predicted[2] = {0, 0};  // per generator: the switches that mattered in runs done
    bool known[2] = {false, false};
    for (std::size_t i = 0; i < n; ++i) {
      if (state[i] != State::kDone) continue;
      predicted[passes[i].retime] |= results[i]->run.mattered;
      known[passes[i].retime] = true;
      for (std::size_t j = i + 1; j < n; ++j)
        if (state[j] == State::kWaiting && repeats(i, j, results[i]->run.mattered))
          state[j] = State::kSkipped;
    }
    std::size_t likely = n;
    bool waiting = false;
    for (std::size_t i = 0; i < n; ++i) {
      if (state[i] != State::kWaiting) continue;
      waiting = true;
      bool open = false, repeat = false;
      for (std::size_t e = 0; e < i; ++e) {
        if (passes[e].retime != passes[i].retime ||
            (state[e] != State::kRunning && state[e] != State::kWaiting))
          continue;
        open = true;
        const bool r = passes[i].retime;
        if (known[r] && repeats(e, i, predicted[r])) repeat = true;
      }
      if (!open) return i;
      if (!repeat && likely == n) likely = i;
    }
    return likely < n ? likely : waiting ? n : n + 1;
  };
  const auto work = [&] {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      const std::size_t i = pick();
      if (i > n) return;
      if (i == n) {
        changed.wait(lock);
        continue;
      }
      state[i] = State::kRunning;
      lock.unlock();
      std::optional<Candidate> candidate;
      std::exception_ptr error;
      try {
        candidate = execute(passes[i]);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      if (error) {
        errors[i] = error;
        failed = true;
        state[i] = State::kSkipped;
      } else {
        results[i] = std::move(candidate);
        state[i] = State::kDone;
      }
      changed.notify_all();
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  try {
    for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  } catch (const std::system_error&) {
    // Fewer threads than asked for: the ones started (and this one) take every pass.
  }
  try {
    work();
  } catch (...) {
    // Only the lock can throw here; let the other threads finish before reporting it.
    {
      std::lock_guard<std::mutex> lock(mutex);
      failed = true;
    }
    changed.notify_all();
    for (std::thread& thread : pool) thread.join();
    throw;
  }
  for (std::thread& thread : pool) thread.join();
  for (const std::exception_ptr& error : errors)
    if (error) std::rethrow_exception(error);
  for (std::size_t i = 0; i < n; ++i)
    if (state[i] != State::kDone) results[i].reset();
  return results;
}

Schedule cost_aware(std::string_view name, int num_ranks, int num_microbatches,
                    const ZeroBubbleCosts& zc) {
  const char* function = function_of(name);
  // The unit-grid schedule first: it checks the shape and the limits.
  Schedule grid = make_schedule(name, num_ranks, num_microbatches);
  zc.check(function, grid.num_stages());
  const std::int64_t cap = zc.memory_cap_bytes;
  const Schedule shape(grid.name(), grid.num_ranks(), grid.stages_per_rank(),
                       grid.num_microbatches(), grid.placement());
  const Stages stages(shape, zc.costs);
  const auto evaluate = [&](Run run) {
    Candidate candidate;
    candidate.fits = run.orders && (cap <= 0 || peak_bytes(*run.orders, zc) <= cap);
    if (candidate.fits) candidate.time = makespan(stages, num_microbatches, run);
    candidate.run = std::move(run);
    return candidate;
  };

  // Candidates are compared on their orders; only the winner is laid out on the grid.
  std::optional<Orders> best;
  bool best_is_grid = false;
  double best_time = kNever;
  const auto consider = [&](Candidate candidate, bool is_grid) {
    if (!candidate.fits) return;
    if (!best || candidate.time < best_time - 1e-9 * std::max(1.0, std::abs(best_time))) {
      best = std::move(candidate.run.orders);
      best_is_grid = is_grid;
      best_time = candidate.time;
    }
  };
  consider(evaluate(run_of(grid)), true);
  if (best && unit_grid_costs(zc.costs, grid.num_stages())) return grid;
  const Limits limits = family_limits(name, num_ranks);
  const MemoryProfile grid_memory = analyze_memory(grid);
  const auto execute = [&](const Pass& pass) {
    return evaluate(pass.retime
                        ? retime_w(grid, grid_memory, stages, zc, pass.switches != 0)
                        : timed_list_schedule(shape, stages, limits, zc, pass.switches));
  };
  std::vector<Pass> passes = {{true, 0u}, {true, unsigned{kLongGapsOnly}}};
  for (unsigned switches = 0; switches < 8; ++switches) passes.push_back({false, switches});
  // The passes are independent: on a large shape they run concurrently, and the loop below
  // takes their candidates in the sequential order, so ties resolve as they would one by one.
  std::vector<std::optional<Candidate>> ready(passes.size());
  const unsigned threads =
      std::min<unsigned>(std::thread::hardware_concurrency(), static_cast<unsigned>(passes.size()));
  if (threads > 1 && std::int64_t{3} * grid.num_stages() * num_microbatches >= kConcurrentActions)
    ready = run_concurrently(passes, threads, execute);
  // A run identical to an earlier one (Run::mattered) is not repeated: its candidate could not
  // beat the earlier one's, which was considered first.
  std::vector<std::pair<unsigned, unsigned>> runs;  // (switches, mattered)
  const auto repeats_a_run = [&](unsigned switches) {
    return std::any_of(runs.begin(), runs.end(), [&](const std::pair<unsigned, unsigned>& run) {
      return ((run.first ^ switches) & run.second) == 0;
    });
  };
  for (std::size_t i = 0; i < passes.size(); ++i) {
    if (i > 0 && passes[i].retime != passes[i - 1].retime) runs.clear();
    if (repeats_a_run(passes[i].switches)) continue;
    if (!ready[i]) ready[i] = execute(passes[i]);
    runs.emplace_back(passes[i].switches, ready[i]->run.mattered);
    consider(std::move(*ready[i]), false);
    ready[i].reset();
  }
  if (best && best_is_grid) return grid;
  if (best) return detail::lay_out(shape, *best);
  throw InvalidArgument(detail::message(
      function, "memory_cap_bytes=", cap, " is below what any ", grid.name(),
      " variant needs at P=", num_ranks, ", M=", num_microbatches, " (activation_bytes=",
      zc.activation_bytes, ", pending_w_bytes=", zc.pending_w_bytes, "; the unit-grid ",
      grid.name(), " peaks at ", max_of(peak_stage_bytes(grid, zc)), " bytes)"));
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
