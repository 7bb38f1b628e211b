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
//                 group is matched by the peer's posted operation; compute actions block on
//                 nothing.
// Dependencies between ranks are checked by running the compute actions with unbounded
// buffering (a send never blocks), which finds cycles across ranks too; in a lowered schedule
// each F/B/I must also come after the RECV of its input on its rank, and each SEND after the
// action that produces what it sends. SEND_F of stage s pairs with RECV_F of stage s+1 and
// SEND_B of stage s with RECV_B of stage s-1, same microbatch; a communication action between
// two stages of one rank, or past the first or last stage, is a matching violation. A schedule
// with any communication action counts as lowered: every transfer between ranks then needs
// both its SEND and its RECV (one without the other: matching; both missing: completeness).
//
// And, for schedules with overlapped slots (schedule.h):
//   overlap       every overlapped slot is reported: pipetrain's runtime runs one action at a
//                 time, so a schedule must go through expand_overlap() (passes.h) before it
//                 runs; the other rules are checked on the slots in their stored order, as
//                 expand_overlap() would run them up to the order within each pair.
//
// Checks run in order and stop early: range, placement and completeness first (a cell out of
// range is left out of the later checks); order within ranks and matching only when those
// pass; the cross-rank run only when nothing failed so far; the deadlock run last. So a report
// names the first broken layer, not its consequences. Violations are listed by rule (range,
// placement, completeness, matching, dependency, deadlock, overlap), then in the order found.
// Time and memory are linear in the number of slots (plus stages x microbatches).
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <vector>

#include "pipetrain/schedule/schedule.h"

namespace pipetrain {

struct Violation {
  enum class Rule { kPlacement, kCompleteness, kDependency, kMatching, kDeadlock, kRange, kOverlap };
  Rule rule;
  int rank = -1;  ///< rank of the faulty cell, -1 when the fault belongs to no cell
  int step = -1;  ///< index into rank_slots(rank), -1 when the fault belongs to no cell
  std::string message;
};

std::string_view to_string(Violation::Rule rule);

struct ValidationReport {
  /// At most kMaxPerRule violations of each rule are kept: a broken file of any size gives a
  /// report of bounded size.
  static constexpr std::size_t kMaxPerRule = 100;
  /// format() lists at most this many violations, then "... and K more violation(s)".
  static constexpr std::size_t kMaxListed = 50;
  /// format() draws the whole grid when it has at most this many cells, otherwise a window of
  /// kWindowRanks x kWindowSteps cells around the first faulty cell.
  static constexpr std::size_t kMaxGridCells = 4096;
  static constexpr int kWindowRanks = 16;
  static constexpr int kWindowSteps = 24;

  std::vector<Violation> violations;
  std::size_t num_omitted = 0;  ///< violations found beyond kMaxPerRule of their rule
  std::array<std::size_t, 7> num_added{};  ///< per Violation::Rule, what add() kept (bookkeeping)

  /// Appends `violation`, or counts it in num_omitted when its rule already has kMaxPerRule.
  void add(Violation violation);
  /// violations.size() + num_omitted.
  std::size_t num_found() const { return violations.size() + num_omitted; }

  bool ok() const { return violations.empty(); }
  /// One line per violation ("<rule>: <message>"), then the rank x step grid of `schedule`
  /// (as Schedule::to_grid(), wider cells) with every faulty cell marked ("[2F0]!", "[.]!" for
  /// an empty slot) and a legend line. Works for any list of violations: those with rank or
  /// step -1, or outside the grid, mark nothing. Empty when ok(). Example:
  ///   dependency: rank 0 step 0: 0B0 runs before its forward 0F0 (rank 0 step 1)
  ///   x: 1 ranks, 1 stages (loop), 1 microbatches
  ///   step    0      1
  ///   rank 0 [0B0]!  0F0
  ///   legend: [A]! marks a faulty cell named above; . is an empty slot
  std::string format(const Schedule& schedule) const;
};

/// Checks every rule above. Never throws for a broken schedule: it reports. A schedule with more
/// than ScheduleLimits::kMaxWork (stage, microbatch) pairs (num_microbatches is not bounded by
/// the Schedule constructor) is reported as one range violation, unchecked, so that time and
/// memory stay bounded.
ValidationReport validate(const Schedule& schedule);

/// validate(), and throws ScheduleError when it is not ok, with the message
/// "[validate_or_throw] schedule '<name>' has <n> violation(s):\n" followed by report.format(),
/// n counting the omitted ones too.
void validate_or_throw(const Schedule& schedule);

}  // namespace pipetrain
