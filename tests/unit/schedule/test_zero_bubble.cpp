// Cost-aware zero-bubble generation (generators.h): uniform costs give today's schedules; other
// costs give valid schedules no slower than the unit-grid ones and within the memory cap.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"
#include "split_costs.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

const std::vector<std::string> kNames = {"zb-h1", "zb-h2", "zb-v", "v-half", "v-min"};

ZeroBubbleCosts costs_of(double f, double i, double w, double latency = 0.0) {
  ZeroBubbleCosts zc;
  zc.costs = pipetrain::testing::split_costs(f, i, w, latency);
  return zc;
}

std::int64_t peak(const Schedule& s, const ZeroBubbleCosts& zc) {
  const std::vector<std::int64_t> peaks = peak_stage_bytes(s, zc);
  return *std::max_element(peaks.begin(), peaks.end());
}

TEST(CostAware, UniformCostsGiveTodaysSchedules) {
  for (const std::string& name : kNames)
    for (int p = 1; p <= 6; ++p)
      for (int m = 1; m <= 3 * p + 1; ++m)
        for (double unit : {1.0, 0.5}) {
          const ZeroBubbleCosts zc = costs_of(unit, unit, unit);
          EXPECT_EQ(make_cost_aware_schedule(name, p, m, zc), make_schedule(name, p, m))
              << name << " P=" << p << " M=" << m << " unit=" << unit;
        }
}

TEST(CostAware, UniformCostsWithTheUnitGridPeakAsCapGiveTodaysSchedules) {
  for (const std::string& name : kNames) {
    ZeroBubbleCosts zc = costs_of(1, 1, 1);
    zc.activation_bytes = 1000;
    zc.pending_w_bytes = 1000;
    const Schedule grid = make_schedule(name, 4, 8);
    zc.memory_cap_bytes = peak(grid, zc);
    EXPECT_EQ(make_cost_aware_schedule(name, 4, 8, zc), grid) << name;
  }
}

struct Ratio {
  double f, i, w, latency;
};

// Over a grid of P, M and cost ratios (the zero-bubble paper's 1:2:1, the H100 per-layer
// 1.6:2.72:1.26, the CPU's 1:1.35:0.5, with and without transfer time): every result is valid
// and deadlock-free once lowered, no slower than the unit-grid schedule, and within the cap.
TEST(CostAware, NoSlowerThanTheUnitGridAndWithinTheCap) {
  const std::vector<Ratio> ratios = {{1, 2, 1, 0},      {1.6, 2.72, 1.26, 0}, {1, 1.35, 0.5, 0},
                                     {1, 2, 1, 0.5},    {1, 1, 1, 0.25},      {1.6, 2.72, 1.26, 1.0},
                                     {1, 0.5, 2, 0.1}};
  int improved = 0, cases = 0;
  for (const std::string& name : kNames) {
    for (int p : {2, 3, 4, 5, 8}) {
      for (int m : {1, 2, p, 2 * p, 3 * p + 1}) {
        for (const Ratio& ratio : ratios) {
          ZeroBubbleCosts zc = costs_of(ratio.f, ratio.i, ratio.w, ratio.latency);
          zc.activation_bytes = 3;
          zc.pending_w_bytes = 2;
          const Schedule grid = make_schedule(name, p, m);
          const std::int64_t grid_peak = peak(grid, zc);
          const double grid_time = simulate(grid, zc.costs).makespan;
          // No cap, the unit-grid schedule's own peak, and a cap the unit grid does not fit.
          for (std::int64_t cap : {std::int64_t{0}, grid_peak, grid_peak - 3}) {
            if (cap < 0 || (cap > 0 && cap < 6)) continue;
            zc.memory_cap_bytes = cap;
            const std::string where = name + " P=" + std::to_string(p) + " M=" +
                                      std::to_string(m) + " costs " + std::to_string(ratio.f) +
                                      ":" + std::to_string(ratio.i) + ":" +
                                      std::to_string(ratio.w) + " latency " +
                                      std::to_string(ratio.latency) + " cap " +
                                      std::to_string(cap);
            Schedule s("x", 1, 1, 1);
            try {
              s = make_cost_aware_schedule(name, p, m, zc);
            } catch (const InvalidArgument& e) {
              // Only a cap below the unit grid's peak may be refused, and with the reason.
              EXPECT_LT(cap, grid_peak) << where;
              EXPECT_NE(std::string(e.what()).find("is below what any"), std::string::npos)
                  << e.what();
              continue;
            }
            ++cases;
            const Schedule lowered = lower(s);
            ASSERT_TRUE(validate(lowered).ok()) << where << "\n" << validate(lowered).format(lowered);
            EXPECT_EQ(s.num_actions(), grid.num_actions()) << where;
            EXPECT_EQ(s.name(), grid.name());
            EXPECT_EQ(s.placement(), grid.placement());
            const double time = simulate(s, zc.costs).makespan;
            if (cap == 0 || cap >= grid_peak) {
              EXPECT_LE(time, grid_time * (1 + 1e-12)) << where;
              if (time < grid_time * (1 - 1e-9)) ++improved;
            }
            if (cap > 0) EXPECT_LE(peak(s, zc), cap) << where;
            // The lowered schedule simulates to the same makespan (communication takes no time).
            EXPECT_DOUBLE_EQ(simulate(lowered, zc.costs).makespan, time) << where;
          }
        }
      }
    }
  }
  // The heuristic does find faster schedules (1:2:1 V-Half and V-Min, transfers, ...).
  EXPECT_GT(improved, cases / 10) << improved << " of " << cases;
}

TEST(CostAware, KnownGainsUnderOneTwoOne) {
  // docs/schedules.md, "Cost-aware generation": F:I:W = 1:2:1 per stage, P = 8, M = 32.
  const ZeroBubbleCosts zc = costs_of(1, 2, 1);
  const auto time = [&](const Schedule& s) { return simulate(s, zc.costs).makespan; };
  EXPECT_DOUBLE_EQ(time(make_schedule("v-half", 8, 32)), 324.0);
  EXPECT_DOUBLE_EQ(time(v_half(8, 32, zc)), 298.0);
  EXPECT_DOUBLE_EQ(time(make_schedule("v-min", 8, 32)), 421.0);
  EXPECT_DOUBLE_EQ(time(v_min(8, 32, zc)), 396.0);
  EXPECT_DOUBLE_EQ(time(zb_v(8, 32, zc)), 270.0);  // the unit-grid ZB-V is already best
  EXPECT_EQ(zb_h2(8, 32, zc), zb_h2(8, 32));
}

TEST(CostAware, PerStageCostsAndCapsAreHonoured) {
  // A slow last rank: the heuristic must still give a valid schedule within the cap.
  ZeroBubbleCosts zc = costs_of(1, 2, 1, 0.2);
  zc.costs.forward_per_stage = {1, 1, 1, 2};
  zc.costs.backward_input_per_stage = {2, 2, 2, 4};
  zc.costs.backward_weight_per_stage = {1, 1, 1, 2};
  zc.memory_cap_bytes = 3;
  const Schedule s = zb_h2(4, 12, zc);
  EXPECT_TRUE(validate(lower(s)).ok());
  EXPECT_LE(peak(s, zc), 3);
  zc.memory_cap_bytes = 0;
  EXPECT_LE(simulate(zb_h2(4, 12, zc), zc.costs).makespan,
            simulate(zb_h2(4, 12), zc.costs).makespan);
}

// The schedules cost-aware generation chose before it was made faster (docs/performance.md,
// "Schedule core"): the same slots (a hash of every rank's slots) and the same makespan, bit
// for bit, at P = 8, M = 32 under 1:2:1 with transfer 0.3, the H100 per-layer 1.6:2.72:1.26,
// 1:2:1 under a cap of 8 stage-microbatches, and the CPU's 1:1.35:0.5 with transfer 0.1 and
// bytes 3 and 2 under a cap of 20. The values come from the code before the change.
std::uint64_t slots_hash(const Schedule& s) {
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a
  const auto mix = [&](std::uint64_t v) {
    h ^= v;
    h *= 1099511628211ull;
  };
  for (int r = 0; r < s.num_ranks(); ++r) {
    mix(0xFFFF);
    for (const auto& slot : s.rank_slots(r)) {
      if (!slot) {
        mix(0xFFFE);
        continue;
      }
      mix(static_cast<std::uint64_t>(slot->kind));
      mix(static_cast<std::uint64_t>(slot->stage));
      mix(static_cast<std::uint64_t>(slot->microbatch));
    }
  }
  return h;
}

// A cost-aware schedule pinned by the hash of its slots and its exact makespan under one of four
// cost cases: 0: F:I:W 1:2:1 with transfer 0.3; 1: 1.6:2.72:1.26; 2: 1:2:1 under a cap of
// `cap2` bytes; 3: 1:1.35:0.5 with transfer 0.1, activations 3 and pending W 2 bytes under
// `cap3`.
struct Pinned {
  const char* name;
  int costs;
  std::uint64_t hash;
  double makespan;
};

void expect_pinned(const std::vector<Pinned>& pinned, int num_ranks, int num_microbatches,
                   std::int64_t cap2, std::int64_t cap3) {
  for (const Pinned& p : pinned) {
    ZeroBubbleCosts zc = p.costs == 0   ? costs_of(1, 2, 1, 0.3)
                         : p.costs == 1 ? costs_of(1.6, 2.72, 1.26)
                         : p.costs == 2 ? costs_of(1, 2, 1)
                                        : costs_of(1, 1.35, 0.5, 0.1);
    if (p.costs == 2) zc.memory_cap_bytes = cap2;
    if (p.costs == 3) {
      zc.activation_bytes = 3;
      zc.pending_w_bytes = 2;
      zc.memory_cap_bytes = cap3;
    }
    const Schedule s = make_cost_aware_schedule(p.name, num_ranks, num_microbatches, zc);
    EXPECT_EQ(slots_hash(s), p.hash) << p.name << " costs " << p.costs;
    EXPECT_EQ(simulate(s, zc.costs).makespan, p.makespan) << p.name << " costs " << p.costs;
  }
}

TEST(CostAware, ResultsArePinned) {
  const std::vector<Pinned> pinned = {
      {"zb-h1", 0, 0xc5ad0983f6d88069ull, 150.40000000000009},
      {"zb-h1", 1, 0xc5ad0983f6d88069ull, 199.97999999999982},
      {"zb-h1", 2, 0xc5ad0983f6d88069ull, 142},
      {"zb-h1", 3, 0x62e357c29234ef89ull, 131.54999999999976},
      {"zb-h2", 0, 0xeb29e3b68c607d3dull, 139.20000000000005},
      {"zb-h2", 1, 0xeb29e3b68c607d3dull, 191.15999999999985},
      {"zb-h2", 2, 0xaabae974ce47c0e5ull, 142},
      {"zb-h2", 3, 0x23db0fa5d4e00c19ull, 131.34999999999974},
      {"zb-v", 0, 0x4e75b956f8f2ca7bull, 281.00000000000023},
      {"zb-v", 1, 0xec4cb3fde896efefull, 376.36000000000035},
      {"zb-v", 2, 0x0d9c8aaaf0ff3f45ull, 396},
      {"zb-v", 3, 0xd9eda84e76082c97ull, 379.55000000000217},
      {"v-half", 0, 0xb6634c59b5c5151full, 338.80000000000081},
      {"v-half", 1, 0xb6634c59b5c5151full, 417.30000000000098},
      {"v-half", 2, 0x0d9c8aaaf0ff3f45ull, 396},
      {"v-half", 3, 0xd9eda84e76082c97ull, 379.55000000000217},
      {"v-min", 0, 0x4d3561b2a692aeadull, 446.00000000000074},
      {"v-min", 1, 0x3fd9150c44e4a4bdull, 542.66000000000236},
      {"v-min", 2, 0x0d9c8aaaf0ff3f45ull, 396},
      {"v-min", 3, 0x8d8d0b6ea8472a47ull, 307.4000000000002},
  };
  expect_pinned(pinned, 8, 32, 8, 20);
}

// The same at P = 16, M = 1056, where every generator has at least 50688 compute actions, so
// its candidate passes run on several threads where the machine has more than one hardware
// thread: the threads must leave the choice as it was (same candidates, same order, ties kept).
// Costs as above, with caps of 16 and 40; the values come from the code before the threads.
TEST(CostAware, ConcurrentResultsArePinned) {
  const std::vector<Pinned> pinned = {
      {"zb-h1", 0, 0x91d02c0979e319edull, 4272.0000000000055},
      {"zb-h1", 1, 0x91d02c0979e319edull, 5938.3800000002411},
      {"zb-h1", 2, 0x91d02c0979e319edull, 4254},
      {"zb-h1", 3, 0x0d500c44d0aa5397ull, 3663.8999999998878},
      {"zb-h2", 0, 0x574bdd56e894d1b5ull, 4248.0000000000027},
      {"zb-h2", 1, 0x574bdd56e894d1b5ull, 5919.480000000236},
      {"zb-h2", 2, 0xe434e4216e59b7ddull, 4254},
      {"zb-h2", 3, 0x3eed92fa7111ce21ull, 3666.4499999998875},
      {"zb-v", 0, 0x90cebcc3821947e9ull, 8503.3999999999687},
      {"zb-v", 1, 0x20672c3d7893df65ull, 11827.500000000502},
      {"zb-v", 2, 0xc512d48d19e2ebb3ull, 11250},
      {"zb-v", 3, 0x91c435320d5a22cdull, 9955.6500000017568},
      {"v-half", 0, 0x246d42328fa9aa87ull, 9742.7999999999702},
      {"v-half", 1, 0x246d42328fa9aa87ull, 11913.140000000501},
      {"v-half", 2, 0xc512d48d19e2ebb3ull, 11250},
      {"v-half", 3, 0x91c435320d5a22cdull, 9955.6500000017568},
      {"v-min", 0, 0x503db09265f7e001ull, 14547.399999998537},
      {"v-min", 1, 0x503db09265f7e001ull, 17357.099999998693},
      {"v-min", 2, 0x503db09265f7e001ull, 12757},
      {"v-min", 3, 0x503db09265f7e001ull, 9218.0000000021428},
  };
  expect_pinned(pinned, 16, 1056, 16, 40);
}

TEST(CostAware, Errors) {
  ZeroBubbleCosts zc = costs_of(1, 2, 1);
  zc.memory_cap_bytes = 1;
  EXPECT_EQ(error_of([&] { zb_v(4, 8, zc); }),
            "[zb_v] memory_cap_bytes=1 is below what any zb-v variant needs at P=4, M=8 "
            "(activation_bytes=1, pending_w_bytes=1; the unit-grid zb-v peaks at 8 bytes)");
  zc.memory_cap_bytes = -1;
  EXPECT_EQ(error_of([&] { zb_h1(4, 8, zc); }),
            "[zb_h1] memory_cap_bytes=-1 must be >= 0 (0: no cap)");
  zc = costs_of(1, 2, 1);
  zc.costs.forward_per_stage = {1, 2};
  EXPECT_EQ(error_of([&] { v_min(4, 8, zc); }),
            "[v_min] a per-stage vector of costs has 2 entries; expected 0 or num_stages=8");
  zc = costs_of(1, 2, 1);
  zc.costs.backward_input = -2;
  EXPECT_EQ(error_of([&] { zb_h2(4, 8, zc); }),
            "[zb_h2] costs.backward_input=-2 must be finite and >= 0");
  EXPECT_EQ(error_of([&] { make_cost_aware_schedule("1f1b", 4, 8, ZeroBubbleCosts{}); }),
            "[make_cost_aware_schedule] schedule '1f1b' has no cost-aware version; expected one "
            "of zb-h1, zb-h2, zb-v, v-half, v-min");
  EXPECT_TRUE(is_cost_aware("v-half"));
  EXPECT_FALSE(is_cost_aware("dualpipe-v"));
}

}  // namespace
}  // namespace pipetrain
