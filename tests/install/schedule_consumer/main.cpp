// A schedule-only user: build, lower, validate and simulate a schedule from the installed core.
#include <iostream>

#include <pipetrain/schedule/generators.h>
#include <pipetrain/schedule/passes.h>
#include <pipetrain/schedule/simulate.h>
#include <pipetrain/schedule/validate.h>

int main() {
  const pipetrain::Schedule lowered = pipetrain::lower(pipetrain::zb_v(4, 8));
  pipetrain::validate_or_throw(lowered);
  const auto result = pipetrain::simulate(lowered, pipetrain::CostModel::uniform());
  std::cout << "schedule consumer ok: " << lowered.name() << " bubble " << result.bubble_fraction
            << "\n";
  return 0;
}
