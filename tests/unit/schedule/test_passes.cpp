#include "pipetrain/schedule/passes.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <random>
#include <sstream>
#include <string>

#include "pipetrain/error.h"
#include "pipetrain/schedule/validate.h"
#include "schedule_rows.h"

namespace pipetrain {
namespace {

Schedule build(const std::string& name, int stages_per_rank, int microbatches,
               const std::vector<std::string>& rows, Placement placement = Placement::kLoop) {
  return testing::schedule_from_rows(name, stages_per_rank, microbatches, rows, placement);
}

// Each rank's actions as text, empty slots left out.
std::string actions(const Schedule& s) {
  std::string out;
  for (int r = 0; r < s.num_ranks(); ++r) {
    for (const Action& a : s.rank_actions(r)) out += to_string(a) + " ";
    out += "|";
  }
  return out;
}

void expect_valid(const Schedule& s) {
  const ValidationReport report = validate(s);
  EXPECT_TRUE(report.ok()) << report.format(s);
}

Schedule one_f_one_b_2x2() {
  return build("1f1b", 1, 2,
               {"0F0 0F1 .   .   0B0 .   0B1",  //
                ".   1F0 1B0 1F1 .   1B1"});
}

TEST(Lower, HandBuilt1F1B) {
  const Schedule lowered = lower(one_f_one_b_2x2());
  // clang-format off
  EXPECT_EQ(lowered.to_grid(), R"(1f1b: 2 ranks, 2 stages (loop), 2 microbatches
step   0        1        2        3        4        5        6        7        8        9        10       11
rank 0 0F0      0SEND_F0 0F1      0SEND_F1 .        .        .        0RECV_B0 0B0      .        0RECV_B1 0B1
rank 1 .        1RECV_F0 1F0      1RECV_F1 1B0      1SEND_B0 1F1      .        .        1B1      1SEND_B1 .
)");
  // clang-format on
  expect_valid(lowered);
  EXPECT_EQ(lowered.name(), "1f1b");
  EXPECT_EQ(lowered.num_ranks(), 2);
  EXPECT_EQ(lowered.stages_per_rank(), 1);
  EXPECT_EQ(lowered.num_microbatches(), 2);
  EXPECT_EQ(lowered.placement(), Placement::kLoop);
}

TEST(Lower, RejectsLoweredAndInvalidSchedules) {
  const Schedule lowered = lower(one_f_one_b_2x2());
  try {
    lower(lowered);
    ADD_FAILURE() << "accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[lower] schedule '1f1b' already has communication actions");
  }
  const Schedule broken = build("x", 1, 1, {"0B0 0F0"});
  try {
    lower(broken);
    ADD_FAILURE() << "accepted";
  } catch (const ScheduleError& e) {
    EXPECT_EQ(std::string(e.what()),
              "[lower] schedule 'x' is not a valid compute schedule:\n"
              "dependency: rank 0 step 0: 0B0 runs before its forward 0F0 (rank 0 step 1)\n"
              "x: 1 ranks, 1 stages (loop), 1 microbatches\n"
              "step    0      1\n"
              "rank 0 [0B0]!  0F0\n"
              "legend: [A]! marks a faulty cell named above; . is an empty slot\n");
  }
}

TEST(Lower, SingleRankNeedsNoCommunication) {
  const Schedule s = build("x", 2, 2, {"0F0 1F0 0F1 1F1 1B0 0B0 1B1 0B1"});
  const Schedule lowered = lower(s);
  EXPECT_FALSE(lowered.has_comm());
  EXPECT_EQ(lowered, s);
}

TEST(Lower, VPlacementSkipsTheTurnOnTheLastRank) {
  const Schedule s = build(
      "v", 2, 1, {"0F0 .   .   3F0 3I0 .   .   0I0 3W0 0W0", ".   1F0 2F0 .   .   2I0 1I0 2W0 1W0"},
      Placement::kV);
  const Schedule lowered = lower(s);
  expect_valid(lowered);
  EXPECT_EQ(actions(lowered),
            "0F0 0SEND_F0 3RECV_F0 3F0 3I0 3SEND_B0 0RECV_B0 0I0 3W0 0W0 |"
            "1RECV_F0 1F0 2F0 2SEND_F0 2RECV_B0 2I0 1I0 1SEND_B0 2W0 1W0 |");
}

TEST(Lower, AvoidsTheLoneSendDeadlock) {
  // Received right before its consumer, 1RECV_F1 would sit after rank 1's lone 1SEND_B0 while
  // rank 0 waits in a lone 0SEND_F1: a deadlock (see test_validate). lower() must not do that.
  const Schedule s =
      build("x", 1, 3, {"0F0 0F1 0F2 0B0 0B1 0B2", "1F0 1I0 1W0 1F1 1I1 1W1 1F2 1I2 1W2"});
  const Schedule lowered = lower(s);
  expect_valid(lowered);
  EXPECT_EQ(strip_comm(lowered).rank_actions(0), s.rank_actions(0));
  EXPECT_EQ(strip_comm(lowered).rank_actions(1), s.rank_actions(1));
}

TEST(Lower, TwoStreamsBetweenTheSameRanksKeepSendOrder) {
  // V placement, P=2: rank 1 sends rank 0 both forward outputs of stage 2 and gradients of
  // stage 1. Rank 0 consumes 0I0 (gradient) only after 3F1 (forward), rank 1 sends 1I0 first.
  const Schedule s = build("v", 2, 2,
                           {"0F0 0F1 3F0 3I0 3F1 3I1 0I0 0I1 3W0 3W1 0W0 0W1",
                            "1F0 2F0 1F1 2I0 1I0 2F1 2I1 1I1 2W0 2W1 1W0 1W1"},
                           Placement::kV);
  expect_valid(s);
  const Schedule lowered = lower(s);
  expect_valid(lowered);
  EXPECT_EQ(strip_comm(lowered).rank_actions(0), s.rank_actions(0));
  EXPECT_EQ(strip_comm(lowered).rank_actions(1), s.rank_actions(1));
}

// A random valid compute schedule: a random topological order of all actions (some with split
// backward), dealt to the ranks in that order, with random empty slots.
Schedule random_schedule(std::mt19937& rng, int ranks, int v, int microbatches,
                         Placement placement) {
  Schedule s("random", ranks, v, microbatches, placement);
  const int stages = s.num_stages();
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  std::vector<Action> ready;
  std::vector<char> split(static_cast<std::size_t>(stages * microbatches));
  for (auto& x : split) x = static_cast<char>(rng() % 2);
  for (int m = 0; m < microbatches; ++m) ready.push_back({0, ActionKind::kForward, m});
  while (!ready.empty()) {
    const std::size_t k = pick(ready.size());
    const Action a = ready[k];
    ready[k] = ready.back();
    ready.pop_back();
    const int r = s.rank_of_stage(a.stage);
    if (rng() % 4 == 0) s.append_idle(r);
    s.append(r, a);
    const bool is_split = split[static_cast<std::size_t>(a.stage * microbatches + a.microbatch)];
    const ActionKind backward = is_split ? ActionKind::kBackwardInput : ActionKind::kBackward;
    if (a.kind == ActionKind::kForward) {
      ready.push_back(a.stage + 1 < stages ? Action{a.stage + 1, ActionKind::kForward, a.microbatch}
                                           : Action{a.stage, backward, a.microbatch});
    } else if (is_input_backward(a.kind)) {
      if (a.stage > 0) {
        const bool prev_split =
            split[static_cast<std::size_t>((a.stage - 1) * microbatches + a.microbatch)];
        ready.push_back({a.stage - 1,
                         prev_split ? ActionKind::kBackwardInput : ActionKind::kBackward,
                         a.microbatch});
      }
      if (is_split) ready.push_back({a.stage, ActionKind::kBackwardWeight, a.microbatch});
    }
  }
  return s;
}

TEST(Lower, RandomValidSchedulesLowerToValidSchedules) {
  std::mt19937 rng(12345);
  for (int trial = 0; trial < 300; ++trial) {
    const bool v_placement = trial % 3 == 0;
    const int ranks = 1 + static_cast<int>(rng() % 5);
    const int v = v_placement ? 2 : 1 + static_cast<int>(rng() % 3);
    const int microbatches = 1 + static_cast<int>(rng() % 6);
    const Schedule s = random_schedule(rng, ranks, v, microbatches,
                                       v_placement ? Placement::kV : Placement::kLoop);
    SCOPED_TRACE(s.to_grid());
    ASSERT_TRUE(validate(s).ok()) << validate(s).format(s);
    const Schedule lowered = lower(s);
    const ValidationReport report = validate(lowered);
    ASSERT_TRUE(report.ok()) << report.format(lowered);
    EXPECT_EQ(lowered.has_comm(), ranks > 1);
    for (int r = 0; r < ranks; ++r)
      EXPECT_EQ(strip_comm(lowered).rank_actions(r), s.rank_actions(r));
    const Schedule merged = merge_backward(lowered);
    ASSERT_TRUE(validate(merged).ok()) << validate(merged).format(merged);
  }
}

TEST(StripComm, UndoesLowerUpToEmptySlots) {
  const Schedule s = one_f_one_b_2x2();
  const Schedule stripped = strip_comm(lower(s));
  EXPECT_FALSE(stripped.has_comm());
  EXPECT_EQ(actions(stripped), actions(s));
  EXPECT_EQ(actions(stripped), "0F0 0F1 0B0 0B1 |1F0 1B0 1F1 1B1 |");
  EXPECT_EQ(stripped.to_grid(),
            "1f1b: 2 ranks, 2 stages (loop), 2 microbatches\n"
            "step   0   1   2   3\n"
            "rank 0 0F0 0F1 0B0 0B1\n"
            "rank 1 1F0 1B0 1F1 1B1\n");
}

TEST(MergeBackward, ComputeOnly) {
  const Schedule s =
      build("zb", 1, 2, {"0F0 0F1 .   .   0I0 0I1 0W0 0W1", ".   1F0 1I0 1F1 1I1 1W0 1W1"});
  expect_valid(s);
  const Schedule merged = merge_backward(s);
  expect_valid(merged);
  EXPECT_FALSE(merged.has_split_backward());
  EXPECT_EQ(merged.to_grid(),
            "zb: 2 ranks, 2 stages (loop), 2 microbatches\n"
            "step   0   1   2   3   4   5\n"
            "rank 0 0F0 0F1 .   .   0B0 0B1\n"
            "rank 1 .   1F0 1B0 1F1 1B1 .\n");
}

TEST(MergeBackward, Lowered) {
  const Schedule s =
      build("zb", 1, 3, {"0F0 0F1 0F2 0B0 0B1 0B2", "1F0 1I0 1W0 1F1 1I1 1W1 1F2 1I2 1W2"});
  const Schedule merged = merge_backward(lower(s));
  expect_valid(merged);
  EXPECT_TRUE(merged.has_comm());
  EXPECT_FALSE(merged.has_split_backward());
  EXPECT_EQ(actions(strip_comm(merged)), "0F0 0F1 0F2 0B0 0B1 0B2 |1F0 1B0 1F1 1B1 1F2 1B2 |");
}

// ---- overlapped slots --------------------------------------------------------------------------

TEST(Overlap, MarkedPairIsTwoSlotsAndExpandPutsTheForwardFirst) {
  Schedule s("pair", 1, 1, 2);
  s.append(0, parse_action("0F0"));
  s.append_overlapped(0, parse_action("0B0"), parse_action("0F1"));
  s.append(0, parse_action("0B1"));
  EXPECT_TRUE(s.has_overlap());
  EXPECT_EQ(s.rank_overlaps(0), std::vector<std::size_t>{1});
  EXPECT_NE(s.to_grid().find("0B0+ 0F1"), std::string::npos) << s.to_grid();
  const Schedule e = expand_overlap(s);
  EXPECT_FALSE(e.has_overlap());
  Schedule want("pair", 1, 1, 2);
  for (const char* a : {"0F0", "0F1", "0B0", "0B1"}) want.append(0, parse_action(a));
  EXPECT_EQ(e, want);
  EXPECT_EQ(expand_overlap(want), want);
  EXPECT_EQ(strip_comm(s), s);
  EXPECT_EQ(merge_backward(s).rank_overlaps(0), std::vector<std::size_t>{1});
  EXPECT_FALSE(forward_only(s).has_overlap());
}

TEST(Overlap, MarksAreChecked) {
  Schedule s("bad", 1, 1, 2);
  for (const char* a : {"0F0", "0B0", "0F1", "0B1"}) s.append(0, parse_action(a));
  EXPECT_THROW(s.mark_overlap(0, 0), InvalidArgument);  // same microbatch
  EXPECT_THROW(s.mark_overlap(0, 3), InvalidArgument);  // no next slot
  s.mark_overlap(0, 1);
  EXPECT_THROW(s.mark_overlap(0, 2), InvalidArgument);  // already part of a pair
  EXPECT_THROW(s.append_overlapped(0, parse_action("0F0"), parse_action("0W1")), InvalidArgument);
}

TEST(Overlap, ValidateReportsEveryOverlappedSlotNamingExpandOverlap) {
  Schedule s("pair", 1, 1, 2);
  s.append(0, parse_action("0F0"));
  s.append_overlapped(0, parse_action("0F1"), parse_action("0B0"));
  s.append(0, parse_action("0B1"));
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 1u) << report.format(s);
  EXPECT_EQ(report.violations[0].rule, Violation::Rule::kOverlap);
  EXPECT_EQ(report.violations[0].message,
            "rank 0 step 1: 0F1+0B0 is an overlapped slot; the runtime runs one action at a "
            "time: run expand_overlap() (passes.h) first");
  EXPECT_THROW(validate_or_throw(s), ScheduleError);
  EXPECT_THROW(lower(s), ScheduleError);
  EXPECT_TRUE(validate(expand_overlap(s)).ok());
  // A mark left behind by an edit of the slots is reported too.
  s.rank_slots(0)[2] = parse_action("0W0");
  EXPECT_NE(validate(s).format(s).find("marked as an overlapped slot, but"), std::string::npos);
}

}  // namespace
}  // namespace pipetrain
