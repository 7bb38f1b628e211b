// Sequential (pipetrain/nn/sequential.h): bitwise the same layers driven by hand, activation
// checkpointing bitwise the plain run (Dropout included), undefined gradients stopping the
// chain, parameter names, output specs, memory and errors.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "nn_testing.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/layers.h"
#include "pipetrain/nn/sequential.h"
#include "test_seed.h"

namespace pipetrain::nn {
namespace {

using testing::bitwise_equal;
using testing::error_of;
using testing::random_tensor;

using Layers = std::vector<std::unique_ptr<Layer>>;

// An MLP with every kind of floating layer: [.., 6] -> [.., 5].
Layers mlp(DType dtype = DType::kFloat32, double p = 0.2) {
  Layers layers;
  layers.push_back(std::make_unique<Linear>(6, 8, true, dtype, 1));
  layers.push_back(std::make_unique<ReLU>(dtype));
  layers.push_back(std::make_unique<Dropout>(p, 2));
  layers.push_back(std::make_unique<LayerNorm>(8, 1e-5, dtype));
  layers.push_back(std::make_unique<Linear>(8, 8, false, dtype, 3, "mid"));
  layers.push_back(std::make_unique<GELU>(dtype));
  layers.push_back(std::make_unique<Dropout>(p, 4));
  layers.push_back(std::make_unique<Linear>(8, 5, true, dtype, 5));
  return layers;
}

std::unique_ptr<Sequential> make_mlp(bool checkpointing, double p = 0.2) {
  auto s =
      std::make_unique<Sequential>(mlp(DType::kFloat32, p), SequentialOptions{0, checkpointing});
  testing::perturb(s->parameters(), 17);
  return s;
}

struct StepsRun {
  std::vector<Tensor> outputs, grad_inputs;
  std::map<std::string, std::vector<double>> grads;
};

// Two steps of three microbatches through `stage`, in a zero-bubble-like order: all forwards,
// the input halves in reverse, then the weight halves in order.
StepsRun run_steps(Stage& stage, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  StepsRun r;
  for (std::int64_t step = 0; step < 2; ++step) {
    stage.begin_step(step);
    std::vector<Tensor> g;
    for (MicrobatchId mb = 0; mb < 3; ++mb) {
      r.outputs.push_back(stage.forward(mb, {random_tensor({2, 3, 6}, rng, DType::kFloat32)})[0]);
      g.push_back(random_tensor({2, 3, 5}, rng, DType::kFloat32));
    }
    for (MicrobatchId mb = 2; mb >= 0; --mb) {
      r.grad_inputs.push_back(stage.backward_input(mb, {g[static_cast<std::size_t>(mb)]})[0]);
    }
    EXPECT_GT(stage.bytes_kept(), 0u);
    for (MicrobatchId mb = 0; mb < 3; ++mb) stage.backward_weight(mb);
    EXPECT_EQ(stage.bytes_kept(), 0u);
  }
  r.grads = testing::grads_by_name(stage.parameters());
  return r;
}

void expect_bitwise(const StepsRun& a, const StepsRun& b) {
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (std::size_t i = 0; i < a.outputs.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(a.outputs[i], b.outputs[i])) << "output " << i;
    EXPECT_TRUE(bitwise_equal(a.grad_inputs[i], b.grad_inputs[i])) << "grad_input " << i;
  }
  EXPECT_EQ(a.grads, b.grads);
}

// The same layers driven by hand, with Stage's interface.
class ByHand final : public Stage {
 public:
  explicit ByHand(Layers layers) : layers_(std::move(layers)) {}
  TensorList forward(MicrobatchId mb, const TensorList& inputs) override {
    Tensor x = inputs[0];
    for (auto& l : layers_) x = l->forward(mb, x);
    return {x};
  }
  TensorList backward_input(MicrobatchId mb, const TensorList& grads) override {
    Tensor g = grads[0];
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) g = (*it)->backward_input(mb, g);
    return {g};
  }
  void backward_weight(MicrobatchId mb) override {
    for (auto& l : layers_) l->backward_weight(mb);
  }
  TensorList infer(const TensorList& inputs) override { return inputs; }
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& in) const override {
    return in;
  }
  void begin_step(std::int64_t step) override {
    for (auto& l : layers_) l->begin_step(step);
  }
  std::size_t bytes_kept() const override {
    std::size_t n = 0;
    for (const auto& l : layers_) n += l->bytes_kept();
    return n;
  }
  std::vector<Parameter*> parameters() override {
    std::vector<Parameter*> out;
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      for (Parameter* p : layers_[i]->parameters()) out.push_back(p);
    }
    return out;
  }

 private:
  Layers layers_;
};

TEST(Sequential, IsBitwiseTheLayersDrivenByHand) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  auto seq = make_mlp(false);
  ByHand hand(mlp());
  testing::perturb(hand.parameters(), 17);
  StepsRun a = run_steps(*seq, seed), b = run_steps(hand, seed);
  // The hand-driven layers keep their own names ("weight"): compare by position.
  ASSERT_EQ(a.outputs.size(), b.outputs.size());
  for (std::size_t i = 0; i < a.outputs.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(a.outputs[i], b.outputs[i])) << "output " << i;
    EXPECT_TRUE(bitwise_equal(a.grad_inputs[i], b.grad_inputs[i])) << "grad_input " << i;
  }
  const auto ps = seq->parameters(), ph = hand.parameters();
  ASSERT_EQ(ps.size(), ph.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(ps[i]->grad, ph[i]->grad)) << ps[i]->name;
  }
}

TEST(Sequential, CheckpointingIsBitwisePlainWithDropout) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  auto plain = make_mlp(false), ckpt = make_mlp(true);
  expect_bitwise(run_steps(*plain, seed), run_steps(*ckpt, seed));
}

TEST(Sequential, BackwardIsBitwiseTheSplitBackward) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  auto split = make_mlp(true), full = make_mlp(true);
  const Tensor x = random_tensor({4, 6}, rng, DType::kFloat32);
  const Tensor g = random_tensor({4, 5}, rng, DType::kFloat32);
  split->forward(0, {x});
  full->forward(0, {x});
  const Tensor a = split->backward_input(0, {g})[0];
  split->backward_weight(0);
  EXPECT_TRUE(bitwise_equal(full->backward(0, {g})[0], a));
  EXPECT_EQ(testing::grads_by_name(split->parameters()),
            testing::grads_by_name(full->parameters()));
}

TEST(Sequential, CheckpointingKeepsOnlyTheInputUntilTheBackward) {
  auto plain = make_mlp(false), ckpt = make_mlp(true);
  const Tensor x = Tensor::zeros({2, 6});
  const Tensor y1 = plain->forward(0, {x})[0], y2 = ckpt->forward(0, {x})[0];
  EXPECT_TRUE(bitwise_equal(y1, y2));
  EXPECT_EQ(ckpt->bytes_kept(), x.nbytes());
  EXPECT_GT(plain->bytes_kept(), 3 * x.nbytes());
  const Tensor g = Tensor::zeros({2, 5});
  EXPECT_TRUE(bitwise_equal(plain->backward_input(0, {g})[0], ckpt->backward_input(0, {g})[0]));
  EXPECT_EQ(plain->bytes_kept(), ckpt->bytes_kept());
  plain->backward_weight(0);
  ckpt->backward_weight(0);
  EXPECT_EQ(plain->bytes_kept(), 0u);
  EXPECT_EQ(ckpt->bytes_kept(), 0u);
}

TEST(Sequential, InferIsForwardWithoutDropoutAndKeepsNothing) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  auto s = make_mlp(false, 0.0);
  const Tensor x = random_tensor({3, 6}, rng, DType::kFloat32);
  const Tensor y = s->infer({x})[0];
  EXPECT_EQ(s->bytes_kept(), 0u);
  EXPECT_TRUE(bitwise_equal(y, s->forward(0, {x})[0]));
  // With dropout, forward differs from infer but infer does not.
  auto d = make_mlp(false, 0.5);
  EXPECT_TRUE(bitwise_equal(d->infer({x})[0], y));
  EXPECT_FALSE(bitwise_equal(d->forward(0, {x})[0], y));
}

TEST(Sequential, BeginStepReachesDropout) {
  auto s = make_mlp(false, 0.5);
  const Tensor x = Tensor::zeros({2, 6});
  x.view({12}).fill(1.0);
  s->begin_step(0);
  const Tensor a = s->forward(0, {x})[0];
  s->release(0);
  const Tensor b = s->forward(0, {x})[0];
  s->release(0);
  s->begin_step(1);
  const Tensor c = s->forward(0, {x})[0];
  s->release(0);
  EXPECT_TRUE(bitwise_equal(a, b));
  EXPECT_FALSE(bitwise_equal(a, c));
}

// A test layer that takes floats and returns an undefined input gradient (as a layer whose
// input is integer would).
class NoGradient final : public Layer {
 public:
  Tensor forward(MicrobatchId, const Tensor& input) override { return input.clone(); }
  Tensor backward_input(MicrobatchId mb, const Tensor&) override {
    ++inputs;
    last = mb;
    return Tensor();
  }
  void backward_weight(MicrobatchId) override { ++weights; }
  Tensor infer(const Tensor& input) override { return input.clone(); }
  TensorSpec output_spec(const TensorSpec& input) const override { return input; }
  void release(MicrobatchId) override { ++releases; }
  std::size_t bytes_kept() const override { return 0; }
  int inputs = 0, weights = 0, releases = 0;
  MicrobatchId last = -1;
};

TEST(Sequential, AnUndefinedGradientStopsTheChain) {
  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "checkpointing" : "plain");
    Layers layers;
    layers.push_back(std::make_unique<Linear>(3, 3, true, DType::kFloat64, 1));
    layers.push_back(std::make_unique<NoGradient>());
    layers.push_back(std::make_unique<Linear>(3, 2, true, DType::kFloat64, 2));
    auto* stop = static_cast<NoGradient*>(layers[1].get());
    Sequential s(std::move(layers), {0, checkpointing});
    s.forward(4, {Tensor::zeros({2, 3}, DType::kFloat64)});
    Tensor ones = Tensor::empty({2, 2}, DType::kFloat64);
    ones.fill(1.0);
    const TensorList g = s.backward_input(4, {ones});
    ASSERT_EQ(g.size(), 1u);
    EXPECT_FALSE(g[0].defined());
    EXPECT_EQ(stop->inputs, 1);
    // The first Linear got no gradient: released now, so it keeps nothing.
    EXPECT_EQ(s.layers()[0]->bytes_kept(), 0u);
    s.backward_weight(4);
    EXPECT_EQ(stop->weights, 1);
    EXPECT_EQ(s.bytes_kept(), 0u);
    // The last Linear added its gradients (its bias: the column sums of ones); the first none.
    EXPECT_EQ(s.parameters()[3]->grad.to_vector<double>(), std::vector<double>(2, 2.0));
    EXPECT_EQ(s.parameters()[0]->grad.to_vector<double>(), std::vector<double>(9, 0.0));
  }
}

TEST(Sequential, AnEmbeddingFirstReturnsAnUndefinedGradient) {
  Layers layers;
  layers.push_back(std::make_unique<Embedding>(10, 4, DType::kFloat32, 1, "wte"));
  layers.push_back(std::make_unique<Linear>(4, 10, true, DType::kFloat32, 2, "head"));
  Sequential s(std::move(layers));
  const Tensor ids = Tensor::from_vector(std::vector<std::int32_t>{1, 2, 3, 1}, {2, 2});
  EXPECT_EQ(s.output_specs({{{2, 2}, DType::kInt32}}),
            (std::vector<TensorSpec>{{{2, 2, 10}, DType::kFloat32}}));
  const Tensor y = s.forward(0, {ids})[0];
  Tensor g = Tensor::empty(y.shape());
  g.fill(1.0);
  EXPECT_FALSE(s.backward(0, {g})[0].defined());
  EXPECT_NE(s.parameters()[0]->grad.to_vector<float>(), std::vector<float>(40, 0.0f));
  // An undefined gradient for the output (an integer output) stops at once.
  s.forward(1, {ids});
  EXPECT_FALSE(s.backward_input(1, {Tensor()})[0].defined());
  s.backward_weight(1);
  EXPECT_EQ(s.bytes_kept(), 0u);
}

TEST(Sequential, NamesUnnamedLayersByIndex) {
  Parameter shared = make_parameter("weight", {2}, false);
  // A layer listing a parameter of its own: Sequential renames it once.
  class Holder final : public Layer {
   public:
    explicit Holder(Parameter* p) : p_(p) {}
    std::vector<Parameter*> parameters() override { return {p_}; }
    Tensor forward(MicrobatchId, const Tensor& x) override { return x; }
    Tensor backward_input(MicrobatchId, const Tensor& g) override { return g; }
    void backward_weight(MicrobatchId) override {}
    Tensor infer(const Tensor& x) override { return x; }
    TensorSpec output_spec(const TensorSpec& x) const override { return x; }
    void release(MicrobatchId) override {}
    std::size_t bytes_kept() const override { return 0; }

   private:
    Parameter* p_;
  };
  Layers layers;
  layers.push_back(std::make_unique<Linear>(2, 2, true, DType::kFloat32, 1));
  layers.push_back(std::make_unique<ReLU>());
  layers.push_back(std::make_unique<Linear>(2, 2, true, DType::kFloat32, 1, "fc"));
  layers.push_back(std::make_unique<Holder>(&shared));
  layers.push_back(std::make_unique<Holder>(&shared));
  Sequential s(std::move(layers), {3, false});
  std::vector<std::string> names;
  for (Parameter* p : s.parameters()) names.push_back(p->name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"3.weight", "3.bias", "fc.weight", "fc.bias", "6.weight"}));
  EXPECT_EQ(s.options().first_index, 3);
  EXPECT_EQ(s.layers().size(), 5u);

  Layers twins;
  twins.push_back(std::make_unique<Linear>(2, 2, true, DType::kFloat32, 1, "fc"));
  twins.push_back(std::make_unique<Linear>(2, 2, true, DType::kFloat32, 2, "fc"));
  EXPECT_EQ(error_of<InvalidArgument>([&] { Sequential bad(std::move(twins)); }),
            "[Sequential] parameter name \"fc.weight\" is used by layers 0 and 1 (give the "
            "layers distinct names)");
}

TEST(Sequential, OutputSpecsChainTheLayers) {
  auto s = make_mlp(false);
  EXPECT_EQ(s->output_specs({{{4, 3, 6}, DType::kFloat32}}),
            (std::vector<TensorSpec>{{{4, 3, 5}, DType::kFloat32}}));
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->output_specs({{{4, 7}, DType::kFloat32}});
            }),
            "[Linear::output_spec] input has shape [4, 7], expected [..., 6]");
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->output_specs({}); }),
            "[Sequential::output_specs] got 0 input specs, expected 1");
}

TEST(Sequential, TiedParameters) {
  Layers layers;
  layers.push_back(std::make_unique<Embedding>(10, 4, DType::kFloat32, 1, "wte"));
  Sequential s(std::move(layers));
  EXPECT_TRUE(s.tied_parameters().empty());
  Parameter* wte = s.parameters()[0];
  s.add_tied_parameter("wte", wte);
  ASSERT_EQ(s.tied_parameters().size(), 1u);
  EXPECT_EQ(s.tied_parameters()[0].key, "wte");
  EXPECT_EQ(s.tied_parameters()[0].parameter, wte);
  Parameter stranger = make_parameter("other", {1}, false);
  EXPECT_EQ(error_of<InvalidArgument>([&] { s.add_tied_parameter("x", &stranger); }),
            "[Sequential::add_tied_parameter] parameter \"other\" (key \"x\") is not a "
            "parameter of this stage's layers");
  EXPECT_EQ(error_of<InvalidArgument>([&] { s.add_tied_parameter("wte2", wte); }),
            "[Sequential::add_tied_parameter] parameter \"wte.weight\" is already tied (key "
            "\"wte\")");
}

TEST(Sequential, SeveralCopiesOfOneKey) {
  Layers layers;
  layers.push_back(std::make_unique<Embedding>(10, 4, DType::kFloat32, 1, "a"));
  layers.push_back(std::make_unique<Linear>(4, 10, false, DType::kFloat32, 1, "b"));
  Sequential s(std::move(layers));
  s.add_tied_parameter("wte", s.parameters()[0]);
  s.add_tied_parameter("wte", s.parameters()[1]);
  ASSERT_EQ(s.tied_parameters().size(), 2u);
  EXPECT_EQ(s.tied_parameters()[1].parameter->name, "b.weight");
}

TEST(Sequential, Errors) {
  EXPECT_EQ(error_of<InvalidArgument>([] { Sequential s(Layers{}); }),
            "[Sequential] got no layers, expected at least one");
  Layers with_null;
  with_null.push_back(std::make_unique<ReLU>());
  with_null.push_back(nullptr);
  EXPECT_EQ(error_of<InvalidArgument>([&] { Sequential s(std::move(with_null)); }),
            "[Sequential] layer 1 of 2 is null");

  auto s = make_mlp(false);
  const Tensor x = Tensor::zeros({2, 6}), g = Tensor::zeros({2, 5});
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->forward(0, {x, x});
            }),
            "[Sequential::forward] got 2 input tensors, expected 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->infer({}); }),
            "[Sequential::infer] got 0 input tensors, expected 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->backward_input(0, {g}); }),
            "[Sequential::backward_input] microbatch 0 has no saved forward");
  // A forward rejected by a layer keeps nothing.
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->forward(0, {Tensor::zeros({2, 7})});
            }),
            "[Linear::forward] input has shape [2, 7], expected [..., 6]");
  EXPECT_EQ(s->bytes_kept(), 0u);
  s->forward(0, {x});
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->forward(0, {x}); }),
            "[Sequential::forward] microbatch 0 is already in flight");
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->backward_weight(0); }),
            "[Sequential::backward_weight] microbatch 0 has not run backward_input");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->backward_input(0, {g, g});
            }),
            "[Sequential::backward_input] got 2 gradient tensors, expected 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->backward_input(0, {Tensor::zeros({2, 4})});
            }),
            "[Linear::backward_input] grad_output has shape [2, 4], expected [2, 5]");
  s->backward_input(0, {g});
  EXPECT_EQ(error_of<InvalidArgument>([&] { s->backward_input(0, {g}); }),
            "[Sequential::backward_input] microbatch 0 already ran backward_input");
  s->backward_weight(0);
  EXPECT_EQ(s->bytes_kept(), 0u);

  // release() drops a microbatch in flight (the runtime's recovery after a failed step).
  for (bool checkpointing : {false, true}) {
    auto r = make_mlp(checkpointing);
    r->forward(3, {x});
    r->forward(4, {x});
    r->backward_input(4, {g});
    r->release(3);
    r->release(4);
    EXPECT_EQ(r->bytes_kept(), 0u);
    r->forward(3, {x});
    r->backward(3, {g});
    EXPECT_EQ(r->bytes_kept(), 0u);
  }
}

// With checkpointing, a backward_input rejected by a layer can be repeated (the recompute is
// dropped and the stage input still kept).
TEST(Sequential, CheckpointedBackwardCanBeRetriedAfterAnError) {
  auto s = make_mlp(true);
  const Tensor x = Tensor::zeros({2, 6});
  s->forward(0, {x});
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              s->backward_input(0, {Tensor::zeros({3, 5})});
            }),
            "[Linear::backward_input] grad_output has shape [3, 5], expected [2, 5]");
  EXPECT_EQ(s->bytes_kept(), x.nbytes());
  s->backward(0, {Tensor::zeros({2, 5})});
  EXPECT_EQ(s->bytes_kept(), 0u);
}

}  // namespace
}  // namespace pipetrain::nn
