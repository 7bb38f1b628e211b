// LayerNorm. The forward and the input gradient are independent per row and run rows in
// parallel; the weight gradient sums over rows, so it runs columns in parallel, each column
// summed in row order as on one thread (src/core/parallel.h): the same bits on any thread count.
#include <cmath>

#include "../../core/parallel.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       std::int64_t n, std::int64_t c, double eps) {
  detail::parallel_chunks(n, detail::rows_per_chunk(c),
                          [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                            for (std::int64_t i = begin; i < end; ++i) {
                              const T* x = inp + i * c;
                              T m = 0;
                              for (std::int64_t k = 0; k < c; ++k) m += x[k];
                              m /= static_cast<T>(c);
                              T v = 0;
                              for (std::int64_t k = 0; k < c; ++k) v += (x[k] - m) * (x[k] - m);
                              v /= static_cast<T>(c);
                              const T s = T(1) / std::sqrt(v + static_cast<T>(eps));
                              T* o = out + i * c;
                              for (std::int64_t k = 0; k < c; ++k)
                                o[k] = (x[k] - m) * s * weight[k] + bias[k];
                              mean[i] = m;
                              rstd[i] = s;
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
                              T sum_dxhat = 0, sum_dxhat_xhat = 0;
                              for (std::int64_t k = 0; k < c; ++k) {
                                const T xhat = (x[k] - m) * s;
                                const T dxhat = dy[k] * weight[k];
                                sum_dxhat += dxhat;
                                sum_dxhat_xhat += dxhat * xhat;
                              }
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

template <typename T>
void layernorm_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, const T* mean,
                               const T* rstd, std::int64_t n, std::int64_t c) {
  // Columns in blocks of 64 (a cache line of doubles, four of floats): each block walks every
  // row, so each dweight[k] and dbias[k] adds the rows in order.
  const std::int64_t cols = n * 64 >= 65536 ? 64 : c;
  detail::parallel_chunks(c, cols, [&](std::int64_t, std::int64_t k0, std::int64_t k1) {
    for (std::int64_t i = 0; i < n; ++i) {
      const T* x = inp + i * c;
      const T* dy = dout + i * c;
      const T m = mean[i], s = rstd[i];
      for (std::int64_t k = k0; k < k1; ++k) {
        dweight[k] += dy[k] * ((x[k] - m) * s);
        dbias[k] += dy[k];
      }
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
