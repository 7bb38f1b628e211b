// The transformer layers (pipetrain/nn/attention.h): for every layer, gradients against central
// finite differences in fp64, fp32 against fp64, the split backward against the full one,
// gradient accumulation, infer/output_spec against forward and the per-microbatch state errors;
// then causality, the attention against a direct loop, Mlp and PreLnBlock against their parts,
// names, init, kept bytes, errors, checkpointing; and a PreLnBlock model trained through a
// 2-rank ZB-H1 Pipeline to the numbers of one device. Inputs are fresh every run
// (tests/support/test_seed.h).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "nn_testing.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/attention.h"
#include "pipetrain/nn/layers.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/nn/sequential.h"
#include "pipetrain/pipeline.h"
#include "pipetrain/runtime/progress.h"
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
  bool causal = false;  // [B, T, C] with the output at t depending on inputs <= t only
};

std::ostream& operator<<(std::ostream& out, const LayerCase& c) { return out << c.label; }

// clang-format off
std::vector<LayerCase> layer_cases() {
  return {
      {"Attention", "CausalSelfAttention",
       [](DType d) { return std::make_unique<CausalSelfAttention>(8, 2, true, d, 21); },
       {2, 5, 8}, true},
      {"AttentionOneHeadNoBias", "CausalSelfAttention",
       [](DType d) { return std::make_unique<CausalSelfAttention>(6, 1, false, d, 22, "attn"); },
       {1, 4, 6}, true},
      {"AttentionSixHeads", "CausalSelfAttention",
       [](DType d) { return std::make_unique<CausalSelfAttention>(6, 6, true, d, 27); },
       {3, 3, 6}, true},
      {"Mlp", "Mlp", [](DType d) { return std::make_unique<Mlp>(4, 10, true, d, 23); },
       {2, 3, 4}},
      {"MlpNoBias2d", "Mlp",
       [](DType d) { return std::make_unique<Mlp>(5, 7, false, d, 24, "mlp"); }, {3, 5}},
      {"PreLnBlock", "PreLnBlock",
       [](DType d) { return std::make_unique<PreLnBlock>(8, 2, 16, d, 25); }, {2, 4, 8}, true},
      {"PreLnBlockNamed", "PreLnBlock",
       [](DType d) { return std::make_unique<PreLnBlock>(6, 3, 12, d, 26, "h.0"); }, {1, 5, 6},
       true},
  };
}
// clang-format on

class AttentionLayerTest : public ::testing::TestWithParam<LayerCase> {
 protected:
  AttentionLayerTest() : seed_(testing::test_seed()), rng_(seed_) {}

  Tensor input(DType dtype) { return random_tensor(GetParam().input, rng_, dtype); }
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
// in fp64.
TEST_P(AttentionLayerTest, GradientsMatchFiniteDifferences) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto layer = make(DType::kFloat64);
  const Tensor x = input(DType::kFloat64);
  const Tensor w = grad_for(*layer, x, DType::kFloat64);
  testing::expect_gradients_match_finite_differences(*layer, x, w, testing::Evaluate::kInfer);
}

// fp32 against the fp64 twin built with the same arguments (same initial values) on the same
// fresh inputs (every error observed below 1e-6 over 200 seeds; the bound is 1e-5).
TEST_P(AttentionLayerTest, Fp32MatchesFp64) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto l32 = make(DType::kFloat32);
  auto l64 = make(DType::kFloat64);
  const Tensor x64 = input(DType::kFloat64);
  const Tensor w64 = grad_for(*l64, x64, DType::kFloat64);
  testing::expect_fp32_matches_fp64(*l32, *l64, x64, w64);
}

// backward_input + backward_weight, in any order over microbatches, is bitwise backward().
TEST_P(AttentionLayerTest, SplitBackwardIsBitwiseFull) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto full = make(DType::kFloat32);
  auto split = make(DType::kFloat32);
  const Tensor x0 = input(DType::kFloat32), x1 = input(DType::kFloat32);
  const Tensor w0 = grad_for(*full, x0, DType::kFloat32);
  const Tensor w1 = grad_for(*full, x1, DType::kFloat32);
  testing::expect_split_backward_bitwise_full(*full, *split, x0, x1, w0, w1);
}

// Two microbatches add up: the gradients equal those of each alone, summed.
TEST_P(AttentionLayerTest, GradientsAccumulateOverMicrobatches) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto both = make(DType::kFloat64);
  auto only0 = make(DType::kFloat64);
  auto only1 = make(DType::kFloat64);
  const Tensor x0 = input(DType::kFloat64), x1 = input(DType::kFloat64);
  const Tensor w0 = grad_for(*both, x0, DType::kFloat64);
  const Tensor w1 = grad_for(*both, x1, DType::kFloat64);
  testing::expect_gradients_accumulate(*both, *only0, *only1, x0, x1, w0, w1);
}

// infer() is forward() keeping nothing; output_spec() is the spec of forward's output; the input
// is never written.
TEST_P(AttentionLayerTest, InferAndOutputSpecAgreeWithForward) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto layer = make(DType::kFloat32);
  const Tensor x = input(DType::kFloat32);
  const Tensor w = grad_for(*layer, x, DType::kFloat32);
  testing::expect_infer_and_output_spec_agree_with_forward(*layer, x, w);
}

// The per-microbatch state machine: order errors name the class, the function and the
// microbatch; a call that throws changes nothing; release() drops a microbatch.
TEST_P(AttentionLayerTest, StateErrorsAndRelease) {
  auto layer = make(DType::kFloat32);
  const Tensor x = input(DType::kFloat32);
  const Tensor w = grad_for(*layer, x, DType::kFloat32);
  testing::expect_state_errors_and_release(*layer, x, w,
                                           {.cls = GetParam().cls,
                                            .keeps_after_backward_input = true,
                                            .rejects_fp64_input = true});
}

// The output at position t is a function of the inputs at positions <= t only: changing the
// inputs after t leaves outputs <= t bitwise unchanged, and a gradient at t reaches no input
// after t (exact zeros).
class CausalLayerTest : public AttentionLayerTest {};

TEST_P(CausalLayerTest, Causality) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  auto layer = make(DType::kFloat64);
  const Tensor x = input(DType::kFloat64);
  const std::int64_t b = x.size(0), t = x.size(1), c = x.size(2);
  const auto y = layer->infer(x).to_vector<double>();
  for (std::int64_t t0 = 0; t0 < t; ++t0) {
    SCOPED_TRACE("t0 = " + std::to_string(t0));
    // Inputs after t0 replaced by fresh values.
    Tensor changed = x.clone();
    const Tensor noise = random_tensor(x.shape(), rng_, DType::kFloat64);
    double* v = changed.data<double>();
    const double* n = noise.data<double>();
    for (std::int64_t i = 0; i < b; ++i) {
      for (std::int64_t s = t0 + 1; s < t; ++s) {
        for (std::int64_t k = 0; k < c; ++k) v[(i * t + s) * c + k] = n[(i * t + s) * c + k];
      }
    }
    const auto z = layer->infer(changed).to_vector<double>();
    bool later_differ = t0 + 1 == t;
    for (std::int64_t i = 0; i < b; ++i) {
      for (std::int64_t s = 0; s < t; ++s) {
        for (std::int64_t k = 0; k < c; ++k) {
          const auto e = static_cast<std::size_t>((i * t + s) * c + k);
          if (s <= t0) {
            ASSERT_EQ(z[e], y[e]) << "batch " << i << " position " << s << " channel " << k;
          } else if (z[e] != y[e]) {
            later_differ = true;
          }
        }
      }
    }
    EXPECT_TRUE(later_differ);  // the test is not vacuous
    // A gradient at position t0 only.
    Tensor g = Tensor::zeros(x.shape(), DType::kFloat64);
    const Tensor r = random_tensor(x.shape(), rng_, DType::kFloat64);
    for (std::int64_t i = 0; i < b; ++i) {
      for (std::int64_t k = 0; k < c; ++k) {
        g.data<double>()[(i * t + t0) * c + k] = r.data<double>()[(i * t + t0) * c + k];
      }
    }
    layer->forward(0, x);
    const auto dx = layer->backward(0, g).to_vector<double>();
    for (std::int64_t i = 0; i < b; ++i) {
      for (std::int64_t s = 0; s < t; ++s) {
        for (std::int64_t k = 0; k < c; ++k) {
          const double d = dx[static_cast<std::size_t>((i * t + s) * c + k)];
          if (s > t0) {
            ASSERT_EQ(d, 0.0) << "batch " << i << " position " << s << " channel " << k;
          }
        }
      }
    }
  }
}

std::vector<LayerCase> causal_cases() {
  std::vector<LayerCase> out;
  for (const LayerCase& c : layer_cases()) {
    if (c.causal) out.push_back(c);
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(AttentionLayers, AttentionLayerTest, ::testing::ValuesIn(layer_cases()),
                         [](const auto& info) { return info.param.label; });
INSTANTIATE_TEST_SUITE_P(AttentionLayers, CausalLayerTest, ::testing::ValuesIn(causal_cases()),
                         [](const auto& info) { return info.param.label; });

// ---- CausalSelfAttention -----------------------------------------------------------------------

// The layer against a direct evaluation of its definition in fp64: qkv = x Wqkv^T + b, split
// into q | k | v of C channels each, head h owning channels [h HS, (h+1) HS); causal softmax of
// q k^T / sqrt(HS); then the projection.
TEST(CausalSelfAttention, MatchesItsDefinition) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::int64_t B = 2, T = 5, C = 6, NH = 3, HS = C / NH;
  CausalSelfAttention attn(C, NH, true, DType::kFloat64, 3);
  testing::perturb(attn.parameters(), 5);
  const Tensor x = random_tensor({B, T, C}, rng, DType::kFloat64);
  const auto xv = x.to_vector<double>();
  const auto wq = attn.qkv().weight().value.to_vector<double>();
  const auto bq = attn.qkv().bias()->value.to_vector<double>();
  const auto wo = attn.proj().weight().value.to_vector<double>();
  const auto bo = attn.proj().bias()->value.to_vector<double>();
  std::vector<double> want(static_cast<std::size_t>(B * T * C));
  for (std::int64_t b = 0; b < B; ++b) {
    std::vector<double> qkv(static_cast<std::size_t>(T * 3 * C));
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t o = 0; o < 3 * C; ++o) {
        double s = bq[o];
        for (std::int64_t i = 0; i < C; ++i) s += xv[(b * T + t) * C + i] * wq[o * C + i];
        qkv[t * 3 * C + o] = s;
      }
    }
    std::vector<double> y(static_cast<std::size_t>(T * C));
    for (std::int64_t h = 0; h < NH; ++h) {
      for (std::int64_t t = 0; t < T; ++t) {
        std::vector<double> p(static_cast<std::size_t>(t + 1));
        double mx = -1e300, sum = 0;
        for (std::int64_t u = 0; u <= t; ++u) {
          double s = 0;
          for (std::int64_t d = 0; d < HS; ++d) {
            s += qkv[t * 3 * C + h * HS + d] * qkv[u * 3 * C + C + h * HS + d];
          }
          p[u] = s / std::sqrt(static_cast<double>(HS));
          mx = std::max(mx, p[u]);
        }
        for (double& e : p) sum += (e = std::exp(e - mx));
        for (std::int64_t d = 0; d < HS; ++d) {
          double s = 0;
          for (std::int64_t u = 0; u <= t; ++u)
            s += p[u] / sum * qkv[u * 3 * C + 2 * C + h * HS + d];
          y[t * C + h * HS + d] = s;
        }
      }
    }
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t o = 0; o < C; ++o) {
        double s = bo[o];
        for (std::int64_t i = 0; i < C; ++i) s += y[t * C + i] * wo[o * C + i];
        want[(b * T + t) * C + o] = s;
      }
    }
  }
  EXPECT_LT(max_rel_error(attn.infer(x).to_vector<double>(), want), 1e-13);
}

TEST(CausalSelfAttention, NamesInitAndKeptBytes) {
  const std::int64_t C = 16;
  CausalSelfAttention attn(C, 4, true, DType::kFloat32, 1, "h.2.attn");
  EXPECT_EQ(attn.name(), "h.2.attn");
  EXPECT_EQ(attn.channels(), C);
  EXPECT_EQ(attn.heads(), 4);
  const auto params = attn.parameters();
  ASSERT_EQ(params.size(), 4u);
  const std::vector<std::string> names = {"h.2.attn.qkv.weight", "h.2.attn.qkv.bias",
                                          "h.2.attn.proj.weight", "h.2.attn.proj.bias"};
  const std::vector<Shape> shapes = {{3 * C, C}, {3 * C}, {C, C}, {C}};
  for (std::size_t i = 0; i < params.size(); ++i) {
    EXPECT_EQ(params[i]->name, names[i]);
    EXPECT_EQ(params[i]->value.shape(), shapes[i]);
    EXPECT_EQ(params[i]->weight_decay, i % 2 == 0) << names[i];
    // PyTorch's nn.Linear default: U(-1/sqrt(in), 1/sqrt(in)), in = C for both projections.
    double mx = 0;
    for (double e : params[i]->value.to_vector<double>()) mx = std::max(mx, std::abs(e));
    EXPECT_LE(mx, 1.0 / std::sqrt(static_cast<double>(C))) << names[i];
    EXPECT_GT(mx, 0.8 / std::sqrt(static_cast<double>(C))) << names[i];
  }
  // The values of a Linear built with the same seed and name.
  Linear qkv(C, 3 * C, true, DType::kFloat64, 1, "h.2.attn.qkv");
  EXPECT_EQ(qkv.weight().value.to_vector<double>(), params[0]->value.to_vector<double>());

  CausalSelfAttention plain(6, 2, false);
  ASSERT_EQ(plain.parameters().size(), 2u);
  EXPECT_EQ(plain.parameters()[0]->name, "qkv.weight");
  EXPECT_EQ(plain.parameters()[1]->name, "proj.weight");
  EXPECT_EQ(plain.qkv().bias(), nullptr);

  // Kept bytes: after forward the input (N C), qkv (3 N C), the probabilities (B NH T T) and
  // the attention output (N C); after backward_input the input, d qkv, the attention output
  // and grad_output.
  const std::int64_t B = 2, T = 3, N = B * T;
  const Tensor x = Tensor::zeros({B, T, C});
  attn.forward(0, x);
  EXPECT_EQ(attn.bytes_kept(), static_cast<std::size_t>(4 * (N * C * 5 + B * 4 * T * T)));
  attn.backward_input(0, Tensor::zeros({B, T, C}));
  EXPECT_EQ(attn.bytes_kept(), static_cast<std::size_t>(4 * (N * C * 6)));
  attn.backward_weight(0);
  EXPECT_EQ(attn.bytes_kept(), 0u);
}

TEST(CausalSelfAttention, RejectsBadArgumentsAndInputs) {
  EXPECT_EQ(error_of<InvalidArgument>([] { CausalSelfAttention(10, 4); }),
            "[CausalSelfAttention] channels=10 must be divisible by heads=4");
  EXPECT_EQ(error_of<InvalidArgument>([] { CausalSelfAttention(0, 1); }),
            "[CausalSelfAttention] channels=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { CausalSelfAttention(8, 0); }),
            "[CausalSelfAttention] heads=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { CausalSelfAttention(8, 2, true, DType::kBFloat16); }),
            "[CausalSelfAttention] dtype bf16 must be fp32 or fp64");
  CausalSelfAttention attn(8, 2);
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              attn.forward(0, Tensor::zeros({2, 8}));
            }),
            "[CausalSelfAttention::forward] input has shape [2, 8], expected [B, T, 8]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              attn.infer(Tensor::zeros({2, 3, 6}));
            }),
            "[CausalSelfAttention::infer] input has shape [2, 3, 6], expected [B, T, 8]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              attn.forward(0, Tensor::zeros({2, 0, 8}));
            }),
            "[CausalSelfAttention::forward] input has shape [2, 0, 8], expected [B, T, 8]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              attn.output_spec({{1, 2, 8}, DType::kInt32});
            }),
            "[CausalSelfAttention::output_spec] input has dtype int32, expected fp32");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              attn.output_spec({{1, 2, 3, 8}, DType::kFloat32});
            }),
            "[CausalSelfAttention::output_spec] input has shape [1, 2, 3, 8], expected [B, T, 8]");
  EXPECT_EQ(attn.output_spec({{4, 7, 8}, DType::kFloat32}),
            (TensorSpec{{4, 7, 8}, DType::kFloat32}));
  EXPECT_EQ(attn.bytes_kept(), 0u);
}

// ---- Mlp
// -----------------------------------------------------------------------------------------

// Mlp is Linear "fc" -> GELU -> Linear "proj" built with the same seed: bitwise the same output,
// input gradient and parameter gradients.
TEST(Mlp, IsItsParts) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  Mlp mlp(6, 20, true, DType::kFloat32, 4);
  Linear fc(6, 20, true, DType::kFloat32, 4, "fc"), proj(20, 6, true, DType::kFloat32, 4, "proj");
  GELU gelu;
  const Tensor x = random_tensor({3, 2, 6}, rng, DType::kFloat32);
  const Tensor g = random_tensor({3, 2, 6}, rng, DType::kFloat32);
  const Tensor y = mlp.forward(0, x);
  EXPECT_TRUE(bitwise_equal(y, proj.forward(0, gelu.forward(0, fc.forward(0, x)))));
  EXPECT_TRUE(
      bitwise_equal(mlp.backward(0, g), fc.backward(0, gelu.backward(0, proj.backward(0, g)))));
  const std::vector<Parameter*> parts = {&fc.weight(), fc.bias(), &proj.weight(), proj.bias()};
  const auto params = mlp.parameters();
  ASSERT_EQ(params.size(), parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(params[i]->name, parts[i]->name);
    EXPECT_TRUE(bitwise_equal(params[i]->value, parts[i]->value)) << parts[i]->name;
    EXPECT_TRUE(bitwise_equal(params[i]->grad, parts[i]->grad)) << parts[i]->name;
  }
}

TEST(Mlp, NamesKeptBytesAndErrors) {
  Mlp mlp(4, 12, true, DType::kFloat64, 1, "mlp");
  EXPECT_EQ(mlp.hidden(), 12);
  const auto params = mlp.parameters();
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0]->name, "mlp.fc.weight");
  EXPECT_EQ(params[0]->value.shape(), (Shape{12, 4}));
  EXPECT_EQ(params[3]->name, "mlp.proj.bias");
  EXPECT_EQ(params[2]->value.shape(), (Shape{4, 12}));
  // proj's bound is 1/sqrt(hidden).
  double mx = 0;
  for (double e : params[2]->value.to_vector<double>()) mx = std::max(mx, std::abs(e));
  EXPECT_LE(mx, 1.0 / std::sqrt(12.0));
  EXPECT_EQ(Mlp(3, 5, false).parameters().size(), 2u);
  EXPECT_EQ(Mlp(3, 5, false).parameters()[1]->name, "proj.weight");

  // Kept bytes: after forward the input (N C) and the hidden pre-activation and activation
  // (2 N H); after backward_input the input, the activation, its pre-activation's gradient and
  // grad_output.
  const std::int64_t N = 5, C = 4, H = 12;
  mlp.forward(0, Tensor::zeros({N, C}, DType::kFloat64));
  EXPECT_EQ(mlp.bytes_kept(), static_cast<std::size_t>(8 * (N * C + 2 * N * H)));
  mlp.backward_input(0, Tensor::zeros({N, C}, DType::kFloat64));
  EXPECT_EQ(mlp.bytes_kept(), static_cast<std::size_t>(8 * (2 * N * C + 2 * N * H)));
  mlp.backward_weight(0);
  EXPECT_EQ(mlp.bytes_kept(), 0u);

  EXPECT_EQ(error_of<InvalidArgument>([] { Mlp(4, 0); }), "[Mlp] hidden=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { Mlp(-1, 4); }), "[Mlp] channels=-1 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { Mlp(4, 4, true, DType::kInt32); }),
            "[Mlp] dtype int32 must be fp32 or fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mlp.forward(0, Tensor::zeros({2, 5}, DType::kFloat64));
            }),
            "[Mlp::forward] input has shape [2, 5], expected [..., 4]");
  EXPECT_EQ(error_of<InvalidArgument>([&] { mlp.infer(Tensor::zeros({4})); }),
            "[Mlp::infer] input has dtype fp32, expected fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mlp.output_spec({{}, DType::kFloat64});
            }),
            "[Mlp::output_spec] input has shape [], expected [..., 4]");
  EXPECT_EQ(mlp.bytes_kept(), 0u);
}

// ---- PreLnBlock
// ----------------------------------------------------------------------------------

// PreLnBlock is x + attn(ln1(x)), then + mlp(ln2(.)), of parts built with the same seed and names.
TEST(PreLnBlock, IsItsParts) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::int64_t C = 8;
  const DType d = DType::kFloat64;
  PreLnBlock block(C, 2, 24, d, 9, "blk");
  testing::perturb(block.parameters(), 3);
  LayerNorm ln1(C, 1e-5, d, "blk.ln1"), ln2(C, 1e-5, d, "blk.ln2");
  CausalSelfAttention attn(C, 2, true, d, 9, "blk.attn");
  Mlp mlp(C, 24, true, d, 9, "blk.mlp");
  std::vector<Parameter*> parts;
  for (Layer* l : std::vector<Layer*>{&ln1, &attn, &ln2, &mlp}) {
    for (Parameter* p : l->parameters()) parts.push_back(p);
  }
  testing::perturb(parts, 3);
  const auto params = block.parameters();
  ASSERT_EQ(params.size(), parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i) {
    EXPECT_EQ(params[i]->name, parts[i]->name);
    EXPECT_TRUE(bitwise_equal(params[i]->value, parts[i]->value)) << parts[i]->name;
  }
  EXPECT_EQ(params.front()->name, "blk.ln1.weight");
  EXPECT_EQ(params[2]->name, "blk.attn.qkv.weight");
  EXPECT_EQ(params.back()->name, "blk.mlp.proj.bias");

  const Tensor x = random_tensor({2, 3, C}, rng, d);
  const auto xv = x.to_vector<double>();
  const auto a = attn.infer(ln1.infer(x)).to_vector<double>();
  std::vector<double> mid(xv.size());
  for (std::size_t i = 0; i < xv.size(); ++i) mid[i] = xv[i] + a[i];
  const auto m = mlp.infer(ln2.infer(Tensor::from_vector(mid, x.shape()))).to_vector<double>();
  std::vector<double> want(xv.size());
  for (std::size_t i = 0; i < xv.size(); ++i) want[i] = mid[i] + m[i];
  EXPECT_EQ(block.infer(x).to_vector<double>(), want);

  PreLnBlock plain(4, 1, 8);
  EXPECT_EQ(plain.parameters().size(), 12u);
  EXPECT_EQ(plain.parameters()[0]->name, "ln1.weight");
  EXPECT_EQ(plain.parameters()[4]->name, "attn.proj.weight");
  EXPECT_EQ(plain.parameters()[8]->name, "mlp.fc.weight");
}

TEST(PreLnBlock, KeptBytesAndErrors) {
  PreLnBlock block(8, 2, 16);
  const Tensor x = Tensor::zeros({2, 3, 8});
  block.forward(0, x);
  EXPECT_EQ(block.bytes_kept(), block.ln1().bytes_kept() + block.attn().bytes_kept() +
                                    block.ln2().bytes_kept() + block.mlp().bytes_kept());
  EXPECT_GT(block.attn().bytes_kept(), 0u);
  block.release(0);
  EXPECT_EQ(block.bytes_kept(), 0u);
  EXPECT_EQ(block.attn().bytes_kept(), 0u);

  EXPECT_EQ(error_of<InvalidArgument>([] { PreLnBlock(10, 4, 8); }),
            "[PreLnBlock] channels=10 must be divisible by heads=4");
  EXPECT_EQ(error_of<InvalidArgument>([] { PreLnBlock(8, 4, 0); }),
            "[PreLnBlock] hidden=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { PreLnBlock(8, 4, 8, DType::kInt32); }),
            "[PreLnBlock] dtype int32 must be fp32 or fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              block.forward(0, Tensor::zeros({6, 8}));
            }),
            "[PreLnBlock::forward] input has shape [6, 8], expected [B, T, 8]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              block.output_spec({{1, 1, 4}, DType::kFloat32});
            }),
            "[PreLnBlock::output_spec] input has shape [1, 1, 4], expected [B, T, 8]");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              block.infer(Tensor::zeros({1, 1, 8}, DType::kFloat64));
            }),
            "[PreLnBlock::infer] input has dtype fp64, expected fp32");
  EXPECT_EQ(block.bytes_kept(), 0u);
}

// In a Sequential with activation checkpointing (recompute in backward_input), the same
// gradients, bitwise, as without.
TEST(PreLnBlock, CheckpointedSequentialIsBitwiseTheSame) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  auto build = [](bool checkpointing) {
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(std::make_unique<PreLnBlock>(8, 2, 16, DType::kFloat32, 1));
    layers.push_back(std::make_unique<PreLnBlock>(8, 4, 16, DType::kFloat32, 2));
    return std::make_unique<Sequential>(std::move(layers), SequentialOptions{0, checkpointing});
  };
  auto plain = build(false), ckpt = build(true);
  EXPECT_EQ(plain->parameters()[0]->name, "0.ln1.weight");
  EXPECT_EQ(plain->parameters().back()->name, "1.mlp.proj.bias");
  const Tensor x = random_tensor({2, 5, 8}, rng, DType::kFloat32);
  const Tensor g = random_tensor({2, 5, 8}, rng, DType::kFloat32);
  EXPECT_TRUE(bitwise_equal(plain->forward(0, {x})[0], ckpt->forward(0, {x})[0]));
  EXPECT_LT(ckpt->bytes_kept(), plain->bytes_kept());
  EXPECT_TRUE(bitwise_equal(plain->backward_input(0, {g})[0], ckpt->backward_input(0, {g})[0]));
  plain->backward_weight(0);
  ckpt->backward_weight(0);
  const auto pp = plain->parameters(), pc = ckpt->parameters();
  for (std::size_t i = 0; i < pp.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(pp[i]->grad, pc[i]->grad)) << pp[i]->name;
  }
  EXPECT_EQ(ckpt->bytes_kept(), 0u);
}

// ---- a PreLnBlock model through a Pipeline
// ---------------------------------------------------------

constexpr std::int64_t kVocab = 13, kChannels = 8, kRows = 8, kTime = 6;

// Embedding -> 2 PreLnBlocks -> LayerNorm -> Linear head: a small causal language model.
ModelSpec tiny_lm() {
  ModelSpec m;
  m.add<Embedding>(kVocab, kChannels, DType::kFloat32, 1, "wte");
  m.add<PreLnBlock>(kChannels, 2, 4 * kChannels, DType::kFloat32, 2, "h.0");
  m.add<PreLnBlock>(kChannels, 2, 4 * kChannels, DType::kFloat32, 3, "h.1");
  m.add<LayerNorm>(kChannels, 1e-5, DType::kFloat32, "ln_f");
  m.add<Linear>(kChannels, kVocab, false, DType::kFloat32, 4, "head");
  return m;
}

struct TrainRun {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> params;  // by name, from every rank
};

TrainRun train(const PipelineOptions& options, const Tensor& ids, const Tensor& targets) {
  runtime::set_logging(false);
  TrainRun run;
  std::mutex mu;
  std::vector<std::vector<double>> losses(static_cast<std::size_t>(options.pipeline));
  launch(
      options.pipeline, "inprocess",
      [&](Transport& t) {
        Pipeline pipe(tiny_lm(), std::make_unique<CrossEntropyLoss>(), options, t);
        for (int step = 0; step < 3; ++step) {
          losses[static_cast<std::size_t>(t.rank())].push_back(
              pipe.train_step({ids}, {targets}).loss);
        }
        std::lock_guard<std::mutex> lock(mu);
        for (Parameter* p : pipe.parameters()) run.params[p->name] = p->value.to_vector<float>();
      },
      TransportOptions{std::chrono::seconds(30)});
  for (const auto& l : losses) EXPECT_EQ(l, losses[0]);  // every rank reports the same
  run.losses = losses[0];
  return run;
}

TEST(PreLnBlock, TrainsThroughAZeroBubblePipelineAsOnOneDevice) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const Tensor ids = testing::random_ids({kRows, kTime}, kVocab, rng);
  const Tensor targets = testing::random_ids({kRows, kTime}, kVocab, rng);
  PipelineOptions one;
  one.schedule = "gpipe";
  one.microbatches = 4;
  one.optimizer.lr = 1e-2;
  const TrainRun want = train(one, ids, targets);
  PipelineOptions two = one;
  two.schedule = "zb-h1";
  two.pipeline = 2;
  const TrainRun got = train(two, ids, targets);
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (std::size_t i = 0; i < want.losses.size(); ++i) {
    EXPECT_NEAR(got.losses[i], want.losses[i], 1e-6 * std::abs(want.losses[i])) << "step " << i;
  }
  EXPECT_LT(want.losses.back(), want.losses.front());  // it trains: the check is not vacuous
  ASSERT_EQ(got.params.size(), want.params.size());
  EXPECT_TRUE(want.params.contains("h.1.attn.qkv.weight"));
  for (const auto& [name, values] : want.params) {
    ASSERT_TRUE(got.params.contains(name)) << name;
    const std::vector<float>& g = got.params.at(name);
    for (std::size_t k = 0; k < values.size(); ++k) {
      EXPECT_NEAR(g[k], values[k], 1e-5 * std::max(1.0f, std::abs(values[k]))) << name << k;
    }
  }
}

}  // namespace
}  // namespace pipetrain::nn
