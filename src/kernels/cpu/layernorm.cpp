// LayerNorm. The forward and the input gradient are independent per row and run rows in
// parallel; the weight gradient sums over rows, so it runs columns in parallel, each column
// summed in row order as on one thread (src/core/parallel.h): the same bits on any thread count.
//
// fp32 rows sum in eight lanes (lanes.h): a row's mean, variance and the input gradient's two
// sums were single chains of dependent additions, about 1.3 ns an element on this project's
// 2-core machine, more than the matrix products around them at C = 256.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../../core/parallel.h"
#include "column_blocks.h"
#include "lane_vectors.h"
#include "lanes.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {

// sum(dxhat) and sum(dxhat * xhat) of one row, dxhat = dy * w, xhat = (x - m) * s; in eight
// lanes for fp32, in order for the fp64 reference. The fp32 body is a function of its own, with
// no Lanes in its signature, that the clone inlines: Clang rejects a clone that itself calls a
// baseline function taking or returning a Lanes (lane_vectors.h), whatever is inlined later.
[[gnu::always_inline]] inline void grad_sums_fp32(const float* x, const float* dy, const float* w,
                                                  float m, float s, std::int64_t c, float* sum_d,
                                                  float* sum_dx) {
  lanes::Lanes a = {}, b = {};
  std::int64_t k = 0;
  for (; k + lanes::kLanes <= c; k += lanes::kLanes) {
    const lanes::Lanes xhat = (lanes::load(x + k) - m) * s;
    const lanes::Lanes d = lanes::load(dy + k) * lanes::load(w + k);
    a += d;
    b += d * xhat;
  }
  for (int j = 0; k < c; ++k, ++j) {
    const float xhat = (x[k] - m) * s;
    const float d = dy[k] * w[k];
    a[j] += d;
    b[j] += d * xhat;
  }
  *sum_d = lanes::combine(a);
  *sum_dx = lanes::combine(b);
}

PIPETRAIN_CPU_CLONES void grad_sums(const float* x, const float* dy, const float* w, float m,
                                    float s, std::int64_t c, float* sum_d, float* sum_dx) {
  grad_sums_fp32(x, dy, w, m, s, c, sum_d, sum_dx);
}

void grad_sums(const double* x, const double* dy, const double* w, double m, double s,
               std::int64_t c, double* sum_d, double* sum_dx) {
  double a = 0, b = 0;
  for (std::int64_t k = 0; k < c; ++k) {
    const double xhat = (x[k] - m) * s;
    const double d = dy[k] * w[k];
    a += d;
    b += d * xhat;
  }
  *sum_d = a;
  *sum_dx = b;
}

}  // namespace

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       std::int64_t n, std::int64_t c, double eps) {
  const auto normalize = [&](std::int64_t i, T m, T v) {
    const T* x = inp + i * c;
    const T s = T(1) / std::sqrt(v + static_cast<T>(eps));
    T* o = out + i * c;
    for (std::int64_t k = 0; k < c; ++k) o[k] = (x[k] - m) * s * weight[k] + bias[k];
    mean[i] = m;
    rstd[i] = s;
  };
  detail::parallel_chunks(n, detail::rows_per_chunk(c),
                          [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                            std::int64_t i = begin;
                            if constexpr (std::is_same_v<T, float>) {
                              // Four rows' sums at once (lanes.h): the same bits as one by one.
                              for (; i + 4 <= end; i += 4) {
                                float m[4], v[4];
                                lanes::sum4(inp + i * c, c, c, m);
                                for (float& mr : m) mr /= static_cast<float>(c);
                                lanes::sum_sq_dev4(inp + i * c, c, m, c, v);
                                for (int r = 0; r < 4; ++r)
                                  normalize(i + r, m[r], v[r] / static_cast<float>(c));
                              }
                            }
                            for (; i < end; ++i) {
                              const T* x = inp + i * c;
                              T m = 0, v = 0;
                              if constexpr (std::is_same_v<T, float>) {
                                m = lanes::sum(x, c) / static_cast<T>(c);
                                v = lanes::sum_sq_dev(x, m, c) / static_cast<T>(c);
                              } else {
                                for (std::int64_t k = 0; k < c; ++k) m += x[k];
                                m /= static_cast<T>(c);
                                for (std::int64_t k = 0; k < c; ++k) v += (x[k] - m) * (x[k] - m);
                                v /= static_cast<T>(c);
                              }
                              normalize(i, m, v);
                            }
                          });
}

template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight, const T* mean,
                              const T* rstd, std::int64_t n, std::int64_t c) {
  detail::parallel_chunks(n, detail::rows_per_chunk(c),
                          [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                            for (std::int64_t i = begin; i < end; ++i) {
                              const T* x = inp + i * c;
                              const T* dy = dout + i * c;
                              const T m = mean[i], s = rstd[i];
                              // dxhat = dy * w; dx = s * (dxhat - mean(dxhat) - xhat * mean(dxhat *
                              // xhat))
                              T sum_dxhat, sum_dxhat_xhat;
                              grad_sums(x, dy, weight, m, s, c, &sum_dxhat, &sum_dxhat_xhat);
                              sum_dxhat /= static_cast<T>(c);
                              sum_dxhat_xhat /= static_cast<T>(c);
                              T* dx = dinp + i * c;
                              for (std::int64_t k = 0; k < c; ++k) {
                                const T xhat = (x[k] - m) * s;
                                const T dxhat = dy[k] * weight[k];
                                dx[k] = s * (dxhat - sum_dxhat - xhat * sum_dxhat_xhat);
                              }
                            }
                          });
}

namespace {
// Columns [kb, kb + width) of the weight and bias gradients, width <= kColumnBlock
// (column_blocks.h). The sums stay in local arrays for the whole walk over the rows: written
// through dweight and dbias, which the compiler must assume may alias dout, they were loaded and
// stored again for every row.
template <typename T>
[[gnu::always_inline]] inline void weight_grad_block(T* dweight, T* dbias, const T* dout,
                                                     const T* inp, const T* mean, const T* rstd,
                                                     std::int64_t n, std::int64_t c,
                                                     std::int64_t kb, std::int64_t width) {
  T gw[kColumnBlock], gb[kColumnBlock];
  for (std::int64_t k = 0; k < width; ++k) {
    gw[k] = dweight[kb + k];
    gb[k] = dbias[kb + k];
  }
  for (std::int64_t i = 0; i < n; ++i) {
    const T* x = inp + i * c + kb;
    const T* dy = dout + i * c + kb;
    const T m = mean[i], s = rstd[i];
    for (std::int64_t k = 0; k < width; ++k) {
      gw[k] += dy[k] * ((x[k] - m) * s);
      gb[k] += dy[k];
    }
  }
  for (std::int64_t k = 0; k < width; ++k) {
    dweight[kb + k] = gw[k];
    dbias[kb + k] = gb[k];
  }
}

// The fp32 blocks in the clones: the 2 x 64 sums fit the AVX-512 registers, where SSE spilled
// them to the stack every row (0.54 of the time in a step, AVX-512 against the baseline).
PIPETRAIN_CPU_CLONES void weight_grad_block_fp32(float* dweight, float* dbias, const float* dout,
                                                 const float* inp, const float* mean,
                                                 const float* rstd, std::int64_t n, std::int64_t c,
                                                 std::int64_t kb, std::int64_t width) {
  // A whole block with its width known to the compiler, so that the sums stay in registers.
  if (width == kColumnBlock) {
    weight_grad_block(dweight, dbias, dout, inp, mean, rstd, n, c, kb, kColumnBlock);
  } else {
    weight_grad_block(dweight, dbias, dout, inp, mean, rstd, n, c, kb, width);
  }
}
}  // namespace

template <typename T>
void layernorm_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, const T* mean,
                               const T* rstd, std::int64_t n, std::int64_t c) {
  for_column_blocks(n, c, [&](std::int64_t kb, std::int64_t width) {
    if constexpr (std::is_same_v<T, float>) {
      weight_grad_block_fp32(dweight, dbias, dout, inp, mean, rstd, n, c, kb, width);
    } else {
      weight_grad_block(dweight, dbias, dout, inp, mean, rstd, n, c, kb, width);
    }
  });
}

#define PIPETRAIN_INSTANTIATE(T)                                                                  \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, std::int64_t,      \
                                     std::int64_t, double);                                       \
  template void layernorm_backward_input<T>(T*, const T*, const T*, const T*, const T*, const T*, \
                                            std::int64_t, std::int64_t);                          \
  template void layernorm_backward_weight<T>(T*, T*, const T*, const T*, const T*, const T*,      \
                                             std::int64_t, std::int64_t);
PIPETRAIN_INSTANTIATE(float)
PIPETRAIN_INSTANTIATE(double)
#undef PIPETRAIN_INSTANTIATE

}  // namespace pipetrain::kernels::cpu
