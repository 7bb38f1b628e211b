#include "pipetrain/build_info.h"

#include <gtest/gtest.h>

#include "pipetrain/error.h"

namespace pipetrain {
namespace {

TEST(BuildInfo, MissingPartNamesTheCMakeOption) {
  for (Part part : {Part::kCuda, Part::kNccl, Part::kMpi}) {
    if (is_built_with(part)) {
      EXPECT_NO_THROW(require(part, "test"));
      continue;
    }
    try {
      require(part, "make_transport");
      ADD_FAILURE() << "no exception for " << to_string(part);
    } catch (const NotBuiltError& e) {
      const std::string name(to_string(part));
      EXPECT_EQ(std::string(e.what()), "[make_transport] pipetrain was built without " + name +
                                           ": reconfigure with -DPIPETRAIN_WITH_" + name +
                                           "=ON (and install it)");
    }
  }
}

TEST(BuildInfo, SummaryListsEveryPart) {
  const std::string summary = build_summary();
  EXPECT_NE(summary.find("CUDA"), std::string::npos);
  EXPECT_NE(summary.find("NCCL"), std::string::npos);
  EXPECT_NE(summary.find("MPI"), std::string::npos);
  EXPECT_EQ(summary.rfind("pipetrain " + version(), 0), 0u);
}

}  // namespace
}  // namespace pipetrain
