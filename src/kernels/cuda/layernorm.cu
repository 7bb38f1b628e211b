// LayerNorm forward, input gradient, and the column reductions behind dgamma/dbeta and the
// linear layer's dbias.
#include "common.cuh"

namespace pipetrain::kernels::cuda {
namespace {

using namespace detail;

constexpr float kEps = 1e-5f;
constexpr int kRowsPerBlock = 8;  // one warp per row, 8 warps per block

// One warp per row; each lane walks the row in 16-byte packs (c is a multiple of the pack).
// The row is read three times (sum, squared deviations, output): the re-reads hit L1/L2, and
// the two-pass variance avoids the cancellation of E[x^2] - E[x]^2.
template <typename DT>
__global__ void layernorm_forward_kernel(DT* out, float* mean, float* rstd, const DT* inp,
                                         const DT* weight, const DT* bias, std::int64_t n,
                                         int c) {
  constexpr int K = Pack<DT>::kSize;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= n) return;
  const int lane = threadIdx.x;
  const DT* x = inp + row * c;
  float sum = 0.0f;
  for (int k = lane * K; k < c; k += 32 * K) {
    const Pack<DT> p = load_pack(x + k);
#pragma unroll
    for (int j = 0; j < K; ++j) sum += to_float(p.v[j]);
  }
  const float m = warp_sum(sum) / c;
  float var = 0.0f;
  for (int k = lane * K; k < c; k += 32 * K) {
    const Pack<DT> p = load_pack(x + k);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float d = to_float(p.v[j]) - m;
      var += d * d;
    }
  }
  const float s = rsqrtf(warp_sum(var) / c + kEps);
  DT* o = out + row * c;
  for (int k = lane * K; k < c; k += 32 * K) {
    const Pack<DT> p = load_pack(x + k);
    const Pack<DT> w = load_pack(weight + k);
    const Pack<DT> b = load_pack(bias + k);
    Pack<DT> y;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      y.v[j] = from_float<DT>((to_float(p.v[j]) - m) * s * to_float(w.v[j]) + to_float(b.v[j]));
    }
    store_pack(o + k, y);
  }
  if (lane == 0) {
    mean[row] = m;
    rstd[row] = s;
  }
}

template <typename DT>
__global__ void layernorm_backward_input_kernel(DT* dinp, const DT* dout, const DT* inp,
                                                const DT* weight, const float* mean,
                                                const float* rstd, std::int64_t n, int c) {
  constexpr int K = Pack<DT>::kSize;
  const std::int64_t row = static_cast<std::int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.y;
  if (row >= n) return;
  const int lane = threadIdx.x;
  const DT* x = inp + row * c;
  const DT* dy = dout + row * c;
  const float m = mean[row], s = rstd[row];
  float sum_dxhat = 0.0f, sum_dxhat_xhat = 0.0f;
  for (int k = lane * K; k < c; k += 32 * K) {
    const Pack<DT> px = load_pack(x + k), pdy = load_pack(dy + k), pw = load_pack(weight + k);
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float xhat = (to_float(px.v[j]) - m) * s;
      const float dxhat = to_float(pdy.v[j]) * to_float(pw.v[j]);
      sum_dxhat += dxhat;
      sum_dxhat_xhat += dxhat * xhat;
    }
  }
  sum_dxhat = warp_sum(sum_dxhat) / c;
  sum_dxhat_xhat = warp_sum(sum_dxhat_xhat) / c;
  DT* dx = dinp + row * c;
  for (int k = lane * K; k < c; k += 32 * K) {
    const Pack<DT> px = load_pack(x + k), pdy = load_pack(dy + k), pw = load_pack(weight + k);
    Pack<DT> out;
#pragma unroll
    for (int j = 0; j < K; ++j) {
      const float xhat = (to_float(px.v[j]) - m) * s;
      const float dxhat = to_float(pdy.v[j]) * to_float(pw.v[j]);
      out.v[j] = from_float<DT>(s * (dxhat - sum_dxhat - xhat * sum_dxhat_xhat));
    }
    store_pack(dx + k, out);
  }
}

// Column sums over rows, deterministic: a block owns 32 columns; its 32 x kColRows threads
// stride down the rows with fp32 partials, then reduce through shared memory in a fixed order.
// With kLayerNorm it sums dout * xhat into out_a and dout into out_b; otherwise dout into out_a.
// Parallelism is cols/32 blocks, enough for GPT widths; a split over rows would need a second
// pass to stay deterministic.
constexpr int kColRows = 16;

template <typename DT, typename G, bool kLayerNorm>
__global__ void column_sum_kernel(G* out_a, G* out_b, const DT* dout, const DT* inp,
                                  const float* mean, const float* rstd, std::int64_t rows,
                                  std::int64_t cols) {
  __shared__ float part_a[kColRows][33];
  __shared__ float part_b[kColRows][33];
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float a = 0.0f, b = 0.0f;
  if (col < cols) {
    for (std::int64_t r = threadIdx.y; r < rows; r += kColRows) {
      const float dy = to_float(dout[r * cols + col]);
      if constexpr (kLayerNorm) {
        const float xhat = (to_float(inp[r * cols + col]) - mean[r]) * rstd[r];
        a += dy * xhat;
        b += dy;
      } else {
        a += dy;
      }
    }
  }
  part_a[threadIdx.y][threadIdx.x] = a;
  part_b[threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float sa = 0.0f, sb = 0.0f;
    for (int y = 0; y < kColRows; ++y) {
      sa += part_a[y][threadIdx.x];
      sb += part_b[y][threadIdx.x];
    }
    out_a[col] = from_float<G>(to_float(out_a[col]) + sa);
    if constexpr (kLayerNorm) out_b[col] = from_float<G>(to_float(out_b[col]) + sb);
  }
}

template <typename T>
void check_layernorm_args(const char* fn, std::int64_t n, std::int64_t c,
                          std::initializer_list<std::pair<const char*, const void*>> ptrs) {
  check_non_negative(fn, "n", n);
  check_vector_channels(fn, c, dtype_of<T>());
  PIPETRAIN_CHECK_ARG(c <= (1LL << 30), fn, "c=", c, " must be <= 2^30");
  for (const auto& [name, p] : ptrs) check_aligned16(fn, name, p);
}

dim3 rows_grid(std::int64_t n) {
  return dim3(static_cast<unsigned>((n + kRowsPerBlock - 1) / kRowsPerBlock));
}

}  // namespace

namespace detail {

template <typename T, typename G>
void column_sum_accumulate(G* out, const T* in, std::int64_t rows, std::int64_t cols,
                           StreamHandle stream) {
  if (rows == 0 || cols == 0) return;
  const dim3 grid(static_cast<unsigned>((cols + 31) / 32)), block(32, kColRows);
  column_sum_kernel<DeviceType<T>, DeviceType<G>, false><<<grid, block, 0, to_stream(stream)>>>(
      dev(out), nullptr, dev(in), nullptr, nullptr, nullptr, rows, cols);
  PIPETRAIN_CUDA_CHECK_LAUNCH("column_sum_kernel");
}

}  // namespace detail

template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                       const T* bias, std::int64_t n, std::int64_t c, StreamHandle stream) {
  constexpr const char* kFn = "cuda::layernorm_forward";
  check_layernorm_args<T>(kFn, n, c,
                          {{"out", out}, {"inp", inp}, {"weight", weight}, {"bias", bias}});
  if (n == 0) return;
  layernorm_forward_kernel<<<rows_grid(n), dim3(32, kRowsPerBlock), 0, to_stream(stream)>>>(
      dev(out), mean, rstd, dev(inp), dev(weight), dev(bias), n, static_cast<int>(c));
  PIPETRAIN_CUDA_CHECK_LAUNCH("layernorm_forward_kernel");
}

template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight,
                              const float* mean, const float* rstd, std::int64_t n,
                              std::int64_t c, StreamHandle stream) {
  constexpr const char* kFn = "cuda::layernorm_backward_input";
  check_layernorm_args<T>(kFn, n, c,
                          {{"dinp", dinp}, {"dout", dout}, {"inp", inp}, {"weight", weight}});
  if (n == 0) return;
  layernorm_backward_input_kernel<<<rows_grid(n), dim3(32, kRowsPerBlock), 0,
                                    to_stream(stream)>>>(dev(dinp), dev(dout), dev(inp),
                                                         dev(weight), mean, rstd, n,
                                                         static_cast<int>(c));
  PIPETRAIN_CUDA_CHECK_LAUNCH("layernorm_backward_input_kernel");
}

template <typename T, typename G>
void layernorm_backward_weight(G* dweight, G* dbias, const T* dout, const T* inp,
                               const float* mean, const float* rstd, std::int64_t n,
                               std::int64_t c, StreamHandle stream) {
  constexpr const char* kFn = "cuda::layernorm_backward_weight";
  check_non_negative(kFn, "n", n);
  check_non_negative(kFn, "c", c);
  if (n == 0 || c == 0) return;
  const dim3 grid(static_cast<unsigned>((c + 31) / 32)), block(32, kColRows);
  column_sum_kernel<DeviceType<T>, DeviceType<G>, true><<<grid, block, 0, to_stream(stream)>>>(
      dev(dweight), dev(dbias), dev(dout), dev(inp), mean, rstd, n, c);
  PIPETRAIN_CUDA_CHECK_LAUNCH("column_sum_kernel");
}

template void layernorm_forward<float>(float*, float*, float*, const float*, const float*,
                                       const float*, std::int64_t, std::int64_t, StreamHandle);
template void layernorm_forward<BFloat16>(BFloat16*, float*, float*, const BFloat16*,
                                          const BFloat16*, const BFloat16*, std::int64_t,
                                          std::int64_t, StreamHandle);
template void layernorm_backward_input<float>(float*, const float*, const float*, const float*,
                                              const float*, const float*, std::int64_t,
                                              std::int64_t, StreamHandle);
template void layernorm_backward_input<BFloat16>(BFloat16*, const BFloat16*, const BFloat16*,
                                                 const BFloat16*, const float*, const float*,
                                                 std::int64_t, std::int64_t, StreamHandle);
#define PIPETRAIN_INSTANTIATE(T, G)                                                          \
  template void layernorm_backward_weight<T, G>(G*, G*, const T*, const T*, const float*,    \
                                                const float*, std::int64_t, std::int64_t,    \
                                                StreamHandle);                               \
  template void detail::column_sum_accumulate<T, G>(G*, const T*, std::int64_t, std::int64_t, \
                                                    StreamHandle);
PIPETRAIN_INSTANTIATE(float, float)
PIPETRAIN_INSTANTIATE(BFloat16, BFloat16)
PIPETRAIN_INSTANTIATE(BFloat16, float)
#undef PIPETRAIN_INSTANTIATE

}  // namespace pipetrain::kernels::cuda
