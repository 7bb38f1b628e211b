// The row reductions of lanes.h. Blocks of exp_sum go through a local buffer, so the vectorised
// loops never need a runtime alias check.
#include "lanes.h"
#include "lane_vectors.h"

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
// lanes(k) gives the eight terms k .. k + 7 at once, term(k) one of the last n % 8. Inlined into
// each clone below, so that each compiles it for its own instruction set.
template <typename LanesTerm, typename Term>
[[gnu::always_inline]] inline float lane_sum(std::int64_t n, const LanesTerm& lanes,
                                             const Term& term) {
  Lanes acc = {};
  std::int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) acc += lanes(k);
  for (int j = 0; k < n; ++k, ++j) acc[j] += term(k);
  return combine(acc);
}

// lane_sum for four rows r < 4: four independent chains of additions, each adding exactly what
// lane_sum adds for its row.
template <typename LanesTerm, typename Term>
[[gnu::always_inline]] inline void lane_sum4(std::int64_t n, const LanesTerm& lanes,
                                             const Term& term, float* out) {
  Lanes acc[4] = {};
  std::int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int r = 0; r < 4; ++r) acc[r] += lanes(r, k);
  }
  for (int j = 0; k < n; ++k, ++j) {
    for (int r = 0; r < 4; ++r) acc[r][j] += term(r, k);
  }
  for (int r = 0; r < 4; ++r) out[r] = combine(acc[r]);
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
  Lanes acc = {};
  float buf[kBlock];
  for (std::int64_t b = 0; b < n; b += kBlock) {
    const std::int64_t len = std::min(kBlock, n - b);
    for (std::int64_t k = 0; k < len; ++k) buf[k] = fastmath::exp_nonpositive(z[b + k] - zmax);
    std::int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes) acc += load(buf + k);
    for (int j = 0; k < len; ++k, ++j) acc[j] += buf[k];  // only in the last block
    std::memcpy(p + b, buf, static_cast<std::size_t>(len) * sizeof(float));
  }
  return combine(acc);
}

PIPETRAIN_CPU_CLONES float sum(const float* x, std::int64_t n) {
  return lane_sum(
      n, [&](std::int64_t k) { return load(x + k); }, [&](std::int64_t k) { return x[k]; });
}

PIPETRAIN_CPU_CLONES float sum_sq_dev(const float* x, float m, std::int64_t n) {
  return lane_sum(
      n,
      [&](std::int64_t k) {
        const Lanes d = load(x + k) - m;
        return d * d;
      },
      [&](std::int64_t k) {
        const float d = x[k] - m;
        return d * d;
      });
}

PIPETRAIN_CPU_CLONES float dot(const float* a, const float* b, std::int64_t n) {
  return lane_sum(
      n, [&](std::int64_t k) { return load(a + k) * load(b + k); },
      [&](std::int64_t k) { return a[k] * b[k]; });
}

PIPETRAIN_CPU_CLONES void sum4(const float* x, std::int64_t ld, std::int64_t n, float* out) {
  lane_sum4(
      n, [&](int r, std::int64_t k) { return load(x + r * ld + k); },
      [&](int r, std::int64_t k) { return x[r * ld + k]; }, out);
}

PIPETRAIN_CPU_CLONES void sum_sq_dev4(const float* x, std::int64_t ld, const float* m,
                                      std::int64_t n, float* out) {
  const float mm[4] = {m[0], m[1], m[2], m[3]};
  lane_sum4(
      n,
      [&](int r, std::int64_t k) {
        const Lanes d = load(x + r * ld + k) - mm[r];
        return d * d;
      },
      [&](int r, std::int64_t k) {
        const float d = x[r * ld + k] - mm[r];
        return d * d;
      },
      out);
}

}  // namespace pipetrain::kernels::cpu::lanes
