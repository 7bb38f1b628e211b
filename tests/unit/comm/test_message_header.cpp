#include <gtest/gtest.h>

#include "pipetrain/comm/transport.h"

namespace pipetrain {
namespace {

TEST(MessageHeader, MakeComputesBytesAndPrints) {
  const MessageHeader h =
      MessageHeader::make(7, parse_action("1RECV_F3"), DType::kFloat32, Shape{4, 64});
  EXPECT_EQ(h.step, 7);
  EXPECT_EQ(h.stage, 1);
  EXPECT_EQ(h.microbatch, 3);
  EXPECT_EQ(h.kind, ActionKind::kRecvForward);
  EXPECT_EQ(h.nbytes, 4u * 64u * 4u);
  EXPECT_TRUE(h.is_recv());
  EXPECT_FALSE(h.is_send());
  EXPECT_EQ(to_string(h), "RECV_F stage 1 microbatch 3 [4, 64] fp32 step 7");
}

TEST(MessageHeader, ForTensorTakesDtypeAndShape) {
  const Tensor t = Tensor::zeros({2, 5}, DType::kBFloat16);
  const MessageHeader h = MessageHeader::for_tensor(0, parse_action("2SEND_B0"), t);
  EXPECT_EQ(h.dtype, DType::kBFloat16);
  EXPECT_EQ(h.shape, (Shape{2, 5}));
  EXPECT_EQ(h.nbytes, 20u);
  EXPECT_EQ(to_string(h), "SEND_B stage 2 microbatch 0 [2, 5] bf16 step 0");
}

TEST(MessageHeader, InconsistentByteCountIsShown) {
  MessageHeader h = MessageHeader::make(0, parse_action("0SEND_F1"), DType::kFloat32, Shape{3});
  h.nbytes = 100;
  EXPECT_EQ(to_string(h), "SEND_F stage 0 microbatch 1 [3] fp32 100 bytes step 0");
}

TEST(MessageHeader, MakeRejectsComputeAction) {
  try {
    MessageHeader::make(0, parse_action("1F0"), DType::kFloat32, Shape{1});
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "[MessageHeader::make] action 1F0 is not a send or receive");
  }
}

TEST(PeerAction, PairsAsValidateDoes) {
  EXPECT_EQ(peer_action(parse_action("1SEND_F3")), parse_action("2RECV_F3"));
  EXPECT_EQ(peer_action(parse_action("2RECV_F3")), parse_action("1SEND_F3"));
  EXPECT_EQ(peer_action(parse_action("2SEND_B0")), parse_action("1RECV_B0"));
  EXPECT_EQ(peer_action(parse_action("1RECV_B0")), parse_action("2SEND_B0"));
  try {
    peer_action(parse_action("1W0"));
    FAIL() << "expected InvalidArgument";
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "[peer_action] action 1W0 is not a send or receive");
  }
}

TEST(Matches, ComparesEveryField) {
  const auto sent = MessageHeader::make(4, parse_action("0SEND_F2"), DType::kFloat32, {4, 8});
  const auto expected =
      MessageHeader::make(4, parse_action("1RECV_F2"), DType::kFloat32, {4, 8});
  EXPECT_TRUE(matches(sent, expected));
  EXPECT_FALSE(matches(expected, sent));  // direction matters
  auto other = expected;
  other.microbatch = 3;
  EXPECT_FALSE(matches(sent, other));
  other = expected;
  other.step = 5;
  EXPECT_FALSE(matches(sent, other));
  other = expected;
  other.stage = 2;
  EXPECT_FALSE(matches(sent, other));
  EXPECT_FALSE(
      matches(sent, MessageHeader::make(4, parse_action("1RECV_F2"), DType::kBFloat16, {4, 8})));
  EXPECT_FALSE(
      matches(sent, MessageHeader::make(4, parse_action("1RECV_F2"), DType::kFloat32, {8, 4})));
  EXPECT_FALSE(
      matches(sent, MessageHeader::make(4, parse_action("1RECV_B2"), DType::kFloat32, {4, 8})));
}

}  // namespace
}  // namespace pipetrain
