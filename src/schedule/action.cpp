#include "pipetrain/schedule/action.h"

#include <array>
#include <charconv>
#include <ostream>

#include "pipetrain/error.h"

namespace pipetrain {

namespace {
constexpr std::array<std::string_view, kNumActionKinds> kKindNames = {
    "F", "B", "I", "W", "SEND_F", "RECV_F", "SEND_B", "RECV_B"};

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t' || text.back() == '\r'))
    text.remove_suffix(1);
  return text;
}

// Reads a non-negative decimal prefix; returns the number of characters consumed (0 if none).
std::size_t read_number(std::string_view text, int& value) {
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  if (result.ec != std::errc() || value < 0) return 0;
  return static_cast<std::size_t>(result.ptr - text.data());
}
}  // namespace

std::string_view to_string(ActionKind kind) { return kKindNames[static_cast<int>(kind)]; }

std::string to_string(const Action& action) {
  std::string text = std::to_string(action.stage);
  text += to_string(action.kind);
  text += std::to_string(action.microbatch);
  return text;
}

std::ostream& operator<<(std::ostream& out, const Action& action) {
  return out << to_string(action);
}
std::ostream& operator<<(std::ostream& out, ActionKind kind) { return out << to_string(kind); }

Action parse_action(std::string_view text) {
  const std::string_view body = trim(text);
  auto fail = [&]() -> ParseError {
    return ParseError(
        detail::message("parse_action", "'", text,
                        "' is not an action: expected <stage><kind><microbatch> with kind one of "
                        "F B I W SEND_F RECV_F SEND_B RECV_B, e.g. 2F0 or 1SEND_B3"));
  };
  Action action;
  const std::size_t stage_len = read_number(body, action.stage);
  if (stage_len == 0 || body[0] == '-' || body[0] == '+') throw fail();
  std::string_view rest = body.substr(stage_len);
  // Longest kind name first so that "SEND_F" is not read as something shorter.
  int best = -1;
  for (int k = 0; k < kNumActionKinds; ++k) {
    if (rest.starts_with(kKindNames[k]) &&
        (best < 0 || kKindNames[k].size() > kKindNames[best].size()))
      best = k;
  }
  if (best < 0) throw fail();
  action.kind = static_cast<ActionKind>(best);
  rest.remove_prefix(kKindNames[best].size());
  if (rest.empty() || rest[0] == '-' || rest[0] == '+') throw fail();
  const std::size_t mb_len = read_number(rest, action.microbatch);
  if (mb_len == 0 || mb_len != rest.size()) throw fail();
  return action;
}

}  // namespace pipetrain
