// Every CPU kernel against central finite differences in fp64, and the fp32 path against the
// fp64 path. Error measure: max |analytic - numeric| / max |numeric| over a whole gradient.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

using Vec = std::vector<double>;

Vec random_vec(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  Vec v(n);
  for (double& x : v) x = normal(rng);
  return v;
}

std::vector<float> to_float(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of f with respect to every element of x (restored afterwards).
Vec numeric_grad(Vec& x, const std::function<double()>& f, double h = 1e-5) {
  Vec g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double up = f();
    x[i] = saved - h;
    const double down = f();
    x[i] = saved;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

template <typename A, typename B>
double rel_err(const A& analytic, const B& reference) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < reference.size(); ++i) {
    diff = std::max(diff,
                    std::abs(static_cast<double>(analytic[i]) - static_cast<double>(reference[i])));
    norm = std::max(norm, std::abs(static_cast<double>(reference[i])));
  }
  return diff / std::max(norm, 1e-300);
}

constexpr double kFdBound = 1e-6;     // fp64 analytic vs central differences (h = 1e-5)
constexpr double kFloatBound = 1e-5;  // fp32 path vs fp64 path

TEST(LinearKernel, MatchesFiniteDifferences) {
  std::mt19937_64 rng(1);
  const std::int64_t n = 5, c = 4, oc = 3;
  Vec x = random_vec(n * c, rng), w = random_vec(oc * c, rng), b = random_vec(oc, rng);
  const Vec r = random_vec(n * oc, rng);
  Vec out(n * oc);
  auto f = [&] {
    linear_forward<double>(out.data(), x.data(), w.data(), b.data(), n, c, oc);
    return dot(out, r);
  };
  Vec dx(n * c), dw(oc * c, 1.0), db(oc, 1.0);  // weight gradients accumulate onto 1
  linear_backward_input<double>(dx.data(), r.data(), w.data(), n, c, oc);
  linear_backward_weight<double>(dw.data(), db.data(), r.data(), x.data(), n, c, oc);
  for (double& v : dw) v -= 1.0;
  for (double& v : db) v -= 1.0;
  EXPECT_LT(rel_err(dx, numeric_grad(x, f)), kFdBound);
  EXPECT_LT(rel_err(dw, numeric_grad(w, f)), kFdBound);
  EXPECT_LT(rel_err(db, numeric_grad(b, f)), kFdBound);

  // fp32 against fp64, forward and both backward parts.
  auto xf = to_float(x), wf = to_float(w), bf = to_float(b), rf = to_float(r);
  std::vector<float> outf(n * oc), dxf(n * c), dwf(oc * c), dbf(oc);
  linear_forward<float>(outf.data(), xf.data(), wf.data(), bf.data(), n, c, oc);
  linear_backward_input<float>(dxf.data(), rf.data(), wf.data(), n, c, oc);
  linear_backward_weight<float>(dwf.data(), dbf.data(), rf.data(), xf.data(), n, c, oc);
  f();
  EXPECT_LT(rel_err(outf, out), kFloatBound);
  EXPECT_LT(rel_err(dxf, dx), kFloatBound);
  EXPECT_LT(rel_err(dwf, dw), kFloatBound);
  EXPECT_LT(rel_err(dbf, db), kFloatBound);
}

TEST(EmbeddingKernel, MatchesFiniteDifferences) {
  std::mt19937_64 rng(2);
  const std::int64_t b = 2, t = 3, c = 4, v = 5;
  const std::vector<std::int32_t> tokens = {0, 3, 3, 4, 1, 3};
  Vec wte = random_vec(v * c, rng), wpe = random_vec(t * c, rng);
  const Vec r = random_vec(b * t * c, rng);
  Vec out(b * t * c);
  auto f = [&] {
    embedding_forward<double>(out.data(), tokens.data(), wte.data(), wpe.data(), b, t, c);
    return dot(out, r);
  };
  Vec dwte(v * c), dwpe(t * c);
  embedding_backward_weight<double>(dwte.data(), dwpe.data(), r.data(), tokens.data(), b, t, c);
  EXPECT_LT(rel_err(dwte, numeric_grad(wte, f)), kFdBound);
  EXPECT_LT(rel_err(dwpe, numeric_grad(wpe, f)), kFdBound);
  // Token 2 never occurs: its row gets no gradient.
  for (std::int64_t k = 0; k < c; ++k) EXPECT_EQ(dwte[2 * c + k], 0.0);
}

TEST(LayerNormKernel, MatchesFiniteDifferences) {
  std::mt19937_64 rng(3);
  const std::int64_t n = 3, c = 7;
  Vec x = random_vec(n * c, rng, 2.0), w = random_vec(c, rng), b = random_vec(c, rng);
  const Vec r = random_vec(n * c, rng);
  Vec out(n * c), mean(n), rstd(n);
  auto f = [&] {
    layernorm_forward<double>(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n,
                              c);
    return dot(out, r);
  };
  f();
  Vec dx(n * c), dw(c), db(c);
  layernorm_backward_input<double>(dx.data(), r.data(), x.data(), w.data(), mean.data(),
                                   rstd.data(), n, c);
  layernorm_backward_weight<double>(dw.data(), db.data(), r.data(), x.data(), mean.data(),
                                    rstd.data(), n, c);
  EXPECT_LT(rel_err(dx, numeric_grad(x, f)), kFdBound);
  EXPECT_LT(rel_err(dw, numeric_grad(w, f)), kFdBound);
  EXPECT_LT(rel_err(db, numeric_grad(b, f)), kFdBound);

  f();
  auto xf = to_float(x), wf = to_float(w), bf = to_float(b), rf = to_float(r);
  std::vector<float> outf(n * c), meanf(n), rstdf(n), dxf(n * c), dwf(c), dbf(c);
  layernorm_forward<float>(outf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(),
                           n, c);
  layernorm_backward_input<float>(dxf.data(), rf.data(), xf.data(), wf.data(), meanf.data(),
                                  rstdf.data(), n, c);
  layernorm_backward_weight<float>(dwf.data(), dbf.data(), rf.data(), xf.data(), meanf.data(),
                                   rstdf.data(), n, c);
  EXPECT_LT(rel_err(outf, out), kFloatBound);
  EXPECT_LT(rel_err(dxf, dx), kFloatBound);
  EXPECT_LT(rel_err(dwf, dw), kFloatBound);
}

TEST(GeluKernel, MatchesFiniteDifferencesAndKnownValues) {
  std::mt19937_64 rng(4);
  const std::int64_t n = 11;
  Vec x = random_vec(n, rng, 2.0);
  const Vec r = random_vec(n, rng);
  Vec out(n);
  auto f = [&] {
    gelu_forward<double>(out.data(), x.data(), n);
    return dot(out, r);
  };
  Vec dx(n);
  gelu_backward<double>(dx.data(), x.data(), r.data(), n);
  EXPECT_LT(rel_err(dx, numeric_grad(x, f)), kFdBound);
  // gelu_tanh(1) = 0.5 (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411919906...
  double one = 1.0, y = 0.0;
  gelu_forward<double>(&y, &one, 1);
  EXPECT_NEAR(y, 0.8411919906082768, 1e-12);
  auto xf = to_float(x), rf = to_float(r);
  std::vector<float> outf(n), dxf(n);
  gelu_forward<float>(outf.data(), xf.data(), n);
  gelu_backward<float>(dxf.data(), xf.data(), rf.data(), n);
  f();
  EXPECT_LT(rel_err(outf, out), kFloatBound);
  EXPECT_LT(rel_err(dxf, dx), kFloatBound);
}

TEST(AttentionKernel, MatchesFiniteDifferencesAndIsCausal) {
  std::mt19937_64 rng(5);
  const std::int64_t b = 2, t = 5, c = 8, nh = 2;
  Vec qkv = random_vec(b * t * 3 * c, rng);
  const Vec r = random_vec(b * t * c, rng);
  Vec out(b * t * c), att(b * nh * t * t);
  auto f = [&] {
    attention_forward<double>(out.data(), att.data(), qkv.data(), b, t, c, nh);
    return dot(out, r);
  };
  f();
  for (std::int64_t row = 0; row < b * nh * t; ++row) {
    const std::int64_t q = row % t;
    double sum = 0;
    for (std::int64_t j = 0; j < t; ++j) {
      const double a = att[row * t + j];
      if (j > q) {
        EXPECT_EQ(a, 0.0);
      }
      sum += a;
    }
    EXPECT_NEAR(sum, 1.0, 1e-12);
  }
  Vec dqkv(b * t * 3 * c);
  attention_backward<double>(dqkv.data(), r.data(), qkv.data(), att.data(), b, t, c, nh);
  EXPECT_LT(rel_err(dqkv, numeric_grad(qkv, f)), kFdBound);
  // Position 0 attends only to itself: its output is its value vector.
  f();
  for (std::int64_t k = 0; k < c; ++k) EXPECT_NEAR(out[k], qkv[2 * c + k], 1e-12);

  auto qkvf = to_float(qkv), rf = to_float(r);
  std::vector<float> outf(b * t * c), attf(b * nh * t * t), dqkvf(b * t * 3 * c);
  attention_forward<float>(outf.data(), attf.data(), qkvf.data(), b, t, c, nh);
  attention_backward<float>(dqkvf.data(), rf.data(), qkvf.data(), attf.data(), b, t, c, nh);
  EXPECT_LT(rel_err(outf, out), kFloatBound);
  EXPECT_LT(rel_err(dqkvf, dqkv), kFloatBound);
}

// The causal mask holds for values that are not finite too: a NaN key leaves the probabilities
// above the diagonal exactly zero, and an inf in a later position's value or output gradient
// does not reach the gradients of the positions before it. (fp32: the softmax rows run over
// whole vectors of 16 columns past the diagonal; t = 37 and 100 end mid-vector.)
TEST(AttentionKernel, NonFiniteValuesStayBehindTheCausalMask) {
  for (const std::int64_t t : {37, 100}) {
    SCOPED_TRACE("t = " + std::to_string(t));
    const std::int64_t b = 1, c = 16, nh = 2, hs = c / nh, bad = t / 2;
    std::mt19937_64 rng(7);
    std::vector<float> qkv = to_float(random_vec(b * t * 3 * c, rng));
    const std::vector<float> dout = to_float(random_vec(b * t * c, rng));
    std::vector<float> out(b * t * c), att(b * nh * t * t), dqkv(b * t * 3 * c);
    qkv[bad * 3 * c + c] = std::numeric_limits<float>::quiet_NaN();  // key of position bad, head 0
    attention_forward<float>(out.data(), att.data(), qkv.data(), b, t, c, nh);
    for (std::int64_t h = 0; h < nh; ++h) {
      for (std::int64_t q = 0; q < t; ++q) {
        for (std::int64_t j = q + 1; j < t; ++j) {
          ASSERT_EQ(att[(h * t + q) * t + j], 0.0f)
              << "head " << h << ", row " << q << ", col " << j;
        }
      }
    }
    // Head 0's rows before `bad` never see its key: finite.
    for (std::int64_t q = 0; q < bad; ++q) ASSERT_TRUE(std::isfinite(out[q * c])) << "row " << q;

    // An infinite value at position `bad` (head 1): the positions before it keep finite query
    // gradients (their keys and values are seen by the rows after `bad`, so theirs may not be).
    qkv[bad * 3 * c + c] = 0.5f;
    qkv[bad * 3 * c + 2 * c + hs] = std::numeric_limits<float>::infinity();
    attention_forward<float>(out.data(), att.data(), qkv.data(), b, t, c, nh);
    attention_backward<float>(dqkv.data(), dout.data(), qkv.data(), att.data(), b, t, c, nh);
    for (std::int64_t q = 0; q < bad; ++q) {
      for (std::int64_t k = 0; k < c; ++k) {
        ASSERT_TRUE(std::isfinite(dqkv[q * 3 * c + k])) << "position " << q << ", element " << k;
      }
    }
  }
}

TEST(CrossEntropyKernel, MatchesFiniteDifferences) {
  std::mt19937_64 rng(6);
  const std::int64_t n = 4, v = 6;
  const double scale = 0.25;
  const std::vector<std::int32_t> targets = {0, 5, 2, 2};
  Vec logits = random_vec(n * v, rng, 3.0);
  Vec probs(n * v), losses(n);
  auto f = [&] {
    return scale * cross_entropy_forward<double>(probs.data(), losses.data(), logits.data(),
                                                 targets.data(), n, v);
  };
  const double loss = f() / scale;
  double expected = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (std::int64_t k = 0; k < v; ++k) s += std::exp(logits[i * v + k]);
    expected += std::log(s) - logits[i * v + targets[i]];
  }
  EXPECT_NEAR(loss, expected / n, 1e-12);
  Vec dlogits(n * v);
  cross_entropy_backward<double>(dlogits.data(), probs.data(), targets.data(), scale, n, v);
  EXPECT_LT(rel_err(dlogits, numeric_grad(logits, f)), kFdBound);

  // In place (probs aliasing logits), fp32 against fp64.
  f();
  std::vector<float> buf = to_float(logits), lossesf(n);
  const double lossf =
      cross_entropy_forward<float>(buf.data(), lossesf.data(), buf.data(), targets.data(), n, v);
  EXPECT_LT(std::abs(lossf - loss) / loss, kFloatBound);
  cross_entropy_backward<float>(buf.data(), buf.data(), targets.data(), scale, n, v);
  EXPECT_LT(rel_err(buf, dlogits), kFloatBound);
}

TEST(ResidualKernel, Adds) {
  const std::vector<float> a = {1, 2, 3}, b = {0.5f, -2, 4};
  std::vector<float> out(3);
  residual_forward<float>(out.data(), a.data(), b.data(), 3);
  EXPECT_EQ(out, (std::vector<float>{1.5f, 0, 7}));
}

}  // namespace
}  // namespace pipetrain::kernels::cpu
