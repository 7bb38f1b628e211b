#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/runtime/partition.h"

namespace pipetrain::runtime {
namespace {

using pipetrain::testing::error_of;

// Smallest max stage cost over every way to cut `costs` into `stages` non-empty pieces.
double brute_force(const std::vector<double>& costs, int stages) {
  const int n = static_cast<int>(costs.size());
  double best = 1e300;
  std::vector<int> cuts;
  std::function<void(int, int)> go = [&](int start, int left) {
    if (left == 1) {
      double worst = 0, sum = 0;
      int prev = 0;
      std::vector<int> b = cuts;
      b.push_back(n);
      for (int c : b) {
        sum = 0;
        for (int i = prev; i < c; ++i) sum += costs[i];
        worst = std::max(worst, sum);
        prev = c;
      }
      best = std::min(best, worst);
      return;
    }
    for (int c = start + 1; c <= n - left + 1; ++c) {
      cuts.push_back(c);
      go(c, left - 1);
      cuts.pop_back();
    }
  };
  go(0, stages);
  return best;
}

void expect_valid(const Partition& p, const std::vector<double>& costs, int stages) {
  ASSERT_EQ(p.num_stages(), stages);
  EXPECT_EQ(p.bounds.front(), 0);
  EXPECT_EQ(p.bounds.back(), static_cast<int>(costs.size()));
  double total = 0;
  for (int s = 0; s < stages; ++s) {
    EXPECT_GE(p.num_layers(s), 1) << p.to_string();
    double sum = 0;
    for (int l = p.bounds[s]; l < p.bounds[s + 1]; ++l) sum += costs[l];
    EXPECT_DOUBLE_EQ(p.stage_costs[s], sum);
    total += sum;
  }
  double expected_total = 0;
  for (double c : costs) expected_total += c;
  EXPECT_NEAR(total, expected_total, 1e-9 * expected_total);
  EXPECT_DOUBLE_EQ(p.max_cost, *std::max_element(p.stage_costs.begin(), p.stage_costs.end()));
}

TEST(PartitionLayers, KnownCase) {
  const std::vector<double> costs{1, 4, 4, 4, 4, 6};
  const Partition p = partition_layers(costs, 3);
  expect_valid(p, costs, 3);
  EXPECT_DOUBLE_EQ(p.max_cost, 9.0);
  EXPECT_EQ(p.to_string(), "[0, 3) [3, 5) [5, 6)");  // cuts as late as possible
}

TEST(PartitionLayers, OneStageAndOneLayerPerStage) {
  const std::vector<double> costs{3, 1, 2};
  EXPECT_EQ(partition_layers(costs, 1).to_string(), "[0, 3)");
  EXPECT_EQ(partition_layers(costs, 3).to_string(), "[0, 1) [1, 2) [2, 3)");
  EXPECT_DOUBLE_EQ(partition_layers(costs, 3).max_cost, 3.0);
}

TEST(PartitionLayers, OptimalAgainstBruteForceOnRandomCases) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> len(1, 9);
  std::uniform_real_distribution<double> cost(0.0, 10.0);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = len(rng);
    std::vector<double> costs(n);
    for (double& c : costs) c = (trial % 3 == 0) ? std::floor(cost(rng)) : cost(rng);
    for (int s = 1; s <= n; ++s) {
      const Partition p = partition_layers(costs, s);
      expect_valid(p, costs, s);
      EXPECT_NEAR(p.max_cost, brute_force(costs, s), 1e-9) << "trial " << trial << " s=" << s;
    }
  }
}

TEST(PartitionLayers, Errors) {
  const std::vector<double> three{1, 2, 3};
  EXPECT_EQ(error_of<InvalidArgument>([&] { partition_layers(three, 4); }),
            "[partition_layers] 3 layers cannot fill num_stages=4: each stage needs at least one "
            "layer");
  EXPECT_EQ(error_of<InvalidArgument>([&] { partition_layers(three, 0); }),
            "[partition_layers] num_stages=0 must be >= 1");
  const std::vector<double> negative{1, 2, -1};
  EXPECT_EQ(error_of<InvalidArgument>([&] { partition_layers(negative, 2); }),
            "[partition_layers] layer_costs[2]=-1 must be finite and >= 0");
}

TEST(PartitionFromCounts, CostsAndErrors) {
  const std::vector<double> costs{1, 2, 3, 4};
  const std::vector<int> counts{1, 3};
  const Partition p = partition_from_counts(costs, counts);
  EXPECT_EQ(p.to_string(), "[0, 1) [1, 4)");
  EXPECT_DOUBLE_EQ(p.max_cost, 9.0);
  const std::vector<int> short_counts{1, 2};
  EXPECT_EQ(error_of<InvalidArgument>([&] { partition_from_counts(costs, short_counts); }),
            "[partition_from_counts] layer counts add up to 3, the model has 4 layers");
  const std::vector<int> zero{0, 4};
  EXPECT_EQ(error_of<InvalidArgument>([&] { partition_from_counts(costs, zero); }),
            "[partition_from_counts] layers_per_stage[0]=0 must be >= 1");
}

TEST(GptLayerCosts, ShapeAndOrdering) {
  nn::GptCostShape shape;
  shape.vocab_size = 50257;
  shape.seq_len = 1024;
  shape.channels = 768;
  shape.num_layers = 12;
  const std::vector<double> costs = nn::gpt_layer_costs(shape);
  ASSERT_EQ(costs.size(), 14u);
  for (int i = 2; i <= 12; ++i) EXPECT_DOUBLE_EQ(costs[i], costs[1]);
  // GPT-2 small: the head's V x C product is bigger than a block's 24 C^2 + 4 T C per token.
  EXPECT_GT(costs.back(), costs[1]);
  EXPECT_GT(costs.front(), 0.0);
  EXPECT_LT(costs.front(), costs[1]);
  // Block forward FLOPs per token x 3 (training), dominant term.
  const double block_flops = 3.0 * 2.0 * 1024 * (24.0 * 768 * 768 + 4.0 * 1024 * 768);
  EXPECT_GT(costs[1], block_flops);
  EXPECT_LT(costs[1], 1.1 * block_flops);
  shape.channels = 0;
  EXPECT_EQ(error_of<InvalidArgument>([&] { nn::gpt_layer_costs(shape); }),
            "[gpt_layer_costs] channels=0 must be >= 1");
}

}  // namespace
}  // namespace pipetrain::runtime
