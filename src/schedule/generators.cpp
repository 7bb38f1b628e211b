// Implementation of pipetrain/schedule/generators.h.
//
// Every generator first decides each rank's order of compute actions, then lays the orders out
// on a common step grid by running them with unit time per action (an action starts one step
// after its producer ended, as soon as its rank is free). ZB-H1 and ZB-H2 are instead built
// directly on that unit-time grid by a list scheduler, as in Qi et al. 2024, section 3, and
// V-Half and V-Min by repeating a building block on it (Qi et al., NeurIPS 2024).
#include "pipetrain/schedule/generators.h"

#include <algorithm>
#include <climits>
#include <deque>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pipetrain/error.h"
#include "layout.h"
#include "list_rank.h"

namespace pipetrain {
namespace {

constexpr ActionKind kF = ActionKind::kForward;
constexpr ActionKind kB = ActionKind::kBackward;
constexpr ActionKind kI = ActionKind::kBackwardInput;
constexpr ActionKind kW = ActionKind::kBackwardWeight;

using Orders = std::vector<std::vector<Action>>;

// Every generator checks its shape, limits included, before it allocates anything.
void check_common(const char* function, int num_ranks, int num_microbatches,
                  int stages_per_rank = 1) {
  check_schedule_size(function, num_ranks, stages_per_rank, num_microbatches);
}

// End times (in unit steps) of the actions placed so far, per (stage, microbatch).
class EndTimes {
 public:
  EndTimes(int num_stages, int num_microbatches)
      : num_microbatches_(num_microbatches),
        forward_(static_cast<std::size_t>(num_stages * num_microbatches), INT_MAX),
        backward_(forward_),
        weight_(forward_) {}

  int& at(ActionKind kind, int stage, int microbatch) {
    auto& table = kind == kF ? forward_ : kind == kW ? weight_ : backward_;
    return table[static_cast<std::size_t>(stage * num_microbatches_ + microbatch)];
  }

  // True when every producer of `action` ended by step `step` (see simulate.h for the rules).
  bool ready(const Action& action, int step, int num_stages) {
    auto done = [&](ActionKind kind, int stage) {
      return at(kind, stage, action.microbatch) <= step;
    };
    switch (action.kind) {
      case kF:
        return action.stage == 0 || done(kF, action.stage - 1);
      case kB:
      case kI:
        return done(kF, action.stage) &&
               (action.stage == num_stages - 1 || done(kB, action.stage + 1));
      default:
        return done(kB, action.stage);  // W after its I
    }
  }

 private:
  int num_microbatches_;
  std::vector<int> forward_, backward_, weight_;  // backward_ holds B or I
};

Schedule empty(const char* name, int num_ranks, int stages_per_rank, int num_microbatches,
               Placement placement = Placement::kLoop) {
  return Schedule(name, num_ranks, stages_per_rank, num_microbatches, placement);
}

// 1F1B order of rank r for P ranks, one stage per rank (stage r).
std::vector<Action> one_f_one_b_order(int r, int num_ranks, int num_microbatches) {
  std::vector<Action> order;
  const int warmup = std::min(num_ranks - 1 - r, num_microbatches);
  int f = 0, b = 0;
  while (f < warmup) order.push_back({r, kF, f++});
  while (f < num_microbatches) {
    order.push_back({r, kF, f++});
    order.push_back({r, kB, b++});
  }
  while (b < num_microbatches) order.push_back({r, kB, b++});
  return order;
}

// ---- zero-bubble list scheduler ---------------------------------------------------------------

// Per-rank limits of the list scheduler, in (stage, microbatch) units.
struct ZbLimits {
  std::vector<int> max_activations;  // F done, I not yet (what 1F1B counts)
  std::vector<int> max_held;         // F done, W not yet
};

// Builds a split-backward schedule on the unit-time grid with the heuristic of Qi et al. 2024
// (section 3.1): in the warm-up a rank runs as many F as the memory limits allow until its first
// I is ready; then it alternates F and I, and runs the oldest pending W whenever the action it
// wants next is not ready or the memory limit blocks its F; the W left over run at the end.
// With several local stages, the later stage is tried first.
Schedule zb_list_schedule(Schedule schedule, const ZbLimits& limits) {
  const int num_ranks = schedule.num_ranks();
  const int num_stages = schedule.num_stages();
  const int num_mb = schedule.num_microbatches();
  EndTimes ends(num_stages, num_mb);
  std::vector<detail::ListRank> ranks(static_cast<std::size_t>(num_ranks));
  std::size_t remaining = 0;
  for (int r = 0; r < num_ranks; ++r)
    remaining += ranks[static_cast<std::size_t>(r)].start(schedule.stages_of_rank(r), num_mb);
  for (int step = 0; remaining > 0; ++step) {
    std::vector<Action> placed;
    for (int r = 0; r < num_ranks; ++r) {
      detail::ListRank& st = ranks[static_cast<std::size_t>(r)];
      const auto ready = [&](ActionKind kind) -> std::optional<std::size_t> {
        if (kind == kF && (st.activations >= limits.max_activations[static_cast<std::size_t>(r)] ||
                           st.held >= limits.max_held[static_cast<std::size_t>(r)]))
          return std::nullopt;
        for (std::size_t k = 0; k < st.stages.size(); ++k) {
          const int mb = kind == kF ? st.next_f[k] : st.next_i[k];
          if (mb < num_mb && ends.ready({st.stages[k], kind, mb}, step, num_stages)) return k;
        }
        return std::nullopt;
      };
      std::optional<Action> pick;
      if (!st.warm) {
        if (auto k = ready(kI)) pick = Action{st.stages[*k], kI, st.next_i[*k]};
        else if (auto k = ready(kF)) pick = Action{st.stages[*k], kF, st.next_f[*k]};
      } else {
        if (st.forwards_left == 0) st.want_forward = false;
        if (st.inputs_left == 0) st.want_forward = true;
        const ActionKind want = st.want_forward ? kF : kI;
        const int left = st.want_forward ? st.forwards_left : st.inputs_left;
        if (left > 0) {
          if (auto k = ready(want))
            pick = Action{st.stages[*k], want, want == kF ? st.next_f[*k] : st.next_i[*k]};
        }
      }
      if (!pick && !st.pending_w.empty() &&
          ends.at(kI, st.pending_w.front().stage, st.pending_w.front().microbatch) <= step)
        pick = st.pending_w.front();
      if (!pick) {
        schedule.append_idle(r);
        continue;
      }
      schedule.append(r, *pick);
      placed.push_back(*pick);
      st.place(*pick);
    }
    if (placed.empty())
      throw Error("[zb_list_schedule] internal error: schedule '" + schedule.name() +
                  "' is stuck");
    for (const Action& a : placed) ends.at(a.kind, a.stage, a.microbatch) = step + 1;
    remaining -= placed.size();
  }
  schedule.normalize();
  return schedule;
}

// ---- controllable-memory V schedules (Qi et al., NeurIPS 2024) ------------------------------

// Where the building block of a V schedule puts a rank's four compute actions for microbatch 0,
// in unit steps; microbatch m repeats them 6m steps later (each rank does F, F, I, I and two W
// per microbatch, six unit actions, so the block is six steps long).
struct VBlock {
  int forward0;  // F of chunk 0 (stage r)
  int forward1;  // F of chunk 1 (stage 2P-1-r)
  int input1;    // I of chunk 1
  int input0;    // I of chunk 0
};

// Repeats each rank's building block M times and runs it on the unit-time grid. The block fixes
// the order of each rank's F and I; the W are placed by the grid: a rank runs its next F or I as
// soon as it is ready, and its oldest pending W when that F or I is not ready yet, or when the F
// would raise the rank's held memory (F..W) above the block's own peak: the W that the block
// puts in the free steps of its period, put instead where the squeezed warm-up and cool-down
// leave a gap. Every F and I has its producer at an earlier step of the repeated block, so the
// orders cannot deadlock.
Schedule v_block_schedule(Schedule schedule, const std::vector<VBlock>& blocks) {
  const int p = schedule.num_ranks(), m = schedule.num_microbatches();
  const int num_stages = schedule.num_stages();
  constexpr int kPeriod = 6;
  struct RankState {
    std::vector<Action> order;  // F and I in block order
    std::size_t next = 0;
    detail::ActionQueue pending_w;
    int held = 0, cap = 0;
  };
  std::vector<RankState> ranks(static_cast<std::size_t>(p));
  std::size_t remaining = 0;
  for (int r = 0; r < p; ++r) {
    const VBlock& b = blocks[static_cast<std::size_t>(r)];
    const int s0 = r, s1 = 2 * p - 1 - r;
    std::vector<std::pair<int, Action>> timed;  // (step in the repeated block, action)
    for (int mb = 0; mb < m; ++mb) {
      timed.push_back({b.forward0 + kPeriod * mb, {s0, kF, mb}});
      timed.push_back({b.forward1 + kPeriod * mb, {s1, kF, mb}});
      timed.push_back({b.input1 + kPeriod * mb, {s1, kI, mb}});
      timed.push_back({b.input0 + kPeriod * mb, {s0, kI, mb}});
    }
    std::sort(timed.begin(), timed.end());
    RankState& st = ranks[static_cast<std::size_t>(r)];
    // The block's peak held memory, each W in the first free step after its I.
    int held = 0, waiting_w = 0;
    std::size_t k = 0;
    for (int step = 0; k < timed.size(); ++step) {
      if (timed[k].first == step) {
        const Action& a = timed[k++].second;
        st.order.push_back(a);
        if (a.kind == kF) st.cap = std::max(st.cap, ++held);
        else ++waiting_w;
      } else if (waiting_w > 0) {
        --waiting_w;
        --held;
      }
    }
    remaining += st.order.size() * 3 / 2;
  }
  EndTimes ends(num_stages, m);
  for (int step = 0; remaining > 0; ++step) {
    std::vector<Action> placed;
    for (int r = 0; r < p; ++r) {
      RankState& st = ranks[static_cast<std::size_t>(r)];
      std::optional<Action> pick;
      if (st.next < st.order.size()) {
        const Action& a = st.order[st.next];
        if (ends.ready(a, step, num_stages) && (a.kind != kF || st.held < st.cap)) pick = a;
      }
      if (pick) {
        ++st.next;
        if (pick->kind == kF) ++st.held;
        else st.pending_w.push_back({pick->stage, kW, pick->microbatch});
      } else if (!st.pending_w.empty() &&
                 ends.at(kI, st.pending_w.front().stage, st.pending_w.front().microbatch) <=
                     step) {
        pick = st.pending_w.front();
        st.pending_w.pop_front();
        --st.held;
      }
      if (!pick) {
        schedule.append_idle(r);
        continue;
      }
      schedule.append(r, *pick);
      placed.push_back(*pick);
    }
    if (placed.empty())
      throw Error("[v_block_schedule] internal error: schedule '" + schedule.name() +
                  "' is stuck");
    for (const Action& a : placed) ends.at(a.kind, a.stage, a.microbatch) = step + 1;
    remaining -= placed.size();
  }
  schedule.normalize();
  return schedule;
}

}  // namespace

namespace detail {

// Lays per-rank orders on the grid, one step per action, each action as early as its rank and
// its producers allow. The orders come from the generators, so a stuck order is a bug here.
Schedule lay_out(Schedule schedule, const std::vector<std::vector<Action>>& orders) {
  const int num_ranks = schedule.num_ranks();
  EndTimes ends(schedule.num_stages(), schedule.num_microbatches());
  std::vector<std::size_t> next(static_cast<std::size_t>(num_ranks), 0);
  std::size_t remaining = 0;
  for (const auto& order : orders) remaining += order.size();
  for (int step = 0; remaining > 0; ++step) {
    std::vector<Action> placed;
    for (int r = 0; r < num_ranks; ++r) {
      const auto& order = orders[static_cast<std::size_t>(r)];
      std::size_t& i = next[static_cast<std::size_t>(r)];
      if (i < order.size() && ends.ready(order[i], step, schedule.num_stages())) {
        schedule.append(r, order[i]);
        placed.push_back(order[i]);
        ++i;
      } else {
        schedule.append_idle(r);
      }
    }
    if (placed.empty())
      throw Error("[lay_out] internal error: schedule '" + schedule.name() + "' is stuck");
    for (const Action& a : placed) ends.at(a.kind, a.stage, a.microbatch) = step + 1;
    remaining -= placed.size();
  }
  schedule.normalize();
  return schedule;
}

}  // namespace detail

using detail::lay_out;

Schedule gpipe(int num_ranks, int num_microbatches) {
  check_common("gpipe", num_ranks, num_microbatches);
  Orders orders(static_cast<std::size_t>(num_ranks));
  for (int r = 0; r < num_ranks; ++r) {
    auto& order = orders[static_cast<std::size_t>(r)];
    for (int m = 0; m < num_microbatches; ++m) order.push_back({r, kF, m});
    for (int m = 0; m < num_microbatches; ++m) order.push_back({r, kB, m});
  }
  return lay_out(empty("gpipe", num_ranks, 1, num_microbatches), orders);
}

Schedule one_f_one_b(int num_ranks, int num_microbatches) {
  check_common("one_f_one_b", num_ranks, num_microbatches);
  Orders orders;
  for (int r = 0; r < num_ranks; ++r)
    orders.push_back(one_f_one_b_order(r, num_ranks, num_microbatches));
  return lay_out(empty("1f1b", num_ranks, 1, num_microbatches), orders);
}

Schedule interleaved_1f1b(int num_ranks, int num_microbatches, int stages_per_rank) {
  check_common("interleaved_1f1b", num_ranks, num_microbatches, stages_per_rank);
  const int p = num_ranks, m = num_microbatches, v = stages_per_rank;
  Orders orders;
  if (v == 1) {
    for (int r = 0; r < p; ++r) orders.push_back(one_f_one_b_order(r, p, m));
    return lay_out(empty("interleaved-1f1b", p, 1, m), orders);
  }
  PIPETRAIN_CHECK_ARG(m >= p, "interleaved_1f1b", "num_microbatches=", m,
                      " must be >= num_ranks=", p);
  // Megatron-Core's schedule table: microbatches in groups; a group goes through chunk 0, then
  // chunk 1, ... before the next group starts. With M a multiple of P the groups have P
  // microbatches (Megatron's default microbatch_group_size_per_vp_stage); otherwise, as the
  // rounds of PyTorch's ScheduleInterleaved1F1B, there are M / P (rounded down) groups of sizes
  // as equal as possible (between P and 2P-1), and the warm-up grows with the largest group.
  const int rounds = m / p;
  const int group = (m + rounds - 1) / rounds;  // the largest group
  std::vector<std::pair<int, int>> table;       // (microbatch, chunk)
  for (int g = 0, first = 0; g < rounds; ++g) {
    const int size = m / rounds + (g < m % rounds ? 1 : 0);
    for (int c = 0; c < v; ++c)
      for (int mb = first; mb < first + size; ++mb) table.emplace_back(mb, c);
    first += size;
  }
  const int total = m * v;
  for (int r = 0; r < p; ++r) {
    auto forward = [&](int k) { return Action{table[k].second * p + r, kF, table[k].first}; };
    auto backward = [&](int k) {
      return Action{(v - 1 - table[k].second) * p + r, kB, table[k].first};
    };
    const int warmup = std::min(2 * (p - 1 - r) + (v - 1) * group, total);
    std::vector<Action> order;
    for (int k = 0; k < warmup; ++k) order.push_back(forward(k));
    for (int k = 0; k < total - warmup; ++k) {
      order.push_back(forward(warmup + k));
      order.push_back(backward(k));
    }
    for (int k = total - warmup; k < total; ++k) order.push_back(backward(k));
    orders.push_back(std::move(order));
  }
  return lay_out(empty("interleaved-1f1b", p, v, m), orders);
}

Schedule looped_bfs(int num_ranks, int num_microbatches, int stages_per_rank) {
  check_common("looped_bfs", num_ranks, num_microbatches, stages_per_rank);
  const int p = num_ranks, m = num_microbatches, v = stages_per_rank;
  Orders orders(static_cast<std::size_t>(p));
  for (int r = 0; r < p; ++r) {
    auto& order = orders[static_cast<std::size_t>(r)];
    for (int c = 0; c < v; ++c)
      for (int mb = 0; mb < m; ++mb) order.push_back({c * p + r, kF, mb});
    for (int c = v - 1; c >= 0; --c)
      for (int mb = 0; mb < m; ++mb) order.push_back({c * p + r, kB, mb});
  }
  return lay_out(empty("looped-bfs", p, v, m), orders);
}

Schedule zb_h1(int num_ranks, int num_microbatches) {
  check_common("zb_h1", num_ranks, num_microbatches);
  ZbLimits limits;
  for (int r = 0; r < num_ranks; ++r) {
    limits.max_activations.push_back(num_ranks - r);
    limits.max_held.push_back(num_ranks);
  }
  return zb_list_schedule(empty("zb-h1", num_ranks, 1, num_microbatches), limits);
}

Schedule zb_h2(int num_ranks, int num_microbatches) {
  check_common("zb_h2", num_ranks, num_microbatches);
  ZbLimits limits;
  for (int r = 0; r < num_ranks; ++r) {
    limits.max_activations.push_back(2 * (num_ranks - 1 - r) + 1);
    limits.max_held.push_back(2 * num_ranks - 1);
  }
  return zb_list_schedule(empty("zb-h2", num_ranks, 1, num_microbatches), limits);
}

Schedule zb_v(int num_ranks, int num_microbatches) {
  check_common("zb_v", num_ranks, num_microbatches, 2);
  const int p = num_ranks, m = num_microbatches;
  // The order of PyTorch's ScheduleZBVZeroBubble (the ZB-V of Qi et al. 2024, figure 6), built
  // for at least 2P-1 microbatches; the microbatches past M are then dropped, which keeps every
  // dependency of the ones left.
  const int n = std::max(2 * p - 1, m);
  Orders orders;
  for (int r = 0; r < p; ++r) {
    const int s0 = r, s1 = 2 * p - 1 - r;
    std::vector<Action> order;
    int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
    auto push = [&](int stage, ActionKind kind, int mb) {
      if (mb < m) order.push_back({stage, kind, mb});
    };
    for (int i = 0; i < 2 * (p - r) - 1; ++i) push(s0, kF, f0++);
    for (int i = 0; i < r; ++i) push(s1, kF, f1++), push(s0, kF, f0++);
    for (int i = 0; i < p - r; ++i) {
      push(s1, kF, f1++);
      push(s1, kI, b1);
      push(s1, kW, b1++);
    }
    while (f1 < f0 || f0 < n) {
      if (f0 < n) push(s0, kF, f0++);
      push(s0, kI, b0);
      push(s0, kW, b0++);
      push(s1, kF, f1++);
      push(s1, kI, b1);
      push(s1, kW, b1++);
    }
    int w0 = b0, w1 = b1;
    for (int i = 0; i < r; ++i) push(s0, kI, b0++), push(s1, kI, b1++);
    for (int i = 0; i < p - r; ++i) push(s0, kI, b0++), push(s0, kW, w0++);
    while (w1 < b1) push(s1, kW, w1++);
    while (w0 < b0) push(s0, kW, w0++);
    orders.push_back(std::move(order));
  }
  return lay_out(empty("zb-v", p, 2, m, Placement::kV), orders);
}

Schedule dualpipe_v(int num_ranks, int num_microbatches) {
  return dualpipe_v(num_ranks, num_microbatches, DualPipeVOptions{});
}

Schedule dualpipe_v(int num_ranks, int num_microbatches, const DualPipeVOptions& options) {
  check_common("dualpipe_v", num_ranks, num_microbatches, 2);
  const int p = num_ranks, m = num_microbatches;
  PIPETRAIN_CHECK_ARG(m >= 2 * p, "dualpipe_v", "num_microbatches=", m,
                      " must be >= 2*num_ranks=", 2 * p);
  Orders orders;
  std::vector<std::vector<std::size_t>> overlapped;  // per rank: see `pairs`
  for (int r = 0; r < p; ++r) {
    const int s0 = r, s1 = 2 * p - 1 - r;
    std::vector<Action> order;
    // Indices into `order` of the F that begins an overlapped pair with the next action.
    std::vector<std::size_t> pairs;
    int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
    std::deque<Action> deferred_w;
    auto forward = [&](int chunk) {
      order.push_back(chunk == 0 ? Action{s0, kF, f0++} : Action{s1, kF, f1++});
    };
    // A backward, full or (zero_bubble) split into I now and W queued.
    auto backward = [&](int chunk, bool zero_bubble) {
      const Action a = chunk == 0 ? Action{s0, kB, b0++} : Action{s1, kB, b1++};
      if (!zero_bubble) {
        order.push_back(a);
        return;
      }
      order.push_back({a.stage, kI, a.microbatch});
      deferred_w.push_back({a.stage, kW, a.microbatch});
    };
    auto pop_w = [&] {
      order.push_back(deferred_w.front());
      deferred_w.pop_front();
    };
    // dualpipev.py's _forward_backward_chunk: the F of one chunk and the full B of the other.
    auto forward_backward = [&](int f_chunk, int b_chunk) {
      pairs.push_back(order.size());
      forward(f_chunk);
      backward(b_chunk, false);
    };
    const bool last = r == p - 1;
    for (int i = 0; i < 2 * (p - r - 1); ++i) forward(0);             // 1: nF0
    for (int i = 0; i < r + 1; ++i) forward(0), forward(1);             // 2: nF0F1
    for (int i = 0; i < p - r - 1; ++i) backward(1, true), pop_w(), forward(1);  // 3: nB1W1F1
    for (int i = 0; i < m - 2 * p + r + 1; ++i) {                       // 4: nF0B1F1B0
      // The last rank runs its first F0 and B1 apart: dualpipev.py leaves that pair
      // unoverlapped to shorten the bubble.
      if (i == 0 && last) {
        forward(0), backward(1, false);
      } else {
        forward_backward(0, 1);
      }
      forward_backward(1, 0);
    }
    for (int i = 0; i < p - r - 1; ++i)                                 // 5: nB1F1B0
      backward(1, false), forward_backward(1, 0);
    bool zero_bubble = false;                                           // 6: nB1B0
    for (int i = 0; i < r + 1; ++i) {
      // The second half of step 6 splits its backwards; odd ranks start one backward earlier.
      if (i == (r + 1) / 2 && r % 2 == 1) zero_bubble = true;
      backward(1, zero_bubble);
      if (i == (r + 1) / 2 && r % 2 == 0) zero_bubble = true;
      backward(0, zero_bubble);
    }
    for (int i = 0; i < p - r - 1; ++i) pop_w(), backward(0, true);    // 7: nWB0
    for (int i = 0; i < r + 1; ++i) pop_w();                            // 8: nW
    orders.push_back(std::move(order));
    overlapped.push_back(std::move(pairs));
  }
  Schedule out = lay_out(
      empty(options.overlap ? "dualpipe-v-overlap" : "dualpipe-v", p, 2, m, Placement::kV), orders);
  if (!options.overlap) return out;
  // Mark the pairs on the laid-out grid: a rank's actions keep their order there, so the k-th
  // action of a rank is its k-th non-empty slot.
  for (int r = 0; r < p; ++r) {
    const auto& slots = out.rank_slots(r);
    std::vector<std::size_t> step_of;
    for (std::size_t i = 0; i < slots.size(); ++i)
      if (slots[i]) step_of.push_back(i);
    for (std::size_t k : overlapped[static_cast<std::size_t>(r)]) {
      // A pair is one slot: its B follows its F directly, so close the idle gap between them.
      auto& row = out.rank_slots(r);
      const std::size_t f = step_of[k], b = step_of[k + 1];
      if (b != f + 1) std::swap(row[f + 1], row[b]);
      out.mark_overlap(r, f);
    }
  }
  return out;
}

Schedule v_half(int num_ranks, int num_microbatches) {
  check_common("v_half", num_ranks, num_microbatches, 2);
  const int p = num_ranks;
  // The V-Half building block of Qi et al. 2024 (the reference repository's stable pattern):
  // rank r starts 2r steps after rank 0; an even P shifts the backwards by 3 steps so that no two
  // of a rank's actions share a step of the 6-step block.
  const int shift = p % 2 == 0 ? 3 : 0;
  std::vector<VBlock> blocks;
  for (int r = 0; r < p; ++r)
    blocks.push_back({2 * r, 3 * p - 2 - r, 3 * p - 1 + shift + 2 * r, 6 * p - 2 + shift - r});
  return v_block_schedule(empty("v-half", p, 2, num_microbatches, Placement::kV), blocks);
}

Schedule v_min(int num_ranks, int num_microbatches) {
  check_common("v_min", num_ranks, num_microbatches, 2);
  const int p = num_ranks;
  // The V-Min building block: rank r starts r steps after rank 0; when 3 divides P the backwards
  // shift by 2 steps so that no two of a rank's actions share a step of the 6-step block.
  const int shift = p % 3 == 0 ? 2 : 0;
  std::vector<VBlock> blocks;
  for (int r = 0; r < p; ++r)
    blocks.push_back({r, 2 * p - 1 - r, 2 * p + shift + r, 4 * p - 1 + shift - r});
  return v_block_schedule(empty("v-min", p, 2, num_microbatches, Placement::kV), blocks);
}

const std::vector<std::string>& schedule_names() {
  static const std::vector<std::string> names = {
      "gpipe", "1f1b",      "interleaved-1f1b", "looped-bfs", "zb-h1",
      "zb-h2", "zb-v", "dualpipe-v",       "v-half",     "v-min"};
  return names;
}

const std::vector<std::string>& overlapped_schedule_names() {
  static const std::vector<std::string> names = {"dualpipe-v-overlap"};
  return names;
}

bool takes_stages_per_rank(std::string_view name) {
  return name == "interleaved-1f1b" || name == "looped-bfs";
}

Schedule make_schedule(std::string_view name, int num_ranks, int num_microbatches,
                       int stages_per_rank) {
  const auto& names = schedule_names();
  const auto& overlapped = overlapped_schedule_names();
  if (std::find(names.begin(), names.end(), name) == names.end() &&
      std::find(overlapped.begin(), overlapped.end(), name) == overlapped.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    for (const auto& n : overlapped) known += ", " + n;
    throw InvalidArgument("[make_schedule] unknown schedule '" + std::string(name) +
                          "': expected one of " + known);
  }
  if (name == "interleaved-1f1b")
    return interleaved_1f1b(num_ranks, num_microbatches, stages_per_rank);
  if (name == "looped-bfs") return looped_bfs(num_ranks, num_microbatches, stages_per_rank);
  PIPETRAIN_CHECK_ARG(stages_per_rank == 1, "make_schedule", "stages_per_rank=", stages_per_rank,
                      " must be 1 for schedule '", name,
                      "' (only interleaved-1f1b and looped-bfs take it)");
  if (name == "gpipe") return gpipe(num_ranks, num_microbatches);
  if (name == "1f1b") return one_f_one_b(num_ranks, num_microbatches);
  if (name == "zb-h1") return zb_h1(num_ranks, num_microbatches);
  if (name == "zb-h2") return zb_h2(num_ranks, num_microbatches);
  if (name == "zb-v") return zb_v(num_ranks, num_microbatches);
  if (name == "v-half") return v_half(num_ranks, num_microbatches);
  if (name == "v-min") return v_min(num_ranks, num_microbatches);
  if (name == "dualpipe-v-overlap")
    return dualpipe_v(num_ranks, num_microbatches, DualPipeVOptions{.overlap = true});
  return dualpipe_v(num_ranks, num_microbatches);
}

}  // namespace pipetrain
