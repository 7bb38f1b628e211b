// Test helper: fresh random inputs every run, repeatable on demand. test_seed() is a new seed
// from std::random_device, or, with PIPETRAIN_TEST_SEED=<n> set, n mixed with the running
// test's name (so that tests draw different inputs). Print seed_trace(seed) on failure, e.g.
//   const unsigned seed = testing::test_seed();
//   SCOPED_TRACE(testing::seed_trace(seed));
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <random>
#include <string>

namespace pipetrain::testing {

inline unsigned test_seed() {
  const char* fixed = std::getenv("PIPETRAIN_TEST_SEED");
  if (fixed == nullptr || *fixed == '\0') return std::random_device{}();
  unsigned seed = static_cast<unsigned>(std::strtoul(fixed, nullptr, 10));
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::string name =
      info == nullptr ? std::string() : std::string(info->test_suite_name()) + "." + info->name();
  for (const char c : name) seed = seed * 31u + static_cast<unsigned char>(c);
  return seed;
}

/// "seed 1234 (PIPETRAIN_TEST_SEED=unset)".
inline std::string seed_trace(unsigned seed) {
  const char* fixed = std::getenv("PIPETRAIN_TEST_SEED");
  return "seed " + std::to_string(seed) +
         " (PIPETRAIN_TEST_SEED=" + (fixed != nullptr ? fixed : "unset") + ")";
}

}  // namespace pipetrain::testing
