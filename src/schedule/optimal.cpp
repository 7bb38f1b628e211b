// Implementation of pipetrain/schedule/optimal.h: depth-first branch and bound.
#include "pipetrain/schedule/optimal.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "layout.h"
#include "pipetrain/error.h"

namespace pipetrain {
namespace {

constexpr ActionKind kF = ActionKind::kForward;
constexpr ActionKind kI = ActionKind::kBackwardInput;
constexpr ActionKind kW = ActionKind::kBackwardWeight;

class Search {
 public:
  Search(const Schedule& shape, const CostModel& costs, const OptimalOptions& options)
      : shape_(shape),
        options_(options),
        p_(shape.num_ranks()),
        s_(shape.num_stages()),
        m_(shape.num_microbatches()),
        transfer_(costs.transfer_time()) {
    const auto su = static_cast<std::size_t>(s_);
    rank_of_.resize(su);
    for (int s = 0; s < s_; ++s) rank_of_[static_cast<std::size_t>(s)] = shape.rank_of_stage(s);
    for (ActionKind kind : {kF, kI, kW}) {
      auto& d = duration_[index(kind)];
      d.resize(su);
      for (int s = 0; s < s_; ++s) d[static_cast<std::size_t>(s)] = costs.compute_time({s, kind, 0});
    }
    nf_.assign(su, 0);
    ni_.assign(su, 0);
    nw_.assign(su, 0);
    end_f_.assign(su * static_cast<std::size_t>(m_), 0.0);
    end_i_ = end_f_;
    free_.assign(static_cast<std::size_t>(p_), 0.0);
    held_.assign(static_cast<std::size_t>(p_), 0);
    remaining_.assign(static_cast<std::size_t>(p_), 0.0);
    for (int s = 0; s < s_; ++s)
      remaining_[static_cast<std::size_t>(rank_of_[static_cast<std::size_t>(s)])] +=
          m_ * (time(kF, s) + time(kI, s) + time(kW, s));
    // Chains: from the start of F(s, m), the rest of its forward, its whole backward input chain
    // and the last W; from the start of I(s, m), the rest of the I chain and a W.
    tail_f_.assign(su, 0.0);
    tail_i_.assign(su, 0.0);
    std::vector<double> down(su, 0.0);  // I(s) .. I(0) with transfers, then W(0)
    for (int s = 0; s < s_; ++s)
      down[static_cast<std::size_t>(s)] =
          time(kI, s) + (s == 0 ? time(kW, 0) : hop(s, s - 1) + down[static_cast<std::size_t>(s - 1)]);
    for (int s = 0; s < s_; ++s)
      tail_i_[static_cast<std::size_t>(s)] =
          std::max(down[static_cast<std::size_t>(s)], time(kI, s) + time(kW, s));
    double up = down[su - 1];
    for (int s = s_ - 1; s >= 0; --s) {
      up = time(kF, s) + (s == s_ - 1 ? 0.0 : hop(s, s + 1)) + up;
      tail_f_[static_cast<std::size_t>(s)] = up;
    }
    orders_.resize(static_cast<std::size_t>(p_));
    best_ = options.upper_bound;
  }

  OptimalResult run() {
    total_ = 3 * static_cast<std::int64_t>(s_) * m_;
    dfs(0, -1.0, -1, 0.0);
    OptimalResult result;
    result.nodes = nodes_;
    result.proven = nodes_ < options_.max_nodes;
    result.found = found_;
    result.makespan = best_;
    if (found_) result.schedule = detail::lay_out(shape_, best_orders_);
    return result;
  }

 private:
  static std::size_t index(ActionKind kind) { return kind == kF ? 0 : kind == kI ? 1 : 2; }
  double time(ActionKind kind, int s) const {
    return duration_[index(kind)][static_cast<std::size_t>(s)];
  }
  double hop(int from, int to) const {
    return rank_of_[static_cast<std::size_t>(from)] == rank_of_[static_cast<std::size_t>(to)]
               ? 0.0
               : transfer_;
  }
  double& end_f(int s, int mb) {
    return end_f_[static_cast<std::size_t>(s) * static_cast<std::size_t>(m_) +
                  static_cast<std::size_t>(mb)];
  }
  double& end_i(int s, int mb) {
    return end_i_[static_cast<std::size_t>(s) * static_cast<std::size_t>(m_) +
                  static_cast<std::size_t>(mb)];
  }

  struct Move {
    double start;
    int rank;
    int stage;
    ActionKind kind;
  };

  void dfs(std::int64_t placed, double last_start, int last_rank, double makespan) {
    if (nodes_ >= options_.max_nodes) return;
    ++nodes_;
    if (placed == total_) {
      if (makespan < best_) {
        best_ = makespan;
        found_ = true;
        best_orders_ = orders_;
      }
      return;
    }
    std::vector<Move> moves;
    for (int s = 0; s < s_; ++s) {
      const auto su = static_cast<std::size_t>(s);
      const int r = rank_of_[su];
      const double free = free_[static_cast<std::size_t>(r)];
      const auto add = [&](ActionKind kind, double available) {
        const double start = std::max(free, available);
        if (start < last_start || (start == last_start && r <= last_rank)) return;  // canonical
        moves.push_back({start, r, s, kind});
      };
      if (nf_[su] < m_ && (s == 0 || nf_[su - 1] > nf_[su]) &&
          (options_.max_held == 0 || held_[static_cast<std::size_t>(r)] < options_.max_held))
        add(kF, s == 0 ? 0.0 : end_f(s - 1, nf_[su]) + hop(s - 1, s));
      if (ni_[su] < nf_[su]) {
        if (s == s_ - 1)
          add(kI, end_f(s, ni_[su]));
        else if (ni_[su + 1] > ni_[su])
          add(kI, end_i(s + 1, ni_[su]) + hop(s + 1, s));
      }
      if (nw_[su] < ni_[su]) add(kW, end_i(s, nw_[su]));
    }
    std::sort(moves.begin(), moves.end(), [](const Move& a, const Move& b) {
      return a.start != b.start ? a.start < b.start : a.rank < b.rank;
    });
    for (const Move& mv : moves) {
      const auto su = static_cast<std::size_t>(mv.stage);
      const auto ru = static_cast<std::size_t>(mv.rank);
      const double d = time(mv.kind, mv.stage);
      const double end = mv.start + d;
      const double new_makespan = std::max(makespan, end);
      // Apply.
      const double old_free = free_[ru];
      free_[ru] = end;
      remaining_[ru] -= d;
      int mb = 0;
      if (mv.kind == kF) {
        mb = nf_[su]++;
        end_f(mv.stage, mb) = end;
        ++held_[ru];
      } else if (mv.kind == kI) {
        mb = ni_[su]++;
        end_i(mv.stage, mb) = end;
      } else {
        mb = nw_[su]++;
        --held_[ru];
      }
      orders_[ru].push_back({mv.stage, mv.kind, mb});
      if (bound(mv.start, new_makespan) < best_) dfs(placed + 1, mv.start, mv.rank, new_makespan);
      // Undo.
      orders_[ru].pop_back();
      if (mv.kind == kF) {
        --nf_[su];
        --held_[ru];
      } else if (mv.kind == kI) {
        --ni_[su];
      } else {
        --nw_[su];
        ++held_[ru];
      }
      remaining_[ru] += d;
      free_[ru] = old_free;
      if (nodes_ >= options_.max_nodes) return;
    }
  }

  // A lower bound on the makespan of every completion: each future action starts at or after
  // `last_start` (the canonical order), so each rank needs max(free, last_start) + its remaining
  // work, and each stage's next F or I its chain.
  double bound(double last_start, double makespan) const {
    double lb = makespan;
    for (int r = 0; r < p_; ++r) {
      const auto ru = static_cast<std::size_t>(r);
      if (remaining_[ru] > 1e-12) lb = std::max(lb, std::max(free_[ru], last_start) + remaining_[ru]);
    }
    for (int s = 0; s < s_; ++s) {
      const auto su = static_cast<std::size_t>(s);
      if (nf_[su] < m_)
        lb = std::max(lb, last_start + tail_f_[su]);
      else if (ni_[su] < m_)
        lb = std::max(lb, last_start + tail_i_[su]);
    }
    return lb;
  }

  const Schedule& shape_;
  OptimalOptions options_;
  int p_, s_, m_;
  double transfer_;
  std::vector<int> rank_of_;
  std::vector<double> duration_[3];
  std::vector<int> nf_, ni_, nw_;
  std::vector<double> end_f_, end_i_;
  std::vector<double> free_;
  std::vector<int> held_;
  std::vector<double> remaining_;
  std::vector<double> tail_f_, tail_i_;
  std::vector<std::vector<Action>> orders_, best_orders_;
  std::int64_t total_ = 0;
  std::int64_t nodes_ = 0;
  double best_;
  bool found_ = false;
};

}  // namespace

OptimalResult optimal_schedule(int num_ranks, int num_microbatches, const CostModel& costs,
                               const OptimalOptions& options) {
  constexpr const char* kFunction = "optimal_schedule";
  PIPETRAIN_CHECK_ARG(num_ranks >= 1 && num_ranks <= 4, kFunction, "num_ranks=", num_ranks,
                      " must be in [1, 4] (the search is exponential)");
  PIPETRAIN_CHECK_ARG(num_microbatches >= 1 && num_microbatches <= 6, kFunction,
                      "num_microbatches=", num_microbatches,
                      " must be in [1, 6] (the search is exponential)");
  const bool v_shape = options.placement == Placement::kV;
  PIPETRAIN_CHECK_ARG(options.max_held >= 0 && !(v_shape && options.max_held == 1), kFunction,
                      "max_held=", options.max_held,
                      " must be 0 (no limit) or >= 1 (>= 2 for V placement)");
  costs.check(kFunction);
  const Schedule shape("optimal", num_ranks, v_shape ? 2 : 1, num_microbatches,
                       options.placement);
  for (int s = 0; s < shape.num_stages(); ++s)
    for (ActionKind kind : {kF, kI, kW})
      PIPETRAIN_CHECK_ARG(costs.compute_time({s, kind, 0}) > 0.0, kFunction, "the time of ",
                          to_string(Action{s, kind, 0}), " must be > 0");
  return Search(shape, costs, options).run();
}

}  // namespace pipetrain
