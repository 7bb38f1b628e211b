// The published bubble and memory figures of every schedule, checked exactly with simulate() and
// analyze_memory() under CostModel::uniform() (per stage: F = 1, B = 2, I = W = 1, free
// transfers). The formulas and thresholds are the ones docs/schedules.md states.
#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {
namespace {

constexpr double kTol = 1e-12;

std::string spec(int p, int m, int v = 1) {
  return "P=" + std::to_string(p) + " M=" + std::to_string(m) + " v=" + std::to_string(v);
}

// Idle time of `rank` between its first start and its last end: the bubble inside its own span,
// which is what the zero-bubble papers call zero (the start offset r of rank r and the matching
// tail are not inside it).
double in_span_idle(const SimulationResult& sim, int rank) {
  double first = 1e300, last = 0.0;
  for (const TimedAction& t : sim.actions) {
    if (t.rank != rank) continue;
    first = std::min(first, t.start);
    last = std::max(last, t.end);
  }
  const double idle = last - first - sim.busy[static_cast<std::size_t>(rank)];
  // simulate() reports the same figure; this independent count checks it.
  EXPECT_NEAR(sim.span_idle[static_cast<std::size_t>(rank)], idle, kTol) << "rank " << rank;
  return idle;
}

TEST(ScheduleFigures, GpipeAndOneFOneBBubble) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const double expected = static_cast<double>(p - 1) / (m + p - 1);
      for (const Schedule& s : {gpipe(p, m), one_f_one_b(p, m)}) {
        const SimulationResult sim = simulate(s, CostModel::uniform());
        EXPECT_NEAR(sim.bubble_fraction, expected, kTol) << s.name();
        EXPECT_NEAR(sim.makespan, 3.0 * (m + p - 1), kTol) << s.name();
        for (int r = 0; r < p; ++r) EXPECT_NEAR(sim.idle[r], 3.0 * (p - 1), kTol) << s.name();
      }
    }
  }
}

TEST(ScheduleFigures, GpipeAndOneFOneBMemory) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const MemoryProfile g = analyze_memory(gpipe(p, m));
      const MemoryProfile f = analyze_memory(one_f_one_b(p, m));
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(g.peak_activations[r], m);
        EXPECT_EQ(g.peak_held[r], m);
        EXPECT_EQ(f.peak_activations[r], std::min(p - r, m)) << "rank " << r;
        EXPECT_EQ(f.peak_held[r], std::min(p - r, m)) << "rank " << r;
        EXPECT_EQ(f.peak_pending_w[r], 0);
      }
    }
  }
}

// With v chunks per rank, each stage (chunk) costing F = 1 and B = 2, a rank does 3vM of work;
// when M is a multiple of P the idle per rank stays 3(P-1), so the bubble is (P-1)/(vM+P-1).
// (In units of a whole rank's model, F = 1/v: the idle is 3(P-1)/v, the usual 1/v reduction.)
TEST(ScheduleFigures, InterleavedBubble) {
  for (int p = 1; p <= 8; ++p) {
    for (int v = 1; v <= 4; ++v) {
      for (int m = p; m <= 4 * p; m += p) {
        SCOPED_TRACE(spec(p, m, v));
        const SimulationResult sim = simulate(interleaved_1f1b(p, m, v), CostModel::uniform());
        EXPECT_NEAR(sim.bubble_fraction, static_cast<double>(p - 1) / (v * m + p - 1), kTol);
        EXPECT_NEAR(sim.makespan, 3.0 * (v * m + p - 1), kTol);
      }
    }
  }
}

TEST(ScheduleFigures, InterleavedMemory) {
  // Megatron's warm-up (M a multiple of P): rank r holds min(2(P-1-r) + (v-1)P + 1, vM) chunk
  // activations at peak.
  for (int p = 2; p <= 6; ++p) {
    for (int v = 2; v <= 3; ++v) {
      for (int m = p; m <= 4 * p; m += p) {
        SCOPED_TRACE(spec(p, m, v));
        const MemoryProfile mem = analyze_memory(interleaved_1f1b(p, m, v));
        for (int r = 0; r < p; ++r) {
          const int warmup = 2 * (p - 1 - r) + (v - 1) * p;
          EXPECT_EQ(mem.peak_activations[r], std::min(warmup + 1, v * m)) << "rank " << r;
        }
      }
    }
  }
}

// ZB-H1 (M >= P): idle per rank P-1, a third of 1F1B's 3(P-1); makespan 3M+P-1. Per rank it
// holds the activations (F..I) of 1F1B, min(P-r, M); counting F..W it holds P on every rank,
// which is 1F1B's peak (rank 0). Holding F..W no more than 1F1B on every rank is impossible at
// this makespan: the last rank must finish its I's P-1 steps early and keep P W's for the tail.
TEST(ScheduleFigures, ZbH1) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = p; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const SimulationResult zb = simulate(zb_h1(p, m), CostModel::uniform());
      const SimulationResult base = simulate(one_f_one_b(p, m), CostModel::uniform());
      EXPECT_NEAR(zb.makespan, 3.0 * m + p - 1, kTol);
      EXPECT_NEAR(zb.bubble_fraction, static_cast<double>(p - 1) / (3 * m + p - 1), kTol);
      const MemoryProfile mem = analyze_memory(zb_h1(p, m));
      const MemoryProfile base_mem = analyze_memory(one_f_one_b(p, m));
      const int base_peak =
          *std::max_element(base_mem.peak_held.begin(), base_mem.peak_held.end());
      EXPECT_EQ(base_peak, p);
      for (int r = 0; r < p; ++r) {
        EXPECT_NEAR(zb.idle[r], p - 1.0, kTol) << "rank " << r;
        EXPECT_NEAR(3.0 * zb.idle[r], base.idle[r], kTol) << "rank " << r;
        EXPECT_EQ(mem.peak_activations[r], base_mem.peak_activations[r]) << "rank " << r;
        EXPECT_EQ(mem.peak_held[r], p) << "rank " << r;
        EXPECT_LE(mem.peak_held[r], base_peak);
      }
    }
  }
}

TEST(ScheduleFigures, ZbH1FewMicrobatches) {
  // M < P: idle per rank 2P-1-M (makespan 2M+2P-1), still below 1F1B's 3(P-1).
  for (int p = 2; p <= 8; ++p) {
    for (int m = 1; m < p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const SimulationResult zb = simulate(zb_h1(p, m), CostModel::uniform());
      EXPECT_NEAR(zb.makespan, 2.0 * m + 2 * p - 1, kTol);
      for (int r = 0; r < p; ++r) EXPECT_NEAR(zb.idle[r], 2.0 * p - 1 - m, kTol);
    }
  }
}

// ZB-H2: for M >= 2P-1 every rank is busy without a gap from its first action to its last
// (zero bubble inside each rank's span, the parallelogram of Qi et al. figure 4); the makespan is
// 3M+P-1, the least any schedule can have (rank P-1 cannot start before P-1), so the idle left,
// P-1 per rank, is the start offset and the tail. At most 2P-1 microbatches held (F..W).
// Below 2P-1 some rank has a gap.
TEST(ScheduleFigures, ZbH2) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const Schedule s = zb_h2(p, m);
      const SimulationResult sim = simulate(s, CostModel::uniform());
      const MemoryProfile mem = analyze_memory(s);
      double gaps = 0.0;
      for (int r = 0; r < p; ++r) {
        gaps += in_span_idle(sim, r);
        EXPECT_LE(mem.peak_held[r], 2 * p - 1);
        EXPECT_LE(mem.peak_activations[r], 2 * (p - 1 - r) + 1);
      }
      if (m >= 2 * p - 1) {
        EXPECT_NEAR(gaps, 0.0, kTol);
        EXPECT_NEAR(sim.makespan, 3.0 * m + p - 1, kTol);
        for (int r = 0; r < p; ++r) {
          EXPECT_NEAR(sim.idle[r], p - 1.0, kTol);
          EXPECT_NEAR(in_span_idle(sim, r), 0.0, kTol);
          EXPECT_EQ(mem.peak_held[r], 2 * p - 1);
        }
      } else {
        EXPECT_GT(gaps, 0.5);
      }
    }
  }
}

// ZB-V (V placement, stages of half a rank's layers, each F = I = W = 1): for M >= 2P-1 zero
// bubble inside every rank's span, makespan 6M+P-1 (idle P-1 per rank: the start offset), and
// peak_held = 2P half-stages = P in units of one rank's share, 1F1B's peak (rank 0).
TEST(ScheduleFigures, ZbV) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const Schedule s = zb_v(p, m);
      const SimulationResult sim = simulate(s, CostModel::uniform());
      const MemoryProfile mem = analyze_memory(s);
      double gaps = 0.0;
      for (int r = 0; r < p; ++r) {
        gaps += in_span_idle(sim, r);
        EXPECT_LE(mem.peak_held[r] / 2.0, static_cast<double>(p));
      }
      if (m >= 2 * p - 1) {
        EXPECT_NEAR(gaps, 0.0, kTol);
        EXPECT_NEAR(sim.makespan, 6.0 * m + p - 1, kTol);
        EXPECT_NEAR(sim.bubble_fraction, static_cast<double>(p - 1) / (6 * m + p - 1), kTol);
        for (int r = 0; r < p; ++r) {
          EXPECT_NEAR(sim.idle[r], p - 1.0, kTol);
          EXPECT_EQ(mem.peak_held[r], 2 * p);
        }
      } else {
        EXPECT_GT(gaps, 0.5);
      }
    }
  }
}

// DualPipeV (M >= 2P): idle P-1 per rank under uniform costs (the same makespan 6M+P-1 as ZB-V,
// here with full B = 2 in the middle phase), holding at most 2P+1 half-stages.
TEST(ScheduleFigures, DualPipeV) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 2 * p; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const Schedule s = dualpipe_v(p, m);
      const SimulationResult sim = simulate(s, CostModel::uniform());
      const MemoryProfile mem = analyze_memory(s);
      EXPECT_NEAR(sim.makespan, 6.0 * m + p - 1, kTol);
      for (int r = 0; r < p; ++r) {
        EXPECT_NEAR(sim.idle[r], p - 1.0, kTol);
        EXPECT_LE(mem.peak_held[r], 2 * p + 1);
      }
      EXPECT_EQ(*std::max_element(mem.peak_held.begin(), mem.peak_held.end()), 2 * p + 1);
    }
  }
}

// DualPipeV with its overlapped slots (DualPipeVOptions::overlap), each slot taking
// max(F, B) + h = 2 + h: makespan 4M + 3P + (2M - P - 2) h for 0 <= h <= 2, against the plain
// schedule's 6M + P - 1; so the overlap gains 2M - 2P - 1 at h = 0 and pays off while
// h < (2M - 2P - 1) / (2M - P - 2), just under one F. Memory is the plain schedule's.
TEST(ScheduleFigures, DualPipeVOverlapped) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 2 * p; m <= 4 * p; ++m) {
      SCOPED_TRACE(spec(p, m));
      const Schedule s = dualpipe_v(p, m, DualPipeVOptions{.overlap = true});
      CostModel costs = CostModel::uniform();
      for (const double h : {0.0, 0.25, 1.0, 2.0}) {
        costs.overlap_overhead = h;
        EXPECT_NEAR(simulate(s, costs).makespan, 4.0 * m + 3 * p + (2.0 * m - p - 2) * h, kTol)
            << "h=" << h;
      }
      costs.overlap_overhead = 0.0;
      EXPECT_LT(simulate(s, costs).makespan, simulate(dualpipe_v(p, m), costs).makespan);
      const MemoryProfile mem = analyze_memory(s);
      const MemoryProfile plain = analyze_memory(dualpipe_v(p, m));
      EXPECT_EQ(mem.peak_held, plain.peak_held);
      EXPECT_EQ(mem.peak_activations, plain.peak_activations);
      EXPECT_EQ(mem.peak_pending_w, plain.peak_pending_w);
    }
  }
}

// V-Half and V-Min (Qi et al., NeurIPS 2024, "Pipeline Parallelism with Controllable Memory"),
// derived in docs/schedules.md. V placement, per-stage costs F = I = W = 1: a rank works 6M, and
// 1F1B for the same model (stages twice as large) idles 6(P-1) per rank in these units.
//   V-Half, P >= 2, M >= P: idle per rank 3(P-1) - (P mod 2), half of 1F1B's for even P;
//   V-Min,  P >= 2, M >= 2: idle per rank 4P-5, or 4P-3 when 3 divides P, about 2/3 of 1F1B's.
// Peak held (F..W), the paper's accounting, for every M: min(2M, 2 floor(P/2) + 2) stages for
// V-Half and min(2M, 2 floor((P+4)/3)) for V-Min, i.e. floor(P/2)+1 and floor((P+4)/3) rank
// shares against 1F1B's P; never above it on any rank.
struct VShape {
  const char* name;
  Schedule (*make)(int, int);
  int (*idle)(int p);       // per rank, P >= 2, M >= min_m(P)
  int (*min_m)(int p);      // from where the idle is exact
  int (*peak_held)(int p);  // stages, for M large enough
};

const VShape kVShapes[] = {
    {"v-half", v_half, [](int p) { return 3 * (p - 1) - p % 2; }, [](int p) { return p; },
     [](int p) { return 2 * (p / 2) + 2; }},
    {"v-min", v_min, [](int p) { return 4 * p - 5 + (p % 3 == 0 ? 2 : 0); },
     [](int) { return 2; }, [](int p) { return 2 * ((p + 4) / 3); }},
};

TEST(ScheduleFigures, VHalfAndVMin) {
  for (const VShape& v : kVShapes) {
    for (int p = 1; p <= 8; ++p) {
      for (int m = 1; m <= 4 * p; ++m) {
        SCOPED_TRACE(std::string(v.name) + " " + spec(p, m));
        const Schedule s = v.make(p, m);
        const SimulationResult sim = simulate(s, CostModel::uniform());
        const MemoryProfile mem = analyze_memory(s);
        const MemoryProfile base_mem = analyze_memory(one_f_one_b(p, m));
        const int base_peak =
            *std::max_element(base_mem.peak_held.begin(), base_mem.peak_held.end());
        const int expected_peak = std::min(2 * m, v.peak_held(p));
        EXPECT_EQ(*std::max_element(mem.peak_held.begin(), mem.peak_held.end()), expected_peak);
        for (int r = 0; r < p; ++r) {
          EXPECT_LE(mem.peak_activations[r], mem.peak_held[r]) << "rank " << r;
          // In rank shares (held / 2), within 1F1B's peak on every rank.
          EXPECT_LE(mem.peak_held[r], 2 * base_peak) << "rank " << r;
        }
        if (p == 1) {
          EXPECT_NEAR(sim.makespan, 6.0 * m, kTol);
          continue;
        }
        if (m < v.min_m(p)) continue;
        const double idle = v.idle(p);
        EXPECT_NEAR(sim.makespan, 6.0 * m + idle, kTol);
        EXPECT_NEAR(sim.bubble_fraction, idle / (6.0 * m + idle), kTol);
        // 1F1B of the same model: (P-1)/(M+P-1), idle 6(P-1) in half-stage units.
        const double base_idle = 6.0 * (p - 1);
        for (int r = 0; r < p; ++r) EXPECT_NEAR(sim.idle[r], idle, kTol) << "rank " << r;
        if (std::string(v.name) == "v-half") {
          EXPECT_LE(2.0 * idle, base_idle);
          if (p % 2 == 0) EXPECT_NEAR(2.0 * idle, base_idle, kTol);
        } else {
          // Two thirds of 1F1B's idle, less one step (plus two when 3 divides P).
          EXPECT_LE(idle, base_idle);
          EXPECT_NEAR(idle, 2.0 / 3.0 * base_idle - 1 + (p % 3 == 0 ? 2 : 0), kTol);
        }
      }
    }
  }
}

// The memory and bubble formulas hold beyond P = 8: P up to 16, M from the threshold to 2P.
TEST(ScheduleFigures, VHalfAndVMinLargerPipelines) {
  for (const VShape& v : kVShapes) {
    for (int p = 9; p <= 16; ++p) {
      for (int m = v.min_m(p); m <= 2 * p; m += 3) {
        SCOPED_TRACE(std::string(v.name) + " " + spec(p, m));
        const Schedule s = v.make(p, m);
        const SimulationResult sim = simulate(s, CostModel::uniform());
        const MemoryProfile mem = analyze_memory(s);
        EXPECT_NEAR(sim.makespan, 6.0 * m + v.idle(p), kTol);
        EXPECT_EQ(*std::max_element(mem.peak_held.begin(), mem.peak_held.end()),
                  std::min(2 * m, v.peak_held(p)));
      }
    }
  }
}

TEST(ScheduleFigures, LoopedBfs) {
  // Every rank runs all M microbatches through each of its v stages: peak activations vM, and
  // the GPipe-like bubble (P-1)/(vM+P-1) when M >= P (the next local stage's input is ready).
  for (int p = 1; p <= 6; ++p) {
    for (int v = 1; v <= 3; ++v) {
      for (int m = p; m <= 3 * p; ++m) {
        SCOPED_TRACE(spec(p, m, v));
        const Schedule s = looped_bfs(p, m, v);
        const SimulationResult sim = simulate(s, CostModel::uniform());
        EXPECT_NEAR(sim.bubble_fraction, static_cast<double>(p - 1) / (v * m + p - 1), kTol);
        const MemoryProfile mem = analyze_memory(s);
        for (int r = 0; r < p; ++r) EXPECT_EQ(mem.peak_activations[r], v * m);
      }
    }
  }
}

}  // namespace
}  // namespace pipetrain
