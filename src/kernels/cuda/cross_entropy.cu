// Softmax cross-entropy, loss and logits gradient in one kernel, probabilities never stored.
#include "common.cuh"

namespace pipetrain::kernels::cuda {
namespace {

using namespace detail;

constexpr int kThreads = 1024;  // vocabularies are tens of thousands wide: one big block a row

// One block per row. Pass 1: each thread keeps an online (max, sum of exp) over its strided
// elements, merged across the block. Pass 2 recomputes exp(z - max) to write the gradient, so
// the row is read twice and written once, and nothing of size V is kept.
template <typename DT>
__global__ void cross_entropy_kernel(float* losses, DT* dlogits, const DT* logits,
                                     const std::int32_t* targets, float factor, std::int64_t n,
                                     std::int64_t v) {
  __shared__ float shared[32];
  for (std::int64_t row = blockIdx.x; row < n; row += gridDim.x) {
    const DT* z = logits + row * v;
    const std::int64_t target = targets[row];
    // Read before any thread of the block can overwrite it (dlogits may alias logits): the
    // barriers inside block_max/block_sum order this read before pass 2.
    const float z_target = threadIdx.x == 0 ? to_float(z[target]) : 0.0f;
    float m = -INFINITY, s = 0.0f;
    for (std::int64_t k = threadIdx.x; k < v; k += blockDim.x) {
      const float x = to_float(z[k]);
      if (x > m) {
        s = s * __expf(m - x) + 1.0f;
        m = x;
      } else {
        s += __expf(x - m);
      }
    }
    const float row_max = block_max(m, shared);
    const float row_sum = block_sum(m == -INFINITY ? 0.0f : s * __expf(m - row_max), shared);
    if (threadIdx.x == 0) losses[row] = logf(row_sum) - (z_target - row_max);
    if (dlogits != nullptr) {
      const float inv = 1.0f / row_sum;
      DT* d = dlogits + row * v;
      for (std::int64_t k = threadIdx.x; k < v; k += blockDim.x) {
        const float p = __expf(to_float(z[k]) - row_max) * inv;
        d[k] = from_float<DT>(factor * (p - (k == target ? 1.0f : 0.0f)));
      }
    }
    __syncthreads();  // `shared` is reused by the next row
  }
}

}  // namespace

template <typename T>
void cross_entropy_fused(float* losses, T* dlogits, const T* logits, const std::int32_t* targets,
                         double scale, std::int64_t n, std::int64_t v, StreamHandle stream) {
  constexpr const char* kFn = "cuda::cross_entropy_fused";
  check_non_negative(kFn, "n", n);
  PIPETRAIN_CHECK_ARG(v > 0, kFn, "v=", v, " must be > 0");
  if (n == 0) return;
  const auto factor = static_cast<float>(scale / static_cast<double>(n));
  const unsigned grid = static_cast<unsigned>(n < 65535 * 16 ? n : 65535 * 16);
  cross_entropy_kernel<<<grid, kThreads, 0, to_stream(stream)>>>(
      losses, dev(dlogits), dev(logits), targets, factor, n, v);
  PIPETRAIN_CUDA_CHECK_LAUNCH("cross_entropy_kernel");
}

template void cross_entropy_fused<float>(float*, float*, const float*, const std::int32_t*,
                                         double, std::int64_t, std::int64_t, StreamHandle);
template void cross_entropy_fused<BFloat16>(float*, BFloat16*, const BFloat16*,
                                            const std::int32_t*, double, std::int64_t,
                                            std::int64_t, StreamHandle);

}  // namespace pipetrain::kernels::cuda
