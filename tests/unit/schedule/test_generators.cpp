// Structural checks of every generator over a table of sizes, with a checker of its own (not
// validate()): placement, completeness and the order within each rank; and every rejection.
#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {
namespace {

std::string spec(const std::string& name, int p, int m, int v) {
  return name + " P=" + std::to_string(p) + " M=" + std::to_string(m) + " v=" + std::to_string(v);
}

// The message make_schedule(name, p, m, v) must throw, or "" when the spec must build.
std::string expected_rejection(const std::string& name, int p, int m, int v) {
  if (name == "interleaved-1f1b" && v > 1 && m < p)
    return "[interleaved_1f1b] num_microbatches=" + std::to_string(m) +
           " must be >= num_ranks=" + std::to_string(p);
  if (name == "dualpipe-v" && m < 2 * p)
    return "[dualpipe_v] num_microbatches=" + std::to_string(m) +
           " must be >= 2*num_ranks=" + std::to_string(2 * p);
  return "";
}

enum class Backward { kFull, kSplit, kMixed };

Backward backward_kind(const std::string& name) {
  if (name.rfind("zb-", 0) == 0 || name.rfind("v-", 0) == 0) return Backward::kSplit;
  if (name == "dualpipe-v") return Backward::kMixed;
  return Backward::kFull;
}

void check_structure(const Schedule& s, Backward backward) {
  const int p = s.num_ranks(), m = s.num_microbatches();
  // (stage, microbatch) -> count per kind
  std::map<std::tuple<int, int, ActionKind>, int> count;
  for (int r = 0; r < p; ++r) {
    std::map<std::tuple<int, int, ActionKind>, int> position;
    const std::vector<Action> actions = s.rank_actions(r);
    for (int i = 0; i < static_cast<int>(actions.size()); ++i) {
      const Action& a = actions[static_cast<std::size_t>(i)];
      ASSERT_TRUE(is_compute(a.kind)) << a;
      ASSERT_GE(a.stage, 0) << a;
      ASSERT_LT(a.stage, s.num_stages()) << a;
      ASSERT_GE(a.microbatch, 0) << a;
      ASSERT_LT(a.microbatch, m) << a;
      EXPECT_EQ(s.rank_of_stage(a.stage), r) << a << " on the wrong rank";
      ++count[{a.stage, a.microbatch, a.kind}];
      position[{a.stage, a.microbatch, a.kind}] = i;
    }
    for (const auto& [key, i] : position) {
      const auto [stage, mb, kind] = key;
      if (kind == ActionKind::kBackward || kind == ActionKind::kBackwardInput) {
        auto f = position.find({stage, mb, ActionKind::kForward});
        ASSERT_NE(f, position.end()) << "rank " << r << ": backward of " << stage << "," << mb
                                     << " without its forward";
        EXPECT_LT(f->second, i) << "rank " << r << ": backward before forward " << stage << ","
                                << mb;
      }
      if (kind == ActionKind::kBackwardWeight) {
        auto in = position.find({stage, mb, ActionKind::kBackwardInput});
        ASSERT_NE(in, position.end());
        EXPECT_LT(in->second, i) << "rank " << r << ": W before I " << stage << "," << mb;
      }
    }
  }
  bool any_full = false, any_split = false;
  for (int stage = 0; stage < s.num_stages(); ++stage) {
    for (int mb = 0; mb < m; ++mb) {
      auto n = [&](ActionKind k) {
        auto it = count.find({stage, mb, k});
        return it == count.end() ? 0 : it->second;
      };
      EXPECT_EQ(n(ActionKind::kForward), 1) << "stage " << stage << " mb " << mb;
      const int b = n(ActionKind::kBackward), i = n(ActionKind::kBackwardInput),
                w = n(ActionKind::kBackwardWeight);
      EXPECT_TRUE((b == 1 && i == 0 && w == 0) || (b == 0 && i == 1 && w == 1))
          << "stage " << stage << " mb " << mb << ": B=" << b << " I=" << i << " W=" << w;
      any_full |= b == 1;
      any_split |= i == 1;
    }
  }
  if (!(any_full && any_split)) {
    const std::size_t per_pair = any_split ? 3 : 2;  // F + B, or F + I + W
    EXPECT_EQ(s.num_actions(), static_cast<std::size_t>(s.num_stages() * m) * per_pair);
  }
  switch (backward) {
    case Backward::kFull: EXPECT_FALSE(any_split); break;
    case Backward::kSplit: EXPECT_FALSE(any_full); break;
    case Backward::kMixed: EXPECT_TRUE(any_full && any_split); break;
  }
}

TEST(Generators, StructureOverTable) {
  int built = 0, rejected = 0;
  for (const std::string& name : schedule_names()) {
    const int max_v = takes_stages_per_rank(name) ? 3 : 1;
    for (int p = 1; p <= 8; ++p) {
      for (int m = 1; m <= 4 * p; ++m) {
        for (int v = 1; v <= max_v; ++v) {
          SCOPED_TRACE(spec(name, p, m, v));
          const std::string rejection = expected_rejection(name, p, m, v);
          if (!rejection.empty()) {
            try {
              (void)make_schedule(name, p, m, v);
              ADD_FAILURE() << "expected rejection " << rejection;
            } catch (const InvalidArgument& e) {
              EXPECT_EQ(std::string(e.what()), rejection);
            }
            ++rejected;
            continue;
          }
          const Schedule s = make_schedule(name, p, m, v);
          ++built;
          EXPECT_EQ(s.name(), name);
          EXPECT_EQ(s.num_ranks(), p);
          EXPECT_EQ(s.num_microbatches(), m);
          const bool is_v = name == "zb-v" || name == "dualpipe-v" || name == "v-half" ||
                            name == "v-min";
          EXPECT_EQ(s.stages_per_rank(), is_v ? 2 : v);
          EXPECT_EQ(s.placement(), is_v ? Placement::kV : Placement::kLoop);
          EXPECT_FALSE(s.has_comm());
          check_structure(s, backward_kind(name));
          if (::testing::Test::HasFatalFailure()) return;
        }
      }
    }
  }
  // 10 schedules; P in 1..8, M in 1..4P: sum 4P = 144 specs each, 3x for the two taking v.
  EXPECT_EQ(built + rejected, 144 * 8 + 144 * 3 * 2);
  // interleaved v in {2,3} with M < P: 2 * sum(P-1) = 56; dualpipe-v M < 2P: sum(2P-1) = 64.
  EXPECT_EQ(rejected, 56 + 64);
}

TEST(Generators, OneFOneBWarmupMatchesMegatron) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 1; m <= 3 * p; ++m) {
      const Schedule s = one_f_one_b(p, m);
      for (int r = 0; r < p; ++r) {
        const auto actions = s.rank_actions(r);
        int leading = 0;
        while (leading < static_cast<int>(actions.size()) &&
               actions[static_cast<std::size_t>(leading)].kind == ActionKind::kForward)
          ++leading;
        // min(P-1-r, M) warm-up forwards, then the first forward of the steady state.
        EXPECT_EQ(leading, std::min(p - r, m)) << "P=" << p << " M=" << m << " rank " << r;
        // Then strictly alternating B, F until the forwards run out.
        for (int i = leading; i < static_cast<int>(actions.size()); ++i) {
          const bool steady = i < 2 * m - leading;
          const ActionKind want =
              steady && (i - leading) % 2 == 1 ? ActionKind::kForward : ActionKind::kBackward;
          EXPECT_EQ(actions[static_cast<std::size_t>(i)].kind, want)
              << "P=" << p << " M=" << m << " rank " << r << " index " << i;
        }
      }
    }
  }
}

TEST(Generators, GpipeRunsAllForwardsThenAllBackwardsInMicrobatchOrder) {
  const Schedule s = gpipe(3, 4);
  for (int r = 0; r < 3; ++r) {
    const auto actions = s.rank_actions(r);
    ASSERT_EQ(actions.size(), 8u);
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(actions[static_cast<std::size_t>(i)], (Action{r, ActionKind::kForward, i}));
      EXPECT_EQ(actions[static_cast<std::size_t>(4 + i)], (Action{r, ActionKind::kBackward, i}));
    }
  }
}

TEST(Generators, InterleavedWithOneChunkIsOneFOneB) {
  for (int p = 1; p <= 6; ++p) {
    for (int m = 1; m <= 3 * p; ++m) {
      const Schedule a = interleaved_1f1b(p, m, 1);
      const Schedule b = one_f_one_b(p, m);
      EXPECT_EQ(a.name(), "interleaved-1f1b");
      ASSERT_EQ(a.num_steps(), b.num_steps());
      for (int r = 0; r < p; ++r) EXPECT_EQ(a.rank_slots(r), b.rank_slots(r));
    }
  }
}

TEST(Generators, InterleavedFollowsMegatronGroups) {
  // P=2, M=5, v=2: M/P = 2 groups, {0,1,2} and {3,4}; rank 0's warm-up is 2(P-1) + (v-1)*3 = 5
  // forwards, then F/B pairs; backwards take the chunks of each group in reverse.
  const Schedule s = interleaved_1f1b(2, 5, 2);
  std::vector<std::string> text;
  for (const Action& a : s.rank_actions(0)) text.push_back(to_string(a));
  const std::vector<std::string> expected = {
      "0F0", "0F1", "0F2", "2F0", "2F1",                                      // warm-up
      "2F2", "2B0", "0F3", "2B1", "0F4", "2B2", "2F3", "0B0", "2F4", "0B1",  // steady
      "0B2", "2B3", "2B4", "0B3", "0B4"};                                     // cool-down
  EXPECT_EQ(text, expected);
  // M a multiple of P: groups of P, Megatron's order. P=2, M=4: rank 1 warm-up (v-1)P = 2.
  text.clear();
  for (const Action& a : interleaved_1f1b(2, 4, 2).rank_actions(1)) text.push_back(to_string(a));
  const std::vector<std::string> expected1 = {"1F0", "1F1", "3F0", "3B0", "3F1", "3B1",
                                              "1F2", "1B0", "1F3", "1B1", "3F2", "3B2",
                                              "3F3", "3B3", "1B2", "1B3"};
  EXPECT_EQ(text, expected1);
}

TEST(Generators, LoopedBfsRunsEachLocalStageForAllMicrobatches) {
  const Schedule s = looped_bfs(2, 3, 2);
  std::vector<std::string> text;
  for (const Action& a : s.rank_actions(1)) text.push_back(to_string(a));
  const std::vector<std::string> expected = {"1F0", "1F1", "1F2", "3F0", "3F1", "3F2",
                                             "3B0", "3B1", "3B2", "1B0", "1B1", "1B2"};
  EXPECT_EQ(text, expected);
}

TEST(Generators, DualPipeVFollowsTheEightSteps) {
  // P=2, M=4, rank 1 (last rank): step 1 none; step 2: 2x (F0, F1); step 3 none;
  // step 4: M-2P+r+1 = 2x (F0 B1 F1 B0); step 5 none; step 6: r+1 = 2 iterations, zero-bubble
  // from i = (r+1)/2 = 1 on, starting with chunk 1 (odd rank); step 7 none; step 8: 2 W.
  const Schedule s = dualpipe_v(2, 4);
  std::vector<std::string> text;
  for (const Action& a : s.rank_actions(1)) text.push_back(to_string(a));
  const std::vector<std::string> expected = {
      "1F0", "2F0", "1F1", "2F1",                           // step 2
      "1F2", "2B0", "2F2", "1B0", "1F3", "2B1", "2F3", "1B1",  // step 4
      "2B2", "1B2", "2I3", "1I3",                           // step 6
      "2W3", "1W3"};                                        // step 8
  EXPECT_EQ(text, expected);
  // Rank 0: step 1 has 2*(P-1) = 2 forwards of chunk 0; step 3 splits B of chunk 1 into I, W.
  text.clear();
  for (const Action& a : s.rank_actions(0)) text.push_back(to_string(a));
  const std::vector<std::string> expected0 = {
      "0F0", "0F1",                              // step 1
      "0F2", "3F0",                              // step 2
      "3I0", "3W0", "3F1",                       // step 3
      "0F3", "3B1", "3F2", "0B0",                // step 4 (M-2P+1 = 1 iteration)
      "3B2", "3F3", "0B1",                       // step 5
      "3B3", "0I2",                              // step 6: rank 0 even, zb from B0 of i = 0
      "0W2", "0I3",                              // step 7
      "0W3"};                                    // step 8
  EXPECT_EQ(text, expected0);
}

// The pairs PyTorch's ScheduleDualPipeV writes as OVERLAP_F_B cells in its test artifact
// dualpipev_4rank_10mb.csv (P = 4, M = 10), copied by hand: per rank, the F and B of each cell.
TEST(Generators, DualPipeVOverlapMarksThePairsOfPyTorchsArtifact) {
  const Schedule s = dualpipe_v(4, 10, DualPipeVOptions{.overlap = true});
  EXPECT_EQ(s.name(), "dualpipe-v-overlap");
  const std::vector<std::string> expected = {
      "0F7+7B3 7F4+0B0 0F8+7B4 7F5+0B1 0F9+7B5 7F6+0B2 7F7+0B3 7F8+0B4 7F9+0B5",
      "1F6+6B2 6F4+1B0 1F7+6B3 6F5+1B1 1F8+6B4 6F6+1B2 1F9+6B5 6F7+1B3 6F8+1B4 6F9+1B5",
      "2F5+5B1 5F4+2B0 2F6+5B2 5F5+2B1 2F7+5B3 5F6+2B2 2F8+5B4 5F7+2B3 2F9+5B5 5F8+2B4 5F9+2B5",
      "4F4+3B0 3F5+4B1 4F5+3B1 3F6+4B2 4F6+3B2 3F7+4B3 4F7+3B3 3F8+4B4 4F8+3B4 3F9+4B5 4F9+3B5"};
  for (int r = 0; r < 4; ++r) {
    std::string pairs;
    const auto& slots = s.rank_slots(r);
    for (std::size_t i : s.rank_overlaps(r))
      pairs += (pairs.empty() ? "" : " ") + to_string(*slots[i]) + "+" + to_string(*slots[i + 1]);
    EXPECT_EQ(pairs, expected[static_cast<std::size_t>(r)]) << "rank " << r;
  }
}

// Expanded, the overlapped DualPipeV is the plain one, slot for slot; rank r has
// 2(M-2P+r+1) + P-r-1 pairs, one fewer on the last rank (its first step-4 pair runs apart).
TEST(Generators, DualPipeVOverlapExpandsToThePlainSchedule) {
  for (int p = 1; p <= 8; ++p) {
    for (int m = 2 * p; m <= 4 * p; ++m) {
      SCOPED_TRACE("P=" + std::to_string(p) + " M=" + std::to_string(m));
      const Schedule plain = dualpipe_v(p, m);
      const Schedule overlapped = dualpipe_v(p, m, DualPipeVOptions{.overlap = true});
      EXPECT_EQ(dualpipe_v(p, m, DualPipeVOptions{}), plain);
      const Schedule expanded = expand_overlap(overlapped);
      EXPECT_FALSE(expanded.has_overlap());
      for (int r = 0; r < p; ++r) {
        EXPECT_EQ(expanded.rank_slots(r), plain.rank_slots(r)) << "rank " << r;
        const std::size_t pairs = 2 * (m - 2 * p + r + 1) + p - r - 1 - (r == p - 1 ? 1 : 0);
        EXPECT_EQ(overlapped.rank_overlaps(r).size(), pairs) << "rank " << r;
      }
      EXPECT_TRUE(validate(expanded).ok());
      // Every pair is reported until expanded.
      EXPECT_FALSE(validate(overlapped).ok());
    }
  }
}

TEST(Generators, MakeScheduleByName) {
  EXPECT_EQ(make_schedule("gpipe", 3, 5), gpipe(3, 5));
  EXPECT_EQ(make_schedule("1f1b", 3, 5), one_f_one_b(3, 5));
  EXPECT_EQ(make_schedule("interleaved-1f1b", 3, 5, 2), interleaved_1f1b(3, 5, 2));
  EXPECT_EQ(make_schedule("looped-bfs", 3, 5, 3), looped_bfs(3, 5, 3));
  EXPECT_EQ(make_schedule("zb-h1", 3, 5), zb_h1(3, 5));
  EXPECT_EQ(make_schedule("zb-h2", 3, 5), zb_h2(3, 5));
  EXPECT_EQ(make_schedule("zb-v", 3, 5), zb_v(3, 5));
  EXPECT_EQ(make_schedule("dualpipe-v", 3, 6), dualpipe_v(3, 6));
  EXPECT_EQ(make_schedule("dualpipe-v-overlap", 3, 6),
            dualpipe_v(3, 6, DualPipeVOptions{.overlap = true}));
  EXPECT_EQ(overlapped_schedule_names(), std::vector<std::string>{"dualpipe-v-overlap"});
  EXPECT_FALSE(takes_stages_per_rank("dualpipe-v-overlap"));
  EXPECT_EQ(make_schedule("v-half", 3, 5), v_half(3, 5));
  EXPECT_EQ(make_schedule("v-min", 3, 5), v_min(3, 5));
  const std::vector<std::string> names = {"gpipe",  "1f1b",       "interleaved-1f1b", "looped-bfs",
                                          "zb-h1",  "zb-h2",      "zb-v",             "dualpipe-v",
                                          "v-half", "v-min"};
  EXPECT_EQ(schedule_names(), names);
  for (const auto& name : names)
    EXPECT_EQ(takes_stages_per_rank(name), name == "interleaved-1f1b" || name == "looped-bfs");
  EXPECT_FALSE(takes_stages_per_rank("foo"));
}

void expect_invalid(const std::function<void()>& call, const std::string& message) {
  try {
    call();
    ADD_FAILURE() << "expected InvalidArgument: " << message;
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(Generators, MakeScheduleRejections) {
  expect_invalid([] { make_schedule("foo", 2, 2); },
                 "[make_schedule] unknown schedule 'foo': expected one of gpipe, 1f1b, "
                 "interleaved-1f1b, looped-bfs, zb-h1, zb-h2, zb-v, dualpipe-v, v-half, v-min, "
                 "dualpipe-v-overlap");
  expect_invalid([] { make_schedule("gpipe", 2, 2, 2); },
                 "[make_schedule] stages_per_rank=2 must be 1 for schedule 'gpipe' (only "
                 "interleaved-1f1b and looped-bfs take it)");
  expect_invalid([] { make_schedule("zb-v", 2, 4, 2); },
                 "[make_schedule] stages_per_rank=2 must be 1 for schedule 'zb-v' (only "
                 "interleaved-1f1b and looped-bfs take it)");
  expect_invalid([] { make_schedule("interleaved-1f1b", 2, 2, 0); },
                 "[interleaved_1f1b] stages_per_rank=0 must be >= 1");
}

TEST(Generators, RejectBadSizes) {
  const std::vector<std::pair<std::string, std::function<Schedule(int, int, int)>>> generators = {
      {"gpipe", [](int p, int m, int) { return gpipe(p, m); }},
      {"one_f_one_b", [](int p, int m, int) { return one_f_one_b(p, m); }},
      {"interleaved_1f1b", [](int p, int m, int v) { return interleaved_1f1b(p, m, v); }},
      {"looped_bfs", [](int p, int m, int v) { return looped_bfs(p, m, v); }},
      {"zb_h1", [](int p, int m, int) { return zb_h1(p, m); }},
      {"zb_h2", [](int p, int m, int) { return zb_h2(p, m); }},
      {"zb_v", [](int p, int m, int) { return zb_v(p, m); }},
      {"dualpipe_v", [](int p, int m, int) { return dualpipe_v(p, m); }},
      {"v_half", [](int p, int m, int) { return v_half(p, m); }},
      {"v_min", [](int p, int m, int) { return v_min(p, m); }},
  };
  for (const auto& [function, make] : generators) {
    SCOPED_TRACE(function);
    expect_invalid([&] { make(0, 4, 1); }, "[" + function + "] num_ranks=0 must be >= 1");
    expect_invalid([&] { make(-2, 4, 1); }, "[" + function + "] num_ranks=-2 must be >= 1");
    expect_invalid([&] { make(2, 0, 1); }, "[" + function + "] num_microbatches=0 must be >= 1");
    expect_invalid([&] { make(2, -1, 1); },
                   "[" + function + "] num_microbatches=-1 must be >= 1");
  }
  expect_invalid([] { interleaved_1f1b(2, 4, 0); },
                 "[interleaved_1f1b] stages_per_rank=0 must be >= 1");
  expect_invalid([] { looped_bfs(2, 4, -1); }, "[looped_bfs] stages_per_rank=-1 must be >= 1");
  expect_invalid([] { interleaved_1f1b(4, 3, 2); },
                 "[interleaved_1f1b] num_microbatches=3 must be >= num_ranks=4");
  expect_invalid([] { dualpipe_v(3, 5); },
                 "[dualpipe_v] num_microbatches=5 must be >= 2*num_ranks=6");
}

}  // namespace
}  // namespace pipetrain
