// Causal self-attention, one batch item at a time: the score and value products go through
// BLAS with strided views into the packed qkv, head by head; between them the softmax (or its
// backward) of all the item's heads runs rows in parallel (src/core/parallel.h). Grouping the
// heads gives one parallel region per batch item instead of one per head, and keeps BLAS's
// threads and the kernels' threads from taking turns too often. Every row is computed as on one
// thread, so the results do not depend on the thread count.
#include <cmath>
#include <vector>

#include "../../core/parallel.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

// Scratch for the backward's score gradients: one [NH,T,T] block per calling thread, grown
// once and reused, so a training step allocates nothing here.
template <typename T>
T* attention_scratch(std::size_t count) {
  thread_local std::vector<T> scratch;
  if (scratch.size() < count) scratch.resize(count);
  return scratch.data();
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, std::int64_t b, std::int64_t t, std::int64_t c,
                       std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  for (std::int64_t i = 0; i < b; ++i) {
    T* att_i = att + i * nh * t * t;
    // Full T x T scores (BLAS beats a masked triangle at these sizes); the mask is applied by
    // the softmax below, which also writes the zeros above the diagonal.
    for (std::int64_t h = 0; h < nh; ++h) {
      const T* q = qkv + i * t * 3 * c + h * hs;
      const T* k = q + c;
      gemm<T>(false, true, t, t, hs, scale, q, 3 * c, k, 3 * c, T(0), att_i + h * t * t, t);
    }
    // Rows of all heads: row rr of head h is att_i[(h * t + r) * t ...] with r = rr % t.
    detail::parallel_chunks(nh * t, detail::rows_per_chunk(t / 2 + 1),
                            [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                              for (std::int64_t rr = begin; rr < end; ++rr) {
                                const std::int64_t r = rr % t;
                                T* row = att_i + rr * t;
                                T m = row[0];
                                for (std::int64_t j = 1; j <= r; ++j) m = row[j] > m ? row[j] : m;
                                T sum = 0;
                                for (std::int64_t j = 0; j <= r; ++j) {
                                  row[j] = std::exp(row[j] - m);
                                  sum += row[j];
                                }
                                const T inv = T(1) / sum;
                                for (std::int64_t j = 0; j <= r; ++j) row[j] *= inv;
                                for (std::int64_t j = r + 1; j < t; ++j) row[j] = T(0);
                              }
                            });
    for (std::int64_t h = 0; h < nh; ++h) {
      const T* v = qkv + i * t * 3 * c + h * hs + 2 * c;
      gemm<T>(false, false, t, hs, t, T(1), att_i + h * t * t, t, v, 3 * c, T(0),
              out + i * t * c + h * hs, c);
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, std::int64_t b,
                        std::int64_t t, std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  T* datt = attention_scratch<T>(static_cast<std::size_t>(nh * t * t));
  for (std::int64_t i = 0; i < b; ++i) {
    const T* att_i = att + i * nh * t * t;
    for (std::int64_t h = 0; h < nh; ++h) {
      const std::int64_t base = i * t * 3 * c + h * hs;
      const T* v = qkv + base + 2 * c;
      T* dv = dqkv + base + 2 * c;
      const T* a = att_i + h * t * t;
      const T* dy = dout + i * t * c + h * hs;
      gemm<T>(false, true, t, t, hs, T(1), dy, c, v, 3 * c, T(0), datt + h * t * t, t);  // dA
      gemm<T>(true, false, t, hs, t, T(1), a, t, dy, c, T(0), dv, 3 * c);  // dV = A^T dY
    }
    // Softmax backward, row by row: dS = A * (dA - sum(dA * A)); zero above the diagonal.
    detail::parallel_chunks(nh * t, detail::rows_per_chunk(t / 2 + 1),
                            [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                              for (std::int64_t rr = begin; rr < end; ++rr) {
                                const std::int64_t r = rr % t;
                                const T* arow = att_i + rr * t;
                                T* drow = datt + rr * t;
                                T dot = 0;
                                for (std::int64_t j = 0; j <= r; ++j) dot += drow[j] * arow[j];
                                for (std::int64_t j = 0; j <= r; ++j)
                                  drow[j] = arow[j] * (drow[j] - dot);
                                for (std::int64_t j = r + 1; j < t; ++j) drow[j] = T(0);
                              }
                            });
    for (std::int64_t h = 0; h < nh; ++h) {
      const std::int64_t base = i * t * 3 * c + h * hs;
      const T* q = qkv + base;
      const T* k = q + c;
      T* dq = dqkv + base;
      T* dk = dq + c;
      const T* da = datt + h * t * t;
      gemm<T>(false, false, t, hs, t, scale, da, t, k, 3 * c, T(0), dq, 3 * c);  // dQ = s dS K
      gemm<T>(true, false, t, hs, t, scale, da, t, q, 3 * c, T(0), dk, 3 * c);   // dK = s dS^T Q
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, std::int64_t, std::int64_t,
                                       std::int64_t, std::int64_t);
template void attention_forward<double>(double*, double*, const double*, std::int64_t, std::int64_t,
                                        std::int64_t, std::int64_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        std::int64_t, std::int64_t, std::int64_t, std::int64_t);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         std::int64_t, std::int64_t, std::int64_t, std::int64_t);

}  // namespace pipetrain::kernels::cpu
