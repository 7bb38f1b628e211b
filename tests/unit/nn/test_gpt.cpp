// The GPT layers, stages and model: finite differences in fp64, fp32 against fp64, the split
// backward (I + W) against the full one, checkpointing, stage cuts, memory and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/nn/loss.h"

namespace pipetrain::nn {
namespace {

template <typename F>
void expect_message(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected: " << message;
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

GptConfig tiny(DType dtype = DType::kFloat64, bool tied = true) {
  GptConfig c;
  c.vocab_size = 11;
  c.context_length = 6;
  c.num_layers = 2;
  c.num_heads = 2;
  c.channels = 8;
  c.tied_embeddings = tied;
  c.dtype = dtype;
  c.seed = 7;
  return c;
}

Tensor random_ids(std::int64_t b, std::int64_t t, std::int64_t v, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::int32_t> ids(static_cast<std::size_t>(b * t));
  for (auto& id : ids) id = static_cast<std::int32_t>(rng() % static_cast<std::uint64_t>(v));
  return Tensor::from_vector(ids, {b, t});
}

// Perturbs all parameters a little so that biases and LayerNorm gains are not at their special
// initial values (zero / one), which would hide gradient errors.
void perturb(GptStage& stage, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.1);
  for (Parameter* p : stage.parameters()) {
    std::vector<double> v = p->value.to_vector<double>();
    for (double& x : v) x += normal(rng);
    p->value.copy_from(Tensor::from_vector(v, p->value.shape()));
  }
}

// The mean cross-entropy of the stage's logits, keeping nothing.
double eval_loss(GptStage& stage, const Tensor& tokens, const Tensor& targets) {
  CrossEntropyLoss loss;
  return loss.evaluate(stage.infer({tokens}), {targets});
}

Tensor one(const TensorList& list) {
  EXPECT_EQ(list.size(), 1u);
  return list.at(0);
}

std::map<std::string, std::vector<double>> grads_by_name(GptStage& stage) {
  std::map<std::string, std::vector<double>> out;
  for (Parameter* p : stage.parameters()) out[p->name] = p->grad.to_vector<double>();
  return out;
}

// Model loss and parameter gradients against central differences, every parameter element.
void check_model_gradients(const GptConfig& config) {
  auto model = make_model(config);
  perturb(*model, 3);
  const Tensor tokens = random_ids(2, 5, config.vocab_size, 11);
  const Tensor targets = random_ids(2, 5, config.vocab_size, 12);
  const double scale = 0.5;
  CrossEntropyLoss loss;
  loss.forward(0, model->forward(0, {tokens}), {targets});
  model->backward(0, loss.backward(0, scale));
  const double h = 1e-6;
  for (Parameter* p : model->parameters()) {
    double* v = p->value.data<double>();
    const double* g = p->grad.data<double>();
    double diff = 0, norm = 0;
    for (std::int64_t i = 0; i < p->value.numel(); ++i) {
      const double saved = v[i];
      v[i] = saved + h;
      const double up = eval_loss(*model, tokens, targets);
      v[i] = saved - h;
      const double down = eval_loss(*model, tokens, targets);
      v[i] = saved;
      const double numeric = scale * (up - down) / (2 * h);
      diff = std::max(diff, std::abs(numeric - g[i]));
      norm = std::max(norm, std::abs(numeric));
    }
    // Bound: 1e-6 relative (max-norm over the parameter), fp64 with h = 1e-6.
    EXPECT_LT(diff / norm, 1e-6) << p->name;
  }
}

TEST(GptModel, GradientsMatchFiniteDifferencesTied) { check_model_gradients(tiny()); }
TEST(GptModel, GradientsMatchFiniteDifferencesUntied) {
  check_model_gradients(tiny(DType::kFloat64, false));
}

TEST(GptModel, Fp32MatchesFp64) {
  auto m32 = make_model(tiny(DType::kFloat32));
  auto m64 = make_model(tiny(DType::kFloat64));
  // Initial values are fp32-rounded in both models.
  auto p32 = m32->parameters(), p64 = m64->parameters();
  ASSERT_EQ(p32.size(), p64.size());
  for (std::size_t i = 0; i < p32.size(); ++i) {
    EXPECT_EQ(p32[i]->value.to_vector<double>(), p64[i]->value.to_vector<double>());
  }
  const Tensor tokens = random_ids(2, 6, 11, 1), targets = random_ids(2, 6, 11, 2);
  CrossEntropyLoss loss32, loss64;
  const double l32 = loss32.forward(0, m32->forward(0, {tokens}), {targets});
  const double l64 = loss64.forward(0, m64->forward(0, {tokens}), {targets});
  EXPECT_LT(std::abs(l32 - l64) / l64, 1e-5);  // bound: 1e-5 relative
  m32->backward(0, loss32.backward(0, 1.0));
  m64->backward(0, loss64.backward(0, 1.0));
  for (std::size_t i = 0; i < p32.size(); ++i) {
    const auto a = p32[i]->grad.to_vector<double>(), b = p64[i]->grad.to_vector<double>();
    double diff = 0, norm = 0;
    for (std::size_t k = 0; k < a.size(); ++k) {
      diff = std::max(diff, std::abs(a[k] - b[k]));
      norm = std::max(norm, std::abs(b[k]));
    }
    // Bound: 1e-4 relative (max-norm) for gradients through the whole fp32 model.
    EXPECT_LT(diff / norm, 1e-4) << p64[i]->name;
  }
}

TEST(GptModel, InitialLossIsNearLogVocab) {
  auto model = make_model(tiny(DType::kFloat32));
  const double loss = eval_loss(*model, random_ids(4, 6, 11, 5), random_ids(4, 6, 11, 6));
  EXPECT_NEAR(loss, std::log(11.0), 0.1);
}

// Runs microbatches 0..2 through `stage` either as F B per microbatch or as all forwards, the
// input halves in reverse, then the weight halves in order; returns the losses.
std::vector<double> run_steps(GptStage& stage, bool split) {
  std::vector<double> losses;
  std::vector<Tensor> tokens, targets;
  for (int mb = 0; mb < 3; ++mb) {
    tokens.push_back(random_ids(2, 5, 11, 100 + mb));
    targets.push_back(random_ids(2, 5, 11, 200 + mb));
  }
  CrossEntropyLoss loss;
  if (!split) {
    for (int mb = 0; mb < 3; ++mb) {
      losses.push_back(loss.forward(mb, stage.forward(mb, {tokens[mb]}), {targets[mb]}));
      EXPECT_FALSE(one(stage.backward(mb, loss.backward(mb, 1.0 / 3))).defined());
    }
  } else {
    for (int mb = 0; mb < 3; ++mb) {
      losses.push_back(loss.forward(mb, stage.forward(mb, {tokens[mb]}), {targets[mb]}));
    }
    for (int mb = 2; mb >= 0; --mb) {
      EXPECT_FALSE(one(stage.backward_input(mb, loss.backward(mb, 1.0 / 3))).defined());
    }
    EXPECT_GT(stage.bytes_kept(), 0u);
    for (int mb = 0; mb < 3; ++mb) stage.backward_weight(mb);
  }
  EXPECT_EQ(stage.bytes_kept(), 0u);
  return losses;
}

TEST(GptStage, SplitBackwardIsBitwiseTheFullBackward) {
  auto full = make_model(tiny(DType::kFloat32));
  auto split = make_model(tiny(DType::kFloat32));
  EXPECT_EQ(run_steps(*full, false), run_steps(*split, true));
  EXPECT_EQ(grads_by_name(*full), grads_by_name(*split));
}

TEST(GptStage, CheckpointingIsBitwisePlain) {
  auto plain = make_model(tiny(DType::kFloat32));
  auto ckpt = make_model(tiny(DType::kFloat32), StageOptions{true});
  EXPECT_EQ(run_steps(*plain, true), run_steps(*ckpt, true));
  EXPECT_EQ(grads_by_name(*plain), grads_by_name(*ckpt));
}

TEST(GptStage, CheckpointingKeepsOnlyTheInput) {
  GptConfig config = tiny(DType::kFloat32);
  auto plain = make_stage(config, 1, 2);
  auto ckpt = make_stage(config, 1, 2, StageOptions{true});
  const Tensor x = Tensor::zeros({2, 5, 8});
  Tensor y1 = one(plain->forward(0, {x})), y2 = one(ckpt->forward(0, {x}));
  EXPECT_EQ(y1.to_vector<float>(), y2.to_vector<float>());
  EXPECT_EQ(ckpt->bytes_kept(), x.nbytes());
  EXPECT_GT(plain->bytes_kept(), 10 * x.nbytes());
  const Tensor g = Tensor::zeros({2, 5, 8});
  Tensor dx1 = one(plain->backward_input(0, {g})), dx2 = one(ckpt->backward_input(0, {g}));
  EXPECT_EQ(dx1.to_vector<float>(), dx2.to_vector<float>());
  EXPECT_EQ(plain->bytes_kept(), ckpt->bytes_kept());
  plain->backward_weight(0);
  ckpt->backward_weight(0);
  EXPECT_EQ(plain->bytes_kept(), 0u);
  EXPECT_EQ(ckpt->bytes_kept(), 0u);
}

// Two stages chained equal the whole model: bitwise when untied; when tied, the two wte copies'
// gradients summed equal the shared one's to rounding.
void check_cut(bool tied) {
  GptConfig config = tiny(DType::kFloat32, tied);
  auto whole = make_model(config);
  auto s0 = make_stage(config, 0, 1);
  auto s1 = make_stage(config, 2, 3);
  CrossEntropyLoss loss_whole, loss_cut;
  for (int mb = 0; mb < 2; ++mb) {
    const Tensor tokens = random_ids(2, 5, 11, 10 + mb), targets = random_ids(2, 5, 11, 20 + mb);
    const TensorList h = s0->forward(mb, {tokens});
    EXPECT_EQ(specs_of(h), s0->output_specs(specs_of({tokens})));
    const TensorList logits = s1->forward(mb, h);
    EXPECT_EQ(one(logits).to_vector<float>(), one(whole->forward(mb, {tokens})).to_vector<float>());
    EXPECT_EQ(loss_cut.forward(mb, logits, {targets}),
              loss_whole.forward(mb, whole->forward(mb + 10, {tokens}), {targets}));
    whole->release(mb);
    s0->backward(mb, s1->backward(mb, loss_cut.backward(mb, 0.5)));
    whole->backward(mb + 10, loss_whole.backward(mb, 0.5));
  }
  auto g = grads_by_name(*whole);
  auto g0 = grads_by_name(*s0), g1 = grads_by_name(*s1);
  EXPECT_EQ(g0.size() + g1.size(), g.size() + (tied ? 1 : 0));
  for (auto& [name, grad] : g) {
    if (name == "wte" && tied) {
      ASSERT_EQ(s0->tied_parameters().size(), 1u);
      ASSERT_EQ(s1->tied_parameters().size(), 1u);
      EXPECT_EQ(s0->tied_parameters()[0].key, "wte");
      EXPECT_EQ(s1->tied_parameters()[0].parameter->name, "wte");
      for (std::size_t i = 0; i < grad.size(); ++i) {
        EXPECT_NEAR(g0[name][i] + g1[name][i], grad[i], 1e-6);
      }
    } else {
      EXPECT_EQ(g0.contains(name) ? g0[name] : g1[name], grad) << name;
    }
  }
  EXPECT_TRUE(whole->tied_parameters().empty());
}

TEST(GptStage, CutEqualsWholeModelUntied) { check_cut(false); }
TEST(GptStage, CutEqualsWholeModelTied) { check_cut(true); }

TEST(GptStage, ParametersDependOnlyOnSeedAndName) {
  GptConfig config = tiny(DType::kFloat32);
  auto a = make_model(config);
  auto b = make_stage(config, 1, 3);
  std::map<std::string, std::vector<float>> va;
  for (Parameter* p : a->parameters()) va[p->name] = p->value.to_vector<float>();
  for (Parameter* p : b->parameters())
    EXPECT_EQ(p->value.to_vector<float>(), va[p->name]) << p->name;
  config.seed = 8;
  auto c = make_model(config);
  EXPECT_NE(c->parameters()[0]->value.to_vector<float>(), va["wte"]);
}

TEST(GptConfig, Gpt2SmallHas124MParameters) {
  const GptConfig config = gpt2_124m();
  EXPECT_EQ(config.num_parameters(), 124439808);
  EXPECT_EQ(config.num_model_layers(), 14);
  GptConfig t = tiny(DType::kFloat32);
  auto model = make_model(t);
  EXPECT_EQ(count_parameters(model->parameters()), t.num_parameters());
  t.tied_embeddings = false;
  auto untied = make_model(t);
  EXPECT_EQ(count_parameters(untied->parameters()), t.num_parameters());
}

TEST(GptConfig, InitFollowsGpt2) {
  GptConfig config = tiny(DType::kFloat64);
  config.channels = 64;
  config.num_heads = 4;
  config.num_layers = 8;
  TransformerBlock block(config, 0);
  for (Parameter* p : block.parameters()) {
    const auto v = p->value.to_vector<double>();
    double ss = 0;
    for (double x : v) ss += x * x;
    const double std = std::sqrt(ss / static_cast<double>(v.size()));
    if (p->name.ends_with("c_proj.weight")) {
      EXPECT_NEAR(std, 0.02 / 4.0, 0.0005) << p->name;  // 0.02 / sqrt(2 * 8)
    } else if (p->name.ends_with("c_attn.weight") || p->name.ends_with("c_fc.weight")) {
      EXPECT_NEAR(std, 0.02, 0.001) << p->name;
    } else if (p->name.ends_with("ln_1.weight") || p->name.ends_with("ln_2.weight")) {
      EXPECT_EQ(std, 1.0) << p->name;
    } else {
      EXPECT_EQ(std, 0.0) << p->name;
    }
    EXPECT_EQ(p->weight_decay, p->value.dim() == 2) << p->name;
  }
}

TEST(SplitLayers, SpreadsBlocksEvenly) {
  GptConfig config = tiny(DType::kFloat32);
  config.num_layers = 5;
  using R = std::vector<std::pair<std::int64_t, std::int64_t>>;
  EXPECT_EQ(split_layers(config, 1), (R{{0, 6}}));
  EXPECT_EQ(split_layers(config, 2), (R{{0, 3}, {4, 6}}));
  EXPECT_EQ(split_layers(config, 3), (R{{0, 2}, {3, 4}, {5, 6}}));
  expect_message([&] { split_layers(config, 6); },
                 "[split_layers] num_stages=6 must be in [1, num_layers=5]");
}

TEST(GptErrors, MessagesAreExact) {
  GptConfig config = tiny(DType::kFloat32);
  expect_message([&] { make_stage(config, 2, 4); },
                 "[make_stage] layers [2, 4] are outside the model's layers [0, 3]");
  GptConfig bad = config;
  bad.channels = 10;
  bad.num_heads = 4;
  expect_message([&] { make_model(bad); },
                 "[GptConfig::validate] channels=10 must be divisible by num_heads=4");
  auto first = make_stage(config, 0, 1);
  expect_message(
      [&] {
        first->forward(0, {Tensor::from_vector(std::vector<std::int32_t>{1, 11}, {1, 2})});
      },
      "[GptEmbedding::forward] token id 11 at index 1 is outside [0, 11)");
  expect_message(
      [&] {
        first->forward(0, {Tensor::zeros({1, 7}, DType::kInt32)});
      },
      "[GptEmbedding::forward] input has T=7, more than context_length=6");
  expect_message(
      [&] {
        first->forward(0, {Tensor::zeros({2, 3})});
      },
      "[GptEmbedding::forward] input has dtype fp32, expected int32");
  EXPECT_EQ(first->bytes_kept(), 0u);
  first->forward(0, {Tensor::zeros({1, 2}, DType::kInt32)});
  expect_message(
      [&] {
        first->forward(0, {Tensor::zeros({1, 2}, DType::kInt32)});
      },
      "[Sequential::forward] microbatch 0 is already in flight");
  expect_message([&] { first->backward_weight(0); },
                 "[Sequential::backward_weight] microbatch 0 has not run backward_input");
  expect_message(
      [&] {
        first->backward_input(1, {Tensor::zeros({1, 2, 8})});
      },
      "[Sequential::backward_input] microbatch 1 has no saved forward");
  expect_message(
      [&] {
        first->backward_input(0, {Tensor::zeros({1, 3, 8})});
      },
      "[TransformerBlock::backward_input] grad_output has shape [1, 3, 8], expected [1, 2, 8]");

  auto middle = make_stage(config, 1, 2);
  expect_message(
      [&] {
        middle->forward(0, {Tensor::zeros({2, 4})});
      },
      "[TransformerBlock::forward] input has shape [2, 4], expected [B, T, 8]");
  expect_message(
      [&] {
        middle->forward(0, {Tensor::zeros({2, 4, 8}, DType::kFloat64)});
      },
      "[TransformerBlock::forward] input has dtype fp64, expected fp32");
  EXPECT_EQ(middle->bytes_kept(), 0u);  // a rejected forward keeps nothing

  expect_message([&] { middle->forward(0, {Tensor::zeros({2, 4, 8}), Tensor::zeros({2, 4, 8})}); },
                 "[Sequential::forward] got 2 input tensors, expected 1");
  expect_message([&] { middle->output_specs({{{2, 4, 9}, DType::kFloat32}}); },
                 "[TransformerBlock::output_spec] input has shape [2, 4, 9], expected [B, T, 8]");

  auto last = make_stage(config, 3, 3);
  expect_message(
      [&] {
        last->backward_input(0, {Tensor::zeros({2, 4, 11})});
      },
      "[Sequential::backward_input] microbatch 0 has no saved forward");
  last->forward(0, {Tensor::zeros({2, 4, 8})});
  expect_message(
      [&] {
        last->backward_input(0, {Tensor::zeros({2, 4, 8})});
      },
      "[LmHead::backward_input] grad_output is [2, 4, 8] fp32, expected [2, 4, 11] fp32");
}

TEST(GptStage, InferKeepsNothingAndGivesLogits) {
  auto model = make_model(tiny(DType::kFloat32));
  const Tensor logits = one(model->infer({random_ids(1, 4, 11, 3)}));
  EXPECT_EQ(logits.shape(), (Shape{1, 4, 11}));
  EXPECT_EQ(model->bytes_kept(), 0u);
  EXPECT_EQ(model->output_specs({{{1, 4}, DType::kInt32}}),
            (std::vector<TensorSpec>{{{1, 4, 11}, DType::kFloat32}}));
}

}  // namespace
}  // namespace pipetrain::nn
