// Several tensors cross a cut: stage 0 sends (h fp32 [b, 8], x fp32 [b, 12], ids int32 [b]),
// stage 1 computes lin_b(h) + lin_c(x) and checks the ids. The pipeline (1F1B, ZB-H1 on two
// in-process ranks) gives the losses and gradients of the same stages driven by hand.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "pipetrain/comm/inprocess.h"
#include "pipetrain/nn/layers.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain {
namespace {

// (x) -> (relu(lin_a x), x, row ids)
class Head final : public Stage {
 public:
  TensorList forward(MicrobatchId mb, const TensorList& in) override {
    Tensor h = relu_.forward(mb, lin_.forward(mb, in[0]));
    return {h, in[0], ids(in[0].size(0))};
  }
  TensorList backward_input(MicrobatchId mb, const TensorList& g) override {
    EXPECT_EQ(g.size(), 3u);
    EXPECT_TRUE(g[1].defined());
    EXPECT_FALSE(g[2].defined());  // integers carry no gradient
    lin_.backward_input(mb, relu_.backward_input(mb, g[0]));
    return {Tensor()};
  }
  void backward_weight(MicrobatchId mb) override {
    relu_.backward_weight(mb);
    lin_.backward_weight(mb);
  }
  TensorList infer(const TensorList& in) override {
    return {relu_.infer(lin_.infer(in[0])), in[0], ids(in[0].size(0))};
  }
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& in) const override {
    const std::int64_t b = in.at(0).shape.at(0);
    return {lin_.output_spec(in[0]), in[0], {{b}, DType::kInt32}};
  }
  std::vector<nn::Parameter*> parameters() override { return lin_.parameters(); }
  static Tensor ids(std::int64_t b) {
    std::vector<std::int32_t> v(static_cast<std::size_t>(b));
    for (std::int64_t i = 0; i < b; ++i) v[i] = static_cast<std::int32_t>(7 * i);
    return Tensor::from_vector(v, {b});
  }

 private:
  nn::Linear lin_{12, 8, true, DType::kFloat32, 1, "a"};
  nn::ReLU relu_;
};

// (h, x, ids) -> lin_b h + lin_c x
class Tail final : public Stage {
 public:
  TensorList forward(MicrobatchId mb, const TensorList& in) override {
    EXPECT_EQ(in.size(), 3u);
    EXPECT_EQ(in[2].to_vector<std::int32_t>(), Head::ids(in[2].size(0)).to_vector<std::int32_t>());
    return {add(b_.forward(mb, in[0]), c_.forward(mb, in[1]))};
  }
  TensorList backward_input(MicrobatchId mb, const TensorList& g) override {
    return {b_.backward_input(mb, g[0]), c_.backward_input(mb, g[0]), Tensor()};
  }
  void backward_weight(MicrobatchId mb) override {
    b_.backward_weight(mb);
    c_.backward_weight(mb);
  }
  TensorList infer(const TensorList& in) override { return {add(b_.infer(in[0]), c_.infer(in[1]))}; }
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& in) const override {
    PIPETRAIN_CHECK_ARG(in.size() == 3, "Tail::output_specs", "expected 3 inputs");
    return {b_.output_spec(in[0])};
  }
  std::vector<nn::Parameter*> parameters() override {
    std::vector<nn::Parameter*> p = b_.parameters();
    for (nn::Parameter* q : c_.parameters()) p.push_back(q);
    return p;
  }

 private:
  static Tensor add(Tensor a, const Tensor& b) {
    for (std::int64_t i = 0; i < a.numel(); ++i) a.data<float>()[i] += b.data<float>()[i];
    return a;
  }
  nn::Linear b_{8, 3, true, DType::kFloat32, 2, "b"};
  nn::Linear c_{12, 3, false, DType::kFloat32, 3, "c"};
};

std::vector<Microbatch> batch(int m) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<Microbatch> out;
  for (int k = 0; k < m; ++k) {
    std::vector<float> x(4 * 12);
    for (auto& v : x) v = normal(rng);
    std::vector<std::int32_t> y{static_cast<std::int32_t>(k % 3), 1, 2, 0};
    out.push_back({{Tensor::from_vector(x, {4, 12})}, {Tensor::from_vector(y, {4})}});
  }
  return out;
}

std::map<std::string, std::vector<float>> grads(Stage& s) {
  std::map<std::string, std::vector<float>> g;
  for (nn::Parameter* p : s.parameters()) g[p->name] = p->grad.to_vector<float>();
  return g;
}

TEST(MultiTensorBoundary, PipelineEqualsTheStagesDrivenByHand) {
  runtime::set_logging(false);
  constexpr int kM = 4;
  const std::vector<Microbatch> mbs = batch(kM);
  // By hand.
  Head head;
  Tail tail;
  nn::CrossEntropyLoss ce;
  double want_loss = 0;
  for (int m = 0; m < kM; ++m) {
    want_loss += ce.forward(m, tail.forward(m, head.forward(m, mbs[m].inputs)), mbs[m].targets);
    head.backward(m, tail.backward(m, ce.backward(m, 1.0 / kM)));
  }
  want_loss /= kM;
  const auto want_head = grads(head), want_tail = grads(tail);

  for (const char* name : {"1f1b", "zb-h1"}) {
    const Schedule schedule = lower(make_schedule(name, 2, kM));
    auto world = make_inprocess_world(2, TransportOptions{std::chrono::seconds(20)});
    std::vector<std::string> errors(2);
    std::vector<std::thread> threads;
    for (int rank = 0; rank < 2; ++rank) {
      threads.emplace_back([&, rank] {
        try {
          Head h;
          Tail t;
          Stage* stage = rank == 0 ? static_cast<Stage*>(&h) : &t;
          nn::CrossEntropyLoss loss;
          runtime::Executor ex(schedule, runtime::Topology(2, 2, 1), *world[rank], {stage},
                               &loss, nullptr);
          const runtime::StepStats st = ex.step(mbs, 0.0);
          EXPECT_NEAR(st.loss, want_loss, 1e-6) << name;
          EXPECT_EQ(ex.boundary_specs()[1],
                    (std::vector<TensorSpec>{{{4, 8}, DType::kFloat32},
                                             {{4, 12}, DType::kFloat32},
                                             {{4}, DType::kInt32}}));
          // Gradients accumulated over the step, before any update (no optimizer).
          const auto got = grads(*stage);
          const auto& want = rank == 0 ? want_head : want_tail;
          for (const auto& [n, values] : want) {
            for (std::size_t k = 0; k < values.size(); ++k) {
              EXPECT_NEAR(got.at(n)[k], values[k], 1e-6) << name << " " << n;
            }
          }
        } catch (const std::exception& e) {
          errors[rank] = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors, (std::vector<std::string>{"", ""})) << name;
  }
}

}  // namespace
}  // namespace pipetrain
