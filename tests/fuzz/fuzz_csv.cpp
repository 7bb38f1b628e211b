// libFuzzer target for the CSV loader (issue 10): any text either parses or throws
// pipetrain::Error, and a parsed schedule goes through validate, lower, simulate and the writers
// with bounded time and memory (run with -rss_limit_mb=1024). Any other exception, a crash, a
// sanitizer report or a memory blow-up is a finding. Build and run with tests/fuzz/run.sh.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "pipetrain/error.h"
#include "pipetrain/schedule/io.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const pipetrain::Schedule schedule = pipetrain::from_csv(text, "fuzz");
    (void)pipetrain::validate(schedule).format(schedule);
    // Round trip: what was read is written back the same way it reads.
    (void)pipetrain::to_csv(schedule);
    // validate() reports every overlapped slot (DualPipeV's OVERLAP_F_B), so an overlapped
    // schedule would stop here; the runtime runs expand_overlap() of it, and so does the rest of
    // this target, while simulate() and the writers also take the slots themselves.
    const pipetrain::Schedule runnable = pipetrain::expand_overlap(schedule);
    const pipetrain::ValidationReport report = pipetrain::validate(runnable);
    (void)report.format(runnable);
    if (!report.ok()) return 0;
    if (!runnable.has_comm()) {
      const pipetrain::Schedule lowered = pipetrain::lower(runnable);
      (void)pipetrain::validate(lowered);
    }
    const auto simulate_and_write = [](const pipetrain::Schedule& s) {
      const pipetrain::SimulationResult result =
          pipetrain::simulate(s, pipetrain::CostModel::uniform());
      (void)pipetrain::to_svg(s, result);
      (void)pipetrain::to_chrome_trace(s, result);
      (void)pipetrain::merge_backward(s);
    };
    simulate_and_write(schedule);
    if (schedule.has_overlap()) simulate_and_write(runnable);
    (void)pipetrain::analyze_memory(runnable);
  } catch (const pipetrain::Error&) {
    // A clean rejection.
  }
  return 0;
}
