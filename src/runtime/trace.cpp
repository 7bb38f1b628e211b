#include "pipetrain/runtime/trace.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>

#include "pipetrain/error.h"
#include "pipetrain/schedule/io.h"

namespace pipetrain::runtime {

std::vector<std::vector<ActionTiming>> gather_timelines(Transport& transport,
                                                        const Topology& topology,
                                                        const Schedule& schedule,
                                                        const std::vector<ActionTiming>& timeline) {
  const int p = schedule.num_ranks();
  const int me = topology.pp_index(transport.rank());
  std::size_t longest = 0;
  for (int r = 0; r < p; ++r) longest = std::max(longest, schedule.rank_actions(r).size());
  const std::vector<Action> mine = schedule.rank_actions(me);
  PIPETRAIN_CHECK_ARG(timeline.size() == mine.size(), "gather_timelines", "rank ",
                      transport.rank(), " has ", timeline.size(), " timed actions, its schedule ",
                      mine.size());
  Tensor table = Tensor::zeros({p, static_cast<std::int64_t>(longest), 3}, DType::kFloat64);
  double* t = table.data<double>();
  for (std::size_t i = 0; i < mine.size(); ++i) {
    PIPETRAIN_CHECK_ARG(timeline[i].action == mine[i], "gather_timelines", "timed action ", i,
                        " is ", to_string(timeline[i].action), ", the schedule says ",
                        to_string(mine[i]));
    double* row = t + (static_cast<std::size_t>(me) * longest + i) * 3;
    row[0] = timeline[i].start;
    row[1] = timeline[i].end;
    row[2] = timeline[i].wait;
  }
  transport.all_reduce_sum(table, topology.pipeline_group(topology.dp_index(transport.rank())));
  std::vector<std::vector<ActionTiming>> out(p);
  for (int r = 0; r < p; ++r) {
    const std::vector<Action> actions = schedule.rank_actions(r);
    const auto& slots = schedule.rank_slots(r);
    std::size_t slot = 0;
    for (std::size_t i = 0; i < actions.size(); ++i) {
      while (!slots[slot]) ++slot;
      const double* row = t + (static_cast<std::size_t>(r) * longest + i) * 3;
      out[r].push_back(ActionTiming{static_cast<int>(slot), actions[i], row[0], row[1], row[2]});
      ++slot;
    }
  }
  return out;
}

namespace {
void check_timelines(const Schedule& schedule,
                     const std::vector<std::vector<ActionTiming>>& timelines, const char* fn) {
  PIPETRAIN_CHECK_ARG(static_cast<int>(timelines.size()) == schedule.num_ranks(), fn, "got ",
                      timelines.size(), " timelines for ", schedule.num_ranks(), " ranks");
}
}  // namespace

SimulationResult measured_result(const Schedule& schedule,
                                 const std::vector<std::vector<ActionTiming>>& timelines) {
  check_timelines(schedule, timelines, "measured_result");
  SimulationResult r;
  const int p = schedule.num_ranks();
  r.busy.assign(p, 0.0);
  r.idle.assign(p, 0.0);
  for (int rank = 0; rank < p; ++rank) {
    for (const ActionTiming& a : timelines[rank]) {
      if (!is_compute(a.action.kind)) continue;
      r.actions.push_back(TimedAction{rank, a.slot, a.action, a.start, a.end});
      r.busy[rank] += a.end - a.start;
      r.makespan = std::max(r.makespan, a.end);
    }
  }
  double idle = 0;
  for (int rank = 0; rank < p; ++rank) {
    r.idle[rank] = r.makespan - r.busy[rank];
    idle += r.idle[rank];
  }
  r.bubble_fraction = r.makespan > 0 ? idle / (p * r.makespan) : 0.0;
  return r;
}

CostModel measured_costs(const Schedule& schedule,
                         const std::vector<std::vector<ActionTiming>>& timelines) {
  check_timelines(schedule, timelines, "measured_costs");
  const int s = schedule.num_stages();
  // sum and count per (kind, stage) for F, B, I, W.
  std::array<std::vector<double>, 4> sum, count;
  for (int k = 0; k < 4; ++k) {
    sum[k].assign(s, 0.0);
    count[k].assign(s, 0.0);
  }
  for (const auto& tl : timelines) {
    for (const ActionTiming& a : tl) {
      if (!is_compute(a.action.kind)) continue;
      const int k = static_cast<int>(a.action.kind);
      sum[k][a.action.stage] += a.end - a.start;
      count[k][a.action.stage] += 1;
    }
  }
  std::array<std::vector<double>, 4> mean;
  for (int k = 0; k < 4; ++k) {
    double all = 0, n = 0;
    for (int st = 0; st < s; ++st) {
      all += sum[k][st];
      n += count[k][st];
    }
    const double fallback = n > 0 ? all / n : 0.0;
    mean[k].resize(s);
    for (int st = 0; st < s; ++st) {
      mean[k][st] = count[k][st] > 0 ? sum[k][st] / count[k][st] : fallback;
    }
  }
  // A split-backward run measured no B, a merged one no I or W: derive the missing kind so that
  // the costs price every schedule (B = I + W; I and W as the measured B split in proportion
  // 2:1 would be a guess, so a merged run gives I = W = B / 2).
  const bool has_b = count[1].end() != std::find_if(count[1].begin(), count[1].end(),
                                                    [](double n) { return n > 0; });
  const bool has_iw = count[2].end() != std::find_if(count[2].begin(), count[2].end(),
                                                     [](double n) { return n > 0; });
  for (int st = 0; st < s; ++st) {
    if (!has_b && has_iw) mean[1][st] = mean[2][st] + mean[3][st];
    if (has_b && !has_iw) mean[2][st] = mean[3][st] = mean[1][st] / 2;
  }
  CostModel c;
  c.forward_per_stage = mean[0];
  c.backward_per_stage = mean[1];
  c.backward_input_per_stage = mean[2];
  c.backward_weight_per_stage = mean[3];
  return c;
}

TraceReport trace_report(const Schedule& schedule,
                         const std::vector<std::vector<ActionTiming>>& timelines) {
  const SimulationResult measured = measured_result(schedule, timelines);
  const SimulationResult predicted = simulate(schedule, measured_costs(schedule, timelines));
  TraceReport report;
  report.measured_makespan = measured.makespan;
  report.predicted_makespan = predicted.makespan;
  report.measured_bubble = measured.bubble_fraction;
  report.predicted_bubble = predicted.bubble_fraction;

  const int p = schedule.num_ranks();
  nlohmann::json out = nlohmann::json::parse(to_chrome_trace(schedule, measured, 1e6));
  nlohmann::json pred = nlohmann::json::parse(to_chrome_trace(schedule, predicted, 1e6));
  auto rename = [](nlohmann::json& events, int pid_offset, const std::string& prefix) {
    for (auto& e : events) {
      if (e.contains("pid") && e["pid"].is_number_integer()) {
        e["pid"] = e["pid"].get<int>() + pid_offset;
      }
      if (e.value("ph", "") == "M" && e.value("name", "") == "process_name" &&
          e.contains("args") && e["args"].contains("name")) {
        e["args"]["name"] = prefix + e["args"]["name"].get<std::string>();
      }
      if (e.value("ph", "") == "M" && e.value("name", "") == "process_sort_index" &&
          e.contains("args") && e["args"].contains("sort_index")) {
        e["args"]["sort_index"] = e["args"]["sort_index"].get<int>() + pid_offset;
      }
    }
  };
  rename(out["traceEvents"], 0, "measured ");
  rename(pred["traceEvents"], p, "predicted ");
  for (auto& e : pred["traceEvents"]) out["traceEvents"].push_back(e);
  // The measured document's own makespan/bubble keys would be ambiguous beside the prediction.
  out["otherData"].erase("makespan");
  out["otherData"].erase("bubble_fraction");
  out["otherData"]["measured_makespan_s"] = measured.makespan;
  out["otherData"]["predicted_makespan_s"] = predicted.makespan;
  out["otherData"]["measured_bubble_fraction"] = measured.bubble_fraction;
  out["otherData"]["predicted_bubble_fraction"] = predicted.bubble_fraction;
  report.chrome_trace_json = out.dump(1);
  return report;
}

}  // namespace pipetrain::runtime
