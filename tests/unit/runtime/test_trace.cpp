#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "fake_stage.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/runtime/trace.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"

namespace pipetrain::runtime {
namespace {

// A synthetic timeline: every compute action of 1F1B P=2 M=2 at unit costs F=1, B=2, laid out
// exactly as the simulator would, so measured and predicted agree.
TEST(Trace, MeasuredEqualsPredictedOnAnIdealTimeline) {
  const Schedule s = lower(make_schedule("1f1b", 2, 2));
  const SimulationResult ideal = simulate(s, CostModel::uniform(1.0));
  std::vector<std::vector<ActionTiming>> tl(2);
  for (int r = 0; r < 2; ++r) {
    for (const TimedAction& a : ideal.actions) {
      if (a.rank == r) tl[r].push_back(ActionTiming{a.step, a.action, a.start, a.end, 0.0});
    }
  }
  const SimulationResult m = measured_result(s, tl);
  EXPECT_DOUBLE_EQ(m.makespan, ideal.makespan);
  EXPECT_DOUBLE_EQ(m.bubble_fraction, ideal.bubble_fraction);
  const CostModel c = measured_costs(s, tl);
  EXPECT_EQ(c.forward_per_stage, (std::vector<double>{1.0, 1.0}));
  EXPECT_EQ(c.backward_per_stage, (std::vector<double>{2.0, 2.0}));
  const TraceReport rep = trace_report(s, tl);
  EXPECT_DOUBLE_EQ(rep.predicted_makespan, ideal.makespan);
  EXPECT_NEAR(rep.measured_bubble, rep.predicted_bubble, 1e-12);
  EXPECT_GT(rep.measured_bubble, 0.0);  // 1F1B with M=2 on 2 ranks has a bubble

  const nlohmann::json j = nlohmann::json::parse(rep.chrome_trace_json);
  std::map<std::string, int> names;
  int complete = 0;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "M" && e["name"] == "process_name") names[e["args"]["name"]] = e["pid"];
    if (e["ph"] == "X") ++complete;
  }
  EXPECT_EQ(names["measured rank 0"], 0);
  EXPECT_EQ(names["measured rank 1"], 1);
  EXPECT_EQ(names["predicted rank 0"], 2);
  EXPECT_EQ(names["predicted rank 1"], 3);
  EXPECT_EQ(complete, 2 * 8);  // 8 compute actions, measured and predicted
  EXPECT_DOUBLE_EQ(j["otherData"]["measured_bubble_fraction"].get<double>(), rep.measured_bubble);
  EXPECT_DOUBLE_EQ(j["otherData"]["predicted_makespan_s"].get<double>(), rep.predicted_makespan);
  EXPECT_FALSE(j["otherData"].contains("bubble_fraction"));
}

TEST(Trace, GatherTimelinesFromARealRun) {
  set_logging(false);
  const Schedule s = lower(make_schedule("zb-h1", 2, 4));
  auto transports = make_inprocess_world(2, TransportOptions{std::chrono::seconds(10)});
  std::vector<std::vector<std::vector<ActionTiming>>> got(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      try {
        testing::FakeStage stage(rank, 2, false);
        Topology topo(2, 2, 1);
        testing::FakeLoss loss;
        Executor ex(s, topo, *transports[rank], {&stage}, &loss, nullptr);
        data::Batch b;
        b.batch_size = 4;
        b.seq_len = 3;
        b.inputs.assign(12, 1);
        b.targets.assign(12, 2);
        const StepStats st = ex.step(data::to_microbatches(split_batch(b, 4)), 0.1);
        got[rank] = gather_timelines(*transports[rank], topo, s, st.timeline);
      } catch (const std::exception& e) {
        errors[rank] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  ASSERT_EQ(errors[0], "");
  ASSERT_EQ(errors[1], "");
  ASSERT_EQ(got[0].size(), 2u);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(got[0][r].size(), s.rank_actions(r).size());
    for (std::size_t i = 0; i < got[0][r].size(); ++i) {
      EXPECT_EQ(got[0][r][i].action, s.rank_actions(r)[i]);
      EXPECT_EQ(got[0][r][i].start, got[1][r][i].start);  // both ranks hold the same copy
      EXPECT_TRUE(s.rank_slots(r)[got[0][r][i].slot].has_value());
    }
  }
  const TraceReport rep = trace_report(s, got[0]);
  EXPECT_GT(rep.measured_makespan, 0.0);
  EXPECT_GE(rep.measured_bubble, 0.0);
  EXPECT_LT(rep.measured_bubble, 1.0);
}

TEST(ProgressMeter, FormatsLineAndEta) {
  ProgressMeter meter(10, 1000);
  EXPECT_EQ(meter.update(0, 2.5, 0.5), "step 1/10 loss 2.5000 tokens/s 2000 ETA 5s");
  EXPECT_EQ(meter.update(1, 2.25, 1.5, true),
            "step 2/10 loss 2.2500 tokens/s 667 ETA 8s (skipped: non-finite)");
  EXPECT_EQ(ProgressMeter::format_duration(3723), "1h02m03s");
  EXPECT_EQ(ProgressMeter::format_duration(245), "4m05s");
  try {
    ProgressMeter bad(0, 1);
    FAIL();
  } catch (const InvalidArgument& e) {
    EXPECT_STREQ(e.what(), "[ProgressMeter] total_steps=0 must be >= 1");
  }
}

}  // namespace
}  // namespace pipetrain::runtime
