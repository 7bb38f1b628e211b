#include <cmath>
#include <numbers>

#include "pipetrain/kernels/cpu.h"

namespace pipetrain::kernels::cpu {
namespace {
// sqrt(2/pi), the constant of GPT-2's tanh approximation.
constexpr double kGeluScale = 0.7978845608028654;
constexpr double kGeluCubic = 0.044715;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t n) {
  const T s = static_cast<T>(kGeluScale), a = static_cast<T>(kGeluCubic);
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + std::tanh(s * (x + a * x * x * x)));
  }
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t n) {
  const T s = static_cast<T>(kGeluScale), a = static_cast<T>(kGeluCubic);
  for (std::int64_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T u = s * (x + a * x * x * x);
    const T th = std::tanh(u);
    const T sech2 = T(1) - th * th;
    const T grad = T(0.5) * (T(1) + th) + T(0.5) * x * sech2 * s * (T(1) + T(3) * a * x * x);
    dinp[i] = grad * dout[i];
  }
}

template void gelu_forward<float>(float*, const float*, std::int64_t);
template void gelu_forward<double>(double*, const double*, std::int64_t);
template void gelu_backward<float>(float*, const float*, const float*, std::int64_t);
template void gelu_backward<double>(double*, const double*, const double*, std::int64_t);

}  // namespace pipetrain::kernels::cpu
