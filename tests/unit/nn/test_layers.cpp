// The generic layers (pipetrain/nn/layers.h): for every layer, gradients against central finite
// differences in fp64, fp32 against fp64, the split backward against the full one, gradient
// accumulation, infer/output_spec against forward and the per-microbatch state errors; then
// each layer's own rules (shapes, initialisation, names, Dropout's mask, Embedding's ids).
// Inputs are fresh every run (tests/support/test_seed.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "nn_testing.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/layers.h"
#include "test_seed.h"

namespace pipetrain::nn {
namespace {

using testing::bitwise_equal;
using testing::error_of;
using testing::max_rel_error;
using testing::random_tensor;

// ---- the table of layers every generic test runs on --------------------------------------------

struct LayerCase {
  std::string label;  // test name suffix
  std::string cls;    // class name in error messages
  std::function<std::unique_ptr<Layer>(DType)> make;
  Shape input;
  std::int32_t ids = 0;         // > 0: the input is int32 ids in [0, ids)
  bool away_from_zero = false;  // inputs with |x| >= 0.05 (finite differences skip ReLU's kink)
  bool random = false;          // Dropout: infer() is not forward()
};

std::ostream& operator<<(std::ostream& out, const LayerCase& c) { return out << c.label; }

// clang-format off
std::vector<LayerCase> layer_cases() {
  return {
      {"Linear", "Linear",
       [](DType d) { return std::make_unique<Linear>(4, 3, true, d, 11); }, {2, 3, 4}},
      {"LinearNoBias1d", "Linear",
       [](DType d) { return std::make_unique<Linear>(5, 2, false, d, 12, "fc"); }, {5}},
      {"ReLU", "ReLU", [](DType d) { return std::make_unique<ReLU>(d); }, {3, 5}, 0, true},
      {"GELU", "GELU", [](DType d) { return std::make_unique<GELU>(d); }, {2, 2, 3}},
      {"LayerNorm", "LayerNorm", [](DType d) { return std::make_unique<LayerNorm>(4, 1e-5, d); },
       {2, 3, 4}},
      {"LayerNormEps", "LayerNorm",
       [](DType d) { return std::make_unique<LayerNorm>(6, 0.5, d, "ln"); }, {3, 6}},
      // Dropout follows its input's dtype.
      {"Dropout", "Dropout", [](DType) { return std::make_unique<Dropout>(0.3, 5); }, {4, 6},
       0, false, true},
      {"Embedding", "Embedding",
       [](DType d) { return std::make_unique<Embedding>(7, 3, d, 13, "emb"); }, {2, 5}, 7},
  };
}
// clang-format on

class LayerTest : public ::testing::TestWithParam<LayerCase> {
 protected:
  LayerTest() : seed_(testing::test_seed()), rng_(seed_) {}

  // A fresh input of the case's shape, as `dtype` (ids stay int32).
  Tensor input(DType dtype) {
    const LayerCase& c = GetParam();
    if (c.ids > 0) return testing::random_ids(c.input, c.ids, rng_);
    Tensor x = random_tensor(c.input, rng_, DType::kFloat64);
    if (c.away_from_zero) {
      std::vector<double> v = x.to_vector<double>();
      for (double& e : v) e = static_cast<float>(e < 0 ? e - 0.05 : e + 0.05);
      x = Tensor::from_vector(v, x.shape());
    }
    return x.to(dtype);
  }
  // A fresh gradient for the output of `layer` on `x`.
  Tensor grad_for(const Layer& layer, const Tensor& x, DType dtype) {
    const TensorSpec out = layer.output_spec({x.shape(), x.dtype()});
    return random_tensor(out.shape, rng_, dtype);
  }
  std::unique_ptr<Layer> make(DType dtype) {
    auto layer = GetParam().make(dtype);
    testing::perturb(layer->parameters(), 99);
    return layer;
  }

  unsigned seed_;
  std::mt19937_64 rng_;
};

// Every gradient (input and parameters) against central differences of L = <forward(x), w>,
// in fp64. forward() of a fixed (step, microbatch) is used, released after each evaluation, so
// Dropout keeps its mask.
TEST_P(LayerTest, GradientsMatchFiniteDifferences) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto layer = make(DType::kFloat64);
  layer->begin_step(3);
  const Tensor x = input(DType::kFloat64);
  const Tensor w = grad_for(*layer, x, DType::kFloat64);
  testing::expect_gradients_match_finite_differences(*layer, x, w, testing::Evaluate::kForward);
}

// fp32 against the fp64 twin built with the same arguments (same initial values) on the same
// fresh inputs.
TEST_P(LayerTest, Fp32MatchesFp64) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto l32 = make(DType::kFloat32);
  auto l64 = make(DType::kFloat64);
  const Tensor x64 = input(DType::kFloat64);
  const Tensor w64 = grad_for(*l64, x64, DType::kFloat64);
  testing::expect_fp32_matches_fp64(*l32, *l64, x64, w64);
}

// backward_input + backward_weight, in any order over microbatches, is bitwise backward().
TEST_P(LayerTest, SplitBackwardIsBitwiseFull) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto full = make(DType::kFloat32);
  auto split = make(DType::kFloat32);
  const Tensor x0 = input(DType::kFloat32), x1 = input(DType::kFloat32);
  const Tensor w0 = grad_for(*full, x0, DType::kFloat32);
  const Tensor w1 = grad_for(*full, x1, DType::kFloat32);
  testing::expect_split_backward_bitwise_full(*full, *split, x0, x1, w0, w1);
}

// Two microbatches add up: the gradients equal those of each alone, summed.
TEST_P(LayerTest, GradientsAccumulateOverMicrobatches) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto both = make(DType::kFloat64);
  auto only0 = make(DType::kFloat64);
  auto only1 = make(DType::kFloat64);
  const Tensor x0 = input(DType::kFloat64), x1 = input(DType::kFloat64);
  const Tensor w0 = grad_for(*both, x0, DType::kFloat64);
  const Tensor w1 = grad_for(*both, x1, DType::kFloat64);
  testing::expect_gradients_accumulate(*both, *only0, *only1, x0, x1, w0, w1);
}

// infer() is forward() keeping nothing (the identity for Dropout); output_spec() is the spec of
// forward's output.
TEST_P(LayerTest, InferAndOutputSpecAgreeWithForward) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto layer = make(DType::kFloat32);
  const Tensor x = input(DType::kFloat32);
  const Tensor w = grad_for(*layer, x, DType::kFloat32);
  testing::expect_infer_and_output_spec_agree_with_forward(*layer, x, w, GetParam().random);
}

// The per-microbatch state machine: order errors name the class, the function and the
// microbatch; a call that throws changes nothing; release() drops a microbatch. Dropout may keep
// nothing.
TEST_P(LayerTest, StateErrorsAndRelease) {
  auto layer = make(DType::kFloat32);
  const Tensor x = input(DType::kFloat32);
  const Tensor w = grad_for(*layer, x, DType::kFloat32);
  testing::expect_state_errors_and_release(
      *layer, x, w, {.cls = GetParam().cls, .keeps_after_forward = !GetParam().random});
}

INSTANTIATE_TEST_SUITE_P(Layers, LayerTest, ::testing::ValuesIn(layer_cases()),
                         [](const auto& info) { return info.param.label; });

// ---- Linear ------------------------------------------------------------------------------------

TEST(Linear, ShapesNamesAndInit) {
  Linear fc(64, 32, true, DType::kFloat32, 1, "fc1");
  EXPECT_EQ(fc.name(), "fc1");
  auto params = fc.parameters();
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0]->name, "fc1.weight");
  EXPECT_EQ(params[0]->value.shape(), (Shape{32, 64}));
  EXPECT_TRUE(params[0]->weight_decay);
  EXPECT_EQ(params[1]->name, "fc1.bias");
  EXPECT_EQ(params[1]->value.shape(), (Shape{32}));
  EXPECT_FALSE(params[1]->weight_decay);
  // PyTorch's default: U(-1/sqrt(in), 1/sqrt(in)) for both; std of U(-b, b) is b / sqrt(3).
  const double bound = 1.0 / 8.0;
  for (const Parameter* p : params) {
    const auto v = p->value.to_vector<double>();
    double ss = 0, mx = 0;
    for (double e : v) {
      ss += e * e;
      mx = std::max(mx, std::abs(e));
    }
    EXPECT_LE(mx, bound) << p->name;
    EXPECT_GT(mx, 0.9 * bound) << p->name;
    if (v.size() > 1000) {
      EXPECT_NEAR(std::sqrt(ss / static_cast<double>(v.size())), bound / std::sqrt(3.0), 0.005);
    }
  }
  EXPECT_EQ(fc.bias(), params[1]);

  Linear plain(3, 2, false);
  EXPECT_EQ(plain.name(), "");
  ASSERT_EQ(plain.parameters().size(), 1u);
  EXPECT_EQ(plain.parameters()[0]->name, "weight");
  EXPECT_EQ(plain.bias(), nullptr);

  // Values depend on (seed, name): same seed same values, fp32 and fp64 alike.
  Linear a(4, 4, true, DType::kFloat32, 7), b(4, 4, true, DType::kFloat64, 7);
  Linear c(4, 4, true, DType::kFloat32, 8), d(4, 4, true, DType::kFloat32, 7, "x");
  EXPECT_EQ(a.weight().value.to_vector<double>(), b.weight().value.to_vector<double>());
  EXPECT_NE(a.weight().value.to_vector<double>(), c.weight().value.to_vector<double>());
  EXPECT_NE(a.weight().value.to_vector<double>(), d.weight().value.to_vector<double>());
  EXPECT_NE(a.weight().value.to_vector<double>(), a.bias()->value.to_vector<double>());
}

TEST(Linear, ComputesXWtPlusB) {
  Linear fc(2, 3, true, DType::kFloat64);
  fc.weight().value.copy_from(Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {3, 2}));
  fc.bias()->value.copy_from(Tensor::from_vector(std::vector<double>{0.5, -1, 2}));
  const Tensor x = Tensor::from_vector(std::vector<double>{1, -1, 2, 0.5}, {2, 1, 2});
  const Tensor y = fc.infer(x);
  EXPECT_EQ(y.shape(), (Shape{2, 1, 3}));
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{-0.5, -2, 1, 3.5, 7, 15}));
  // Zero rows: an empty output, and nothing added to the gradients.
  const Tensor empty = Tensor::zeros({0, 2}, DType::kFloat64);
  EXPECT_EQ(fc.forward(0, empty).shape(), (Shape{0, 3}));
  EXPECT_EQ(fc.backward(0, Tensor::zeros({0, 3}, DType::kFloat64)).shape(), (Shape{0, 2}));
  EXPECT_EQ(fc.weight().grad.to_vector<double>(), std::vector<double>(6, 0.0));
}

TEST(Linear, RejectsBadInputs) {
  Linear fc(4, 3);
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              fc.forward(0, Tensor::zeros({2, 3}));
            }),
            "[Linear::forward] input has shape [2, 3], expected [..., 4]");
  EXPECT_EQ(error_of<InvalidArgument>([&] { fc.infer(Tensor::zeros({})); }),
            "[Linear::infer] input has shape [], expected [..., 4]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              fc.forward(0, Tensor::zeros({2, 4}, DType::kFloat64));
            }),
            "[Linear::forward] input has dtype fp64, expected fp32");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              fc.output_spec({{2, 5}, DType::kFloat32});
            }),
            "[Linear::output_spec] input has shape [2, 5], expected [..., 4]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              fc.output_spec({{2, 4}, DType::kInt32});
            }),
            "[Linear::output_spec] input has dtype int32, expected fp32");
  EXPECT_EQ(fc.output_spec({{2, 7, 4}, DType::kFloat32}), (TensorSpec{{2, 7, 3}, DType::kFloat32}));
  EXPECT_EQ(fc.bytes_kept(), 0u);
  EXPECT_EQ(error_of<InvalidArgument>([] { Linear(0, 3); }), "[Linear] in_features=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { Linear(2, -1); }),
            "[Linear] out_features=-1 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { Linear(2, 2, true, DType::kInt32); }),
            "[Linear] dtype int32 must be fp32 or fp64");
}

// ---- ReLU, GELU --------------------------------------------------------------------------------

TEST(Activations, ValuesAndErrors) {
  ReLU relu(DType::kFloat64);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Tensor x = Tensor::from_vector(std::vector<double>{-2, -0.0, 0, 3, nan});
  const auto y = relu.forward(0, x).to_vector<double>();
  EXPECT_EQ(y[0], 0.0);
  EXPECT_EQ(y[3], 3.0);
  EXPECT_TRUE(std::isnan(y[4]));
  // The gradient at 0 is 0.
  EXPECT_EQ(
      relu.backward(0, Tensor::from_vector(std::vector<double>{1, 1, 1, 1, 1})).to_vector<double>(),
      (std::vector<double>{0, 0, 0, 1, 0}));
  GELU gelu;
  EXPECT_EQ(gelu.infer(Tensor::from_vector(std::vector<float>{0.f, 100.f})).to_vector<float>(),
            (std::vector<float>{0.f, 100.f}));
  EXPECT_EQ(
      error_of<InvalidArgument>([&] { gelu.forward(0, Tensor::zeros({2}, DType::kFloat64)); }),
      "[GELU::forward] input has dtype fp64, expected fp32");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              relu.output_spec({{2}, DType::kInt32});
            }),
            "[ReLU::output_spec] input has dtype int32, expected fp64");
  EXPECT_EQ(error_of<InvalidArgument>([] { GELU g(DType::kBFloat16); }),
            "[GELU] dtype bf16 must be fp32 or fp64");
  // A scalar (0-d) input works.
  EXPECT_EQ(relu.infer(Tensor::from_vector(std::vector<double>{-1}).view({})).shape(), Shape{});
}

// ---- LayerNorm ---------------------------------------------------------------------------------

TEST(LayerNorm, InitNormalisesAndRejects) {
  LayerNorm ln(4, 1e-5, DType::kFloat64, "ln_f");
  ASSERT_EQ(ln.parameters().size(), 2u);
  EXPECT_EQ(ln.parameters()[0]->name, "ln_f.weight");
  EXPECT_EQ(ln.parameters()[1]->name, "ln_f.bias");
  EXPECT_EQ(ln.weight().value.to_vector<double>(), std::vector<double>(4, 1.0));
  EXPECT_EQ(ln.bias().value.to_vector<double>(), std::vector<double>(4, 0.0));
  EXPECT_FALSE(ln.weight().weight_decay);
  EXPECT_FALSE(ln.bias().weight_decay);
  // (x - mean) / sqrt(var + eps), biased variance: x = {1, 2, 3, 4}: mean 2.5, var 1.25.
  const auto y = ln.infer(Tensor::from_vector(std::vector<double>{1, 2, 3, 4})).to_vector<double>();
  const double s = 1.0 / std::sqrt(1.25 + 1e-5);
  for (int k = 0; k < 4; ++k) EXPECT_NEAR(y[k], (k + 1 - 2.5) * s, 1e-15);
  // eps is used: with eps = 1, a constant row stays 0 and x = {-1, 1} gives +-1/sqrt(2).
  LayerNorm wide(2, 1.0, DType::kFloat64);
  const auto z = wide.infer(Tensor::from_vector(std::vector<double>{-1, 1})).to_vector<double>();
  EXPECT_NEAR(z[1], 1.0 / std::sqrt(2.0), 1e-15);

  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ln.forward(0, Tensor::zeros({2, 5}, DType::kFloat64));
            }),
            "[LayerNorm::forward] input has shape [2, 5], expected [..., 4]");
  EXPECT_EQ(error_of<InvalidArgument>([] { LayerNorm(0); }), "[LayerNorm] features=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { LayerNorm(3, 0.0); }),
            "[LayerNorm] eps=0 must be finite and > 0");
}

// ---- Dropout -----------------------------------------------------------------------------------

// The kept positions of forward(mb, ones) at `step`.
std::vector<bool> mask_of(Dropout& d, std::int64_t step, MicrobatchId mb, std::int64_t n) {
  d.begin_step(step);
  Tensor ones = Tensor::empty({n});
  ones.fill(1.0);
  const auto v = d.forward(mb, ones).to_vector<float>();
  d.release(mb);
  std::vector<bool> kept(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) kept[i] = v[i] != 0.0f;
  return kept;
}

TEST(Dropout, MaskIsAFunctionOfSeedStepAndMicrobatch) {
  const double p = 0.25;
  Dropout d(p, 42);
  const std::int64_t n = 100000;
  const auto m00 = mask_of(d, 0, 0, n);
  // Same (step, microbatch): the same mask (checkpoint recompute is exact).
  EXPECT_EQ(mask_of(d, 0, 0, n), m00);
  // Another step, microbatch or seed: another mask.
  EXPECT_NE(mask_of(d, 1, 0, n), m00);
  EXPECT_NE(mask_of(d, 0, 1, n), m00);
  Dropout other(p, 43);
  EXPECT_NE(mask_of(other, 0, 0, n), m00);
  // keeps() tells the mask; the kept fraction is 1 - p (binomial std 0.0014 at n = 1e5).
  std::int64_t kept = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    kept += m00[static_cast<std::size_t>(i)];
    if (i < 1000) {
      ASSERT_EQ(d.keeps(0, 0, i), m00[static_cast<std::size_t>(i)]) << i;
    }
  }
  EXPECT_NEAR(static_cast<double>(kept) / n, 1 - p, 0.01);
}

TEST(Dropout, ScalesKeptValuesAndBackwardUsesTheSameMask) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  Dropout d(0.5, 3, "drop");
  EXPECT_EQ(d.name(), "drop");
  EXPECT_TRUE(d.parameters().empty());
  d.begin_step(4);
  const Tensor x = random_tensor({8, 16}, rng, DType::kFloat32);
  const Tensor g = random_tensor({8, 16}, rng, DType::kFloat32);
  const auto y = d.forward(2, x).to_vector<float>();
  EXPECT_EQ(d.bytes_kept(), 0u);  // the mask is recomputed, not kept
  d.begin_step(5);                // a new step before the backward does not change its mask
  const auto dx = d.backward(2, g).to_vector<float>();
  const auto xv = x.to_vector<float>(), gv = g.to_vector<float>();
  for (std::size_t i = 0; i < xv.size(); ++i) {
    const bool keep = d.keeps(4, 2, static_cast<std::int64_t>(i));
    EXPECT_EQ(y[i], keep ? xv[i] * 2.0f : 0.0f) << i;
    EXPECT_EQ(dx[i], keep ? gv[i] * 2.0f : 0.0f) << i;
  }
  // fp64 input, fp64 output.
  EXPECT_EQ(d.infer(x.to(DType::kFloat64)).dtype(), DType::kFloat64);
  // p = 0: the identity.
  Dropout none(0.0, 1);
  EXPECT_TRUE(bitwise_equal(none.forward(0, x), x));
}

TEST(Dropout, Rejects) {
  EXPECT_EQ(error_of<InvalidArgument>([] { Dropout(1.0); }), "[Dropout] p=1 must be in [0, 1)");
  EXPECT_EQ(error_of<InvalidArgument>([] { Dropout(-0.5); }), "[Dropout] p=-0.5 must be in [0, 1)");
  EXPECT_EQ(error_of<InvalidArgument>([] { Dropout(std::nan("")); }),
            "[Dropout] p=nan must be in [0, 1)");
  Dropout d(0.1);
  EXPECT_EQ(error_of<InvalidArgument>([&] { d.forward(0, Tensor::zeros({3}, DType::kInt32)); }),
            "[Dropout::forward] input has dtype int32, expected fp32 or fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              d.output_spec({{3}, DType::kBFloat16});
            }),
            "[Dropout::output_spec] input has dtype bf16, expected fp32 or fp64");
}

// ---- Embedding ---------------------------------------------------------------------------------

TEST(Embedding, LooksUpAndScatterAdds) {
  Embedding emb(5, 2, DType::kFloat64, 1);
  ASSERT_EQ(emb.parameters().size(), 1u);
  EXPECT_EQ(emb.weight().name, "weight");
  EXPECT_TRUE(emb.weight().weight_decay);
  emb.weight().value.copy_from(
      Tensor::from_vector(std::vector<double>{0, 1, 10, 11, 20, 21, 30, 31, 40, 41}, {5, 2}));
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{1, 4, 1}, {3});
  const Tensor y = emb.forward(0, ids);
  EXPECT_EQ(y.shape(), (Shape{3, 2}));
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{10, 11, 40, 41, 10, 11}));
  const Tensor g = Tensor::from_vector(std::vector<double>{1, 2, 3, 4, 5, 6}, {3, 2});
  EXPECT_FALSE(emb.backward_input(0, g).defined());
  EXPECT_GT(emb.bytes_kept(), 0u);
  emb.backward_weight(0);
  // Row 1 appears twice: its gradients add.
  EXPECT_EQ(emb.weight().grad.to_vector<double>(),
            (std::vector<double>{0, 0, 6, 8, 0, 0, 0, 0, 3, 4}));
}

TEST(Embedding, InitIsStandardNormal) {
  Embedding emb(64, 64, DType::kFloat32, 5, "wte");
  EXPECT_EQ(emb.weight().name, "wte.weight");
  const auto v = emb.weight().value.to_vector<double>();
  double sum = 0, ss = 0;
  for (double e : v) {
    sum += e;
    ss += e * e;
  }
  EXPECT_NEAR(sum / v.size(), 0.0, 0.05);
  EXPECT_NEAR(std::sqrt(ss / v.size()), 1.0, 0.05);
  Embedding same(64, 64, DType::kFloat64, 5, "wte");
  EXPECT_EQ(same.weight().value.to_vector<double>(), v);
}

TEST(Embedding, RejectsBadIds) {
  Embedding emb(11, 4);
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              emb.forward(0, Tensor::from_vector(std::vector<std::int32_t>{1, 11}, {1, 2}));
            }),
            "[Embedding::forward] input id 11 at index 1 is outside [0, 11)");
  EXPECT_EQ(error_of<InvalidArgument>(
                [&] { emb.infer(Tensor::from_vector(std::vector<std::int32_t>{-1})); }),
            "[Embedding::infer] input id -1 at index 0 is outside [0, 11)");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              emb.forward(0, Tensor::zeros({2, 3}));
            }),
            "[Embedding::forward] input has dtype fp32, expected int32");
  EXPECT_EQ(emb.output_spec({{2, 3}, DType::kInt32}), (TensorSpec{{2, 3, 4}, DType::kFloat32}));
  EXPECT_EQ(emb.bytes_kept(), 0u);
  EXPECT_EQ(error_of<InvalidArgument>([] { Embedding(0, 4); }),
            "[Embedding] num_embeddings=0 must be >= 1");
}

}  // namespace
}  // namespace pipetrain::nn
