// squeeze() (passes.h): list scheduling of a schedule's own actions on the simulator's clock.
//
// Why it cannot get stuck on memory. For each rank, value(j) is the memory the rank would hold
// right after position j of the input's order if it ran the rest of that order from its current
// state. At the start that is the input's own running count, <= the cap. Running the next action
// in order changes no value. Running the action at position p out of order (frontier k < p)
// moves its memory change d from p to now: every value in [k, p) changes by d, the others do not.
// So an out-of-order action runs only when max(value[k, p)) + d <= cap (d > 0; a d <= 0 only
// lowers values), and then every value stays <= cap: the next action in order always fits, and
// the input's order remains a way to finish. A range-add, range-max tree per rank keeps the
// values, so each decision costs O(log A).
//
// Why it cannot get stuck on dependencies: the input validates, so its orders and the data
// dependencies form no cycle; among the ranks' first not-yet-run actions, one has all its
// producers run (follow "waits for" from rank to rank: it cannot cycle), and that action always
// fits in memory (above). Each rank's ready actions wait in one heap per kind, by position in
// the order: all actions of a kind change memory by the same d, and max(value[k, p)) only grows
// with p, so when a kind's first ready action does not fit, none of that kind does.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <optional>
#include <queue>
#include <utility>
#include <vector>

#include "action_index.h"
#include "layout.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {
namespace {

constexpr const char* kFunction = "squeeze";
constexpr std::int64_t kMaxBytes = std::int64_t{1} << 39;
constexpr int kNumKinds = 4;  // F, B, I, W: the compute kinds, ActionKind's first four values
constexpr int kMaxRounds = 4;

// Range add and range max over [0, n), without pushing the pending adds down: a node's max
// includes its own pending add, so a query adds the pending adds of the nodes it passes.
class MaxTree {
 public:
  explicit MaxTree(const std::vector<std::int64_t>& values) : n_(values.size()) {
    if (n_ == 0) return;
    max_.assign(4 * n_, 0);
    add_.assign(4 * n_, 0);
    build(1, 0, n_, values);
  }
  void add(std::size_t lo, std::size_t hi, std::int64_t d) {
    if (lo < hi) add(1, 0, n_, lo, hi, d);
  }
  // Needs lo < hi <= n.
  std::int64_t max(std::size_t lo, std::size_t hi) const { return max(1, 0, n_, lo, hi); }

 private:
  void build(std::size_t node, std::size_t b, std::size_t e,
             const std::vector<std::int64_t>& values) {
    if (e - b == 1) {
      max_[node] = values[b];
      return;
    }
    const std::size_t mid = b + (e - b) / 2;
    build(2 * node, b, mid, values);
    build(2 * node + 1, mid, e, values);
    max_[node] = std::max(max_[2 * node], max_[2 * node + 1]);
  }
  void add(std::size_t node, std::size_t b, std::size_t e, std::size_t lo, std::size_t hi,
           std::int64_t d) {
    if (hi <= b || e <= lo) return;
    if (lo <= b && e <= hi) {
      max_[node] += d;
      add_[node] += d;
      return;
    }
    const std::size_t mid = b + (e - b) / 2;
    add(2 * node, b, mid, lo, hi, d);
    add(2 * node + 1, mid, e, lo, hi, d);
    max_[node] = std::max(max_[2 * node], max_[2 * node + 1]) + add_[node];
  }
  std::int64_t max(std::size_t node, std::size_t b, std::size_t e, std::size_t lo,
                   std::size_t hi) const {
    if (lo <= b && e <= hi) return max_[node];
    const std::size_t mid = b + (e - b) / 2;
    std::int64_t best = std::numeric_limits<std::int64_t>::min();
    if (lo < mid) best = std::max(best, max(2 * node, b, mid, lo, hi));
    if (mid < hi) best = std::max(best, max(2 * node + 1, mid, e, lo, hi));
    return best + add_[node];
  }

  std::size_t n_;
  std::vector<std::int64_t> max_, add_;
};

// The rules tried (each one list scheduling run). Of the eight combinations these three found
// every best result over P in {4, 8, 16}, M in {2P, 4P}, V-Half, V-Min and ZB-V, F:I:W in
// {1:1:1, 1:2:1, 1.6:2.72:1.26, 1:1.184:0.42}.
struct Variant {
  // An action out of order must end by the time the action due in order becomes ready, when
  // that time is known.
  bool patient = false;
  // A W runs only when no other action that fits comes before the first F that memory blocks.
  bool w_last = false;
  // A W runs only in a gap that no F, B or I known to become ready fills first.
  bool w_patient = false;
};
constexpr Variant kVariants[] = {{true, false, false}, {false, true, false}, {false, true, true}};

using MinHeap = std::priority_queue<std::size_t, std::vector<std::size_t>, std::greater<>>;

// Ids of actions fit 32 bits: the generators stay far below (ScheduleLimits::kMaxWork pairs of
// at most 3 actions), and a schedule read from a file holds at most ScheduleLimits::kMaxSlots.
using Id = std::uint32_t;
constexpr Id kNone = std::numeric_limits<Id>::max();

struct Event {
  double time;
  Id seq;    // ties in creation order: the run is deterministic
  int rank;  // the rank to wake
  Id id;     // the action that becomes ready, or kNone (the rank became free)
  friend bool operator>(const Event& a, const Event& b) {
    return a.time != b.time ? a.time > b.time : a.seq > b.seq;
  }
};

// One action of the input. Every action feeds at most two others (an F: the next stage's F and
// its own backward; an I: the previous stage's backward and its W), kept in place so that the
// run touches one record per action.
struct Node {
  Action action;
  int rank = 0;
  int producers = 0;  // how many actions it waits for
  std::array<Id, 2> consumers{kNone, kNone};
};

// The input, flattened: rank r's compute actions are ids begin[r] .. begin[r+1]-1 in order.
struct Flat {
  std::vector<Node> nodes;
  std::vector<std::size_t> begin;
};

Flat flatten(const Schedule& schedule) {
  Flat flat;
  const int num_ranks = schedule.num_ranks();
  const int num_stages = schedule.num_stages();
  detail::ActionIndex index(num_stages, schedule.num_microbatches(), schedule.num_actions());
  flat.nodes.reserve(schedule.num_actions());
  for (int r = 0; r < num_ranks; ++r) {
    flat.begin.push_back(flat.nodes.size());
    for (const Action& a : schedule.rank_actions(r)) {
      index.insert(a, {r, static_cast<int>(flat.nodes.size())});
      flat.nodes.push_back({a, r});
    }
  }
  flat.begin.push_back(flat.nodes.size());
  // The producers of simulate.h, plus an I or B's own F (validate() guarantees it comes first
  // on the rank; here it must be waited for, since the order may change).
  const auto depends = [&](std::size_t id, ActionKind kind, int stage, int mb) {
    const detail::Cell cell = index.find(kind, stage, mb);
    if (!cell.found()) return;
    std::array<Id, 2>& consumers = flat.nodes[static_cast<std::size_t>(cell.step)].consumers;
    consumers[consumers[0] == kNone ? 0 : 1] = static_cast<Id>(id);
    ++flat.nodes[id].producers;
  };
  for (std::size_t id = 0; id < flat.nodes.size(); ++id) {
    const Action a = flat.nodes[id].action;
    switch (a.kind) {
      case ActionKind::kForward:
        if (a.stage > 0) depends(id, ActionKind::kForward, a.stage - 1, a.microbatch);
        break;
      case ActionKind::kBackward:
      case ActionKind::kBackwardInput:
        depends(id, ActionKind::kForward, a.stage, a.microbatch);
        if (a.stage + 1 < num_stages) {
          depends(id, ActionKind::kBackward, a.stage + 1, a.microbatch);
          depends(id, ActionKind::kBackwardInput, a.stage + 1, a.microbatch);
        }
        break;
      default:
        depends(id, ActionKind::kBackwardInput, a.stage, a.microbatch);
        break;
    }
  }
  return flat;
}

// One run of the list scheduler; nothing when it gets stuck (it cannot: see the file comment).
std::optional<std::vector<std::vector<Action>>> list_schedule(
    const Schedule& schedule, const Flat& flat, const CostModel& costs,
    const std::array<std::int64_t, kNumKinds>& delta, const std::vector<std::int64_t>& running,
    std::int64_t cap, const Variant& variant) {
  // Plain copies, not a structured binding: lambdas below use them, which Clang before 16 does
  // not allow for bindings.
  const bool patient = variant.patient, w_last = variant.w_last, w_patient = variant.w_patient;
  const int num_ranks = schedule.num_ranks();
  const std::size_t total = flat.nodes.size();
  const double transfer = costs.transfer_time();

  struct RankState {
    std::size_t frontier = 0;  // local position of the first action not run yet
    std::int64_t held = 0;
    double free_at = 0.0;
    MaxTree values;
    std::array<MinHeap, kNumKinds> ready;
    // When the rank's F, B or I whose producers have all run become ready (some may be past).
    std::priority_queue<double, std::vector<double>, std::greater<>> announced;
    explicit RankState(const std::vector<std::int64_t>& v) : values(v) {}
  };
  std::vector<RankState> ranks;
  ranks.reserve(static_cast<std::size_t>(num_ranks));
  for (int r = 0; r < num_ranks; ++r) {
    const auto b = static_cast<std::ptrdiff_t>(flat.begin[static_cast<std::size_t>(r)]);
    const auto e = static_cast<std::ptrdiff_t>(flat.begin[static_cast<std::size_t>(r) + 1]);
    ranks.emplace_back(std::vector<std::int64_t>(running.begin() + b, running.begin() + e));
  }
  struct Progress {
    double ready_at = 0.0;  // when its last producer's output arrives (once waiting is 0)
    int waiting = 0;        // producers not run yet
  };
  std::vector<Progress> progress(total);
  for (std::size_t id = 0; id < total; ++id) progress[id].waiting = flat.nodes[id].producers;
  std::vector<char> done(total, 0);
  std::vector<std::vector<Action>> orders(static_cast<std::size_t>(num_ranks));

  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  Id seq = 0;
  for (std::size_t id = 0; id < total; ++id)
    if (progress[id].waiting == 0)
      events.push({0.0, seq++, flat.nodes[id].rank, static_cast<Id>(id)});

  const auto kind_of = [](const Action& a) { return static_cast<std::size_t>(a.kind); };
  // Runs rank r's best action at time t, if any; true when one ran.
  const auto try_run = [&](int r, double t) {
    RankState& st = ranks[static_cast<std::size_t>(r)];
    const std::size_t base = flat.begin[static_cast<std::size_t>(r)];
    const std::size_t k = st.frontier;
    // The first ready action of each kind, if it fits in memory; by position.
    std::array<std::size_t, kNumKinds> fits{};
    std::size_t count = 0;
    std::size_t blocked_f = kNone;  // a ready F that does not fit
    for (std::size_t kind = 0; kind < kNumKinds; ++kind) {
      if (st.ready[kind].empty()) continue;
      const std::size_t p = st.ready[kind].top();
      const std::int64_t d = delta[kind];
      if (d > 0 && (st.held + d > cap || (p > k && st.values.max(k, p) + d > cap))) {
        if (kind == static_cast<std::size_t>(ActionKind::kForward)) blocked_f = p;
        continue;
      }
      fits[count++] = p;
    }
    // By position; or (w_last) the others that come before the F that memory blocks (all
    // others when none is blocked), then the W, then the rest: a W fills a gap or frees memory.
    const auto group = [&](std::size_t x) {
      if (!w_last) return 0;
      if (flat.nodes[base + x].action.kind == ActionKind::kBackwardWeight) return 1;
      return blocked_f != kNone && x > blocked_f ? 2 : 0;
    };
    const auto before = [&](std::size_t x, std::size_t y) {
      return group(x) != group(y) ? group(x) < group(y) : x < y;
    };
    for (std::size_t i = 1; i < count; ++i)
      for (std::size_t j = i; j > 0 && before(fits[j], fits[j - 1]); --j)
        std::swap(fits[j], fits[j - 1]);
    std::optional<std::size_t> pick;
    for (std::size_t i = 0; i < count && !pick; ++i) {
      const std::size_t p = fits[i];
      const std::size_t due = base + k;
      const Action& x = flat.nodes[base + p].action;
      const double end = t + costs.compute_time(x);
      if (patient && p != k && progress[due].waiting == 0 && end > progress[due].ready_at) continue;
      if (w_patient && blocked_f == kNone && x.kind == ActionKind::kBackwardWeight) {
        while (!st.announced.empty() && st.announced.top() <= t) st.announced.pop();
        if (!st.announced.empty() && st.announced.top() < end) continue;
      }
      pick = p;
    }
    if (!pick) return false;
    const std::size_t p = *pick;
    const std::size_t id = base + p;
    const Action& a = flat.nodes[id].action;
    const std::size_t kind = kind_of(a);
    st.ready[kind].pop();
    done[id] = 1;
    st.held += delta[kind];
    if (p == k) {
      const std::size_t size = flat.begin[static_cast<std::size_t>(r) + 1] - base;
      while (st.frontier < size && done[base + st.frontier]) ++st.frontier;
    } else if (delta[kind] != 0) {
      st.values.add(k, p, delta[kind]);
    }
    orders[static_cast<std::size_t>(r)].push_back(a);
    const double end = t + costs.compute_time(a);
    st.free_at = end;
    events.push({end, seq++, r, kNone});
    for (Id c : flat.nodes[id].consumers) {
      if (c == kNone) break;
      const Node& consumer = flat.nodes[c];
      Progress& pc = progress[c];
      pc.ready_at = std::max(pc.ready_at, consumer.rank == r ? end : end + transfer);
      if (--pc.waiting == 0) {
        events.push({pc.ready_at, seq++, consumer.rank, c});
        if (consumer.action.kind != ActionKind::kBackwardWeight)
          ranks[static_cast<std::size_t>(consumer.rank)].announced.push(pc.ready_at);
      }
    }
    return true;
  };

  std::size_t ran = 0;
  std::vector<char> woken(static_cast<std::size_t>(num_ranks), 0);
  std::vector<int> woken_ranks;
  while (!events.empty()) {
    const double t = events.top().time;
    while (!events.empty() && events.top().time <= t) {
      const Event e = events.top();
      events.pop();
      if (e.id != kNone) {
        RankState& st = ranks[static_cast<std::size_t>(e.rank)];
        const std::size_t base = flat.begin[static_cast<std::size_t>(e.rank)];
        st.ready[kind_of(flat.nodes[e.id].action)].push(e.id - base);
      }
      if (!woken[static_cast<std::size_t>(e.rank)]) {
        woken[static_cast<std::size_t>(e.rank)] = 1;
        woken_ranks.push_back(e.rank);
      }
    }
    std::sort(woken_ranks.begin(), woken_ranks.end());
    for (int r : woken_ranks) {
      woken[static_cast<std::size_t>(r)] = 0;
      if (ranks[static_cast<std::size_t>(r)].free_at <= t && try_run(r, t)) ++ran;
    }
    woken_ranks.clear();
  }
  if (ran != total) return std::nullopt;
  return orders;
}

}  // namespace

Schedule squeeze(const Schedule& schedule, const CostModel& costs, const SqueezeOptions& options) {
  PIPETRAIN_CHECK_ARG(!schedule.has_comm(), kFunction, "schedule '", schedule.name(),
                      "' has communication actions; expected a compute-only schedule "
                      "(strip_comm() first)");
  PIPETRAIN_CHECK_ARG(options.activation_bytes >= 0 && options.activation_bytes <= kMaxBytes,
                      kFunction, "activation_bytes=", options.activation_bytes, " must be in [0, ",
                      kMaxBytes, "]");
  PIPETRAIN_CHECK_ARG(options.pending_w_bytes >= 0 && options.pending_w_bytes <= kMaxBytes,
                      kFunction, "pending_w_bytes=", options.pending_w_bytes, " must be in [0, ",
                      kMaxBytes, "]");
  PIPETRAIN_CHECK_ARG(options.memory_cap_bytes >= 0, kFunction,
                      "memory_cap_bytes=", options.memory_cap_bytes,
                      " must be >= 0 (0: the input's peak)");
  costs.check(kFunction, schedule.num_stages());
  if (const ValidationReport report = validate(schedule); !report.ok())
    throw ScheduleError(detail::message(kFunction, "schedule '", schedule.name(),
                                        "' does not validate:\n", report.format(schedule)));
  const double input_time = simulate(schedule, costs).makespan;

  const std::int64_t act = options.activation_bytes;
  const std::int64_t pend = options.pending_w_bytes;
  std::array<std::int64_t, kNumKinds> delta{};
  delta[static_cast<std::size_t>(ActionKind::kForward)] = act;
  delta[static_cast<std::size_t>(ActionKind::kBackward)] = -act;
  delta[static_cast<std::size_t>(ActionKind::kBackwardInput)] = pend - act;
  delta[static_cast<std::size_t>(ActionKind::kBackwardWeight)] = -pend;

  const auto running_memory = [&](const Flat& flat, std::vector<std::int64_t>& peaks) {
    std::vector<std::int64_t> running(flat.nodes.size());
    peaks.assign(static_cast<std::size_t>(schedule.num_ranks()), 0);
    for (int r = 0; r < schedule.num_ranks(); ++r) {
      std::int64_t held = 0;
      for (std::size_t id = flat.begin[static_cast<std::size_t>(r)];
           id < flat.begin[static_cast<std::size_t>(r) + 1]; ++id) {
        held += delta[static_cast<std::size_t>(flat.nodes[id].action.kind)];
        running[id] = held;
        peaks[static_cast<std::size_t>(r)] = std::max(peaks[static_cast<std::size_t>(r)], held);
      }
    }
    return running;
  };
  Flat flat = flatten(schedule);
  std::vector<std::int64_t> peaks;
  std::vector<std::int64_t> running = running_memory(flat, peaks);
  std::int64_t cap = options.memory_cap_bytes;
  if (cap == 0) {
    cap = *std::max_element(peaks.begin(), peaks.end());
  } else {
    for (int r = 0; r < schedule.num_ranks(); ++r)
      PIPETRAIN_CHECK_ARG(peaks[static_cast<std::size_t>(r)] <= cap, kFunction,
                          "memory_cap_bytes=", cap, " is below rank ", r, "'s peak ",
                          peaks[static_cast<std::size_t>(r)], " in schedule '", schedule.name(),
                          "'; expected a cap >= the input's peak on every rank");
  }

  // Each round squeezes the best order so far: an action that moved earlier can let others move
  // in the next round (P = 16, M = 32, uniform costs: V-Half 118.5 -> 117.5 -> 116.5).
  Schedule current = schedule;
  double current_time = input_time;
  const Schedule shape(schedule.name(), schedule.num_ranks(), schedule.stages_per_rank(),
                       schedule.num_microbatches(), schedule.placement());
  for (int round = 0; round < kMaxRounds; ++round) {
    std::optional<Schedule> best;
    double best_time = current_time;
    for (const Variant& variant : kVariants) {
      const auto orders = list_schedule(current, flat, costs, delta, running, cap, variant);
      if (!orders) continue;
      Schedule candidate = detail::lay_out(shape, *orders);
      const double time = simulate(candidate, costs).makespan;
      if (time < best_time - 1e-9 * std::max(1.0, std::abs(best_time))) {
        best = std::move(candidate);
        best_time = time;
      }
    }
    if (!best) break;
    current = std::move(*best);
    current_time = best_time;
    flat = flatten(current);
    running = running_memory(flat, peaks);
  }
  return current;
}

}  // namespace pipetrain
