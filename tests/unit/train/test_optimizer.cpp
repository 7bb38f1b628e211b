#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/tensor.h"

namespace pipetrain::optim {
namespace {

nn::Parameter param(std::string name, std::vector<float> value, std::vector<float> grad,
                    bool decay) {
  nn::Parameter p;
  p.name = std::move(name);
  p.value = Tensor::from_vector(value);
  p.grad = Tensor::from_vector(grad);
  p.weight_decay = decay;
  return p;
}

std::vector<float> values(const Tensor& t) { return t.to_vector<float>(); }

// The same two hand-worked steps as test_optim_rules.cpp, through the AdamW class.
TEST(AdamW, TwoStepsByHandAndNoDecayOnFlaggedParameters) {
  nn::Parameter w = param("w", {1.0f, -2.0f, 0.5f}, {0.5f, -1.0f, 0.0f}, true);
  // A bias with zero gradient: only weight decay could move it, and its flag is off.
  nn::Parameter b = param("b", {3.0f, -3.0f}, {0.0f, 0.0f}, false);
  AdamW opt({&w, &b}, AdamWConfig{0.9, 0.999, 1e-8, 0.1});
  EXPECT_EQ(opt.step_count(), 0);
  opt.step(0.1);
  EXPECT_EQ(opt.step_count(), 1);
  std::vector<float> got = values(w.value);
  EXPECT_NEAR(got[0], 0.890000002, 1e-6);
  EXPECT_NEAR(got[1], -1.880000001, 1e-6);
  EXPECT_NEAR(got[2], 0.495, 1e-6);
  EXPECT_EQ(values(b.value), (std::vector<float>{3.0f, -3.0f}));

  opt.zero_grad();
  EXPECT_EQ(values(w.grad), (std::vector<float>{0.0f, 0.0f, 0.0f}));
  w.grad.copy_from(Tensor::from_vector(std::vector<float>{0.1f, 0.2f, -0.3f}));
  opt.step(0.1);
  got = values(w.value);
  EXPECT_NEAR(got[0], 0.800795906, 2e-6);
  EXPECT_NEAR(got[1], -1.810097394, 2e-6);
  EXPECT_NEAR(got[2], 0.564463679, 2e-6);
  EXPECT_EQ(values(b.value), (std::vector<float>{3.0f, -3.0f}));
  EXPECT_EQ(opt.step_count(), 2);
}

TEST(AdamW, StateRoundTripContinuesIdentically) {
  nn::Parameter a = param("a", {1.0f, 2.0f}, {0.3f, -0.7f}, true);
  nn::Parameter b = param("a", {1.0f, 2.0f}, {0.3f, -0.7f}, true);
  AdamW first({&a}), second({&b});
  first.step(0.01);
  second.load_state(first.state());
  b.value.copy_from(a.value);
  EXPECT_EQ(second.state(), first.state());
  EXPECT_EQ(second.step_count(), 1);
  ASSERT_EQ(first.state().buffers.size(), 2u);
  EXPECT_EQ(first.state().buffers[0].name, "a/m");
  EXPECT_EQ(first.state().buffers[1].name, "a/v");
  first.step(0.01);
  second.step(0.01);
  EXPECT_EQ(values(a.value), values(b.value));
}

TEST(Optimizer, LoadStateRejectsMismatch) {
  nn::Parameter a = param("a", {1.0f, 2.0f}, {0.0f, 0.0f}, true);
  nn::Parameter c = param("c", {1.0f}, {0.0f}, true);
  AdamW adam({&a});
  Sgd sgd({&a}, SgdConfig{0.9, 0.0, false});
  AdamW other({&c});
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no InvalidArgument");
  };
  EXPECT_EQ(message([&] { adam.load_state(sgd.state()); }),
            "[Optimizer::load_state] state of a 'sgd' optimizer cannot be loaded into 'adamw'");
  EXPECT_EQ(message([&] { adam.load_state(other.state()); }),
            "[Optimizer::load_state] buffer 0 is 'c/m' with 1 values, expected 'a/m' with 2");
  OptimizerState short_state = adam.state();
  short_state.buffers.pop_back();
  EXPECT_EQ(message([&] { adam.load_state(short_state); }),
            "[Optimizer::load_state] state holds 1 buffers, expected 2");
}

TEST(Optimizer, RejectsBadParametersAndConfigs) {
  nn::Parameter half;
  half.name = "wte";
  half.value = Tensor::zeros({2}, DType::kBFloat16);
  half.grad = Tensor::zeros({2}, DType::kBFloat16);
  nn::Parameter mismatched = param("m", {1.0f, 2.0f}, {0.0f}, true);
  nn::Parameter ok = param("ok", {1.0f}, {0.0f}, true);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const InvalidArgument& e) {
      return std::string(e.what());
    }
    return std::string("no InvalidArgument");
  };
  EXPECT_EQ(message([&] { AdamW({&half}); }),
            "[AdamW] parameter 'wte' has dtype bf16, expected fp32");
  EXPECT_EQ(message([&] { Sgd({&mismatched}); }),
            "[Sgd] gradient of 'm' has 1 elements, the value has 2");
  EXPECT_EQ(message([&] { AdamW({nullptr}); }), "[AdamW] parameter 0 is null");
  EXPECT_EQ(message([&] { AdamW({&ok}, AdamWConfig{0.9, 1.0, 1e-8, 0.0}); }),
            "[AdamW] beta2=1 must be in [0, 1)");
  EXPECT_EQ(message([&] { AdamW({&ok}, AdamWConfig{0.9, 0.99, 0.0, 0.0}); }),
            "[AdamW] eps=0 must be > 0");
  EXPECT_EQ(message([&] { Sgd({&ok}, SgdConfig{1.5, 0.0, false}); }),
            "[Sgd] momentum=1.5 must be in [0, 1)");
  EXPECT_EQ(message([&] { AdamW({&ok}).step(-1.0); }), "[AdamW::step] lr=-1 must be >= 0");
}

TEST(Sgd, MomentumThroughTheClass) {
  nn::Parameter w = param("w", {1.0f}, {1.0f}, true);
  Sgd opt({&w}, SgdConfig{0.9, 0.0, false});
  opt.step(0.1);  // b = 1, w = 0.9
  opt.step(0.1);  // b = 1.9, w = 0.71
  EXPECT_FLOAT_EQ(values(w.value)[0], 0.71f);
  ASSERT_EQ(opt.state().buffers.size(), 1u);
  EXPECT_FLOAT_EQ(opt.state().buffers[0].data[0], 1.9f);
  EXPECT_TRUE(Sgd({&w}).state().buffers.empty());  // no momentum, no buffer
}

TEST(Clip, GlobalNormAcrossParameters) {
  // Gradients [3] and [4, 0]: global norm 5.
  nn::Parameter a = param("a", {0.0f}, {3.0f}, true);
  nn::Parameter b = param("b", {0.0f, 0.0f}, {4.0f, 0.0f}, true);
  std::vector<nn::Parameter*> params = {&a, &b};
  EXPECT_DOUBLE_EQ(local_grad_sum_of_squares(params), 25.0);
  const double norm = clip_grad_norm(params, 1.0);
  EXPECT_DOUBLE_EQ(norm, 5.0);
  const double scale = 1.0 / (5.0 + 1e-6);
  EXPECT_FLOAT_EQ(values(a.grad)[0], static_cast<float>(3.0 * scale));
  EXPECT_FLOAT_EQ(values(b.grad)[0], static_cast<float>(4.0 * scale));
  EXPECT_NEAR(std::sqrt(local_grad_sum_of_squares(params)), 1.0, 1e-6);

  // Below the threshold nothing changes.
  EXPECT_NEAR(clip_grad_norm(params, 10.0), 1.0, 1e-6);
  EXPECT_FLOAT_EQ(values(a.grad)[0], static_cast<float>(3.0 * scale));

  // Split across "stages": local sums add up to the global one.
  const std::vector<nn::Parameter*> stage0 = {&a}, stage1 = {&b};
  const double global = std::sqrt(local_grad_sum_of_squares(stage0) +
                                  local_grad_sum_of_squares(stage1));
  EXPECT_NEAR(global, 1.0, 1e-6);
  EXPECT_DOUBLE_EQ(clip_coefficient(10.0, 1.0), 1.0 / (10.0 + 1e-6));
  EXPECT_DOUBLE_EQ(clip_coefficient(0.5, 1.0), 1.0);
  EXPECT_DOUBLE_EQ(clip_coefficient(std::numeric_limits<double>::infinity(), 1.0), 1.0);
  scale_grads(stage1, 2.0);
  EXPECT_FLOAT_EQ(values(b.grad)[0], static_cast<float>(8.0 * scale));
  try {
    clip_coefficient(1.0, 0.0);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[clip_coefficient] max_norm=0 must be > 0");
  }
}

TEST(Finite, DetectsNanAndInf) {
  nn::Parameter a = param("a", {0.0f, 0.0f}, {1.0f, 2.0f}, true);
  std::vector<nn::Parameter*> params = {&a};
  EXPECT_TRUE(grads_are_finite(params));
  a.grad.copy_from(Tensor::from_vector(
      std::vector<float>{1.0f, std::numeric_limits<float>::quiet_NaN()}));
  EXPECT_FALSE(grads_are_finite(params));
  a.grad.copy_from(Tensor::from_vector(
      std::vector<float>{std::numeric_limits<float>::infinity(), 0.0f}));
  EXPECT_FALSE(grads_are_finite(params));
  EXPECT_TRUE(is_finite(2.5));
  EXPECT_FALSE(is_finite(std::nan("")));
  EXPECT_FALSE(is_finite(-std::numeric_limits<double>::infinity()));
}

}  // namespace
}  // namespace pipetrain::optim
