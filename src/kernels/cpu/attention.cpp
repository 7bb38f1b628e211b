// Causal self-attention, one (batch, head) at a time: the score and value products go through
// BLAS with strided views into the packed qkv, the softmax is a plain loop over the rows.
#include <cmath>
#include <vector>

#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void attention_forward(T* out, T* att, const T* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  for (std::int64_t i = 0; i < b; ++i) {
    for (std::int64_t h = 0; h < nh; ++h) {
      const T* q = qkv + i * t * 3 * c + h * hs;
      const T* k = q + c;
      const T* v = q + 2 * c;
      T* a = att + (i * nh + h) * t * t;
      // Full T x T scores (BLAS beats a masked triangle at these sizes); the mask is applied
      // by the softmax below, which also writes the zeros above the diagonal.
      gemm<T>(false, true, t, t, hs, scale, q, 3 * c, k, 3 * c, T(0), a, t);
      for (std::int64_t r = 0; r < t; ++r) {
        T* row = a + r * t;
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
      gemm<T>(false, false, t, hs, t, T(1), a, t, v, 3 * c, T(0), out + i * t * c + h * hs, c);
    }
  }
}

template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, std::int64_t b,
                        std::int64_t t, std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  std::vector<T> datt(static_cast<std::size_t>(t * t));
  for (std::int64_t i = 0; i < b; ++i) {
    for (std::int64_t h = 0; h < nh; ++h) {
      const std::int64_t base = i * t * 3 * c + h * hs;
      const T* q = qkv + base;
      const T* k = q + c;
      const T* v = q + 2 * c;
      T* dq = dqkv + base;
      T* dk = dq + c;
      T* dv = dq + 2 * c;
      const T* a = att + (i * nh + h) * t * t;
      const T* dy = dout + i * t * c + h * hs;
      T* da = datt.data();
      gemm<T>(false, true, t, t, hs, T(1), dy, c, v, 3 * c, T(0), da, t);  // dA = dY V^T
      gemm<T>(true, false, t, hs, t, T(1), a, t, dy, c, T(0), dv, 3 * c);  // dV = A^T dY
      // Softmax backward, row by row: dS = A * (dA - sum(dA * A)); zero above the diagonal.
      for (std::int64_t r = 0; r < t; ++r) {
        const T* arow = a + r * t;
        T* drow = da + r * t;
        T dot = 0;
        for (std::int64_t j = 0; j <= r; ++j) dot += drow[j] * arow[j];
        for (std::int64_t j = 0; j <= r; ++j) drow[j] = arow[j] * (drow[j] - dot);
        for (std::int64_t j = r + 1; j < t; ++j) drow[j] = T(0);
      }
      gemm<T>(false, false, t, hs, t, scale, da, t, k, 3 * c, T(0), dq, 3 * c);  // dQ = s dS K
      gemm<T>(true, false, t, hs, t, scale, da, t, q, 3 * c, T(0), dk, 3 * c);   // dK = s dS^T Q
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, std::int64_t, std::int64_t,
                                       std::int64_t, std::int64_t);
template void attention_forward<double>(double*, double*, const double*, std::int64_t,
                                        std::int64_t, std::int64_t, std::int64_t);
template void attention_backward<float>(float*, const float*, const float*, const float*,
                                        std::int64_t, std::int64_t, std::int64_t, std::int64_t);
template void attention_backward<double>(double*, const double*, const double*, const double*,
                                         std::int64_t, std::int64_t, std::int64_t, std::int64_t);

}  // namespace pipetrain::kernels::cpu
