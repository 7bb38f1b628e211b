// bench_search_optimal: how far the cost-aware zero-bubble heuristics are from the optimum of
// optimal_schedule() (branch and bound, P <= 3, M <= 4), each under the unit-grid schedule's
// peak held memory. Prints the markdown table of docs/schedules.md, "How far from optimal".
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <string>

#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/optimal.h"
#include "pipetrain/schedule/simulate.h"

int main() {
  using namespace pipetrain;
  struct Ratio {
    const char* label;
    double f, i, w, latency;
  };
  const Ratio ratios[] = {{"1:1:1", 1, 1, 1, 0},
                          {"1:2:1", 1, 2, 1, 0},
                          {"1:1.35:0.5", 1, 1.35, 0.5, 0},
                          {"1:2:1, transfer 0.5", 1, 2, 1, 0.5}};
  std::printf("| schedule | P | M | F:I:W | held <= | heuristic | optimal | gap | nodes | ms |\n"
              "|---|---|---|---|---|---|---|---|---|---|\n");
  try {
    for (const char* name : {"zb-h1", "zb-h2", "zb-v", "v-half", "v-min"}) {
      const bool v_shape = std::string(name) != "zb-h1" && std::string(name) != "zb-h2";
      for (int p : {2, 3})
        for (int m : {2, 3, 4}) {
          if (v_shape && p == 3 && m > 2) continue;
          for (const Ratio& r : ratios) {
            ZeroBubbleCosts zc;
            zc.costs.forward = r.f;
            zc.costs.backward_input = r.i;
            zc.costs.backward_weight = r.w;
            zc.costs.backward = r.i + r.w;
            zc.costs.latency = r.latency;
            const double heuristic =
                simulate(make_cost_aware_schedule(name, p, m, zc), zc.costs).makespan;
            const MemoryProfile memory = analyze_memory(make_schedule(name, p, m));
            OptimalOptions options;
            options.placement = v_shape ? Placement::kV : Placement::kLoop;
            options.max_held = *std::max_element(memory.peak_held.begin(), memory.peak_held.end());
            options.upper_bound = heuristic * (1 + 1e-9);
            const auto start = std::chrono::steady_clock::now();
            const OptimalResult result = optimal_schedule(p, m, zc.costs, options);
            const std::chrono::duration<double, std::milli> took =
                std::chrono::steady_clock::now() - start;
            const double best = result.found ? result.makespan : heuristic;
            std::printf("| %s | %d | %d | %s | %d | %g | %g%s | %.1f%% | %lld | %.0f |\n", name, p,
                        m, r.label, options.max_held, heuristic, best,
                        result.proven ? "" : " (bound)", 100 * (heuristic / best - 1),
                        static_cast<long long>(result.nodes), took.count());
          }
        }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_search_optimal: %s\n", e.what());
    return 1;
  }
  return 0;
}
