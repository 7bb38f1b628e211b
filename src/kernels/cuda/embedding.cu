// Token + position embedding, forward and weight gradient.
#include "common.cuh"

namespace pipetrain::kernels::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 256;

// One thread per 16-byte pack of an output row: wte gathers are whole packs of one token row.
template <typename DT>
__global__ void embedding_forward_kernel(DT* out, const std::int32_t* tokens, const DT* wte,
                                         const DT* wpe, std::int64_t rows, std::int64_t t,
                                         std::int64_t c) {
  constexpr int K = Pack<DT>::kSize;
  const std::int64_t packs_per_row = c / K;
  const std::int64_t total = rows * packs_per_row;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += stride) {
    const std::int64_t row = i / packs_per_row;
    const std::int64_t k = (i % packs_per_row) * K;
    const std::int64_t token = tokens[row];
    const Pack<DT> a = load_pack(wte + token * c + k);
    const Pack<DT> b = load_pack(wpe + (row % t) * c + k);
    Pack<DT> y;
#pragma unroll
    for (int j = 0; j < K; ++j) y.v[j] = from_float<DT>(to_float(a.v[j]) + to_float(b.v[j]));
    store_pack(out + row * c + k, y);
  }
}

// dwpe[t, ch] += sum over b: one thread per (t, ch) walks the batch in order (deterministic).
template <typename DT, typename DG>
__global__ void embedding_dwpe_kernel(DG* dwpe, const DT* dout, std::int64_t b, std::int64_t t,
                                      std::int64_t c) {
  const std::int64_t total = t * c;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += stride) {
    float acc = 0.0f;
    for (std::int64_t r = 0; r < b; ++r) acc += to_float(dout[r * total + i]);
    dwpe[i] = from_float<DG>(to_float(dwpe[i]) + acc);
  }
}

// dwte[token, ch] += dout[row, ch]: repeated tokens collide, hence atomics.
template <typename DT, typename DG>
__global__ void embedding_dwte_kernel(DG* dwte, const DT* dout, const std::int32_t* tokens,
                                      std::int64_t rows, std::int64_t c) {
  const std::int64_t total = rows * c;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < total; i += stride) {
    const std::int64_t row = i / c, ch = i % c;
    atomic_add(dwte + static_cast<std::int64_t>(tokens[row]) * c + ch, to_float(dout[i]));
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                       std::int64_t b, std::int64_t t, std::int64_t c, StreamHandle stream) {
  constexpr const char* kFn = "cuda::embedding_forward";
  check_non_negative(kFn, "b", b);
  check_non_negative(kFn, "t", t);
  check_vector_channels(kFn, c, dtype_of<T>());
  check_aligned16(kFn, "out", out);
  check_aligned16(kFn, "wte", wte);
  check_aligned16(kFn, "wpe", wpe);
  if (b == 0 || t == 0) return;
  const std::int64_t packs = b * t * (c / Pack<DeviceType<T>>::kSize);
  embedding_forward_kernel<<<grid_for(packs, kThreads), kThreads, 0, to_stream(stream)>>>(
      dev(out), tokens, dev(wte), dev(wpe), b * t, t, c);
  PIPETRAIN_CUDA_CHECK_LAUNCH("embedding_forward_kernel");
}

template <typename T, typename G>
void embedding_backward_weight(G* dwte, G* dwpe, const T* dout, const std::int32_t* tokens,
                               std::int64_t b, std::int64_t t, std::int64_t c,
                               StreamHandle stream) {
  constexpr const char* kFn = "cuda::embedding_backward_weight";
  check_non_negative(kFn, "b", b);
  check_non_negative(kFn, "t", t);
  check_non_negative(kFn, "c", c);
  if (b == 0 || t == 0 || c == 0) return;
  embedding_dwpe_kernel<<<grid_for(t * c, kThreads), kThreads, 0, to_stream(stream)>>>(
      dev(dwpe), dev(dout), b, t, c);
  PIPETRAIN_CUDA_CHECK_LAUNCH("embedding_dwpe_kernel");
  embedding_dwte_kernel<<<grid_for(b * t * c, kThreads), kThreads, 0, to_stream(stream)>>>(
      dev(dwte), dev(dout), tokens, b * t, c);
  PIPETRAIN_CUDA_CHECK_LAUNCH("embedding_dwte_kernel");
}

template void embedding_forward<float>(float*, const std::int32_t*, const float*, const float*,
                                       std::int64_t, std::int64_t, std::int64_t, StreamHandle);
template void embedding_forward<BFloat16>(BFloat16*, const std::int32_t*, const BFloat16*,
                                          const BFloat16*, std::int64_t, std::int64_t,
                                          std::int64_t, StreamHandle);
#define PIPETRAIN_INSTANTIATE(T, G)                                                           \
  template void embedding_backward_weight<T, G>(G*, G*, const T*, const std::int32_t*,        \
                                                std::int64_t, std::int64_t, std::int64_t,     \
                                                StreamHandle);
PIPETRAIN_INSTANTIATE(float, float)
PIPETRAIN_INSTANTIATE(BFloat16, BFloat16)
PIPETRAIN_INSTANTIATE(BFloat16, float)
#undef PIPETRAIN_INSTANTIATE

}  // namespace pipetrain::kernels::cuda
