// A model built from generic layers, cut into two Sequential stages and run by the Executor on
// two in-process ranks, against the whole layer list run on one device by hand: the same
// losses and bitwise the same gradients (Dropout and activation checkpointing included).
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "nn_testing.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/nn/layers.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/nn/sequential.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain::runtime {
namespace {

using Layers = std::vector<std::unique_ptr<nn::Layer>>;

// Layers [begin, end) of the model: [.., 6] -> [.., 3].
Layers layers(int begin, int end) {
  Layers out;
  for (int i = begin; i < end; ++i) {
    switch (i) {
      case 0: out.push_back(std::make_unique<nn::Linear>(6, 8, true, DType::kFloat32, 1)); break;
      case 1: out.push_back(std::make_unique<nn::GELU>()); break;
      case 2: out.push_back(std::make_unique<nn::Dropout>(0.25, 2)); break;
      case 3: out.push_back(std::make_unique<nn::LayerNorm>(8)); break;
      case 4: out.push_back(std::make_unique<nn::Linear>(8, 8, true, DType::kFloat32, 3)); break;
      case 5: out.push_back(std::make_unique<nn::ReLU>()); break;
      case 6: out.push_back(std::make_unique<nn::Linear>(8, 3, true, DType::kFloat32, 4)); break;
    }
  }
  return out;
}
constexpr int kLayers = 7, kCut = 3, kMicrobatches = 4;

std::vector<Microbatch> batch(std::int64_t step) {
  std::mt19937_64 rng(static_cast<std::uint64_t>(100 + step));
  std::vector<Microbatch> mbs;
  for (int m = 0; m < kMicrobatches; ++m) {
    mbs.push_back({{testing::random_tensor({2, 5, 6}, rng, DType::kFloat32)},
                   {testing::random_tensor({2, 5, 3}, rng, DType::kFloat32)}});
  }
  return mbs;
}

struct Result {
  std::vector<double> losses;  // per microbatch of the last step
  std::map<std::string, std::vector<double>> grads;
};

// One device, by hand: the stage-0 layers' names match the pipeline's (same indices).
Result reference(int steps) {
  nn::Sequential model(layers(0, kLayers));
  nn::MseLoss loss;
  Result r;
  for (std::int64_t step = 0; step < steps; ++step) {
    nn::zero_grads(model.parameters());
    model.begin_step(step);
    r.losses.clear();
    for (const Microbatch& mb : batch(step)) {
      const MicrobatchId id = static_cast<MicrobatchId>(r.losses.size());
      r.losses.push_back(loss.forward(id, model.forward(id, mb.inputs), mb.targets));
      model.backward(id, loss.backward(id, 1.0 / kMicrobatches));
    }
  }
  r.grads = testing::grads_by_name(model.parameters());
  return r;
}

Result pipeline(int steps, const std::string& schedule_name, bool checkpointing) {
  set_logging(false);
  const Schedule schedule = lower(make_schedule(schedule_name, 2, kMicrobatches));
  auto transports = make_inprocess_world(2, TransportOptions{std::chrono::milliseconds(5000)});
  Result r;
  std::vector<std::map<std::string, std::vector<double>>> grads(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        nn::Sequential stage(rank == 0 ? layers(0, kCut) : layers(kCut, kLayers),
                             {rank == 0 ? 0 : kCut, checkpointing});
        nn::MseLoss loss;
        Executor ex(schedule, Topology(2, 2, 1), *transports[static_cast<std::size_t>(rank)],
                    {&stage}, &loss, nullptr);
        StepStats stats;
        for (int step = 0; step < steps; ++step) stats = ex.step(batch(step), 0.0);
        if (rank == 1) r.losses = stats.microbatch_losses;
        grads[static_cast<std::size_t>(rank)] = testing::grads_by_name(stage.parameters());
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(rank)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
  r.grads = grads[0];
  r.grads.insert(grads[1].begin(), grads[1].end());
  return r;
}

TEST(SequentialPipeline, TwoStagesEqualOneDevice) {
  const Result want = reference(2);
  EXPECT_EQ(want.grads.size(), 8u);  // 3 Linear (weight, bias) + LayerNorm (weight, bias)
  EXPECT_TRUE(want.grads.contains("3.weight"));
  for (const char* name : {"1f1b", "zb-h1"}) {
    for (bool checkpointing : {false, true}) {
      SCOPED_TRACE(std::string(name) + (checkpointing ? " checkpointing" : ""));
      const Result got = pipeline(2, name, checkpointing);
      EXPECT_EQ(got.losses, want.losses);
      EXPECT_EQ(got.grads, want.grads);
    }
  }
}

}  // namespace
}  // namespace pipetrain::runtime
