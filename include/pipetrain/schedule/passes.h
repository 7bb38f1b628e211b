// pipetrain/schedule/passes.h: transformations of a schedule.
#pragma once

#include "pipetrain/schedule/schedule.h"

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

}  // namespace pipetrain
