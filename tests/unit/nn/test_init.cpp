// The initialisers (pipetrain/nn/init.h): golden values (GPT-2's init is unchanged), the
// distributions' statistics and bounds, fans, seeds and names, and the errors.
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/gpt_config.h"
#include "pipetrain/nn/init.h"

namespace pipetrain::nn {
namespace {

using testing::error_of;

struct Stats {
  double mean = 0, std = 0, max_abs = 0;
};

Stats stats_of(const Tensor& t) {
  const auto v = t.to_vector<double>();
  Stats s;
  for (double e : v) {
    s.mean += e;
    s.max_abs = std::max(s.max_abs, std::abs(e));
  }
  s.mean /= static_cast<double>(v.size());
  for (double e : v) s.std += (e - s.mean) * (e - s.mean);
  s.std = std::sqrt(s.std / static_cast<double>(v.size()));
  return s;
}

// Values drawn before init.h existed (the GPT's own init_normal, commit 03952d3): models and
// checkpoints made then still start from the same parameters.
TEST(Init, GptValuesAreUnchanged) {
  const std::vector<std::uint32_t> golden = {0x3bf9e9b5, 0x3c072742, 0xbd1b22de, 0x3a8b7578};
  Parameter a = make_parameter("wte", {3, 5}, true);
  init_normal(a, 0.02, 1337);  // gpt_config.h
  Parameter b = make_parameter("wte", {3, 5}, true, DType::kFloat64);
  init_normal(b, 0.0, 0.02, 1337);  // init.h
  const auto va = a.value.to_vector<float>(), vb = b.value.to_vector<float>();
  for (std::size_t i = 0; i < golden.size(); ++i) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(va[i]), golden[i]) << i;
  }
  EXPECT_EQ(va, vb);
}

TEST(Init, NormalAndUniformStatistics) {
  Parameter p = make_parameter("w", {100, 100}, true);
  init_normal(p, 0.5, 2.0, 1);
  Stats s = stats_of(p.value);
  EXPECT_NEAR(s.mean, 0.5, 0.05);  // std of the mean: 0.02
  EXPECT_NEAR(s.std, 2.0, 0.05);
  init_uniform(p, -3.0, 1.0, 1);
  s = stats_of(p.value);
  EXPECT_NEAR(s.mean, -1.0, 0.05);
  EXPECT_NEAR(s.std, 4.0 / std::sqrt(12.0), 0.02);
  const auto v = p.value.to_vector<double>();
  EXPECT_GE(*std::min_element(v.begin(), v.end()), -3.0);
  EXPECT_LE(*std::max_element(v.begin(), v.end()), 1.0);
}

TEST(Init, SeedsAndNames) {
  // Parameters: values from (seed, name); tensors: from the seed alone.
  Parameter a = make_parameter("a", {64}, true), b = make_parameter("b", {64}, true);
  init_normal(a, 0, 1, 5);
  init_normal(b, 0, 1, 5);
  EXPECT_NE(a.value.to_vector<float>(), b.value.to_vector<float>());
  Tensor t = Tensor::empty({64});
  init_normal(t, 0, 1, parameter_seed(5, "a"));
  EXPECT_EQ(t.to_vector<float>(), a.value.to_vector<float>());
  init_normal(t, 0, 1, 6);
  EXPECT_NE(t.to_vector<float>(), a.value.to_vector<float>());
  // fp64 and bf16 tensors get the fp32 values (bf16 rounded once more).
  Tensor d = Tensor::empty({64}, DType::kFloat64), h = Tensor::empty({64}, DType::kBFloat16);
  init_normal(d, 0, 1, 6);
  init_normal(h, 0, 1, 6);
  EXPECT_EQ(d.to_vector<float>(), t.to_vector<float>());
  EXPECT_EQ(h.to_vector<float>(), t.to(DType::kBFloat16).to_vector<float>());
}

TEST(Init, FansFollowPyTorch) {
  const Fans linear = fans_of({8, 4});
  EXPECT_EQ(linear.fan_in, 4);
  EXPECT_EQ(linear.fan_out, 8);
  const Fans conv = fans_of({8, 4, 3, 3});
  EXPECT_EQ(conv.fan_in, 36);
  EXPECT_EQ(conv.fan_out, 72);
  EXPECT_EQ(error_of<InvalidArgument>([] { fans_of({4}); }),
            "[fans_of] shape [4] has fewer than 2 dimensions");
}

TEST(Init, XavierAndKaimingScales) {
  Parameter w = make_parameter("w", {200, 50}, true);  // fan_in 50, fan_out 200
  init_xavier_uniform(w, 2.0, 1);
  const double xb = 2.0 * std::sqrt(6.0 / 250.0);
  Stats s = stats_of(w.value);
  EXPECT_LE(s.max_abs, xb);
  EXPECT_GT(s.max_abs, 0.99 * xb);
  EXPECT_NEAR(s.std, xb / std::sqrt(3.0), 0.01 * xb);
  init_xavier_normal(w, 1.0, 1);
  EXPECT_NEAR(stats_of(w.value).std, std::sqrt(2.0 / 250.0), 0.02 * std::sqrt(2.0 / 250.0));
  // a = sqrt(5): nn.Linear's bound 1/sqrt(fan_in).
  init_kaiming_uniform(w, std::sqrt(5.0), FanMode::kFanIn, 1);
  s = stats_of(w.value);
  EXPECT_LE(s.max_abs, 1.0 / std::sqrt(50.0) * (1 + 1e-7));
  EXPECT_GT(s.max_abs, 0.99 / std::sqrt(50.0));
  init_kaiming_uniform(w, 0.0, FanMode::kFanOut, 1);
  EXPECT_LE(stats_of(w.value).max_abs, std::sqrt(6.0 / 200.0) * (1 + 1e-7));
  init_kaiming_normal(w, 0.0, FanMode::kFanIn, 1);
  EXPECT_NEAR(stats_of(w.value).std, std::sqrt(2.0 / 50.0), 0.02 * std::sqrt(2.0 / 50.0));
  init_zeros(w);
  EXPECT_EQ(stats_of(w.value).max_abs, 0.0);
  init_constant(w, -1.5);
  EXPECT_EQ(stats_of(w.value).mean, -1.5);
}

TEST(Init, Errors) {
  Parameter bias = make_parameter("bias", {4}, false);
  EXPECT_EQ(error_of<InvalidArgument>([&] { init_xavier_uniform(bias, 1.0, 0); }),
            "[init_xavier_uniform] parameter \"bias\" has shape [4], expected at least 2 "
            "dimensions");
  EXPECT_EQ(error_of<InvalidArgument>([&] { init_kaiming_normal(bias, 0, FanMode::kFanIn, 0); }),
            "[init_kaiming_normal] parameter \"bias\" has shape [4], expected at least 2 "
            "dimensions");
  EXPECT_EQ(error_of<InvalidArgument>([&] { init_normal(bias, 0.0, -1.0, 0); }),
            "[init_normal] std=-1 must be >= 0");
  EXPECT_EQ(error_of<InvalidArgument>([&] { init_uniform(bias, 1.0, 0.0, 0); }),
            "[init_uniform] lo=1 must be <= hi=0");
  Tensor ids = Tensor::zeros({3}, DType::kInt32);
  EXPECT_EQ(error_of<InvalidArgument>([&] { init_normal(ids, 0, 1, 0); }),
            "[init_normal] tensor has dtype int32, expected fp32, bf16 or fp64");
}

}  // namespace
}  // namespace pipetrain::nn
