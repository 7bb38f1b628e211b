#include "pipetrain/schedule/validate.h"

#include <gtest/gtest.h>

#include <initializer_list>
#include <sstream>
#include <string>

#include "pipetrain/error.h"
#include "schedule_rows.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain {
namespace {

using Rule = Violation::Rule;

Schedule build(const std::string& name, int stages_per_rank, int microbatches,
               const std::vector<std::string>& rows, Placement placement = Placement::kLoop) {
  return testing::schedule_from_rows(name, stages_per_rank, microbatches, rows, placement);
}

// 1F1B for 2 ranks and 2 microbatches, by hand.
Schedule one_f_one_b_2x2() {
  return build("1f1b", 1, 2,
               {"0F0 0F1 .   .   0B0 .   0B1",  //
                ".   1F0 1B0 1F1 .   1B1"});
}

// One violation expected: returns its message (and checks rule and cell).
std::string only(const Schedule& s, Rule rule, int rank, int step) {
  const ValidationReport report = validate(s);
  EXPECT_EQ(report.violations.size(), 1u) << report.format(s);
  if (report.violations.empty()) return {};
  const Violation& v = report.violations[0];
  EXPECT_EQ(v.rule, rule) << v.message;
  EXPECT_EQ(v.rank, rank) << v.message;
  EXPECT_EQ(v.step, step) << v.message;
  return v.message;
}

TEST(Validate, RuleNames) {
  EXPECT_EQ(to_string(Rule::kPlacement), "placement");
  EXPECT_EQ(to_string(Rule::kCompleteness), "completeness");
  EXPECT_EQ(to_string(Rule::kDependency), "dependency");
  EXPECT_EQ(to_string(Rule::kMatching), "matching");
  EXPECT_EQ(to_string(Rule::kDeadlock), "deadlock");
  EXPECT_EQ(to_string(Rule::kRange), "range");
}

TEST(Validate, AcceptsHandBuilt1F1B) {
  const Schedule s = one_f_one_b_2x2();
  const ValidationReport report = validate(s);
  EXPECT_TRUE(report.ok()) << report.format(s);
  EXPECT_EQ(report.format(s), "");
  EXPECT_NO_THROW(validate_or_throw(s));
}

TEST(Validate, AcceptsSplitBackwardAndVPlacement) {
  // ZB-V-like order for P=1 would be trivial; P=2, V placement: rank 0 holds stages 0 and 3,
  // rank 1 holds stages 1 and 2 (1F -> 2F stays on rank 1).
  const Schedule s = build(
      "v", 2, 1, {"0F0 .   .   3F0 3I0 .   .   0I0 3W0 0W0", ".   1F0 2F0 .   .   2I0 1I0 2W0 1W0"},
      Placement::kV);
  const ValidationReport report = validate(s);
  EXPECT_TRUE(report.ok()) << report.format(s);
}

TEST(Validate, RangeWithFullReport) {
  const Schedule s = build("1f1b", 1, 2,
                           {"0F0 0F1 .   .   0B0 .   0B1",  //
                            ".   1F0 1B0 1F1 .   1B1 2F0"});
  EXPECT_EQ(only(s, Rule::kRange, 1, 6), "rank 1 step 6: 2F0: stage 2 is out of range [0, 2)");
  EXPECT_EQ(validate(s).format(s),
            "range: rank 1 step 6: 2F0: stage 2 is out of range [0, 2)\n"
            "1f1b: 2 ranks, 2 stages (loop), 2 microbatches\n"
            "step    0      1      2      3      4      5      6\n"
            "rank 0  0F0    0F1    .      .      0B0    .      0B1\n"
            "rank 1  .      1F0    1B0    1F1    .      1B1   [2F0]!\n"
            "legend: [A]! marks a faulty cell named above; . is an empty slot\n");
  const Schedule m = build("x", 1, 1, {"0F0 0B0 0F1"});
  EXPECT_EQ(only(m, Rule::kRange, 0, 2), "rank 0 step 2: 0F1: microbatch 1 is out of range [0, 1)");
}

TEST(Validate, Placement) {
  const Schedule s = build("1f1b", 1, 2,
                           {"0F0 0F1 .   .   0B0 .   0B1 1F0",  //
                            ".   .   1B0 1F1 .   1B1"});
  EXPECT_EQ(only(s, Rule::kPlacement, 0, 7),
            "rank 0 step 7: 1F0: stage 1 runs on rank 1, not rank 0");
}

TEST(Validate, CompletenessMissingAndDuplicate) {
  // 1F1 missing and 0F0 twice.
  const Schedule s = build("1f1b", 1, 2,
                           {"0F0 0F1 0F0 .   0B0 .   0B1",  //
                            ".   1F0 1B0 .   .   1B1"});
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 2u) << report.format(s);
  EXPECT_EQ(report.violations[0].rule, Rule::kCompleteness);
  EXPECT_EQ(report.violations[0].message,
            "rank 0 step 2: 0F0 appears twice (first at rank 0 step 0)");
  EXPECT_EQ(report.violations[1].rule, Rule::kCompleteness);
  EXPECT_EQ(report.violations[1].rank, 1);
  EXPECT_EQ(report.violations[1].step, -1);
  EXPECT_EQ(report.violations[1].message, "1F1 is missing from rank 1");
}

TEST(Validate, CompletenessOfTheBackward) {
  EXPECT_EQ(only(build("x", 1, 1, {"0F0"}), Rule::kCompleteness, 0, -1),
            "0B0 is missing from rank 0 (or 0I0 and 0W0)");
  EXPECT_EQ(only(build("x", 1, 1, {"0F0 0I0"}), Rule::kCompleteness, 0, -1),
            "0W0 is missing from rank 0 (0I0 is at rank 0 step 1)");
  EXPECT_EQ(only(build("x", 1, 1, {"0F0 0B0 0W0"}), Rule::kCompleteness, 0, 2),
            "rank 0 step 2: 0W0 has no 0I0");
  EXPECT_EQ(only(build("x", 1, 1, {"0F0 0B0 0I0 0W0"}), Rule::kCompleteness, 0, 2),
            "rank 0 step 2: 0I0 and 0B0 (rank 0 step 1) both compute the input gradient of "
            "stage 0 microbatch 0");
}

TEST(Validate, DependencyWithinARank) {
  EXPECT_EQ(only(build("x", 1, 1, {"0B0 0F0"}), Rule::kDependency, 0, 0),
            "rank 0 step 0: 0B0 runs before its forward 0F0 (rank 0 step 1)");
  EXPECT_EQ(only(build("x", 1, 1, {"0F0 0W0 0I0"}), Rule::kDependency, 0, 1),
            "rank 0 step 1: 0W0 runs before 0I0 (rank 0 step 2), which must come first");
  // Two stages on one rank (P=1, v=2).
  EXPECT_EQ(only(build("x", 2, 1, {"1F0 0F0 1B0 0B0"}), Rule::kDependency, 0, 0),
            "rank 0 step 0: 1F0 runs before its input 0F0 (rank 0 step 1)");
  EXPECT_EQ(only(build("x", 2, 1, {"0F0 1F0 0B0 1B0"}), Rule::kDependency, 0, 2),
            "rank 0 step 2: 0B0 runs before its input gradient 1B0 (rank 0 step 3)");
}

TEST(Validate, DependencyCycleAcrossRanks) {
  // Rank 1 wants microbatch 1 first, rank 0 waits for the gradient of microbatch 0 before
  // sending microbatch 1: each waits for the other.
  const Schedule s = build("x", 1, 2,
                           {"0F0 0B0 0F1 0B1",  //
                            "1F1 1F0 1B0 1B1"});
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 2u) << report.format(s);
  EXPECT_EQ(report.violations[0].rule, Rule::kDependency);
  EXPECT_EQ(report.violations[0].message,
            "rank 0 step 1: 0B0 waits forever for its input gradient 1B0 (rank 1 step 2)");
  EXPECT_EQ(report.violations[1].rule, Rule::kDependency);
  EXPECT_EQ(report.violations[1].message,
            "rank 1 step 0: 1F1 waits forever for its input 0F1 (rank 0 step 2)");
  EXPECT_EQ(
      report.format(s),
      "dependency: rank 0 step 1: 0B0 waits forever for its input gradient 1B0 (rank 1 step 2)\n"
      "dependency: rank 1 step 0: 1F1 waits forever for its input 0F1 (rank 0 step 2)\n"
      "x: 2 ranks, 2 stages (loop), 2 microbatches\n"
      "step    0      1      2      3\n"
      "rank 0  0F0   [0B0]!  0F1    0B1\n"
      "rank 1 [1F1]!  1F0    1B0    1B1\n"
      "legend: [A]! marks a faulty cell named above; . is an empty slot\n");
}

TEST(Validate, OrderAcrossRanksWithUnboundedBuffering) {
  // Rank 0 runs both forwards before rank 1 starts: fine when sends never block.
  const Schedule s = build("gpipe", 1, 2,
                           {"0F0 0F1 0B0 0B1",  //
                            "1F0 1F1 1B0 1B1"});
  EXPECT_TRUE(validate(s).ok()) << validate(s).format(s);
}

// Lowered 1F1B, P=2, M=2, by hand.
Schedule lowered_2x2() {
  return build("1f1b", 1, 2,
               {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                "1RECV_F0 1F0 1B0 1SEND_B0 1RECV_F1 1F1 1B1 1SEND_B1"});
}

TEST(Validate, AcceptsLowered1F1B) {
  const Schedule s = lowered_2x2();
  EXPECT_TRUE(validate(s).ok()) << validate(s).format(s);
}

TEST(Validate, LoweredReceiveAfterItsConsumer) {
  const Schedule s = build("1f1b", 1, 2,
                           {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                            "1F0 1RECV_F0 1B0 1SEND_B0 1RECV_F1 1F1 1B1 1SEND_B1"});
  EXPECT_EQ(only(s, Rule::kDependency, 1, 0),
            "rank 1 step 0: 1F0 runs before 1RECV_F0 (rank 1 step 1), which receives its input");
  const Schedule t = build("1f1b", 1, 2,
                           {"0SEND_F0 0F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                            "1RECV_F0 1F0 1B0 1SEND_B0 1RECV_F1 1F1 1B1 1SEND_B1"});
  EXPECT_EQ(
      only(t, Rule::kDependency, 0, 0),
      "rank 0 step 0: 0SEND_F0 runs before 0F0 (rank 0 step 1), which produces what it sends");
}

TEST(Validate, LoweredMissingOrUnpairedCommunication) {
  // 1RECV_F1 missing: the send has no receive.
  const Schedule a = build("1f1b", 1, 2,
                           {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                            "1RECV_F0 1F0 1B0 1SEND_B0 1F1 1B1 1SEND_B1"});
  EXPECT_EQ(only(a, Rule::kMatching, 0, 3), "rank 0 step 3: 0SEND_F1 has no 1RECV_F1 on rank 1");
  // Both ends of 0F1 -> 1F1 missing.
  const Schedule b = build("1f1b", 1, 2,
                           {"0F0 0SEND_F0 0F1 0RECV_B0 0B0 0RECV_B1 0B1",  //
                            "1RECV_F0 1F0 1B0 1SEND_B0 1F1 1B1 1SEND_B1"});
  EXPECT_EQ(only(b, Rule::kCompleteness, 1, 4),
            "rank 1 step 4: 0SEND_F1 and 1RECV_F1 are missing: the input of stage 1 microbatch 1 "
            "comes from rank 0");
  // A send past the last stage.
  const Schedule c = build("1f1b", 1, 2,
                           {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                            "1RECV_F0 1F0 1SEND_F0 1B0 1SEND_B0 1RECV_F1 1F1 1B1 1SEND_B1"});
  EXPECT_EQ(only(c, Rule::kMatching, 1, 2),
            "rank 1 step 2: 1SEND_F0 has no receiver: stage 1 is the last stage");
  // A receive between two stages of the same rank (P=1, v=2).
  const Schedule d = build("x", 2, 1, {"0F0 1RECV_F0 1F0 1B0 0B0"});
  EXPECT_EQ(only(d, Rule::kMatching, 0, 1),
            "rank 0 step 1: 1RECV_F0 has no sender: stage 0 runs on rank 0 too");
}

TEST(Validate, MismatchedSendOrderIsMatching) {
  // Rank 0 sends microbatch 0 then 1; rank 1 receives 1 first (and computes it first, which
  // is fine on its own).
  const Schedule s = build("x", 1, 2,
                           {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B1 0B1 0RECV_B0 0B0",
                            "1RECV_F1 1F1 1B1 1SEND_B1 1RECV_F0 1F0 1B0 1SEND_B0"});
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 1u) << report.format(s);
  EXPECT_EQ(report.violations[0].rule, Rule::kMatching);
  EXPECT_EQ(report.violations[0].message,
            "rank 1 step 0: 1RECV_F1 is receive #1 on rank 1 from rank 0, but send #1 from "
            "rank 0 is 0SEND_F0 (rank 0 step 1)");
}

TEST(Validate, BothRanksSendingFirstDeadlock) {
  // Each rank posts a lone send whose receive the peer posts only after its own send.
  const Schedule s = build(
      "x", 1, 3,
      {"0F0 0SEND_F0 0F1 0SEND_F1 0F2 0SEND_F2 0RECV_B0 0B0 0RECV_B1 0B1 0RECV_B2 0B2",
       "1RECV_F0 1F0 1I0 1SEND_B0 1W0 1RECV_F1 1F1 1I1 1SEND_B1 1W1 1RECV_F2 1F2 1I2 1SEND_B2 "
       "1W2"});
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 2u) << report.format(s);
  EXPECT_EQ(report.violations[0].rule, Rule::kDeadlock);
  EXPECT_EQ(report.violations[0].message,
            "rank 0 step 3: 0SEND_F1 waits for 1RECV_F1 (rank 1 step 5), which rank 1 never "
            "posts: it is blocked at step 3");
  EXPECT_EQ(report.violations[1].rule, Rule::kDeadlock);
  EXPECT_EQ(report.violations[1].message,
            "rank 1 step 3: 1SEND_B0 waits for 0RECV_B0 (rank 0 step 6), which rank 0 never "
            "posts: it is blocked at step 3");
  // The same order with each send grouped with the next receive runs.
  const Schedule grouped = build(
      "x", 1, 3,
      {"0F0 0SEND_F0 0F1 0SEND_F1 0F2 0SEND_F2 0RECV_B0 0B0 0RECV_B1 0B1 0RECV_B2 0B2",
       "1RECV_F0 1F0 1I0 1SEND_B0 1RECV_F1 1W0 1F1 1I1 1SEND_B1 1RECV_F2 1W1 1F2 1I2 1SEND_B2 "
       "1W2"});
  EXPECT_TRUE(validate(grouped).ok()) << validate(grouped).format(grouped);
}

TEST(Validate, ThreeRanksLowered) {
  const Schedule t = build(
      "x", 1, 2,
      {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
       "1RECV_F0 1F0 1SEND_F0 1RECV_B0 1B0 1SEND_B0 1RECV_F1 1F1 1SEND_F1 1RECV_B1 1B1 1SEND_B1",
       "2RECV_F0 2F0 2I0 2SEND_B0 2W0 2RECV_F1 2F1 2I1 2SEND_B1 2W1"});
  EXPECT_TRUE(validate(t).ok()) << validate(t).format(t);
  // A duplicate is reported alone: the runs that would stumble on it are not made.
  const Schedule s = build(
      "x", 1, 2,
      {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
       "1RECV_F0 1F0 1SEND_F0 1RECV_B0 1B0 1SEND_B0 1RECV_F1 1F1 1SEND_F1 1RECV_B1 1B1 1SEND_B1",
       "2RECV_F0 2F0 2B0 2SEND_B0 2F0 2RECV_F1 2F1 2B1 2SEND_B1"});
  EXPECT_EQ(only(s, Rule::kCompleteness, 2, 4),
            "rank 2 step 4: 2F0 appears twice (first at rank 2 step 1)");
}

TEST(Validate, ThrowsWithTheReport) {
  const Schedule s = build("x", 1, 1, {"0B0 0F0"});
  try {
    validate_or_throw(s);
    ADD_FAILURE() << "accepted";
  } catch (const ScheduleError& e) {
    EXPECT_EQ(std::string(e.what()),
              "[validate_or_throw] schedule 'x' has 1 violation:\n"
              "dependency: rank 0 step 0: 0B0 runs before its forward 0F0 (rank 0 step 1)\n"
              "x: 1 ranks, 1 stages (loop), 1 microbatches\n"
              "step    0      1\n"
              "rank 0 [0B0]!  0F0\n"
              "legend: [A]! marks a faulty cell named above; . is an empty slot\n");
  }
}

TEST(Validate, FormatMarksAnyListOfViolations) {
  const Schedule s = build("x", 1, 1, {"0F0 . 0B0"});
  ValidationReport report;
  report.violations.push_back({Rule::kDeadlock, 0, 1, "rank 0 step 1: stuck here"});
  report.violations.push_back({Rule::kDependency, -1, -1, "no cell"});
  report.violations.push_back({Rule::kDependency, 0, 9, "past the end"});
  EXPECT_EQ(report.format(s),
            "deadlock: rank 0 step 1: stuck here\n"
            "dependency: no cell\n"
            "dependency: past the end\n"
            "x: 1 ranks, 1 stages (loop), 1 microbatches\n"
            "step    0      1      2\n"
            "rank 0  0F0   [.]!    0B0\n"
            "legend: [A]! marks a faulty cell named above; . is an empty slot\n");
}

}  // namespace
}  // namespace pipetrain
