// pipetrain/schedule/search.h: which named schedule is fastest for (P, M, costs, memory).
//
// search_schedules() builds every generator of generators.h with each of its knobs, lowers,
// validates (deadlock included) and simulates it, computes each rank's peak memory in bytes,
// and ranks the candidates. Nothing runs on a device; P = 8, M = 32 takes a few milliseconds.
//
// The model: one model of fixed size split over P ranks
// --------------------------------------------------
// Every candidate runs the same model on the same P ranks. A rank's SHARE is 1/P of the model;
// a schedule with v stages per rank (interleaved-1f1b and looped-bfs: v = the knob; the V
// schedules zb-v, dualpipe-v, v-half, v-min: v = 2; the others: v = 1) splits each share into
// v stages of 1/v of a share each. So:
//
//   Time.   `costs` gives the times of one SHARE (F, B, I, W, and per-stage vectors, if any,
//           with one entry per rank: rank r's share). A stage of a candidate with v stages per
//           rank costs 1/v of its rank's times (stage_costs()). Transfers between ranks cost
//           costs.transfer_time() whatever v (the boundary tensor does not shrink with v; a
//           schedule with more stages has more transfers). This is the scaling of
//           `pipetrain-schedule --table` and of the tables in docs/schedules.md.
//   Memory. SearchOptions::activation_bytes is what one SHARE keeps for one microbatch from its
//           F until its backward input gradient ran (B, or I with a split backward);
//           pending_w_bytes is what one share keeps for one microbatch from its I until its W
//           ran (the stage's inputs and output gradients the weight gradient still needs). A
//           stage of a candidate with v stages per rank keeps 1/v of each. Walking each rank's
//           actions in order (as analyze_memory() in simulate.h does), the rank's bytes at any
//           point are
//             (activation_bytes * a + pending_w_bytes * w) / v, rounded up to a whole byte,
//           where a = stage-microbatches between F and B/I, w = those between I and W on that
//           rank. A rank's peak is the maximum over its execution order (an exact maximum of
//           the weighted sum, not the sum of the two separate peaks). Schedules with a full B
//           keep no pending W. With pending_w_bytes = activation_bytes (the default), a rank's
//           peak is MemoryProfile::peak_held * activation_bytes / v, the conservative figure of
//           docs/schedules.md; with pending_w_bytes = 0 it is peak_activations (held to I).
//           Parameters, gradients, optimizer state and communication buffers are the same for
//           every candidate (the same model on the same ranks) and are not counted: subtract
//           them from the device's memory to get memory_cap_bytes.
//
// Thread safety: pure functions of their arguments.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

struct SearchOptions {
  /// Largest accepted value of activation_bytes and pending_w_bytes: 2^39 (512 GiB for one share and one
  /// microbatch), so that a rank's sum over up to 2^23 in-flight stage-microbatches cannot
  /// overflow (peak_memory_bytes() refuses more in flight).
  static constexpr std::int64_t kMaxBytes = std::int64_t{1} << 39;

  /// Bytes one rank's share of the model keeps for one microbatch from F until B or I.
  /// 0 is allowed (every peak is then 0 and every candidate fits).
  std::int64_t activation_bytes = 1;
  /// Bytes one rank's share keeps for one microbatch from I until W. Unset: the rounded
  /// pending_w_fraction * activation_bytes.
  std::optional<std::int64_t> pending_w_bytes;
  /// Used when pending_w_bytes is unset; in [0, 1]. 1 (the default): W keeps all the
  /// activation's bytes, the conservative "held" count of analyze_memory().
  double pending_w_fraction = 1.0;
  /// Per-rank cap on the peak bytes above; 0 means no cap. A candidate fits when its peak on
  /// every rank is <= the cap.
  std::int64_t memory_cap_bytes = 0;
  /// The values of v tried for the schedules that take stages_per_rank (interleaved-1f1b,
  /// looped-bfs). Each must be in [1, 64]; duplicates are tried once. A v that the generator or
  /// ScheduleLimits rejects for (P, M) gives a rejected candidate with the reason, not an error.
  std::vector<int> stages_per_rank = {2, 3, 4};
  /// Also try the cost-aware version (generators.h) of each zero-bubble schedule (zb-h1, zb-h2,
  /// zb-v, v-half, v-min), planned for `costs` and the cap: knobs "costs".
  bool cost_aware = true;
  /// With cost_aware and activation_bytes > 0, also try cost-aware ZB-H2 under caps of k shares'
  /// activations for k = P .. 2P-2 (between ZB-H1's memory and ZB-H2's), and cost-aware ZB-V
  /// under k shares for k = V-Min's floor((P+4)/3) .. P-1 (between V-Min's and ZB-V's), each
  /// below memory_cap_bytes (at most 4 values of k per family, spread evenly over the range):
  /// knobs "costs, cap k shares".
  bool memory_knobs = true;
  /// Also try the schedules with overlapped slots (overlapped_schedule_names():
  /// dualpipe-v-overlap), simulated with each slot taking max(F, B or I) +
  /// costs.overlap_overhead (in the time unit of `costs`, per slot, not divided by v): knobs
  /// "overlapped". Its makespan holds only for an executor that runs a slot's two actions
  /// together; pipetrain's executor runs them in sequence (the time of the plain dualpipe-v
  /// candidate), so leave this off when choosing a schedule for pipetrain's runtime (train_gpt
  /// --schedule auto does). Memory and validation are those of expand_overlap() of it.
  bool overlapped = false;
  /// With cost_aware, also try v-half and v-min, named and cost-aware, re-ordered by
  /// squeeze() (passes.h) under the costs and their own peak memory: knobs "squeezed" and
  /// "costs, squeezed" (SearchResult::cost_aware false and true). Each is the faster of the
  /// squeezed order and its input, so it never loses to the candidate it comes from, and its
  /// peak never exceeds that candidate's.
  bool squeeze = true;
};

struct SearchResult {
  std::string name;  ///< a name of schedule_names() or, overlapped, overlapped_schedule_names()
  int stages_per_rank = 1;  ///< the knob passed to make_schedule() (1 for the V schedules)
  int stages_per_rank_effective = 1;  ///< v of the built schedule (2 for the V schedules)
  /// "v=3" for the schedules that take stages_per_rank, "costs" for a cost-aware candidate,
  /// "costs, cap 5 shares" for one under a memory knob, "squeezed" or "costs, squeezed" for a
  /// squeezed one, "overlapped" for one with overlapped slots; empty otherwise.
  std::string knobs;
  /// True for a cost-aware candidate (SearchOptions::cost_aware).
  bool cost_aware = false;
  /// True for a squeezed candidate (SearchOptions::squeeze): squeeze() of the candidate with
  /// the same name and other knobs, under that candidate's own peak.
  bool squeezed = false;
  /// True for a candidate with overlapped slots (SearchOptions::overlapped): its makespan needs
  /// an executor that overlaps them.
  bool overlapped = false;
  /// The memory knob of the candidate in bytes per rank (what one rank's shares may keep), 0 for
  /// none; the candidate was generated under min(this, memory_cap_bytes).
  std::int64_t knob_cap_bytes = 0;
  /// True when the candidate was built, lowered, validated and simulated; false when any of
  /// these failed (then `reason` says why and the figures below are 0 / empty).
  bool built = false;
  double makespan = 0.0;         ///< in the time unit of `costs`
  double bubble_fraction = 0.0;  ///< SimulationResult::bubble_fraction
  std::vector<std::int64_t> peak_bytes_per_rank;
  std::int64_t peak_bytes = 0;  ///< max over ranks of peak_bytes_per_rank
  int peak_rank = 0;            ///< the lowest rank that reaches peak_bytes
  /// built and (no cap, or peak_bytes <= memory_cap_bytes).
  bool feasible = false;
  /// Empty when feasible. Otherwise the generator's, lower()'s, validate()'s or simulate()'s
  /// message, e.g. "[dualpipe_v] num_microbatches=5 must be >= 2*num_ranks=6", or
  /// "peak 3221225472 bytes on rank 0 > memory cap 2147483648 bytes".
  std::string reason;
};

/// The costs of one stage of `schedule` when `share_costs` are the times of one rank's share
/// of the model (see the header comment): every time divided by schedule.stages_per_rank();
/// per-stage vectors of share_costs, if non-empty, must have schedule.num_ranks() entries
/// (rank r's share) and become num_stages() entries, stage s getting its rank's entry / v.
/// Latency, bandwidth and bytes_per_transfer are kept.
/// Throws InvalidArgument ("[stage_costs] ...") when share_costs.check() fails or a per-stage
/// vector has neither 0 nor num_ranks entries.
CostModel stage_costs(const CostModel& share_costs, const Schedule& schedule);

/// Each rank's peak bytes under the memory model of the header comment, for a compute-only or
/// lowered schedule (communication actions are skipped). activation_bytes and pending_w_bytes
/// are per SHARE; the result divides by schedule.stages_per_rank().
/// Throws InvalidArgument when a byte count is < 0 or > SearchOptions::kMaxBytes, or when more
/// than 2^23 stage-microbatches are in flight on one rank (only a schedule built by hand can have
/// so many); ScheduleError as analyze_memory() for an action out of order or out of range.
std::vector<std::int64_t> peak_memory_bytes(const Schedule& schedule,
                                            std::int64_t activation_bytes,
                                            std::int64_t pending_w_bytes);

/// Tries every schedule of schedule_names() at (num_ranks, num_microbatches): the ones that
/// take stages_per_rank once per value of options.stages_per_rank, the others once, each
/// zero-bubble one also cost-aware and under the memory knobs (options.cost_aware,
/// options.memory_knobs), v-half and v-min also squeezed (options.squeeze with
/// options.cost_aware; each right after the one it squeezes), all right after the named one in
/// presentation order, and with options.overlapped the overlapped schedules (right after
/// dualpipe-v). Each candidate is built with make_schedule(), lowered, validated
/// (validate_or_throw(): deadlock included; an overlapped one through expand_overlap()),
/// simulated under stage_costs(costs, schedule) (an overlapped one with its slots), and
/// measured with peak_memory_bytes(). Any exception of one candidate (a generator's rejection of (P, M), a
/// size beyond ScheduleLimits, a failed validation, even std::bad_alloc) becomes that
/// candidate's `reason`; it never stops the search.
///
/// Returned ranked: feasible candidates by makespan (makespans within a relative 1e-9 count as
/// equal), ties by lower peak_bytes, then presentation order; then the built candidates over
/// the cap, in the same order; then the rejected ones, in presentation order. So front() is
/// the winner when front().feasible.
///
/// Throws InvalidArgument naming "search_schedules", the value and what was expected when
/// check_schedule_size(num_ranks, 1, num_microbatches) fails, costs.check() fails, a per-stage
/// vector of costs has neither 0 nor num_ranks entries, activation_bytes or pending_w_bytes is
/// < 0 or > kMaxBytes, memory_cap_bytes is < 0,
/// pending_w_fraction is not in [0, 1], or options.stages_per_rank is empty or holds a value
/// outside [1, 64].
std::vector<SearchResult> search_schedules(int num_ranks, int num_microbatches,
                                           const CostModel& costs,
                                           const SearchOptions& options = {});

/// The compute-only schedule of a candidate that search_schedules(num_ranks, num_microbatches,
/// costs, options) returned (built), rebuilt from its name and knobs: what the search lowered,
/// validated and simulated. Throws as the generator does.
Schedule make_candidate(const SearchResult& candidate, int num_ranks, int num_microbatches,
                        const CostModel& costs, const SearchOptions& options = {});

}  // namespace pipetrain
