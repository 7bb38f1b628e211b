// Matrix products of the linear layers, all through OpenBLAS.
#include <cblas.h>

#include <algorithm>
#include <type_traits>

#include "../../core/parallel.h"
#include "column_blocks.h"
#include "cpu_clones.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <>
void gemm<float>(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                 float alpha, const float* a, std::int64_t lda, const float* b, std::int64_t ldb,
                 float beta, float* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  detail::match_blas_threads();
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

template <>
void gemm<double>(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
                  double alpha, const double* a, std::int64_t lda, const double* b,
                  std::int64_t ldb, double beta, double* c, std::int64_t ldc) {
  if (m == 0 || n == 0) return;
  detail::match_blas_threads();
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, static_cast<int>(m), static_cast<int>(n),
              static_cast<int>(k), alpha, a, static_cast<int>(lda), b, static_cast<int>(ldb), beta,
              c, static_cast<int>(ldc));
}

namespace {
// Columns [ob, ob + width) of the bias gradient, width <= kColumnBlock (column_blocks.h). The
// sums stay in a local array for the walk over the rows (see layernorm.cpp's weight_grad_block).
template <typename T>
[[gnu::always_inline]] inline void bias_grad_block(T* dbias, const T* dout, std::int64_t n,
                                                   std::int64_t oc, std::int64_t ob,
                                                   std::int64_t width) {
  T acc[kColumnBlock];
  for (std::int64_t o = 0; o < width; ++o) acc[o] = dbias[ob + o];
  for (std::int64_t i = 0; i < n; ++i) {
    const T* row = dout + i * oc + ob;
    for (std::int64_t o = 0; o < width; ++o) acc[o] += row[o];
  }
  for (std::int64_t o = 0; o < width; ++o) dbias[ob + o] = acc[o];
}

// In the clones (cpu_clones.h): the 64 sums fit the AVX-512 registers (0.58 of the baseline's time
// in a step). Additions only, so every clone gives the same bits.
PIPETRAIN_CPU_CLONES void bias_grad_block_fp32(float* dbias, const float* dout, std::int64_t n,
                                               std::int64_t oc, std::int64_t ob,
                                               std::int64_t width) {
  // A whole block with its width known to the compiler, so that the sums stay in registers.
  if (width == kColumnBlock) {
    bias_grad_block(dbias, dout, n, oc, ob, kColumnBlock);
  } else {
    bias_grad_block(dbias, dout, n, oc, ob, width);
  }
}
}  // namespace

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, std::int64_t n,
                    std::int64_t c, std::int64_t oc) {
  // The bias goes into every row first and the product is added to it (beta = 1), in place of
  // OpenBLAS's own pass that zeroes C (beta = 0). The copy runs on the kernels' threads because
  // on one it is a pass over the whole output that the products wait for (about 0.3 ms for a
  // GPT block's four outputs at 1024 rows and C = 256).
  if (bias != nullptr) {
    detail::parallel_chunks(n, detail::rows_per_chunk(oc),
                            [&](std::int64_t, std::int64_t begin, std::int64_t end) {
                              for (std::int64_t i = begin; i < end; ++i) {
                                std::copy(bias, bias + oc, out + i * oc);
                              }
                            });
  }
  gemm<T>(false, true, n, oc, c, T(1), inp, c, weight, c, bias != nullptr ? T(1) : T(0), out, oc);
}

template <typename T>
void linear_backward_input(T* dinp, const T* dout, const T* weight, std::int64_t n, std::int64_t c,
                           std::int64_t oc) {
  gemm<T>(false, false, n, c, oc, T(1), dout, oc, weight, c, T(0), dinp, c);
}

template <typename T>
void linear_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, std::int64_t n,
                            std::int64_t c, std::int64_t oc) {
  gemm<T>(true, false, oc, c, n, T(1), dout, oc, inp, c, T(1), dweight, c);
  if (dbias != nullptr) {
    for_column_blocks(n, oc, [&](std::int64_t ob, std::int64_t width) {
      if constexpr (std::is_same_v<T, float>) {
        bias_grad_block_fp32(dbias, dout, n, oc, ob, width);
      } else {
        bias_grad_block(dbias, dout, n, oc, ob, width);
      }
    });
  }
}

#define PIPETRAIN_INSTANTIATE(T)                                                                  \
  template void linear_forward<T>(T*, const T*, const T*, const T*, std::int64_t, std::int64_t,   \
                                  std::int64_t);                                                  \
  template void linear_backward_input<T>(T*, const T*, const T*, std::int64_t, std::int64_t,      \
                                         std::int64_t);                                           \
  template void linear_backward_weight<T>(T*, T*, const T*, const T*, std::int64_t, std::int64_t, \
                                          std::int64_t);
PIPETRAIN_INSTANTIATE(float)
PIPETRAIN_INSTANTIATE(double)
#undef PIPETRAIN_INSTANTIATE

}  // namespace pipetrain::kernels::cpu
