// The CPU kernels' threaded paths (src/core/parallel.h): at shapes large enough to be cut into
// several chunks (odd sizes, so the last chunk is short), the fp32 results are bit-identical on
// 1, 2 and 3 threads, and within fp32 tolerance of the fp64 kernels, on fresh random inputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../../src/core/parallel.h"
#include "../../support/test_seed.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

class Threads {
 public:
  explicit Threads(int k) { pipetrain::detail::set_parallel_threads_for_testing(k); }
  ~Threads() { pipetrain::detail::set_parallel_threads_for_testing(0); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
};

template <typename T>
std::vector<T> random_vec(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<T> v(n);
  for (T& x : v) x = static_cast<T>(normal(rng));
  return v;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

// Index of the first element whose bits differ, or -1.
std::int64_t first_bit_difference(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) return static_cast<std::int64_t>(i);
  }
  return -1;
}

// run() returns every fp32 output of one call, concatenated; it must be the same bits on 1, 2
// and 3 threads. Returns the 1-thread result.
std::vector<float> expect_same_bits_on_any_thread_count(
    const std::function<std::vector<float>()>& run) {
  std::vector<float> one;
  {
    Threads t(1);
    one = run();
  }
  for (int k : {2, 3}) {
    Threads t(k);
    const std::vector<float> got = run();
    const std::int64_t at = first_bit_difference(one, got);
    EXPECT_EQ(at, -1) << "on " << pipetrain::detail::parallel_threads() << " threads, element "
                      << at << ": " << (at >= 0 ? got[at] : 0.0f) << " vs "
                      << (at >= 0 ? one[at] : 0.0f) << " on one thread";
  }
  return one;
}

// max |a - b| / max |b|.
double rel_err(const std::vector<float>& a, const std::vector<double>& b) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    norm = std::max(norm, std::abs(b[i]));
  }
  return diff / std::max(norm, 1e-300);
}

constexpr double kFloatBound = 1e-5;

template <typename T>
void append(std::vector<T>& to, const std::vector<T>& from) {
  to.insert(to.end(), from.begin(), from.end());
}

TEST(KernelThreads, LayerNorm) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::int64_t n = 1031, c = 203;  // 13 row chunks; 4 column chunks (the last of 11); rows
                                         // of 25 eight-lane steps and a tail of 3
  const auto x = random_vec<float>(n * c, rng, 2.0), w = random_vec<float>(c, rng),
             bias = random_vec<float>(c, rng), dy = random_vec<float>(n * c, rng);
  const auto dw0 = random_vec<float>(c, rng), db0 = random_vec<float>(c, rng);
  auto run = [&]<typename T>(const std::vector<T>& xi, const std::vector<T>& wi,
                             const std::vector<T>& bi, const std::vector<T>& dyi, std::vector<T> dw,
                             std::vector<T> db) {
    std::vector<T> out(n * c), mean(n), rstd(n), dx(n * c);
    layernorm_forward(out.data(), mean.data(), rstd.data(), xi.data(), wi.data(), bi.data(), n, c);
    layernorm_backward_input(dx.data(), dyi.data(), xi.data(), wi.data(), mean.data(), rstd.data(),
                             n, c);
    layernorm_backward_weight(dw.data(), db.data(), dyi.data(), xi.data(), mean.data(), rstd.data(),
                              n, c);
    std::vector<T> all = out;
    append(all, mean);
    append(all, rstd);
    append(all, dx);
    append(all, dw);
    append(all, db);
    return all;
  };
  const auto got =
      expect_same_bits_on_any_thread_count([&] { return run(x, w, bias, dy, dw0, db0); });
  const auto want = run(to_double(x), to_double(w), to_double(bias), to_double(dy), to_double(dw0),
                        to_double(db0));
  EXPECT_LT(rel_err(got, want), kFloatBound);
}

TEST(KernelThreads, CrossEntropy) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::int64_t n = 37, v = 1001;  // 3 row chunks
  const auto logits = random_vec<float>(n * v, rng, 3.0);
  std::vector<std::int32_t> targets(n);
  for (auto& t : targets) t = static_cast<std::int32_t>(rng() % v);
  auto run = [&]<typename T>(std::vector<T> z, double* mean) {
    std::vector<T> losses(n);
    *mean = cross_entropy_forward(z.data(), losses.data(), z.data(), targets.data(), n, v);
    cross_entropy_backward(z.data(), z.data(), targets.data(), 0.75, n, v);
    append(z, losses);
    return z;
  };
  double mean1 = 0, mean64 = 0;
  const auto got = expect_same_bits_on_any_thread_count([&] {
    double mean = 0;
    auto r = run(logits, &mean);
    r.push_back(static_cast<float>(mean));  // the mean too, through its fp32 rounding
    mean1 = mean;
    return r;
  });
  auto want = run(to_double(logits), &mean64);
  want.push_back(mean64);
  EXPECT_LT(rel_err(got, want), kFloatBound);
  EXPECT_NEAR(mean1, mean64, kFloatBound * mean64);
}

// The fp32 row kernels (vectorised max and exp) at the edges: spreads of hundreds, so that most
// exponentials underflow to 0; rows of every length 1..20 (the 8-lane tails); NaN and -inf.
TEST(KernelThreads, CrossEntropyWideRangesShortRowsAndNonFinite) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (std::int64_t v = 1; v <= 20; ++v) {
    const std::int64_t n = 3;
    const auto z = random_vec<float>(n * v, rng, 100.0);
    std::vector<std::int32_t> targets(n);
    for (auto& t : targets) t = static_cast<std::int32_t>(rng() % v);
    std::vector<float> p(n * v), l(n);
    std::vector<double> p64(n * v), l64(n);
    cross_entropy_forward(p.data(), l.data(), z.data(), targets.data(), n, v);
    const auto z64 = to_double(z);
    cross_entropy_forward(p64.data(), l64.data(), z64.data(), targets.data(), n, v);
    // Relative error: a few fp32 roundings, plus that of the fp32 difference z - max (the fp64
    // kernel's is exact), which exp turns into |z - max| * 2^-24 relative.
    for (std::int64_t r = 0; r < n; ++r) {
      const float zmax = *std::max_element(z.begin() + r * v, z.begin() + (r + 1) * v);
      for (std::int64_t k = 0; k < v; ++k) {
        const std::int64_t i = r * v + k;
        const double bound = p64[i] * (1e-6 + 6e-8 * std::abs(double(z[i]) - zmax)) + 1e-44;
        EXPECT_NEAR(p[i], p64[i], bound) << "v=" << v << " element " << i;
      }
    }
    for (std::int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(l[i], l64[i], 1e-5 * std::abs(l64[i]) + 1e-6) << "v=" << v;
    }
  }
  const std::int64_t v = 37;
  for (float bad :
       {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    for (std::int64_t at : {0, 5, 36}) {
      std::vector<float> z(v, 0.5f), p(v), l(1);
      z[at] = bad;
      const std::int32_t target = at == 5 ? 6 : 5;
      const double mean = cross_entropy_forward(p.data(), l.data(), z.data(), &target, 1, v);
      if (std::isnan(bad)) {
        EXPECT_TRUE(std::isnan(mean)) << "NaN at " << at;
      } else {
        EXPECT_EQ(p[at], 0.0f);  // exp(-inf) = 0, the others share the probability
        EXPECT_NEAR(mean, std::log(36.0), 1e-6);
      }
    }
  }
}

// 2 items x 4 heads = 8 pairs; T = 203 rows: six causal blocks of 32 and one of 11.
constexpr std::int64_t kAttB = 2, kAttT = 203, kAttC = 32, kAttNh = 4;

// Forward then backward of one attention call; every output, concatenated.
template <typename T>
std::vector<T> attention_outputs(const std::vector<T>& qkv, const std::vector<T>& dout) {
  std::vector<T> out(kAttB * kAttT * kAttC), att(kAttB * kAttNh * kAttT * kAttT),
      dq(kAttB * kAttT * 3 * kAttC);
  attention_forward(out.data(), att.data(), qkv.data(), kAttB, kAttT, kAttC, kAttNh);
  attention_backward(dq.data(), dout.data(), qkv.data(), att.data(), kAttB, kAttT, kAttC, kAttNh);
  std::vector<T> all = out;
  append(all, att);
  append(all, dq);
  return all;
}

// Sets OpenBLAS's thread count for a scope.
class BlasThreads {
 public:
  explicit BlasThreads(int k) : saved_(cpu_blas_threads()) { set_cpu_blas_threads(k); }
  ~BlasThreads() { set_cpu_blas_threads(saved_); }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  int saved_;
};

TEST(KernelThreads, Attention) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  // The (item, head) pairs run in parallel only where each product inside runs on one BLAS
  // thread (parallel_blas_is_serial()); with OpenBLAS at one thread that holds on any count of
  // the kernels' threads, and the products' bits are the same in every run.
  BlasThreads blas(1);
  EXPECT_TRUE(pipetrain::detail::parallel_blas_is_serial());
  std::mt19937_64 rng(seed);
  const auto qkv = random_vec<float>(kAttB * kAttT * 3 * kAttC, rng),
             dout = random_vec<float>(kAttB * kAttT * kAttC, rng);
  const auto got =
      expect_same_bits_on_any_thread_count([&] { return attention_outputs(qkv, dout); });
  EXPECT_LT(rel_err(got, attention_outputs(to_double(qkv), to_double(dout))), kFloatBound);
}

// What training runs with OpenBLAS's OpenMP build: OpenBLAS at 2 threads, the pairs in an
// OpenMP region of 2 or 3 threads, each product inside on one thread. The same bits on 2 and 3.
TEST(KernelThreads, AttentionPairsInsideOpenMPRegions) {
  if (!pipetrain::detail::parallel_uses_openmp()) {
    GTEST_SKIP() << "the kernels do not run on OpenMP here (OpenBLAS's pthreads build, or "
                    "pipetrain built without OpenMP)";
  }
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  BlasThreads blas(2);
  std::mt19937_64 rng(seed);
  const auto qkv = random_vec<float>(kAttB * kAttT * 3 * kAttC, rng),
             dout = random_vec<float>(kAttB * kAttT * kAttC, rng);
  std::vector<float> two;
  {
    Threads t(2);
    EXPECT_TRUE(pipetrain::detail::parallel_blas_is_serial());
    two = attention_outputs(qkv, dout);
  }
  Threads t(3);
  const std::vector<float> three = attention_outputs(qkv, dout);
  EXPECT_EQ(first_bit_difference(two, three), -1);
  EXPECT_LT(rel_err(three, attention_outputs(to_double(qkv), to_double(dout))), kFloatBound);
}

TEST(KernelThreads, EmbeddingLinearBiasGeluResidual) {
  const unsigned seed = testing::test_seed();
  SCOPED_TRACE(testing::seed_trace(seed));
  std::mt19937_64 rng(seed);
  const std::int64_t b = 4, t = 301, c = 100, vocab = 50;  // 1204 rows; 2 column chunks
  const std::int64_t oc = 130, n = b * t;                  // dbias: 3 column chunks
  std::vector<std::int32_t> tokens(n);
  for (auto& tok : tokens) tok = static_cast<std::int32_t>(rng() % vocab);
  const auto wte = random_vec<float>(vocab * c, rng), wpe = random_vec<float>(t * c, rng),
             dout = random_vec<float>(n * c, rng), w = random_vec<float>(oc * c, rng),
             bias = random_vec<float>(oc, rng), dlin = random_vec<float>(n * oc, rng),
             dwte0 = random_vec<float>(vocab * c, rng), dwpe0 = random_vec<float>(t * c, rng);
  auto run = [&]<typename T>(const std::vector<T>& te, const std::vector<T>& pe,
                             const std::vector<T>& dy, const std::vector<T>& wi,
                             const std::vector<T>& bi, const std::vector<T>& dl,
                             std::vector<T> dwte, std::vector<T> dwpe) {
    std::vector<T> emb(n * c), lin(n * oc), g(n * oc), dg(n * oc), res(n * oc), dw(oc * c, T(0)),
        db(oc, T(0));
    embedding_forward(emb.data(), tokens.data(), te.data(), pe.data(), b, t, c);
    embedding_backward_weight(dwte.data(), dwpe.data(), dy.data(), tokens.data(), b, t, c);
    linear_forward(lin.data(), emb.data(), wi.data(), bi.data(), n, c, oc);
    linear_backward_weight(dw.data(), db.data(), dl.data(), emb.data(), n, c, oc);
    gelu_forward(g.data(), lin.data(), n * oc);
    gelu_backward(dg.data(), lin.data(), dl.data(), n * oc);
    residual_forward(res.data(), g.data(), lin.data(), n * oc);
    std::vector<T> all = emb;
    for (const auto* part : {&dwte, &dwpe, &lin, &dw, &db, &g, &dg, &res}) append(all, *part);
    return all;
  };
  const auto got = expect_same_bits_on_any_thread_count(
      [&] { return run(wte, wpe, dout, w, bias, dlin, dwte0, dwpe0); });
  const auto want = run(to_double(wte), to_double(wpe), to_double(dout), to_double(w),
                        to_double(bias), to_double(dlin), to_double(dwte0), to_double(dwpe0));
  EXPECT_LT(rel_err(got, want), kFloatBound);
}

}  // namespace
}  // namespace pipetrain::kernels::cpu
