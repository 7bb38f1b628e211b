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

/// Works on compute-only and lowered schedules (communication actions are skipped); runs in
/// time linear in the number of actions.
/// Throws ScheduleError (with the grid, the faulty cells marked) when an I/B/W comes before its F
/// on the same rank, a W before its I, or an action's stage or microbatch is out of range
/// (validate() first for a full report).
MemoryProfile analyze_memory(const Schedule& schedule);

/// Execution times. Per-stage times in arbitrary units (seconds, or multiples of F).
/// Each per-stage vector is either empty (use the scalar of the same kind) or has num_stages
/// entries. A full B takes `backward` (or backward_per_stage[s]); it is not derived from the I and
/// W times, whose defaults merely add up to its default.
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
  /// What running an overlapped slot's F and B (or I) together costs beyond the longer of the two
  /// (the slot takes max(F, B or I) + overlap_overhead): 0 models perfect overlap; measure it.
  double overlap_overhead = 0.0;

  /// Throws InvalidArgument naming `function` and the field unless every time (the scalars, the
  /// per-stage entries, latency, bytes_per_transfer, overlap_overhead) is finite and >= 0 and
  /// bandwidth is > 0 (infinity allowed): "[simulate] costs.latency=-5 must be finite and >= 0". simulate()
  /// calls it first, so a negative or NaN time never reaches a makespan.
  void check(const char* function) const;
  /// The same, and every non-empty per-stage vector must have num_stages entries:
  /// "[simulate] costs.forward_per_stage has 2 entries, expected 0 or num_stages=8".
  void check(const char* function, int num_stages) const;

  /// B = 2F, I = W = F, free transfers: the model under which the published formulas hold.
  static CostModel uniform(double forward_time = 1.0);

  /// Time of a compute action on its stage; 0 for a communication action. Throws
  /// InvalidArgument for a stage out of range of a non-empty per-stage vector.
  double compute_time(const Action& action) const;
  /// latency + bytes_per_transfer / bandwidth (just latency when bytes_per_transfer is 0).
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
  /// Per rank: idle time between the rank's first start and its last end. Zero on every rank is
  /// the zero-bubble papers' "parallelogram": the idle left (rank r waits for the first forward
  /// to reach it, and finishes early) is the warm-up skew that consecutive iterations overlap
  /// once the optimizer step is not a barrier (Qi et al. 2024, section 4).
  std::vector<double> span_idle;
  double span_bubble_fraction = 0.0;  ///< sum(span_idle) / sum of the ranks' spans
};

/// Runs the schedule under `costs`: each rank executes its compute actions in order; an action
/// starts when the rank is free and its input has arrived: the producing action ended, plus
/// transfer_time() when it ran on another rank (same-rank hand-offs are free). Producers:
///   F(s, m)        needs F(s-1, m)   (nothing for s = 0)
///   B or I(s, m)   needs B or I(s+1, m), or F(s, m) for the last stage
///   W(s, m)        needs I(s, m)
/// An overlapped slot (schedule.h) starts when the rank is free and both its actions' inputs
/// have arrived, and takes max(F, B or I) + costs.overlap_overhead; both its actions are listed
/// with the slot's start and end, and busy counts the slot once.
/// Communication actions, if present, take no time and do not delay anything beyond the data
/// dependency; they only count in TimedAction::step. Works on compute-only and lowered
/// schedules, complete or not (only the dependencies present are waited for); a duplicated
/// action feeds its consumers from its first occurrence. Event-driven, linear in the number of
/// actions (P=128, M=1024, v=2 with split backward, 786k actions: about 0.1 s).
/// Throws InvalidArgument when costs.check() fails or a non-empty per-stage vector of `costs`
/// does not have num_stages entries; ScheduleError (a ValidationReport with one kDeadlock violation per stuck
/// rank, formatted with the grid and the stuck cells marked) when the schedule cannot finish
/// because a rank's next action waits for one that never runs or is not in the schedule; and
/// ScheduleError (kRange) for an action whose stage or microbatch is out of range, (kOverlap) for
/// an overlap mark whose slots are not an F and a B or I of different microbatches.
SimulationResult simulate(const Schedule& schedule, const CostModel& costs);

}  // namespace pipetrain
