// Softmax cross-entropy, one row at a time; rows in parallel (src/core/parallel.h). Each row is
// computed as on one thread and the mean is summed in row order afterwards, so the results do
// not depend on the thread count.
//
// fp32 rows are vectorised (GCC, with -fno-trapping-math and -ffp-contract=off on this file;
// AVX-512 and AVX2 clones chosen at run time as for GELU, the same IEEE operations and bits in
// every clone): the maximum and the
// sum of the exponentials in eight interleaved lanes combined in a fixed order, exp from
// exp_fp32.h (0.51 ulp). At vocabulary 50257 glibc's scalar expf took about 0.2 s of a 1.1 s
// training step. The double instantiation stays the scalar std::exp reference.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "../../core/parallel.h"
#include "exp_fp32.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

#if defined(__SANITIZE_THREAD__)
#define PIPETRAIN_CE_NO_CLONES 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define PIPETRAIN_CE_NO_CLONES 1
#endif
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__APPLE__) && \
    !defined(PIPETRAIN_CE_NO_CLONES)
#define PIPETRAIN_CE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PIPETRAIN_CE_CLONES
#endif

constexpr std::int64_t kBlock = 512;  // a multiple of the 8 lanes

// The largest of z[0, v); NaN elements are ignored after the first (as std::max_element does),
// a NaN first element is the result. GCC does not turn the select into maxps without
// -ffinite-math-only, so SSE (the x86-64 baseline) is asked for directly: maxps(x, m) is
// x > m ? x : m, the same select.
PIPETRAIN_CE_CLONES float row_max(const float* z, std::int64_t v) {
  float m[8];
  for (float& x : m) x = z[0];
  std::int64_t k = 0;
#if defined(__SSE2__)
  __m128 lo = _mm_set1_ps(z[0]), hi = lo;
  for (; k + 8 <= v; k += 8) {
    lo = _mm_max_ps(_mm_loadu_ps(z + k), lo);
    hi = _mm_max_ps(_mm_loadu_ps(z + k + 4), hi);
  }
  _mm_storeu_ps(m, lo);
  _mm_storeu_ps(m + 4, hi);
#endif
  for (; k < v; ++k) m[0] = z[k] > m[0] ? z[k] : m[0];
  float r = m[0];
  for (int j = 1; j < 8; ++j) r = m[j] > r ? m[j] : r;
  return r;
}

// p[k] = exp(z[k] - zmax) (p may be z) and returns their sum: lane j adds the elements k with
// k % 8 == j in order, and the lanes are added pairwise at the end. Blocks go through a local
// buffer, so the vectorised loops never need a runtime alias check.
PIPETRAIN_CE_CLONES float row_exp_sum(float* p, const float* z, float zmax, std::int64_t v) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  float buf[kBlock];
  for (std::int64_t b = 0; b < v; b += kBlock) {
    const std::int64_t n = std::min(kBlock, v - b);
    for (std::int64_t k = 0; k < n; ++k) buf[k] = fastmath::exp_nonpositive(z[b + k] - zmax);
    std::int64_t k = 0;
    for (; k + 8 <= n; k += 8) {
      for (int j = 0; j < 8; ++j) acc[j] += buf[k + j];
    }
    for (int j = 0; k < n; ++k, ++j) acc[j] += buf[k];  // only in the last block
    std::memcpy(p + b, buf, static_cast<std::size_t>(n) * sizeof(float));
  }
  return ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
}

}  // namespace

template <typename T>
double cross_entropy_forward(T* probs, T* losses, const T* logits, const std::int32_t* targets,
                             std::int64_t n, std::int64_t v) {
  detail::parallel_chunks(
      n, detail::rows_per_chunk(v), [&](std::int64_t, std::int64_t begin, std::int64_t end) {
        for (std::int64_t i = begin; i < end; ++i) {
          const T* z = logits + i * v;
          T* p = probs + i * v;
          const std::int64_t target = targets[i];
          const T ztarget = z[target];  // read before probs overwrites logits when they alias
          T zmax, sum = 0;
          if constexpr (std::is_same_v<T, float>) {
            zmax = row_max(z, v);
            sum = row_exp_sum(p, z, zmax, v);
          } else {
            zmax = *std::max_element(z, z + v);
            for (std::int64_t k = 0; k < v; ++k) {
              p[k] = std::exp(z[k] - zmax);
              sum += p[k];
            }
          }
          const T inv = T(1) / sum;
          // Log-sum-exp form: exact even when the target's probability underflows.
          losses[i] = std::log(sum) - (ztarget - zmax);
          for (std::int64_t k = 0; k < v; ++k) p[k] *= inv;
        }
      });
  double total = 0.0;
  for (std::int64_t i = 0; i < n; ++i) total += static_cast<double>(losses[i]);
  return n > 0 ? total / static_cast<double>(n) : 0.0;
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const std::int32_t* targets, double scale,
                            std::int64_t n, std::int64_t v) {
  const T f = static_cast<T>(scale / static_cast<double>(n));
  detail::parallel_chunks(n, detail::rows_per_chunk(v, 65536),
                          [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                            for (std::int64_t i = begin; i < end; ++i) {
                              const T* p = probs + i * v;
                              T* d = dlogits + i * v;
                              for (std::int64_t k = 0; k < v; ++k) d[k] = f * p[k];
                              d[targets[i]] -= f;
                            }
                          });
}

template double cross_entropy_forward<float>(float*, float*, const float*, const std::int32_t*,
                                             std::int64_t, std::int64_t);
template double cross_entropy_forward<double>(double*, double*, const double*, const std::int32_t*,
                                              std::int64_t, std::int64_t);
template void cross_entropy_backward<float>(float*, const float*, const std::int32_t*, double,
                                            std::int64_t, std::int64_t);
template void cross_entropy_backward<double>(double*, const double*, const std::int32_t*, double,
                                             std::int64_t, std::int64_t);

}  // namespace pipetrain::kernels::cpu
