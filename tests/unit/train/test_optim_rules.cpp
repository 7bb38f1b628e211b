#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/optim/lr_schedule.h"
#include "pipetrain/optim/update_rules.h"

namespace pipetrain::optim {
namespace {

// Two AdamW steps on w = [1, -2, 0.5], worked by hand.
// lr = 0.1, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.1.
//
// Step 1, g = [0.5, -1, 0]:
//   m = 0.1 g = [0.05, -0.1, 0]        v = 0.001 g^2 = [0.00025, 0.001, 0]
//   m_hat = m / 0.1 = g                 v_hat = v / 0.001 = g^2
//   m_hat / (sqrt(v_hat) + eps) = [0.5/(0.5+1e-8), -1/(1+1e-8), 0] = [0.99999998, -0.99999999, 0]
//   w = w - 0.1 * (that + 0.1 w)
//     = [1 - 0.1*(0.99999998 + 0.1), -2 - 0.1*(-0.99999999 - 0.2), 0.5 - 0.1*(0 + 0.05)]
//     = [0.890000002, -1.880000001, 0.495]
// Step 2, g = [0.1, 0.2, -0.3]:
//   m = 0.9 m + 0.1 g = [0.055, -0.07, -0.03]
//   v = 0.999 v + 0.001 g^2 = [0.00025975, 0.001039, 0.00009]
//   m_hat = m / (1 - 0.9^2 = 0.19) = [0.289473684, -0.368421053, -0.157894737]
//   v_hat = v / (1 - 0.999^2 = 0.001999) = [0.129939970, 0.519759880, 0.045022511]
//   sqrt(v_hat) = [0.360471871, 0.720944990, 0.212185087]
//   m_hat / (sqrt(v_hat) + eps) = [0.803040956, -0.511026070, -0.744136788]
//   w = w - 0.1 * (that + 0.1 w)
//     = [0.890000002 - 0.1*(0.803040956 + 0.089000000),
//        -1.880000001 - 0.1*(-0.511026070 - 0.188000000),
//        0.495 - 0.1*(-0.744136788 + 0.0495)]
//     = [0.800795906, -1.810097394, 0.564463679]
TEST(AdamWUpdate, TwoStepsByHand) {
  const AdamWConfig config{0.9, 0.999, 1e-8, 0.1};
  std::vector<float> w = {1.0f, -2.0f, 0.5f}, m(3, 0.0f), v(3, 0.0f);
  std::vector<float> g1 = {0.5f, -1.0f, 0.0f}, g2 = {0.1f, 0.2f, -0.3f};

  adamw_update(w, g1, m, v, config, 0.1, 1, /*decay=*/true);
  EXPECT_NEAR(m[0], 0.05, 1e-7);
  EXPECT_NEAR(m[1], -0.1, 1e-7);
  EXPECT_NEAR(v[0], 0.00025, 1e-10);
  EXPECT_NEAR(v[1], 0.001, 1e-9);
  EXPECT_NEAR(w[0], 0.890000002, 1e-6);
  EXPECT_NEAR(w[1], -1.880000001, 1e-6);
  EXPECT_NEAR(w[2], 0.495, 1e-6);

  adamw_update(w, g2, m, v, config, 0.1, 2, /*decay=*/true);
  EXPECT_NEAR(m[0], 0.055, 1e-7);
  EXPECT_NEAR(m[1], -0.07, 1e-7);
  EXPECT_NEAR(m[2], -0.03, 1e-7);
  EXPECT_NEAR(v[0], 0.00025975, 1e-9);
  EXPECT_NEAR(v[1], 0.001039, 1e-9);
  EXPECT_NEAR(v[2], 0.00009, 1e-10);
  EXPECT_NEAR(w[0], 0.800795906, 2e-6);
  EXPECT_NEAR(w[1], -1.810097394, 2e-6);
  EXPECT_NEAR(w[2], 0.564463679, 2e-6);
}

TEST(AdamWUpdate, NoDecayWhenFlagIsOff) {
  // With a zero gradient, only weight decay can move a weight.
  const AdamWConfig config{0.9, 0.999, 1e-8, 0.5};
  std::vector<float> w = {2.0f, -4.0f}, g = {0.0f, 0.0f}, m(2), v(2);
  adamw_update(w, g, m, v, config, 0.1, 1, /*decay=*/false);
  EXPECT_EQ(w, (std::vector<float>{2.0f, -4.0f}));
  adamw_update(w, g, m, v, config, 0.1, 2, /*decay=*/true);
  EXPECT_FLOAT_EQ(w[0], 2.0f * (1.0f - 0.1f * 0.5f));
  EXPECT_FLOAT_EQ(w[1], -4.0f * (1.0f - 0.1f * 0.5f));
}

TEST(AdamWUpdate, RejectsMismatchedSizesAndStepZero) {
  std::vector<float> w(3), g(2), m(3), v(3), g3(3);
  try {
    adamw_update(w, g, m, v, {}, 0.1, 1, true);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[adamw_update] sizes value=3 grad=2 m=3 v=3 must be equal");
  }
  try {
    adamw_update(w, g3, m, v, {}, 0.1, 0, true);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[adamw_update] step=0 must be >= 1");
  }
}

TEST(SgdUpdate, PlainAndMomentum) {
  std::vector<float> w = {1.0f, -1.0f}, g = {0.5f, 2.0f}, none;
  sgd_update(w, g, none, SgdConfig{}, 0.1, true, true);
  EXPECT_FLOAT_EQ(w[0], 0.95f);
  EXPECT_FLOAT_EQ(w[1], -1.2f);

  // momentum 0.9: b1 = g = 1, w = 1 - 0.1 = 0.9; b2 = 0.9 + 1 = 1.9, w = 0.9 - 0.19 = 0.71.
  std::vector<float> w2 = {1.0f}, g2 = {1.0f}, b(1);
  const SgdConfig momentum{0.9, 0.0, false};
  sgd_update(w2, g2, b, momentum, 0.1, true, true);
  EXPECT_FLOAT_EQ(w2[0], 0.9f);
  sgd_update(w2, g2, b, momentum, 0.1, false, true);
  EXPECT_FLOAT_EQ(b[0], 1.9f);
  EXPECT_FLOAT_EQ(w2[0], 0.71f);

  // Nesterov: d = g + 0.9 b.  Step 1: b = 1, d = 1.9, w = 1 - 0.19 = 0.81.
  std::vector<float> w3 = {1.0f}, b3(1);
  sgd_update(w3, g2, b3, SgdConfig{0.9, 0.0, true}, 0.1, true, true);
  EXPECT_FLOAT_EQ(w3[0], 0.81f);

  // Decoupled decay only where flagged: w = 1 - 0.1 * (0 + 0.5 * 1) = 0.95.
  std::vector<float> w4 = {1.0f, 1.0f}, zero = {0.0f, 0.0f};
  std::vector<float> w5 = {1.0f, 1.0f};
  sgd_update(w4, zero, none, SgdConfig{0.0, 0.5, false}, 0.1, true, true);
  sgd_update(w5, zero, none, SgdConfig{0.0, 0.5, false}, 0.1, true, false);
  EXPECT_FLOAT_EQ(w4[0], 0.95f);
  EXPECT_FLOAT_EQ(w5[0], 1.0f);
}

TEST(Reductions, SumOfSquaresAndFiniteness) {
  EXPECT_DOUBLE_EQ(sum_of_squares(std::vector<float>{3.0f, -4.0f}), 25.0);
  EXPECT_DOUBLE_EQ(sum_of_squares(std::vector<float>{}), 0.0);
  EXPECT_TRUE(all_finite(std::vector<float>{0.0f, -1e30f, 1e30f}));
  EXPECT_FALSE(all_finite(std::vector<float>{1.0f, std::numeric_limits<float>::quiet_NaN()}));
  EXPECT_FALSE(all_finite(std::vector<float>{std::numeric_limits<float>::infinity()}));
  EXPECT_FALSE(all_finite(std::vector<float>{-std::numeric_limits<float>::infinity(), 0.0f}));
}

TEST(WarmupCosineSchedule, KeySteps) {
  // max 1e-3, 10 warmup steps, 110 total, floor at 10%.
  const WarmupCosineSchedule lr(1e-3, 10, 110, 0.1);
  EXPECT_DOUBLE_EQ(lr(0), 1e-4);          // 1/10 of max on the first step
  EXPECT_DOUBLE_EQ(lr(4), 5e-4);          // halfway through warmup
  EXPECT_DOUBLE_EQ(lr(9), 1e-3);          // warmup ends at max
  EXPECT_DOUBLE_EQ(lr(10), 1e-3);         // cosine starts at max
  EXPECT_NEAR(lr(60), 5.5e-4, 1e-15);     // halfway: (max + min) / 2
  const double quarter = 1e-4 + 9e-4 * 0.5 * (1 + std::cos(std::numbers::pi * 0.25));
  EXPECT_NEAR(lr(35), quarter, 1e-15);
  EXPECT_NEAR(lr(109), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(std::numbers::pi * 0.99)), 1e-15);
  EXPECT_DOUBLE_EQ(lr(110), 1e-4);        // floor from total_steps on
  EXPECT_DOUBLE_EQ(lr(1000), 1e-4);
  EXPECT_DOUBLE_EQ(lr.min_lr(), 1e-4);
  // Monotone after warmup.
  for (int s = 10; s < 120; ++s) EXPECT_LE(lr(s + 1), lr(s)) << "step " << s;
}

TEST(WarmupCosineSchedule, NoWarmup) {
  const WarmupCosineSchedule lr(2.0, 0, 4, 0.0);
  EXPECT_DOUBLE_EQ(lr(0), 2.0);
  EXPECT_NEAR(lr(2), 1.0, 1e-15);
  EXPECT_DOUBLE_EQ(lr(4), 0.0);
}

TEST(WarmupCosineSchedule, RejectsBadArguments) {
  auto message = [](double max_lr, std::int64_t warmup, std::int64_t total, double fraction) {
    try {
      WarmupCosineSchedule(max_lr, warmup, total, fraction);
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no InvalidArgument");
  };
  EXPECT_EQ(message(0.0, 1, 10, 0.1), "[WarmupCosineSchedule] max_lr=0 must be finite and > 0");
  // An infinite or NaN rate would train NaN weights (issue 10).
  EXPECT_EQ(message(INFINITY, 1, 10, 0.1),
            "[WarmupCosineSchedule] max_lr=inf must be finite and > 0");
  EXPECT_EQ(message(NAN, 1, 10, 0.1), "[WarmupCosineSchedule] max_lr=nan must be finite and > 0");
  EXPECT_EQ(message(1.0, 20, 10, 0.1),
            "[WarmupCosineSchedule] warmup_steps=20 must be <= total_steps=10");
  EXPECT_EQ(message(1.0, -1, 10, 0.1), "[WarmupCosineSchedule] warmup_steps=-1 must be >= 0");
  EXPECT_EQ(message(1.0, 0, 0, 0.1), "[WarmupCosineSchedule] total_steps=0 must be >= 1");
  EXPECT_EQ(message(1.0, 1, 10, 1.5), "[WarmupCosineSchedule] min_fraction=1.5 must be in [0, 1]");
  EXPECT_EQ(message(1.0, 1, 10, NAN), "[WarmupCosineSchedule] min_fraction=nan must be in [0, 1]");
}

}  // namespace
}  // namespace pipetrain::optim
