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

std::vector<double> gpt_layer_costs(const GptCostShape& shape, double flops_per_byte) {
  PIPETRAIN_CHECK_ARG(shape.vocab_size >= 1, "gpt_layer_costs", "vocab_size=", shape.vocab_size,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.seq_len >= 1, "gpt_layer_costs", "seq_len=", shape.seq_len,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.channels >= 1, "gpt_layer_costs", "channels=", shape.channels,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.num_layers >= 1, "gpt_layer_costs", "num_layers=", shape.num_layers,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.microbatch_size >= 1, "gpt_layer_costs",
                      "microbatch_size=", shape.microbatch_size, " must be >= 1");
  PIPETRAIN_CHECK_ARG(std::isfinite(flops_per_byte) && flops_per_byte >= 0.0, "gpt_layer_costs",
                      "flops_per_byte=", flops_per_byte, " must be finite and >= 0");
  const double c = static_cast<double>(shape.channels);
  const double t = static_cast<double>(shape.seq_len);
  const double v = static_cast<double>(shape.vocab_size);
  const double tokens = t * static_cast<double>(shape.microbatch_size);
  constexpr double kTrain = 3.0;  // forward + backward (input and weight gradients)
  constexpr double kFloat = 4.0;

  // Activation bytes written per token: the embedding writes C values; a block keeps about 16 C
  // (layer norms, QKV, attention output, MLP hidden 4C x2, residuals); the head writes V logits.
  const double embed_bytes = kFloat * (tokens * c + v * c + t * c);
  const double block_flops = 2.0 * tokens * (24.0 * c * c + 4.0 * t * c);
  const double block_bytes = kFloat * (tokens * 16.0 * c + 12.0 * c * c);
  const double head_flops = 2.0 * tokens * c * v;
  const double head_bytes = kFloat * (tokens * (c + v) + v * c);

  std::vector<double> costs;
  costs.push_back(kTrain * flops_per_byte * embed_bytes);
  for (std::int64_t i = 0; i < shape.num_layers; ++i) {
    costs.push_back(kTrain * (block_flops + flops_per_byte * block_bytes));
  }
  costs.push_back(kTrain * (head_flops + flops_per_byte * head_bytes));
  return costs;
}

}  // namespace pipetrain::runtime
