// The row reductions of lanes.h: each clone inlines the bodies from lane_vectors.h.
#include "lanes.h"

#include "lane_vectors.h"

namespace pipetrain::kernels::cpu::lanes {
PIPETRAIN_CPU_CLONES float max(const float* z, std::int64_t n) { return max_inline(z, n); }

PIPETRAIN_CPU_CLONES float exp_sum(float* p, const float* z, float zmax, std::int64_t n) {
  return exp_sum_inline(p, z, zmax, n);
}

namespace {
// sum() of the R rows x + r * ld, r < R.
template <int R>
[[gnu::always_inline]] inline void sums(const float* x, std::int64_t ld, std::int64_t n,
                                        float* out) {
  lane_sums<R>(
      n, [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE { return load(x + r * ld + k); },
      [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE { return x[r * ld + k]; }, out);
}

// sum_sq_dev() of the R rows x + r * ld about m[r], r < R.
template <int R>
[[gnu::always_inline]] inline void sums_sq_dev(const float* x, std::int64_t ld, const float* m,
                                               std::int64_t n, float* out) {
  float mm[R];
  for (int r = 0; r < R; ++r) mm[r] = m[r];
  lane_sums<R>(
      n,
      [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE {
        const Lanes d = load(x + r * ld + k) - mm[r];
        return d * d;
      },
      [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE {
        const float d = x[r * ld + k] - mm[r];
        return d * d;
      },
      out);
}
}  // namespace

PIPETRAIN_CPU_CLONES float sum(const float* x, std::int64_t n) {
  float out;
  sums<1>(x, 0, n, &out);
  return out;
}

PIPETRAIN_CPU_CLONES float sum_sq_dev(const float* x, float m, std::int64_t n) {
  float out;
  sums_sq_dev<1>(x, 0, &m, n, &out);
  return out;
}

PIPETRAIN_CPU_CLONES float dot(const float* a, const float* b, std::int64_t n) {
  return dot_inline(a, b, n);
}

PIPETRAIN_CPU_CLONES void sum4(const float* x, std::int64_t ld, std::int64_t n, float* out) {
  sums<4>(x, ld, n, out);
}

PIPETRAIN_CPU_CLONES void sum_sq_dev4(const float* x, std::int64_t ld, const float* m,
                                      std::int64_t n, float* out) {
  sums_sq_dev<4>(x, ld, m, n, out);
}

}  // namespace pipetrain::kernels::cpu::lanes
