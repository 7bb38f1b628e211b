// Device helpers shared by the .cu files: element types, 16-byte packs, reductions, launches.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "check.h"
#include "internal.h"
#include "pipetrain/kernels/cuda.h"
#include "pipetrain/tensor.h"

namespace pipetrain::kernels::cuda::detail {

// The public API speaks pipetrain::BFloat16 (a 16-bit struct with the same bits); kernels use
// __nv_bfloat16 for its conversion intrinsics.
template <typename T>
struct DeviceTypeOf {
  using type = T;
};
template <>
struct DeviceTypeOf<BFloat16> {
  using type = __nv_bfloat16;
};
template <typename T>
using DeviceType = typename DeviceTypeOf<T>::type;

template <typename T>
DeviceType<T>* dev(T* p) {
  return reinterpret_cast<DeviceType<T>*>(p);
}
template <typename T>
const DeviceType<T>* dev(const T* p) {
  return reinterpret_cast<const DeviceType<T>*>(p);
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Sixteen bytes of T: one 128-bit load or store per thread is what saturates HBM.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kSize = 16 / sizeof(T);
  T v[kSize];
};

template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T>*>(p);
}
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& pack) {
  *reinterpret_cast<Pack<T>*>(p) = pack;
}

__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}
__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the
// result. `shared` holds 32 floats; the leading __syncthreads lets callers reuse it.
__device__ __forceinline__ float block_sum(float x, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  x = warp_sum(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = lane < warps ? shared[lane] : 0.0f;
  return warp_sum(x);
}
__device__ __forceinline__ float block_max(float x, float* shared) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int warps = blockDim.x / 32;
  x = warp_max(x);
  __syncthreads();
  if (lane == 0) shared[warp] = x;
  __syncthreads();
  x = lane < warps ? shared[lane] : -INFINITY;
  return warp_max(x);
}

// Atomic add of an fp32 value into a gradient of type G.
__device__ __forceinline__ void atomic_add(float* p, float x) { atomicAdd(p, x); }
__device__ __forceinline__ void atomic_add(__nv_bfloat16* p, float x) {
  atomicAdd(p, __float2bfloat16_rn(x));
}

inline cudaStream_t to_stream(StreamHandle stream) { return static_cast<cudaStream_t>(stream); }

inline bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// Grid size for `work` items at `per_block` items per block, capped for grid-stride loops.
inline unsigned int grid_for(std::int64_t work, std::int64_t per_block,
                             std::int64_t cap = 65535LL * 32) {
  std::int64_t blocks = (work + per_block - 1) / per_block;
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned int>(blocks < 1 ? 1 : blocks);
}

}  // namespace pipetrain::kernels::cuda::detail
