// optimal_schedule() (optimal.h) and how far the cost-aware zero-bubble heuristics are from it at
// P <= 3, M <= 4: the gaps asserted here are the ones docs/schedules.md reports.
#include "pipetrain/schedule/optimal.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"
#include "split_costs.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;
using pipetrain::testing::split_costs;

int max_held(const Schedule& s) {
  const MemoryProfile m = analyze_memory(s);
  return *std::max_element(m.peak_held.begin(), m.peak_held.end());
}

TEST(Optimal, OneRankOneMicrobatchIsTheSumOfItsActions) {
  const OptimalResult r = optimal_schedule(1, 1, split_costs(1, 2, 3, 0));
  ASSERT_TRUE(r.found);
  EXPECT_TRUE(r.proven);
  EXPECT_DOUBLE_EQ(r.makespan, 6.0);
  EXPECT_EQ(r.schedule.rank_actions(0), make_schedule("zb-h1", 1, 1).rank_actions(0));
}

TEST(Optimal, UnitCostsMatchTheZeroBubbleFormula) {
  // For M >= 2P-1, ZB-H2 reaches 3M+P-1 (the least possible); nothing is faster.
  for (int p : {2, 3})
    for (int m = 2 * p - 1; m <= 5; ++m) {
      const OptimalResult r = optimal_schedule(p, m, CostModel::uniform());
      ASSERT_TRUE(r.proven);
      EXPECT_DOUBLE_EQ(r.makespan, 3 * m + p - 1) << "P=" << p << " M=" << m;
    }
}

struct Gap {
  std::string name;
  double max_gap;  // heuristic / optimal - 1, as measured (docs/schedules.md)
};

// The cost-aware heuristic against the optimum under the unit-grid schedule's memory (its peak
// held stage-microbatches). Gaps documented in docs/schedules.md, "How far from optimal":
// ZB-H1/ZB-H2 within 5.6% (one case, P=3 M=3 1:2:1 with transfers; the rest exact), the V
// schedules within 12.8% off uniform costs and 31.3% under them (uniform costs keep the unit-grid
// schedule, whose warm-up is not tuned for M < 2P-1).
TEST(Optimal, HeuristicsAreWithinTheDocumentedGap) {
  struct Ratio {
    double f, i, w, latency;
  };
  const std::vector<Ratio> ratios = {{1, 1, 1, 0}, {1, 2, 1, 0}, {1, 1.35, 0.5, 0}, {1, 2, 1, 0.5}};
  const std::vector<std::string> names = {"zb-h1", "zb-h2", "zb-v", "v-half", "v-min"};
  double worst_h = 0, worst_v = 0, worst_v_uniform = 0;
  for (const std::string& name : names) {
    const bool v_shape = name != "zb-h1" && name != "zb-h2";
    for (int p : {2, 3})
      for (int m : {2, 3, 4}) {
        if (v_shape && p == 3 && m > 2) continue;  // V at P = 3 beyond M = 2: too many orders
        for (const Ratio& ratio : ratios) {
          ZeroBubbleCosts zc;
          zc.costs = split_costs(ratio.f, ratio.i, ratio.w, ratio.latency);
          const Schedule h = make_cost_aware_schedule(name, p, m, zc);
          const double heuristic = simulate(h, zc.costs).makespan;
          OptimalOptions options;
          options.placement = v_shape ? Placement::kV : Placement::kLoop;
          options.max_held = max_held(make_schedule(name, p, m));
          options.max_nodes = 2'000'000;
          const OptimalResult r = optimal_schedule(p, m, zc.costs, options);
          const std::string where = name + " P=" + std::to_string(p) + " M=" + std::to_string(m) +
                                    " costs " + std::to_string(ratio.i) + " latency " +
                                    std::to_string(ratio.latency);
          if (!r.proven) continue;  // bounded search: only a proven optimum measures the gap
          ASSERT_TRUE(r.found) << where;
          EXPECT_LE(r.makespan, heuristic * (1 + 1e-12)) << where;
          // The optimum is a valid schedule with the makespan and memory claimed.
          ASSERT_TRUE(validate(lower(r.schedule)).ok()) << where;
          EXPECT_DOUBLE_EQ(simulate(r.schedule, zc.costs).makespan, r.makespan) << where;
          EXPECT_LE(max_held(r.schedule), options.max_held) << where;
          const double gap = heuristic / r.makespan - 1;
          const bool uniform = ratio.i == 1 && ratio.latency == 0;
          if (!v_shape) worst_h = std::max(worst_h, gap);
          else if (uniform) worst_v_uniform = std::max(worst_v_uniform, gap);
          else worst_v = std::max(worst_v, gap);
        }
      }
  }
  EXPECT_LE(worst_h, 0.056);
  EXPECT_GT(worst_h + worst_v, 0.0);  // the yardstick does find better schedules
  EXPECT_LE(worst_v, 0.128);
  EXPECT_LE(worst_v_uniform, 0.313);
}

TEST(Optimal, Errors) {
  const CostModel c = CostModel::uniform();
  EXPECT_EQ(error_of([&] { optimal_schedule(5, 2, c); }),
            "[optimal_schedule] num_ranks=5 must be in [1, 4] (the search is exponential)");
  EXPECT_EQ(error_of([&] { optimal_schedule(2, 7, c); }),
            "[optimal_schedule] num_microbatches=7 must be in [1, 6] (the search is exponential)");
  OptimalOptions options;
  options.placement = Placement::kV;
  options.max_held = 1;
  EXPECT_EQ(error_of([&] { optimal_schedule(2, 2, c, options); }),
            "[optimal_schedule] max_held=1 must be 0 (no limit) or >= 1 (>= 2 for V placement)");
  EXPECT_EQ(error_of([&] { optimal_schedule(2, 2, split_costs(1, 0, 1, 0)); }),
            "[optimal_schedule] the time of 0I0 must be > 0");
}

}  // namespace
}  // namespace pipetrain
