// bench_search: time of search_schedules() (every named schedule and knob, built, lowered,
// validated, simulated and measured) for a few (P, M), best of a number of repeats. The goal of
// the schedule search: P = 8, M = 32 in under 1 s. With --overlap-overhead X, the search also
// tries dualpipe-v-overlap with slots of max(F, B) + X (SearchOptions::overlapped).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <optional>
#include <utility>
#include <vector>

#include "pipetrain/schedule/search.h"

int main(int argc, char** argv) {
  int repeats = 5;
  bool no_squeeze = false;
  CLI::App app{"Times search_schedules() at a few sizes under uniform and 1:2:1 costs"};
  app.add_option("repeats", repeats, "repeats; the best is shown")->check(CLI::Range(1, 1000));
  std::optional<double> overlap_overhead;
  app.add_option("--overlap-overhead", overlap_overhead,
                 "also try dualpipe-v-overlap, each overlapped slot max(F, B) + this")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--no-squeeze", no_squeeze,
               "without the squeezed candidates (SearchOptions::squeeze = false)");
  CLI11_PARSE(app, argc, argv);
  pipetrain::SearchOptions options;
  options.overlapped = overlap_overhead.has_value();
  options.squeeze = !no_squeeze;
  pipetrain::CostModel uneven = pipetrain::CostModel::uniform();
  uneven.backward = 3.0;
  uneven.backward_input = 2.0;
  uneven.backward_weight = 1.0;
  const std::vector<std::pair<int, int>> sizes = {{4, 16}, {8, 32}, {16, 64}, {32, 128}};
  std::printf("%4s %6s %12s %10s %12s %10s  %s\n", "P", "M", "costs", "candidates", "best ms",
              "winner", "");
  try {
    for (const auto& [p, m] : sizes) {
      for (auto [label, costs] :
           {std::pair{"uniform", pipetrain::CostModel::uniform()}, std::pair{"1:2:1", uneven}}) {
        costs.overlap_overhead = overlap_overhead.value_or(0.0);
        double best = 1e300;
        std::vector<pipetrain::SearchResult> results;
        for (int i = 0; i < repeats; ++i) {
          const auto start = std::chrono::steady_clock::now();
          results = pipetrain::search_schedules(p, m, costs, options);
          const std::chrono::duration<double, std::milli> took =
              std::chrono::steady_clock::now() - start;
          best = std::min(best, took.count());
        }
        const pipetrain::SearchResult& winner = results.front();
        std::printf("%4d %6d %12s %10zu %12.1f %10s %s\n", p, m, label, results.size(), best,
                    winner.name.c_str(), winner.knobs.c_str());
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_search: %s\n", e.what());
    return 1;
  }
  return 0;
}
