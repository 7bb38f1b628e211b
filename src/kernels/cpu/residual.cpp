#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void residual_forward(T* out, const T* a, const T* b, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template void residual_forward<float>(float*, const float*, const float*, std::int64_t);
template void residual_forward<double>(double*, const double*, const double*, std::int64_t);

}  // namespace pipetrain::kernels::cpu
