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
/// Throws InvalidArgument when `schedule` already has communication actions; throws
/// ScheduleError (with the grid) when it is not a valid compute schedule.
Schedule lower(const Schedule& schedule);

/// Removes every communication action (and the empty slots), leaving the compute order.
Schedule strip_comm(const Schedule& schedule);

/// Replaces each I by a B of the same (stage, microbatch) and removes the matching W: the
/// schedule a runtime without split backward runs. Works on compute-only and lowered schedules.
Schedule merge_backward(const Schedule& schedule);

}  // namespace pipetrain
