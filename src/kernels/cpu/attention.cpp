// Causal self-attention, one (batch item, head) pair at a time: the score and value products
// go through BLAS with strided views into the packed qkv, and between them the pair's softmax
// (or its backward) runs on the same thread, its scores still in cache.
//
// Pairs run in parallel when the products inside them run on one thread each
// (detail::parallel_blas_is_serial(): OpenBLAS built for OpenMP inside an OpenMP region, or
// OpenBLAS at one thread); otherwise (OpenBLAS's own pthreads at several threads) the pairs run
// in order and each product uses OpenBLAS's threads. At 8 heads of 32 channels and T = 128 the
// 128 x 128 x 32 products reached 65-130 GFLOP/s on two OpenBLAS threads; whole pairs on two
// threads, about twice that. Every row is computed the same way on any thread count; the
// products' bits depend on OpenBLAS's thread count, as everywhere.
#include <cmath>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "lanes.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

// Scratch for the backward's score gradients: one [T,T] block per thread, grown once and
// reused, so a training step allocates nothing here.
template <typename T>
T* attention_scratch(std::size_t count) {
  thread_local std::vector<T> scratch;
  if (scratch.size() < count) scratch.resize(count);
  return scratch.data();
}

// Causal softmax of scores row r (of t) in place: columns 0..r, zeros above the diagonal.
template <typename T>
void softmax_row(T* row, std::int64_t r, std::int64_t t) {
  T sum = 0;
  if constexpr (std::is_same_v<T, float>) {
    sum = lanes::exp_sum(row, row, lanes::max(row, r + 1), r + 1);
  } else {
    T m = row[0];
    for (std::int64_t j = 1; j <= r; ++j) m = row[j] > m ? row[j] : m;
    for (std::int64_t j = 0; j <= r; ++j) {
      row[j] = std::exp(row[j] - m);
      sum += row[j];
    }
  }
  const T inv = T(1) / sum;
  for (std::int64_t j = 0; j <= r; ++j) row[j] *= inv;
  for (std::int64_t j = r + 1; j < t; ++j) row[j] = T(0);
}

// Softmax backward of row r in place: dS = A * (dA - sum(dA * A)); zero above the diagonal.
template <typename T>
void softmax_backward_row(T* drow, const T* arow, std::int64_t r, std::int64_t t) {
  T dot = 0;
  if constexpr (std::is_same_v<T, float>) {
    dot = lanes::dot(drow, arow, r + 1);
  } else {
    for (std::int64_t j = 0; j <= r; ++j) dot += drow[j] * arow[j];
  }
  for (std::int64_t j = 0; j <= r; ++j) drow[j] = arow[j] * (drow[j] - dot);
  for (std::int64_t j = r + 1; j < t; ++j) drow[j] = T(0);
}

// Runs pair(p) for p in [0, pairs): in parallel when BLAS runs each product on one thread.
template <typename Pair>
void run_pairs(std::int64_t pairs, const Pair& pair) {
  if (detail::parallel_blas_is_serial()) {
    detail::parallel_chunks(pairs, 1, [&](std::int64_t, std::int64_t p, std::int64_t) { pair(p); });
  } else {
    for (std::int64_t p = 0; p < pairs; ++p) pair(p);
  }
}

}  // namespace

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, std::int64_t b, std::int64_t t, std::int64_t c,
                       std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  const auto pair = [&](std::int64_t p) {
    const std::int64_t i = p / nh, h = p % nh;
    T* a = att + p * t * t;
    const T* q = qkv + i * t * 3 * c + h * hs;
    // Full T x T scores (BLAS beats a masked triangle at these sizes); the softmax applies the
    // mask and writes the zeros above the diagonal.
    gemm<T>(false, true, t, t, hs, scale, q, 3 * c, q + c, 3 * c, T(0), a, t);
    for (std::int64_t r = 0; r < t; ++r) softmax_row(a + r * t, r, t);
    gemm<T>(false, false, t, hs, t, T(1), a, t, q + 2 * c, 3 * c, T(0), out + i * t * c + h * hs,
            c);
  };
  run_pairs(b * nh, pair);
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, std::int64_t b,
                        std::int64_t t, std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  const auto pair = [&](std::int64_t p) {
    const std::int64_t i = p / nh, h = p % nh;
    const std::int64_t base = i * t * 3 * c + h * hs;
    const T* q = qkv + base;
    T* dq = dqkv + base;
    const T* a = att + p * t * t;
    const T* dy = dout + i * t * c + h * hs;
    T* da = attention_scratch<T>(static_cast<std::size_t>(t * t));
    gemm<T>(false, true, t, t, hs, T(1), dy, c, q + 2 * c, 3 * c, T(0), da, t);  // dA = dY V^T
    gemm<T>(true, false, t, hs, t, T(1), a, t, dy, c, T(0), dq + 2 * c, 3 * c);  // dV = A^T dY
    for (std::int64_t r = 0; r < t; ++r) softmax_backward_row(da + r * t, a + r * t, r, t);
    gemm<T>(false, false, t, hs, t, scale, da, t, q + c, 3 * c, T(0), dq, 3 * c);  // dQ = s dS K
    gemm<T>(true, false, t, hs, t, scale, da, t, q, 3 * c, T(0), dq + c, 3 * c);   // dK = s dS^T Q
  };
  run_pairs(b * nh, pair);
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
