// pipetrain/schedule/generators.h: the schedules pipetrain knows, as pure functions.
//
// Each generator computes every rank's compute actions (F, B, I, W; no communication) for
// P = num_ranks ranks and M = num_microbatches microbatches, and lays them on a common
// step grid. Lower the result with lower() (passes.h) before running it.
//
// Each generator throws InvalidArgument for a spec it cannot build, with a message that
// names the function, the value and what is expected, e.g.
//   [interleaved_1f1b] num_microbatches=3 must be >= num_ranks=4
// docs/schedules.md lists every schedule with its bubble and memory formulas and sources.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

/// GPipe (Huang et al. 2019): all M forwards, then all M backwards (B), both in microbatch order.
/// Needs P >= 1, M >= 1. Uniform costs: bubble (P-1)/(M+P-1), M activations held on every rank.
Schedule gpipe(int num_ranks, int num_microbatches);

/// 1F1B (PipeDream-Flush, Narayanan et al. 2021): rank r runs min(P-1-r, M) warm-up forwards
/// (Megatron's count), then alternates one forward and one backward, then runs the backwards
/// left. Needs P >= 1, M >= 1. Uniform costs: bubble (P-1)/(M+P-1); rank r holds min(P-r, M).
Schedule one_f_one_b(int num_ranks, int num_microbatches);

/// Interleaved 1F1B (Narayanan et al. 2021, Megatron-LM) with v = stages_per_rank model chunks per
/// rank (loop placement). Microbatches go through the chunks in groups: groups of P as in
/// Megatron-Core when P divides M; otherwise M/P (rounded down) groups of sizes as equal as
/// possible, larger first (PyTorch ScheduleInterleaved1F1B's rounds), every M >= P works. Rank r
/// runs 2(P-1-r) + (v-1)*G warm-up forwards (G = the largest group). v = 1 gives one_f_one_b()'s
/// order. Needs v >= 1 and M >= P when v > 1. Uniform per-stage costs, P | M: bubble
/// (P-1)/(vM+P-1).
Schedule interleaved_1f1b(int num_ranks, int num_microbatches, int stages_per_rank);

/// Looped BFS (Lamy-Poirier 2023, "Breadth-First Pipeline Parallelism"): loop placement with v
/// stages per rank, each rank runs all microbatches through one local stage before the next,
/// forwards then backwards (B). Needs v >= 1.
Schedule looped_bfs(int num_ranks, int num_microbatches, int stages_per_rank);

/// ZB-H1 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism"): 1F1B with the backward split into
/// I and W; W is delayed to fill the cool-down bubble. Built by the paper's list heuristic on a
/// unit-time grid. Any M >= 1. Uniform costs (F = I = W = 1), M >= P: makespan 3M+P-1, idle P-1 per
/// rank (1F1B: 3(P-1)); per rank the activations (F..I) of 1F1B, min(P-r, M); F..W held: P on
/// every rank, 1F1B's peak.
Schedule zb_h1(int num_ranks, int num_microbatches);

/// ZB-H2 (Qi et al. 2024): extra warm-up forwards fill the start bubble and W fills the rest;
/// zero bubble under uniform costs once M is large enough, at most 2P-1 microbatches in flight.
/// Any M >= 1. Uniform costs, M >= 2P-1: every rank busy without a gap from its first action to
/// its last (makespan 3M+P-1, the least possible; the P-1 idle per rank is the start offset and
/// tail of the parallelogram); peak held 2P-1.
Schedule zb_h2(int num_ranks, int num_microbatches);

/// ZB-V (Qi et al. 2024): V placement (v = 2, rank r holds stages r and 2P-1-r), split backward,
/// peak memory within 1F1B's, zero bubble under uniform costs once M is large enough.
/// The order of PyTorch's ScheduleZBVZeroBubble. Any M >= 1. Uniform costs per half-size stage,
/// M >= 2P-1: no gap inside any rank's span, makespan 6M+P-1; peak held 2P stages = P ranks'
/// shares, 1F1B's peak.
Schedule zb_v(int num_ranks, int num_microbatches);

/// DualPipeV (DeepSeek, "cut-in-half" DualPipe): V placement, the eight-phase order of
/// deepseek-ai/DualPipe's dualpipev.py, with F and B of the two chunks interleaved.
/// Needs M >= 2P. Uniform costs: makespan 6M+P-1 (idle P-1 per rank); peak held 2P+1 stages.
Schedule dualpipe_v(int num_ranks, int num_microbatches);

struct DualPipeVOptions {
  /// Mark the pairs that dualpipev.py runs overlapped (its _forward_backward_chunk calls: in step
  /// 4 each F0 with the next B1, except the last rank's first, and each F1 with the next B0; in
  /// step 5 each F1 with the next B0) as overlapped slots (schedule.h), as PyTorch's
  /// ScheduleDualPipeV writes OVERLAP_F_B: rank r has 2(M-2P+r+1) + P-r-1 pairs, one fewer on the
  /// last rank. The schedule is then named "dualpipe-v-overlap".
  bool overlap = false;
};

/// DualPipeV with options. With overlap, each pair's B sits in the slot right after its F, and
/// expand_overlap() of the result has every rank's actions in the order of dualpipe_v(P, M);
/// validate() reports the overlapped slots (run expand_overlap() first, as pipetrain's runtime
/// does). Uniform costs (F = 1, B = 2) and overlap_overhead = h in [0, 2] (measured, P <= 8,
/// 2P <= M <= 4P): makespan 4M + 3P + (2M-P-2)h, against dualpipe_v()'s 6M+P-1
/// (docs/schedules.md, "Overlapped slots (DualPipeV)"). Memory: dualpipe_v()'s (same order).
/// Throws as dualpipe_v(P, M).
Schedule dualpipe_v(int num_ranks, int num_microbatches, const DualPipeVOptions& options);

/// V-Half (Qi et al., NeurIPS 2024, "Pipeline Parallelism with Controllable Memory"): V placement
/// (as ZB-V), split backward, built by repeating the paper's V-Half building block every 6 unit
/// steps; the block fixes each rank's order of F and I, and each W runs where its rank would
/// otherwise wait or where an F would exceed the block's peak memory. Any M >= 1. Uniform
/// per-stage costs (F = I = W = 1), P >= 2, M >= P: makespan 6M + 3(P-1) - (P mod 2), i.e. at
/// most half of 1F1B's idle; peak held (F..W) min(2M, 2(floor(P/2)+1)) stages, i.e.
/// floor(P/2)+1 rank shares (1F1B: P).
Schedule v_half(int num_ranks, int num_microbatches);

/// V-Min (Qi et al., NeurIPS 2024): as v_half() with the paper's V-Min building block, the
/// shortest lifespan. Any M >= 1. Uniform per-stage costs, P >= 2, M >= 2: makespan
/// 6M + 4P - 5 (+2 when 3 divides P), about two thirds of 1F1B's idle; peak held (F..W)
/// min(2M, 2 floor((P+4)/3)) stages, i.e. floor((P+4)/3) rank shares (1F1B: P).
Schedule v_min(int num_ranks, int num_microbatches);

// ---- cost-aware zero-bubble generation ------------------------------------------------------
//
// The overloads below of zb_h1(), zb_h2(), zb_v(), v_half() and v_min() plan for a cost model
// instead of the unit grid. Each runs the zero-bubble list heuristic (Qi et al. 2024, section
// 3.1) on the simulator's clock: at every time a rank is free it runs its ready action, F and I
// alternating in the steady state, W to fill the gaps and to free memory; an F waits while it
// would break the family's memory limit (as the unit-grid version: ZB-H1 1F1B's activations,
// ZB-H2 2P-1 held, ZB-V P shares, V-Half and V-Min their peaks of the unit-cost schedule) or the
// byte cap. It tries a few variants of the heuristic (an F in the warm-up that would delay the
// first I, or not; a W in a gap shorter than W, or not; the other kind of F/I when the one due is
// not ready, or not), simulates each and the unit-grid schedule of the same name under `costs`,
// and returns the fastest; ties, and so uniform costs (F = I = W on every stage, free transfers,
// where the unit grid is the clock), keep the unit-grid schedule. So the result is never slower
// (simulated) than the unit-grid one when that fits the cap, and always within the cap. From
// 50000 compute actions (3 x stages x M) the variants run on up to min(hardware threads, 10)
// std::threads, started and joined within the call (safe to call from several threads at once);
// the result is the one the variants give one after the other, bit for bit.
// docs/schedules.md, "Cost-aware generation", has the rules and the measured gains.

/// What a cost-aware zero-bubble generator plans for.
struct ZeroBubbleCosts {
  /// Per-STAGE times (per-stage vectors: 0 or num_stages entries, as simulate() takes them) and
  /// the transfer time between ranks (costs.transfer_time()).
  CostModel costs = CostModel::uniform();
  /// Bytes one stage keeps for one microbatch from its F until its I.
  std::int64_t activation_bytes = 1;
  /// Bytes one stage keeps for one microbatch from its I until its W.
  std::int64_t pending_w_bytes = 1;
  /// Per-rank cap on (activation_bytes x stage-microbatches between F and I + pending_w_bytes x
  /// those between I and W), at every point of the rank's order; 0: no cap.
  std::int64_t memory_cap_bytes = 0;

  /// Throws InvalidArgument naming `function` when costs.check() fails, a per-stage vector has
  /// neither 0 nor num_stages entries, a byte count is < 0 or > 2^39, or the cap is < 0.
  void check(const char* function, int num_stages) const;
};

/// Peak bytes of each rank of `schedule` under `memory`'s activation_bytes and pending_w_bytes
/// (per stage, not divided by stages_per_rank). Throws as analyze_memory().
std::vector<std::int64_t> peak_stage_bytes(const Schedule& schedule, const ZeroBubbleCosts& memory);

/// Cost-aware ZB-H1, ZB-H2, ZB-V, V-Half and V-Min (see above). Besides the errors of the unit-grid
/// versions and of ZeroBubbleCosts::check(), they throw InvalidArgument when no schedule of the
/// family fits memory_cap_bytes: "[zb_v] memory_cap_bytes=1 is below what any ZB-V variant
/// needs ...".
Schedule zb_h1(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs);
Schedule zb_h2(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs);
Schedule zb_v(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs);
Schedule v_half(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs);
Schedule v_min(int num_ranks, int num_microbatches, const ZeroBubbleCosts& costs);

/// True for the names that have a cost-aware overload: zb-h1, zb-h2, zb-v, v-half, v-min.
bool is_cost_aware(std::string_view name);

/// The cost-aware overload of `name` (is_cost_aware(name) must hold, or InvalidArgument).
Schedule make_cost_aware_schedule(std::string_view name, int num_ranks, int num_microbatches,
                                  const ZeroBubbleCosts& costs);

/// The schedules pipetrain's runtime runs as they are, in presentation order:
/// "gpipe", "1f1b", "interleaved-1f1b", "looped-bfs", "zb-h1", "zb-h2", "zb-v", "dualpipe-v",
/// "v-half", "v-min".
const std::vector<std::string>& schedule_names();

/// The schedules with overlapped slots (schedule.h): "dualpipe-v-overlap" (dualpipe_v() with
/// DualPipeVOptions::overlap). make_schedule() builds them too; validate() reports their slots,
/// so a runtime runs expand_overlap() of them (passes.h), and their simulated gain needs an
/// executor that runs a slot's two actions together.
const std::vector<std::string>& overlapped_schedule_names();

/// True for the schedules that take stages_per_rank (interleaved-1f1b, looped-bfs).
bool takes_stages_per_rank(std::string_view name);

/// Builds a schedule by name, one of schedule_names() or overlapped_schedule_names().
/// stages_per_rank is used by interleaved-1f1b and looped-bfs and must be 1 for the others (the
/// V schedules fix it to 2).
/// Throws InvalidArgument for an unknown name, listing the known ones.
Schedule make_schedule(std::string_view name, int num_ranks, int num_microbatches,
                       int stages_per_rank = 1);

}  // namespace pipetrain
