#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../../core/parallel.h"
#include "exp_fp32.h"
#include "lanes.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {
// sqrt(2/pi), the constant of GPT-2's tanh approximation.
constexpr double kGeluScale = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;

// ---- fp32 fast path ---------------------------------------------------------------------------
// 0.5 (1 + tanh(u)) = sigmoid(2u), so with t = exp(-2|u|) in (0, 1]:
//   x >= 0:  gelu(x) = x / (1 + t)          x < 0:  gelu(x) = x t / (1 + t)
// and gelu'(x) = sigma (1 + 2 sigma_c x u'), sigma = 1 / (1 + t) for x >= 0 and t / (1 + t) for
// x < 0, sigma_c = 1 - sigma, u' = s (1 + 3 a x^2). No 1 + tanh(u) cancellation, and t never
// overflows.
//
// Why in double after the fp32 load: for x < 0 the result is x t / (1 + t), whose relative error
// is the absolute error of 2|u|; at x = -10, 2|u| = 87, where one fp32 ulp is 7.6e-6 (hundreds of
// ulps of the result). So u, the range reduction and the polynomial are evaluated in double, and
// the result is rounded to fp32 once: under 1 ulp everywhere (tests/unit/nn/test_gelu.cpp). t is a
// normal double down to 2^-163, so no scaling is needed for results that are fp32 denormals. An
// fp32 polynomial with fp32 divisions was 1.3x faster but 3.5 ulp (forward) and 8 ulp (backward).
//
// Clamping |x| to 11 for the exponent: beyond it 2|u| > 112, t < 2^-162, so gelu is x (x > 11) or
// -0 (x < -11) and gelu' is 1 or 0, which the formulas give with the clamped x. The clamp maps
// NaN to -11 (so the exponent bits below are always in range); NaN propagates through the
// unclamped x instead. +inf gives +inf (gelu) and 1 (gelu'), -inf gives -0 and 0: the limits (the
// fp64 reference gives NaN there, inf * 0).
constexpr float kClampX = 11.0f;
// 2 s log2(e) and 2 s a log2(e): z = -|x (k1 + k3 x^2)| = -2|u| / ln2, in [-163, 0].
constexpr double kZ1 = 2.0 * kGeluScale * 1.4426950408889634;
constexpr double kZ3 = 2.0 * kGeluScale * kGeluCubic * 1.4426950408889634;
struct GeluParts {
  double x;   // x clamped to [-11, 11], NaN -> -11
  double t;   // exp(-2|u|)
  double rr;  // 1 / (1 + t)
};

[[gnu::always_inline]] inline GeluParts gelu_parts(float x) {
  // Written so that they compile to maxps / minps (which give the second operand for NaN).
  float xc = x > -kClampX ? x : -kClampX;
  xc = xc < kClampX ? xc : kClampX;
  const double xd = xc;
  const double z = -std::fabs(xd * (kZ1 + kZ3 * (xd * xd)));
  const double t = fastmath::exp2_reduced(z);
  return {xd, t, 1.0 / (1.0 + t)};
}

// Blocks go through a local buffer: the loops that the compiler vectorises then read and write
// disjoint memory whatever the caller's aliasing (dinp may be dout), with no runtime alias check.
constexpr std::int64_t kBlock = 512;
// Elements per thread chunk (about 50 us of work): whole blocks.
constexpr std::int64_t kParallelGrain = 32 * kBlock;

[[gnu::always_inline]] inline void gelu_forward_block(float* __restrict out,
                                                      const float* __restrict inp, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const GeluParts g = gelu_parts(x);
    const double y = x < 0.0f ? g.x * g.t * g.rr : static_cast<double>(x) * g.rr;
    out[i] = static_cast<float>(y);
  }
}

[[gnu::always_inline]] inline void gelu_backward_block(float* __restrict dinp,
                                                       const float* __restrict inp,
                                                       const float* __restrict dout,
                                                       std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const GeluParts g = gelu_parts(x);
    const bool neg = x < 0.0f;
    const double tr = g.t * g.rr;
    const double sigma = neg ? tr : g.rr, sigma_c = neg ? g.rr : tr;
    const double du = kGeluScale * (1.0 + 3.0 * kGeluCubic * (g.x * g.x));
    const double grad = sigma * (1.0 + 2.0 * sigma_c * g.x * du);
    const float d = static_cast<float>(grad * static_cast<double>(dout[i]));
    dinp[i] = x == x ? d : x;  // NaN in x propagates (the clamp dropped it)
  }
}

// Runtime dispatch (lanes.h): an AVX-512 clone (1.5x the AVX2 one: eight doubles a vector), an
// AVX2 clone (twice the SSE2 one, bench/bench_gelu) and the x86-64 baseline, bit-identical.
PIPETRAIN_CPU_CLONES void gelu_forward_fast(float* out, const float* inp, std::int64_t n) {
  float buf[kBlock];
  for (std::int64_t i = 0; i < n; i += kBlock) {
    const std::int64_t m = std::min(kBlock, n - i);
    gelu_forward_block(buf, inp + i, m);
    std::memcpy(out + i, buf, static_cast<std::size_t>(m) * sizeof(float));
  }
}

PIPETRAIN_CPU_CLONES void gelu_backward_fast(float* dinp, const float* inp, const float* dout,
                                             std::int64_t n) {
  float buf[kBlock];
  for (std::int64_t i = 0; i < n; i += kBlock) {
    const std::int64_t m = std::min(kBlock, n - i);
    gelu_backward_block(buf, inp + i, dout + i, m);
    std::memcpy(dinp + i, buf, static_cast<std::size_t>(m) * sizeof(float));
  }
}
}  // namespace

// The double instantiation is the exact reference (tanh form, std::tanh); the float one is the
// fast path above, within 1 ulp of the exact function (tests/unit/nn/test_gelu.cpp).
template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    // Elementwise: any cut gives the same bits. Chunks are whole blocks of kBlock.
    detail::parallel_chunks(n, kParallelGrain, [&](std::int64_t, std::int64_t i, std::int64_t e) {
      gelu_forward_fast(out + i, inp + i, e - i);
    });
  } else {
    const T s = static_cast<T>(kGeluScale), a = static_cast<T>(kGeluCubic);
    for (std::int64_t i = 0; i < n; ++i) {
      const T x = inp[i];
      out[i] = T(0.5) * x * (T(1) + std::tanh(s * (x + a * x * x * x)));
    }
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    detail::parallel_chunks(n, kParallelGrain, [&](std::int64_t, std::int64_t i, std::int64_t e) {
      gelu_backward_fast(dinp + i, inp + i, dout + i, e - i);
    });
  } else {
    const T s = static_cast<T>(kGeluScale), a = static_cast<T>(kGeluCubic);
    for (std::int64_t i = 0; i < n; ++i) {
      const T x = inp[i];
      const T u = s * (x + a * x * x * x);
      const T th = std::tanh(u);
      const T sech2 = T(1) - th * th;
      const T grad = T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3) * a * x * x);
      dinp[i] = grad * dout[i];
    }
  }
}

template void gelu_forward<float>(float*, const float*, std::int64_t);
template void gelu_forward<double>(double*, const double*, std::int64_t);
template void gelu_backward<float>(float*, const float*, const float*, std::int64_t);
template void gelu_backward<double>(double*, const double*, const double*, std::int64_t);

}  // namespace pipetrain::kernels::cpu
