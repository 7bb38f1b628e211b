// Element-wise kernels: GELU, residual add, the fused AdamW step and the sum of squares.
#include <cmath>

#include "common.cuh"

namespace pipetrain::kernels::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr float kGeluScale = 0.7978845608028654f;  // sqrt(2/pi)
constexpr float kGeluCubic = 0.044715f;

struct GeluForward {
  __device__ float operator()(float x, float) const {
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
};
struct GeluBackward {
  __device__ float operator()(float x, float dy) const {
    const float u = kGeluScale * (x + kGeluCubic * x * x * x);
    const float th = tanhf(u);
    const float sech2 = 1.0f - th * th;
    const float grad = 0.5f * (1.0f + th) +
                       0.5f * x * sech2 * kGeluScale * (1.0f + 3.0f * kGeluCubic * x * x);
    return grad * dy;
  }
};
struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};

// out[i] = op(a[i], b[i]) (b ignored when !kBinary). kVec: the bulk as 16-byte packs, the
// n % pack tail element by element; chosen only when every pointer is 16-byte aligned.
template <typename DT, typename Op, bool kBinary, bool kVec>
__global__ void map_kernel(DT* out, const DT* a, const DT* b, std::int64_t n, Op op) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  std::int64_t done = 0;
  if constexpr (kVec) {
    constexpr int K = Pack<DT>::kSize;
    const std::int64_t packs = n / K;
    for (std::int64_t p = first; p < packs; p += stride) {
      const Pack<DT> pa = load_pack(a + p * K);
      Pack<DT> pb;
      if constexpr (kBinary) pb = load_pack(b + p * K);
      Pack<DT> po;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const float y = op(to_float(pa.v[j]), kBinary ? to_float(pb.v[j]) : 0.0f);
        po.v[j] = from_float<DT>(y);
      }
      store_pack(out + p * K, po);
    }
    done = packs * K;
  }
  for (std::int64_t i = done + first; i < n; i += stride) {
    out[i] = from_float<DT>(op(to_float(a[i]), kBinary ? to_float(b[i]) : 0.0f));
  }
}

template <typename T, typename Op, bool kBinary>
void launch_map(const char* name, T* out, const T* a, const T* b, std::int64_t n, Op op,
                StreamHandle stream) {
  check_non_negative(name, "n", n);
  if (n == 0) return;
  using DT = DeviceType<T>;
  const bool vec = aligned16(out) && aligned16(a) && (!kBinary || aligned16(b));
  const std::int64_t per_thread = vec ? Pack<DT>::kSize : 1;
  const unsigned grid = grid_for((n + per_thread - 1) / per_thread, kThreads);
  if (vec) {
    map_kernel<DT, Op, kBinary, true>
        <<<grid, kThreads, 0, to_stream(stream)>>>(dev(out), dev(a), dev(b), n, op);
  } else {
    map_kernel<DT, Op, kBinary, false>
        <<<grid, kThreads, 0, to_stream(stream)>>>(dev(out), dev(a), dev(b), n, op);
  }
  PIPETRAIN_CUDA_CHECK_LAUNCH("map_kernel");
}

__global__ void adamw_kernel(float* value, const float* grad, float* m, float* v,
                             __nv_bfloat16* value_bf16, std::int64_t n, float b1, float b2,
                             float one_minus_b1, float one_minus_b2, float eps, float lr,
                             float wd, float correction1, float correction2, float grad_scale) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    // Same operation order as optim::adamw_update so fp32 results agree to rounding.
    const float g = grad[i] * grad_scale;
    const float mi = b1 * m[i] + one_minus_b1 * g;
    const float vi = b2 * v[i] + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float m_hat = mi / correction1;
    const float v_hat = vi / correction2;
    const float w = value[i];
    const float updated = w - lr * (m_hat / (sqrtf(v_hat) + eps) + wd * w);
    value[i] = updated;
    if (value_bf16 != nullptr) value_bf16[i] = __float2bfloat16_rn(updated);
  }
}

template <typename DT>
__global__ void sum_of_squares_kernel(double* out, const DT* x, std::int64_t n) {
  __shared__ float shared[32];
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  float acc = 0.0f;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float value = to_float(x[i]);
    acc += value * value;
  }
  acc = block_sum(acc, shared);
  if (threadIdx.x == 0) atomicAdd(out, static_cast<double>(acc));
}

}  // namespace

template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t n, StreamHandle stream) {
  launch_map<T, GeluForward, false>("cuda::gelu_forward", out, inp, nullptr, n, GeluForward{},
                                    stream);
}

template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t n, StreamHandle stream) {
  launch_map<T, GeluBackward, true>("cuda::gelu_backward", dinp, inp, dout, n, GeluBackward{},
                                    stream);
}

template <typename T>
void residual_forward(T* out, const T* a, const T* b, std::int64_t n, StreamHandle stream) {
  launch_map<T, Add, true>("cuda::residual_forward", out, a, b, n, Add{}, stream);
}

void adamw_update(float* value, const float* grad, float* m, float* v, BFloat16* value_bf16,
                  std::int64_t n, const optim::AdamWConfig& config, double lr, std::int64_t step,
                  bool decay, float grad_scale, StreamHandle stream) {
  constexpr const char* kFn = "cuda::adamw_update";
  check_non_negative(kFn, "n", n);
  PIPETRAIN_CHECK_ARG(step >= 1, kFn, "step=", step, " must be >= 1");
  if (n == 0) return;
  const auto t = static_cast<double>(step);
  adamw_kernel<<<grid_for(n, kThreads, 4096), kThreads, 0, to_stream(stream)>>>(
      value, grad, m, v, dev(value_bf16), n, static_cast<float>(config.beta1),
      static_cast<float>(config.beta2), static_cast<float>(1.0 - config.beta1),
      static_cast<float>(1.0 - config.beta2), static_cast<float>(config.eps),
      static_cast<float>(lr), static_cast<float>(decay ? config.weight_decay : 0.0),
      static_cast<float>(1.0 - std::pow(config.beta1, t)),
      static_cast<float>(1.0 - std::pow(config.beta2, t)), grad_scale);
  PIPETRAIN_CUDA_CHECK_LAUNCH("adamw_kernel");
}

template <typename T>
void sum_of_squares(double* out, const T* x, std::int64_t n, StreamHandle stream) {
  check_non_negative("cuda::sum_of_squares", "n", n);
  if (n == 0) return;
  sum_of_squares_kernel<<<grid_for(n, kThreads, 1024), kThreads, 0, to_stream(stream)>>>(
      out, dev(x), n);
  PIPETRAIN_CUDA_CHECK_LAUNCH("sum_of_squares_kernel");
}

#define PIPETRAIN_INSTANTIATE(T)                                                            \
  template void gelu_forward<T>(T*, const T*, std::int64_t, StreamHandle);                  \
  template void gelu_backward<T>(T*, const T*, const T*, std::int64_t, StreamHandle);       \
  template void residual_forward<T>(T*, const T*, const T*, std::int64_t, StreamHandle);    \
  template void sum_of_squares<T>(double*, const T*, std::int64_t, StreamHandle);
PIPETRAIN_INSTANTIATE(float)
PIPETRAIN_INSTANTIATE(BFloat16)
#undef PIPETRAIN_INSTANTIATE

}  // namespace pipetrain::kernels::cuda
