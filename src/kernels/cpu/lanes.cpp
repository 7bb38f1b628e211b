// The row reductions of lanes.h. Blocks of exp_sum go through a local buffer, so the vectorised
// loops never need a runtime alias check.
#include "lanes.h"

#include <algorithm>
#include <cstring>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "exp_fp32.h"

namespace pipetrain::kernels::cpu::lanes {
namespace {
constexpr std::int64_t kBlock = 512;  // a multiple of the 8 lanes

// The sum of term(k) for k < n: lane j adds the terms with k % 8 == j in order, then combine().
// Inlined into each clone below, so that each vectorises it for its own instruction set.
template <typename Term>
[[gnu::always_inline]] inline float lane_sum(std::int64_t n, const Term& term) {
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  std::int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += term(k + j);
  }
  for (int j = 0; k < n; ++k, ++j) acc[j] += term(k);
  return combine(acc);
}
}  // namespace

// GCC does not turn the select into maxps without -ffinite-math-only, so SSE (the x86-64
// baseline) is asked for directly: maxps(x, m) is x > m ? x : m, the same select.
PIPETRAIN_CPU_CLONES float max(const float* z, std::int64_t n) {
  float m[kLanes];
  for (float& x : m) x = z[0];
  std::int64_t k = 0;
#if defined(__SSE2__)
  __m128 lo = _mm_set1_ps(z[0]), hi = lo;
  for (; k + kLanes <= n; k += kLanes) {
    lo = _mm_max_ps(_mm_loadu_ps(z + k), lo);
    hi = _mm_max_ps(_mm_loadu_ps(z + k + 4), hi);
  }
  _mm_storeu_ps(m, lo);
  _mm_storeu_ps(m + 4, hi);
#endif
  for (; k < n; ++k) m[0] = z[k] > m[0] ? z[k] : m[0];
  float r = m[0];
  for (int j = 1; j < kLanes; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

PIPETRAIN_CPU_CLONES float exp_sum(float* p, const float* z, float zmax, std::int64_t n) {
  float acc[kLanes] = {0, 0, 0, 0, 0, 0, 0, 0};
  float buf[kBlock];
  for (std::int64_t b = 0; b < n; b += kBlock) {
    const std::int64_t len = std::min(kBlock, n - b);
    for (std::int64_t k = 0; k < len; ++k) buf[k] = fastmath::exp_nonpositive(z[b + k] - zmax);
    std::int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += buf[k + j];
    }
    for (int j = 0; k < len; ++k, ++j) acc[j] += buf[k];  // only in the last block
    std::memcpy(p + b, buf, static_cast<std::size_t>(len) * sizeof(float));
  }
  return combine(acc);
}

PIPETRAIN_CPU_CLONES float sum(const float* x, std::int64_t n) {
  return lane_sum(n, [&](std::int64_t k) { return x[k]; });
}

PIPETRAIN_CPU_CLONES float sum_sq_dev(const float* x, float m, std::int64_t n) {
  return lane_sum(n, [&](std::int64_t k) {
    const float d = x[k] - m;
    return d * d;
  });
}

PIPETRAIN_CPU_CLONES float dot(const float* a, const float* b, std::int64_t n) {
  return lane_sum(n, [&](std::int64_t k) { return a[k] * b[k]; });
}

}  // namespace pipetrain::kernels::cpu::lanes
