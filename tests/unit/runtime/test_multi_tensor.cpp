// Several tensors cross every cut: stage 0 sends (h fp32 [b, 8], x fp32 [b, 12], ids int32 [b]),
// middle stages transform h and pass x and ids on (the width of h stays, the boundary holds
// three tensors of two dtypes), the last stage computes lin_b(h) + lin_c(x) and checks the ids.
// Every schedule, on in-process ranks, gives the losses and gradients of the same stages driven
// by hand on one thread.
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

// (h, x, ids) -> (relu(lin h), x, ids): a stage between two that all three tensors cross.
class Middle final : public Stage {
 public:
  explicit Middle(int stage) : lin_{8, 8, true, DType::kFloat32, 10u + stage, "m" + std::to_string(stage)} {}
  TensorList forward(MicrobatchId mb, const TensorList& in) override {
    EXPECT_EQ(in.size(), 3u);
    return {relu_.forward(mb, lin_.forward(mb, in[0])), in[1], in[2]};
  }
  TensorList backward_input(MicrobatchId mb, const TensorList& g) override {
    EXPECT_FALSE(g.at(2).defined());
    return {lin_.backward_input(mb, relu_.backward_input(mb, g[0])), g[1], Tensor()};
  }
  void backward_weight(MicrobatchId mb) override {
    relu_.backward_weight(mb);
    lin_.backward_weight(mb);
  }
  TensorList infer(const TensorList& in) override {
    return {relu_.infer(lin_.infer(in[0])), in[1], in[2]};
  }
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& in) const override {
    return {lin_.output_spec(in.at(0)), in.at(1), in.at(2)};
  }
  std::vector<nn::Parameter*> parameters() override { return lin_.parameters(); }

 private:
  nn::Linear lin_;
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
    // 3 rows: the int32 ids are 12 bytes, so the packed message pads them to 16.
    std::vector<float> x(3 * 12);
    for (auto& v : x) v = normal(rng);
    std::vector<std::int32_t> y{static_cast<std::int32_t>(k % 3), 1, 2};
    out.push_back({{Tensor::from_vector(x, {3, 12})}, {Tensor::from_vector(y, {3})}});
  }
  return out;
}

std::map<std::string, std::vector<float>> grads(Stage& s) {
  std::map<std::string, std::vector<float>> g;
  for (nn::Parameter* p : s.parameters()) g[p->name] = p->grad.to_vector<float>();
  return g;
}

std::unique_ptr<Stage> make_stage(int s, int num_stages) {
  if (s == 0) return std::make_unique<Head>();
  if (s == num_stages - 1) return std::make_unique<Tail>();
  return std::make_unique<Middle>(s);
}

struct Case {
  std::string schedule;
  int p, v;
};

class MultiTensorBoundary : public ::testing::TestWithParam<Case> {};

TEST_P(MultiTensorBoundary, PipelineEqualsTheStagesDrivenByHand) {
  runtime::set_logging(false);
  constexpr int kM = 4;
  const Case c = GetParam();
  const Schedule schedule = lower(make_schedule(c.schedule, c.p, kM, c.v));
  const int num_stages = schedule.num_stages();
  const std::vector<Microbatch> mbs = batch(kM);
  // By hand: every stage in order on one thread.
  std::vector<std::unique_ptr<Stage>> whole;
  for (int s = 0; s < num_stages; ++s) whole.push_back(make_stage(s, num_stages));
  nn::CrossEntropyLoss ce;
  double want_loss = 0;
  for (int m = 0; m < kM; ++m) {
    TensorList x = mbs[m].inputs;
    for (auto& st : whole) x = st->forward(m, x);
    want_loss += ce.forward(m, x, mbs[m].targets);
    TensorList g = ce.backward(m, 1.0 / kM);
    for (int s = num_stages - 1; s >= 0; --s) g = whole[s]->backward(m, g);
  }
  want_loss /= kM;

  auto world = make_inprocess_world(c.p, TransportOptions{std::chrono::seconds(20)});
  std::vector<std::string> errors(c.p);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < c.p; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        std::vector<std::unique_ptr<Stage>> owned;
        std::vector<Stage*> mine;
        for (int s : schedule.stages_of_rank(rank)) {
          owned.push_back(make_stage(s, num_stages));
          mine.push_back(owned.back().get());
        }
        nn::CrossEntropyLoss loss;
        runtime::Executor ex(schedule, runtime::Topology(c.p, c.p, 1), *world[rank], mine, &loss,
                             nullptr);
        const runtime::StepStats st = ex.step(mbs, 0.0);
        EXPECT_NEAR(st.loss, want_loss, 1e-6);
        EXPECT_EQ(ex.boundary_specs()[1],
                  (std::vector<TensorSpec>{{{3, 8}, DType::kFloat32},
                                           {{3, 12}, DType::kFloat32},
                                           {{3}, DType::kInt32}}));
        // Gradients accumulated over the step, before any update (no optimizer).
        const auto stages = schedule.stages_of_rank(rank);
        for (std::size_t i = 0; i < stages.size(); ++i) {
          const auto got = grads(*owned[i]);
          for (const auto& [n, values] : grads(*whole[stages[i]])) {
            for (std::size_t k = 0; k < values.size(); ++k) {
              EXPECT_NEAR(got.at(n)[k], values[k], 1e-6) << n;
            }
          }
        }
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < c.p; ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(
    Schedules, MultiTensorBoundary,
    ::testing::Values(Case{"gpipe", 2, 1}, Case{"1f1b", 3, 1}, Case{"interleaved-1f1b", 2, 2},
                      Case{"looped-bfs", 2, 2}, Case{"zb-h1", 2, 1}, Case{"zb-h2", 4, 1},
                      Case{"zb-v", 2, 1}, Case{"v-half", 2, 1}, Case{"v-min", 3, 1},
                      Case{"dualpipe-v", 2, 1}),
    [](const auto& info) {
      std::string n = info.param.schedule + "_P" + std::to_string(info.param.p);
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n;
    });

}  // namespace
}  // namespace pipetrain
