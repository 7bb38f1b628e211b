#include "pipetrain/schedule/action.h"

#include <gtest/gtest.h>

#include "pipetrain/error.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain {
namespace {

TEST(Action, TextFormMatchesPyTorch) {
  EXPECT_EQ(to_string(Action{2, ActionKind::kForward, 0}), "2F0");
  EXPECT_EQ(to_string(Action{1, ActionKind::kBackwardInput, 3}), "1I3");
  EXPECT_EQ(to_string(Action{0, ActionKind::kBackwardWeight, 1}), "0W1");
  EXPECT_EQ(to_string(Action{1, ActionKind::kSendForward, 0}), "1SEND_F0");
  EXPECT_EQ(to_string(Action{12, ActionKind::kRecvBackward, 105}), "12RECV_B105");
}

TEST(Action, ParseRoundTripsEveryKind) {
  for (int k = 0; k < kNumActionKinds; ++k) {
    const Action action{7, static_cast<ActionKind>(k), 31};
    EXPECT_EQ(parse_action(to_string(action)), action) << to_string(action);
  }
  EXPECT_EQ(parse_action("  3B4 "), (Action{3, ActionKind::kBackward, 4}));
}

TEST(Action, ParseRejectsMalformedTextWithItsMessage) {
  for (const char* bad : {"", "F0", "0F", "0X1", "0F1x", "-1F0", "0F-1", "0SEND0", "a0F0"}) {
    try {
      parse_action(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const ParseError& e) {
      EXPECT_EQ(std::string(e.what()),
                std::string("[parse_action] '") + bad +
                    "' is not an action: expected <stage><kind><microbatch> with kind one of "
                    "F B I W SEND_F RECV_F SEND_B RECV_B, e.g. 2F0 or 1SEND_B3");
    }
  }
}

TEST(Action, KindClassification) {
  EXPECT_TRUE(is_compute(ActionKind::kBackwardWeight));
  EXPECT_FALSE(is_compute(ActionKind::kSendForward));
  EXPECT_TRUE(is_comm(ActionKind::kRecvBackward));
  EXPECT_TRUE(is_input_backward(ActionKind::kBackwardInput));
  EXPECT_FALSE(is_input_backward(ActionKind::kBackwardWeight));
}

TEST(Schedule, LoopPlacement) {
  Schedule s("x", 4, 3, 8);
  EXPECT_EQ(s.num_stages(), 12);
  EXPECT_EQ(s.rank_of_stage(0), 0);
  EXPECT_EQ(s.rank_of_stage(5), 1);
  EXPECT_EQ(s.rank_of_stage(11), 3);
  EXPECT_EQ(s.stages_of_rank(2), (std::vector<int>{2, 6, 10}));
}

TEST(Schedule, VPlacement) {
  Schedule s("x", 4, 2, 8, Placement::kV);
  EXPECT_EQ(s.rank_of_stage(0), 0);
  EXPECT_EQ(s.rank_of_stage(3), 3);
  EXPECT_EQ(s.rank_of_stage(4), 3);
  EXPECT_EQ(s.rank_of_stage(7), 0);
  EXPECT_EQ(s.stages_of_rank(1), (std::vector<int>{1, 6}));
}

TEST(Schedule, RejectsBadShapeWithMessages) {
  auto message = [](auto&& make) {
    try {
      make();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no exception");
  };
  EXPECT_EQ(message([] { Schedule("x", 0, 1, 1); }), "[Schedule] num_ranks=0 must be >= 1");
  EXPECT_EQ(message([] { Schedule("x", 2, 0, 1); }), "[Schedule] stages_per_rank=0 must be >= 1");
  EXPECT_EQ(message([] { Schedule("x", 2, 1, 0); }), "[Schedule] num_microbatches=0 must be >= 1");
  EXPECT_EQ(message([] { Schedule("x", 2, 3, 4, Placement::kV); }),
            "[Schedule] stages_per_rank=3 must be 2 for the V placement");
  EXPECT_EQ(message([] { Schedule("x", 2, 1, 4).rank_of_stage(2); }),
            "[Schedule::rank_of_stage] stage=2 must be in [0, 2)");
}

TEST(Schedule, GridShowsIdleSlotsAndNormalizes) {
  Schedule s("tiny", 2, 1, 1);
  s.append(0, {0, ActionKind::kForward, 0});
  s.append_idle(0);
  s.append_idle(0);
  s.append(0, {0, ActionKind::kBackward, 0});
  s.append_idle(0);
  s.append_idle(1);
  s.append(1, {1, ActionKind::kForward, 0});
  s.append(1, {1, ActionKind::kBackward, 0});
  s.normalize();
  EXPECT_EQ(s.num_steps(), 4u);
  EXPECT_EQ(s.num_actions(), 4u);
  EXPECT_FALSE(s.has_comm());
  EXPECT_EQ(s.to_grid(),
            "tiny: 2 ranks, 2 stages (loop), 1 microbatches\n"
            "step   0   1   2   3\n"
            "rank 0 0F0 .   .   0B0\n"
            "rank 1 .   1F0 1B0 .\n");
}

}  // namespace
}  // namespace pipetrain
