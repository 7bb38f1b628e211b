// pipetrain/schedule/validate.h: checks that a schedule can run and computes what it must.
//
// Rules checked, for compute-only and lowered schedules alike:
//   placement     every action's stage runs on the rank that holds the action
//   completeness  each (stage, microbatch) has exactly one F and either one B, or one I and one W
//   dependencies  F(s, m) after F(s-1, m); backward of (s, m) after the backward (B or I) of
//                 (s+1, m); F before B or I of the same (stage, microbatch); I before W
// For lowered schedules also:
//   matching      every SEND has one RECV on the peer rank; between every ordered pair of ranks
//                 the sends and the receives come in the same order
//   deadlock      the schedule runs to the end under blocking semantics: a rank posts each
//                 maximal run of consecutive communication actions as one group (as an NCCL
//                 group or torch's batch_isend_irecv do) and blocks until every operation of the
//                 group is matched by the peer's posted operation; compute actions block on nothing.
// Dependencies between ranks in a compute-only schedule are checked by running it with
// unbounded buffering (a send never blocks), which finds cycles across ranks too.
#pragma once

#include <string>
#include <vector>

#include "pipetrain/schedule/schedule.h"

namespace pipetrain {

struct Violation {
  enum class Rule { kPlacement, kCompleteness, kDependency, kMatching, kDeadlock, kRange };
  Rule rule;
  int rank = -1;  ///< rank of the faulty cell, -1 when the fault belongs to no cell
  int step = -1;  ///< index into rank_slots(rank), -1 when the fault belongs to no cell
  std::string message;
};

std::string_view to_string(Violation::Rule rule);

struct ValidationReport {
  std::vector<Violation> violations;

  bool ok() const { return violations.empty(); }
  /// The messages, one a line, then the rank x step grid of `schedule` with every faulty cell
  /// marked ("[2F0]!") and a legend. Empty when ok().
  std::string format(const Schedule& schedule) const;
};

/// Checks every rule above. Never throws for a broken schedule: it reports.
ValidationReport validate(const Schedule& schedule);

/// validate(), and throws ScheduleError carrying report.format() when it is not ok.
void validate_or_throw(const Schedule& schedule);

}  // namespace pipetrain
