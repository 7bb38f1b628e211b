// pipetrain/schedule/passes.h: transformations of a schedule.
#pragma once

#include <cstdint>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

/// Inserts the communication a compute-only schedule needs: after each F whose next stage runs
/// on another rank, a SEND_F; before the F that consumes it, a RECV_F; likewise SEND_B after each
/// B or I whose previous stage runs on another rank, and RECV_B before the backward that consumes
/// it. Between every ordered pair of ranks, the sends on one side and the receives on the other
/// come in the same order, so transports that match messages in order (NCCL) pair them
/// correctly, and the result is deadlock-free under the blocking semantics of validate().
/// Transfers between two stages on the same rank need no action.
///
/// Where the receives go: the compute schedule is run with every action taking one time unit
/// (and unbounded buffering); a message produced at time T is received in the receiver's gap
/// at T, after its actions that end by T and before those that start at T or later, its
/// consumer among them. Both ends of every message thus meet at the same time, which makes the
/// result deadlock-free under grouped blocking semantics (a receive placed just before its
/// consumer can deadlock: see test_passes), and the receives between two ranks come in send
/// order even when two streams share the pair (V placement).
/// Layout: the compute actions keep the input's columns; each column is followed by as many
/// columns as the most communication actions any rank needs there (sends right after their
/// producer's column, receives right before their consumer's column), so the grid stays
/// aligned. The name, sizes and placement are the input's; strip_comm() gives back its actions.
/// Linear time apart from sorting the few actions of each gap.
/// Throws InvalidArgument when `schedule` already has communication actions; throws
/// ScheduleError with validate()'s report when it is not a valid compute schedule.
Schedule lower(const Schedule& schedule);

/// Removes every communication action and every empty slot, leaving each rank's compute order
/// (rows may differ in length); overlapped slots stay overlapped. Never throws.
Schedule strip_comm(const Schedule& schedule);

/// Replaces each I by a B of the same (stage, microbatch) at the I's position and leaves an
/// empty slot where each W was (so a lowered grid keeps its columns), then normalize()s: the
/// schedule a runtime without split backward runs; an overlapped F and I stays an overlapped F
/// and B. Works on compute-only and lowered
/// schedules; a valid schedule stays valid (a lowered one stays deadlock-free: removing a W can
/// only join two communication groups, which posts operations earlier). Never throws.
Schedule merge_backward(const Schedule& schedule);

/// Replaces each overlapped slot (schedule.h) by its two actions in sequence, the F first, in
/// the slot's place: the schedule a runtime without overlap runs (pipetrain's executor runs one
/// action at a time, and validate() reports every overlapped slot). The F of a pair is never the
/// input of its B or I (different microbatches), so running the F first keeps a valid order
/// valid. Everything else is the input's; a schedule without overlapped slots comes back equal.
/// Never throws.
Schedule expand_overlap(const Schedule& schedule);

/// Keeps only the forward half: F, SEND_F and RECV_F in their order, every backward action
/// and its communication replaced by an empty slot, then normalize()s. The schedule a runtime
/// runs for evaluation (forward only, nothing kept); its name is the input's plus "-forward";
/// overlapped slots lose their backward, and so their mark.
/// Forward dependencies are a subset of the input's, so a valid, deadlock-free input gives a
/// deadlock-free result. Never throws.
Schedule forward_only(const Schedule& schedule);

/// What squeeze() may hold on a rank. A rank's memory at a point of its order is
/// activation_bytes x (stage-microbatches between F and B/I) + pending_w_bytes x (those between
/// I and W), as peak_stage_bytes() (generators.h) counts it; with both 1, analyze_memory()'s
/// held count.
struct SqueezeOptions {
  std::int64_t activation_bytes = 1;  ///< in [0, 2^39]
  std::int64_t pending_w_bytes = 1;   ///< in [0, 2^39]
  /// Per-rank cap on that memory; 0: the input's peak on its highest rank (so a rank below
  /// it may grow up to it, and the schedule's peak never grows). Must be >= every rank's peak
  /// in the input.
  std::int64_t memory_cap_bytes = 0;
};

/// Re-orders each rank's compute actions by list scheduling on simulate()'s clock under `costs`
/// (per-stage times, as simulate() takes them): whenever a rank is free it runs, of its actions
/// whose inputs have arrived, the one that comes first in the input's order among those that
/// keep its memory within the cap. An action that adds memory (an F; an I when pending_w_bytes >
/// activation_bytes) runs out of order (an F of the warm-up while the next action in order waits
/// for its input) only when the rest of the input's order stays within the cap after it, so the
/// input's own order can always go on and the result never gets stuck. Three rules are tried,
/// each a list-scheduling run: "patient" (an out-of-order action must end by the time the
/// action due in order becomes ready, when that time is known), "W last" (a W runs only when no
/// other action that fits comes before the first F that memory blocks) and "W last" with "W
/// patient" (a W only in a gap that no F, B or I known to become ready fills first). Up to four
/// rounds each squeeze the fastest order so far (a move can open the next one). Returns the
/// fastest (simulated) of all and the input, the input on ties; the result is laid out on the step
/// grid with the input's name, sizes and placement, and validates (lower() makes it
/// deadlock-free like any valid schedule). This is the "squeeze" of the zero-bubble
/// repository's V-Half and V-Min (Qi et al. 2024, "Pipeline parallelism with controllable
/// memory"), done on the clock rather than on the unit grid (docs/schedules.md, "Cost-aware
/// generation"). Time O(A log A) for A actions.
/// Throws InvalidArgument ("[squeeze] ...") when `schedule` has communication actions (run
/// strip_comm() first), a byte count is out of range, memory_cap_bytes is below a rank's peak in
/// the input, or costs.check() fails or a per-stage vector does not have num_stages entries;
/// ScheduleError "[squeeze] schedule '<name>' does not validate:\n" with validate()'s report
/// when `schedule` does not validate (overlapped slots included: run expand_overlap() first).
Schedule squeeze(const Schedule& schedule, const CostModel& costs,
                 const SqueezeOptions& options = {});

}  // namespace pipetrain
