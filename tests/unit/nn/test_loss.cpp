// The losses (pipetrain/nn/loss.h): values against references computed here in long double,
// gradients against finite differences, fp32 against fp64, ignore_index, the all-ignored
// microbatch, the fused kernel's results when nothing is ignored, and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "nn_testing.h"
#include "pipetrain/error.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/nn/loss.h"
#include "test_seed.h"

namespace pipetrain::nn {
namespace {

using testing::error_of;
using testing::max_rel_error;
using testing::random_tensor;

// Mean over non-ignored rows of logsumexp(z) - z[target], in long double.
double reference_cross_entropy(const Tensor& logits, const Tensor& targets, std::int32_t ignore) {
  const auto z = logits.to_vector<double>();
  const auto t = targets.to_vector<std::int32_t>();
  const std::size_t v = static_cast<std::size_t>(logits.size(-1));
  long double total = 0;
  int counted = 0;
  for (std::size_t i = 0; i < t.size(); ++i) {
    if (t[i] == ignore) continue;
    long double m = z[i * v], s = 0;
    for (std::size_t k = 0; k < v; ++k) m = std::max<long double>(m, z[i * v + k]);
    for (std::size_t k = 0; k < v; ++k) s += std::exp(static_cast<long double>(z[i * v + k]) - m);
    total += std::log(s) + m - z[i * v + static_cast<std::size_t>(t[i])];
    ++counted;
  }
  return counted > 0 ? static_cast<double>(total / counted) : 0.0;
}

// Central differences of scale * loss.evaluate over every logit, fp64.
std::vector<double> numeric_gradient(Loss& loss, Tensor outputs, const Tensor& targets,
                                     double scale) {
  outputs = outputs.clone();
  double* z = outputs.data<double>();
  std::vector<double> g(static_cast<std::size_t>(outputs.numel()));
  const double h = 1e-6;
  for (std::int64_t i = 0; i < outputs.numel(); ++i) {
    const double saved = z[i];
    z[i] = saved + h;
    const double up = loss.evaluate({outputs}, {targets});
    z[i] = saved - h;
    const double down = loss.evaluate({outputs}, {targets});
    z[i] = saved;
    g[static_cast<std::size_t>(i)] = scale * (up - down) / (2 * h);
  }
  return g;
}

class LossTest : public ::testing::Test {
 protected:
  LossTest() : seed_(testing::test_seed()), rng_(seed_) {}
  // ids in [0, v) with about a quarter set to `ignore`.
  Tensor targets(const Shape& shape, std::int32_t v, std::int32_t ignore) {
    Tensor t = testing::random_ids(shape, v, rng_);
    std::int32_t* p = t.data<std::int32_t>();
    for (std::int64_t i = 0; i < t.numel(); ++i) {
      if (rng_() % 4 == 0) p[i] = ignore;
    }
    return t;
  }
  unsigned seed_;
  std::mt19937_64 rng_;
};

// ---- CrossEntropyLoss ----------------------------------------------------------------------

TEST_F(LossTest, CrossEntropyMatchesReferenceAndFiniteDifferences) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  for (std::int32_t ignore : {-100, 2}) {  // ignore_index may be a valid class id
    SCOPED_TRACE("ignore_index=" + std::to_string(ignore));
    CrossEntropyLoss ce(ignore);
    EXPECT_EQ(ce.name(), "cross_entropy");
    EXPECT_EQ(ce.ignore_index(), ignore);
    const Tensor logits = random_tensor({2, 3, 5}, rng_, DType::kFloat64, 2.0);
    const Tensor t = targets({2, 3}, 5, ignore);
    const double want = reference_cross_entropy(logits, t, ignore);
    const double loss = ce.forward(0, {logits}, {t});
    EXPECT_NEAR(loss, want, 1e-14 * std::max(1.0, want));
    EXPECT_EQ(ce.evaluate({logits}, {t}), loss);
    const double scale = 0.375;
    const TensorList g = ce.backward(0, scale);
    ASSERT_EQ(g.size(), 1u);
    EXPECT_EQ(g[0].shape(), logits.shape());
    EXPECT_EQ(g[0].dtype(), DType::kFloat64);
    // Bound: 1e-7 relative (max-norm), fp64 with h = 1e-6 through a log-sum-exp.
    EXPECT_LT(max_rel_error(g[0].to_vector<double>(), numeric_gradient(ce, logits, t, scale)),
              1e-7);
    // Ignored positions get exactly zero.
    const auto gv = g[0].to_vector<double>();
    const auto tv = t.to_vector<std::int32_t>();
    for (std::size_t i = 0; i < tv.size(); ++i) {
      if (tv[i] != ignore) continue;
      for (std::size_t k = 0; k < 5; ++k) EXPECT_EQ(gv[i * 5 + k], 0.0);
    }
  }
}

TEST_F(LossTest, CrossEntropyIgnoredRowsDoNotCount) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  // The loss of 4 rows with rows 1 and 3 ignored is that of rows 0 and 2 alone.
  const Tensor logits = random_tensor({4, 6}, rng_, DType::kFloat64);
  const Tensor t = Tensor::from_vector(std::vector<std::int32_t>{3, -1, 5, -1});
  const auto z = logits.to_vector<double>();
  std::vector<double> kept_rows(z.begin(), z.begin() + 6);
  kept_rows.insert(kept_rows.end(), z.begin() + 12, z.begin() + 18);
  CrossEntropyLoss ce(-1);
  const double all = ce.evaluate({logits}, {t});
  const double two = ce.evaluate({Tensor::from_vector(kept_rows, {2, 6})},
                                 {Tensor::from_vector(std::vector<std::int32_t>{3, 5})});
  EXPECT_NEAR(all, two, 1e-15);
}

TEST_F(LossTest, CrossEntropyAllIgnoredIsZero) {
  CrossEntropyLoss ce;
  const Tensor logits = random_tensor({3, 4}, rng_, DType::kFloat32);
  const Tensor t = Tensor::from_vector(std::vector<std::int32_t>{-100, -100, -100});
  EXPECT_EQ(ce.forward(1, {logits}, {t}), 0.0);
  const Tensor g = ce.backward(1, 1.0)[0];
  EXPECT_EQ(g.to_vector<float>(), std::vector<float>(12, 0.0f));
  EXPECT_EQ(g.dtype(), DType::kFloat32);
}

// Without ignored targets: bitwise the fused kernel on all rows at once, loss and gradient.
TEST_F(LossTest, CrossEntropyIsTheKernelWhenNothingIsIgnored) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  const std::int64_t n = 6, v = 7;
  const Tensor logits = random_tensor({2, 3, v}, rng_, DType::kFloat32, 3.0);
  const Tensor t = testing::random_ids({2, 3}, static_cast<std::int32_t>(v), rng_);
  std::vector<float> probs(static_cast<std::size_t>(n * v)), losses(static_cast<std::size_t>(n));
  const double want = kernels::cpu::cross_entropy_forward<float>(
      probs.data(), losses.data(), logits.data<float>(), t.data<std::int32_t>(), n, v);
  kernels::cpu::cross_entropy_backward<float>(probs.data(), probs.data(), t.data<std::int32_t>(),
                                              0.25, n, v);
  CrossEntropyLoss ce;
  EXPECT_EQ(ce.forward(0, {logits}, {t}), want);
  EXPECT_EQ(ce.backward(0, 0.25)[0].to_vector<float>(), probs);
}

TEST_F(LossTest, CrossEntropyFp32MatchesFp64) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  const Tensor logits = random_tensor({4, 9}, rng_, DType::kFloat64, 2.0);
  const Tensor t = targets({4}, 9, -100);
  CrossEntropyLoss a, b;
  const double l32 = a.forward(0, {logits.to(DType::kFloat32)}, {t});
  const double l64 = b.forward(0, {logits}, {t});
  EXPECT_NEAR(l32, l64, 1e-6 * std::max(1.0, l64));
  EXPECT_LT(max_rel_error(a.backward(0, 1.0)[0], b.backward(0, 1.0)[0]), 1e-5);
}

TEST_F(LossTest, CrossEntropyErrors) {
  CrossEntropyLoss ce;
  const Tensor logits = Tensor::zeros({2, 4, 5});
  const Tensor t = Tensor::zeros({2, 4}, DType::kInt32);
  const TensorSpec ls{{2, 4, 5}, DType::kFloat32}, ts{{2, 4}, DType::kInt32};
  EXPECT_NO_THROW(ce.check({ls}, {ts}));
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ce.check({ls, ls}, {ts});
            }),
            "[CrossEntropyLoss::check] got 2 outputs, expected 1 (the logits)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.check({ls}, {}); }),
            "[CrossEntropyLoss::check] got 0 targets, expected 1 (the class ids)");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ce.check({{{2, 4, 5}, DType::kInt32}}, {ts});
            }),
            "[CrossEntropyLoss::check] logits have dtype int32, expected fp32 or fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ce.check({{{}, DType::kFloat32}}, {ts});
            }),
            "[CrossEntropyLoss::check] logits have shape [], expected [..., V] with V >= 1");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ce.check({ls}, {{{2, 4}, DType::kFloat32}});
            }),
            "[CrossEntropyLoss::check] targets have dtype fp32, expected int32");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              ce.check({ls}, {{{2, 3}, DType::kInt32}});
            }),
            "[CrossEntropyLoss::check] targets have shape [2, 3], expected [2, 4] (the logits' "
            "leading dimensions)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.forward(0, {logits}, {Tensor()}); }),
            "[CrossEntropyLoss::forward] targets 0 is undefined");
  Tensor bad = t.clone();
  bad.data<std::int32_t>()[3] = 5;
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.forward(0, {logits}, {bad}); }),
            "[CrossEntropyLoss::forward] target 5 at index 3 is outside [0, 5) and is not "
            "ignore_index=-100");
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.evaluate({logits}, {t.view({8})}); }),
            "[CrossEntropyLoss::evaluate] targets have shape [8], expected [2, 4] (the logits' "
            "leading dimensions)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.backward(0, 1.0); }),
            "[CrossEntropyLoss::backward] microbatch 0 has no forward pending");
  ce.forward(0, {logits}, {t});
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.forward(0, {logits}, {t}); }),
            "[CrossEntropyLoss::forward] microbatch 0 is already pending");
  ce.backward(0, 1.0);
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.backward(0, 1.0); }),
            "[CrossEntropyLoss::backward] microbatch 0 has no forward pending");
  // release() drops a pending microbatch; evaluate() keeps nothing.
  ce.forward(1, {logits}, {t});
  ce.release(1);
  ce.evaluate({logits}, {t});
  EXPECT_EQ(error_of<InvalidArgument>([&] { ce.backward(1, 1.0); }),
            "[CrossEntropyLoss::backward] microbatch 1 has no forward pending");
}

// ---- MseLoss -------------------------------------------------------------------------------

TEST_F(LossTest, MseMatchesReferenceAndFiniteDifferences) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  MseLoss mse;
  EXPECT_EQ(mse.name(), "mse");
  const Tensor out = random_tensor({3, 4}, rng_, DType::kFloat64);
  const Tensor y = random_tensor({3, 4}, rng_, DType::kFloat64);
  const auto o = out.to_vector<double>(), t = y.to_vector<double>();
  long double want = 0;
  for (std::size_t i = 0; i < o.size(); ++i) want += (o[i] - t[i]) * (o[i] - t[i]);
  want /= 12;
  const double loss = mse.forward(0, {out}, {y});
  EXPECT_NEAR(loss, static_cast<double>(want), 1e-15 * std::max(1.0, loss));
  const Tensor g = mse.backward(0, 2.5)[0];
  // Exact: 2 * 2.5 * (o - t) / 12 in double.
  const auto gv = g.to_vector<double>();
  for (std::size_t i = 0; i < o.size(); ++i) {
    EXPECT_EQ(gv[i], 2.0 * 2.5 / 12 * (o[i] - t[i])) << i;
  }
  EXPECT_LT(max_rel_error(gv, numeric_gradient(mse, out, y, 2.5)), 1e-7);
}

TEST_F(LossTest, MseFp32MatchesFp64) {
  SCOPED_TRACE(testing::seed_trace(seed_));
  const Tensor out = random_tensor({5, 3}, rng_, DType::kFloat64);
  const Tensor y = random_tensor({5, 3}, rng_, DType::kFloat64);
  MseLoss a, b;
  const double l32 = a.forward(0, {out.to(DType::kFloat32)}, {y.to(DType::kFloat32)});
  const double l64 = b.forward(0, {out}, {y});
  EXPECT_NEAR(l32, l64, 1e-6 * l64);
  const Tensor g32 = a.backward(0, 1.0)[0];
  EXPECT_EQ(g32.dtype(), DType::kFloat32);
  EXPECT_LT(max_rel_error(g32, b.backward(0, 1.0)[0]), 1e-6);
}

TEST_F(LossTest, MseErrors) {
  MseLoss mse;
  const TensorSpec s{{2, 3}, DType::kFloat32};
  EXPECT_NO_THROW(mse.check({s}, {s}));
  EXPECT_EQ(error_of<InvalidArgument>([&] { mse.check({}, {s}); }),
            "[MseLoss::check] got 0 outputs, expected 1 (the predictions)");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mse.check({s}, {s, s});
            }),
            "[MseLoss::check] got 2 targets, expected 1 (the values to predict)");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mse.check({{{2, 3}, DType::kInt32}}, {{{2, 3}, DType::kInt32}});
            }),
            "[MseLoss::check] outputs have dtype int32, expected fp32 or fp64");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mse.check({s}, {{{2, 3}, DType::kFloat64}});
            }),
            "[MseLoss::check] targets are [2, 3] fp64, expected [2, 3] fp32 (the outputs' shape "
            "and dtype)");
  EXPECT_EQ(error_of<InvalidArgument>([&] {
              mse.forward(0, {Tensor::zeros({2, 3})}, {Tensor::zeros({3, 2})});
            }),
            "[MseLoss::forward] targets are [3, 2] fp32, expected [2, 3] fp32 (the outputs' "
            "shape and dtype)");
  EXPECT_EQ(error_of<InvalidArgument>([&] { mse.backward(4, 1.0); }),
            "[MseLoss::backward] microbatch 4 has no forward pending");
  mse.forward(4, {Tensor::zeros({2})}, {Tensor::zeros({2})});
  EXPECT_EQ(error_of<InvalidArgument>(
                [&] { mse.forward(4, {Tensor::zeros({2})}, {Tensor::zeros({2})}); }),
            "[MseLoss::forward] microbatch 4 is already pending");
  mse.release(4);
  EXPECT_EQ(error_of<InvalidArgument>([&] { mse.backward(4, 1.0); }),
            "[MseLoss::backward] microbatch 4 has no forward pending");
}

}  // namespace
}  // namespace pipetrain::nn
