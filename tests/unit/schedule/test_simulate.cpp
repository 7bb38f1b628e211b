#include "pipetrain/schedule/simulate.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "pipetrain/error.h"
#include "error_of.h"
#include "schedule_rows.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

Schedule make(const std::string& name, int ranks, int per_rank, int microbatches,
              const std::vector<std::string>& rows, Placement placement = Placement::kLoop) {
  EXPECT_EQ(rows.size(), static_cast<std::size_t>(ranks)) << name;
  return testing::schedule_from_rows(name, per_rank, microbatches, rows, placement);
}

struct Expected {
  int rank;
  int step;
  const char* action;
  double start;
  double end;
};

void expect_timeline(const SimulationResult& result, const std::vector<Expected>& expected) {
  ASSERT_EQ(result.actions.size(), expected.size());
  for (std::size_t i = 0; i < expected.size(); ++i) {
    const TimedAction& t = result.actions[i];
    const Expected& e = expected[i];
    EXPECT_EQ(t.rank, e.rank) << i;
    EXPECT_EQ(t.step, e.step) << i;
    EXPECT_EQ(to_string(t.action), e.action) << i;
    EXPECT_DOUBLE_EQ(t.start, e.start) << e.action;
    EXPECT_DOUBLE_EQ(t.end, e.end) << e.action;
  }
}

// ---- cost model -----------------------------------------------------------------------------

TEST(CostModel, UniformIsTheFormulaModel) {
  const CostModel c = CostModel::uniform(1.5);
  EXPECT_EQ(c.compute_time(Action{0, ActionKind::kForward, 0}), 1.5);
  EXPECT_EQ(c.compute_time(Action{3, ActionKind::kBackward, 0}), 3.0);
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kBackwardInput, 2}), 1.5);
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kBackwardWeight, 2}), 1.5);
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kSendForward, 2}), 0.0);
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kRecvBackward, 2}), 0.0);
  EXPECT_EQ(c.transfer_time(), 0.0);
}

TEST(CostModel, PerStageTimesAndTransfer) {
  CostModel c;
  c.forward_per_stage = {1.0, 3.0};
  c.backward_input_per_stage = {5.0, 7.0};
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kForward, 0}), 3.0);
  EXPECT_EQ(c.compute_time(Action{0, ActionKind::kBackwardInput, 0}), 5.0);
  EXPECT_EQ(c.compute_time(Action{1, ActionKind::kBackward, 0}), 2.0);        // scalar default
  EXPECT_EQ(c.compute_time(Action{7, ActionKind::kBackwardWeight, 0}), 1.0);  // scalar default
  EXPECT_EQ(error_of([&] { c.compute_time(Action{2, ActionKind::kForward, 0}); }),
            "[CostModel::compute_time] stage=2 of 2F0 must be in [0, 2) (forward_per_stage has "
            "2 entries)");
  c.latency = 1.0;
  EXPECT_EQ(c.transfer_time(), 1.0);
  c.bytes_per_transfer = 100.0;
  EXPECT_EQ(c.transfer_time(), 1.0);  // infinite bandwidth
  c.bandwidth = 50.0;
  EXPECT_EQ(c.transfer_time(), 3.0);
}

// ---- simulate -------------------------------------------------------------------------------

TEST(Simulate, GPipeTwoRanksTwoMicrobatchesByHand) {
  const Schedule s = make("gpipe", 2, 1, 2, {"0F0 0F1 . . 0B0 0B1", ". 1F0 1F1 1B0 1B1"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  // Steps index the slots, idle slots included.
  expect_timeline(r, {{0, 0, "0F0", 0, 1},
                      {0, 1, "0F1", 1, 2},
                      {0, 4, "0B0", 5, 7},
                      {0, 5, "0B1", 7, 9},
                      {1, 1, "1F0", 1, 2},
                      {1, 2, "1F1", 2, 3},
                      {1, 3, "1B0", 3, 5},
                      {1, 4, "1B1", 5, 7}});
  EXPECT_DOUBLE_EQ(r.makespan, 9.0);
  EXPECT_EQ(r.busy, (std::vector<double>{6.0, 6.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{3.0, 3.0}));
  // (P-1)/(M+P-1) = 1/3.
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 1.0 / 3.0);
}

TEST(Simulate, LatencyDelaysEveryCrossRankDependency) {
  const Schedule s = make("gpipe", 2, 1, 2, {"0F0 0F1 0B0 0B1", "1F0 1F1 1B0 1B1"});
  CostModel c = CostModel::uniform();
  c.latency = 0.5;
  const SimulationResult r = simulate(s, c);
  expect_timeline(r, {{0, 0, "0F0", 0, 1},
                      {0, 1, "0F1", 1, 2},
                      {0, 2, "0B0", 6, 8},
                      {0, 3, "0B1", 8, 10},
                      {1, 0, "1F0", 1.5, 2.5},
                      {1, 1, "1F1", 2.5, 3.5},
                      {1, 2, "1B0", 3.5, 5.5},
                      {1, 3, "1B1", 5.5, 7.5}});
  EXPECT_DOUBLE_EQ(r.makespan, 10.0);
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 8.0 / 20.0);
}

TEST(Simulate, VPlacementTransfersCostOnlyBetweenRanks) {
  // P=2, V: rank 0 runs stages 0 and 3, rank 1 runs 1 and 2. 1 -> 2 stays on rank 1.
  const Schedule s =
      make("v", 2, 2, 1, {"0F0 3F0 3B0 0B0", "1F0 2F0 2B0 1B0"}, Placement::kV);
  CostModel c = CostModel::uniform();
  c.latency = 0.25;
  c.bytes_per_transfer = 10.0;
  c.bandwidth = 40.0;  // transfer = 0.25 + 0.25 = 0.5
  const SimulationResult r = simulate(s, c);
  expect_timeline(r, {{0, 0, "0F0", 0, 1},
                      {0, 1, "3F0", 4, 5},     // 2F0 ends 3.5 on rank 1, + 0.5
                      {0, 2, "3B0", 5, 7},     // its own F on the same rank: no transfer
                      {0, 3, "0B0", 12, 14},   // 1B0 ends 11.5 on rank 1, + 0.5
                      {1, 0, "1F0", 1.5, 2.5},
                      {1, 1, "2F0", 2.5, 3.5},  // same rank: starts as 1F0 ends
                      {1, 2, "2B0", 7.5, 9.5},
                      {1, 3, "1B0", 9.5, 11.5}});  // same rank: starts as 2B0 ends
  EXPECT_DOUBLE_EQ(r.makespan, 14.0);
  EXPECT_EQ(r.busy, (std::vector<double>{6.0, 6.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{8.0, 8.0}));
}

TEST(Simulate, PerStageCosts) {
  const Schedule s = make("gpipe", 2, 1, 1, {"0F0 0B0", "1F0 1B0"});
  CostModel c;
  c.forward_per_stage = {1.0, 3.0};
  c.backward_per_stage = {2.0, 4.0};
  const SimulationResult r = simulate(s, c);
  expect_timeline(r, {{0, 0, "0F0", 0, 1}, {0, 1, "0B0", 8, 10}, {1, 0, "1F0", 1, 4},
                      {1, 1, "1B0", 4, 8}});
  EXPECT_EQ(r.busy, (std::vector<double>{3.0, 7.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{7.0, 3.0}));
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 10.0 / 20.0);
}

TEST(Simulate, SplitBackwardWaitsForInputGradientOnly) {
  // W needs only its own I; the previous stage's I needs the next stage's I, not its W.
  const Schedule s = make("zb", 2, 1, 1, {"0F0 0I0 0W0", "1F0 1I0 1W0"});
  CostModel c = CostModel::uniform();
  c.backward_weight = 3.0;
  const SimulationResult r = simulate(s, c);
  expect_timeline(r, {{0, 0, "0F0", 0, 1}, {0, 1, "0I0", 3, 4}, {0, 2, "0W0", 4, 7},
                      {1, 0, "1F0", 1, 2}, {1, 1, "1I0", 2, 3}, {1, 2, "1W0", 3, 6}});
  EXPECT_DOUBLE_EQ(r.makespan, 7.0);
}

TEST(Simulate, MixedFullAndSplitBackward) {
  // Stage 0 waits for stage 1's B when stage 1 does not split its backward.
  const Schedule s = make("mixed", 2, 1, 1, {"0F0 0I0 0W0", "1F0 1B0"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  expect_timeline(r, {{0, 0, "0F0", 0, 1}, {0, 1, "0I0", 4, 5}, {0, 2, "0W0", 5, 6},
                      {1, 0, "1F0", 1, 2}, {1, 1, "1B0", 2, 4}});
}

TEST(Simulate, CommunicationActionsTakeNoTime) {
  const Schedule compute = make("c", 2, 1, 1, {"0F0 0B0", "1F0 1B0"});
  const Schedule lowered =
      make("l", 2, 1, 1, {"0F0 0SEND_F0 0RECV_B0 0B0", "1RECV_F0 1F0 1B0 1SEND_B0"});
  CostModel c = CostModel::uniform();
  c.latency = 1.0;
  const SimulationResult a = simulate(compute, c);
  const SimulationResult b = simulate(lowered, c);
  expect_timeline(b, {{0, 0, "0F0", 0, 1}, {0, 3, "0B0", 6, 8}, {1, 1, "1F0", 2, 3},
                      {1, 2, "1B0", 3, 5}});
  EXPECT_DOUBLE_EQ(a.makespan, b.makespan);
  EXPECT_EQ(a.busy, b.busy);
}

TEST(Simulate, NeedsNoCompleteSchedule) {
  // Only the order and the dependencies present matter; rank 1 runs nothing and idles.
  const Schedule s = make("partial", 2, 1, 1, {"0F0", ""});
  const SimulationResult r = simulate(s, CostModel::uniform());
  expect_timeline(r, {{0, 0, "0F0", 0, 1}});
  EXPECT_EQ(r.busy, (std::vector<double>{1.0, 0.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{0.0, 1.0}));
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 0.5);
}

TEST(Simulate, EmptyScheduleHasNoTime) {
  const SimulationResult r = simulate(Schedule("empty", 3, 1, 1), CostModel::uniform());
  EXPECT_TRUE(r.actions.empty());
  EXPECT_EQ(r.makespan, 0.0);
  EXPECT_EQ(r.busy, (std::vector<double>{0.0, 0.0, 0.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{0.0, 0.0, 0.0}));
  EXPECT_EQ(r.bubble_fraction, 0.0);
}

TEST(Simulate, SparseMicrobatchNumbersCostOnlyTheirActions) {
  // A schedule that declares a billion microbatches but holds four actions (as a CSV file may):
  // the lookup tables must not grow with the key space.
  const Schedule s = make("sparse", 2, 1, 1000000000,
                          {"0F999999999 0B999999999", "1F999999999 1B999999999"});
  const SimulationResult r = simulate(s, CostModel::uniform());
  expect_timeline(r, {{0, 0, "0F999999999", 0, 1}, {0, 1, "0B999999999", 4, 6},
                      {1, 0, "1F999999999", 1, 2}, {1, 1, "1B999999999", 2, 4}});
  const MemoryProfile m = analyze_memory(s);
  EXPECT_EQ(m.peak_held, (std::vector<int>{1, 1}));
}

TEST(Simulate, StuckScheduleThrowsWithTheGrid) {
  // Rank 0 runs 0B0 first; it needs 1B0, which needs 1F0, which needs 0F0 behind 0B0.
  const Schedule s = make("stuck", 2, 1, 1, {"0B0 0F0", "1F0 1B0"});
  ValidationReport report;
  report.violations = {
      {Violation::Rule::kDeadlock, 0, 0,
       "0B0 on rank 0 step 0 waits for 1B0 (rank 1 step 1), which never runs"},
      {Violation::Rule::kDeadlock, 1, 0,
       "1F0 on rank 1 step 0 waits for 0F0 (rank 0 step 1), which never runs"}};
  const std::string expected =
      "[simulate] schedule 'stuck' cannot finish: 2 ranks are stuck:\n" + report.format(s);
  EXPECT_EQ(error_of([&] { simulate(s, CostModel::uniform()); }), expected);
  EXPECT_THROW(simulate(s, CostModel::uniform()), ScheduleError);
  EXPECT_NE(expected.find("[0B0]!"), std::string::npos);
  EXPECT_NE(expected.find("[1F0]!"), std::string::npos);
}

TEST(Simulate, MissingProducerIsNamed) {
  const Schedule s = make("missing", 2, 1, 1, {"0F0 0B0", "1F0"});
  ValidationReport report;
  report.violations = {{Violation::Rule::kDeadlock, 0, 1,
                        "0B0 on rank 0 step 1 waits for 1B0, which is not in the schedule"}};
  EXPECT_EQ(error_of([&] { simulate(s, CostModel::uniform()); }),
            "[simulate] schedule 'missing' cannot finish: 1 rank is stuck:\n" + report.format(s));
}

TEST(Simulate, OutOfRangeActionThrows) {
  const Schedule s = make("range", 2, 1, 1, {"0F0 0B0 0F1", "1F0 1B0"});
  ValidationReport report;
  report.violations = {{Violation::Rule::kRange, 0, 2,
                        "0F1 at rank 0 step 2 is out of range: stages are [0, 2), microbatches "
                        "[0, 1)"}};
  EXPECT_EQ(error_of([&] { simulate(s, CostModel::uniform()); }),
            "[simulate] schedule 'range' has 1 action out of range:\n" + report.format(s));
}

TEST(Simulate, RejectsPerStageVectorsOfTheWrongSize) {
  const Schedule s = make("gpipe", 2, 1, 1, {"0F0 0B0", "1F0 1B0"});
  CostModel c;
  c.backward_weight_per_stage = {1.0, 2.0, 3.0};
  EXPECT_EQ(error_of([&] { simulate(s, c); }),
            "[simulate] costs.backward_weight_per_stage has 3 entries, expected 0 or "
            "num_stages=2");
  EXPECT_THROW(simulate(s, c), InvalidArgument);
}

// Breadth-first interleaved schedule with split backward: every rank runs all forwards of its
// first chunk, then of its second, then I and W of the second chunk, then of the first.
Schedule breadth_first(int ranks, int microbatches) {
  Schedule s("breadth-first", ranks, 2, microbatches);
  for (int r = 0; r < ranks; ++r) {
    for (int c = 0; c < 2; ++c)
      for (int m = 0; m < microbatches; ++m)
        s.append(r, Action{r + c * ranks, ActionKind::kForward, m});
    for (int c = 1; c >= 0; --c)
      for (int m = 0; m < microbatches; ++m) {
        s.append(r, Action{r + c * ranks, ActionKind::kBackwardInput, m});
        s.append(r, Action{r + c * ranks, ActionKind::kBackwardWeight, m});
      }
  }
  return s;
}

TEST(Simulate, SmallBreadthFirstByHand) {
  const Schedule s = breadth_first(2, 2);
  const SimulationResult r = simulate(s, CostModel::uniform());
  expect_timeline(r, {{0, 0, "0F0", 0, 1},   {0, 1, "0F1", 1, 2},   {0, 2, "2F0", 2, 3},
                      {0, 3, "2F1", 3, 4},   {0, 4, "2I0", 6, 7},   {0, 5, "2W0", 7, 8},
                      {0, 6, "2I1", 8, 9},   {0, 7, "2W1", 9, 10},  {0, 8, "0I0", 10, 11},
                      {0, 9, "0W0", 11, 12}, {0, 10, "0I1", 12, 13}, {0, 11, "0W1", 13, 14},
                      {1, 0, "1F0", 1, 2},   {1, 1, "1F1", 2, 3},   {1, 2, "3F0", 3, 4},
                      {1, 3, "3F1", 4, 5},   {1, 4, "3I0", 5, 6},   {1, 5, "3W0", 6, 7},
                      {1, 6, "3I1", 7, 8},   {1, 7, "3W1", 8, 9},   {1, 8, "1I0", 9, 10},
                      {1, 9, "1W0", 10, 11}, {1, 10, "1I1", 11, 12}, {1, 11, "1W1", 12, 13}});
  EXPECT_DOUBLE_EQ(r.makespan, 14.0);
  EXPECT_EQ(r.busy, (std::vector<double>{12.0, 12.0}));
  EXPECT_EQ(r.idle, (std::vector<double>{2.0, 2.0}));
  EXPECT_DOUBLE_EQ(r.bubble_fraction, 4.0 / 28.0);
}

// Speed is measured by bench/bench_schedule, not asserted here.
TEST(Simulate, LargeScheduleSatisfiesItsEquations) {
  // P=128, M=1024, v=2 with split backward: 786432 compute actions.
  constexpr int kRanks = 128;
  constexpr int kMicrobatches = 1024;
  const Schedule s = breadth_first(kRanks, kMicrobatches);
  CostModel c = CostModel::uniform();
  c.latency = 0.25;
  const SimulationResult r = simulate(s, c);
  ASSERT_EQ(r.actions.size(), 786432u);

  // Every action starts exactly when its rank is free and its input has arrived.
  auto key = [&](int stage, ActionKind kind, int mb) {
    return (static_cast<std::size_t>(stage) * kMicrobatches + static_cast<std::size_t>(mb)) * 4 +
           static_cast<std::size_t>(kind);
  };
  std::vector<const TimedAction*> by_key(static_cast<std::size_t>(2 * kRanks) * kMicrobatches * 4);
  for (const TimedAction& t : r.actions)
    by_key[key(t.action.stage, t.action.kind, t.action.microbatch)] = &t;
  double makespan = 0.0;
  for (std::size_t i = 0; i < r.actions.size(); ++i) {
    const TimedAction& t = r.actions[i];
    const Action& a = t.action;
    double ready = i > 0 && r.actions[i - 1].rank == t.rank ? r.actions[i - 1].end : 0.0;
    const TimedAction* p = nullptr;
    if (a.kind == ActionKind::kForward && a.stage > 0)
      p = by_key[key(a.stage - 1, ActionKind::kForward, a.microbatch)];
    else if (a.kind == ActionKind::kBackwardInput)
      p = by_key[key(a.stage == 2 * kRanks - 1 ? a.stage : a.stage + 1,
                     a.stage == 2 * kRanks - 1 ? ActionKind::kForward
                                               : ActionKind::kBackwardInput,
                     a.microbatch)];
    else if (a.kind == ActionKind::kBackwardWeight)
      p = by_key[key(a.stage, ActionKind::kBackwardInput, a.microbatch)];
    if (p) ready = std::max(ready, p->end + (p->rank == t.rank ? 0.0 : 0.25));
    ASSERT_EQ(t.start, ready) << to_string(a);
    ASSERT_EQ(t.end, t.start + 1.0) << to_string(a);
    if (i > 0 && r.actions[i - 1].rank == t.rank) ASSERT_LT(r.actions[i - 1].step, t.step);
    makespan = std::max(makespan, t.end);
  }
  EXPECT_EQ(r.makespan, makespan);
  for (double busy : r.busy) EXPECT_EQ(busy, 1024.0 * 2 * 3);
}

// ---- memory ---------------------------------------------------------------------------------

TEST(AnalyzeMemory, GPipeHoldsEveryMicrobatch) {
  const Schedule s = make("gpipe", 2, 1, 3, {"0F0 0F1 0F2 0B0 0B1 0B2", "1F0 1F1 1F2 1B0 1B1 1B2"});
  const MemoryProfile m = analyze_memory(s);
  EXPECT_EQ(m.peak_activations, (std::vector<int>{3, 3}));
  EXPECT_EQ(m.peak_pending_w, (std::vector<int>{0, 0}));
  EXPECT_EQ(m.peak_held, (std::vector<int>{3, 3}));
}

TEST(AnalyzeMemory, OneFOneBBoundsActivations) {
  const Schedule s =
      make("1f1b", 2, 1, 3, {"0F0 0F1 0B0 0F2 0B1 0B2", "1F0 1B0 1F1 1B1 1F2 1B2"});
  const MemoryProfile m = analyze_memory(s);
  EXPECT_EQ(m.peak_activations, (std::vector<int>{2, 1}));
  EXPECT_EQ(m.peak_held, (std::vector<int>{2, 1}));
}

TEST(AnalyzeMemory, SplitBackwardCountsPendingWeightGradients) {
  // activations 1 2 1 2 1 1 0 0 0; pending_w 0 0 1 1 2 1 2 1 0; held 1 2 2 3 3 2 2 1 0.
  const Schedule s = make("zb", 1, 1, 3, {"0F0 0F1 0I0 0F2 0I1 0W0 0I2 0W1 0W2"});
  const MemoryProfile m = analyze_memory(s);
  EXPECT_EQ(m.peak_activations, (std::vector<int>{2}));
  EXPECT_EQ(m.peak_pending_w, (std::vector<int>{2}));
  EXPECT_EQ(m.peak_held, (std::vector<int>{3}));
}

TEST(AnalyzeMemory, LoweredScheduleIgnoresCommunication) {
  const Schedule s = make("l", 2, 2, 1,
                          {"0F0 0SEND_F0 2RECV_F0 2F0 2B0 2SEND_B0 0RECV_B0 0B0",
                           "1RECV_F0 1F0 1SEND_F0 3F0 3B0 1B0 1SEND_B0"});
  const MemoryProfile m = analyze_memory(s);
  EXPECT_EQ(m.peak_activations, (std::vector<int>{2, 2}));
  EXPECT_EQ(m.peak_held, (std::vector<int>{2, 2}));
}

TEST(AnalyzeMemory, RejectsBackwardBeforeItsForward) {
  const Schedule s = make("bad", 1, 1, 2, {"0F0 0W0 0I0 0B1 0F1"});
  ValidationReport report;
  report.violations = {
      {Violation::Rule::kDependency, 0, 1, "0W0 at rank 0 step 1 comes before 0I0 on that rank"},
      {Violation::Rule::kDependency, 0, 3, "0B1 at rank 0 step 3 comes before 0F1 on that rank"}};
  EXPECT_EQ(error_of([&] { analyze_memory(s); }),
            "[analyze_memory] schedule 'bad' has 2 actions out of order or out of range:\n" +
                report.format(s));
  EXPECT_THROW(analyze_memory(s), ScheduleError);
}


TEST(SimulateOverlap, SlotStartsWhenBothInputsAreReadyAndTakesTheLongerPlusOverhead) {
  Schedule s("pair", 2, 1, 2);
  for (const char* a : {"0F0", "0F1", "0B0", "0B1"}) s.append(0, parse_action(a));
  s.append(1, parse_action("1F0"));
  s.append_overlapped(1, parse_action("1F1"), parse_action("1B0"));
  s.append(1, parse_action("1B1"));
  CostModel costs = CostModel::uniform();  // F 1, B 2
  SimulationResult r = simulate(s, costs);
  // 1F1 waits for 0F1 (ends 2), 1B0 for 1F0 (ends 2): the slot runs 2..4 = max(1, 2).
  ASSERT_EQ(r.actions.size(), 8u);
  EXPECT_EQ(r.actions[6].action, parse_action("1B0"));
  EXPECT_DOUBLE_EQ(r.actions[5].start, 2.0);
  EXPECT_DOUBLE_EQ(r.actions[6].start, 2.0);
  EXPECT_DOUBLE_EQ(r.actions[6].end, 4.0);
  EXPECT_DOUBLE_EQ(r.makespan, 8.0);
  EXPECT_DOUBLE_EQ(r.busy[1], 1.0 + 2.0 + 2.0);
  costs.overlap_overhead = 0.5;
  EXPECT_DOUBLE_EQ(simulate(s, costs).makespan, 8.5);
  EXPECT_DOUBLE_EQ(simulate(expand_overlap(s), costs).makespan, 9.0);
  costs.overlap_overhead = -1.0;
  EXPECT_EQ(error_of([&] { simulate(s, costs); }),
            "[simulate] costs.overlap_overhead=-1 must be finite and >= 0");
  // A mark whose slots were edited into something else is refused.
  costs.overlap_overhead = 0.0;
  s.rank_slots(1)[2] = parse_action("1W0");
  EXPECT_THROW(simulate(s, costs), ScheduleError);
}

}  // namespace
}  // namespace pipetrain
