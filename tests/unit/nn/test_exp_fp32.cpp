// Accuracy of the fp32 exponential behind the softmaxes (attention and cross-entropy), through
// the clone the library dispatches to on this CPU: lanes::exp_sum(p, z, 0, n) writes
// p[k] = exp(z[k]) for z[k] <= 0 and returns their sum.
//
// Errors are in ulps of the exact result rounded to fp32 (std::exp in long double), with the
// ulp of a denormal (2^-149) as the smallest ulp. Over every fp32 input from -0 down to -104
// (1.12e9 of them: ExpFp32.DISABLED_EveryInput, run with --gtest_also_run_disabled_tests, about
// 20 s) the largest errors are 1.218 ulp (normal results, at x = -59.9542465) and 0.777
// denormal ulp below them; asserted 1.25 and 0.8, which a sample can never exceed, and which a
// coefficient 1/4000 in place of 1/5040 already does.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../../src/kernels/cpu/lanes.h"
#include "../../support/test_seed.h"

namespace {

using pipetrain::kernels::cpu::lanes::exp_sum;
using LD = long double;

constexpr double kNormalUlps = 1.25;
constexpr double kDenormalUlps = 0.8;

double ulps(float y, LD exact) {
  const int e = std::ilogb(static_cast<float>(exact));
  const double ulp = std::ldexp(1.0, std::max(e, -126) - 23);
  return static_cast<double>(std::fabs(static_cast<LD>(y) - exact)) / ulp;
}

// The largest errors seen, for normal and for denormal results, and where; checked and printed.
struct Worst {
  double normal = 0.0, denormal = 0.0;
  float normal_at = 0.0f, denormal_at = 0.0f;

  void see(float z, float p, LD exact) {
    const double e = ulps(p, exact);
    if (exact >= std::numeric_limits<float>::min()) {
      if (e > normal) normal = e, normal_at = z;
    } else if (e > denormal) {
      denormal = e, denormal_at = z;
    }
  }

  void expect_within_bounds(const char* what) const {
    std::printf(
        "exp_nonpositive, %s: max %.4f ulp (normal results, at z = %.9g), %.4f denormal ulp "
        "(at z = %.9g)\n",
        what, normal, normal_at, denormal, denormal_at);
    EXPECT_LE(normal, kNormalUlps) << "at z = " << normal_at;
    EXPECT_LE(denormal, kDenormalUlps) << "at z = " << denormal_at;
  }
};

TEST(ExpFp32, WithinAnUlpAndAQuarterOfExactOverTheWholeRange) {
  const unsigned seed = pipetrain::testing::test_seed();
  SCOPED_TRACE(pipetrain::testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  std::vector<float> z = {
      0.0f,         -0.0f,        -1e-30f,     -std::numeric_limits<float>::denorm_min(),
      -0.34657359f, -0.34657362f, -0.6931472f, -1.0f,
      -87.33654f,   -87.33655f,   -88.0f,      -100.0f,
      -103.27893f,  -103.97207f,  -103.99f};
  std::uniform_real_distribution<float> near(-104.0f, 0.0f);
  for (int i = 0; i < (1 << 21); ++i) z.push_back(near(rng));
  std::uniform_real_distribution<float> small(-1.0f, 0.0f);
  for (int i = 0; i < (1 << 20); ++i) z.push_back(small(rng));
  for (int i = 0; i < (1 << 20); ++i) {  // every exponent equally likely
    const float v = -std::fabs(std::bit_cast<float>(static_cast<std::uint32_t>(rng())));
    if (v >= -104.0f) z.push_back(v);
  }
  // Rows of every length up to 40 as well as the whole vector: the vector loops and their
  // remainders.
  std::vector<float> p(z.size());
  for (std::size_t at = 0, len = 1; at < 4096; at += len, len = len % 40 + 1)
    exp_sum(p.data() + at, z.data() + at, 0.0f, static_cast<std::int64_t>(len));
  std::vector<float> tail(p.begin(), p.begin() + 4096);
  exp_sum(p.data(), z.data(), 0.0f, static_cast<std::int64_t>(z.size()));
  for (std::size_t i = 0; i < tail.size(); ++i)
    ASSERT_EQ(std::bit_cast<std::uint32_t>(tail[i]), std::bit_cast<std::uint32_t>(p[i]))
        << "short rows and one long row differ at " << i;

  Worst worst;
  for (std::size_t i = 0; i < z.size(); ++i) worst.see(z[i], p[i], std::exp(static_cast<LD>(z[i])));
  worst.expect_within_bounds((std::to_string(z.size()) + " sampled inputs").c_str());
}

// Every fp32 input in [-104, -0]: what the bounds above come from. Against std::exp in double,
// whose own error is far below an fp32 ulp.
TEST(ExpFp32, DISABLED_EveryInput) {
  constexpr std::uint32_t kFirst = 0x80000000u;  // -0; larger patterns are more negative
  const std::uint32_t last = std::bit_cast<std::uint32_t>(-104.0f);
  constexpr std::uint32_t kBatch = 1u << 20;
  std::vector<float> z(kBatch), p(kBatch);
  Worst worst;
  for (std::uint64_t first = kFirst; first <= last; first += kBatch) {
    const auto n = static_cast<std::uint32_t>(std::min<std::uint64_t>(kBatch, last - first + 1));
    for (std::uint32_t i = 0; i < n; ++i)
      z[i] = std::bit_cast<float>(static_cast<std::uint32_t>(first + i));
    exp_sum(p.data(), z.data(), 0.0f, n);
    for (std::uint32_t i = 0; i < n; ++i)
      worst.see(z[i], p[i], std::exp(static_cast<double>(z[i])));
  }
  worst.expect_within_bounds("every input in [-104, -0]");
}

TEST(ExpFp32, SpecialValuesAndTheSum) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float z[6] = {0.0f, -inf, -104.0f, -1000.0f, nan, -0.0f};
  float p[6];
  const float sum = exp_sum(p, z, 0.0f, 6);
  EXPECT_EQ(p[0], 1.0f);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p[1]), 0u);  // +0
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p[2]), 0u);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(p[3]), 0u);
  EXPECT_TRUE(std::isnan(p[4]));
  EXPECT_EQ(p[5], 1.0f);
  EXPECT_TRUE(std::isnan(sum));
  // Where exp rounds to the smallest denormal, then to zero: exp(-103.9) = 7.53e-46, above half
  // of 2^-149 (7.006e-46), so 2^-149; exp(-103.98) = 6.95e-46, below it, so +0.
  const float edge[2] = {-103.9f, -103.98f};
  float pe[2];
  exp_sum(pe, edge, 0.0f, 2);
  EXPECT_EQ(pe[0], std::numeric_limits<float>::denorm_min());
  EXPECT_EQ(std::bit_cast<std::uint32_t>(pe[1]), 0u);
  // zmax is subtracted first: exp(z - zmax).
  const float z2[3] = {5.0f, 4.0f, 5.0f};
  float p2[3];
  const float s2 = exp_sum(p2, z2, 5.0f, 3);
  EXPECT_EQ(p2[0], 1.0f);
  EXPECT_NEAR(p2[1], std::exp(-1.0), 2e-7 * std::exp(-1.0));
  EXPECT_EQ(s2, (p2[0] + p2[2]) + p2[1]);  // lanes 0 and 2, then lane 1 (lanes.h)
}

}  // namespace
