// Causal self-attention, the reference path: plain kernels that materialise the T x T
// probabilities in fp32. Correctness first; a fused flash-style kernel is to be checked
// against these.
#include <cmath>

#include "common.cuh"

namespace pipetrain::kernels::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = 8;

// One warp per (b, h, i) query row: scores for j <= i, then the softmax in place; zeros above
// the diagonal so att matches the CPU twin element for element.
template <typename DT>
__global__ void attention_softmax_kernel(float* att, const DT* qkv, std::int64_t b,
                                         std::int64_t t, std::int64_t c, std::int64_t nh,
                                         float scale) {
  const std::int64_t hs = c / nh;
  const std::int64_t rows = b * nh * t;
  const std::int64_t warp = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (warp >= rows) return;
  const int lane = threadIdx.x;
  const std::int64_t i = warp % t, h = (warp / t) % nh, bi = warp / (t * nh);
  const DT* q = qkv + (bi * t + i) * 3 * c + h * hs;
  float* a = att + warp * t;
  float m = -INFINITY;
  for (std::int64_t j = lane; j <= i; j += 32) {
    const DT* k = qkv + (bi * t + j) * 3 * c + c + h * hs;
    float dot = 0.0f;
    for (std::int64_t d = 0; d < hs; ++d) dot += to_float(q[d]) * to_float(k[d]);
    dot *= scale;
    a[j] = dot;
    m = fmaxf(m, dot);
  }
  m = warp_max(m);
  float s = 0.0f;
  for (std::int64_t j = lane; j <= i; j += 32) {
    const float e = __expf(a[j] - m);
    a[j] = e;
    s += e;
  }
  const float inv = 1.0f / warp_sum(s);
  for (std::int64_t j = lane; j < t; j += 32) a[j] = j <= i ? a[j] * inv : 0.0f;
}

// out[b, i, h*hs + d] = sum_{j <= i} att[b, h, i, j] v[b, j, h, d]; one thread per output,
// consecutive threads on consecutive d so the v reads coalesce.
template <typename DT>
__global__ void attention_value_kernel(DT* out, const float* att, const DT* qkv, std::int64_t b,
                                       std::int64_t t, std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const std::int64_t total = b * t * c;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const std::int64_t ch = idx % c, i = (idx / c) % t, bi = idx / (c * t);
    const std::int64_t h = ch / hs;
    const float* a = att + ((bi * nh + h) * t + i) * t;
    const DT* v = qkv + bi * t * 3 * c + 2 * c + ch;
    float acc = 0.0f;
    for (std::int64_t j = 0; j <= i; ++j) acc += a[j] * to_float(v[j * 3 * c]);
    out[idx] = from_float<DT>(acc);
  }
}

// Softmax backward, one warp per (b, h, i): dS_ij = A_ij (dA_ij - sum_k A_ik dA_ik) with
// dA_ij = dout_i . v_j; dS goes to scratch (zero above the diagonal).
template <typename DT>
__global__ void attention_dscore_kernel(float* scratch, const float* att, const DT* dout,
                                        const DT* qkv, std::int64_t b, std::int64_t t,
                                        std::int64_t c, std::int64_t nh) {
  const std::int64_t hs = c / nh;
  const std::int64_t rows = b * nh * t;
  const std::int64_t warp = static_cast<std::int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y;
  if (warp >= rows) return;
  const int lane = threadIdx.x;
  const std::int64_t i = warp % t, h = (warp / t) % nh, bi = warp / (t * nh);
  const DT* dy = dout + (bi * t + i) * c + h * hs;
  const float* a = att + warp * t;
  float* ds = scratch + warp * t;
  float dot = 0.0f;
  for (std::int64_t j = lane; j <= i; j += 32) {
    const DT* v = qkv + (bi * t + j) * 3 * c + 2 * c + h * hs;
    float da = 0.0f;
    for (std::int64_t d = 0; d < hs; ++d) da += to_float(dy[d]) * to_float(v[d]);
    ds[j] = da;
    dot += da * a[j];
  }
  dot = warp_sum(dot);
  // Each lane rewrites only the entries it wrote above: no barrier needed.
  for (std::int64_t j = lane; j < t; j += 32) ds[j] = j <= i ? a[j] * (ds[j] - dot) : 0.0f;
}

// One thread per (b, p, h, d): dq[p] = s sum_{j<=p} dS[p,j] k[j]; dk[p] = s sum_{i>=p} dS[i,p]
// q[i]; dv[p] = sum_{i>=p} A[i,p] dout[i].
template <typename DT>
__global__ void attention_dqkv_kernel(DT* dqkv, const float* scratch, const float* att,
                                      const DT* dout, const DT* qkv, std::int64_t b,
                                      std::int64_t t, std::int64_t c, std::int64_t nh,
                                      float scale) {
  const std::int64_t hs = c / nh;
  const std::int64_t total = b * t * c;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t idx = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       idx < total; idx += stride) {
    const std::int64_t ch = idx % c, p = (idx / c) % t, bi = idx / (c * t);
    const std::int64_t h = ch / hs;
    const std::int64_t head = (bi * nh + h) * t * t;
    const DT* base = qkv + bi * t * 3 * c + ch;  // q at +0, k at +c, v at +2c, row stride 3c
    float dq = 0.0f, dk = 0.0f, dv = 0.0f;
    for (std::int64_t j = 0; j <= p; ++j) {
      dq += scratch[head + p * t + j] * to_float(base[j * 3 * c + c]);
    }
    for (std::int64_t i = p; i < t; ++i) {
      dk += scratch[head + i * t + p] * to_float(base[i * 3 * c]);
      dv += att[head + i * t + p] * to_float(dout[(bi * t + i) * c + ch]);
    }
    DT* out = dqkv + (bi * t + p) * 3 * c + ch;
    out[0] = from_float<DT>(dq * scale);
    out[c] = from_float<DT>(dk * scale);
    out[2 * c] = from_float<DT>(dv);
  }
}

void check_attention(const char* fn, std::int64_t b, std::int64_t t, std::int64_t c,
                     std::int64_t nh) {
  check_non_negative(fn, "b", b);
  check_non_negative(fn, "t", t);
  std::string why;
  if (!attention_can_implement(c, nh, &why)) {
    throw InvalidArgument(pipetrain::detail::message(fn, why));
  }
}

}  // namespace

template <typename T>
void attention_forward(T* out, float* att, const T* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, StreamHandle stream) {
  check_attention("cuda::attention_forward", b, t, c, nh);
  if (b == 0 || t == 0) return;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c / nh)));
  const std::int64_t rows = b * nh * t;
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  attention_softmax_kernel<<<grid, dim3(32, kWarpsPerBlock), 0, to_stream(stream)>>>(
      att, dev(qkv), b, t, c, nh, scale);
  PIPETRAIN_CUDA_CHECK_LAUNCH("attention_softmax_kernel");
  attention_value_kernel<<<grid_for(b * t * c, kThreads), kThreads, 0, to_stream(stream)>>>(
      dev(out), att, dev(qkv), b, t, c, nh);
  PIPETRAIN_CUDA_CHECK_LAUNCH("attention_value_kernel");
}

template <typename T>
void attention_backward(T* dqkv, float* scratch, const T* dout, const T* qkv, const float* att,
                        std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t nh,
                        StreamHandle stream) {
  check_attention("cuda::attention_backward", b, t, c, nh);
  if (b == 0 || t == 0) return;
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(c / nh)));
  const std::int64_t rows = b * nh * t;
  const dim3 grid(static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock));
  attention_dscore_kernel<<<grid, dim3(32, kWarpsPerBlock), 0, to_stream(stream)>>>(
      scratch, att, dev(dout), dev(qkv), b, t, c, nh);
  PIPETRAIN_CUDA_CHECK_LAUNCH("attention_dscore_kernel");
  attention_dqkv_kernel<<<grid_for(b * t * c, kThreads), kThreads, 0, to_stream(stream)>>>(
      dev(dqkv), scratch, att, dev(dout), dev(qkv), b, t, c, nh, scale);
  PIPETRAIN_CUDA_CHECK_LAUNCH("attention_dqkv_kernel");
}

template void attention_forward<float>(float*, float*, const float*, std::int64_t, std::int64_t,
                                       std::int64_t, std::int64_t, StreamHandle);
template void attention_forward<BFloat16>(BFloat16*, float*, const BFloat16*, std::int64_t,
                                          std::int64_t, std::int64_t, std::int64_t,
                                          StreamHandle);
template void attention_backward<float>(float*, float*, const float*, const float*,
                                        const float*, std::int64_t, std::int64_t, std::int64_t,
                                        std::int64_t, StreamHandle);
template void attention_backward<BFloat16>(BFloat16*, float*, const BFloat16*, const BFloat16*,
                                           const float*, std::int64_t, std::int64_t,
                                           std::int64_t, std::int64_t, StreamHandle);

}  // namespace pipetrain::kernels::cuda
