#include "pipetrain/schedule/search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/simulate.h"

namespace pipetrain {
namespace {

using pipetrain::testing::error_of;

// The reference, computed without search.cpp: every named schedule (v in {2, 3, 4} where it
// applies), each stage costing 1/v of the share costs, simulated one by one.
struct Reference {
  std::string name;
  int v;  // knob
  double makespan;
  int held_stages;  // max over ranks of analyze_memory().peak_held
  int effective_v;
};

std::vector<Reference> simulate_each(int ranks, int microbatches, double f, double b, double i,
                                     double w) {
  std::vector<Reference> out;
  for (const std::string& name : schedule_names()) {
    const std::vector<int> knobs =
        takes_stages_per_rank(name) ? std::vector<int>{2, 3, 4} : std::vector<int>{1};
    for (int v : knobs) {
      Schedule schedule("x", 1, 1, 1);
      try {
        schedule = make_schedule(name, ranks, microbatches, v);
      } catch (const InvalidArgument&) {
        continue;
      }
      const double k = schedule.stages_per_rank();
      CostModel costs;
      costs.forward = f / k;
      costs.backward = b / k;
      costs.backward_input = i / k;
      costs.backward_weight = w / k;
      const MemoryProfile memory = analyze_memory(schedule);
      out.push_back({name, v, simulate(lower(schedule), costs).makespan,
                     *std::max_element(memory.peak_held.begin(), memory.peak_held.end()),
                     schedule.stages_per_rank()});
    }
  }
  return out;
}

// The named candidate (not a cost-aware one) of `name` and v.
const SearchResult& find(const std::vector<SearchResult>& results, const std::string& name,
                         int v = 1) {
  for (const SearchResult& r : results)
    if (r.name == name && r.stages_per_rank == v && !r.cost_aware && !r.squeezed) return r;
  ADD_FAILURE() << "no candidate " << name << " v=" << v;
  return results.front();
}

void expect_ranked(const std::vector<SearchResult>& results) {
  for (std::size_t k = 1; k < results.size(); ++k) {
    const SearchResult& a = results[k - 1];
    const SearchResult& b = results[k];
    const int ca = a.feasible ? 0 : (a.built ? 1 : 2);
    const int cb = b.feasible ? 0 : (b.built ? 1 : 2);
    ASSERT_LE(ca, cb) << k;
    if (ca == cb && ca < 2) {
      EXPECT_LE(a.makespan, b.makespan * (1 + 1e-9)) << a.name << " before " << b.name;
      if (std::abs(a.makespan - b.makespan) <= 1e-9 * b.makespan)
        EXPECT_LE(a.peak_bytes, b.peak_bytes) << a.name << " before " << b.name;
    }
  }
}

TEST(Search, UniformNoCapWinnerIsTheFastestSimulatedIndividually) {
  for (int ranks : {2, 3, 4, 8}) {
    for (int microbatches : {ranks, 2 * ranks, 4 * ranks}) {
      const std::vector<Reference> reference =
          simulate_each(ranks, microbatches, 1.0, 2.0, 1.0, 1.0);
      ASSERT_FALSE(reference.empty());
      double best = std::numeric_limits<double>::infinity();
      for (const Reference& r : reference) best = std::min(best, r.makespan);

      SearchOptions named;
      named.cost_aware = false;
      const std::vector<SearchResult> results =
          search_schedules(ranks, microbatches, CostModel::uniform(), named);
      ASSERT_FALSE(results.empty());
      EXPECT_TRUE(results.front().feasible);
      EXPECT_DOUBLE_EQ(results.front().makespan, best) << "P=" << ranks << " M=" << microbatches;
      expect_ranked(results);
      // Every candidate the generators accept is there with the makespan simulated here; the
      // others are there, rejected.
      std::size_t built = 0;
      for (const SearchResult& r : results) built += r.built ? 1 : 0;
      EXPECT_EQ(built, reference.size());
      EXPECT_EQ(results.size(), schedule_names().size() + 2 * 2);  // 2 knobbed names, 3 knobs
      for (const Reference& ref : reference) {
        const SearchResult& r = find(results, ref.name, ref.v);
        EXPECT_DOUBLE_EQ(r.makespan, ref.makespan) << ref.name << " v=" << ref.v;
        // Default memory: 1 byte per share, W keeps the same: peak_held / v, rounded up.
        EXPECT_EQ(r.peak_bytes, (ref.held_stages + ref.effective_v - 1) / ref.effective_v)
            << ref.name;
      }
    }
  }
}

TEST(Search, UniformP4M8WinnerIsZbvByMemoryTieBreak) {
  // docs/schedules.md: zb-v and dualpipe-v both take 25.5; zb-v holds 4 shares, dualpipe-v 4.5.
  SearchOptions options;
  options.activation_bytes = 1000;
  options.cost_aware = false;
  const std::vector<SearchResult> results = search_schedules(4, 8, CostModel::uniform(), options);
  EXPECT_EQ(results[0].name, "zb-v");
  EXPECT_EQ(results[1].name, "dualpipe-v");
  EXPECT_DOUBLE_EQ(results[0].makespan, 25.5);
  EXPECT_DOUBLE_EQ(results[1].makespan, 25.5);
  EXPECT_EQ(results[0].peak_bytes, 4000);
  EXPECT_EQ(results[1].peak_bytes, 4500);
  EXPECT_NEAR(results[0].bubble_fraction, 0.05882, 1e-5);
  EXPECT_TRUE(results[0].reason.empty());
  EXPECT_EQ(find(results, "interleaved-1f1b", 2).knobs, "v=2");
  EXPECT_EQ(find(results, "zb-v").knobs, "");
  EXPECT_EQ(find(results, "zb-v").stages_per_rank_effective, 2);
}

TEST(Search, OverlappedDualPipeVIsACandidateOnlyWhenAskedAndCostedWithTheOverhead) {
  // By default (what train_gpt --schedule auto searches) no candidate has overlapped slots.
  for (const SearchResult& r : search_schedules(4, 8, CostModel::uniform())) {
    EXPECT_FALSE(r.overlapped) << r.name;
    EXPECT_NE(r.name, "dualpipe-v-overlap");
  }
  SearchOptions options;
  options.activation_bytes = 1000;
  options.cost_aware = false;
  options.overlapped = true;
  CostModel costs = CostModel::uniform();
  // A share costs F = 1, B = 2; a stage of dualpipe-v half that. Uniform per-stage units give
  // 4M + 3P + (2M - P - 2) h (test_schedule_figures), so in shares: (44 + 10 h') / 2 with h' the
  // overhead in stage units, i.e. 22 + 10 h for an overhead h in the time unit of `costs`.
  for (const double h : {0.0, 0.25, 1.0}) {
    costs.overlap_overhead = h;
    const std::vector<SearchResult> results = search_schedules(4, 8, costs, options);
    expect_ranked(results);
    const auto it = std::find_if(results.begin(), results.end(),
                                 [](const SearchResult& r) { return r.overlapped; });
    ASSERT_NE(it, results.end());
    EXPECT_EQ(it->name, "dualpipe-v-overlap");
    EXPECT_EQ(it->knobs, "overlapped");
    EXPECT_TRUE(it->feasible) << it->reason;
    EXPECT_DOUBLE_EQ(it->makespan, 22.0 + 10.0 * h) << "h=" << h;
    // Memory is the plain DualPipeV's.
    EXPECT_EQ(it->peak_bytes, find(results, "dualpipe-v").peak_bytes);
    // Rebuilt with its marks.
    EXPECT_TRUE(make_candidate(*it, 4, 8, costs, options).has_overlap());
  }
  // Perfect overlap wins at P = 4, M = 8 (22 < 25.5); an overhead of one F loses to zb-v.
  costs.overlap_overhead = 0.0;
  EXPECT_EQ(search_schedules(4, 8, costs, options).front().name, "dualpipe-v-overlap");
  costs.overlap_overhead = 1.0;
  EXPECT_EQ(search_schedules(4, 8, costs, options).front().name, "zb-v");
}

TEST(Search, CapBetweenVMinAndOneFOneB) {
  // P = 8, M = 32, 1 GiB per share: V-Min holds 4 shares, V-Half 5, 1F1B 8 (docs/schedules.md).
  const std::int64_t gib = std::int64_t{1} << 30;
  SearchOptions options;
  options.activation_bytes = gib;
  const std::vector<SearchResult> free_results =
      search_schedules(8, 32, CostModel::uniform(), options);
  const std::int64_t vmin = find(free_results, "v-min").peak_bytes;
  const std::int64_t ofob = find(free_results, "1f1b").peak_bytes;
  EXPECT_EQ(vmin, 4 * gib);
  EXPECT_EQ(ofob, 8 * gib);
  for (std::int64_t cap : {4 * gib, 5 * gib, 6 * gib, 8 * gib - 1}) {
    options.memory_cap_bytes = cap;
    const std::vector<SearchResult> results = search_schedules(8, 32, CostModel::uniform(), options);
    expect_ranked(results);
    double best_feasible = std::numeric_limits<double>::infinity();
    for (const SearchResult& r : results) {
      ASSERT_TRUE(r.built) << r.name << ": " << r.reason;
      EXPECT_EQ(r.feasible, r.peak_bytes <= cap) << r.name;
      if (!r.feasible) {
        EXPECT_GT(r.peak_bytes, cap);
        EXPECT_NE(r.reason.find("> memory cap " + std::to_string(cap) + " bytes"),
                  std::string::npos)
            << r.reason;
      } else {
        best_feasible = std::min(best_feasible, r.makespan);
      }
    }
    EXPECT_FALSE(find(results, "1f1b").feasible);
    EXPECT_TRUE(find(results, "v-min").feasible);
    EXPECT_TRUE(results.front().feasible);
    EXPECT_EQ(results.front().makespan, best_feasible);
  }
  // With 5 GiB: V-Half (106.5) beats V-Min (109.5); with 4 GiB only V-Min is left.
  options.memory_cap_bytes = 5 * gib;
  EXPECT_EQ(search_schedules(8, 32, CostModel::uniform(), options).front().name, "v-half");
  options.memory_cap_bytes = 4 * gib;
  const std::vector<SearchResult> tight = search_schedules(8, 32, CostModel::uniform(), options);
  EXPECT_EQ(tight.front().name, "v-min");
  for (const SearchResult& r : tight)  // of the named schedules only V-Min fits
    if (!r.cost_aware) EXPECT_EQ(r.feasible, r.name == "v-min") << r.name;
  // Below every schedule's peak: nothing feasible, all still ranked by makespan.
  options.memory_cap_bytes = 1;
  const std::vector<SearchResult> none = search_schedules(8, 32, CostModel::uniform(), options);
  for (const SearchResult& r : none) EXPECT_FALSE(r.feasible);
  expect_ranked(none);
}

TEST(Search, CostAwareCandidatesAreNeverWorseAndRebuildExactly) {
  // 1:2:1 at P = 8, M = 32 (docs/schedules.md): under a cap of 5 shares, the squeezed V-Half
  // (145) wins over the cost-aware V-Half (149), the named V-Half (162) and 1F1B (156, over the
  // cap anyway).
  CostModel skewed;
  skewed.forward = 1;
  skewed.backward = 3;
  skewed.backward_input = 2;
  skewed.backward_weight = 1;
  const std::int64_t gib = std::int64_t{1} << 30;
  SearchOptions options;
  options.activation_bytes = gib;
  options.memory_cap_bytes = 5 * gib;
  const std::vector<SearchResult> results = search_schedules(8, 32, skewed, options);
  expect_ranked(results);
  EXPECT_EQ(results.front().name, "v-half");
  EXPECT_EQ(results.front().knobs, "squeezed");
  EXPECT_TRUE(results.front().squeezed);
  EXPECT_FALSE(results.front().cost_aware);
  EXPECT_DOUBLE_EQ(results.front().makespan, 145.0);
  EXPECT_DOUBLE_EQ(find(results, "v-half").makespan, 162.0);
  const auto find_knobs = [&](const std::string& name, const std::string& knobs) {
    for (const SearchResult& r : results)
      if (r.name == name && r.knobs == knobs) return r;
    ADD_FAILURE() << "no candidate " << name << " " << knobs;
    return results.front();
  };
  EXPECT_DOUBLE_EQ(find_knobs("v-half", "costs").makespan, 149.0);
  EXPECT_TRUE(find_knobs("v-half", "costs").cost_aware);
  int squeezed = 0;
  for (const SearchResult& r : results) {
    if (!r.cost_aware && !r.squeezed) continue;
    ASSERT_TRUE(r.built) << r.name << " " << r.knobs << ": " << r.reason;
    const SearchResult& named = find(results, r.name);
    if (named.feasible && r.knob_cap_bytes == 0)  // no slower than the named one when it fits
      EXPECT_LE(r.makespan, named.makespan * (1 + 1e-12)) << r.name << " " << r.knobs;
    if (r.squeezed) {  // no slower and no larger than the candidate it squeezes
      ++squeezed;
      const SearchResult& from = find_knobs(r.name, r.cost_aware ? "costs" : "");
      EXPECT_LE(r.makespan, from.makespan * (1 + 1e-12)) << r.name << " " << r.knobs;
      EXPECT_LE(r.peak_bytes, from.peak_bytes) << r.name << " " << r.knobs;
    }
    if (r.cost_aware)
      EXPECT_TRUE(r.feasible) << r.name << " " << r.knobs;  // planned under the cap
    // make_candidate() gives the schedule the search measured.
    const Schedule s = make_candidate(r, 8, 32, skewed, options);
    EXPECT_DOUBLE_EQ(simulate(s, stage_costs(skewed, s)).makespan, r.makespan) << r.knobs;
    EXPECT_EQ(peak_memory_bytes(s, gib, gib), r.peak_bytes_per_rank);
  }
  EXPECT_EQ(squeezed, 4);  // v-half and v-min, named and cost-aware
  // Without a cap, the memory knobs lie between V-Min's and ZB-V's (4..7 shares) and between
  // ZB-H1's and ZB-H2's (8..14), at most four each, and each fits its own cap.
  options.memory_cap_bytes = 0;
  std::vector<std::string> knobs;
  for (const SearchResult& r : search_schedules(8, 32, skewed, options)) {
    if (r.knob_cap_bytes == 0) continue;
    knobs.push_back(r.name + " " + r.knobs);
    EXPECT_LE(r.peak_bytes, r.knob_cap_bytes) << r.knobs;
  }
  std::sort(knobs.begin(), knobs.end());
  EXPECT_EQ(knobs, (std::vector<std::string>{
                       "zb-h2 costs, cap 10 shares", "zb-h2 costs, cap 12 shares",
                       "zb-h2 costs, cap 14 shares", "zb-h2 costs, cap 8 shares",
                       "zb-v costs, cap 4 shares", "zb-v costs, cap 5 shares",
                       "zb-v costs, cap 6 shares", "zb-v costs, cap 7 shares"}));
  // The search's winner is never slower than the best named schedule.
  for (const CostModel& costs : {CostModel::uniform(), skewed}) {
    SearchOptions named = options;
    named.cost_aware = false;
    EXPECT_LE(search_schedules(8, 32, costs, options).front().makespan,
              search_schedules(8, 32, costs, named).front().makespan);
  }
}

TEST(Search, PendingWBytesChangeThePeaks) {
  // ZB-H1 at P=4, M=8: activations (to I) peak at 4 on rank 0, held (to W) at 4 on every rank;
  // V-Min: activations 4 stages, held 4 stages (docs table, P=4).
  SearchOptions options;
  options.activation_bytes = 100;
  options.pending_w_bytes = 0;
  std::vector<SearchResult> results = search_schedules(4, 8, CostModel::uniform(), options);
  for (const SearchResult& r : results) {
    if (!r.built) continue;
    const Schedule schedule = make_candidate(r, 4, 8, CostModel::uniform(), options);
    const MemoryProfile memory = analyze_memory(schedule);
    for (int rank = 0; rank < 4; ++rank) {
      const std::int64_t expected =
          (100 * memory.peak_activations[static_cast<std::size_t>(rank)] +
           schedule.stages_per_rank() - 1) /
          schedule.stages_per_rank();
      EXPECT_EQ(r.peak_bytes_per_rank[static_cast<std::size_t>(rank)], expected) << r.name;
    }
  }
  // A fraction: W keeps half; the peak lies between the two extremes.
  options.pending_w_bytes.reset();
  options.pending_w_fraction = 0.5;
  results = search_schedules(4, 8, CostModel::uniform(), options);
  const SearchResult& zbh2 = find(results, "zb-h2");
  EXPECT_GE(zbh2.peak_bytes, 100 * 4);
  EXPECT_LE(zbh2.peak_bytes, 100 * 7);
}

TEST(Search, PeakMemoryBytesIsTheWeightedMaximumNotTheSumOfPeaks) {
  // One rank: F0 F1 I0 W0 I1 W1 with a = 2 then 1+1: activations peak 2, pending W peak 1.
  Schedule s("hand", 1, 1, 2);
  s.append(0, Action{0, ActionKind::kForward, 0});
  s.append(0, Action{0, ActionKind::kForward, 1});
  s.append(0, Action{0, ActionKind::kBackwardInput, 0});
  s.append(0, Action{0, ActionKind::kBackwardWeight, 0});
  s.append(0, Action{0, ActionKind::kBackwardInput, 1});
  s.append(0, Action{0, ActionKind::kBackwardWeight, 1});
  EXPECT_EQ(peak_memory_bytes(s, 10, 3), std::vector<std::int64_t>{20});   // 2 activations
  EXPECT_EQ(peak_memory_bytes(s, 10, 30), std::vector<std::int64_t>{40});  // 1 act + 1 W
  EXPECT_EQ(peak_memory_bytes(s, 0, 0), std::vector<std::int64_t>{0});
  EXPECT_EQ(error_of([&] { peak_memory_bytes(s, -1, 0); }),
            "[peak_memory_bytes] activation_bytes=-1 must be in [0, 549755813888] "
            "(SearchOptions::kMaxBytes)");
}

TEST(Search, SplitBackwardCostsChangeTheRankingAsTheSimulatorSays) {
  // F:I:W = 1:2:1 (B = I + W = 3) against uniform, P = 4, M = 16.
  const std::vector<Reference> uniform_ref = simulate_each(4, 16, 1, 2, 1, 1);
  const std::vector<Reference> skewed_ref = simulate_each(4, 16, 1, 3, 2, 1);
  CostModel skewed;
  skewed.forward = 1;
  skewed.backward = 3;
  skewed.backward_input = 2;
  skewed.backward_weight = 1;
  // 12 bytes per share: the peaks divide exactly by v = 1..4, as the reference's held / v.
  SearchOptions options;
  options.activation_bytes = 12;
  options.cost_aware = false;  // the named schedules' ranking
  const std::vector<SearchResult> uniform =
      search_schedules(4, 16, CostModel::uniform(), options);
  const std::vector<SearchResult> split = search_schedules(4, 16, skewed, options);
  expect_ranked(split);
  for (const Reference& ref : skewed_ref)
    EXPECT_DOUBLE_EQ(find(split, ref.name, ref.v).makespan, ref.makespan) << ref.name;
  // The order of the built candidates follows the simulated makespans (then memory): compare
  // the whole ranking with one computed from the reference.
  auto order_of = [](std::vector<Reference> refs) {
    std::stable_sort(refs.begin(), refs.end(), [](const Reference& a, const Reference& b) {
      const double sa = static_cast<double>(a.held_stages) / a.effective_v;
      const double sb = static_cast<double>(b.held_stages) / b.effective_v;
      if (std::abs(a.makespan - b.makespan) > 1e-9 * std::max(a.makespan, b.makespan))
        return a.makespan < b.makespan;
      return sa < sb;
    });
    std::vector<std::string> names;
    for (const Reference& r : refs) names.push_back(r.name + "/" + std::to_string(r.v));
    return names;
  };
  auto order_found = [](const std::vector<SearchResult>& results) {
    std::vector<std::string> names;
    for (const SearchResult& r : results)
      if (r.built) names.push_back(r.name + "/" + std::to_string(r.stages_per_rank));
    return names;
  };
  EXPECT_EQ(order_found(uniform), order_of(uniform_ref));
  EXPECT_EQ(order_found(split), order_of(skewed_ref));
  EXPECT_NE(order_found(uniform), order_found(split));
  // What changes (docs/schedules.md): V-Min's fixed unit-cost block loses its steady state
  // when I = 2W, so it falls behind 1F1B, which it beats under uniform costs at this size.
  auto position = [](const std::vector<SearchResult>& results, const std::string& name) {
    for (std::size_t k = 0; k < results.size(); ++k)
      if (results[k].name == name) return k;
    return results.size();
  };
  EXPECT_LT(find(uniform, "v-min").makespan, find(uniform, "1f1b").makespan);
  EXPECT_GT(find(split, "v-min").makespan, find(split, "1f1b").makespan);
  EXPECT_LT(position(uniform, "v-min"), position(uniform, "1f1b"));
  EXPECT_GT(position(split, "v-min"), position(split, "1f1b"));
}

TEST(Search, RejectionsAreReasonsNotErrors) {
  // P = 4, M = 3: interleaved needs M >= P, dualpipe-v needs M >= 2P; the rest are built.
  const std::vector<SearchResult> results = search_schedules(4, 3, CostModel::uniform());
  const SearchResult& dualpipe = find(results, "dualpipe-v");
  EXPECT_FALSE(dualpipe.built);
  EXPECT_FALSE(dualpipe.feasible);
  EXPECT_EQ(dualpipe.reason, "[dualpipe_v] num_microbatches=3 must be >= 2*num_ranks=8");
  for (int v : {2, 3, 4}) {
    const SearchResult& interleaved = find(results, "interleaved-1f1b", v);
    EXPECT_FALSE(interleaved.built);
    EXPECT_EQ(interleaved.reason, "[interleaved_1f1b] num_microbatches=3 must be >= num_ranks=4");
  }
  EXPECT_TRUE(find(results, "looped-bfs", 4).built);
  EXPECT_TRUE(results.front().feasible);
  // Rejected candidates come last.
  EXPECT_FALSE(results.back().built);
  expect_ranked(results);

  // A v beyond ScheduleLimits (P * v > 4096 stages) is that candidate's reason too.
  SearchOptions options;
  options.stages_per_rank = {2, 8, 2};
  options.cost_aware = false;
  const std::vector<SearchResult> big = search_schedules(520, 8, CostModel::uniform(), options);
  EXPECT_EQ(big.size(), schedule_names().size() + 2);  // duplicates tried once
  const SearchResult& looped8 = find(big, "looped-bfs", 8);
  EXPECT_FALSE(looped8.built);
  EXPECT_NE(looped8.reason.find("ScheduleLimits"), std::string::npos) << looped8.reason;
}

TEST(Search, BadInputsAreRefused) {
  const CostModel uniform = CostModel::uniform();
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(0, 8, uniform); }),
            "[search_schedules] num_ranks=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 0, uniform); }),
            "[search_schedules] num_microbatches=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(5000, 8, uniform); }),
            "[search_schedules] num_ranks=5000 must be <= 1024 (ScheduleLimits::kMaxRanks)");
  CostModel negative = uniform;
  negative.backward_input = -1;
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, negative); }),
            "[search_schedules] costs.backward_input=-1 must be finite and >= 0");
  CostModel wrong_size = uniform;
  wrong_size.forward_per_stage = {1, 1, 1};
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, wrong_size); }),
            "[search_schedules] costs.forward_per_stage has 3 entries; expected 0 or "
            "num_ranks=4 (one per rank's share of the model)");
  SearchOptions options;
  options.activation_bytes = -5;
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, uniform, options); }),
            "[search_schedules] activation_bytes=-5 must be in [0, 549755813888] "
            "(SearchOptions::kMaxBytes)");
  options = {};
  options.pending_w_fraction = 1.5;
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, uniform, options); }),
            "[search_schedules] pending_w_fraction=1.5 must be in [0, 1]");
  options = {};
  options.memory_cap_bytes = -1;
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, uniform, options); }),
            "[search_schedules] memory_cap_bytes=-1 must be >= 0 (0: no cap)");
  options = {};
  options.stages_per_rank = {};
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, uniform, options); }),
            "[search_schedules] stages_per_rank is empty; expected at least one v in [1, 64]");
  options.stages_per_rank = {2, 0};
  EXPECT_EQ(error_of<InvalidArgument>([&] { search_schedules(4, 8, uniform, options); }),
            "[search_schedules] stages_per_rank=0 must be in [1, 64]");
}

TEST(Search, PerRankCostsBecomePerStageCosts) {
  CostModel share;
  share.forward_per_stage = {1, 2};
  share.backward_per_stage = {2, 4};
  const Schedule zbv = zb_v(2, 4);  // rank 0: stages 0, 3; rank 1: stages 1, 2
  const CostModel stage = stage_costs(share, zbv);
  EXPECT_EQ(stage.forward_per_stage, (std::vector<double>{0.5, 1, 1, 0.5}));
  EXPECT_EQ(stage.backward_per_stage, (std::vector<double>{1, 2, 2, 1}));
  EXPECT_TRUE(stage.backward_input_per_stage.empty());
  EXPECT_DOUBLE_EQ(stage.backward_input, 0.5);
  // A search with per-rank costs runs (rank 1 twice as slow: its share dominates).
  const std::vector<SearchResult> results = search_schedules(2, 4, share);
  EXPECT_TRUE(results.front().feasible);
}

}  // namespace
}  // namespace pipetrain
