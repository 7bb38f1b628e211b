// pipetrain/runtime/partition.h: cutting a model's layers into contiguous pipeline stages.
//
// A model is a list of L layers in forward order, each with a cost (for a GPT:
// nn::gpt_layer_costs in pipetrain/nn/gpt.h). A partition cuts the list into S contiguous,
// non-empty stages, every layer in exactly one stage. partition_layers() returns a partition
// whose largest stage cost is the smallest possible (the pipeline runs at the pace of its
// slowest stage).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace pipetrain::runtime {

struct Partition {
  /// num_stages + 1 increasing layer indices: stage s holds layers [bounds[s], bounds[s+1]).
  /// bounds.front() == 0, bounds.back() == number of layers.
  std::vector<int> bounds;
  /// Sum of the layer costs of each stage.
  std::vector<double> stage_costs;
  /// max(stage_costs).
  double max_cost = 0.0;

  int num_stages() const { return static_cast<int>(bounds.size()) - 1; }
  /// Number of layers of stage s.
  int num_layers(int stage) const {
    const auto s = static_cast<std::size_t>(stage);
    return bounds[s + 1] - bounds[s];
  }
  /// "[0, 3) [3, 5) [5, 8)".
  std::string to_string() const;
};

/// The partition of `layer_costs` into `num_stages` contiguous non-empty stages that minimises
/// the largest stage cost (exact dynamic programme, O(S L^2) time). Among optimal partitions the
/// one returned is fixed: each cut is placed as late as possible, scanning from the last stage.
/// Throws InvalidArgument:
///   "[partition_layers] num_stages=0 must be >= 1"
///   "[partition_layers] 3 layers cannot fill num_stages=4: each stage needs at least one layer"
///   "[partition_layers] layer_costs[2]=-1 must be finite and >= 0"
Partition partition_layers(std::span<const double> layer_costs, int num_stages);

/// The partition with the given layer counts per stage (e.g. from a command line), with its
/// costs. Throws InvalidArgument when a count is < 1 or the counts do not add up to the number
/// of layers: "[partition_from_counts] layer counts add up to 7, the model has 8 layers"
Partition partition_from_counts(std::span<const double> layer_costs,
                                std::span<const int> layers_per_stage);


}  // namespace pipetrain::runtime
