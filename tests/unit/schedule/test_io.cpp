#include "pipetrain/schedule/io.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "text_count.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"
#include "error_of.h"
#include "schedule_rows.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

Schedule make(const std::string& name, int ranks, int per_rank, int microbatches,
              const std::vector<std::string>& rows, Placement placement = Placement::kLoop) {
  EXPECT_EQ(rows.size(), static_cast<std::size_t>(ranks)) << name;
  return testing::schedule_from_rows(name, per_rank, microbatches, rows, placement);
}

using pipetrain::testing::count;

const char* const kParseMessage =
    "' is not an action: expected <stage><kind><microbatch> with kind one of "
    "F B I W SEND_F RECV_F SEND_B RECV_B, e.g. 2F0 or 1SEND_B3";

// ---- CSV ------------------------------------------------------------------------------------

TEST(Csv, ExactTextOfASmallSchedule) {
  const Schedule s = make("gpipe", 2, 1, 2, {"0F0 0F1 . . 0B0 0B1", ". 1F0 1F1 1B0 1B1"});
  EXPECT_EQ(to_csv(s), "0F0,0F1,,,0B0,0B1\n,1F0,1F1,1B0,1B1\n");
}

TEST(Csv, ReadsPyTorchArtifact) {
  // The first cells of PyTorch's test artifact zb1p_2rank_2stagep_compute.csv (loop, v=2).
  const Schedule s = from_csv("0F0,0F1,2F0,,2F1,2B0,2W0\n,1F0,1F1,3F0,3B0,3F1,3B1\n", "zb1p");
  EXPECT_EQ(s.name(), "zb1p");
  EXPECT_EQ(s.num_ranks(), 2);
  EXPECT_EQ(s.stages_per_rank(), 2);
  EXPECT_EQ(s.num_microbatches(), 2);
  EXPECT_EQ(s.placement(), Placement::kLoop);
  ASSERT_EQ(s.rank_slots(0).size(), 7u);
  ASSERT_EQ(s.rank_slots(1).size(), 7u);
  EXPECT_FALSE(s.rank_slots(0)[3].has_value());
  EXPECT_FALSE(s.rank_slots(1)[0].has_value());
  EXPECT_EQ(*s.rank_slots(0)[6], (Action{2, ActionKind::kBackwardWeight, 0}));
  EXPECT_EQ(*s.rank_slots(1)[4], (Action{3, ActionKind::kBackward, 0}));
}

TEST(Csv, RoundTripsComputeOnly) {
  const Schedule s = make("csv", 2, 2, 2,
                          {"0F0 0F1 2F0 . 2F1 2I0 2W0 2I1 2W1 0B0 0B1",
                           ". 1F0 1F1 3F0 3B0 3F1 3B1 1B0 1B1"});
  EXPECT_EQ(from_csv(to_csv(s)), s);
}

TEST(Csv, RoundTripsLoweredSchedule) {
  const Schedule s = make("csv", 2, 1, 1,
                          {"0F0 0SEND_F0 . 0RECV_B0 0B0", "1RECV_F0 1F0 1B0 1SEND_B0"});
  EXPECT_EQ(to_csv(s), "0F0,0SEND_F0,,0RECV_B0,0B0\n1RECV_F0,1F0,1B0,1SEND_B0\n");
  EXPECT_EQ(from_csv(to_csv(s)), s);
}

TEST(Csv, RoundTripsVPlacement) {
  const Schedule s = make("csv", 2, 2, 1, {"0F0 3F0 3B0 0B0", "1F0 2F0 2B0 1B0"}, Placement::kV);
  const Schedule back = from_csv(to_csv(s));
  EXPECT_EQ(back.placement(), Placement::kV);
  EXPECT_EQ(back, s);
}

TEST(Csv, RoundTripsTheVShapeSchedules) {
  // V-Half and V-Min, compute-only and lowered: the shape (P, 2P stages, V placement, M) is
  // recovered from the actions, and the slots come back as they were.
  for (int p : {2, 3, 4, 6, 8}) {
    for (int m : {1, p, 2 * p + 1}) {
      for (const Schedule& s : {v_half(p, m), v_min(p, m)}) {
        SCOPED_TRACE(s.name() + " P=" + std::to_string(p) + " M=" + std::to_string(m));
        const Schedule back = from_csv(to_csv(s), s.name());
        EXPECT_EQ(back.placement(), Placement::kV);
        EXPECT_EQ(back, s);
        const Schedule lowered = lower(s);
        EXPECT_EQ(from_csv(to_csv(lowered), s.name()), lowered);
      }
    }
  }
}

TEST(Csv, RoundTripsEmptyRowsAndASingleIdleSlot) {
  // A rank with no slots is an empty line; a rank with one idle slot is "" as Python writes it.
  Schedule s = make("csv", 3, 1, 1, {"0F0 0B0", "", "2F0 2B0"});
  EXPECT_EQ(to_csv(s), "0F0,0B0\n\n2F0,2B0\n");
  EXPECT_EQ(from_csv(to_csv(s)), s);
  s.append_idle(1);
  EXPECT_EQ(to_csv(s), "0F0,0B0\n\"\"\n2F0,2B0\n");
  EXPECT_EQ(from_csv(to_csv(s)), s);
}

TEST(Csv, AcceptsCrLfSpacesQuotesAndNoFinalNewline) {
  const Schedule expected = make("csv", 2, 1, 1, {"0F0 . 0B0", "1F0 1B0"});
  EXPECT_EQ(from_csv("0F0,,0B0\r\n1F0,1B0\r\n"), expected);
  EXPECT_EQ(from_csv(" 0F0 ,\"\", \"0B0\"\n1F0,1B0"), expected);
}

TEST(Csv, RejectsBadCellsNamingRowAndCell) {
  EXPECT_EQ(error_of([] { from_csv("0F0,0F1\n1F0,1X1,1B0\n"); }),
            std::string("[from_csv] row 2 cell 2: [parse_action] '1X1") + kParseMessage);
  EXPECT_EQ(error_of([] { from_csv("0F0,,,,F3\n"); }),
            std::string("[from_csv] row 1 cell 5: [parse_action] 'F3") + kParseMessage);
  EXPECT_THROW(from_csv("0F0,0F1\n1F0,1X1,1B0\n"), ParseError);
}

TEST(Csv, RejectsShapesThatCannotBeInferred) {
  EXPECT_EQ(error_of([] { from_csv(""); }), "[from_csv] the text has no rows");
  EXPECT_EQ(error_of([] { from_csv(",,\n\n"); }),
            "[from_csv] the text has 2 rows but no actions: the shape cannot be inferred");
  EXPECT_EQ(error_of([] { from_csv("0F0,2F0\n1F0\n"); }),
            "[from_csv] the largest stage 2 gives num_stages=3, which is not a multiple of "
            "num_ranks=2 (one row per rank)");
  EXPECT_EQ(error_of([] { from_csv("0F0,1F0\n2F0,3F0\n"); }),
            "[from_csv] row 1 cell 2: stage 1 is on rank 0 but the loop placement puts it on "
            "rank 1, and row 1 cell 2 holds stage 1 on rank 0 but the V placement puts it on "
            "rank 1");
  EXPECT_EQ(from_csv("0F0,3F0\n1F0,2F0\n").placement(), Placement::kV);
  EXPECT_EQ(error_of([] { from_csv("0F0,3F0,1F1\n1F0,2F0\n"); }),
            "[from_csv] row 1 cell 2: stage 3 is on rank 0 but the loop placement puts it on "
            "rank 1, and row 1 cell 3 holds stage 1 on rank 0 but the V placement puts it on "
            "rank 1");
  EXPECT_EQ(error_of([] { from_csv("0F0,1F0,2F0\n3F0,4F0,5F0\n"); }),
            "[from_csv] row 1 cell 2: stage 1 is on rank 0 but the loop placement puts it on "
            "rank 1, and the V placement needs num_stages=2*num_ranks=4 (got 6)");
  EXPECT_THROW(from_csv(""), ParseError);
}

// ---- Chrome trace ---------------------------------------------------------------------------

TEST(ChromeTrace, ExactEvents) {
  const Schedule s = make("a\"b\\c", 2, 1, 1, {"0F0 0B0", "1F0 1B0"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  EXPECT_EQ(
      to_chrome_trace(s, r, 1000.0),
      "{\"traceEvents\":[\n"
      "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":0,\"tid\":0,"
      "\"args\":{\"name\":\"rank 0\"}},\n"
      "{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":0,\"tid\":0,"
      "\"args\":{\"sort_index\":0}},\n"
      "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":0,\"tid\":0,"
      "\"args\":{\"name\":\"rank 0\"}},\n"
      "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,"
      "\"args\":{\"name\":\"rank 1\"}},\n"
      "{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":0,"
      "\"args\":{\"sort_index\":1}},\n"
      "{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":0,"
      "\"args\":{\"name\":\"rank 1\"}},\n"
      "{\"name\":\"0F0\",\"cat\":\"F\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":0,\"dur\":1000,"
      "\"args\":{\"stage\":0,\"microbatch\":0,\"step\":0}},\n"
      "{\"name\":\"0B0\",\"cat\":\"B\",\"ph\":\"X\",\"pid\":0,\"tid\":0,\"ts\":4000,\"dur\":2000,"
      "\"args\":{\"stage\":0,\"microbatch\":0,\"step\":1}},\n"
      "{\"name\":\"1F0\",\"cat\":\"F\",\"ph\":\"X\",\"pid\":1,\"tid\":0,\"ts\":1000,\"dur\":1000,"
      "\"args\":{\"stage\":1,\"microbatch\":0,\"step\":0}},\n"
      "{\"name\":\"1B0\",\"cat\":\"B\",\"ph\":\"X\",\"pid\":1,\"tid\":0,\"ts\":2000,\"dur\":2000,"
      "\"args\":{\"stage\":1,\"microbatch\":0,\"step\":1}}\n"
      "],\"displayTimeUnit\":\"ms\",\"otherData\":{\"schedule\":\"a\\\"b\\\\c\",\"num_ranks\":2,"
      "\"num_stages\":2,\"num_microbatches\":1,\"makespan\":6,\"bubble_fraction\":0.5}}\n");
}

TEST(ChromeTrace, OverlappedSlotGivesBothEventsTheSlotsTimeAndNamesThePartner) {
  const Schedule s = from_csv("0F0,0F1,(0F2;0B0)OVERLAP_F_B,0B1,0B2\n", "o");
  CostModel costs = CostModel::uniform();
  costs.overlap_overhead = 0.5;
  const std::string trace = to_chrome_trace(s, simulate(s, costs));
  // The slot runs [2, 4.5]: max(F = 1, B = 2) + 0.5.
  EXPECT_NE(trace.find("{\"name\":\"0F2\",\"cat\":\"F\",\"ph\":\"X\",\"pid\":0,\"tid\":0,"
                       "\"ts\":2,\"dur\":2.5,\"args\":{\"stage\":0,\"microbatch\":2,\"step\":2,"
                       "\"overlap\":true,\"partner\":\"0B0\"}}"),
            std::string::npos)
      << trace;
  EXPECT_NE(trace.find("{\"name\":\"0B0\",\"cat\":\"B\",\"ph\":\"X\",\"pid\":0,\"tid\":0,"
                       "\"ts\":2,\"dur\":2.5,\"args\":{\"stage\":0,\"microbatch\":0,\"step\":3,"
                       "\"overlap\":true,\"partner\":\"0F2\"}}"),
            std::string::npos)
      << trace;
  EXPECT_EQ(count(trace, "\"overlap\":true"), 2u);
  // Expanded, nothing is marked.
  const Schedule e = expand_overlap(s);
  EXPECT_EQ(count(to_chrome_trace(e, simulate(e, costs)), "overlap"), 0u);
}

TEST(ChromeTrace, FractionalTimesAndScale) {
  const Schedule s = make("t", 1, 1, 1, {"0F0 0I0 0W0"});
  CostModel c = CostModel::uniform(0.5);
  const std::string trace = to_chrome_trace(s, simulate(s, c), 3.0);
  EXPECT_NE(trace.find("\"name\":\"0I0\",\"cat\":\"I\",\"ph\":\"X\",\"pid\":0,\"tid\":0,"
                       "\"ts\":1.5,\"dur\":1.5"),
            std::string::npos);
  EXPECT_EQ(count(trace, "\"ph\":\"X\""), 3u);
  EXPECT_EQ(count(trace, "\"ph\":\"M\""), 3u);
}

TEST(ChromeTrace, RejectsBadArguments) {
  const Schedule s = make("t", 1, 1, 1, {"0F0 0B0"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  EXPECT_EQ(error_of([&] { to_chrome_trace(s, r, 0.0); }),
            "[to_chrome_trace] time_scale=0 must be finite and > 0");
  SimulationResult other = r;
  other.actions[1].rank = 3;
  EXPECT_EQ(error_of([&] { to_chrome_trace(s, other); }),
            "[to_chrome_trace] result holds 0B0 on rank 3 but the schedule has num_ranks=1");
}

// ---- SVG ------------------------------------------------------------------------------------

// A loose XML check: every tag closes in order, attributes are quoted, no stray '<' or '&'.
std::string xml_problem(const std::string& text) {
  std::vector<std::string> open;
  std::size_t pos = 0;
  while ((pos = text.find_first_of("<&", pos)) != std::string::npos) {
    if (text[pos] == '&') {
      const std::size_t semi = text.find(';', pos);
      const std::string entity = text.substr(pos, semi == std::string::npos ? 8 : semi - pos + 1);
      if (entity != "&amp;" && entity != "&lt;" && entity != "&gt;" && entity != "&quot;" &&
          entity != "&apos;")
        return "bad entity " + entity;
      ++pos;
      continue;
    }
    const std::size_t end = text.find('>', pos);
    if (end == std::string::npos) return "unterminated tag";
    const std::string tag = text.substr(pos + 1, end - pos - 1);
    if (tag.find('<') != std::string::npos) return "'<' inside tag " + tag;
    if (count(tag, "\"") % 2 != 0) return "unbalanced quotes in " + tag;
    if (tag.front() == '/') {
      if (open.empty() || open.back() != tag.substr(1)) return "unexpected </" + tag.substr(1);
      open.pop_back();
    } else if (tag.back() != '/') {
      open.push_back(tag.substr(0, tag.find(' ')));
    }
    pos = end + 1;
  }
  return open.empty() ? "" : "unclosed <" + open.back();
}

TEST(Svg, OneBoxPerActionAndWellFormed) {
  const Schedule s = make("gpipe <2> & co", 2, 1, 2, {"0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  const std::string svg = to_svg(s, r);
  EXPECT_EQ(svg.rfind("<svg xmlns=\"http://www.w3.org/2000/svg\"", 0), 0u);
  EXPECT_EQ(svg.substr(svg.size() - 7), "</svg>\n");
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(count(svg, "<rect class=\"action "), 8u);
  EXPECT_EQ(count(svg, "class=\"action kind-F\""), 4u);
  EXPECT_EQ(count(svg, "class=\"action kind-B\""), 4u);
  EXPECT_EQ(count(svg, "<rect class=\"swatch\""), 2u);  // F and B in the legend
  EXPECT_NE(svg.find(">gpipe &lt;2&gt; &amp; co</text>"), std::string::npos);
  EXPECT_NE(svg.find(">2 ranks, 2 microbatches, makespan 9, bubble 33.33%</text>"),
            std::string::npos);
  EXPECT_NE(svg.find(">rank 1</text>"), std::string::npos);
  // 0B1 runs [7, 9] on rank 0: x = 72 + 7 * 24, y = 52 + 2, 48 wide.
  EXPECT_NE(svg.find("<rect class=\"action kind-B\" x=\"240\" y=\"54\" width=\"48\" "
                     "height=\"24\""),
            std::string::npos);
  // Time axis labels at 0, 2, 4, 6, 8 (24 px per unit, at least 48 px apart).
  for (const char* label : {">0</text>", ">2</text>", ">4</text>", ">6</text>", ">8</text>"})
    EXPECT_NE(svg.find(label), std::string::npos) << label;
}

TEST(Svg, OverlappedSlotIsTwoStackedHalfBoxesOverTheSlotsTime) {
  const Schedule s = from_csv("0F0,0F1,(0F2;0B0)OVERLAP_F_B,0B1,0B2\n", "o");
  CostModel costs = CostModel::uniform();
  costs.overlap_overhead = 0.5;
  const std::string svg = to_svg(s, simulate(s, costs));
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(count(svg, "<rect class=\"action "), 6u);
  EXPECT_EQ(count(svg, " overlapped\""), 2u);
  // The slot runs [2, 4.5]: x = 72 + 2 * 24, 2.5 * 24 wide; half of the 24-pixel box each, 0F2
  // on top, 0B0 below, each labelled with its microbatch.
  EXPECT_NE(svg.find("<rect class=\"action kind-F overlapped\" x=\"120\" y=\"54\" width=\"60\" "
                     "height=\"12\""),
            std::string::npos)
      << svg;
  EXPECT_NE(svg.find("<rect class=\"action kind-B overlapped\" x=\"120\" y=\"66\" width=\"60\" "
                     "height=\"12\""),
            std::string::npos);
  EXPECT_NE(svg.find("<title>0F2 on rank 0: 2 to 4.5, overlapped with 0B0</title>"),
            std::string::npos);
  EXPECT_NE(svg.find("<title>0B0 on rank 0: 2 to 4.5, overlapped with 0F2</title>"),
            std::string::npos);
  EXPECT_NE(svg.find("<text x=\"150\" y=\"62.8\" fill=\"#FFFFFF\" font-size=\"8\">2</text>"),
            std::string::npos);
  EXPECT_NE(svg.find("<text x=\"150\" y=\"74.8\" fill=\"#FFFFFF\" font-size=\"8\">0</text>"),
            std::string::npos);
  EXPECT_NE(svg.find("stacked half boxes: one overlapped slot"), std::string::npos);
  // The other actions are full boxes; expanded, none is stacked.
  EXPECT_NE(svg.find("<rect class=\"action kind-B\" x=\"180\" y=\"54\" width=\"48\" "
                     "height=\"24\""),
            std::string::npos);
  const Schedule e = expand_overlap(s);
  EXPECT_EQ(count(to_svg(e, simulate(e, costs)), "overlapped"), 0u);
}

TEST(Svg, MultiStageRanksShadeAndLabelTheStage) {
  const Schedule s = make("v", 2, 2, 1, {"0F0 3F0 3I0 3W0 0I0 0W0", "1F0 2F0 2I0 2W0 1I0 1W0"},
                          Placement::kV);
  SvgOptions options;
  options.title = "custom title";
  options.show_legend = false;
  const std::string svg = to_svg(s, simulate(s, CostModel::uniform()), options);
  EXPECT_EQ(xml_problem(svg), "");
  EXPECT_EQ(count(svg, "<rect class=\"action "), 12u);
  EXPECT_EQ(count(svg, "<rect class=\"swatch\""), 0u);
  EXPECT_NE(svg.find(">custom title</text>"), std::string::npos);
  EXPECT_NE(svg.find(">2 ranks x 2 stages (v), 1 microbatches"), std::string::npos);
  // Stage 0 (first chunk) and stage 3 (second chunk) of F: two shades of blue.
  EXPECT_NE(svg.find("kind-F\" x=\"72\" y=\"54\" width=\"24\" height=\"24\" rx=\"2\" "
                     "fill=\"#356AC3\""),
            std::string::npos);
  EXPECT_NE(svg.find("fill=\"#A4BCE4\" stroke=\"#FFFFFF\" stroke-width=\"0.75\"><title>3F0"),
            std::string::npos);
  EXPECT_NE(svg.find(">0<tspan font-size=\"7\" dy=\"2\">3</tspan></text>"), std::string::npos);
}

TEST(Svg, RejectsBadOptions) {
  const Schedule s = make("t", 1, 1, 1, {"0F0 0B0"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  SvgOptions options;
  options.pixels_per_time_unit = -1.0;
  EXPECT_EQ(error_of([&] { to_svg(s, r, options); }),
            "[to_svg] pixels_per_time_unit=-1 must be finite and > 0");
  options = SvgOptions{};
  options.row_height = 4.0;
  EXPECT_EQ(error_of([&] { to_svg(s, r, options); }), "[to_svg] row_height=4 must be >= 8");
}

// ---- PyTorch dialects ---------------------------------------------------------------------

std::string action_list(const Schedule& s, int rank) {
  std::string text;
  for (const Action& a : s.rank_actions(rank)) text += (text.empty() ? "" : " ") + to_string(a);
  return text;
}

TEST(Csv, OverlappedForwardBackwardCellBecomesAMarkedPair) {
  // One rank holding both stages of a V: the shape DualPipeV's CSV has, in miniature.
  const std::string text =
      "0F0,1F0,(0F1;1B0)OVERLAP_F_B,1F1,0B0,( 1B1 ; 0F2 )OVERLAP_F_B,1F2,1B2,0B1,0B2\n";
  const Schedule s = from_csv(text, "overlap");
  EXPECT_EQ(s.num_stages(), 2);  // with one rank, the loop and V placements coincide
  // Each cell is two slots, in the cell's order, the first marked.
  EXPECT_EQ(action_list(s, 0), "0F0 1F0 0F1 1B0 1F1 0B0 1B1 0F2 1F2 1B2 0B1 0B2");
  EXPECT_EQ(s.rank_overlaps(0), (std::vector<std::size_t>{2, 6}));
  EXPECT_NE(s.to_grid().find("0F1+ 1B0"), std::string::npos);
  EXPECT_NE(s.to_grid().find("1B1+ 0F2"), std::string::npos);
  // Written back as the same cells, without the spaces.
  EXPECT_EQ(to_csv(s),
            "0F0,1F0,(0F1;1B0)OVERLAP_F_B,1F1,0B0,(1B1;0F2)OVERLAP_F_B,1F2,1B2,0B1,0B2\n");
  EXPECT_EQ(from_csv(to_csv(s), "overlap"), s);
  // The runtime's order: the pairs in sequence, the F of each first.
  const Schedule e = expand_overlap(s);
  EXPECT_FALSE(e.has_overlap());
  EXPECT_EQ(action_list(e, 0), "0F0 1F0 0F1 1B0 1F1 0B0 0F2 1B1 1F2 1B2 0B1 0B2");
  EXPECT_TRUE(validate(e).ok()) << validate(e).format(e);
  EXPECT_EQ(error_of([] { from_csv("0F0,(0F1;1X0)OVERLAP_F_B\n"); }),
            "[from_csv] row 1 cell 2: [parse_action] '1X0' is not an action: expected "
            "<stage><kind><microbatch> with kind one of F B I W SEND_F RECV_F SEND_B RECV_B, e.g. "
            "2F0 or 1SEND_B3");
}

TEST(Csv, OverlappedCellMustBeAForwardAndABackwardOfDifferentMicrobatches) {
  const std::string why =
      "' is not an overlapped slot: expected an F and a B or I of different microbatches";
  EXPECT_EQ(error_of([] { from_csv("0F0,0F1,(0F2;0B2)OVERLAP_F_B\n"); }),
            "[from_csv] row 1 cell 3: '(0F2;0B2)OVERLAP_F_B" + why);
  EXPECT_EQ(error_of([] { from_csv("0F0\n1F0,(1F1;1W0)OVERLAP_F_B\n"); }),
            "[from_csv] row 2 cell 2: '(1F1;1W0)OVERLAP_F_B" + why);
  EXPECT_EQ(error_of([] { from_csv("0F0,(0F1)OVERLAP_F_B\n"); }),
            "[from_csv] row 1 cell 2: '(0F1)OVERLAP_F_B" + why);
  EXPECT_EQ(error_of([] { from_csv("0F0,(0B0;0F1)OVERLAP_F_B,(0F2;0B1;0F3)OVERLAP_F_B\n"); }),
            "[from_csv] row 1 cell 3: '(0F2;0B1;0F3)OVERLAP_F_B' has more than two actions: an "
            "overlapped slot is an F and a B or I of different microbatches");
}

TEST(Csv, RoundTripsOverlappedSlotsWithIdleCellsAndCommunication) {
  // Idle cells around pairs, a pair as the last cell, and communication next to a pair: a
  // schedule written by hand (lower() refuses overlapped slots, see below) reads back equal.
  const std::string text =
      "0F0,0F1,,(0F2;0B0)OVERLAP_F_B,,0B1,0B2\n"
      "1RECV_F0,1F0,1SEND_B0,1RECV_F1,(1F1;1I0)OVERLAP_F_B,1W0,1RECV_F2,1F2,1B1,1B2\n";
  const Schedule s = from_csv(text, "hand");
  EXPECT_EQ(s.rank_overlaps(0), std::vector<std::size_t>{3});
  EXPECT_EQ(s.rank_overlaps(1), std::vector<std::size_t>{4});
  EXPECT_EQ(to_csv(s), text);
  EXPECT_EQ(from_csv(to_csv(s), "hand"), s);
  // A pair at the end of a row, and one that starts the row.
  const Schedule t = from_csv("(0F1;0B0)OVERLAP_F_B,(0F2;0B1)OVERLAP_F_B\n", "ends");
  EXPECT_EQ(t.rank_overlaps(0), (std::vector<std::size_t>{0, 2}));
  EXPECT_EQ(from_csv(to_csv(t), "ends"), t);
}

TEST(Csv, RoundTripsOverlappedDualPipeVAndKeepsMarksThroughStripComm) {
  // From P = 2: with one rank, from_csv reads the V placement as the loop one (they coincide).
  for (int p = 2; p <= 5; ++p) {
    const Schedule s = dualpipe_v(p, 2 * p + 1, DualPipeVOptions{.overlap = true});
    ASSERT_TRUE(s.has_overlap());
    EXPECT_EQ(from_csv(to_csv(s), s.name()), s) << p;
    EXPECT_EQ(count(to_csv(s), ")OVERLAP_F_B"), count(s.to_grid(), "+")) << p;
    // strip_comm() keeps the marks; its CSV reads back equal too.
    const Schedule stripped = strip_comm(s);
    EXPECT_TRUE(stripped.has_overlap());
    EXPECT_EQ(from_csv(to_csv(stripped), s.name()), stripped) << p;
  }
  // lower() needs a schedule a runtime runs: it refuses overlapped slots and names the fix; the
  // expanded schedule lowers, and its CSV has no overlapped cell.
  const Schedule s = dualpipe_v(2, 4, DualPipeVOptions{.overlap = true});
  const std::string why = error_of([&] { lower(s); });
  EXPECT_NE(why.find("run expand_overlap() (passes.h) first"), std::string::npos) << why;
  const Schedule lowered = lower(expand_overlap(s));
  EXPECT_EQ(count(to_csv(lowered), "OVERLAP"), 0);
  EXPECT_EQ(from_csv(to_csv(lowered), s.name()), lowered);
}

TEST(Csv, AMarkOverSlotsRewrittenSinceIsWrittenAsTwoCells) {
  // rank_slots() is writable: a marked pair rewritten into two forwards is no overlapped slot,
  // and a cell "(0F3;0F3)OVERLAP_F_B" would not read back.
  Schedule s = dualpipe_v(2, 4, DualPipeVOptions{.overlap = true});
  ASSERT_FALSE(s.rank_overlaps(0).empty());
  const std::size_t mark = s.rank_overlaps(0).front();
  s.rank_slots(0)[mark + 1] = s.rank_slots(0)[mark];
  const std::string csv = to_csv(s);
  EXPECT_EQ(count(csv, ")OVERLAP_F_B"), count(to_csv(dualpipe_v(2, 4, {.overlap = true})),
                                                  ")OVERLAP_F_B") - 1);
  EXPECT_NO_THROW(from_csv(csv));
}

TEST(Csv, OldPyTorchDialectReadsBAsInputGradientAndBWAsFullBackward) {
  const Schedule s = from_csv("0F0,0F1,,0BW0,,0BW1\n,1F0,1B0,1F1,1B1,1W0,1W1\n", "old");
  EXPECT_EQ(action_list(s, 0), "0F0 0F1 0B0 0B1");
  EXPECT_EQ(action_list(s, 1), "1F0 1I0 1F1 1I1 1W0 1W1");
  EXPECT_TRUE(validate(s).ok()) << validate(s).format(s);
  // Without any "BW" cell, "B" is the full backward of today's PyTorch.
  const Schedule today = from_csv("0F0,,0B0\n,1F0,1B0\n");
  EXPECT_EQ(action_list(today, 1), "1F0 1B0");
}

// ---- files ----------------------------------------------------------------------------------

TEST(Files, WriteThenRead) {
  const std::string path =
      (std::filesystem::temp_directory_path() / "pipetrain_test_io_roundtrip.csv").string();
  const std::string contents = std::string("0F0,,0B0\n") + '\0' + "binary\r\n";
  write_file(path, contents);
  EXPECT_EQ(read_file(path), contents);
  write_file(path, "short");
  EXPECT_EQ(read_file(path), "short");  // truncated, not appended
  std::remove(path.c_str());
}

TEST(Files, ErrorsNameThePathAndTheReason) {
  EXPECT_EQ(error_of([] { read_file("/nonexistent-pipetrain/x.csv"); }),
            "[read_file] cannot open '/nonexistent-pipetrain/x.csv': No such file or directory");
  EXPECT_EQ(error_of([] { write_file("/nonexistent-pipetrain/x.csv", "x"); }),
            "[write_file] cannot open '/nonexistent-pipetrain/x.csv' for writing: No such file "
            "or directory");
  const std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_EQ(error_of([&] { read_file(dir); }),
            "[read_file] '" + dir + "' is not a regular file (a directory)");
  EXPECT_THROW(read_file("/nonexistent-pipetrain/x.csv"), Error);
}

}  // namespace
}  // namespace pipetrain
