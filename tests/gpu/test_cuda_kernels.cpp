// Every CUDA kernel against its CPU twin (fp64 reference on the same, already rounded, inputs).
// Outputs are poisoned with NaN before each launch so an element a kernel forgets to write
// fails; inputs are fresh random numbers each run (the seed is printed on failure).
// Every test skips when no CUDA device is present.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "pipetrain/cuda/allocator.h"
#include "pipetrain/cuda/device.h"
#include "pipetrain/error.h"
#include "pipetrain/kernels/cpu.h"
#include "pipetrain/kernels/cuda.h"
#include "pipetrain/optim/update_rules.h"
#include "pipetrain/tensor.h"
#include "test_seed.h"

namespace pipetrain {
namespace {

namespace kc = kernels::cuda;
namespace cpu = kernels::cpu;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Configurations: storage type T, gradient type G, and the tolerance of T's results.
struct Fp32 {
  using T = float;
  using G = float;
  static constexpr double kRtol = 1e-5, kAtol = 1e-5;
};
struct Bf16 {
  using T = BFloat16;
  using G = BFloat16;
  static constexpr double kRtol = 2e-2, kAtol = 2e-2;
};
struct Bf16Fp32Grad {
  using T = BFloat16;
  using G = float;
  static constexpr double kRtol = 2e-2, kAtol = 2e-2;
};

// Fresh inputs every run; PIPETRAIN_TEST_SEED=<n> makes a run repeatable (tools/gpu-check runs
// two seeds): see tests/support/test_seed.h.
using testing::test_seed;

class Random {
 public:
  Random() : seed_(test_seed()), gen_(seed_) {}
  unsigned seed() const { return seed_; }
  std::vector<float> uniform(std::int64_t n, float lo, float hi) {
    std::uniform_real_distribution<float> dist(lo, hi);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = dist(gen_);
    return v;
  }
  std::vector<std::int32_t> ints(std::int64_t n, std::int32_t lo, std::int32_t hi) {
    std::uniform_int_distribution<std::int32_t> dist(lo, hi - 1);
    std::vector<std::int32_t> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = dist(gen_);
    return v;
  }

 private:
  unsigned seed_;
  std::mt19937 gen_;
};

// A CUDA tensor holding `values` stored as T; *seen receives the values as stored (bf16-rounded).
template <typename T>
Tensor upload(const std::vector<float>& values, std::vector<double>* seen = nullptr) {
  const Tensor host = Tensor::from_vector(values).to(dtype_of<T>());
  if (seen != nullptr) *seen = host.to_vector<double>();
  return host.to(Device::kCuda);
}

Tensor upload_ints(const std::vector<std::int32_t>& values) {
  return Tensor::from_vector(values).to(Device::kCuda);
}

template <typename T>
Tensor poisoned(std::int64_t n) {
  Tensor t = Tensor::empty({n}, dtype_of<T>(), Device::kCuda);
  t.fill(kNaN);
  return t;
}

std::vector<double> download(const Tensor& t) {
  cuda::synchronize(nullptr);
  return t.to_vector<double>();
}

std::vector<double> sub(const std::vector<double>& v, std::int64_t begin, std::int64_t n) {
  return {v.begin() + begin, v.begin() + begin + n};
}

// Fails (and shows the first few offenders) where |got - want| > atol + rtol |want|; NaN fails.
void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rtol,
                  double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int shown = 0;
  std::size_t bad = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const bool ok = std::abs(got[i] - want[i]) <= atol + rtol * std::abs(want[i]);
    if (!ok) {
      ++bad;
      if (shown++ < 5) {
        ADD_FAILURE() << what << "[" << i << "] = " << got[i] << ", want " << want[i];
      }
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " elements differ";
}

template <typename Config>
class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) {
      GTEST_SKIP() << "no CUDA device (" << cuda_unavailable_reason() << ")";
    }
  }
  Random rng_;
};

using Configs = ::testing::Types<Fp32, Bf16, Bf16Fp32Grad>;
TYPED_TEST_SUITE(CudaKernels, Configs);

#define SEED_TRACE() SCOPED_TRACE(testing::seed_trace(this->rng_.seed()))

TYPED_TEST(CudaKernels, Gelu) {
  using T = typename TypeParam::T;
  SEED_TRACE();
  const double rtol = TypeParam::kRtol, atol = TypeParam::kAtol;
  for (std::int64_t n : {1, 7, 64, 1003, 4101}) {
    for (std::int64_t offset : {0, 1}) {  // 1: misaligned pointers take the scalar path
      SCOPED_TRACE("n=" + std::to_string(n) + " offset=" + std::to_string(offset));
      std::vector<double> x, dy;
      Tensor inp = upload<T>(this->rng_.uniform(n + 1, -4, 4), &x);
      Tensor dout = upload<T>(this->rng_.uniform(n + 1, -1, 1), &dy);
      Tensor out = poisoned<T>(n + 1);
      kc::gelu_forward<T>(out.data<T>() + offset, inp.data<T>() + offset, n, nullptr);
      std::vector<double> want(n), got = download(out);
      cpu::gelu_forward<double>(want.data(), x.data() + offset, n);
      expect_close(sub(got, offset, n), want, rtol, atol, "gelu_forward");
      EXPECT_TRUE(std::isnan(got[offset == 0 ? n : 0])) << "wrote outside [0, n)";

      Tensor dinp = poisoned<T>(n + 1);
      kc::gelu_backward<T>(dinp.data<T>() + offset, inp.data<T>() + offset,
                           dout.data<T>() + offset, n, nullptr);
      cpu::gelu_backward<double>(want.data(), x.data() + offset, dy.data() + offset, n);
      expect_close(sub(download(dinp), offset, n), want, rtol, atol, "gelu_backward");
      // In place: dinp aliases dout.
      kc::gelu_backward<T>(dout.data<T>() + offset, inp.data<T>() + offset,
                           dout.data<T>() + offset, n, nullptr);
      expect_close(sub(download(dout), offset, n), want, rtol, atol, "gelu_backward in place");
    }
  }
}

TYPED_TEST(CudaKernels, Residual) {
  using T = typename TypeParam::T;
  SEED_TRACE();
  for (std::int64_t n : {1, 9, 1000, 4099}) {
    std::vector<double> a, b;
    Tensor ta = upload<T>(this->rng_.uniform(n, -3, 3), &a);
    Tensor tb = upload<T>(this->rng_.uniform(n, -3, 3), &b);
    Tensor out = poisoned<T>(n);
    kc::residual_forward<T>(out.data<T>(), ta.data<T>(), tb.data<T>(), n, nullptr);
    std::vector<double> want(n);
    cpu::residual_forward<double>(want.data(), a.data(), b.data(), n);
    expect_close(download(out), want, TypeParam::kRtol, TypeParam::kAtol, "residual");
  }
}

TYPED_TEST(CudaKernels, LayerNorm) {
  using T = typename TypeParam::T;
  using G = typename TypeParam::G;
  SEED_TRACE();
  const double rtol = TypeParam::kRtol, atol = TypeParam::kAtol;
  std::vector<std::pair<std::int64_t, std::int64_t>> shapes = {{1, 8}, {5, 40}, {37, 776}};
  if (std::is_same_v<T, float>) shapes.push_back({3, 12});
  for (auto [n, c] : shapes) {
    SCOPED_TRACE("n=" + std::to_string(n) + " c=" + std::to_string(c));
    std::vector<double> x, w, b, dy, dw0, db0;
    Tensor inp = upload<T>(this->rng_.uniform(n * c, -2, 2.5), &x);
    Tensor weight = upload<T>(this->rng_.uniform(c, 0.5, 1.5), &w);
    Tensor bias = upload<T>(this->rng_.uniform(c, -0.5, 0.5), &b);
    Tensor dout = upload<T>(this->rng_.uniform(n * c, -1, 1), &dy);
    Tensor out = poisoned<T>(n * c);
    Tensor mean = poisoned<float>(n), rstd = poisoned<float>(n);
    kc::layernorm_forward<T>(out.data<T>(), mean.data<float>(), rstd.data<float>(),
                             inp.data<T>(), weight.data<T>(), bias.data<T>(), n, c, nullptr);
    std::vector<double> want(n * c), want_mean(n), want_rstd(n);
    cpu::layernorm_forward<double>(want.data(), want_mean.data(), want_rstd.data(), x.data(),
                                   w.data(), b.data(), n, c);
    expect_close(download(out), want, rtol, atol, "layernorm_forward out");
    expect_close(download(mean), want_mean, 1e-5, 1e-5, "layernorm_forward mean");
    expect_close(download(rstd), want_rstd, 1e-4, 1e-5, "layernorm_forward rstd");

    Tensor dinp = poisoned<T>(n * c);
    kc::layernorm_backward_input<T>(dinp.data<T>(), dout.data<T>(), inp.data<T>(),
                                    weight.data<T>(), mean.data<float>(), rstd.data<float>(), n,
                                    c, nullptr);
    cpu::layernorm_backward_input<double>(want.data(), dy.data(), x.data(), w.data(),
                                          want_mean.data(), want_rstd.data(), n, c);
    expect_close(download(dinp), want, rtol, 10 * atol, "layernorm_backward_input");

    // The weight gradient accumulates: start from random values.
    Tensor dweight = upload<G>(this->rng_.uniform(c, -1, 1), &dw0);
    Tensor dbias = upload<G>(this->rng_.uniform(c, -1, 1), &db0);
    kc::layernorm_backward_weight<T, G>(dweight.data<G>(), dbias.data<G>(), dout.data<T>(),
                                        inp.data<T>(), mean.data<float>(), rstd.data<float>(),
                                        n, c, nullptr);
    cpu::layernorm_backward_weight<double>(dw0.data(), db0.data(), dy.data(), x.data(),
                                           want_mean.data(), want_rstd.data(), n, c);
    expect_close(download(dweight), dw0, rtol, 10 * atol, "layernorm dweight");
    expect_close(download(dbias), db0, rtol, 10 * atol, "layernorm dbias");
  }
}

TYPED_TEST(CudaKernels, Embedding) {
  using T = typename TypeParam::T;
  using G = typename TypeParam::G;
  SEED_TRACE();
  const std::int64_t b = 3, t = 5, v = 11, max_t = 7;
  for (std::int64_t c : {8, 24}) {
    SCOPED_TRACE("c=" + std::to_string(c));
    std::vector<double> wte, wpe, dy, dwte, dwpe;
    const std::vector<std::int32_t> tokens = this->rng_.ints(b * t, 0, static_cast<int>(v));
    Tensor ttokens = upload_ints(tokens);
    Tensor twte = upload<T>(this->rng_.uniform(v * c, -1, 1), &wte);
    Tensor twpe = upload<T>(this->rng_.uniform(max_t * c, -1, 1), &wpe);
    Tensor dout = upload<T>(this->rng_.uniform(b * t * c, -1, 1), &dy);
    Tensor out = poisoned<T>(b * t * c);
    kc::embedding_forward<T>(out.data<T>(), ttokens.data<std::int32_t>(), twte.data<T>(),
                             twpe.data<T>(), b, t, c, nullptr);
    std::vector<double> want(b * t * c);
    cpu::embedding_forward<double>(want.data(), tokens.data(), wte.data(), wpe.data(), b, t, c);
    expect_close(download(out), want, TypeParam::kRtol, TypeParam::kAtol, "embedding_forward");

    Tensor tdwte = upload<G>(this->rng_.uniform(v * c, -1, 1), &dwte);
    Tensor tdwpe = upload<G>(this->rng_.uniform(max_t * c, -1, 1), &dwpe);
    kc::embedding_backward_weight<T, G>(tdwte.data<G>(), tdwpe.data<G>(), dout.data<T>(),
                                        ttokens.data<std::int32_t>(), b, t, c, nullptr);
    cpu::embedding_backward_weight<double>(dwte.data(), dwpe.data(), dy.data(), tokens.data(),
                                           b, t, c);
    expect_close(download(tdwte), dwte, TypeParam::kRtol, TypeParam::kAtol, "dwte");
    expect_close(download(tdwpe), dwpe, TypeParam::kRtol, TypeParam::kAtol, "dwpe");
  }
}

TYPED_TEST(CudaKernels, Linear) {
  using T = typename TypeParam::T;
  using G = typename TypeParam::G;
  SEED_TRACE();
  const double rtol = TypeParam::kRtol, atol = 10 * TypeParam::kAtol;
  struct Shape3 {
    std::int64_t n, c, oc;
  };
  std::vector<Shape3> shapes = {{37, 24, 40}, {1, 8, 16}, {64, 128, 72}};
  if (std::is_same_v<T, float>) shapes.push_back({7, 13, 5});
  for (const Shape3& s : shapes) {
    SCOPED_TRACE("n=" + std::to_string(s.n) + " c=" + std::to_string(s.c) +
                 " oc=" + std::to_string(s.oc));
    std::vector<double> x, w, bias, dy, dw, db;
    Tensor inp = upload<T>(this->rng_.uniform(s.n * s.c, -1, 1), &x);
    Tensor weight = upload<T>(this->rng_.uniform(s.oc * s.c, -1, 1), &w);
    Tensor tbias = upload<T>(this->rng_.uniform(s.oc, -1, 1), &bias);
    Tensor dout = upload<T>(this->rng_.uniform(s.n * s.oc, -1, 1), &dy);
    std::vector<double> want(s.n * s.oc);
    for (bool with_bias : {true, false}) {
      Tensor out = poisoned<T>(s.n * s.oc);
      kc::linear_forward<T>(out.data<T>(), inp.data<T>(), weight.data<T>(),
                            with_bias ? tbias.data<T>() : nullptr, s.n, s.c, s.oc, nullptr);
      cpu::linear_forward<double>(want.data(), x.data(), w.data(),
                                  with_bias ? bias.data() : nullptr, s.n, s.c, s.oc);
      expect_close(download(out), want, rtol, atol,
                   with_bias ? "linear_forward with bias" : "linear_forward");
    }
    Tensor dinp = poisoned<T>(s.n * s.c);
    kc::linear_backward_input<T>(dinp.data<T>(), dout.data<T>(), weight.data<T>(), s.n, s.c,
                                 s.oc, nullptr);
    std::vector<double> want_dinp(s.n * s.c);
    cpu::linear_backward_input<double>(want_dinp.data(), dy.data(), w.data(), s.n, s.c, s.oc);
    expect_close(download(dinp), want_dinp, rtol, atol, "linear_backward_input");

    Tensor dweight = upload<G>(this->rng_.uniform(s.oc * s.c, -1, 1), &dw);
    Tensor dbias = upload<G>(this->rng_.uniform(s.oc, -1, 1), &db);
    kc::linear_backward_weight<T, G>(dweight.data<G>(), dbias.data<G>(), dout.data<T>(),
                                     inp.data<T>(), s.n, s.c, s.oc, nullptr);
    cpu::linear_backward_weight<double>(dw.data(), db.data(), dy.data(), x.data(), s.n, s.c,
                                        s.oc);
    expect_close(download(dweight), dw, rtol, atol, "linear dweight (beta = 1)");
    expect_close(download(dbias), db, rtol, atol, "linear dbias");
  }
}

TYPED_TEST(CudaKernels, GemmTransposesAndLeadingDimensions) {
  using T = typename TypeParam::T;
  using G = typename TypeParam::G;
  SEED_TRACE();
  const std::int64_t m = 7, n = 5, k = 9, pad = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      SCOPED_TRACE(std::string("trans_a=") + (ta ? "1" : "0") + " trans_b=" + (tb ? "1" : "0"));
      const std::int64_t a_rows = ta ? k : m, a_cols = ta ? m : k;
      const std::int64_t b_rows = tb ? n : k, b_cols = tb ? k : n;
      const std::int64_t lda = a_cols + pad, ldb = b_cols + pad, ldc = n + pad;
      std::vector<double> a, b, c;
      Tensor ta_ = upload<T>(this->rng_.uniform(a_rows * lda, -1, 1), &a);
      Tensor tb_ = upload<T>(this->rng_.uniform(b_rows * ldb, -1, 1), &b);
      Tensor tc = upload<G>(this->rng_.uniform(m * ldc, -1, 1), &c);
      kc::gemm(ta, tb, m, n, k, 1.5f, ta_.data<T>(), lda, tb_.data<T>(), ldb, 0.5f,
               tc.data<G>(), ldc, dtype_of<T>(), dtype_of<G>(), nullptr, nullptr);
      cpu::gemm<double>(ta, tb, m, n, k, 1.5, a.data(), lda, b.data(), ldb, 0.5, c.data(), ldc);
      // Padding columns of C must be untouched: the reference leaves them as they were.
      expect_close(download(tc), c, TypeParam::kRtol, 10 * TypeParam::kAtol, "gemm");
    }
  }
}

TYPED_TEST(CudaKernels, CrossEntropyFused) {
  using T = typename TypeParam::T;
  SEED_TRACE();
  const double scale = 1.5;
  const bool fp32 = std::is_same_v<T, float>;
  const double rtol = fp32 ? 1e-4 : TypeParam::kRtol;
  for (auto [n, v] : std::vector<std::pair<std::int64_t, std::int64_t>>{
           {1, 5}, {7, 1000}, {3, 50257}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " v=" + std::to_string(v));
    std::vector<double> z;
    const std::vector<float> logits_values = this->rng_.uniform(n * v, -5, 5);
    Tensor logits = upload<T>(logits_values, &z);
    const std::vector<std::int32_t> targets = this->rng_.ints(n, 0, static_cast<int>(v));
    Tensor ttargets = upload_ints(targets);
    std::vector<double> probs(n * v), losses(n), dlogits(n * v);
    cpu::cross_entropy_forward<double>(probs.data(), losses.data(), z.data(), targets.data(), n,
                                       v);
    cpu::cross_entropy_backward<double>(dlogits.data(), probs.data(), targets.data(), scale, n,
                                        v);
    const double datol = fp32 ? 1e-7 : 1e-5;

    Tensor tlosses = poisoned<float>(n);
    Tensor tdlogits = poisoned<T>(n * v);
    kc::cross_entropy_fused<T>(tlosses.data<float>(), tdlogits.data<T>(), logits.data<T>(),
                               ttargets.data<std::int32_t>(), scale, n, v, nullptr);
    expect_close(download(tlosses), losses, 1e-4, 1e-5, "losses");
    expect_close(download(tdlogits), dlogits, rtol, datol, "dlogits");

    // Forward only.
    Tensor only = poisoned<float>(n);
    kc::cross_entropy_fused<T>(only.data<float>(), nullptr, logits.data<T>(),
                               ttargets.data<std::int32_t>(), scale, n, v, nullptr);
    expect_close(download(only), losses, 1e-4, 1e-5, "losses (no gradient)");

    // In place: the gradient overwrites the logits.
    Tensor inplace = upload<T>(logits_values);
    Tensor losses2 = poisoned<float>(n);
    kc::cross_entropy_fused<T>(losses2.data<float>(), inplace.data<T>(), inplace.data<T>(),
                               ttargets.data<std::int32_t>(), scale, n, v, nullptr);
    expect_close(download(losses2), losses, 1e-4, 1e-5, "losses (in place)");
    expect_close(download(inplace), dlogits, rtol, datol, "dlogits (in place)");
  }
}

TYPED_TEST(CudaKernels, AttentionReference) {
  using T = typename TypeParam::T;
  SEED_TRACE();
  const double rtol = TypeParam::kRtol, atol = 10 * TypeParam::kAtol;
  struct Dims {
    std::int64_t b, t, c, nh;
  };
  for (const Dims& d : std::vector<Dims>{{1, 1, 8, 1}, {2, 7, 24, 3}, {1, 33, 64, 4}}) {
    SCOPED_TRACE("b=" + std::to_string(d.b) + " t=" + std::to_string(d.t) +
                 " c=" + std::to_string(d.c) + " nh=" + std::to_string(d.nh));
    const std::int64_t qkv_n = d.b * d.t * 3 * d.c, out_n = d.b * d.t * d.c;
    const std::int64_t att_n = d.b * d.nh * d.t * d.t;
    std::vector<double> qkv, dy;
    Tensor tqkv = upload<T>(this->rng_.uniform(qkv_n, -1, 1), &qkv);
    Tensor tdout = upload<T>(this->rng_.uniform(out_n, -1, 1), &dy);
    Tensor out = poisoned<T>(out_n);
    Tensor att = poisoned<float>(att_n);
    kc::attention_forward<T>(out.data<T>(), att.data<float>(), tqkv.data<T>(), d.b, d.t, d.c,
                             d.nh, nullptr);
    std::vector<double> want_out(out_n), want_att(att_n), want_dqkv(qkv_n);
    cpu::attention_forward<double>(want_out.data(), want_att.data(), qkv.data(), d.b, d.t, d.c,
                                   d.nh);
    expect_close(download(out), want_out, rtol, atol, "attention out");
    expect_close(download(att), want_att, 1e-4, 1e-6, "attention probabilities");

    Tensor scratch = poisoned<float>(att_n);
    Tensor dqkv = poisoned<T>(qkv_n);
    kc::attention_backward<T>(dqkv.data<T>(), scratch.data<float>(), tdout.data<T>(),
                              tqkv.data<T>(), att.data<float>(), d.b, d.t, d.c, d.nh, nullptr);
    cpu::attention_backward<double>(want_dqkv.data(), dy.data(), qkv.data(), want_att.data(),
                                    d.b, d.t, d.c, d.nh);
    expect_close(download(dqkv), want_dqkv, rtol, atol, "attention dqkv");
  }
}

TYPED_TEST(CudaKernels, SumOfSquaresAccumulates) {
  using T = typename TypeParam::T;
  SEED_TRACE();
  for (std::int64_t n : {1, 1000, (1 << 20) + 3}) {
    std::vector<double> x;
    Tensor tx = upload<T>(this->rng_.uniform(n, -2, 2), &x);
    Tensor out = Tensor::from_vector(std::vector<double>{2.5}).to(Device::kCuda);
    kc::sum_of_squares<T>(out.data<double>(), tx.data<T>(), n, nullptr);
    kc::sum_of_squares<T>(out.data<double>(), tx.data<T>(), n, nullptr);
    double want = 0.0;
    for (double v : x) want += v * v;
    expect_close(download(out), {2.5 + 2 * want}, 1e-5, 0.0,
                 "sum_of_squares n=" + std::to_string(n));
  }
}

class CudaRuntime : public ::testing::Test {
 protected:
  void SetUp() override {
    if (cuda_device_count() == 0) {
      GTEST_SKIP() << "no CUDA device (" << cuda_unavailable_reason() << ")";
    }
  }
  Random rng_;
};

TEST_F(CudaRuntime, AdamWMatchesTheCpuRule) {
  SEED_TRACE();
  const std::int64_t n = 1001;
  const optim::AdamWConfig config;
  for (bool decay : {true, false}) {
    for (float grad_scale : {1.0f, 0.5f}) {
      SCOPED_TRACE(std::string("decay=") + (decay ? "1" : "0") +
                   " grad_scale=" + std::to_string(grad_scale));
      std::vector<float> value = rng_.uniform(n, -1, 1), grad = rng_.uniform(n, -1, 1);
      std::vector<float> m = rng_.uniform(n, -0.1f, 0.1f), v = rng_.uniform(n, 0, 0.01f);
      Tensor tvalue = upload<float>(value), tgrad = upload<float>(grad);
      Tensor tm = upload<float>(m), tv = upload<float>(v);
      Tensor tbf16 = poisoned<BFloat16>(n);
      kc::adamw_update(tvalue.data<float>(), tgrad.data<float>(), tm.data<float>(),
                       tv.data<float>(), tbf16.data<BFloat16>(), n, config, 3e-3, 3, decay,
                       grad_scale, nullptr);
      for (float& g : grad) g *= grad_scale;
      optim::adamw_update(value, grad, m, v, config, 3e-3, 3, decay);
      const auto as_double = [](const std::vector<float>& f) {
        return std::vector<double>(f.begin(), f.end());
      };
      // The GPU may contract a*b+c into one FMA: agreement to a few ulps, not bit for bit.
      const std::vector<double> got_value = download(tvalue);
      expect_close(got_value, as_double(value), 1e-5, 1e-7, "value");
      expect_close(download(tm), as_double(m), 1e-5, 1e-8, "m");
      expect_close(download(tv), as_double(v), 1e-5, 1e-10, "v");
      // The bf16 copy is the GPU's own fp32 result rounded to nearest even.
      const std::vector<double> got_bf16 = download(tbf16);
      for (std::int64_t i = 0; i < n; ++i) {
        const float rounded = bf16_to_float(float_to_bf16(static_cast<float>(got_value[i])));
        ASSERT_EQ(got_bf16[i], static_cast<double>(rounded)) << "value_bf16[" << i << "]";
      }
    }
  }
}

TEST_F(CudaRuntime, TensorsCrossDevices) {
  const std::vector<float> values = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f};
  Tensor device = Tensor::from_vector(values).to(Device::kCuda);
  EXPECT_EQ(device.device(), Device::kCuda);
  EXPECT_EQ(device.to_vector<float>(), values);
  // Conversions of CUDA tensors (staged on the host).
  Tensor bf16 = device.to(DType::kBFloat16);
  EXPECT_EQ(bf16.device(), Device::kCuda);
  EXPECT_EQ(bf16.to_vector<float>(), values);  // all exactly representable in bf16
  Tensor zeros = Tensor::zeros({3}, DType::kFloat32, Device::kCuda);
  EXPECT_EQ(zeros.to_vector<float>(), (std::vector<float>{0, 0, 0}));
  zeros.fill(4.0);
  EXPECT_EQ(zeros.to_vector<float>(), (std::vector<float>{4, 4, 4}));
  Tensor host = Tensor::empty({5});
  host.copy_from(device);
  EXPECT_EQ(host.to_vector<float>(), values);
  Tensor device2 = Tensor::empty({5}, DType::kFloat32, Device::kCuda);
  device2.copy_from(device);  // device to device
  EXPECT_EQ(device2.to_vector<float>(), values);
  EXPECT_EQ(device.slice(1, 3).to_vector<float>(), (std::vector<float>{-2.0f, 3.25f}));
}

TEST_F(CudaRuntime, AllocatorReusesFreedBlocks) {
  const cuda::AllocatorStats before = cuda::allocator_stats();
  void* first = nullptr;
  {
    Tensor a = Tensor::empty({1000}, DType::kFloat32, Device::kCuda);  // 4000 -> 4096 bytes
    first = a.raw_data();
    const cuda::AllocatorStats during = cuda::allocator_stats();
    EXPECT_EQ(during.in_use_bytes, before.in_use_bytes + 4096);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(first) % 256, 0u);
  }
  const cuda::AllocatorStats after_free = cuda::allocator_stats();
  EXPECT_EQ(after_free.in_use_bytes, before.in_use_bytes);
  EXPECT_GE(after_free.cached_bytes, 4096u);
  Tensor b = Tensor::empty({900}, DType::kFloat32, Device::kCuda);  // 3600 -> 4096 bytes
  EXPECT_EQ(b.raw_data(), first);
  const cuda::AllocatorStats reused = cuda::allocator_stats();
  EXPECT_EQ(reused.cache_hits, after_free.cache_hits + 1);
  EXPECT_EQ(reused.device_mallocs, after_free.device_mallocs);
  EXPECT_GE(reused.peak_in_use_bytes, reused.in_use_bytes);
  b = Tensor();
  cuda::release_cached_memory();
  EXPECT_EQ(cuda::allocator_stats().cached_bytes, 0u);
}

TEST_F(CudaRuntime, StreamsRunKernels) {
  cuda::StreamHandle stream = cuda::create_stream();
  std::vector<double> x;
  Tensor inp = upload<float>(rng_.uniform(257, -1, 1), &x);
  Tensor out = poisoned<float>(257);
  kc::gelu_forward<float>(out.data<float>(), inp.data<float>(), 257, stream);
  cuda::synchronize(stream);
  cuda::destroy_stream(stream);
  std::vector<double> want(257);
  cpu::gelu_forward<double>(want.data(), x.data(), 257);
  expect_close(download(out), want, 1e-5, 1e-6, "gelu on a stream");
}

TEST_F(CudaRuntime, SetDeviceChecksTheRange) {
  const int count = cuda_device_count();
  try {
    cuda::set_device(count);
    ADD_FAILURE() << "no exception";
  } catch (const InvalidArgument& e) {
    EXPECT_EQ(std::string(e.what()), "[cuda::set_device] device=" + std::to_string(count) +
                                         " must be in [0, " + std::to_string(count) + ")");
  }
  EXPECT_NO_THROW(cuda::set_device(0));
  EXPECT_EQ(cuda::current_device(), 0);
}

TEST_F(CudaRuntime, FailedCallsNameTheCall) {
  // An invalid device pointer makes cudaMemcpy fail; the message names the call and place.
  try {
    cuda::copy_bytes(reinterpret_cast<void*>(std::uintptr_t{0x10}), Device::kCuda,
                     reinterpret_cast<const void*>(std::uintptr_t{0x20}), Device::kCuda, 16);
    ADD_FAILURE() << "no exception";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("[cuda] cudaMemcpyAsync(", 0), 0u) << what;
    EXPECT_NE(what.find("device.cpp:"), std::string::npos) << what;
    EXPECT_NE(what.find("on device "), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace pipetrain
