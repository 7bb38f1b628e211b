// pipetrain/schedule/action.h: one step of a pipeline schedule.
//
// An action is (stage, kind, microbatch). Its text form is the one PyTorch's
// torch.distributed.pipelining writes: the stage, the kind, the microbatch, with no
// separators: "2F0", "1I3", "0W1", "1SEND_F0", "3RECV_B12".
#pragma once

#include <compare>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <string_view>

namespace pipetrain {

enum class ActionKind : std::uint8_t {
  kForward,         ///< F: forward of one stage for one microbatch
  kBackward,        ///< B: full backward (input gradient and weight gradient)
  kBackwardInput,   ///< I: input-gradient part of the backward (dX), what the previous stage waits
                    ///< for
  kBackwardWeight,  ///< W: weight-gradient part of the backward (dW), needed only by the optimizer
  kSendForward,     ///< SEND_F: send the stage's forward output to the next stage's rank
  kRecvForward,     ///< RECV_F: receive the stage's forward input from the previous stage's rank
  kSendBackward,    ///< SEND_B: send the gradient of the stage's input to the previous stage's rank
  kRecvBackward,  ///< RECV_B: receive the gradient of the stage's output from the next stage's rank
};

inline constexpr int kNumActionKinds = 8;

/// True for F, B, I and W.
constexpr bool is_compute(ActionKind kind) { return kind <= ActionKind::kBackwardWeight; }
/// True for the four send/receive kinds.
constexpr bool is_comm(ActionKind kind) { return !is_compute(kind); }
/// True for B and I: the actions that produce the gradient sent to the previous stage.
constexpr bool is_input_backward(ActionKind kind) {
  return kind == ActionKind::kBackward || kind == ActionKind::kBackwardInput;
}

/// "F", "B", "I", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B".
std::string_view to_string(ActionKind kind);

struct Action {
  int stage = 0;
  ActionKind kind = ActionKind::kForward;
  int microbatch = 0;

  friend auto operator<=>(const Action&, const Action&) = default;
};

/// "2F0" for Action{2, kForward, 0}.
std::string to_string(const Action& action);
std::ostream& operator<<(std::ostream& out, const Action& action);
std::ostream& operator<<(std::ostream& out, ActionKind kind);

/// Parses the text form ("2F0", "1SEND_B3"). Surrounding spaces are ignored.
/// Throws ParseError naming the text when it is not a stage number, a kind and a microbatch number.
Action parse_action(std::string_view text);

}  // namespace pipetrain
