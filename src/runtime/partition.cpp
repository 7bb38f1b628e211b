#include "pipetrain/runtime/partition.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "pipetrain/error.h"

namespace pipetrain::runtime {

std::string Partition::to_string() const {
  std::ostringstream out;
  for (int s = 0; s < num_stages(); ++s) {
    if (s > 0) out << ' ';
    out << '[' << bounds[s] << ", " << bounds[s + 1] << ')';
  }
  return out.str();
}

namespace {

void check_costs(std::span<const double> costs, const char* function) {
  for (std::size_t i = 0; i < costs.size(); ++i) {
    PIPETRAIN_CHECK_ARG(std::isfinite(costs[i]) && costs[i] >= 0.0, function, "layer_costs[", i,
                        "]=", costs[i], " must be finite and >= 0");
  }
}

Partition finish(std::span<const double> costs, std::vector<int> bounds) {
  Partition p;
  p.bounds = std::move(bounds);
  for (int s = 0; s + 1 < static_cast<int>(p.bounds.size()); ++s) {
    double sum = 0.0;
    for (int l = p.bounds[s]; l < p.bounds[s + 1]; ++l) sum += costs[l];
    p.stage_costs.push_back(sum);
  }
  p.max_cost =
      p.stage_costs.empty() ? 0.0 : *std::max_element(p.stage_costs.begin(), p.stage_costs.end());
  return p;
}

}  // namespace

Partition partition_layers(std::span<const double> layer_costs, int num_stages) {
  PIPETRAIN_CHECK_ARG(num_stages >= 1, "partition_layers", "num_stages=", num_stages,
                      " must be >= 1");
  const int n = static_cast<int>(layer_costs.size());
  PIPETRAIN_CHECK_ARG(n >= num_stages, "partition_layers", n,
                      " layers cannot fill num_stages=", num_stages,
                      ": each stage needs at least one layer");
  check_costs(layer_costs, "partition_layers");

  std::vector<double> prefix(n + 1, 0.0);
  for (int i = 0; i < n; ++i) prefix[i + 1] = prefix[i] + layer_costs[i];
  const auto range = [&](int a, int b) { return prefix[b] - prefix[a]; };

  // best[s][i]: smallest max cost of cutting the first i layers into s stages.
  constexpr double kInf = std::numeric_limits<double>::infinity();
  std::vector<std::vector<double>> best(num_stages + 1, std::vector<double>(n + 1, kInf));
  best[0][0] = 0.0;
  for (int s = 1; s <= num_stages; ++s) {
    for (int i = s; i <= n - (num_stages - s); ++i) {
      for (int j = s - 1; j < i; ++j) {
        best[s][i] = std::min(best[s][i], std::max(best[s - 1][j], range(j, i)));
      }
    }
  }
  const double optimum = best[num_stages][n];

  // Walk back from the last stage, putting each cut as late as the optimum allows. Prefix-sum
  // rounding can differ between two equal sums, so compare with a relative tolerance.
  const double tol = 1e-12 * std::max(1.0, std::abs(optimum));
  std::vector<int> bounds(num_stages + 1, 0);
  bounds[num_stages] = n;
  int end = n;
  for (int s = num_stages; s >= 1; --s) {
    int cut = s - 1;
    for (int j = end - 1; j >= s - 1; --j) {
      if (range(j, end) <= optimum + tol && best[s - 1][j] <= optimum + tol) {
        cut = j;
        break;
      }
    }
    bounds[s - 1] = cut;
    end = cut;
  }
  return finish(layer_costs, std::move(bounds));
}

Partition partition_from_counts(std::span<const double> layer_costs,
                                std::span<const int> layers_per_stage) {
  check_costs(layer_costs, "partition_from_counts");
  PIPETRAIN_CHECK_ARG(!layers_per_stage.empty(), "partition_from_counts",
                      "layers_per_stage is empty, expected one count per stage");
  std::vector<int> bounds{0};
  for (std::size_t s = 0; s < layers_per_stage.size(); ++s) {
    PIPETRAIN_CHECK_ARG(layers_per_stage[s] >= 1, "partition_from_counts", "layers_per_stage[", s,
                        "]=", layers_per_stage[s], " must be >= 1");
    bounds.push_back(bounds.back() + layers_per_stage[s]);
  }
  PIPETRAIN_CHECK_ARG(bounds.back() == static_cast<int>(layer_costs.size()),
                      "partition_from_counts", "layer counts add up to ", bounds.back(),
                      ", the model has ", layer_costs.size(), " layers");
  return finish(layer_costs, std::move(bounds));
}

}  // namespace pipetrain::runtime
