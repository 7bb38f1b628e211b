// Every generator, over a table of sizes: the schedule validates, lowers to a valid schedule
// with communication, lowering keeps the compute order, and merging the backward keeps it valid.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {
namespace {

std::string spec(const std::string& name, int p, int m, int v) {
  return name + " P=" + std::to_string(p) + " M=" + std::to_string(m) + " v=" + std::to_string(v);
}

TEST(AllGenerators, ValidateLowerStripMerge) {
  int built = 0, rejected = 0, failures = 0;
  for (const std::string& name : schedule_names()) {
    const int max_v = takes_stages_per_rank(name) ? 3 : 1;
    for (int p = 1; p <= 8; ++p) {
      for (int m = 1; m <= 4 * p; ++m) {
        for (int v = 1; v <= max_v; ++v) {
          if (failures > 5) GTEST_FAIL() << "stopping after " << failures << " failing specs";
          SCOPED_TRACE(spec(name, p, m, v));
          const int before =
              ::testing::UnitTest::GetInstance()->current_test_info()->result()->total_part_count();
          try {
            const Schedule s = make_schedule(name, p, m, v);
            ++built;
            EXPECT_FALSE(s.has_comm());
            const ValidationReport report = validate(s);
            ASSERT_TRUE(report.ok()) << report.format(s);

            const Schedule lowered = lower(s);
            const ValidationReport lowered_report = validate(lowered);
            EXPECT_TRUE(lowered_report.ok()) << lowered_report.format(lowered);
            EXPECT_EQ(lowered.has_comm(), p > 1) << lowered.to_grid();
            EXPECT_EQ(lowered.name(), s.name());
            EXPECT_EQ(lowered.num_ranks(), s.num_ranks());
            EXPECT_EQ(lowered.stages_per_rank(), s.stages_per_rank());
            EXPECT_EQ(lowered.num_microbatches(), s.num_microbatches());
            EXPECT_EQ(lowered.placement(), s.placement());

            const Schedule stripped = strip_comm(lowered);
            for (int r = 0; r < p; ++r)
              EXPECT_EQ(stripped.rank_actions(r), s.rank_actions(r)) << "rank " << r;

            const Schedule merged = merge_backward(lowered);
            const ValidationReport merged_report = validate(merged);
            EXPECT_TRUE(merged_report.ok()) << merged_report.format(merged);
            EXPECT_FALSE(merged.has_split_backward());
          } catch (const InvalidArgument& e) {
            ++rejected;
            EXPECT_EQ(std::string(e.what()).rfind('[', 0), 0u) << e.what();
          }
          if (::testing::UnitTest::GetInstance()
                  ->current_test_info()
                  ->result()
                  ->total_part_count() > before)
            ++failures;
        }
      }
    }
  }
  EXPECT_GT(built, 0);
  RecordProperty("built", built);
  RecordProperty("rejected", rejected);
  std::printf("built %d schedules, %d specs rejected with InvalidArgument\n", built, rejected);
}

}  // namespace
}  // namespace pipetrain
