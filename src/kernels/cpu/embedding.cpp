#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                       std::int64_t b, std::int64_t t, std::int64_t c) {
  for (std::int64_t i = 0; i < b; ++i) {
    for (std::int64_t j = 0; j < t; ++j) {
      T* o = out + (i * t + j) * c;
      const T* te = wte + static_cast<std::int64_t>(tokens[i * t + j]) * c;
      const T* pe = wpe + j * c;
      for (std::int64_t k = 0; k < c; ++k) o[k] = te[k] + pe[k];
    }
  }
}

template <typename T>
void embedding_backward_weight(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens,
                               std::int64_t b, std::int64_t t, std::int64_t c) {
  for (std::int64_t i = 0; i < b; ++i) {
    for (std::int64_t j = 0; j < t; ++j) {
      const T* d = dout + (i * t + j) * c;
      T* te = dwte + static_cast<std::int64_t>(tokens[i * t + j]) * c;
      T* pe = dwpe + j * c;
      for (std::int64_t k = 0; k < c; ++k) {
        te[k] += d[k];
        pe[k] += d[k];
      }
    }
  }
}

template void embedding_forward<float>(float*, const std::int32_t*, const float*, const float*,
                                       std::int64_t, std::int64_t, std::int64_t);
template void embedding_forward<double>(double*, const std::int32_t*, const double*,
                                        const double*, std::int64_t, std::int64_t, std::int64_t);
template void embedding_backward_weight<float>(float*, float*, const float*, const std::int32_t*,
                                               std::int64_t, std::int64_t, std::int64_t);
template void embedding_backward_weight<double>(double*, double*, const double*,
                                                const std::int32_t*, std::int64_t, std::int64_t,
                                                std::int64_t);

}  // namespace pipetrain::kernels::cpu
