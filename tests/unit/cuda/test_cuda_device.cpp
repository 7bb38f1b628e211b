// The CUDA backend's behaviour that needs no GPU: size classes, launch-limit checks, and what
// happens when CUDA is not built or no device is present. Runs in every build.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

#include "pipetrain/build_info.h"
#include "pipetrain/cuda/allocator.h"
#include "pipetrain/cuda/device.h"
#include "pipetrain/error.h"
#include "pipetrain/kernels/cuda.h"
#include "pipetrain/tensor.h"

namespace pipetrain {
namespace {

namespace kc = kernels::cuda;

template <typename E, typename F>
void expect_message(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected: " << message;
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

std::string not_built(const std::string& fn) {
  return "[" + fn + "] pipetrain was built without CUDA: reconfigure with "
         "-DPIPETRAIN_WITH_CUDA=ON (and install it)";
}

TEST(CudaAllocator, RoundsToSizeClasses) {
  using cuda::allocator_round_size;
  EXPECT_EQ(allocator_round_size(0), 512u);
  EXPECT_EQ(allocator_round_size(1), 512u);
  EXPECT_EQ(allocator_round_size(512), 512u);
  EXPECT_EQ(allocator_round_size(513), 1024u);
  EXPECT_EQ(allocator_round_size(1u << 20), 1u << 20);
  EXPECT_EQ(allocator_round_size((1u << 20) + 1), (1u << 20) + (1u << 18));
  EXPECT_EQ(allocator_round_size(3u << 20), 3u << 20);
  EXPECT_EQ(allocator_round_size((5u << 20) + 1), 6u << 20);
  EXPECT_EQ(allocator_round_size((7u << 20) + 1), 8u << 20);
}

TEST(CudaAllocator, IsACudaAllocator) {
  EXPECT_EQ(cuda_allocator().device(), Device::kCuda);
}

TEST(CudaAllocator, TensorRejectsAnAllocatorOfAnotherDevice) {
  expect_message<InvalidArgument>(
      [] { Tensor::empty({2}, DType::kFloat32, Device::kCpu, &cuda_allocator()); },
      "[Tensor::empty] the allocator gives cuda memory, asked for a cpu tensor");
}

TEST(CudaKernels, CanImplementExplainsTheLimits) {
  std::string why;
  EXPECT_TRUE(kc::layernorm_can_implement(768, DType::kBFloat16, &why));
  EXPECT_TRUE(kc::layernorm_can_implement(12, DType::kFloat32));
  EXPECT_FALSE(kc::layernorm_can_implement(30, DType::kBFloat16, &why));
  EXPECT_EQ(why, "c=30 must be a multiple of 8 (16-byte loads of bf16)");
  EXPECT_FALSE(kc::embedding_can_implement(6, DType::kFloat32, &why));
  EXPECT_EQ(why, "c=6 must be a multiple of 4 (16-byte loads of fp32)");
  EXPECT_FALSE(kc::layernorm_can_implement(0, DType::kFloat32, &why));
  EXPECT_EQ(why, "c=0 must be > 0");
  EXPECT_FALSE(kc::layernorm_can_implement(16, DType::kFloat64, &why));
  EXPECT_EQ(why, "dtype fp64 is not fp32 or bf16");
  EXPECT_TRUE(kc::attention_can_implement(24, 3));
  EXPECT_FALSE(kc::attention_can_implement(10, 3, &why));
  EXPECT_EQ(why, "c=10 must be divisible by nh=3");
  EXPECT_FALSE(kc::attention_can_implement(10, 0, &why));
  EXPECT_EQ(why, "c=10 and nh=0 must be > 0");
}

TEST(CudaNotBuilt, EveryEntryPointSaysSo) {
  if (is_built_with(Part::kCuda)) GTEST_SKIP() << "built with CUDA";
  EXPECT_EQ(cuda_device_count(), 0);
  EXPECT_FALSE(cuda_is_available());
  EXPECT_FALSE(kc::is_available());
  EXPECT_EQ(cuda_unavailable_reason(), "built without CUDA");
  expect_message<NotBuiltError>([] { Tensor::empty({2}, DType::kFloat32, Device::kCuda); },
                                not_built("Tensor::empty"));
  expect_message<NotBuiltError>([] { cuda_allocator().allocate(16); },
                                not_built("cuda_allocator"));
  expect_message<NotBuiltError>([] { kc::gelu_forward<float>(nullptr, nullptr, 4, nullptr); },
                                not_built("cuda::gelu_forward"));
  expect_message<NotBuiltError>([] { cuda::create_stream(); }, not_built("cuda::create_stream"));
  const cuda::AllocatorStats stats = cuda::allocator_stats();
  EXPECT_EQ(stats.reserved_bytes, 0u);
  EXPECT_EQ(stats.allocations, 0);
}

TEST(CudaNoDevice, DeviceQueriesAnswerWithoutThrowing) {
  if (!is_built_with(Part::kCuda)) GTEST_SKIP() << "built without CUDA";
  if (cuda_device_count() > 0) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_FALSE(cuda_is_available());
  EXPECT_FALSE(kc::is_available());
  EXPECT_FALSE(cuda_unavailable_reason().empty());
  expect_message<Error>([] { Tensor::empty({2}, DType::kFloat32, Device::kCuda); },
                        "[Tensor::empty] no CUDA device is present: cuda_device_count() is 0");
  expect_message<Error>([] { cuda_allocator().allocate(16); },
                        "[cuda_allocator] no CUDA device is present: cuda_device_count() is 0");
  expect_message<Error>([] { cuda::create_stream(); },
                        "[cuda::create_stream] no CUDA device is present: cuda_device_count() "
                        "is 0");
  // Nothing to do needs no device.
  EXPECT_NO_THROW(kc::gelu_forward<float>(nullptr, nullptr, 0, nullptr));
  EXPECT_EQ(cuda::allocator_stats().device_mallocs, 0);
}

// Launch limits are checked on the host before anything is queued, so they hold with or
// without a device.
TEST(CudaLaunchLimits, RejectedArgumentsNameTheRule) {
  if (!is_built_with(Part::kCuda)) GTEST_SKIP() << "built without CUDA";
  auto* misaligned = reinterpret_cast<float*>(std::uintptr_t{0x1004});
  expect_message<InvalidArgument>(
      [] {
        kc::layernorm_forward<BFloat16>(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 3,
                                        30, nullptr);
      },
      "[cuda::layernorm_forward] c=30 must be a multiple of 8 (16-byte loads of bf16)");
  expect_message<InvalidArgument>(
      [&] {
        kc::layernorm_backward_input<float>(misaligned, nullptr, nullptr, nullptr, nullptr,
                                            nullptr, 3, 16, nullptr);
      },
      "[cuda::layernorm_backward_input] dinp is not 16-byte aligned");
  expect_message<InvalidArgument>(
      [] {
        kc::embedding_forward<float>(nullptr, nullptr, nullptr, nullptr, 2, 3, 6, nullptr);
      },
      "[cuda::embedding_forward] c=6 must be a multiple of 4 (16-byte loads of fp32)");
  expect_message<InvalidArgument>(
      [] { kc::gelu_forward<float>(nullptr, nullptr, -1, nullptr); },
      "[cuda::gelu_forward] n=-1 must be >= 0");
  expect_message<InvalidArgument>(
      [] {
        kc::attention_forward<float>(nullptr, nullptr, nullptr, 1, 4, 10, 3, nullptr);
      },
      "[cuda::attention_forward] c=10 must be divisible by nh=3");
  expect_message<InvalidArgument>(
      [] {
        kc::cross_entropy_fused<float>(nullptr, nullptr, nullptr, nullptr, 1.0, 2, 0, nullptr);
      },
      "[cuda::cross_entropy_fused] v=0 must be > 0");
  expect_message<InvalidArgument>(
      [] {
        kc::adamw_update(nullptr, nullptr, nullptr, nullptr, nullptr, 4, optim::AdamWConfig{},
                         1e-3, 0, true, 1.0f, nullptr);
      },
      "[cuda::adamw_update] step=0 must be >= 1");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, false, 4, 5, 6, 1.0f, nullptr, 5, nullptr, 5, 0.0f, nullptr, 5,
                 DType::kFloat32, DType::kFloat32, nullptr, nullptr);
      },
      "[cuda::gemm] lda=5 must be >= 6 (A is not transposed)");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, false, 4, 5, 6, 1.0f, nullptr, 6, nullptr, 5, 0.0f, nullptr, 5,
                 DType::kFloat32, DType::kBFloat16, nullptr, nullptr);
      },
      "[cuda::gemm] c_type=bf16 must be fp32 with ab_type=fp32");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, false, 4, 5, 6, 1.0f, nullptr, 6, nullptr, 5, 0.0f, nullptr, 5,
                 DType::kInt32, DType::kFloat32, nullptr, nullptr);
      },
      "[cuda::gemm] ab_type=int32 must be fp32 or bf16");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, true, 4, 5, 6, 1.0f, nullptr, 6, nullptr, 5, 0.0f, nullptr, 5,
                 DType::kFloat32, DType::kFloat32, nullptr, nullptr);
      },
      "[cuda::gemm] ldb=5 must be >= 6 (B is transposed)");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, false, 4, 5, 6, 1.0f, nullptr, 6, nullptr, 5, 0.0f, nullptr, 4,
                 DType::kBFloat16, DType::kFloat32, nullptr, nullptr);
      },
      "[cuda::gemm] ldc=4 must be >= n=5");
  expect_message<InvalidArgument>(
      [] {
        kc::gemm(false, false, 4, 5, 0, 1.0f, nullptr, 6, nullptr, 5, 0.0f, nullptr, 5,
                 DType::kFloat32, DType::kFloat32, nullptr, nullptr);
      },
      "[cuda::gemm] k=0 must be > 0");
}

}  // namespace
}  // namespace pipetrain
