// Pipeline and ModelSpec: a model of generic layers, its width changing at every cut, trains
// through every schedule to the losses of one device; two tensors (and an integer one) cross a
// cut; eval_step gives the single-device forward; bad batches are refused on every rank before
// any compute and the Pipeline stays usable.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <mutex>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "pipetrain/comm/inprocess.h"
#include "pipetrain/nn/layers.h"
#include "pipetrain/pipeline.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain {
namespace {

constexpr int kRows = 16;  // global batch
constexpr int kSteps = 3;

// 12 -> 20 -> 10 -> 6 -> 3, with activations and a LayerNorm: 8 layers, every cut a new width.
ModelSpec mlp() {
  ModelSpec m;
  m.add<nn::Linear>(12, 20, true, DType::kFloat32, 1).add<nn::GELU>();
  m.add<nn::LayerNorm>(20).add<nn::Linear>(20, 10, true, DType::kFloat32, 2);
  m.add<nn::ReLU>().add<nn::Linear>(10, 6, true, DType::kFloat32, 3).add<nn::GELU>();
  m.add<nn::Linear>(6, 3, true, DType::kFloat32, 4);
  return m;
}

struct Data {
  Tensor x, y;
};

Data data(int step) {
  std::mt19937 rng(100 + step);
  std::normal_distribution<float> normal;
  std::vector<float> x(kRows * 12);
  std::vector<std::int32_t> y(kRows);
  for (auto& v : x) v = normal(rng);
  for (int i = 0; i < kRows; ++i) y[i] = static_cast<std::int32_t>(rng() % 3);
  return {Tensor::from_vector(x, {kRows, 12}), Tensor::from_vector(y, {kRows})};
}

struct TrainRun {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> params;  // by name, from every rank
};

TrainRun train(const PipelineOptions& options) {
  runtime::set_logging(false);
  TrainRun run;
  std::mutex mu;
  std::vector<std::vector<double>> losses(options.pipeline * options.data_parallel);
  launch(options.pipeline * options.data_parallel, "inprocess", [&](Transport& t) {
    Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
    const Data d = data(0);  // the same batch each step: the loss must fall
    for (int step = 0; step < kSteps; ++step) {
      losses[t.rank()].push_back(pipe.train_step({d.x}, {d.y}).loss);
    }
    std::lock_guard<std::mutex> lock(mu);
    for (nn::Parameter* p : pipe.parameters()) run.params[p->name] = p->value.to_vector<float>();
  }, TransportOptions{std::chrono::seconds(30)});
  for (const auto& l : losses) EXPECT_EQ(l, losses[0]);  // every rank reports the same
  run.losses = losses[0];
  return run;
}

void expect_same_training(const TrainRun& got, const TrainRun& want, double tol) {
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (std::size_t i = 0; i < want.losses.size(); ++i) {
    EXPECT_NEAR(got.losses[i], want.losses[i], tol * std::abs(want.losses[i])) << "step " << i;
  }
  ASSERT_EQ(got.params.size(), want.params.size());
  for (const auto& [name, values] : want.params) {
    const std::vector<float>& g = got.params.at(name);
    for (std::size_t k = 0; k < values.size(); ++k) {
      EXPECT_NEAR(g[k], values[k], 1e-5 * std::max(1.0f, std::abs(values[k]))) << name << k;
    }
  }
}

struct Case {
  std::string schedule;
  int p, d, m, v;
};

void PrintTo(const Case& c, std::ostream* out) {
  *out << c.schedule << " P=" << c.p << " D=" << c.d << " M=" << c.m << " v=" << c.v;
}

class PipelineMatchesOneDevice : public ::testing::TestWithParam<Case> {};

TEST_P(PipelineMatchesOneDevice, LossesAndParameters) {
  const Case c = GetParam();
  PipelineOptions one;
  one.schedule = "gpipe";
  one.microbatches = c.m * c.d;
  one.optimizer.lr = 1e-2;
  const TrainRun want = train(one);
  PipelineOptions options = one;
  options.schedule = c.schedule;
  options.pipeline = c.p;
  options.data_parallel = c.d;
  options.microbatches = c.m;
  options.stages_per_rank = c.v;
  expect_same_training(train(options), want, 1e-6);
  EXPECT_LT(want.losses.back(), want.losses.front());  // it trains: the check is not vacuous
}

INSTANTIATE_TEST_SUITE_P(
    Schedules, PipelineMatchesOneDevice,
    ::testing::Values(Case{"gpipe", 2, 1, 4, 1}, Case{"1f1b", 4, 1, 4, 1},
                      Case{"1f1b", 2, 2, 2, 1}, Case{"interleaved-1f1b", 2, 1, 4, 2},
                      Case{"zb-h1", 2, 1, 4, 1}, Case{"zb-h1", 4, 1, 8, 1},
                      Case{"zb-h1", 2, 2, 4, 1}, Case{"zb-h2", 2, 1, 4, 1},
                      Case{"zb-v", 2, 1, 4, 1}, Case{"zb-v", 4, 1, 4, 1},
                      Case{"v-half", 2, 2, 4, 1}, Case{"dualpipe-v", 2, 1, 4, 1},
                      Case{"dualpipe-v-overlap", 2, 1, 4, 1}, Case{"looped-bfs", 2, 1, 4, 2}),
    [](const auto& info) {
      std::string n = info.param.schedule + "_P" + std::to_string(info.param.p) + "_D" +
                      std::to_string(info.param.d);
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n;
    });

// An overlapped schedule runs its slots in sequence (the CPU executor runs one action at a time):
// by name or as a custom schedule, on several ranks (lowered after expanding) and on one (the
// Executor expands it), it trains exactly as the plain DualPipeV does.
TEST(Pipeline, OverlappedDualPipeVTrainsAsThePlainOne) {
  PipelineOptions plain;
  plain.schedule = "dualpipe-v";
  plain.pipeline = 2;
  plain.microbatches = 4;
  plain.optimizer.lr = 1e-2;
  const TrainRun want = train(plain);
  PipelineOptions overlapped = plain;
  overlapped.schedule = "dualpipe-v-overlap";
  const TrainRun by_name = train(overlapped);
  EXPECT_EQ(by_name.losses, want.losses);
  EXPECT_EQ(by_name.params, want.params);
  overlapped.custom_schedule = dualpipe_v(2, 4, DualPipeVOptions{.overlap = true});
  const TrainRun custom = train(overlapped);
  EXPECT_EQ(custom.losses, want.losses);
  EXPECT_EQ(custom.params, want.params);
  EXPECT_LT(want.losses.back(), want.losses.front());

  // One rank: the schedule reaches the Executor unlowered, with its marks.
  PipelineOptions one = plain;
  one.pipeline = 1;
  one.custom_schedule = dualpipe_v(1, 4);
  const TrainRun one_plain = train(one);
  one.custom_schedule = dualpipe_v(1, 4, DualPipeVOptions{.overlap = true});
  ASSERT_TRUE(one.custom_schedule->has_overlap());
  const TrainRun one_overlapped = train(one);
  EXPECT_EQ(one_overlapped.losses, one_plain.losses);
  EXPECT_EQ(one_overlapped.params, one_plain.params);
  runtime::set_logging(false);
  launch(1, "inprocess", [&](Transport& t) {
    const Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), one, t);
    EXPECT_FALSE(pipe.schedule().has_overlap());
    EXPECT_EQ(pipe.schedule(), expand_overlap(*one.custom_schedule));
  });
}

TEST(Pipeline, EvalStepGivesTheSingleDeviceForward) {
  runtime::set_logging(false);
  const Data d = data(0);
  // One device: the whole model as one Sequential.
  auto whole = mlp().build(0, 8);
  const Tensor want = whole->infer({d.x})[0];
  nn::CrossEntropyLoss ce;
  const double want_loss = ce.evaluate({want}, {d.y});
  PipelineOptions options;
  options.schedule = "zb-v";
  options.pipeline = 2;
  options.microbatches = 2;
  launch(2, "inprocess", [&](Transport& t) {
    Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
    const EvalResult r = pipe.eval_step({d.x}, {d.y});
    // Microbatches of 8 rows: the mean of two per-microbatch means equals the whole mean here
    // (equal sizes), to rounding.
    EXPECT_NEAR(r.loss, want_loss, 1e-6);
    if (t.rank() == 0) {  // ZB-V puts the last stage on rank 0
      ASSERT_EQ(r.outputs.size(), 1u);
      EXPECT_EQ(r.outputs[0].shape(), want.shape());
      EXPECT_EQ(r.outputs[0].to_vector<float>(), want.to_vector<float>());
    } else {
      EXPECT_TRUE(r.outputs.empty());
    }
    EXPECT_TRUE(std::isnan(pipe.eval_step({d.x}).loss));
  });
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(Pipeline, BadBatchesAreRefusedBeforeAnyComputeAndThePipelineStaysUsable) {
  runtime::set_logging(false);
  PipelineOptions options;
  options.schedule = "1f1b";
  options.pipeline = 2;
  options.microbatches = 2;
  std::vector<std::vector<std::string>> errors(2);
  launch(2, "inprocess", [&](Transport& t) {
    Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
    const Data d = data(0);
    auto& e = errors[t.rank()];
    // Ragged: 15 rows do not split into 2 microbatches.
    e.push_back(error_of([&] { pipe.train_step({d.x.slice(0, 15)}, {d.y.slice(0, 15)}); }));
    // Wrong dtype: the first Linear refuses fp64 features (on rank 0; rank 1 is told).
    e.push_back(error_of([&] { pipe.train_step({d.x.to(DType::kFloat64)}, {d.y}); }));
    // Targets whose rows do not match the inputs'.
    e.push_back(error_of([&] { pipe.train_step({d.x}, {d.y.slice(0, 8)}); }));
    // Float targets for a cross-entropy loss.
    e.push_back(error_of([&] { pipe.train_step({d.x}, {d.y.to(DType::kFloat32)}); }));
    // Still usable; and a smaller batch (8 rows) is agreed anew.
    EXPECT_TRUE(std::isfinite(pipe.train_step({d.x}, {d.y}).loss));
    EXPECT_TRUE(std::isfinite(pipe.train_step({d.x.slice(0, 8)}, {d.y.slice(0, 8)}).loss));
    EXPECT_EQ(pipe.steps_done(), 2);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(errors[r].size(), 4u);
    EXPECT_EQ(errors[r][0],
              "[Pipeline::train_step] the batch has 15 rows, not a positive multiple of "
              "data_parallel x microbatches = 1 x 2");
    EXPECT_EQ(errors[r][2], "[Pipeline::train_step] target 0 has 8 rows, the inputs have 16");
  }
  EXPECT_EQ(errors[0][1],
            "[Executor::step] stage 0 (rank 0) cannot take its inputs ([8, 12] fp64): "
            "[Linear::output_spec] input has dtype fp64, expected fp32");
  EXPECT_EQ(errors[1][1],
            "[Executor::step] stage 0 (rank 0) cannot take its inputs (rank 0's error says why)");
  EXPECT_EQ(errors[1][3].rfind("[Executor::step] the loss (rank 1) cannot take the outputs "
                               "([8, 3] fp32) with the targets ([8] fp32): [CrossEntropyLoss",
                               0),
            0u)
      << errors[1][3];
}

// Embedding [11, 6] on ids, ... , and a Linear 6 -> 11 whose weight is tied to the embedding's
// (their initialisers differ: the runtime gives every copy the first one's value).
ModelSpec tied_model() {
  auto table = [](nn::Layer& l) { return &static_cast<nn::Embedding&>(l).weight(); };
  auto head = [](nn::Layer& l) { return &static_cast<nn::Linear&>(l).weight(); };
  ModelSpec m;
  m.add_tied("wte", [] { return std::unique_ptr<nn::Layer>(new nn::Embedding(11, 6)); }, table);
  m.add<nn::LayerNorm>(6).add<nn::Linear>(6, 6).add<nn::GELU>().add<nn::Dropout>(0.25, 7);
  m.add_tied("wte", [] { return std::unique_ptr<nn::Layer>(new nn::Linear(6, 11, false)); }, head);
  return m;
}

TrainRun train_tied(const PipelineOptions& options) {
  runtime::set_logging(false);
  TrainRun run;
  std::mutex mu;
  std::vector<std::int32_t> ids(kRows * 3), next(kRows * 3);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>((i * 7) % 11);
    next[i] = static_cast<std::int32_t>((i * 7 + 3) % 11);
  }
  const Tensor x = Tensor::from_vector(ids, {kRows, 3}), y = Tensor::from_vector(next, {kRows, 3});
  std::vector<std::vector<double>> losses(options.pipeline * options.data_parallel);
  launch(options.pipeline * options.data_parallel, "inprocess", [&](Transport& t) {
    Pipeline pipe(tied_model(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
    for (int step = 0; step < kSteps; ++step) losses[t.rank()].push_back(pipe.train_step({x}, {y}).loss);
    std::lock_guard<std::mutex> lock(mu);
    for (nn::Parameter* p : pipe.parameters()) run.params[p->name] = p->value.to_vector<float>();
  });
  run.losses = losses[0];
  return run;
}

TEST(Pipeline, TiedCopiesAndDropoutMatchOneDevice) {
  PipelineOptions one;
  one.schedule = "gpipe";
  one.microbatches = 4;
  one.optimizer.lr = 1e-2;
  const TrainRun want = train_tied(one);
  // One device holds both copies in one stage: they start equal and stay equal.
  EXPECT_EQ(want.params.at("0.weight"), want.params.at("5.weight"));
  for (const auto& [p, d, m] : {std::tuple{2, 1, 4}, std::tuple{2, 2, 2}, std::tuple{3, 1, 4}}) {
    PipelineOptions options = one;
    options.schedule = "zb-h1";
    options.pipeline = p;
    options.data_parallel = d;
    options.microbatches = m;
    options.partition.method = PartitionOptions::Method::kUniform;
    const TrainRun got = train_tied(options);
    expect_same_training(got, want, 1e-6);
  }
}

TEST(Pipeline, AFailedPipelineSaysSoOnTheNextStep) {
  PipelineOptions options;
  options.pipeline = 2;
  options.microbatches = 2;
  std::vector<std::string> first(2), second(2);
  launch(2, "inprocess", [&](Transport& t) {
    Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
    const Data d = data(0);
    if (t.rank() == 1) t.abort("rank 1 gives up");
    first[t.rank()] = error_of([&] { pipe.train_step({d.x}, {d.y}); });
    second[t.rank()] = error_of([&] { pipe.train_step({d.x}, {d.y}); });
  }, TransportOptions{std::chrono::seconds(10)});
  for (int r = 0; r < 2; ++r) {
    // The first failure names the cause, the next call says the Pipeline is spent.
    EXPECT_NE(first[r].find("rank 1 gives up"), std::string::npos) << first[r];
    EXPECT_EQ(second[r].rfind("[Executor::step] rank " + std::to_string(r) +
                                  ": this Executor failed earlier and aborted its transport",
                              0),
              0u)
        << second[r];
  }
}

TEST(Pipeline, SavesOnOneCutAndResumesOnAnother) {
  runtime::set_logging(false);
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("pipetrain-pipeline-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  const Data d = data(0);
  auto run = [&](int p, const std::string& schedule, int steps, const std::string& load,
                 bool save) {
    PipelineOptions options;
    options.schedule = schedule;
    options.pipeline = p;
    options.microbatches = 4;
    std::vector<double> losses;
    std::filesystem::path saved;
    launch(p, "inprocess", [&](Transport& t) {
      Pipeline pipe(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
      if (!load.empty()) EXPECT_EQ(pipe.load(dir / load).meta.step, 2);
      for (int s = 0; s < steps; ++s) {
        const double loss = pipe.train_step({d.x}, {d.y}).loss;
        if (t.rank() == 0) losses.push_back(loss);
      }
      if (save) {
        const std::filesystem::path path = pipe.save(dir);
        if (t.rank() == 0) saved = path;
      }
    });
    if (save) EXPECT_EQ(saved, dir / "step-2");
    return losses;
  };
  const std::vector<double> whole = run(1, "gpipe", 4, "", false);
  run(2, "1f1b", 2, "", true);
  const std::vector<double> resumed = run(4, "zb-h1", 2, "step-2", false);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_NEAR(resumed[0], whole[2], 1e-6 * whole[2]);
  EXPECT_NEAR(resumed[1], whole[3], 1e-6 * whole[3]);
  std::filesystem::remove_all(dir);
}

TEST(ModelSpec, ProfileAndMemoryEstimate) {
  const ModelSpec m = mlp();
  const std::vector<LayerProfile> profile = profile_layers(m, {{{4, 12}, DType::kFloat32}}, 2);
  ASSERT_EQ(profile.size(), 8u);
  EXPECT_EQ(profile[0].parameters, 260);
  // Linear keeps its input [4, 12] fp32, and between I and W also the output gradient [4, 20].
  EXPECT_EQ(profile[0].bytes_kept, 4u * (4 * 12 + 4 * 20));
  EXPECT_EQ(profile[1].parameters, 0);
  for (const LayerProfile& p : profile) EXPECT_GT(p.seconds, 0.0);
  const runtime::Partition cut = partition_model(m, 2);
  const auto one_f_one_b = estimate_memory(profile, cut, make_schedule("1f1b", 2, 4),
                                           OptimizerOptions::Kind::kAdamW);
  const auto gpipe = estimate_memory(profile, cut, make_schedule("gpipe", 2, 4),
                                     OptimizerOptions::Kind::kSgd);
  ASSERT_EQ(one_f_one_b.size(), 2u);
  // Rank 0 holds layers [0, 3): 300 parameters; 1F1B keeps 2 microbatches there, GPipe all 4.
  EXPECT_EQ(one_f_one_b[0].parameters, 4 * 300);
  EXPECT_EQ(one_f_one_b[0].optimizer, 2 * 4 * 300);
  EXPECT_EQ(gpipe[0].optimizer, 0);
  EXPECT_EQ(one_f_one_b[0].peak_in_flight, 2);
  EXPECT_EQ(gpipe[0].peak_in_flight, 4);
  std::int64_t kept = 0;
  for (int l = 0; l < 3; ++l) kept += static_cast<std::int64_t>(profile[l].bytes_kept);
  EXPECT_EQ(gpipe[0].activations, 4 * kept);
  EXPECT_EQ(one_f_one_b[0].total(), 4 * 300 * 4 + 2 * kept);
}

TEST(Pipeline, ResumedRunContinuesDropoutAndTiedCopies) {
  runtime::set_logging(false);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() /
                                    ("pipetrain-tied-resume-" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::vector<std::int32_t> ids(kRows * 3), next(kRows * 3);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    ids[i] = static_cast<std::int32_t>((i * 5) % 11);
    next[i] = static_cast<std::int32_t>((i * 5 + 2) % 11);
  }
  const Tensor x = Tensor::from_vector(ids, {kRows, 3}), y = Tensor::from_vector(next, {kRows, 3});
  auto run = [&](int p, int steps, bool load, bool save) {
    PipelineOptions options;
    options.schedule = p == 1 ? "gpipe" : "zb-h1";
    options.pipeline = p;
    options.microbatches = 4;
    options.partition.method = PartitionOptions::Method::kUniform;
    std::vector<double> losses;
    launch(p, "inprocess", [&](Transport& t) {
      Pipeline pipe(tied_model(), std::make_unique<nn::CrossEntropyLoss>(), options, t);
      if (load) EXPECT_EQ(pipe.load(dir / "step-2").meta.step, 2);
      for (int s = 0; s < steps; ++s) {
        const double loss = pipe.train_step({x}, {y}).loss;
        if (t.rank() == 0) losses.push_back(loss);
      }
      if (save) pipe.save(dir);
    });
    return losses;
  };
  const std::vector<double> whole = run(1, 4, false, false);
  run(2, 2, false, true);
  const std::vector<double> resumed = run(3, 2, true, false);
  ASSERT_EQ(resumed.size(), 2u);
  // Step 2 and 3 draw the masks of steps 2 and 3 (not 0 and 1) on the new cut.
  EXPECT_NEAR(resumed[0], whole[2], 1e-6 * whole[2]);
  EXPECT_NEAR(resumed[1], whole[3], 1e-6 * whole[3]);
  std::filesystem::remove_all(dir);
}

TEST(Pipeline, RejectsBadOptions) {
  auto world = make_inprocess_world(1);
  PipelineOptions options;
  options.pipeline = 2;
  EXPECT_EQ(error_of([&] {
              Pipeline(mlp(), std::make_unique<nn::CrossEntropyLoss>(), options, *world[0]);
            }),
            "[Pipeline] pipeline=2 x data_parallel=1 = 2 ranks, the transport has 1");
  ModelSpec tiny;
  tiny.add<nn::Linear>(4, 4).add<nn::ReLU>();
  EXPECT_EQ(error_of([] {
              ModelSpec small;
              small.add<nn::Linear>(4, 4).add<nn::ReLU>();
              partition_model(small, 4);
            }),
            "[partition_model] the model has 2 layers, fewer than num_stages=4: each stage "
            "needs at least one layer");
  EXPECT_EQ(error_of([&] { tiny.build(1, 5); }),
            "[ModelSpec::build] layers [1, 5) are outside the model's 2 layers");
}

TEST(ModelSpec, PartitionsByParametersUniformlyByCostOrCounts) {
  const ModelSpec m = mlp();
  // Parameters: 260, 0, 40, 210, 0, 66, 0, 21 (parameterless layers count 1).
  EXPECT_EQ(m.parameter_counts(), (std::vector<double>{260, 0, 40, 210, 0, 66, 0, 21}));
  EXPECT_EQ(partition_model(m, 2).bounds, (std::vector<int>{0, 3, 8}));
  PartitionOptions uniform;
  uniform.method = PartitionOptions::Method::kUniform;
  EXPECT_EQ(partition_model(m, 4, uniform).bounds, (std::vector<int>{0, 2, 4, 6, 8}));
  PartitionOptions counts;
  counts.method = PartitionOptions::Method::kCounts;
  counts.layers_per_stage = {1, 7};
  EXPECT_EQ(partition_model(m, 2, counts).bounds, (std::vector<int>{0, 1, 8}));
  // Unnamed layers are named by their index in the model, whatever stage builds them.
  auto stage = m.build(3, 6);
  EXPECT_EQ(stage->parameters()[0]->name, "3.weight");
  EXPECT_EQ(stage->parameters()[3]->name, "5.bias");
}

}  // namespace
}  // namespace pipetrain
