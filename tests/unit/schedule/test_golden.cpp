// Golden text grids (Schedule::to_grid()) of small cases of every schedule, in tests/golden.
// Set PIPETRAIN_UPDATE_GOLDEN=1 to rewrite the files from the current generators instead of
// comparing; review the diff before committing it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <ostream>
#include <string>
#include <vector>

#include "pipetrain/schedule/generators.h"

namespace pipetrain {
namespace {

struct GoldenCase {
  std::string name;
  int num_ranks;
  int num_microbatches;
  int stages_per_rank;
};

// Printed by value rather than as bytes, so that the CTest names stay the same across builds.
void PrintTo(const GoldenCase& c, std::ostream* out) {
  *out << c.name << " P=" << c.num_ranks << " M=" << c.num_microbatches
       << " v=" << c.stages_per_rank;
}

std::string file_name(const GoldenCase& c) {
  std::string name = c.name + "_p" + std::to_string(c.num_ranks) + "_m" +
                     std::to_string(c.num_microbatches);
  if (takes_stages_per_rank(c.name)) name += "_v" + std::to_string(c.stages_per_rank);
  return std::string(PIPETRAIN_GOLDEN_DIR) + "/" + name + ".txt";
}

bool update_mode() {
  const char* value = std::getenv("PIPETRAIN_UPDATE_GOLDEN");
  return value != nullptr && std::string(value) == "1";
}

class Golden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(Golden, MatchesFile) {
  const GoldenCase& c = GetParam();
  const std::string grid =
      make_schedule(c.name, c.num_ranks, c.num_microbatches, c.stages_per_rank).to_grid();
  const std::string path = file_name(c);
  if (update_mode()) {
    std::ofstream out(path, std::ios::binary);
    ASSERT_TRUE(out) << "cannot write " << path;
    out << grid;
    GTEST_SKIP() << "rewrote " << path;
  }
  std::ifstream in(path, std::ios::binary);
  ASSERT_TRUE(in) << "missing golden file " << path
                  << " (run with PIPETRAIN_UPDATE_GOLDEN=1 to create it)";
  std::ostringstream text;
  text << in.rdbuf();
  EXPECT_EQ(grid, text.str()) << "golden file " << path
                              << " differs; PIPETRAIN_UPDATE_GOLDEN=1 rewrites it";
}

const std::vector<GoldenCase> kCases = {
    {"gpipe", 4, 8, 1},           {"1f1b", 4, 8, 1},           {"1f1b", 4, 2, 1},
    {"interleaved-1f1b", 2, 4, 2}, {"interleaved-1f1b", 4, 8, 2}, {"interleaved-1f1b", 2, 3, 2},
    {"looped-bfs", 2, 4, 2},      {"zb-h1", 4, 8, 1},          {"zb-h2", 4, 8, 1},
    {"zb-v", 4, 8, 1},            {"dualpipe-v", 4, 8, 1},     {"dualpipe-v", 2, 4, 1},
    {"v-half", 4, 8, 1},          {"v-min", 4, 8, 1},
};

INSTANTIATE_TEST_SUITE_P(AllSchedules, Golden, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) {
                           std::string name = file_name(info.param);
                           name = name.substr(name.rfind('/') + 1);
                           name = name.substr(0, name.size() - 4);
                           for (char& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

}  // namespace
}  // namespace pipetrain
