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
    pipetrain::Schedule schedule = pipetrain::from_csv(text, "fuzz");
    const pipetrain::ValidationReport report = pipetrain::validate(schedule);
    (void)report.format(schedule);
    // Round trip: what was read is written back the same way it reads.
    (void)pipetrain::to_csv(schedule);
    if (!report.ok()) return 0;
    if (!schedule.has_comm()) {
      const pipetrain::Schedule lowered = pipetrain::lower(schedule);
      (void)pipetrain::validate(lowered);
    }
    const pipetrain::SimulationResult result =
        pipetrain::simulate(schedule, pipetrain::CostModel::uniform());
    (void)pipetrain::analyze_memory(schedule);
    (void)pipetrain::to_svg(schedule, result);
    (void)pipetrain::to_chrome_trace(schedule, result);
    (void)pipetrain::merge_backward(schedule);
  } catch (const pipetrain::Error&) {
    // A clean rejection.
  }
  return 0;
}
