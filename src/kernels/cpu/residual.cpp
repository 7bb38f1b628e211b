#include "../../core/parallel.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {

template <typename T>
void residual_forward(T* out, const T* a, const T* b, std::int64_t n) {
  detail::parallel_chunks(n, 65536, [&](std::int64_t, std::int64_t begin, std::int64_t end) {
    for (std::int64_t i = begin; i < end; ++i) out[i] = a[i] + b[i];
  });
}

template void residual_forward<float>(float*, const float*, const float*, std::int64_t);
template void residual_forward<double>(double*, const double*, const double*, std::int64_t);

}  // namespace pipetrain::kernels::cpu
