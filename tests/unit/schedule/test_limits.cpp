// Resource bounds (issue 10): every size is checked before memory is reserved, every value at
// the boundary, and every report is bounded, whatever the numbers written in an input.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <string>

#include "error_of.h"
#include "text_count.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/io.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;
using L = ScheduleLimits;

using pipetrain::testing::count;

// ---- sizes ----------------------------------------------------------------------------------

TEST(Limits, CheckScheduleSizeNamesTheValueAndTheLimit) {
  EXPECT_NO_THROW(check_schedule_size("f", L::kMaxRanks, 1, L::kMaxWork / L::kMaxRanks));
  EXPECT_EQ(error_of<InvalidArgument>([] { check_schedule_size("train_gpt", 65536, 1, 4); }),
            "[train_gpt] num_ranks=65536 must be <= 1024 (ScheduleLimits::kMaxRanks)");
  EXPECT_EQ(error_of<InvalidArgument>([] { check_schedule_size("f", 4, 2000, 4); }),
            "[f] num_stages=num_ranks*stages_per_rank=4*2000=8000 must be <= 4096 "
            "(ScheduleLimits::kMaxStages)");
  EXPECT_EQ(error_of<InvalidArgument>([] { check_schedule_size("f", 4, 1, 1000000000); }),
            "[f] num_microbatches=1000000000 must be <= 524288 "
            "(ScheduleLimits::kMaxMicrobatches)");
  EXPECT_EQ(error_of<InvalidArgument>([] { check_schedule_size("f", 64, 2, 10000); }),
            "[f] num_stages*num_microbatches=128*10000=1280000 must be <= 524288 "
            "(ScheduleLimits::kMaxWork)");
  // 64-bit arguments: values an int cannot hold are checked, not wrapped.
  EXPECT_EQ(error_of<InvalidArgument>(
                [] { check_schedule_size("f", std::int64_t{1} << 40, 1 << 30, 1); }),
            "[f] num_ranks=1099511627776 must be <= 1024 (ScheduleLimits::kMaxRanks)");
}

TEST(Limits, GeneratorsCheckBeforeTheyAllocate) {
  // Each of these used to allocate gigabytes (or end in std::bad_alloc) before any check.
  EXPECT_EQ(error_of<InvalidArgument>([] { make_schedule("1f1b", 100000, 8); }),
            "[one_f_one_b] num_ranks=100000 must be <= 1024 (ScheduleLimits::kMaxRanks)");
  EXPECT_EQ(error_of<InvalidArgument>([] { make_schedule("gpipe", 4, 1000000000); }),
            "[gpipe] num_microbatches=1000000000 must be <= 524288 "
            "(ScheduleLimits::kMaxMicrobatches)");
  EXPECT_EQ(error_of<InvalidArgument>([] { make_schedule("zb-v", 1024, 1024); }),
            "[zb_v] num_stages*num_microbatches=2048*1024=2097152 must be <= 524288 "
            "(ScheduleLimits::kMaxWork)");
  EXPECT_EQ(error_of<InvalidArgument>([] { make_schedule("looped-bfs", 4, 4, 100000); }),
            "[looped_bfs] stages_per_rank=100000 must be <= 4096 (ScheduleLimits::kMaxStages)");
  EXPECT_EQ(error_of<InvalidArgument>([] { make_schedule("1f1b", 65536, 4); }),
            "[one_f_one_b] num_ranks=65536 must be <= 1024 (ScheduleLimits::kMaxRanks)");
}

TEST(Limits, ScheduleConstructorCannotOverflowNumStages) {
  EXPECT_EQ(error_of<InvalidArgument>([] { Schedule("x", 2, 1073741824, 1); }),
            "[Schedule] num_stages=num_ranks*stages_per_rank=2*1073741824=2147483648 must be "
            "<= 4096 (ScheduleLimits::kMaxStages)");
  EXPECT_EQ(error_of<InvalidArgument>([] { Schedule("x", 5000, 1, 1); }),
            "[Schedule] num_ranks=5000 must be <= 1024 (ScheduleLimits::kMaxRanks)");
}

// ---- CSV ------------------------------------------------------------------------------------

TEST(Limits, CsvNumbersBeyondTheLimitsAreRefused) {
  // 11 bytes that used to reach 14.5 GB.
  EXPECT_EQ(error_of<ParseError>([] { from_csv("2147483646F0"); }),
            "[from_csv] the largest stage 2147483646 gives num_stages=2147483647, more than 4096 "
            "(ScheduleLimits::kMaxStages)");
  // num_stages() used to overflow (std::length_error, UBSan: signed integer overflow).
  EXPECT_EQ(error_of<ParseError>([] { from_csv("0F0\n2147483647F0"); }),
            "[from_csv] the largest stage 2147483647 gives num_stages=2147483648, more than 4096 "
            "(ScheduleLimits::kMaxStages)");
  EXPECT_EQ(error_of<ParseError>([] { from_csv("0F2147483647"); }),
            "[from_csv] the largest microbatch 2147483647 gives num_microbatches=2147483648, "
            "more than 524288 (ScheduleLimits::kMaxMicrobatches)");
}

TEST(Limits, CsvShapeMustMatchTheNumberOfActions) {
  // A few bytes that name many (stage, microbatch) pairs used to print one violation per pair
  // (10000000F0: 1.2 GB of them).
  EXPECT_EQ(error_of<ParseError>([] { from_csv("0F99999"); }),
            "[from_csv] the largest stage 0 and microbatch 99999 give "
            "num_stages*num_microbatches=1*100000=100000 (stage, microbatch) pairs, but the "
            "text holds 1 compute actions: expected at most max(compute actions, 4096), and at "
            "most 524288 (ScheduleLimits::kMaxWork)");
  EXPECT_THROW(from_csv("0F4096"), ParseError);
  // Small shapes and texts with some actions missing are still read (validate() lists them).
  EXPECT_EQ(from_csv("0F4095").num_microbatches(), 4096);
  EXPECT_EQ(from_csv("0F0,0F1,0B0").num_microbatches(), 2);
}

TEST(Limits, CsvRowsAreBounded) {
  std::string text;
  for (int r = 0; r <= L::kMaxRanks; ++r) text += "0F0\n";
  EXPECT_EQ(error_of<ParseError>([&] { from_csv(text); }),
            "[from_csv] the text has more than 1024 rows (one per rank; "
            "ScheduleLimits::kMaxRanks)");
}

TEST(Limits, OldDialectScanIsLinear) {
  // A long line of "BW" used to take quadratic time in the dialect detection.
  const std::string text(4 << 20, 'B');
  std::string bw;
  bw.reserve(4 << 20);
  while (bw.size() < (4u << 20)) bw += "BW";
  const auto start = std::chrono::steady_clock::now();
  EXPECT_THROW(from_csv(bw), ParseError);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // The dialect is still recognised.
  EXPECT_EQ(from_csv("0F0, 0BW0 \n").rank_actions(0)[1].kind, ActionKind::kBackward);
  // Inside an overlapped cell too.
  EXPECT_EQ(from_csv("0F0,(0F1;0BW0)OVERLAP_F_B,0B1").rank_actions(0)[2].kind,
            ActionKind::kBackward);
  EXPECT_EQ(from_csv("0F0,(0F1;0BW0)OVERLAP_F_B,0B1").rank_actions(0)[3].kind,
            ActionKind::kBackwardInput);
}

// ---- reports --------------------------------------------------------------------------------

TEST(Limits, ValidationReportKeepsABoundedNumberPerRule) {
  // One rank, 20000 duplicates of 0F0 (a 80 KB line): one completeness violation each.
  std::string line = "0F0";
  for (int i = 0; i < 20000; ++i) line += ",0F0";
  line += ",0B0";
  const Schedule s = from_csv(line);
  const ValidationReport report = validate(s);
  EXPECT_EQ(report.violations.size(), ValidationReport::kMaxPerRule);
  EXPECT_EQ(report.num_found(), 20000u);
  const std::string text = report.format(s);
  EXPECT_EQ(count(text, "appears twice"), ValidationReport::kMaxListed);
  EXPECT_NE(text.find("... and 19950 more violations\n"), std::string::npos) << text;
  // The grid is a window around the first faulty cell, not 20002 columns.
  EXPECT_NE(text.find("showing ranks 0..0 of 1, steps 0..23 of 20002\n"), std::string::npos)
      << text;
  EXPECT_LT(text.size(), 20000u);
  EXPECT_EQ(error_of<ScheduleError>([&] { validate_or_throw(s); }).substr(0, 64),
            "[validate_or_throw] schedule 'csv' has 20000 violations:\ncomplet");
}

TEST(Limits, ValidateRefusesHugeShapesWithOneViolation) {
  // The Schedule constructor allows any microbatch count (a file may name a large one); validate
  // does not walk a billion (stage, microbatch) pairs.
  Schedule s("sparse", 2, 1, 1000000000);
  s.append(0, Action{0, ActionKind::kForward, 999999999});
  const ValidationReport report = validate(s);
  ASSERT_EQ(report.violations.size(), 1u);
  EXPECT_EQ(report.violations[0].rule, Violation::Rule::kRange);
  EXPECT_EQ(report.violations[0].message,
            "num_stages*num_microbatches=2*1000000000=2000000000 is more than 524288 "
            "(ScheduleLimits::kMaxWork): the schedule was not checked");
}

TEST(Limits, FormatWindowFollowsTheFirstFaultyCell) {
  Schedule s = make_schedule("gpipe", 8, 512);  // 8 x ~1038 cells
  s.rank_slots(5)[700] = Action{5, ActionKind::kForward, 0};  // a duplicate
  const ValidationReport report = validate(s);
  ASSERT_FALSE(report.ok());
  const std::string text = report.format(s);
  EXPECT_NE(text.find("showing ranks 0..7 of 8, steps 688..711 of "), std::string::npos) << text;
  EXPECT_NE(text.find("[5F0]!"), std::string::npos) << text;
}

// ---- values ---------------------------------------------------------------------------------

TEST(Limits, CostsMustBeFiniteAndNonNegative) {
  const Schedule s = lower(make_schedule("1f1b", 2, 2));
  CostModel costs = CostModel::uniform();
  costs.latency = -5;  // used to give a makespan below the zero-latency one
  EXPECT_EQ(error_of<InvalidArgument>([&] { simulate(s, costs); }),
            "[simulate] costs.latency=-5 must be finite and >= 0");
  costs = CostModel::uniform();
  costs.forward = std::nan("");
  EXPECT_EQ(error_of<InvalidArgument>([&] { simulate(s, costs); }),
            "[simulate] costs.forward=nan must be finite and >= 0");
  costs = CostModel::uniform();
  costs.backward = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of<InvalidArgument>([&] { simulate(s, costs); }),
            "[simulate] costs.backward=inf must be finite and >= 0");
  costs = CostModel::uniform();
  costs.backward_weight_per_stage = {1.0, -1.0};
  EXPECT_EQ(error_of<InvalidArgument>([&] { simulate(s, costs); }),
            "[simulate] costs.backward_weight_per_stage[1]=-1 must be finite and >= 0");
  costs = CostModel::uniform();
  costs.bandwidth = 0.0;
  EXPECT_EQ(error_of<InvalidArgument>([&] { simulate(s, costs); }),
            "[simulate] costs.bandwidth=0 must be > 0 (infinity: free)");
  costs = CostModel::uniform();
  costs.bytes_per_transfer = 1e6;  // with infinite bandwidth: free
  EXPECT_NO_THROW(simulate(s, costs));
}

TEST(Limits, SvgAxisIsBoundedForAnyFiniteMakespan) {
  const Schedule s = make_schedule("1f1b", 2, 2);
  CostModel costs = CostModel::uniform();
  costs.forward = 1e300;  // the axis used to add ticks without end
  const SimulationResult result = simulate(s, costs);
  ASSERT_TRUE(std::isfinite(result.makespan));
  const std::string svg = to_svg(s, result);
  EXPECT_LE(count(svg, "text-anchor=\"middle\">"), 202u);
  EXPECT_LT(svg.size(), 200000u);
  SimulationResult broken = result;
  broken.makespan = std::numeric_limits<double>::infinity();
  EXPECT_EQ(error_of<InvalidArgument>([&] { to_svg(s, broken); }),
            "[to_svg] result.makespan=inf must be finite and >= 0");
  // Tiny pixel scales draw no axis rather than loop.
  SvgOptions options;
  options.pixels_per_time_unit = 1e-320;
  EXPECT_NO_THROW(to_svg(s, simulate(s, CostModel::uniform()), options));
}

// ---- files ----------------------------------------------------------------------------------

TEST(Limits, ReadFileRefusesWhatIsNotARegularFile) {
  // /dev/zero used to be read until memory ran out.
  EXPECT_EQ(error_of<Error>([] { read_file("/dev/zero"); }),
            "[read_file] '/dev/zero' is not a regular file (a character device)");
  const std::string dir = std::filesystem::temp_directory_path().string();
  EXPECT_EQ(error_of<Error>([&] { read_file(dir); }),
            "[read_file] '" + dir + "' is not a regular file (a directory)");
  const std::string fifo =
      (std::filesystem::temp_directory_path() /
       ("pipetrain_test_limits_fifo." + std::to_string(getpid()))).string();
  std::remove(fifo.c_str());
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  // Opening a FIFO without a writer would block: refused before the open.
  EXPECT_EQ(error_of<Error>([&] { read_file(fifo); }),
            "[read_file] '" + fifo + "' is not a regular file (a FIFO)");
  std::remove(fifo.c_str());
}

TEST(Limits, ReadFileCapsTheSize) {
  const std::string path =
      (std::filesystem::temp_directory_path() /
       ("pipetrain_test_limits_size." + std::to_string(getpid()) + ".csv")).string();
  write_file(path, std::string(1000, 'x'));
  EXPECT_EQ(read_file(path, 1000).size(), 1000u);
  EXPECT_EQ(error_of<Error>([&] { read_file(path, 999); }),
            "[read_file] '" + path + "' has 1000 bytes, more than the limit of 999");
  std::remove(path.c_str());
}

}  // namespace
}  // namespace pipetrain
