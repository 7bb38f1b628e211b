// pipetrain/schedule/simulate.h: memory analysis and timing simulation, with no device.
#pragma once

#include <limits>
#include <vector>

#include "pipetrain/schedule/schedule.h"

namespace pipetrain {

/// Per-rank activation memory of a schedule, in units of one stage's activations for one
/// microbatch. Counted in execution order on each rank:
///   activations: a (stage, microbatch) counts from its F until its B or I ran.
///   pending_w:   with split backward, a (stage, microbatch) counts from its I until its W ran
///                (the inputs and output gradients W still needs).
///   held:        a (stage, microbatch) counts from its F until its backward is complete (B, or
///                W for split backward): the conservative total, activations + pending_w.
struct MemoryProfile {
  std::vector<int> peak_activations;  ///< per rank
  std::vector<int> peak_pending_w;    ///< per rank
  std::vector<int> peak_held;         ///< per rank
};

/// Works on compute-only and lowered schedules. Throws ScheduleError when an I/B/W comes before
/// its F on the same rank (validate() first for a full report).
MemoryProfile analyze_memory(const Schedule& schedule);

/// Execution times. Per-stage times in arbitrary units (seconds, or multiples of F).
/// Each per-stage vector is either empty (use the scalar default) or has num_stages entries.
struct CostModel {
  double forward = 1.0;
  double backward = 2.0;         ///< full B; defaults to backward_input + backward_weight
  double backward_input = 1.0;
  double backward_weight = 1.0;
  std::vector<double> forward_per_stage;
  std::vector<double> backward_per_stage;
  std::vector<double> backward_input_per_stage;
  std::vector<double> backward_weight_per_stage;
  /// A transfer between ranks takes latency + bytes / bandwidth after its producer ends.
  double latency = 0.0;
  double bandwidth = std::numeric_limits<double>::infinity();  ///< bytes per time unit
  double bytes_per_transfer = 0.0;

  /// B = 2F, I = W = F, free transfers: the model under which the published formulas hold.
  static CostModel uniform(double forward_time = 1.0);

  /// Time of a compute action on its stage. Throws InvalidArgument for a stage out of range
  /// of a non-empty per-stage vector.
  double compute_time(const Action& action) const;
  double transfer_time() const;
};

struct TimedAction {
  int rank = 0;
  int step = 0;  ///< index into the schedule's rank_slots(rank)
  Action action;
  double start = 0.0;
  double end = 0.0;
};

struct SimulationResult {
  std::vector<TimedAction> actions;  ///< compute actions, ordered by rank then start
  double makespan = 0.0;             ///< last end over all ranks (all ranks start at 0)
  std::vector<double> busy;          ///< per rank: sum of compute times
  std::vector<double> idle;          ///< per rank: makespan - busy
  double bubble_fraction = 0.0;      ///< sum(idle) / (num_ranks * makespan)
};

/// Runs the schedule under `costs`: each rank executes its compute actions in order; an action
/// starts when the rank is free and its inputs have arrived (the producing action on the other
/// rank ended, plus transfer_time() when that rank differs). Communication actions, if present,
/// only fix the order and take no time. Works on compute-only and lowered schedules.
/// Throws ScheduleError (with the grid, the stuck ranks marked) when the schedule cannot finish.
SimulationResult simulate(const Schedule& schedule, const CostModel& costs);

}  // namespace pipetrain
