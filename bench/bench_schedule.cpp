// bench_schedule: time generate + lower + validate + simulate for large pipelines.
//
//   ./build/bench/bench_schedule            # P=128, M=1024, v=2 for the chunked schedules
//   ./build/bench/bench_schedule 64 512 2   # P M v
//   ./build/bench/bench_schedule --cost-aware   # the cost-aware zero-bubble generators instead
//
// Prints one row per schedule: the milliseconds each phase took (best of `repeats` runs) and the
// number of actions after lowering. With --cost-aware, one row per cost-aware generator
// (make_cost_aware_schedule) and cost case: F:I:W 1:2:1 with transfer 0.3, the H100 per-layer
// 1.6:2.72:1.26, and 1:2:1 under a cap of P stage-microbatches per rank (1F1B's peak); generate
// is the cost-aware generation, simulate runs under the case's costs. The goal recorded in
// docs/performance.md: every row's total under 1 s on the 2-core CI machine.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

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

template <class Generate>
Timing measure(const std::string& name, Generate&& generate_schedule,
               const pipetrain::CostModel& costs, int repeats) {
  Timing best;
  for (int rep = 0; rep < repeats; ++rep) {
    const auto t0 = Clock::now();
    pipetrain::Schedule schedule = generate_schedule();
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
    const pipetrain::SimulationResult result = pipetrain::simulate(lowered, costs);
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

void print_row(const std::string& label, const Timing& t) {
  std::printf("%-22s %10zu %10.1f %10.1f %10.1f %10.1f %10.1f %8.4f\n", label.c_str(), t.actions,
              t.generate, t.lower, t.validate, t.simulate, t.total, t.bubble);
}

pipetrain::ZeroBubbleCosts zero_bubble_costs(double f, double i, double w, double transfer) {
  pipetrain::ZeroBubbleCosts zc;
  zc.costs.forward = f;
  zc.costs.backward_input = i;
  zc.costs.backward_weight = w;
  zc.costs.backward = i + w;
  zc.costs.latency = transfer;
  return zc;
}

int run_cost_aware(int P, int M, int repeats) {
  struct Case {
    std::string label;
    pipetrain::ZeroBubbleCosts costs;
  };
  std::vector<Case> cases = {{"1:2:1 t=0.3", zero_bubble_costs(1, 2, 1, 0.3)},
                             {"1.6:2.72:1.26", zero_bubble_costs(1.6, 2.72, 1.26, 0)},
                             {"1:2:1 cap=P", zero_bubble_costs(1, 2, 1, 0)}};
  cases.back().costs.memory_cap_bytes = P;  // activation_bytes = pending_w_bytes = 1
  std::printf("cost-aware generate + lower + validate + simulate, P=%d M=%d, best of %d\n\n", P, M,
              repeats);
  std::printf("%-22s %10s %10s %10s %10s %10s %10s %8s\n", "schedule, F:I:W", "actions", "generate",
              "lower", "validate", "simulate", "total ms", "bubble");
  int status = 0;
  for (const Case& c : cases) {
    for (const std::string& name : pipetrain::schedule_names()) {
      if (!pipetrain::is_cost_aware(name)) continue;
      try {
        const Timing t = measure(
            name, [&] { return pipetrain::make_cost_aware_schedule(name, P, M, c.costs); },
            c.costs.costs, repeats);
        print_row(name + " " + c.label, t);
      } catch (const std::exception& e) {
        std::printf("%-22s %s\n", (name + " " + c.label).c_str(), e.what());
        status = 1;
      }
    }
  }
  return status;
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
  bool cost_aware = false;
  app.add_flag("--cost-aware", cost_aware,
               "time the cost-aware zero-bubble generators under non-uniform costs instead");
  CLI11_PARSE(app, argc, argv);
  if (cost_aware) return run_cost_aware(P, M, repeats);
  std::printf(
      "generate + lower + validate + simulate, P=%d M=%d (v=%d where it applies), best of %d\n\n",
      P, M, v, repeats);
  std::printf("%-22s %10s %10s %10s %10s %10s %10s %8s\n", "schedule", "actions", "generate",
              "lower", "validate", "simulate", "total ms", "bubble");
  int status = 0;
  for (const std::string& name : pipetrain::schedule_names()) {
    const int chunks = pipetrain::takes_stages_per_rank(name) ? v : 1;
    try {
      const Timing t = measure(
          name, [&] { return pipetrain::make_schedule(name, P, M, chunks); },
          pipetrain::CostModel::uniform(), repeats);
      print_row(name + (chunks > 1 ? " v=" + std::to_string(chunks) : ""), t);
    } catch (const std::exception& e) {
      std::printf("%-22s %s\n", name.c_str(), e.what());
      status = 1;
    }
  }
  return status;
}
