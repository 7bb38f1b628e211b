// pipetrain/schedule/optimal.h: the fastest split-backward schedule for tiny P and M, found by
// branch and bound, as a yardstick for the zero-bubble heuristics (docs/schedules.md, "How far
// from optimal").
//
// The search space: every rank's order of its F, I and W actions (loop placement with one stage
// per rank, or V placement), each stage running its F, its I and its W in microbatch order (as
// every generator does; microbatches are interchangeable, so this loses little, but it is an
// assumption: the result is optimal among such orders), each rank holding at most `max_held`
// stage-microbatches between F and W. A schedule's time is simulate()'s: every action as early as
// its rank and its input allow. The search enumerates the orders through their actions sorted
// by (start time, rank), one sequence per schedule, and prunes with lower bounds (each rank's
// remaining work, each stage's remaining chain of F and I).
//
// Thread safety: pure function of its arguments.
#pragma once

#include <cstdint>
#include <limits>

#include "pipetrain/schedule/schedule.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {

struct OptimalOptions {
  Placement placement = Placement::kLoop;  ///< kLoop (v = 1) or kV (v = 2)
  int max_held = 0;                        ///< per rank, stage-microbatches F..W; 0: no limit
  /// Nodes of the search tree visited before giving up; the result is then the best found.
  std::int64_t max_nodes = 20'000'000;
  /// A known makespan to beat (a heuristic's): only strictly faster schedules are looked for.
  double upper_bound = std::numeric_limits<double>::infinity();
};

struct OptimalResult {
  /// The fastest schedule found, laid out on the step grid; has no actions when none was found
  /// below options.upper_bound.
  Schedule schedule{"optimal", 1, 1, 1};
  bool found = false;
  double makespan = std::numeric_limits<double>::infinity();  ///< found ? its makespan : bound
  bool proven = false;      ///< the search finished: nothing faster exists (below the bound)
  std::int64_t nodes = 0;   ///< nodes visited
};

/// Branch and bound over per-rank orders (see above) under per-stage `costs` (CostModel's
/// per-stage vectors: 0 or num_stages entries) with costs.transfer_time() between ranks.
/// Throws InvalidArgument ("[optimal_schedule] ...") when num_ranks is not in [1, 4],
/// num_microbatches not in [1, 6], a compute time is not > 0, costs.check() fails, or max_held
/// is < 0 or, for V placement, 1 (a rank then cannot finish its first microbatch).
OptimalResult optimal_schedule(int num_ranks, int num_microbatches, const CostModel& costs,
                               const OptimalOptions& options = {});

}  // namespace pipetrain
