#include "pipetrain/runtime/topology.h"

#include <sstream>

#include "pipetrain/error.h"

namespace pipetrain::runtime {

Topology::Topology(int world_size, int pipeline_size, int data_parallel_size)
    : pipeline_size_(pipeline_size), data_parallel_size_(data_parallel_size) {
  PIPETRAIN_CHECK_ARG(pipeline_size >= 1, "Topology", "pipeline_size=", pipeline_size,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(data_parallel_size >= 1, "Topology", "data_parallel_size=",
                      data_parallel_size, " must be >= 1");
  PIPETRAIN_CHECK_ARG(world_size == pipeline_size * data_parallel_size, "Topology",
                      "world_size=", world_size, " must equal pipeline_size=", pipeline_size,
                      " x data_parallel_size=", data_parallel_size, " = ",
                      pipeline_size * data_parallel_size);
}

void Topology::check_rank(int rank, const char* function) const {
  PIPETRAIN_CHECK_ARG(rank >= 0 && rank < world_size(), function, "rank=", rank,
                      " must be in [0, ", world_size(), ")");
}

int Topology::rank_of(int pp_index, int dp_index) const {
  PIPETRAIN_CHECK_ARG(pp_index >= 0 && pp_index < pipeline_size_, "Topology::rank_of",
                      "pp_index=", pp_index, " must be in [0, ", pipeline_size_, ")");
  PIPETRAIN_CHECK_ARG(dp_index >= 0 && dp_index < data_parallel_size_, "Topology::rank_of",
                      "dp_index=", dp_index, " must be in [0, ", data_parallel_size_, ")");
  return dp_index * pipeline_size_ + pp_index;
}

int Topology::pp_index(int rank) const {
  check_rank(rank, "Topology::pp_index");
  return rank % pipeline_size_;
}

int Topology::dp_index(int rank) const {
  check_rank(rank, "Topology::dp_index");
  return rank / pipeline_size_;
}

std::vector<int> Topology::pipeline_group(int dp_index) const {
  std::vector<int> ranks;
  for (int pp = 0; pp < pipeline_size_; ++pp) ranks.push_back(rank_of(pp, dp_index));
  return ranks;
}

std::vector<int> Topology::data_parallel_group(int pp_index) const {
  std::vector<int> ranks;
  for (int dp = 0; dp < data_parallel_size_; ++dp) ranks.push_back(rank_of(pp_index, dp));
  return ranks;
}

std::string Topology::to_string() const {
  std::ostringstream out;
  out << "P=" << pipeline_size_ << " x D=" << data_parallel_size_ << " (world " << world_size()
      << ", rank = dp * " << pipeline_size_ << " + pp)";
  return out.str();
}

namespace {
int checked_microbatch_size(int batch_size, int num_microbatches, const char* function) {
  PIPETRAIN_CHECK_ARG(num_microbatches >= 1, function, "num_microbatches=", num_microbatches,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(batch_size >= 1, function, "batch_size=", batch_size, " must be >= 1");
  PIPETRAIN_CHECK_ARG(batch_size % num_microbatches == 0, function, "batch_size=", batch_size,
                      " is not a multiple of num_microbatches=", num_microbatches);
  return batch_size / num_microbatches;
}

data::Batch rows(const data::Batch& batch, int begin, int count) {
  data::Batch out;
  out.batch_size = count;
  out.seq_len = batch.seq_len;
  const auto first = static_cast<std::size_t>(begin) * batch.seq_len;
  const auto n = static_cast<std::size_t>(count) * batch.seq_len;
  out.inputs.assign(batch.inputs.begin() + first, batch.inputs.begin() + first + n);
  out.targets.assign(batch.targets.begin() + first, batch.targets.begin() + first + n);
  return out;
}

void check_batch(const data::Batch& batch, const char* function) {
  const auto n = static_cast<std::size_t>(batch.batch_size) * batch.seq_len;
  PIPETRAIN_CHECK_ARG(batch.inputs.size() == n && batch.targets.size() == n, function,
                      "batch of ", batch.batch_size, " x ", batch.seq_len, " holds ",
                      batch.inputs.size(), " inputs and ", batch.targets.size(),
                      " targets, expected ", n);
}
}  // namespace

int microbatch_size(int batch_size, int num_microbatches) {
  return checked_microbatch_size(batch_size, num_microbatches, "split_batch");
}

std::vector<data::Batch> split_batch(const data::Batch& batch, int num_microbatches) {
  const int b = checked_microbatch_size(batch.batch_size, num_microbatches, "split_batch");
  check_batch(batch, "split_batch");
  std::vector<data::Batch> out;
  out.reserve(num_microbatches);
  for (int m = 0; m < num_microbatches; ++m) out.push_back(rows(batch, m * b, b));
  return out;
}

data::Batch shard_batch(const data::Batch& batch, int data_parallel_size, int dp_index) {
  PIPETRAIN_CHECK_ARG(data_parallel_size >= 1, "shard_batch", "data_parallel_size=",
                      data_parallel_size, " must be >= 1");
  PIPETRAIN_CHECK_ARG(dp_index >= 0 && dp_index < data_parallel_size, "shard_batch",
                      "dp_index=", dp_index, " must be in [0, ", data_parallel_size, ")");
  PIPETRAIN_CHECK_ARG(batch.batch_size % data_parallel_size == 0, "shard_batch", "batch_size=",
                      batch.batch_size, " is not a multiple of data_parallel_size=",
                      data_parallel_size);
  check_batch(batch, "shard_batch");
  const int b = batch.batch_size / data_parallel_size;
  return rows(batch, dp_index * b, b);
}

}  // namespace pipetrain::runtime
