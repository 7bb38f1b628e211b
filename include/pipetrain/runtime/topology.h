// pipetrain/runtime/topology.h: how ranks are arranged, and how a batch becomes microbatches.
//
// A run uses world_size = pipeline_size x data_parallel_size ranks. Rank mapping (fixed,
// documented in docs/runtime.md):
//
//   rank = dp_index * pipeline_size + pp_index
//
// so the ranks of one pipeline replica are consecutive ([dp*P, dp*P + P)), and pipeline rank
// pp_index runs the stages that Schedule::stages_of_rank(pp_index) gives. The ranks that hold the
// same stages in different replicas (pp_index fixed) form a data-parallel group, whose gradients
// are averaged after every step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipetrain/data/batch_sampler.h"

namespace pipetrain::runtime {

class Topology {
 public:
  /// Checks and builds the arrangement. Throws InvalidArgument before any transfer:
  ///   "[Topology] pipeline_size=0 must be >= 1"
  ///   "[Topology] data_parallel_size=0 must be >= 1"
  ///   "[Topology] world_size=3 must equal pipeline_size=2 x data_parallel_size=2 = 4"
  Topology(int world_size, int pipeline_size, int data_parallel_size);

  int world_size() const { return pipeline_size_ * data_parallel_size_; }
  int pipeline_size() const { return pipeline_size_; }
  int data_parallel_size() const { return data_parallel_size_; }

  /// dp_index * pipeline_size + pp_index. Throws InvalidArgument when an index is out of range.
  int rank_of(int pp_index, int dp_index) const;
  /// rank % pipeline_size. Throws InvalidArgument when rank is out of range.
  int pp_index(int rank) const;
  /// rank / pipeline_size. Throws InvalidArgument when rank is out of range.
  int dp_index(int rank) const;
  /// The P ranks of replica `dp_index`, in pipeline order.
  std::vector<int> pipeline_group(int dp_index) const;
  /// The D ranks that hold pipeline position `pp_index`, in replica order.
  std::vector<int> data_parallel_group(int pp_index) const;

  /// "P=2 x D=2 (world 4, rank = dp * 2 + pp)".
  std::string to_string() const;

 private:
  void check_rank(int rank, const char* function) const;

  int pipeline_size_;
  int data_parallel_size_;
};

/// Number of sequences per microbatch: batch_size / num_microbatches. Throws InvalidArgument:
///   "[split_batch] num_microbatches=0 must be >= 1"
///   "[split_batch] batch_size=10 is not a multiple of num_microbatches=4"
int microbatch_size(int batch_size, int num_microbatches);

/// Cuts a batch into num_microbatches consecutive microbatches of equal size (rows
/// [m * b, (m + 1) * b) with b = microbatch_size(batch.batch_size, num_microbatches)).
/// Throws as microbatch_size(), with the function name split_batch.
std::vector<data::Batch> split_batch(const data::Batch& batch, int num_microbatches);

/// The rows [dp_index * B/D, (dp_index + 1) * B/D) of a global batch: the part that replica
/// dp_index trains on. Throws InvalidArgument:
///   "[shard_batch] batch_size=6 is not a multiple of data_parallel_size=4"
data::Batch shard_batch(const data::Batch& batch, int data_parallel_size, int dp_index);

}  // namespace pipetrain::runtime
