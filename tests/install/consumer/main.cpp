// A user's program: builds a schedule through the installed package and prints a summary.
#include <iostream>

#include <pipetrain/build_info.h>
#include <pipetrain/schedule/schedule.h>

int main() {
  pipetrain::Schedule schedule("1f1b", 4, 1, 8);
  schedule.append(0, pipetrain::Action{0, pipetrain::ActionKind::kForward, 0});
  std::cout << pipetrain::build_summary() << "\n";
  std::cout << "consumer ok: " << schedule.name() << " " << schedule.num_ranks() << " ranks, "
            << schedule.num_actions() << " action\n";
  return schedule.num_actions() == 1 ? 0 : 1;
}
