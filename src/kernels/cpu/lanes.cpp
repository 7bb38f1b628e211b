// The row reductions of lanes.h: each clone inlines the bodies from lane_vectors.h.
#include "lanes.h"

#include "lane_vectors.h"

namespace pipetrain::kernels::cpu::lanes {
PIPETRAIN_CPU_CLONES float max(const float* z, std::int64_t n) { return max_inline(z, n); }

PIPETRAIN_CPU_CLONES float exp_sum(float* p, const float* z, float zmax, std::int64_t n) {
  return exp_sum_inline(p, z, zmax, n);
}

PIPETRAIN_CPU_CLONES float sum(const float* x, std::int64_t n) {
  return lane_sum(
      n, [&](std::int64_t k) PIPETRAIN_LANES_INLINE { return load(x + k); },
      [&](std::int64_t k) PIPETRAIN_LANES_INLINE { return x[k]; });
}

PIPETRAIN_CPU_CLONES float sum_sq_dev(const float* x, float m, std::int64_t n) {
  return lane_sum(
      n,
      [&](std::int64_t k) PIPETRAIN_LANES_INLINE {
        const Lanes d = load(x + k) - m;
        return d * d;
      },
      [&](std::int64_t k) PIPETRAIN_LANES_INLINE {
        const float d = x[k] - m;
        return d * d;
      });
}

PIPETRAIN_CPU_CLONES float dot(const float* a, const float* b, std::int64_t n) {
  return dot_inline(a, b, n);
}

PIPETRAIN_CPU_CLONES void sum4(const float* x, std::int64_t ld, std::int64_t n, float* out) {
  lane_sum4(
      n, [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE { return load(x + r * ld + k); },
      [&](int r, std::int64_t k) PIPETRAIN_LANES_INLINE { return x[r * ld + k]; }, out);
}

PIPETRAIN_CPU_CLONES void sum_sq_dev4(const float* x, std::int64_t ld, const float* m,
                                      std::int64_t n, float* out) {
  const float mm[4] = {m[0], m[1], m[2], m[3]};
  lane_sum4(
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

}  // namespace pipetrain::kernels::cpu::lanes
