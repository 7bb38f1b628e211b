// Built without CUDA (-DPIPETRAIN_WITH_CUDA=OFF or no toolkit found): every CUDA entry point
// exists, reports "not available" or throws NotBuiltError naming -DPIPETRAIN_WITH_CUDA.
#include "pipetrain/build_info.h"
#include "pipetrain/cuda/allocator.h"
#include "pipetrain/cuda/device.h"
#include "pipetrain/kernels/cuda.h"

namespace pipetrain {
namespace {

[[noreturn]] void not_built(std::string_view what) {
  require(Part::kCuda, what);
  throw NotBuiltError("[cuda] unreachable: require() returned in a build without CUDA");
}

class NoCudaAllocator final : public Allocator {
 public:
  void* allocate(std::size_t) override { not_built("cuda_allocator"); }
  void deallocate(void*, std::size_t) noexcept override {}
  Device device() const override { return Device::kCuda; }
};

}  // namespace

int cuda_device_count() noexcept { return 0; }
bool cuda_is_available() noexcept { return false; }
std::string cuda_unavailable_reason() { return "built without CUDA"; }
void require_cuda_device(std::string_view what) { not_built(what); }

Allocator& cuda_allocator() {
  static NoCudaAllocator allocator;
  return allocator;
}

namespace cuda {

int current_device() { not_built("cuda::current_device"); }
void set_device(int) { not_built("cuda::set_device"); }
StreamHandle create_stream() { not_built("cuda::create_stream"); }
void destroy_stream(StreamHandle) noexcept {}
void synchronize(StreamHandle) { not_built("cuda::synchronize"); }
void copy_bytes(void*, Device, const void*, Device, std::size_t, StreamHandle) {
  not_built("cuda::copy_bytes");
}
void zero_bytes(void*, std::size_t, StreamHandle) { not_built("cuda::zero_bytes"); }

AllocatorStats allocator_stats() { return {}; }
void reset_peak_stats() {}
void release_cached_memory() {}

}  // namespace cuda

namespace kernels::cuda {

bool is_available() noexcept { return false; }

void gemm(bool, bool, std::int64_t, std::int64_t, std::int64_t, float, const void*, std::int64_t,
          const void*, std::int64_t, float, void*, std::int64_t, DType, DType, const void*,
          StreamHandle) {
  not_built("cuda::gemm");
}

template <typename T>
void linear_forward(T*, const T*, const T*, const T*, std::int64_t, std::int64_t, std::int64_t,
                    StreamHandle) {
  not_built("cuda::linear_forward");
}
template <typename T>
void linear_backward_input(T*, const T*, const T*, std::int64_t, std::int64_t, std::int64_t,
                           StreamHandle) {
  not_built("cuda::linear_backward_input");
}
template <typename T, typename G>
void linear_backward_weight(G*, G*, const T*, const T*, std::int64_t, std::int64_t,
                            std::int64_t, StreamHandle) {
  not_built("cuda::linear_backward_weight");
}
template <typename T>
void embedding_forward(T*, const std::int32_t*, const T*, const T*, std::int64_t, std::int64_t,
                       std::int64_t, StreamHandle) {
  not_built("cuda::embedding_forward");
}
template <typename T, typename G>
void embedding_backward_weight(G*, G*, const T*, const std::int32_t*, std::int64_t,
                               std::int64_t, std::int64_t, StreamHandle) {
  not_built("cuda::embedding_backward_weight");
}
template <typename T>
void layernorm_forward(T*, float*, float*, const T*, const T*, const T*, std::int64_t,
                       std::int64_t, StreamHandle) {
  not_built("cuda::layernorm_forward");
}
template <typename T>
void layernorm_backward_input(T*, const T*, const T*, const T*, const float*, const float*,
                              std::int64_t, std::int64_t, StreamHandle) {
  not_built("cuda::layernorm_backward_input");
}
template <typename T, typename G>
void layernorm_backward_weight(G*, G*, const T*, const T*, const float*, const float*,
                               std::int64_t, std::int64_t, StreamHandle) {
  not_built("cuda::layernorm_backward_weight");
}
template <typename T>
void gelu_forward(T*, const T*, std::int64_t, StreamHandle) {
  not_built("cuda::gelu_forward");
}
template <typename T>
void gelu_backward(T*, const T*, const T*, std::int64_t, StreamHandle) {
  not_built("cuda::gelu_backward");
}
template <typename T>
void residual_forward(T*, const T*, const T*, std::int64_t, StreamHandle) {
  not_built("cuda::residual_forward");
}
template <typename T>
void attention_forward(T*, float*, const T*, std::int64_t, std::int64_t, std::int64_t,
                       std::int64_t, StreamHandle) {
  not_built("cuda::attention_forward");
}
template <typename T>
void attention_backward(T*, float*, const T*, const T*, const float*, std::int64_t,
                        std::int64_t, std::int64_t, std::int64_t, StreamHandle) {
  not_built("cuda::attention_backward");
}
template <typename T>
void cross_entropy_fused(float*, T*, const T*, const std::int32_t*, double, std::int64_t,
                         std::int64_t, StreamHandle) {
  not_built("cuda::cross_entropy_fused");
}
void adamw_update(float*, const float*, float*, float*, BFloat16*, std::int64_t,
                  const optim::AdamWConfig&, double, std::int64_t, bool, float, StreamHandle) {
  not_built("cuda::adamw_update");
}
template <typename T>
void sum_of_squares(double*, const T*, std::int64_t, StreamHandle) {
  not_built("cuda::sum_of_squares");
}

#define PIPETRAIN_INSTANTIATE(T)                                                               \
  template void linear_forward<T>(T*, const T*, const T*, const T*, std::int64_t,              \
                                  std::int64_t, std::int64_t, StreamHandle);                   \
  template void linear_backward_input<T>(T*, const T*, const T*, std::int64_t, std::int64_t,   \
                                         std::int64_t, StreamHandle);                          \
  template void embedding_forward<T>(T*, const std::int32_t*, const T*, const T*,              \
                                     std::int64_t, std::int64_t, std::int64_t, StreamHandle);  \
  template void layernorm_forward<T>(T*, float*, float*, const T*, const T*, const T*,         \
                                     std::int64_t, std::int64_t, StreamHandle);                \
  template void layernorm_backward_input<T>(T*, const T*, const T*, const T*, const float*,    \
                                            const float*, std::int64_t, std::int64_t,          \
                                            StreamHandle);                                     \
  template void gelu_forward<T>(T*, const T*, std::int64_t, StreamHandle);                     \
  template void gelu_backward<T>(T*, const T*, const T*, std::int64_t, StreamHandle);          \
  template void residual_forward<T>(T*, const T*, const T*, std::int64_t, StreamHandle);       \
  template void attention_forward<T>(T*, float*, const T*, std::int64_t, std::int64_t,         \
                                     std::int64_t, std::int64_t, StreamHandle);                \
  template void attention_backward<T>(T*, float*, const T*, const T*, const float*,            \
                                      std::int64_t, std::int64_t, std::int64_t, std::int64_t,  \
                                      StreamHandle);                                           \
  template void cross_entropy_fused<T>(float*, T*, const T*, const std::int32_t*, double,      \
                                       std::int64_t, std::int64_t, StreamHandle);              \
  template void sum_of_squares<T>(double*, const T*, std::int64_t, StreamHandle);
PIPETRAIN_INSTANTIATE(float)
PIPETRAIN_INSTANTIATE(BFloat16)
#undef PIPETRAIN_INSTANTIATE

#define PIPETRAIN_INSTANTIATE(T, G)                                                            \
  template void linear_backward_weight<T, G>(G*, G*, const T*, const T*, std::int64_t,         \
                                             std::int64_t, std::int64_t, StreamHandle);        \
  template void embedding_backward_weight<T, G>(G*, G*, const T*, const std::int32_t*,         \
                                                std::int64_t, std::int64_t, std::int64_t,      \
                                                StreamHandle);                                 \
  template void layernorm_backward_weight<T, G>(G*, G*, const T*, const T*, const float*,      \
                                                const float*, std::int64_t, std::int64_t,      \
                                                StreamHandle);
PIPETRAIN_INSTANTIATE(float, float)
PIPETRAIN_INSTANTIATE(BFloat16, BFloat16)
PIPETRAIN_INSTANTIATE(BFloat16, float)
#undef PIPETRAIN_INSTANTIATE

}  // namespace kernels::cuda
}  // namespace pipetrain
