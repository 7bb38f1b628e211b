// bench_schedule: time generate + lower + validate + simulate for large pipelines.
//
//   ./build/bench/bench_schedule            # P=128, M=1024, v=2 for the chunked schedules
//   ./build/bench/bench_schedule 64 512 2   # P M v
//
// Prints one row per schedule: the milliseconds each phase took (best of `repeats` runs) and the
// number of actions after lowering. The goal recorded in docs/performance.md: every row's total
// under 1 s on the 2-core CI machine.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

struct Timing {
  double generate = 1e300, lower = 1e300, validate = 1e300, simulate = 1e300, total = 1e300;
  std::size_t actions = 0;
  double bubble = 0.0;
};

Timing measure(const std::string& name, int P, int M, int v, int repeats) {
  Timing best;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = Clock::now();
    pipetrain::Schedule schedule = pipetrain::make_schedule(name, P, M, v);
    const double generate = ms_since(t0);
    auto t = Clock::now();
    pipetrain::Schedule lowered = pipetrain::lower(schedule);
    const double lower = ms_since(t);
    t = Clock::now();
    const pipetrain::ValidationReport report = pipetrain::validate(lowered);
    const double validate = ms_since(t);
    if (!report.ok()) {
      std::fprintf(stderr, "%s: invalid schedule (%zu violations)\n", name.c_str(),
                   report.violations.size());
      std::exit(1);
    }
    t = Clock::now();
    const pipetrain::SimulationResult result =
        pipetrain::simulate(lowered, pipetrain::CostModel::uniform());
    const double simulate = ms_since(t);
    const double total = ms_since(t0);
    if (total < best.total) {
      best = {generate,
              lower,
              validate,
              simulate,
              total,
              lowered.num_actions(),
              result.bubble_fraction};
    }
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int P = 128, M = 1024, v = 2, repeats = 3;
  CLI::App app{"Times generate + lower + validate + simulate of every schedule"};
  app.add_option("ranks", P, "pipeline ranks P")->check(CLI::Range(1, 1 << 20));
  app.add_option("microbatches", M, "microbatches M")->check(CLI::Range(1, 1 << 30));
  app.add_option("chunks", v, "stages per rank v, where a schedule takes it")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("repeats", repeats, "repeats; the best is shown")->check(CLI::Range(1, 1000));
  CLI11_PARSE(app, argc, argv);
  std::printf(
      "generate + lower + validate + simulate, P=%d M=%d (v=%d where it applies), best of %d\n\n",
      P, M, v, repeats);
  std::printf("%-22s %10s %10s %10s %10s %10s %10s %8s\n", "schedule", "actions", "generate",
              "lower", "validate", "simulate", "total ms", "bubble");
  int status = 0;
  for (const std::string& name : pipetrain::schedule_names()) {
    const int chunks = pipetrain::takes_stages_per_rank(name) ? v : 1;
    try {
      const Timing t = measure(name, P, M, chunks, repeats);
      std::printf("%-22s %10zu %10.1f %10.1f %10.1f %10.1f %10.1f %8.4f\n",
                  (name + (chunks > 1 ? " v=" + std::to_string(chunks) : "")).c_str(), t.actions,
                  t.generate, t.lower, t.validate, t.simulate, t.total, t.bubble);
    } catch (const std::exception& e) {
      std::printf("%-22s %s\n", name.c_str(), e.what());
      status = 1;
    }
  }
  return status;
}
