// Causal self-attention, one (batch item, head) pair at a time: the score and value products
// go through BLAS with strided views into the packed qkv, and between them the pair's softmax
// (or its backward) runs on the same thread, its scores still in cache; each pair's rows in
// blocks, so that the products skip most of what the causal mask zeroes.
//
// Pairs run in parallel when the products inside them run on one thread each
// (detail::parallel_blas_is_serial(): OpenBLAS built for OpenMP inside an OpenMP region, or
// OpenBLAS at one thread); otherwise (OpenBLAS's own pthreads at several threads) the pairs run
// in order and each product uses OpenBLAS's threads. At b = 8, t = 128, C = 256, 8 heads on 2
// threads, forward and backward took 1.3-1.5 ms each, against 3.8 and 4.3 ms head by head with
// OpenBLAS's pthreads and the scalar softmax before (6 alternating runs, medians). On one thread
// the softmax was then still about half of the forward; with its exp in fp32 and its rows in
// whole vectors and one clone call per block, forward and backward took 1.51 and 1.54 ms against
// 1.83 and 1.60 (best of 60 calls, 4 alternating runs). Every row is computed the same way on any
// thread count; the products' bits depend on OpenBLAS's thread count, as everywhere.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "../../core/parallel.h"
#include "lane_vectors.h"
#include "lanes.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

// Scratch per thread, grown once and reused, so a training step allocates nothing here: the
// transposed keys (forward), the score gradients and the transposed values (backward).
template <typename T>
T* attention_scratch(std::size_t count) {
  thread_local std::vector<T> scratch;
  if (scratch.size() < count) scratch.resize(count);
  return scratch.data();
}

// Row r's reductions cover its first r + 1 columns rounded up to whole vectors of
// kPaddedColumns (capped at `limit`, the end of the row's block, up to which the scores are
// computed): a row of a few dozen columns otherwise spends much of its time in the clones'
// scalar remainder loops (at t = 128 the softmax rows of a pair took 1.1-1.4 times as long).
// The padding is exact: the forward sets the masked scores to -inf, whose exp is +0, and the
// backward zeroes the masked dA before its dot with the (zero) masked probabilities, so the
// maxima and lane sums are those of columns 0..r, non-finite values above the diagonal
// included. Sixteen: one AVX-512 vector of fp32.
constexpr std::int64_t kPaddedColumns = 16;
inline std::int64_t padded_columns(std::int64_t r, std::int64_t limit) {
  return std::min(limit, (r + kPaddedColumns) / kPaddedColumns * kPaddedColumns);
}

// Causal softmax of scores row r (of t) in place: columns 0..r, zeros above the diagonal. The
// fp64 reference; softmax_rows_fp32 below is the fp32 one.
template <typename T>
void softmax_row(T* row, std::int64_t r, std::int64_t t) {
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

// Softmax backward of row r in place: dS = A * (dA - sum(dA * A)); zero above the diagonal.
template <typename T>
void softmax_backward_row(T* drow, const T* arow, std::int64_t r, std::int64_t t) {
  T dot = 0;
  for (std::int64_t j = 0; j <= r; ++j) dot += drow[j] * arow[j];
  for (std::int64_t j = 0; j <= r; ++j) drow[j] = arow[j] * (drow[j] - dot);
  for (std::int64_t j = r + 1; j < t; ++j) drow[j] = T(0);
}

// Rows [r0, r1) of one pair's causal softmax, fp32, in one clone call: a call per row, and its
// constants loaded anew, cost more than a short row's own work. The maximum and the sum in eight
// lanes (lanes.h); the same operations on every CPU.
PIPETRAIN_CPU_CLONES void softmax_rows_fp32(float* a, std::int64_t r0, std::int64_t r1,
                                            std::int64_t t) {
  for (std::int64_t r = r0; r < r1; ++r) {
    float* row = a + r * t;
    const std::int64_t n = padded_columns(r, r1);
    for (std::int64_t j = r + 1; j < n; ++j) row[j] = -std::numeric_limits<float>::infinity();
    const float inv = 1.0f / lanes::exp_sum_inline(row, row, lanes::max_inline(row, n), n);
    for (std::int64_t j = 0; j <= r; ++j) row[j] *= inv;
    for (std::int64_t j = r + 1; j < t; ++j) row[j] = 0.0f;  // also when inv is NaN
  }
}

// Rows [r0, r1) of the softmax backward, fp32, as softmax_rows_fp32. A's entries above the
// diagonal must be zero, as attention_forward leaves them.
PIPETRAIN_CPU_CLONES void softmax_backward_rows_fp32(float* da, const float* a, std::int64_t r0,
                                                     std::int64_t r1, std::int64_t t) {
  for (std::int64_t r = r0; r < r1; ++r) {
    float* drow = da + r * t;
    const float* arow = a + r * t;
    // First, so that an inf or NaN in a later key's dA cannot reach this row through 0 * x.
    for (std::int64_t j = r + 1; j < t; ++j) drow[j] = 0.0f;
    const float dot = lanes::dot_inline(drow, arow, padded_columns(r, r1));
    for (std::int64_t j = 0; j <= r; ++j) drow[j] = arow[j] * (drow[j] - dot);
  }
}

// Rows of a causal block (attention_forward). At b = 8, t = 128, C = 256, 8 heads, 2 threads:
// blocks of 32 took 0.87 of the unblocked forward's time and 0.79 of its backward's (6
// alternating runs, medians); blocks of 16 and 64 were in between.
constexpr std::int64_t kCausalRows = 32;

// x^T of the t x hs block x (row stride ld) into out[hs, t]; returns out. The score products
// then take both operands untransposed, which OpenBLAS's small products do faster: forward and
// backward took 0.84 and 0.85 of the time with the transposed operand (b = 8, t = 128, C = 256,
// 8 heads, 2 threads; 6 alternating runs, medians).
template <typename T>
T* transposed(const T* x, std::int64_t ld, std::int64_t t, std::int64_t hs, T* out) {
  for (std::int64_t j = 0; j < t; ++j) {
    for (std::int64_t d = 0; d < hs; ++d) out[d * t + j] = x[j * ld + d];
  }
  return out;
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
    const T* k = q + c;
    const T* v = q + 2 * c;
    T* o = out + i * t * c + h * hs;
    T* kt = transposed(k, 3 * c, t, hs, attention_scratch<T>(static_cast<std::size_t>(hs * t)));
    // Rows in blocks [r0, r1): a row r attends to keys 0..r only, so the block's scores and
    // values need the first r1 keys, not all t (at t = 128 in blocks of 32: 10/16 of the work).
    // The softmax writes the zeros above the diagonal, up to column t.
    for (std::int64_t r0 = 0; r0 < t; r0 += kCausalRows) {
      const std::int64_t r1 = std::min(t, r0 + kCausalRows);
      gemm<T>(false, false, r1 - r0, r1, hs, scale, q + r0 * 3 * c, 3 * c, kt, t, T(0), a + r0 * t,
              t);
      if constexpr (std::is_same_v<T, float>) {
        softmax_rows_fp32(a, r0, r1, t);
      } else {
        for (std::int64_t r = r0; r < r1; ++r) softmax_row(a + r * t, r, t);
      }
      gemm<T>(false, false, r1 - r0, hs, r1, T(1), a + r0 * t, t, v, 3 * c, T(0), o + r0 * c, c);
    }
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
    const T* k = q + c;
    const T* v = q + 2 * c;
    T* dq = dqkv + base;
    T* dk = dq + c;
    T* dv = dq + 2 * c;
    const T* a = att + p * t * t;
    const T* dy = dout + i * t * c + h * hs;
    T* da = attention_scratch<T>(static_cast<std::size_t>(t * t + hs * t));
    T* vt = transposed(v, 3 * c, t, hs, da + t * t);
    // The same blocks as the forward. Row block [r0, r1) of dA = dY V^T and of dQ = s dS K
    // needs keys 0..r1-1; column block [r0, r1) of dV = A^T dY and of dK = s dS^T Q needs
    // query rows r0..t-1 (A and dS are zero above the diagonal).
    for (std::int64_t r0 = 0; r0 < t; r0 += kCausalRows) {
      const std::int64_t r1 = std::min(t, r0 + kCausalRows);
      gemm<T>(false, false, r1 - r0, r1, hs, T(1), dy + r0 * c, c, vt, t, T(0), da + r0 * t, t);
      if constexpr (std::is_same_v<T, float>) {
        softmax_backward_rows_fp32(da, a, r0, r1, t);
      } else {
        for (std::int64_t r = r0; r < r1; ++r) softmax_backward_row(da + r * t, a + r * t, r, t);
      }
      gemm<T>(false, false, r1 - r0, hs, r1, scale, da + r0 * t, t, k, 3 * c, T(0), dq + r0 * 3 * c,
              3 * c);
    }
    for (std::int64_t r0 = 0; r0 < t; r0 += kCausalRows) {
      const std::int64_t r1 = std::min(t, r0 + kCausalRows);
      gemm<T>(true, false, r1 - r0, hs, t - r0, T(1), a + r0 * t + r0, t, dy + r0 * c, c, T(0),
              dv + r0 * 3 * c, 3 * c);
      gemm<T>(true, false, r1 - r0, hs, t - r0, scale, da + r0 * t + r0, t, q + r0 * 3 * c, 3 * c,
              T(0), dk + r0 * 3 * c, 3 * c);
    }
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
