#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/runtime/topology.h"

namespace pipetrain::runtime {
namespace {

using pipetrain::testing::error_of;

TEST(Topology, RankMappingIsDpMajor) {
  Topology t(6, 3, 2);
  EXPECT_EQ(t.world_size(), 6);
  EXPECT_EQ(t.rank_of(0, 0), 0);
  EXPECT_EQ(t.rank_of(2, 0), 2);
  EXPECT_EQ(t.rank_of(0, 1), 3);
  EXPECT_EQ(t.rank_of(2, 1), 5);
  for (int r = 0; r < 6; ++r) EXPECT_EQ(t.rank_of(t.pp_index(r), t.dp_index(r)), r);
  EXPECT_EQ(t.pipeline_group(1), (std::vector<int>{3, 4, 5}));
  EXPECT_EQ(t.data_parallel_group(1), (std::vector<int>{1, 4}));
  EXPECT_EQ(t.to_string(), "P=3 x D=2 (world 6, rank = dp * 3 + pp)");
}

TEST(Topology, RejectsBadSizes) {
  EXPECT_EQ(error_of<InvalidArgument>([] { Topology(3, 2, 2); }),
            "[Topology] world_size=3 must equal pipeline_size=2 x data_parallel_size=2 = 4");
  EXPECT_EQ(error_of<InvalidArgument>([] { Topology(0, 0, 1); }),
            "[Topology] pipeline_size=0 must be >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([] { Topology(2, 2, 0); }),
            "[Topology] data_parallel_size=0 must be >= 1");
  Topology t(4, 2, 2);
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.pp_index(4); }),
            "[Topology::pp_index] rank=4 must be in [0, 4)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { t.rank_of(2, 0); }),
            "[Topology::rank_of] pp_index=2 must be in [0, 2)");
}

data::Batch make_batch(int batch_size, int seq_len) {
  data::Batch b;
  b.batch_size = batch_size;
  b.seq_len = seq_len;
  for (int i = 0; i < batch_size * seq_len; ++i) {
    b.inputs.push_back(i);
    b.targets.push_back(1000 + i);
  }
  return b;
}

TEST(SplitBatch, ConsecutiveEqualMicrobatches) {
  const data::Batch batch = make_batch(6, 2);
  const std::vector<data::Batch> mbs = split_batch(batch, 3);
  ASSERT_EQ(mbs.size(), 3u);
  for (int m = 0; m < 3; ++m) {
    EXPECT_EQ(mbs[m].batch_size, 2);
    EXPECT_EQ(mbs[m].seq_len, 2);
    EXPECT_EQ(mbs[m].inputs, (std::vector<data::Token>{4 * m, 4 * m + 1, 4 * m + 2, 4 * m + 3}));
    EXPECT_EQ(mbs[m].targets[0], 1000 + 4 * m);
  }
  EXPECT_EQ(microbatch_size(12, 4), 3);
}

TEST(SplitBatch, RejectsBatchThatDoesNotDivide) {
  EXPECT_EQ(error_of<InvalidArgument>([] { split_batch(make_batch(10, 1), 4); }),
            "[split_batch] batch_size=10 is not a multiple of num_microbatches=4");
  EXPECT_EQ(error_of<InvalidArgument>([] { microbatch_size(10, 0); }),
            "[split_batch] num_microbatches=0 must be >= 1");
  data::Batch bad = make_batch(2, 2);
  bad.targets.pop_back();
  EXPECT_EQ(error_of<InvalidArgument>([&] { split_batch(bad, 2); }),
            "[split_batch] batch of 2 x 2 holds 4 inputs and 3 targets, expected 4");
}

TEST(ShardBatch, ReplicaTakesItsRows) {
  const data::Batch batch = make_batch(4, 1);
  const data::Batch s1 = shard_batch(batch, 2, 1);
  EXPECT_EQ(s1.batch_size, 2);
  EXPECT_EQ(s1.inputs, (std::vector<data::Token>{2, 3}));
  EXPECT_EQ(error_of<InvalidArgument>([&] { shard_batch(make_batch(6, 1), 4, 0); }),
            "[shard_batch] batch_size=6 is not a multiple of data_parallel_size=4");
}

}  // namespace
}  // namespace pipetrain::runtime
