#include "pipetrain/schedule/io.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <system_error>
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <vector>

#include "pipetrain/error.h"

namespace pipetrain {

namespace {

// ---- CSV ------------------------------------------------------------------------------------

std::string_view trim_cell(std::string_view cell) {
  while (!cell.empty() && (cell.front() == ' ' || cell.front() == '\t')) cell.remove_prefix(1);
  while (!cell.empty() && (cell.back() == ' ' || cell.back() == '\t')) cell.remove_suffix(1);
  return cell;
}

struct CsvCell {
  int row = 0;   // 1-based, as an editor shows it
  int cell = 0;  // 1-based
  Action action;
};

std::string where(int row, int cell) {
  return "row " + std::to_string(row) + " cell " + std::to_string(cell);
}

// True for "<digits>BW<digits>": the full backward of PyTorch releases that wrote the
// input-gradient backward as "B" (before "I" existed).
bool is_old_full_backward(std::string_view cell) {
  const std::size_t bw = cell.find("BW");
  if (bw == std::string_view::npos || bw == 0 || bw + 2 >= cell.size()) return false;
  auto digits = [](std::string_view t) {
    return !t.empty() && t.find_first_not_of("0123456789") == std::string_view::npos;
  };
  return digits(cell.substr(0, bw)) && digits(cell.substr(bw + 2));
}

// One action in the text's dialect: in the old one, "B" is the input-gradient backward and "BW"
// the full one.
Action parse_cell_action(std::string_view text, bool old_dialect) {
  if (old_dialect && is_old_full_backward(text)) {
    Action action = parse_action(std::string(text).erase(text.find("BW") + 1, 1));
    action.kind = ActionKind::kBackward;
    return action;
  }
  Action action = parse_action(text);
  if (old_dialect && action.kind == ActionKind::kBackward) action.kind = ActionKind::kBackwardInput;
  return action;
}

constexpr std::string_view kOverlapSuffix = ")OVERLAP_F_B";

// The actions of one cell: one action, or the two of an overlapped slot,
// "(a;b)OVERLAP_F_B" (PyTorch's composite action for DualPipeV's overlapped forward and
// backward), which must be an F and a B or I of different microbatches. Throws ParseError
// without a function name: from_csv puts its own, and the cell's place, in front.
std::vector<Action> parse_cell(std::string_view body, bool old_dialect) {
  if (!(body.front() == '(' && body.ends_with(kOverlapSuffix)))
    return {parse_cell_action(body, old_dialect)};
  std::string_view inner = body.substr(1, body.size() - 1 - kOverlapSuffix.size());
  std::vector<Action> actions;
  while (true) {
    const std::size_t semi = inner.find(';');
    // Bounded: a third part is refused below whatever follows it.
    if (actions.size() == 2)
      throw ParseError("'" + std::string(body) +
                       "' has more than two actions: an overlapped slot is an F and a B or I of "
                       "different microbatches");
    actions.push_back(parse_cell_action(trim_cell(inner.substr(0, semi)), old_dialect));
    if (semi == std::string_view::npos) break;
    inner.remove_prefix(semi + 1);
  }
  if (actions.size() != 2 || !can_overlap(actions[0], actions[1]))
    throw ParseError("'" + std::string(body) +
                     "' is not an overlapped slot: expected an F and a B or I of different "
                     "microbatches");
  return actions;
}

// ---- numbers and text -----------------------------------------------------------------------

// Shortest text that reads back as the same double; JSON has no infinities, so those are null.
std::string json_number(double value) {
  if (!std::isfinite(value)) return "null";
  std::array<char, 64> buffer{};
  const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
  return std::string(buffer.data(), result.ptr);
}

// Fixed-point with at most two decimals, trailing zeros dropped: coordinates and axis labels.
std::string short_number(double value) {
  if (!std::isfinite(value)) return "0";
  std::array<char, 64> buffer{};
  if (std::fabs(value) >= 1e15) {  // fixed notation would not fit: 1e+300
    const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value,
                                      std::chars_format::scientific, 6);
    return std::string(buffer.data(), result.ptr);
  }
  const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value,
                                    std::chars_format::fixed, 2);
  std::string text(buffer.data(), result.ptr);
  while (text.back() == '0') text.pop_back();
  if (text.back() == '.') text.pop_back();
  if (text == "-0") text = "0";
  return text;
}

std::string json_string(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          std::array<char, 8> code{};
          std::snprintf(code.data(), code.size(), "\\u%04x", static_cast<unsigned>(c));
          out += code.data();
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        // XML 1.0 forbids most control characters even when escaped.
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += ' ';
        else
          out += c;
    }
  }
  return out;
}

void check_result(const char* function, const Schedule& schedule, const SimulationResult& result) {
  for (const TimedAction& t : result.actions) {
    PIPETRAIN_CHECK_ARG(t.rank >= 0 && t.rank < schedule.num_ranks(), function, "result holds ",
                        to_string(t.action), " on rank ", t.rank,
                        " but the schedule has num_ranks=", schedule.num_ranks());
  }
}

// The other action of the overlapped slot that holds `t` (its step a mark, or the step after
// one), or nothing. A result simulated from another schedule may name steps this one lacks.
std::optional<Action> overlap_partner(const Schedule& schedule, const TimedAction& t) {
  const auto& marks = schedule.rank_overlaps(t.rank);
  const auto& slots = schedule.rank_slots(t.rank);
  const auto step = static_cast<std::size_t>(t.step);
  if (t.step < 0 || step >= slots.size()) return std::nullopt;
  if (std::binary_search(marks.begin(), marks.end(), step) && step + 1 < slots.size())
    return slots[step + 1];
  if (step > 0 && std::binary_search(marks.begin(), marks.end(), step - 1)) return slots[step - 1];
  return std::nullopt;
}

// True when `t` is the first action of its overlapped slot (drawn on top).
bool overlap_first(const Schedule& schedule, const TimedAction& t) {
  const auto& marks = schedule.rank_overlaps(t.rank);
  return std::binary_search(marks.begin(), marks.end(), static_cast<std::size_t>(t.step));
}

// ---- SVG colours ----------------------------------------------------------------------------

struct Rgb {
  double r, g, b;
};

Rgb kind_colour(ActionKind kind) {
  switch (kind) {
    case ActionKind::kForward:
      return {0x35, 0x6A, 0xC3};  // blue
    case ActionKind::kBackward:
      return {0x2E, 0x9E, 0x5B};  // green
    case ActionKind::kBackwardInput:
      return {0xE0, 0x7A, 0x1F};  // orange
    default:
      return {0x8E, 0x5B, 0xB8};  // purple: W
  }
}

// Later local stages get lighter shades of the same hue so that the chunks of a rank stay
// apart while the kind still reads at a glance.
Rgb shade(Rgb colour, int chunk, int chunks) {
  if (chunks <= 1) return colour;
  const double t = 0.55 * static_cast<double>(chunk) / static_cast<double>(chunks - 1);
  return {colour.r + (255.0 - colour.r) * t, colour.g + (255.0 - colour.g) * t,
          colour.b + (255.0 - colour.b) * t};
}

std::string hex(Rgb c) {
  std::array<char, 8> text{};
  std::snprintf(text.data(), text.size(), "#%02X%02X%02X", static_cast<unsigned>(std::lround(c.r)),
                static_cast<unsigned>(std::lround(c.g)), static_cast<unsigned>(std::lround(c.b)));
  return text.data();
}

bool is_light(Rgb c) { return 0.299 * c.r + 0.587 * c.g + 0.114 * c.b > 160.0; }

// A tick spacing of 1, 2 or 5 times a power of ten that leaves at least `min_pixels` between
// labels.
double tick_step(double pixels_per_unit, double min_pixels) {
  const double raw = min_pixels / pixels_per_unit;
  if (!std::isfinite(raw) || raw <= 0.0) return raw;  // the caller draws no ticks
  double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (;;) {
    for (const double m : {1.0, 2.0, 5.0})
      if (m * power >= raw) return m * power;
    power *= 10.0;
  }
}

const char* file_type_name(std::filesystem::file_type type) {
  switch (type) {
    case std::filesystem::file_type::directory:
      return "a directory";
    case std::filesystem::file_type::character:
      return "a character device";
    case std::filesystem::file_type::block:
      return "a block device";
    case std::filesystem::file_type::fifo:
      return "a FIFO";
    case std::filesystem::file_type::socket:
      return "a socket";
    default:
      return "not a regular file";
  }
}

}  // namespace

std::string to_csv(const Schedule& schedule) {
  std::string out;
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    const auto& slots = schedule.rank_slots(r);
    // Python's csv module quotes a row made of one empty field so that it is not read back as a
    // row with no fields; do the same.
    if (slots.size() == 1 && !slots[0]) {
      out += "\"\"\n";
      continue;
    }
    const auto& marks = schedule.rank_overlaps(r);
    std::size_t next_mark = 0;
    for (std::size_t i = 0; i < slots.size(); ++i) {
      if (i > 0) out += ',';
      while (next_mark < marks.size() && marks[next_mark] < i) ++next_mark;
      // A mark whose slots were rewritten through rank_slots() since may no longer hold a pair
      // from_csv() accepts: those slots are written as two cells.
      const bool pair = next_mark < marks.size() && marks[next_mark] == i && i + 1 < slots.size() &&
                        slots[i] && slots[i + 1] && can_overlap(*slots[i], *slots[i + 1]);
      if (pair) {
        // One cell for the slot, its actions in their order: PyTorch's spelling.
        out += '(' + to_string(*slots[i]) + ';' + to_string(*slots[i + 1]) +
               std::string(kOverlapSuffix);
        ++i;
      } else if (slots[i]) {
        out += to_string(*slots[i]);
      }
    }
    out += '\n';
  }
  return out;
}

Schedule from_csv(std::string_view text, std::string name) {
  // Rows: lines ending in "\n" or "\r\n"; a final line without a terminator still counts.
  std::vector<std::vector<std::optional<Action>>> rows;
  std::vector<std::vector<std::size_t>> overlaps;  // per row: steps that begin an overlapped slot
  std::vector<CsvCell> cells;
  // A file with any "BW" cell comes from a PyTorch release in which "B" meant the
  // input-gradient backward; read its "B" as I and its "BW" as B.
  bool old_dialect = false;
  // Linear: each "BW" looks only at the digits and blanks around it (searching for the cell's
  // separators instead made a long line of "BW"s quadratic).
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  auto blank = [](char c) { return c == ' ' || c == '\t'; };
  for (std::size_t at = text.find("BW"); at != std::string_view::npos && !old_dialect;
       at = text.find("BW", at + 2)) {
    std::size_t begin = at;
    while (begin > 0 && digit(text[begin - 1])) --begin;
    if (begin == at) continue;
    while (begin > 0 && blank(text[begin - 1])) --begin;
    if (begin > 0 && std::string_view(",\n(;").find(text[begin - 1]) == std::string_view::npos)
      continue;
    std::size_t end = at + 2;
    while (end < text.size() && digit(text[end])) ++end;
    if (end == at + 2) continue;
    while (end < text.size() && blank(text[end])) ++end;
    old_dialect = end == text.size() || std::string_view(",\r\n);").find(text[end]) !=
                                            std::string_view::npos;
  }
  std::int64_t num_slots = 0;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t eol = text.find('\n', pos);
    if (eol == std::string_view::npos) eol = text.size();
    std::string_view line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const int row = static_cast<int>(rows.size()) + 1;
    if (row > ScheduleLimits::kMaxRanks)
      throw ParseError(detail::message("from_csv", "the text has more than ",
                                       ScheduleLimits::kMaxRanks,
                                       " rows (one per rank; ScheduleLimits::kMaxRanks)"));
    auto& slots = rows.emplace_back();
    auto& marks = overlaps.emplace_back();
    if (line.empty()) continue;  // a rank with no slots, as csv.reader gives []
    std::size_t start = 0;
    for (int cell = 1;; ++cell) {
      std::size_t comma = line.find(',', start);
      if (comma == std::string_view::npos) comma = line.size();
      std::string_view body = trim_cell(line.substr(start, comma - start));
      if (body.size() >= 2 && body.front() == '"' && body.back() == '"')
        body = trim_cell(body.substr(1, body.size() - 2));
      // Bounded before it grows: a cell holds one action, or two when overlapped.
      if (++num_slots > ScheduleLimits::kMaxSlots)
        throw ParseError(detail::message("from_csv", where(row, cell), ": the text has more than ",
                                         ScheduleLimits::kMaxSlots,
                                         " cells (ScheduleLimits::kMaxSlots)"));
      if (body.empty()) {
        slots.emplace_back(std::nullopt);
      } else {
        std::vector<Action> actions;
        try {
          actions = parse_cell(body, old_dialect);
        } catch (const ParseError& e) {
          throw ParseError(detail::message("from_csv", where(row, cell), ": ", e.what()));
        }
        // kMaxSlots bounds slots: an overlapped cell is two.
        if (actions.size() == 2 && ++num_slots > ScheduleLimits::kMaxSlots)
          throw ParseError(detail::message("from_csv", where(row, cell), ": the text has more than ",
                                           ScheduleLimits::kMaxSlots,
                                           " slots (ScheduleLimits::kMaxSlots)"));
        if (actions.size() == 2) marks.push_back(slots.size());
        for (const Action& action : actions) {
          slots.emplace_back(action);
          cells.push_back(CsvCell{row, cell, action});
        }
      }
      if (comma == line.size()) break;
      start = comma + 1;
    }
  }
  if (rows.empty()) throw ParseError(detail::message("from_csv", "the text has no rows"));
  if (cells.empty())
    throw ParseError(detail::message("from_csv", "the text has ", rows.size(),
                                     " rows but no actions: the shape cannot be inferred"));

  // The shape comes from the largest numbers in the text; it is checked against the limits and
  // against the number of actions before anything sized by it is built, so that the memory the
  // schedule needs follows from the size of the text, not from the numbers written in it.
  using L = ScheduleLimits;
  const int ranks = static_cast<int>(rows.size());
  int max_stage = 0;
  int max_microbatch = 0;
  std::int64_t num_compute = 0;
  for (const CsvCell& c : cells) {
    max_stage = std::max(max_stage, c.action.stage);
    max_microbatch = std::max(max_microbatch, c.action.microbatch);
    if (is_compute(c.action.kind)) ++num_compute;
  }
  const std::int64_t stages = std::int64_t{max_stage} + 1;
  const std::int64_t microbatches = std::int64_t{max_microbatch} + 1;
  if (stages > L::kMaxStages)
    throw ParseError(detail::message("from_csv", "the largest stage ", max_stage,
                                     " gives num_stages=", stages, ", more than ", L::kMaxStages,
                                     " (ScheduleLimits::kMaxStages)"));
  if (microbatches > L::kMaxMicrobatches)
    throw ParseError(detail::message("from_csv", "the largest microbatch ", max_microbatch,
                                     " gives num_microbatches=", microbatches, ", more than ",
                                     L::kMaxMicrobatches, " (ScheduleLimits::kMaxMicrobatches)"));
  const std::int64_t work = stages * microbatches;  // <= 2^12 * 2^19
  // A complete schedule has an F and a backward for each of the stages x microbatches pairs; a
  // text may miss some (validate() then lists them), but not most.
  const std::int64_t allowed = std::min(L::kMaxWork, std::max<std::int64_t>(num_compute, 4096));
  if (work > allowed)
    throw ParseError(detail::message(
        "from_csv", "the largest stage ", max_stage, " and microbatch ", max_microbatch,
        " give num_stages*num_microbatches=", stages, "*", microbatches, "=", work,
        " (stage, microbatch) pairs, but the text holds ", num_compute,
        " compute actions: expected at most max(compute actions, 4096), and at most ",
        L::kMaxWork, " (ScheduleLimits::kMaxWork)"));
  if (stages % ranks != 0)
    throw ParseError(
        detail::message("from_csv", "the largest stage ", max_stage, " gives num_stages=", stages,
                        ", which is not a multiple of num_ranks=", ranks, " (one row per rank)"));
  const int per_rank = static_cast<int>(stages / ranks);

  const CsvCell* not_loop = nullptr;
  const CsvCell* not_v = nullptr;
  for (const CsvCell& c : cells) {
    const int rank = c.row - 1;
    if (!not_loop && c.action.stage % ranks != rank) not_loop = &c;
    if (!not_v && c.action.stage != rank && c.action.stage != 2 * ranks - 1 - rank) not_v = &c;
  }
  Placement placement = Placement::kLoop;
  if (not_loop) {
    if (per_rank == 2 && !not_v) {
      placement = Placement::kV;
    } else {
      const int loop_rank = not_loop->action.stage % ranks;
      std::string why = detail::message(
          "from_csv", where(not_loop->row, not_loop->cell), ": stage ", not_loop->action.stage,
          " is on rank ", not_loop->row - 1, " but the loop placement puts it on rank ", loop_rank);
      if (per_rank != 2) {
        why += ", and the V placement needs num_stages=2*num_ranks=" + std::to_string(2 * ranks) +
               " (got " + std::to_string(stages) + ")";
      } else {
        const int stage = not_v->action.stage;
        const int v_rank = stage < ranks ? stage : 2 * ranks - 1 - stage;
        why += ", and " + where(not_v->row, not_v->cell) + " holds stage " + std::to_string(stage) +
               " on rank " + std::to_string(not_v->row - 1) +
               " but the V placement puts it on rank " + std::to_string(v_rank);
      }
      throw ParseError(why);
    }
  }
  Schedule schedule(std::move(name), ranks, per_rank, static_cast<int>(microbatches), placement);
  for (int r = 0; r < ranks; ++r) {
    schedule.rank_slots(r) = std::move(rows[static_cast<std::size_t>(r)]);
    for (std::size_t step : overlaps[static_cast<std::size_t>(r)]) schedule.mark_overlap(r, step);
  }
  return schedule;
}

std::string to_chrome_trace(const Schedule& schedule, const SimulationResult& result,
                            double time_scale) {
  PIPETRAIN_CHECK_ARG(std::isfinite(time_scale) && time_scale > 0.0, "to_chrome_trace",
                      "time_scale=", time_scale, " must be finite and > 0");
  check_result("to_chrome_trace", schedule, result);
  std::string out = "{\"traceEvents\":[\n";
  bool first = true;
  auto event = [&](const std::string& body) {
    if (!first) out += ",\n";
    first = false;
    out += body;
  };
  for (int r = 0; r < schedule.num_ranks(); ++r) {
    const std::string pid = std::to_string(r);
    const std::string label = json_string("rank " + pid);
    event("{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + pid +
          ",\"tid\":0,\"args\":{\"name\":" + label + "}}");
    event("{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":" + pid +
          ",\"tid\":0,\"args\":{\"sort_index\":" + pid + "}}");
    event("{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + pid +
          ",\"tid\":0,\"args\":{\"name\":" + label + "}}");
  }
  for (const TimedAction& t : result.actions) {
    // Both actions of an overlapped slot carry the slot's time; args name the partner.
    const std::optional<Action> partner = overlap_partner(schedule, t);
    const std::string overlap =
        partner ? ",\"overlap\":true,\"partner\":" + json_string(to_string(*partner)) : "";
    event("{\"name\":" + json_string(to_string(t.action)) +
          ",\"cat\":" + json_string(to_string(t.action.kind)) + ",\"ph\":\"X\",\"pid\":" +
          std::to_string(t.rank) + ",\"tid\":0,\"ts\":" + json_number(t.start * time_scale) +
          ",\"dur\":" + json_number((t.end - t.start) * time_scale) +
          ",\"args\":{\"stage\":" + std::to_string(t.action.stage) + ",\"microbatch\":" +
          std::to_string(t.action.microbatch) + ",\"step\":" + std::to_string(t.step) + overlap +
          "}}");
  }
  out +=
      "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"schedule\":" + json_string(schedule.name()) +
      ",\"num_ranks\":" + std::to_string(schedule.num_ranks()) +
      ",\"num_stages\":" + std::to_string(schedule.num_stages()) +
      ",\"num_microbatches\":" + std::to_string(schedule.num_microbatches()) +
      ",\"makespan\":" + json_number(result.makespan) +
      ",\"bubble_fraction\":" + json_number(result.bubble_fraction) + "}}\n";
  return out;
}

std::string to_svg(const Schedule& schedule, const SimulationResult& result,
                   const SvgOptions& options) {
  PIPETRAIN_CHECK_ARG(
      std::isfinite(options.pixels_per_time_unit) && options.pixels_per_time_unit > 0.0, "to_svg",
      "pixels_per_time_unit=", options.pixels_per_time_unit, " must be finite and > 0");
  PIPETRAIN_CHECK_ARG(std::isfinite(options.row_height) && options.row_height >= 8.0, "to_svg",
                      "row_height=", options.row_height, " must be >= 8");
  check_result("to_svg", schedule, result);
  PIPETRAIN_CHECK_ARG(std::isfinite(result.makespan) && result.makespan >= 0.0, "to_svg",
                      "result.makespan=", result.makespan, " must be finite and >= 0");

  const int ranks = schedule.num_ranks();
  const int chunks = schedule.stages_per_rank();
  const double ppu = options.pixels_per_time_unit;
  const double row_h = options.row_height;
  const double box_h = row_h - 4.0;
  const double label_w = 64.0;
  const double left = label_w + 8.0;
  const double top = 52.0;
  const double plot_w = std::max(result.makespan * ppu, 1.0);
  const double plot_h = row_h * ranks;
  const double axis_y = top + plot_h;
  const double right = 24.0;

  bool present[kNumActionKinds] = {};
  for (const TimedAction& t : result.actions) present[static_cast<int>(t.action.kind)] = true;
  const bool any_overlap = schedule.has_overlap();

  // The local chunk of a stage: its position among the rank's stages.
  auto chunk_of = [&](int stage) {
    if (schedule.placement() == Placement::kV) return stage < ranks ? 0 : 1;
    return stage / ranks;
  };

  std::string title = options.title;
  if (title.empty()) title = schedule.name();
  std::ostringstream subtitle;
  subtitle << ranks << " ranks";
  if (chunks > 1)
    subtitle << " x " << chunks << " stages (" << to_string(schedule.placement()) << ")";
  subtitle << ", " << schedule.num_microbatches() << " microbatches, makespan "
           << short_number(result.makespan) << ", bubble "
           << short_number(100.0 * result.bubble_fraction) << "%";

  const double legend_y = axis_y + 40.0;
  const double height = legend_y + (options.show_legend ? 30.0 : 0.0);
  const double width = std::max(left + plot_w + right, 560.0);

  std::string out;
  out += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + short_number(width) +
         "\" height=\"" + short_number(height) + "\" viewBox=\"0 0 " + short_number(width) + " " +
         short_number(height) + "\" font-family=\"Helvetica, Arial, sans-serif\">\n";
  out += "<rect class=\"background\" x=\"0\" y=\"0\" width=\"" + short_number(width) +
         "\" height=\"" + short_number(height) + "\" fill=\"#FFFFFF\"/>\n";
  out += "<text x=\"" + short_number(left) +
         "\" y=\"22\" font-size=\"15\" font-weight=\"bold\" "
         "fill=\"#222222\">" +
         xml_escape(title) + "</text>\n";
  out += "<text x=\"" + short_number(left) + "\" y=\"40\" font-size=\"11\" fill=\"#555555\">" +
         xml_escape(subtitle.str()) + "</text>\n";

  // Rows: alternating bands so long rows stay readable, and the rank labels.
  for (int r = 0; r < ranks; ++r) {
    const double y = top + row_h * r;
    if (r % 2 == 1)
      out += "<rect class=\"band\" x=\"" + short_number(left) + "\" y=\"" + short_number(y) +
             "\" width=\"" + short_number(plot_w) + "\" height=\"" + short_number(row_h) +
             "\" fill=\"#F4F5F7\"/>\n";
    out += "<text x=\"" + short_number(label_w) + "\" y=\"" + short_number(y + row_h / 2 + 4) +
           "\" font-size=\"11\" text-anchor=\"end\" fill=\"#333333\">rank " + std::to_string(r) +
           "</text>\n";
  }

  // Time axis with grid lines.
  // At least 48 pixels between labels, and at most kMaxAxisTicks labels however long the run.
  constexpr int kMaxAxisTicks = 200;
  double step = tick_step(ppu, 48.0);
  if (result.makespan / step > kMaxAxisTicks)
    step = tick_step(kMaxAxisTicks / result.makespan, 1.0);
  out += "<g class=\"axis\" font-size=\"10\" fill=\"#555555\" stroke=\"none\">\n";
  for (int i = 0; i <= kMaxAxisTicks && std::isfinite(step) && step > 0.0; ++i) {
    const double t = step * i;
    if (t > result.makespan + 1e-9 * step) break;
    const double x = left + t * ppu;
    out += "<line x1=\"" + short_number(x) + "\" y1=\"" + short_number(top) + "\" x2=\"" +
           short_number(x) + "\" y2=\"" + short_number(axis_y + 4) +
           "\" stroke=\"#D9DCE1\" stroke-width=\"1\"/>\n";
    out += "<text x=\"" + short_number(x) + "\" y=\"" + short_number(axis_y + 16) +
           "\" text-anchor=\"middle\">" + short_number(t) + "</text>\n";
  }
  out += "<line x1=\"" + short_number(left) + "\" y1=\"" + short_number(axis_y) + "\" x2=\"" +
         short_number(left + plot_w) + "\" y2=\"" + short_number(axis_y) +
         "\" stroke=\"#888888\" stroke-width=\"1\"/>\n";
  out += "<text x=\"" + short_number(left + plot_w) + "\" y=\"" + short_number(axis_y + 30) +
         "\" text-anchor=\"end\">time</text>\n";
  out += "</g>\n";

  // Actions.
  out += "<g class=\"actions\" font-size=\"10\" text-anchor=\"middle\">\n";
  for (const TimedAction& t : result.actions) {
    const Rgb fill = shade(kind_colour(t.action.kind), chunk_of(t.action.stage), chunks);
    // An overlapped slot is one slot holding two actions: two half-height boxes stacked in the
    // rank's row over the slot's time, the slot's first action on top.
    const std::optional<Action> partner = overlap_partner(schedule, t);
    const double h = partner ? box_h / 2 : box_h;
    const double x = left + t.start * ppu;
    const double w = (t.end - t.start) * ppu;
    const double y =
        top + row_h * t.rank + 2.0 + (partner && !overlap_first(schedule, t) ? h : 0.0);
    const std::string text = to_string(t.action);
    out += "<rect class=\"action kind-" + std::string(to_string(t.action.kind)) +
           (partner ? " overlapped" : "") + "\" x=\"" + short_number(x) + "\" y=\"" +
           short_number(y) + "\" width=\"" + short_number(w) + "\" height=\"" + short_number(h) +
           "\" rx=\"2\" fill=\"" + hex(fill) +
           "\" stroke=\"#FFFFFF\" stroke-width=\"0.75\"><title>" + text + " on rank " +
           std::to_string(t.rank) + ": " + short_number(t.start) + " to " + short_number(t.end) +
           (partner ? ", overlapped with " + to_string(*partner) : "") + "</title></rect>\n";
    // The microbatch, with the stage as a subscript when the rank runs several stages; left
    // out when the box is too narrow (or, stacked, too low) to hold it.
    const std::string mb = std::to_string(t.action.microbatch);
    const std::string st = chunks > 1 ? std::to_string(t.action.stage) : "";
    const double scale = partner ? 0.8 : 1.0;
    const double need =
        scale * (6.2 * static_cast<double>(mb.size()) + 5.0 * static_cast<double>(st.size())) + 3.0;
    if (w < need || h < 9.0) continue;
    const std::string ink = is_light(fill) ? "#1F1F1F" : "#FFFFFF";
    out += "<text x=\"" + short_number(x + w / 2) + "\" y=\"" +
           short_number(y + h / 2 + 3.5 * scale) + "\" fill=\"" + ink + "\"" +
           (partner ? " font-size=\"8\"" : "") + ">" + mb;
    if (!st.empty())
      out += "<tspan font-size=\"" + std::string(partner ? "6" : "7") + "\" dy=\"" +
             (partner ? "1.5" : "2") + "\">" + st + "</tspan>";
    out += "</text>\n";
  }
  out += "</g>\n";

  if (options.show_legend) {
    out += "<g class=\"legend\" font-size=\"11\" fill=\"#333333\">\n";
    double x = left;
    const double y = legend_y;
    static constexpr std::array<const char*, 4> kNames = {"F forward", "B backward", "I input grad",
                                                          "W weight grad"};
    for (int k = 0; k < 4; ++k) {
      if (!present[k]) continue;
      const auto kind = static_cast<ActionKind>(k);
      for (int c = 0; c < chunks; ++c) {
        out += "<rect class=\"swatch\" x=\"" + short_number(x + 14.0 * c) + "\" y=\"" +
               short_number(y - 10) + "\" width=\"12\" height=\"12\" rx=\"2\" fill=\"" +
               hex(shade(kind_colour(kind), c, chunks)) + "\"/>\n";
      }
      x += 14.0 * chunks + 4.0;
      out += "<text x=\"" + short_number(x) + "\" y=\"" + short_number(y) + "\">" + kNames[k] +
             "</text>\n";
      x += 7.0 * std::strlen(kNames[k]) + 16.0;
    }
    std::string note = chunks > 1 ? "label: microbatch, subscript: stage; lighter: later "
                                    "local stage"
                                  : "label: microbatch";
    if (any_overlap) note += "; stacked half boxes: one overlapped slot";
    out += "<text x=\"" + short_number(x) + "\" y=\"" + short_number(y) + "\" fill=\"#666666\">" +
           note + "</text>\n";
    out += "</g>\n";
  }
  out += "</svg>\n";
  return out;
}

std::string read_file(const std::string& path, std::int64_t max_bytes) {
  PIPETRAIN_CHECK_ARG(max_bytes >= 0, "read_file", "max_bytes=", max_bytes, " must be >= 0");
  // Only regular files: a device (/dev/zero) never ends, a FIFO blocks the open, a directory
  // has no bytes. Checked before opening; a path that does not exist falls through to fopen's
  // own message.
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  if (!ec && std::filesystem::exists(status)) {
    if (!std::filesystem::is_regular_file(status))
      throw Error(detail::message("read_file", "'", path, "' is not a regular file (",
                                  file_type_name(status.type()), ")"));
    const std::uintmax_t size = std::filesystem::file_size(path, ec);
    if (!ec && size > static_cast<std::uintmax_t>(max_bytes))
      throw Error(detail::message("read_file", "'", path, "' has ", size,
                                  " bytes, more than the limit of ", max_bytes));
  }
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file)
    throw Error(detail::message("read_file", "cannot open '", path, "': ", std::strerror(errno)));
  std::string contents;
  std::array<char, 1 << 16> buffer;
  std::size_t got = 0;
  bool too_long = false;
  while ((got = std::fread(buffer.data(), 1, buffer.size(), file)) > 0) {
    // The file may grow after the size check: stop at the limit all the same.
    if (contents.size() + got > static_cast<std::uint64_t>(max_bytes)) {
      too_long = true;
      break;
    }
    contents.append(buffer.data(), got);
  }
  const int error = std::ferror(file) ? errno : 0;
  std::fclose(file);
  if (too_long)
    throw Error(detail::message("read_file", "'", path, "' has more than the limit of ",
                                max_bytes, " bytes"));
  if (error)
    throw Error(detail::message("read_file", "cannot read '", path, "': ", std::strerror(error)));
  return contents;
}

void write_file(const std::string& path, std::string_view contents) {
  std::FILE* file = std::fopen(path.c_str(), "wb");
  if (!file)
    throw Error(detail::message("write_file", "cannot open '", path,
                                "' for writing: ", std::strerror(errno)));
  const std::size_t put = std::fwrite(contents.data(), 1, contents.size(), file);
  int error = put == contents.size() ? 0 : errno;
  if (std::fclose(file) != 0 && error == 0) error = errno;
  if (error)
    throw Error(detail::message("write_file", "cannot write '", path, "': ", std::strerror(error)));
}

}  // namespace pipetrain
