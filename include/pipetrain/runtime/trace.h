// pipetrain/runtime/trace.h: measured timelines beside the simulator's prediction.
//
// Each rank's Executor::step() returns its measured action timeline (StepStats::timeline).
// gather_timelines() brings every pipeline rank's timeline of one replica to every member;
// trace_report() turns them into one Chrome trace JSON holding the measured run (pid = rank,
// "measured rank r") and the simulator's prediction under the measured per-stage mean costs
// (pid = P + rank, "predicted rank r"), with the measured and predicted bubble fractions.
#pragma once

#include <string>
#include <vector>

#include "pipetrain/comm/transport.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain::runtime {

/// Collective over the pipeline replica of `rank`: returns, for every pipeline rank p, its
/// timeline (one ActionTiming per action of schedule.rank_actions(p), in order). Throws
/// InvalidArgument when `timeline` does not hold this rank's actions in schedule order.
std::vector<std::vector<ActionTiming>> gather_timelines(Transport& transport,
                                                        const Topology& topology,
                                                        const Schedule& schedule,
                                                        const std::vector<ActionTiming>& timeline);

/// The measured run as a SimulationResult (compute actions only; times in seconds): makespan
/// is the last compute end, busy the sum of compute durations, bubble_fraction
/// sum(idle) / (P * makespan). timelines[p] must be pipeline rank p's.
SimulationResult measured_result(const Schedule& schedule,
                                 const std::vector<std::vector<ActionTiming>>& timelines);

/// Per-stage mean durations of F, B, I and W in the timelines (seconds), as a CostModel with
/// per-stage vectors (a kind a stage never ran gets the mean of that kind over all stages). A
/// run with split backward (no B anywhere) gets B = I + W per stage; a run with merged backward
/// (no I or W anywhere) gets I = W = B / 2, so the costs price every kind of schedule.
CostModel measured_costs(const Schedule& schedule,
                         const std::vector<std::vector<ActionTiming>>& timelines);

struct TraceReport {
  std::string chrome_trace_json;
  double measured_makespan = 0;   ///< seconds
  double predicted_makespan = 0;  ///< seconds
  double measured_bubble = 0;     ///< fraction of rank-time idle
  double predicted_bubble = 0;
};

/// Builds the combined Chrome trace (microseconds) and the bubble comparison.
TraceReport trace_report(const Schedule& schedule,
                         const std::vector<std::vector<ActionTiming>>& timelines);

}  // namespace pipetrain::runtime
