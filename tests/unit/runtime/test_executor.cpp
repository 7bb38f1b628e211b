// The executor against a hand-run reference, with the fake stage of fake_stage.h and the
// in-process transport (one thread per rank).
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "fake_stage.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain::runtime {
namespace {

using testing::FakeLoss;
using testing::FakeStage;

constexpr int kSeqLen = 3;
constexpr int kMicroRows = 2;
constexpr double kLr = 0.05;
const optim::SgdConfig kSgd{0.9, 0.0, false};

data::Batch make_batch(int rows, int step) {
  data::Batch b;
  b.batch_size = rows;
  b.seq_len = kSeqLen;
  for (int i = 0; i < rows * kSeqLen; ++i) {
    b.inputs.push_back((i * 7 + step * 3) % 11);
    b.targets.push_back((i * 5 + 1 + step) % 13);
  }
  return b;
}

struct Outcome {
  std::vector<double> losses;         // per step
  std::vector<float> a;               // per stage
  float c = 0;                        // tied scalar (first stage's copy)
  std::vector<std::string> errors;    // per rank, empty when it succeeded
  std::vector<StepStats> last_stats;  // per rank
};

// Single device: all stages in one thread, the whole global batch as M*D microbatches.
Outcome reference(int num_stages, int micro_total, int steps, bool tied) {
  std::vector<std::unique_ptr<FakeStage>> stages;
  std::vector<nn::Parameter*> params;
  for (int s = 0; s < num_stages; ++s) {
    stages.push_back(std::make_unique<FakeStage>(s, num_stages, tied));
    for (nn::Parameter* p : stages.back()->parameters()) params.push_back(p);
  }
  optim::Sgd opt(params, kSgd);
  FakeLoss loss_fn;
  Outcome out;
  for (int step = 0; step < steps; ++step) {
    opt.zero_grad();
    const auto mbs =
        data::to_microbatches(split_batch(make_batch(micro_total * kMicroRows, step), micro_total));
    double loss = 0;
    for (int m = 0; m < micro_total; ++m) {
      TensorList x = mbs[m].inputs;
      for (auto& st : stages) x = st->forward(m, x);
      loss += loss_fn.forward(m, x, mbs[m].targets);
      TensorList g = loss_fn.backward(m, 1.0 / micro_total);
      for (int s = num_stages - 1; s >= 0; --s) g = stages[s]->backward(m, g);
    }
    if (tied && num_stages > 1) {
      const float sum =
          stages[0]->c()->grad.data<float>()[0] + stages.back()->c()->grad.data<float>()[0];
      stages[0]->c()->grad.fill(sum);
      stages.back()->c()->grad.fill(sum);
    }
    opt.step(kLr);
    out.losses.push_back(loss / micro_total);
  }
  for (auto& st : stages) out.a.push_back(st->a().value.data<float>()[0]);
  if (tied) out.c = stages[0]->c()->value.data<float>()[0];
  return out;
}

struct RunSpec {
  std::string schedule = "1f1b";
  int pipeline = 2;
  int microbatches = 4;
  int stages_per_rank = 1;
  int data_parallel = 1;
  int steps = 3;
  bool tied = false;
  std::chrono::milliseconds timeout{5000};
  ExecutorOptions options;
  // Called on each rank's stages before training (fault injection).
  std::function<void(int rank, std::vector<FakeStage*>&)> setup;
  // When set, rank `absent_rank` runs only the first step, then returns.
  int absent_rank = -1;
};

Outcome run_pipeline(const RunSpec& spec) {
  const Schedule built =
      make_schedule(spec.schedule, spec.pipeline, spec.microbatches, spec.stages_per_rank);
  // One rank needs no lowering: an overlapped schedule then reaches the Executor with its marks
  // (lower() refuses them), and the Executor runs it expanded.
  const Schedule schedule = built.has_overlap() && spec.pipeline == 1 ? built : lower(built);
  const int world = spec.pipeline * spec.data_parallel;
  auto transports = make_inprocess_world(world, TransportOptions{spec.timeout});
  Outcome out;
  out.errors.resize(world);
  out.last_stats.resize(world);
  out.a.assign(schedule.num_stages(), 0.0f);
  std::vector<std::vector<double>> losses(world);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        Topology topo(world, spec.pipeline, spec.data_parallel);
        std::vector<std::unique_ptr<FakeStage>> owned;
        std::vector<Stage*> stages;
        std::vector<FakeStage*> fakes;
        std::vector<nn::Parameter*> params;
        for (int s : schedule.stages_of_rank(topo.pp_index(rank))) {
          owned.push_back(std::make_unique<FakeStage>(s, schedule.num_stages(), spec.tied));
          stages.push_back(owned.back().get());
          fakes.push_back(owned.back().get());
          for (nn::Parameter* p : owned.back()->parameters()) params.push_back(p);
        }
        if (spec.setup) spec.setup(rank, fakes);
        optim::Sgd opt(params, kSgd);
        FakeLoss loss;
        Executor ex(schedule, topo, *transports[rank], stages, &loss, &opt, spec.options);
        const int rows = spec.microbatches * spec.data_parallel * kMicroRows;
        for (int step = 0; step < spec.steps; ++step) {
          if (rank == spec.absent_rank && step == 1) return;
          const data::Batch local =
              shard_batch(make_batch(rows, step), spec.data_parallel, topo.dp_index(rank));
          StepStats st = ex.step(data::to_microbatches(split_batch(local, spec.microbatches)), kLr);
          losses[rank].push_back(st.loss);
          out.last_stats[rank] = st;
        }
        if (topo.dp_index(rank) == 0) {
          for (std::size_t i = 0; i < fakes.size(); ++i) {
            out.a[schedule.stages_of_rank(topo.pp_index(rank))[i]] =
                fakes[i]->a().value.data<float>()[0];
            if (fakes[i]->c() && fakes[i]->is_first())
              out.c = fakes[i]->c()->value.data<float>()[0];
          }
        }
      } catch (const std::exception& e) {
        out.errors[rank] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  out.losses = losses[0];
  for (int r = 1; r < world; ++r) {
    if (!out.errors[r].empty() || !out.errors[0].empty()) continue;
    EXPECT_EQ(losses[r].size(), losses[0].size());
    if (losses[r].size() != losses[0].size()) continue;
    for (std::size_t i = 0; i < losses[0].size(); ++i) {
      if (std::isnan(losses[0][i])) {
        EXPECT_TRUE(std::isnan(losses[r][i])) << r;
      } else {
        EXPECT_EQ(losses[r][i], losses[0][i]) << r;  // every rank reports the same loss
      }
    }
  }
  return out;
}

void expect_near_rel(double got, double want, const std::string& what) {
  EXPECT_LE(std::abs(got - want), 1e-5 * std::max(1.0, std::abs(want)))
      << what << ": got " << got << " want " << want;
}

void expect_matches_reference(const RunSpec& spec) {
  const Outcome got = run_pipeline(spec);
  for (int r = 0; r < static_cast<int>(got.errors.size()); ++r) {
    ASSERT_EQ(got.errors[r], "") << "rank " << r;
  }
  const int stages = static_cast<int>(got.a.size());
  const Outcome want =
      reference(stages, spec.microbatches * spec.data_parallel, spec.steps, spec.tied);
  ASSERT_EQ(got.losses.size(), want.losses.size());
  for (std::size_t i = 0; i < want.losses.size(); ++i) {
    expect_near_rel(got.losses[i], want.losses[i], "loss " + std::to_string(i));
  }
  for (int s = 0; s < stages; ++s) expect_near_rel(got.a[s], want.a[s], "a" + std::to_string(s));
  if (spec.tied) expect_near_rel(got.c, want.c, "c");
  // Training moved the parameters: the comparison is not vacuous.
  EXPECT_NE(want.a[0], 0.5f);
}

struct ScheduleCase {
  std::string name;
  int pipeline, microbatches, stages_per_rank;
};

// GoogleTest would print the parameter as its bytes (a pointer among them), which makes the
// CTest names differ from build to build.
void PrintTo(const ScheduleCase& c, std::ostream* out) {
  *out << c.name << " P=" << c.pipeline << " M=" << c.microbatches << " v=" << c.stages_per_rank;
}

class ExecutorMatchesReference : public ::testing::TestWithParam<ScheduleCase> {};

TEST_P(ExecutorMatchesReference, LossesAndParameters) {
  set_logging(false);
  RunSpec spec;
  spec.schedule = GetParam().name;
  spec.pipeline = GetParam().pipeline;
  spec.microbatches = GetParam().microbatches;
  spec.stages_per_rank = GetParam().stages_per_rank;
  spec.tied = true;
  expect_matches_reference(spec);
}

INSTANTIATE_TEST_SUITE_P(
    Schedules, ExecutorMatchesReference,
    ::testing::Values(ScheduleCase{"gpipe", 2, 4, 1}, ScheduleCase{"1f1b", 2, 4, 1},
                      ScheduleCase{"1f1b", 3, 5, 1}, ScheduleCase{"interleaved-1f1b", 2, 4, 2},
                      ScheduleCase{"interleaved-1f1b", 3, 3, 2},
                      ScheduleCase{"looped-bfs", 2, 3, 2}, ScheduleCase{"zb-h1", 3, 6, 1},
                      ScheduleCase{"zb-h2", 2, 4, 1}, ScheduleCase{"zb-v", 2, 4, 1},
                      ScheduleCase{"dualpipe-v", 2, 4, 1}, ScheduleCase{"v-half", 2, 4, 1},
                      ScheduleCase{"v-half", 3, 6, 1}, ScheduleCase{"v-min", 3, 6, 1},
                      ScheduleCase{"gpipe", 1, 3, 1}, ScheduleCase{"dualpipe-v-overlap", 1, 4, 1}),
    [](const auto& info) {
      std::string n = info.param.name + "_P" + std::to_string(info.param.pipeline) + "_M" +
                      std::to_string(info.param.microbatches);
      for (char& ch : n)
        if (ch == '-') ch = '_';
      return n;
    });

TEST(Executor, DataParallelTimesPipelineEqualsSingleDevice) {
  set_logging(false);
  RunSpec spec;
  spec.schedule = "1f1b";
  spec.pipeline = 2;
  spec.data_parallel = 2;
  spec.tied = true;
  expect_matches_reference(spec);
}

TEST(Executor, ReceiveLookaheadDoesNotChangeResults) {
  set_logging(false);
  for (int lookahead : {0, 3, 1000}) {
    for (const char* name : {"zb-v", "interleaved-1f1b"}) {
      RunSpec spec;
      spec.schedule = name;
      spec.stages_per_rank = std::string(name) == "zb-v" ? 1 : 2;
      spec.pipeline = 3;
      spec.microbatches = 6;
      spec.tied = true;
      spec.options.recv_lookahead_groups = lookahead;
      expect_matches_reference(spec);
    }
  }
}

TEST(Executor, ClippingMatchesGlobalNorm) {
  set_logging(false);
  RunSpec spec;
  spec.steps = 1;
  spec.options.max_grad_norm = 1e-3;
  const Outcome got = run_pipeline(spec);
  ASSERT_EQ(got.errors[0], "");
  const StepStats& st = got.last_stats[0];
  EXPECT_GT(st.grad_norm, 1e-3);
  EXPECT_NEAR(st.clip_coefficient, 1e-3 / (st.grad_norm + 1e-6), 1e-12);
  EXPECT_EQ(got.last_stats[1].grad_norm, st.grad_norm);
  EXPECT_FALSE(st.skipped);
}

TEST(Executor, TimelineCoversEveryAction) {
  set_logging(false);
  RunSpec spec;
  spec.steps = 1;
  const Outcome got = run_pipeline(spec);
  ASSERT_EQ(got.errors[0], "");
  const Schedule sched = lower(make_schedule("1f1b", 2, 4));
  for (int r = 0; r < 2; ++r) {
    const auto& tl = got.last_stats[r].timeline;
    ASSERT_EQ(tl.size(), sched.rank_actions(r).size());
    for (std::size_t i = 0; i < tl.size(); ++i) {
      EXPECT_EQ(tl[i].action, sched.rank_actions(r)[i]);
      EXPECT_LE(tl[i].start, tl[i].end);
      if (i > 0) EXPECT_GE(tl[i].start, tl[i - 1].end - 1e-9);
    }
  }
}

TEST(Executor, NonFiniteGradientSkipsOnEveryRank) {
  set_logging(false);
  RunSpec spec;
  spec.steps = 1;
  spec.setup = [](int rank, std::vector<FakeStage*>& stages) {
    if (rank == 1) stages[0]->a().value.fill(std::numeric_limits<float>::infinity());
  };
  const Outcome got = run_pipeline(spec);
  ASSERT_EQ(got.errors[0], "");
  ASSERT_EQ(got.errors[1], "");
  EXPECT_TRUE(got.last_stats[0].skipped);
  EXPECT_TRUE(got.last_stats[1].skipped);
  EXPECT_EQ(got.a[0], 0.5f);  // no update on rank 0 either
}

TEST(Executor, FailingRankMakesEveryRankFailWithoutHanging) {
  set_logging(false);
  RunSpec spec;
  spec.schedule = "1f1b";
  spec.pipeline = 4;
  spec.microbatches = 4;
  spec.steps = 2;
  spec.timeout = std::chrono::milliseconds(20000);
  spec.setup = [](int rank, std::vector<FakeStage*>& stages) {
    if (rank == 2) stages[0]->throw_in_forward(1);
  };
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome got = run_pipeline(spec);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(seconds, 5.0);  // abort wakes everyone long before the 20 s deadline
  EXPECT_NE(
      got.errors[2].find(
          "[Executor::step] rank 2 failed at 2F1 (microbatch 1, peer rank 1, slot 8) in step 0:"),
      std::string::npos)
      << got.errors[2];
  EXPECT_NE(got.errors[2].find("[FakeStage::forward] injected failure"), std::string::npos);
  EXPECT_NE(got.errors[2].find("[2F1]!"), std::string::npos);
  for (int r : {0, 1, 3}) {
    // A rank may still be in the step's opening barrier when the abort arrives.
    EXPECT_EQ(got.errors[r].rfind("[Executor::step] rank " + std::to_string(r) + " failed ", 0), 0u)
        << got.errors[r];
    EXPECT_NE(got.errors[r].find("aborted"), std::string::npos) << got.errors[r];
  }
}

TEST(Executor, TimeoutNamesRankPeerActionAndMicrobatch) {
  set_logging(false);
  RunSpec spec;
  spec.schedule = "1f1b";
  spec.pipeline = 2;
  spec.microbatches = 1;
  spec.steps = 1;
  spec.timeout = std::chrono::milliseconds(100);
  spec.options.barrier_at_step_start = false;
  spec.setup = [](int rank, std::vector<FakeStage*>& stages) {
    if (rank == 1) stages[0]->stall_in_forward(0, std::chrono::milliseconds(400));
  };
  const Outcome got = run_pipeline(spec);
  EXPECT_EQ(got.errors[0],
            "[Executor::step] rank 0 failed at 0B0 (microbatch 0, peer rank 1, slot 5) in step 0:\n"
            "[InProcessTransport::wait] rank 0 timed out after 100 ms waiting for RECV_B stage 0 "
            "microbatch 0 [2, 3] fp32 step 0 from rank 1\n"
            "rank 0: 0F0 0SEND_F0 . . 0RECV_B0 [0B0]!");
  EXPECT_NE(got.errors[1].find("aborted"), std::string::npos) << got.errors[1];
}

TEST(Executor, AbsentRankIsNamedAtTheNextStepsAgreement) {
  set_logging(false);
  RunSpec spec;
  spec.schedule = "1f1b";
  spec.pipeline = 2;
  spec.microbatches = 1;
  spec.steps = 2;
  spec.timeout = std::chrono::milliseconds(100);
  spec.absent_rank = 1;
  const Outcome got = run_pipeline(spec);
  EXPECT_EQ(got.errors[1], "");
  EXPECT_EQ(got.errors[0].rfind(
                "[Executor::step] rank 0 failed before the first action in step 1:\n"
                "[InProcessTransport::all_reduce_sum] rank 0 timed out after 100 ms waiting for "
                "ranks [1]",
                0),
            0u)
      << got.errors[0];
}

TEST(Executor, ShapeMismatchIsCaughtBeforeAnyCompute) {
  set_logging(false);
  RunSpec spec;
  spec.pipeline = 3;
  spec.microbatches = 3;
  spec.setup = [](int rank, std::vector<FakeStage*>& stages) {
    if (rank == 1) stages[0]->report_wrong_width();
  };
  const Outcome got = run_pipeline(spec);
  // The holder of the refusing stage names the reason; the others point to it.
  EXPECT_EQ(got.errors[2],
            "[Executor::step] stage 2 (rank 2) cannot take its inputs ([2, 4] fp32): "
            "[FakeStage::output_specs] inputs are ([2, 4] fp32), expected ([2, 3] fp32)");
  for (int r : {0, 1}) {
    EXPECT_EQ(got.errors[r],
              "[Executor::step] stage 2 (rank 2) cannot take its inputs (rank 2's error says why)");
  }
}

// Runs `body(rank, executor)` on a 2-rank 1F1B pipeline of fake stages, returns each rank's
// error (empty when none).
std::vector<std::string> on_two_ranks(
    const std::function<void(int, Executor&, std::vector<FakeStage*>&)>& body) {
  const Schedule schedule = lower(make_schedule("1f1b", 2, 2));
  auto transports = make_inprocess_world(2, TransportOptions{std::chrono::milliseconds(5000)});
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        FakeStage stage(rank, 2, false);
        std::vector<FakeStage*> fakes{&stage};
        FakeLoss loss;
        optim::Sgd opt(stage.parameters(), kSgd);
        Executor ex(schedule, Topology(2, 2, 1), *transports[rank], {&stage}, &loss, &opt);
        body(rank, ex, fakes);
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

TEST(Executor, BadBatchesAreRefusedOnEveryRankAndTheExecutorStaysUsable) {
  set_logging(false);
  std::vector<std::vector<std::string>> refusals(2);
  const auto errors = on_two_ranks([&](int rank, Executor& ex, std::vector<FakeStage*>&) {
    auto expect_refused = [&](const std::vector<Microbatch>& mbs) {
      try {
        ex.step(mbs, kLr);
        refusals[rank].push_back("<no error>");
      } catch (const InvalidArgument& e) {
        refusals[rank].push_back(e.what());
      }
    };
    std::vector<Microbatch> good = data::to_microbatches(split_batch(make_batch(4, 0), 2));
    // Ragged: microbatch 1 has one row fewer.
    std::vector<Microbatch> ragged = good;
    ragged[1] = data::to_microbatch(make_batch(1, 0));
    expect_refused(ragged);
    // Rank 1 alone passes targets of the wrong dtype: every rank must refuse.
    std::vector<Microbatch> wrong = good;
    if (rank == 1) {
      for (Microbatch& m : wrong) m.targets[0] = m.targets[0].to(DType::kFloat32);
    }
    expect_refused(wrong);
    // Targets whose rows do not match the outputs: the loss refuses before any compute.
    std::vector<Microbatch> mismatched = data::to_microbatches(split_batch(make_batch(4, 0), 2));
    for (Microbatch& m : mismatched) m.targets[0] = m.targets[0].slice(0, 1);
    expect_refused(mismatched);
    expect_refused({good[0]});
    // Still usable, and a smaller batch is agreed anew.
    const StepStats st = ex.step(good, kLr);
    EXPECT_TRUE(std::isfinite(st.loss));
    EXPECT_EQ(st.microbatch_losses.size(), 2u);
    EXPECT_EQ(ex.boundary_specs()[1], (std::vector<TensorSpec>{{{2, 3}, DType::kFloat32}}));
    const StepStats small = ex.step(data::to_microbatches(split_batch(make_batch(2, 1), 2)), kLr);
    EXPECT_TRUE(std::isfinite(small.loss));
    EXPECT_EQ(ex.boundary_specs()[1], (std::vector<TensorSpec>{{{1, 3}, DType::kFloat32}}));
  });
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(refusals[r].size(), 4u) << r;
    EXPECT_EQ(refusals[r][0],
              "[Executor::step] microbatch 1 has inputs ([1, 3] int32) but microbatch 0 has "
              "([2, 3] int32): every microbatch of a step must have the same shapes");
    EXPECT_EQ(refusals[r][3],
              "[Executor::step] got 1 microbatches, the schedule has num_microbatches=2");
  }
  EXPECT_EQ(refusals[0][1], "[Executor::step] rank 1 passes microbatches of other shapes than "
                            "rank 0: every rank must pass microbatches with the same specs");
  EXPECT_EQ(refusals[0][1], refusals[1][1]);
  EXPECT_EQ(refusals[1][2],
            "[Executor::step] the loss (rank 1) cannot take the outputs ([2, 3] fp32) with the "
            "targets ([1, 3] int32): [FakeLoss::check] outputs ([2, 3] fp32) and targets "
            "([1, 3] int32) differ");
  EXPECT_EQ(refusals[0][2], "[Executor::step] the loss (rank 1) cannot take the outputs with "
                            "these targets (rank 1's error says why)");
}

TEST(Executor, EvaluateReturnsTheForwardAndLossWithoutTouchingParameters) {
  set_logging(false);
  const auto errors = on_two_ranks([&](int rank, Executor& ex, std::vector<FakeStage*>& fakes) {
    const std::vector<Microbatch> mbs = data::to_microbatches(split_batch(make_batch(4, 0), 2));
    const float a = fakes[0]->a().value.data<float>()[0];
    const EvalStats ev = ex.evaluate(mbs);
    EXPECT_EQ(fakes[0]->a().value.data<float>()[0], a);
    EXPECT_EQ(fakes[0]->bytes_kept(), 0u);
    ASSERT_EQ(ev.microbatch_losses.size(), 2u);
    // Both stages scale by their a: 0.5 and 0.75.
    FakeLoss loss;
    for (int m = 0; m < 2; ++m) {
      Tensor y = Tensor::empty({2, 3});
      const std::int32_t* t = mbs[m].inputs[0].data<std::int32_t>();
      for (int i = 0; i < 6; ++i) y.data<float>()[i] = 0.75f * (0.5f * (0.1f * t[i]));
      EXPECT_NEAR(ev.microbatch_losses[m], loss.evaluate({y}, mbs[m].targets), 1e-6);
      if (rank == 1) {
        ASSERT_EQ(ev.outputs.size(), 2u);
        const std::vector<float> got = ev.outputs[m][0].to_vector<float>();
        for (int i = 0; i < 6; ++i) EXPECT_NEAR(got[i], y.data<float>()[i], 1e-6);
      }
    }
    if (rank == 0) EXPECT_TRUE(ev.outputs.empty());
    // Without targets: outputs only, loss NaN; then training still works.
    std::vector<Microbatch> no_targets = mbs;
    for (Microbatch& m : no_targets) m.targets.clear();
    EXPECT_TRUE(std::isnan(ex.evaluate(no_targets).loss));
    EXPECT_TRUE(std::isfinite(ex.step(mbs, kLr).loss));
  });
  EXPECT_EQ(errors, (std::vector<std::string>{"", ""}));
}

TEST(Executor, RejectsBadConstruction) {
  auto transports = make_inprocess_world(2);
  Topology topo(2, 2, 1);
  FakeStage s0(0, 2, false), s1(1, 2, false);
  FakeLoss loss;
  const Schedule lowered = lower(make_schedule("1f1b", 2, 2));
  auto error_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "<no error>";
  };
  EXPECT_EQ(
      error_of([&] {
        Executor(make_schedule("1f1b", 2, 2), topo, *transports[0], {&s0}, &loss, nullptr);
      }),
      "[Executor] schedule '1f1b' has 2 ranks but no communication: lower() it first");
  EXPECT_EQ(error_of([&] {
              Executor(lowered, topo, *transports[0], {&s0, &s1}, &loss, nullptr);
            }),
            "[Executor] rank 0 holds stages [0] (1 stages), got 2 Stage objects");
  EXPECT_EQ(error_of([&] { Executor(lowered, topo, *transports[1], {&s1}, nullptr, nullptr); }),
            "[Executor] rank 1 holds the last stage (1) but has no Loss");
  EXPECT_EQ(error_of([&] {
              Executor(lowered, Topology(4, 2, 2), *transports[0], {&s0}, &loss, nullptr);
            }),
            "[Executor] transport world_size=2 must equal topology world_size=4");
  EXPECT_EQ(error_of([&] {
              auto single = make_inprocess_world(1);
              Executor ex(make_schedule("gpipe", 1, 2), Topology(1, 1, 1), *single[0], {&s0},
                          &loss, nullptr);
              ex.step({data::to_microbatch(make_batch(2, 0))}, 0.1);
            }),
            "[Executor::step] got 1 microbatches, the schedule has num_microbatches=2");
}

TEST(CheckSameConfiguration, NamesTheRankThatDiffers) {
  auto transports = make_inprocess_world(3, TransportOptions{std::chrono::milliseconds(5000)});
  std::vector<std::string> errors(3);
  std::vector<std::thread> threads;
  for (int r = 0; r < 3; ++r) {
    threads.emplace_back([&, r] {
      try {
        check_same_configuration(*transports[r], "same");
        check_same_configuration(*transports[r], r == 2 ? "M=8" : "M=4");
      } catch (const InvalidArgument& e) {
        errors[r] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < 3; ++r) {
    EXPECT_EQ(errors[r].rfind("[check_same_configuration] rank 2 runs configuration hash 0x", 0),
              0u)
        << errors[r];
    EXPECT_NE(errors[r].find("start every rank with the same options"), std::string::npos);
    EXPECT_EQ(errors[r], errors[0]);
  }
}

}  // namespace
}  // namespace pipetrain::runtime
