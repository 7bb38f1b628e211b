// Token + position embedding. The forward runs rows in parallel; the backward scatters rows
// into the tables, so it runs columns in parallel, each element adding its rows in order as
// on one thread (src/core/parallel.h): the same bits on any thread count.
#include "../../core/parallel.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                       std::int64_t b, std::int64_t t, std::int64_t c) {
  detail::parallel_chunks(b * t, detail::rows_per_chunk(c, 32768),
                          [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                            for (std::int64_t row = begin; row < end; ++row) {
                              T* o = out + row * c;
                              const T* te = wte + static_cast<std::int64_t>(tokens[row]) * c;
                              const T* pe = wpe + (row % t) * c;
                              for (std::int64_t k = 0; k < c; ++k) o[k] = te[k] + pe[k];
                            }
                          });
}

template <typename T>
void embedding_backward_weight(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens,
                               std::int64_t b, std::int64_t t, std::int64_t c) {
  const std::int64_t cols = b * t * 64 >= 65536 ? 64 : c;
  detail::parallel_chunks(c, cols, [&](std::int64_t, std::int64_t k0, std::int64_t k1) {
    for (std::int64_t row = 0; row < b * t; ++row) {
      const T* d = dout + row * c;
      T* te = dwte + static_cast<std::int64_t>(tokens[row]) * c;
      T* pe = dwpe + (row % t) * c;
      for (std::int64_t k = k0; k < k1; ++k) {
        te[k] += d[k];
        pe[k] += d[k];
      }
    }
  });
}

template void embedding_forward<float>(float*, const std::int32_t*, const float*, const float*,
                                       std::int64_t, std::int64_t, std::int64_t);
template void embedding_forward<double>(double*, const std::int32_t*, const double*, const double*,
                                        std::int64_t, std::int64_t, std::int64_t);
template void embedding_backward_weight<float>(float*, float*, const float*, const std::int32_t*,
                                               std::int64_t, std::int64_t, std::int64_t);
template void embedding_backward_weight<double>(double*, double*, const double*,
                                                const std::int32_t*, std::int64_t, std::int64_t,
                                                std::int64_t);

}  // namespace pipetrain::kernels::cpu
