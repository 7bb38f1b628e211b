#include "pipetrain/schedule/search.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <exception>
#include <new>
#include <numeric>
#include <string>
#include <vector>

#include "list_rank.h"
#include "pipetrain/error.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain {

namespace {

constexpr std::int64_t kMaxInFlight = std::int64_t{1} << 23;
constexpr int kMaxStagesPerRankKnob = 64;
constexpr int kMaxMemoryKnobs = 4;

void check_bytes(const char* function, const char* what, std::int64_t bytes) {
  PIPETRAIN_CHECK_ARG(bytes >= 0 && bytes <= SearchOptions::kMaxBytes, function, what, "=",
                      bytes, " must be in [0, ", SearchOptions::kMaxBytes,
                      "] (SearchOptions::kMaxBytes)");
}

void check_per_stage(const char* function, const char* what, const std::vector<double>& values,
                     int num_ranks) {
  PIPETRAIN_CHECK_ARG(values.empty() || values.size() == static_cast<std::size_t>(num_ranks),
                      function, "costs.", what, " has ", values.size(),
                      " entries; expected 0 or num_ranks=", num_ranks,
                      " (one per rank's share of the model)");
}

void check_share_costs(const char* function, const CostModel& costs, int num_ranks) {
  costs.check(function);
  check_per_stage(function, "forward_per_stage", costs.forward_per_stage, num_ranks);
  check_per_stage(function, "backward_per_stage", costs.backward_per_stage, num_ranks);
  check_per_stage(function, "backward_input_per_stage", costs.backward_input_per_stage,
                  num_ranks);
  check_per_stage(function, "backward_weight_per_stage", costs.backward_weight_per_stage,
                  num_ranks);
}

std::vector<double> per_stage(const std::vector<double>& per_rank, const Schedule& schedule,
                              double share) {
  if (per_rank.empty()) return {};
  std::vector<double> out(static_cast<std::size_t>(schedule.num_stages()));
  for (int s = 0; s < schedule.num_stages(); ++s)
    out[static_cast<std::size_t>(s)] =
        per_rank[static_cast<std::size_t>(schedule.rank_of_stage(s))] * share;
  return out;
}

// A candidate to try: a name, its knob v, and for the cost-aware ones the memory knob.
struct Candidate {
  std::string name;
  int knob = 1;
  bool cost_aware = false;
  std::int64_t knob_cap = 0;  // bytes per rank, 0 for none
  bool squeezed = false;
};

// The families whose squeezed version the search tries: V-Half and V-Min, whose fixed block
// leaves idle steps in the warm-up and cool-down (docs/schedules.md, "Against the zero-bubble
// repository"). Squeezing ZB-V, named or cost-aware, gained nothing at P in {4, 8, 16},
// M in {2P, 4P} under the four cost sets of that section.
bool squeezable(const std::string& name) { return name == "v-half" || name == "v-min"; }

// The per-stage ZeroBubbleCosts of a cost-aware candidate: stage costs of the shape, and the
// bytes of one share with the cap scaled by v (a stage keeps 1/v of a share's bytes, so
// peak_stage_bytes / v <= cap exactly when peak_stage_bytes <= cap * v).
ZeroBubbleCosts zero_bubble_costs(const Schedule& shape, const CostModel& costs,
                                  std::int64_t activation_bytes, std::int64_t pending_w_bytes,
                                  std::int64_t cap) {
  ZeroBubbleCosts zc;
  zc.costs = stage_costs(costs, shape);
  zc.activation_bytes = activation_bytes;
  zc.pending_w_bytes = pending_w_bytes;
  const std::int64_t v = shape.stages_per_rank();
  zc.memory_cap_bytes = cap > std::numeric_limits<std::int64_t>::max() / v ? 0 : cap * v;
  return zc;
}

Schedule build_unsqueezed(const Candidate& c, int num_ranks, int num_microbatches,
                          const CostModel& costs, std::int64_t activation_bytes,
                          std::int64_t pending_w_bytes, std::int64_t cap) {
  if (!c.cost_aware) return make_schedule(c.name, num_ranks, num_microbatches, c.knob);
  const bool v_shape = c.name != "zb-h1" && c.name != "zb-h2";
  const Schedule shape(c.name, num_ranks, v_shape ? 2 : 1, num_microbatches,
                       v_shape ? Placement::kV : Placement::kLoop);
  std::int64_t limit = cap;
  if (c.knob_cap > 0) limit = cap == 0 ? c.knob_cap : std::min(cap, c.knob_cap);
  return make_cost_aware_schedule(
      c.name, num_ranks, num_microbatches,
      zero_bubble_costs(shape, costs, activation_bytes, pending_w_bytes, limit));
}

bool is_overlapped(const std::string& name) {
  const auto& names = overlapped_schedule_names();
  return std::find(names.begin(), names.end(), name) != names.end();
}

Schedule build(const Candidate& c, int num_ranks, int num_microbatches, const CostModel& costs,
               std::int64_t activation_bytes, std::int64_t pending_w_bytes, std::int64_t cap) {
  Schedule schedule = build_unsqueezed(c, num_ranks, num_microbatches, costs, activation_bytes,
                                       pending_w_bytes, cap);
  if (!c.squeezed) return schedule;
  // The share's bytes weigh a stage's F and W as peak_memory_bytes() does (the 1/v is common).
  return squeeze(schedule, stage_costs(costs, schedule),
                 SqueezeOptions{activation_bytes, pending_w_bytes, 0});
}

// Ranking classes: feasible, built but over the cap, rejected.
int rank_class(const SearchResult& r) { return r.feasible ? 0 : (r.built ? 1 : 2); }

SearchResult evaluate(const Candidate& c, int num_ranks, int num_microbatches,
                      const CostModel& costs, std::int64_t activation_bytes,
                      std::int64_t pending_w_bytes, std::int64_t cap) {
  const auto base = [&] {
    SearchResult r;
    r.name = c.name;
    r.stages_per_rank = c.knob;
    r.stages_per_rank_effective = c.knob;
    r.cost_aware = c.cost_aware;
    r.knob_cap_bytes = c.knob_cap;
    r.overlapped = is_overlapped(c.name);
    if (r.overlapped) r.knobs = "overlapped";
    if (takes_stages_per_rank(c.name)) r.knobs = "v=" + std::to_string(c.knob);
    if (c.cost_aware) r.knobs = "costs";
    if (c.knob_cap > 0)
      r.knobs += ", cap " + std::to_string(c.knob_cap / std::max<std::int64_t>(activation_bytes, 1)) +
                 " shares";
    r.squeezed = c.squeezed;
    if (c.squeezed) r.knobs += r.knobs.empty() ? "squeezed" : ", squeezed";
    return r;
  };
  SearchResult r = base();
  try {
    const Schedule schedule =
        build(c, num_ranks, num_microbatches, costs, activation_bytes, pending_w_bytes, cap);
    r.stages_per_rank_effective = schedule.stages_per_rank();
    // A runtime runs an overlapped schedule expanded: that is what must lower and validate;
    // the time is the overlapped slots' (simulate() needs no communication actions).
    const Schedule lowered = lower(expand_overlap(schedule));
    validate_or_throw(lowered);
    const SimulationResult sim =
        simulate(schedule.has_overlap() ? schedule : lowered, stage_costs(costs, schedule));
    r.peak_bytes_per_rank = peak_memory_bytes(schedule, activation_bytes, pending_w_bytes);
    r.makespan = sim.makespan;
    r.bubble_fraction = sim.bubble_fraction;
    const auto peak = std::max_element(r.peak_bytes_per_rank.begin(), r.peak_bytes_per_rank.end());
    r.peak_bytes = *peak;
    r.peak_rank = static_cast<int>(peak - r.peak_bytes_per_rank.begin());
    r.built = true;
    r.feasible = cap == 0 || r.peak_bytes <= cap;
    if (!r.feasible)
      r.reason = "peak " + std::to_string(r.peak_bytes) + " bytes on rank " +
                 std::to_string(r.peak_rank) + " > memory cap " + std::to_string(cap) + " bytes";
  } catch (const std::bad_alloc&) {
    r = base();
    r.reason = "out of memory (std::bad_alloc) while building or simulating the schedule";
  } catch (const std::exception& e) {
    r = base();
    r.reason = e.what();
  }
  return r;
}

}  // namespace

CostModel stage_costs(const CostModel& share_costs, const Schedule& schedule) {
  check_share_costs("stage_costs", share_costs, schedule.num_ranks());
  const double share = 1.0 / schedule.stages_per_rank();
  CostModel out = share_costs;
  out.forward *= share;
  out.backward *= share;
  out.backward_input *= share;
  out.backward_weight *= share;
  out.forward_per_stage = per_stage(share_costs.forward_per_stage, schedule, share);
  out.backward_per_stage = per_stage(share_costs.backward_per_stage, schedule, share);
  out.backward_input_per_stage = per_stage(share_costs.backward_input_per_stage, schedule, share);
  out.backward_weight_per_stage =
      per_stage(share_costs.backward_weight_per_stage, schedule, share);
  return out;
}

std::vector<std::int64_t> peak_memory_bytes(const Schedule& schedule,
                                            std::int64_t activation_bytes,
                                            std::int64_t pending_w_bytes) {
  check_bytes("peak_memory_bytes", "activation_bytes", activation_bytes);
  check_bytes("peak_memory_bytes", "pending_w_bytes", pending_w_bytes);
  // analyze_memory() rejects a schedule whose backward comes before its forward (or W before I)
  // on a rank, so the counts below never go negative.
  (void)analyze_memory(schedule);
  const std::int64_t v = schedule.stages_per_rank();
  std::vector<std::int64_t> peaks(static_cast<std::size_t>(schedule.num_ranks()), 0);
  for (int rank = 0; rank < schedule.num_ranks(); ++rank) {
    std::int64_t peak = 0;
    detail::for_each_in_flight(schedule.rank_slots(rank), [&](std::int64_t a, std::int64_t w) {
      PIPETRAIN_CHECK_ARG(a + w <= kMaxInFlight, "peak_memory_bytes", "rank ", rank, " holds ",
                          a + w, " stage-microbatches at once; at most ", kMaxInFlight,
                          " are counted");
      peak = std::max(peak, activation_bytes * a + pending_w_bytes * w);
    });
    peaks[static_cast<std::size_t>(rank)] = (peak + v - 1) / v;
  }
  return peaks;
}

std::vector<SearchResult> search_schedules(int num_ranks, int num_microbatches,
                                           const CostModel& costs,
                                           const SearchOptions& options) {
  constexpr const char* kFunction = "search_schedules";
  check_schedule_size(kFunction, num_ranks, 1, num_microbatches);
  check_share_costs(kFunction, costs, num_ranks);
  check_bytes(kFunction, "activation_bytes", options.activation_bytes);
  if (options.pending_w_bytes) check_bytes(kFunction, "pending_w_bytes", *options.pending_w_bytes);
  PIPETRAIN_CHECK_ARG(std::isfinite(options.pending_w_fraction) &&
                          options.pending_w_fraction >= 0.0 && options.pending_w_fraction <= 1.0,
                      kFunction, "pending_w_fraction=", options.pending_w_fraction,
                      " must be in [0, 1]");
  PIPETRAIN_CHECK_ARG(options.memory_cap_bytes >= 0, kFunction,
                      "memory_cap_bytes=", options.memory_cap_bytes, " must be >= 0 (0: no cap)");
  PIPETRAIN_CHECK_ARG(!options.stages_per_rank.empty(), kFunction,
                      "stages_per_rank is empty; expected at least one v in [1, ",
                      kMaxStagesPerRankKnob, "]");
  for (int v : options.stages_per_rank)
    PIPETRAIN_CHECK_ARG(v >= 1 && v <= kMaxStagesPerRankKnob, kFunction, "stages_per_rank=", v,
                        " must be in [1, ", kMaxStagesPerRankKnob, "]");
  std::vector<int> knobs = options.stages_per_rank;
  std::sort(knobs.begin(), knobs.end());
  knobs.erase(std::unique(knobs.begin(), knobs.end()), knobs.end());

  const std::int64_t pending_w_bytes =
      options.pending_w_bytes
          ? *options.pending_w_bytes
          : std::llround(options.pending_w_fraction * static_cast<double>(options.activation_bytes));

  const std::int64_t cap = options.memory_cap_bytes;
  std::vector<Candidate> candidates;
  for (const std::string& name : schedule_names()) {
    if (takes_stages_per_rank(name)) {
      for (int v : knobs) candidates.push_back({name, v});
      continue;
    }
    candidates.push_back({name, 1});
    if (options.overlapped && name == "dualpipe-v")
      for (const std::string& overlapped : overlapped_schedule_names())
        candidates.push_back({overlapped, 1});
    if (!options.cost_aware || !is_cost_aware(name)) continue;
    const bool squeezed = options.squeeze && squeezable(name);
    if (squeezed) candidates.push_back({name, 1, false, 0, true});
    candidates.push_back({name, 1, true});
    if (squeezed) candidates.push_back({name, 1, true, 0, true});
    if (!options.memory_knobs || options.activation_bytes == 0) continue;
    // Caps of k shares' activations between the families' memories, below the user's cap.
    int low = 0, high = -1;
    if (name == "zb-h2") low = num_ranks, high = 2 * num_ranks - 2;
    if (name == "zb-v") low = (num_ranks + 4) / 3, high = num_ranks - 1;
    // At most kMaxMemoryKnobs values, spread evenly from low to high, so that the search
    // stays fast at large P.
    const int count = std::min(high - low + 1, kMaxMemoryKnobs);
    for (int i = 0; i < count; ++i) {
      const int k = count == 1 ? low : low + (high - low) * i / (count - 1);
      const std::int64_t bytes = options.activation_bytes * k;
      if (cap == 0 || bytes < cap) candidates.push_back({name, 1, true, bytes});
    }
  }
  std::vector<SearchResult> results;
  results.reserve(candidates.size());
  for (const Candidate& c : candidates)
    results.push_back(evaluate(c, num_ranks, num_microbatches, costs, options.activation_bytes,
                               pending_w_bytes, cap));

  // Makespans within a relative 1e-9 are one tie group: sort by makespan, then number the
  // groups along the sorted order (each group anchored at its first member), so that the final
  // comparison below is a strict weak order.
  std::vector<std::size_t> by_time(results.size());
  std::iota(by_time.begin(), by_time.end(), std::size_t{0});
  std::stable_sort(by_time.begin(), by_time.end(), [&](std::size_t x, std::size_t y) {
    return results[x].makespan < results[y].makespan;
  });
  std::vector<std::size_t> group(results.size(), 0);
  std::size_t current = 0;
  double anchor = 0.0;
  for (std::size_t i = 0; i < by_time.size(); ++i) {
    const double t = results[by_time[i]].makespan;
    if (i == 0 || t - anchor > 1e-9 * std::max(std::abs(anchor), std::abs(t))) {
      current = i;
      anchor = t;
    }
    group[by_time[i]] = current;
  }
  std::vector<std::size_t> order(results.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::size_t x, std::size_t y) {
    const SearchResult& a = results[x];
    const SearchResult& b = results[y];
    if (rank_class(a) != rank_class(b)) return rank_class(a) < rank_class(b);
    if (rank_class(a) == 2) return false;  // rejected: presentation order (stable)
    if (group[x] != group[y]) return group[x] < group[y];
    return a.peak_bytes < b.peak_bytes;
  });
  std::vector<SearchResult> ranked;
  ranked.reserve(results.size());
  for (std::size_t i : order) ranked.push_back(std::move(results[i]));
  return ranked;
}

Schedule make_candidate(const SearchResult& candidate, int num_ranks, int num_microbatches,
                        const CostModel& costs, const SearchOptions& options) {
  const std::int64_t pending_w_bytes =
      options.pending_w_bytes
          ? *options.pending_w_bytes
          : std::llround(options.pending_w_fraction * static_cast<double>(options.activation_bytes));
  return build({candidate.name, candidate.stages_per_rank, candidate.cost_aware,
                candidate.knob_cap_bytes, candidate.squeezed},
               num_ranks, num_microbatches, costs, options.activation_bytes, pending_w_bytes,
               options.memory_cap_bytes);
}

}  // namespace pipetrain
