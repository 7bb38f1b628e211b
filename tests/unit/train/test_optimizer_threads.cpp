// The optimizers' threaded and fused passes: parameters larger than one chunk (32768 elements)
// and odd sizes, fresh random values each run. step(lr, s) is scale_grads(s) then step(lr) bit
// for bit; every pass gives the same bits on 1, 2 and 3 threads; the sum of squares is within
// fp64 rounding of a long double reference and is the finite check.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../../src/core/parallel.h"
#include "../../support/test_seed.h"
#include "pipetrain/cpu_threads.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/tensor.h"

namespace pipetrain::optim {
namespace {

// Sets the parallel_chunks() thread count for a scope; OpenBLAS keeps its own.
class Threads {
 public:
  explicit Threads(int k) { pipetrain::detail::set_parallel_threads_for_testing(k); }
  ~Threads() { pipetrain::detail::set_parallel_threads_for_testing(0); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
};

constexpr std::int64_t kSizes[] = {100003, 5, 65536, 32769, 1};

// A set of parameters with random values and gradients from `seed`.
struct Params {
  std::vector<std::unique_ptr<nn::Parameter>> owned;
  std::vector<nn::Parameter*> ptrs;

  explicit Params(unsigned seed) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    int i = 0;
    for (std::int64_t n : kSizes) {
      std::vector<float> v(n), g(n);
      for (float& x : v) x = normal(rng);
      for (float& x : g) x = normal(rng);
      auto p = std::make_unique<nn::Parameter>();
      p->name = "p" + std::to_string(i);
      p->value = Tensor::from_vector(v);
      p->grad = Tensor::from_vector(g);
      p->weight_decay = i % 2 == 0;
      ptrs.push_back(p.get());
      owned.push_back(std::move(p));
      ++i;
    }
  }
  // Values then gradients of every parameter, concatenated.
  std::vector<float> all() const {
    std::vector<float> out;
    for (const nn::Parameter* p : ptrs) {
      const auto v = p->value.to_vector<float>();
      out.insert(out.end(), v.begin(), v.end());
    }
    for (const nn::Parameter* p : ptrs) {
      const auto g = p->grad.to_vector<float>();
      out.insert(out.end(), g.begin(), g.end());
    }
    return out;
  }
};

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool same_state(const OptimizerState& a, const OptimizerState& b) {
  if (a.step != b.step || a.buffers.size() != b.buffers.size()) return false;
  for (std::size_t i = 0; i < a.buffers.size(); ++i) {
    if (!same_bits(a.buffers[i].data, b.buffers[i].data)) return false;
  }
  return true;
}

std::unique_ptr<Optimizer> make(const std::string& kind, std::vector<nn::Parameter*> ps) {
  if (kind == "adamw") return std::make_unique<AdamW>(ps, AdamWConfig{0.9, 0.95, 1e-8, 0.1});
  if (kind == "sgd") return std::make_unique<Sgd>(ps, SgdConfig{});
  return std::make_unique<Sgd>(ps, SgdConfig{0.9, 0.01, kind == "nesterov"});
}

class OptimizerThreads : public ::testing::TestWithParam<const char*> {};

TEST_P(OptimizerThreads, FusedScaleAndStepIsScaleThenStep) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  Params a(seed), b(seed);
  auto opt_a = make(GetParam(), a.ptrs);
  auto opt_b = make(GetParam(), b.ptrs);
  for (double scale : {0.37, 1.0, 1e-3}) {
    scale_grads(a.ptrs, scale);
    opt_a->step(1e-2);
    opt_b->step(1e-2, scale);
    EXPECT_TRUE(same_bits(a.all(), b.all())) << "scale " << scale;
    EXPECT_TRUE(same_state(opt_a->state(), opt_b->state())) << "scale " << scale;
  }
  EXPECT_THROW(opt_b->step(1e-2, 0.0), InvalidArgument);
  EXPECT_THROW(opt_b->step(1e-2, std::numeric_limits<double>::infinity()), InvalidArgument);
}

TEST_P(OptimizerThreads, SameBitsOnAnyThreadCount) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::vector<float> want;
  OptimizerState want_state;
  double want_sumsq = 0;
  for (int k : {1, 2, 3}) {
    Threads t(k);
    Params p(seed);
    auto opt = make(GetParam(), p.ptrs);
    const double sumsq = local_grad_sum_of_squares(p.ptrs);
    opt->step(1e-2, 0.5);
    scale_grads(p.ptrs, 3.0);
    opt->step(1e-2);
    const std::vector<float> got = p.all();
    if (k == 1) {
      want = got;
      want_state = opt->state();
      want_sumsq = sumsq;
    } else {
      EXPECT_TRUE(same_bits(got, want)) << k << " threads";
      EXPECT_TRUE(same_state(opt->state(), want_state)) << k << " threads";
      EXPECT_EQ(sumsq, want_sumsq) << k << " threads";
    }
    opt->zero_grad();
    for (const nn::Parameter* q : p.ptrs) {
      for (float g : q->grad.to_vector<float>()) ASSERT_EQ(g, 0.0f);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Kinds, OptimizerThreads,
                         ::testing::Values("adamw", "sgd", "momentum", "nesterov"));

TEST(GradSumOfSquares, MatchesLongDoubleAndIsTheFiniteCheck) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  Threads t(2);
  Params p(seed);
  long double want = 0;
  double per_param = 0;
  for (const nn::Parameter* q : p.ptrs) {
    const auto g = q->grad.to_vector<float>();
    for (float x : g) want += static_cast<long double>(x) * x;
    per_param += sum_of_squares(g);
  }
  const double got = local_grad_sum_of_squares(p.ptrs);
  EXPECT_NEAR(got, static_cast<double>(want), 1e-13 * static_cast<double>(want));
  EXPECT_EQ(got, per_param);  // the same order as sum_of_squares() parameter by parameter
  EXPECT_TRUE(grads_are_finite(p.ptrs));

  // A non-finite element in the last chunk of the largest parameter.
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    Params q(seed);
    q.ptrs[0]->grad.data<float>()[kSizes[0] - 2] = bad;
    EXPECT_FALSE(std::isfinite(local_grad_sum_of_squares(q.ptrs))) << bad;
    EXPECT_FALSE(grads_are_finite(q.ptrs)) << bad;
  }
  // The largest finite fp32 values do not overflow the fp64 sum.
  Params big(seed);
  for (nn::Parameter* q : big.ptrs) {
    float* g = q->grad.data<float>();
    for (std::int64_t i = 0; i < q->grad.numel(); ++i) g[i] = std::numeric_limits<float>::max();
  }
  EXPECT_TRUE(std::isfinite(local_grad_sum_of_squares(big.ptrs)));
}

}  // namespace
}  // namespace pipetrain::optim
