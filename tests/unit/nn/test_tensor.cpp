#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "pipetrain/build_info.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain {
namespace {

template <typename E, typename F>
void expect_message(F&& f, const std::string& message) {
  try {
    f();
    ADD_FAILURE() << "no exception, expected: " << message;
  } catch (const E& e) {
    EXPECT_EQ(std::string(e.what()), message);
  }
}

TEST(Tensor, FactoriesDescribeThemselves) {
  Tensor t = Tensor::zeros({2, 3, 4});
  EXPECT_TRUE(t.defined());
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4}));
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.size(-1), 4);
  EXPECT_EQ(t.numel(), 24);
  EXPECT_EQ(t.nbytes(), 96u);
  EXPECT_EQ(t.dtype(), DType::kFloat32);
  EXPECT_EQ(t.device(), Device::kCpu);
  for (float v : t.to_vector<float>()) EXPECT_EQ(v, 0.0f);
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.raw_data()) % 64, 0u);
  EXPECT_EQ(Tensor::empty({3}, DType::kBFloat16).nbytes(), 6u);
  EXPECT_EQ(Tensor::empty({3}, DType::kFloat64).nbytes(), 24u);
  Tensor scalar = Tensor::empty({}, DType::kFloat64);
  EXPECT_EQ(scalar.numel(), 1);
  Tensor undefined;
  EXPECT_FALSE(undefined.defined());
  EXPECT_EQ(undefined.numel(), 0);
}

TEST(Tensor, DtypeNames) {
  EXPECT_EQ(to_string(DType::kFloat32), "fp32");
  EXPECT_EQ(to_string(DType::kBFloat16), "bf16");
  EXPECT_EQ(to_string(DType::kFloat64), "fp64");
  EXPECT_EQ(to_string(DType::kInt32), "int32");
  EXPECT_EQ(to_string(Device::kCuda), "cuda");
}

TEST(Tensor, DataChecksTheDtype) {
  Tensor t = Tensor::zeros({2});
  expect_message<InvalidArgument>([&] { t.data<double>(); },
                                  "[Tensor::data] asked for fp64 but the tensor holds fp32");
  const Tensor c = Tensor::zeros({2}, DType::kInt32);
  expect_message<InvalidArgument>([&] { c.data<float>(); },
                                  "[Tensor::data] asked for fp32 but the tensor holds int32");
  expect_message<InvalidArgument>([] { Tensor().data<float>(); },
                                  "[Tensor::data] asked for fp32 but the tensor is undefined");
}

TEST(Tensor, CudaIsNotBuilt) {
  // CUDA builds: tests/unit/cuda/test_cuda_device.cpp covers kCuda tensors.
  if (is_built_with(Part::kCuda)) GTEST_SKIP() << "built with CUDA";
  expect_message<NotBuiltError>(
      [] { Tensor::empty({2}, DType::kFloat32, Device::kCuda); },
      "[Tensor::empty] pipetrain was built without CUDA: reconfigure with "
      "-DPIPETRAIN_WITH_CUDA=ON (and install it)");
}

TEST(Tensor, RejectsBadShapes) {
  expect_message<InvalidArgument>(
      [] {
        Tensor::empty({2, -1});
      },
      "[Tensor::empty] shape [2, -1] has a negative dimension");
  expect_message<InvalidArgument>(
      [] {
        Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2});
      },
      "[Tensor::from_vector] shape [2, 2] holds 4 elements, got 3 values");
  Tensor t = Tensor::zeros({2, 3});
  expect_message<InvalidArgument>(
      [&] {
        t.view({4, 2});
      },
      "[Tensor::view] cannot view [2, 3] (6 elements) as [4, 2] (8 elements)");
  expect_message<InvalidArgument>(
      [&] {
        t.view({4, -1});
      },
      "[Tensor::view] cannot view [2, 3] (6 elements) as [4, -1]");
  expect_message<InvalidArgument>([&] { t.slice(1, 5); },
                                  "[Tensor::slice] range [1, 5) is outside dimension 0 of size 2");
  expect_message<InvalidArgument>(
      [&] { t.size(2); },
      "[Tensor::size] dimension 2 is out of range for a tensor of shape [2, 3]");
  expect_message<InvalidArgument>([&] { t.copy_from(Tensor::zeros({4})); },
                                  "[Tensor::copy_from] destination has 6 elements, source has 4");
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {3, 2});
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), (Shape{2, 3}));
  EXPECT_TRUE(v.shares_storage(t));
  Tensor rows = t.slice(1, 3);
  EXPECT_EQ(rows.shape(), (Shape{2, 2}));
  EXPECT_EQ(rows.to_vector<float>(), (std::vector<float>{2, 3, 4, 5}));
  rows.fill(7.0);
  EXPECT_EQ(t.to_vector<float>(), (std::vector<float>{0, 1, 7, 7, 7, 7}));
  Tensor copy = t.clone();
  EXPECT_FALSE(copy.shares_storage(t));
  copy.zero();
  EXPECT_EQ(t.to_vector<float>()[2], 7.0f);
  EXPECT_EQ(t.slice(2, 2).numel(), 0);
}

TEST(Tensor, ConvertsBetweenDtypes) {
  Tensor t = Tensor::from_vector(std::vector<double>{1.5, -2.25, 3.0});
  EXPECT_EQ(t.to(DType::kFloat32).to_vector<float>(), (std::vector<float>{1.5f, -2.25f, 3.0f}));
  EXPECT_EQ(t.to(DType::kInt32).to_vector<std::int32_t>(), (std::vector<std::int32_t>{1, -2, 3}));
  Tensor b = t.to(DType::kBFloat16);
  EXPECT_EQ(b.dtype(), DType::kBFloat16);
  EXPECT_EQ(b.to_vector<double>(), (std::vector<double>{1.5, -2.25, 3.0}));
  Tensor dst = Tensor::zeros({3});
  dst.copy_from(t);
  EXPECT_EQ(dst.to_vector<float>(), (std::vector<float>{1.5f, -2.25f, 3.0f}));
}

TEST(BFloat16, RoundsToNearestEven) {
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
  EXPECT_EQ(float_to_bf16(1.0f + 0x1.0p-8f).bits, 0x3f80);
  // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + 3 * 0x1.0p-8f).bits, 0x3f82);
  // Just above the halfway point rounds up.
  EXPECT_EQ(float_to_bf16(1.0f + 0x1.0p-8f + 0x1.0p-20f).bits, 0x3f81);
  EXPECT_EQ(bf16_to_float(float_to_bf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::infinity()))));
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  // The largest finite float rounds to infinity in bf16.
  EXPECT_TRUE(std::isinf(bf16_to_float(float_to_bf16(std::numeric_limits<float>::max()))));
}

TEST(Parameter, MakeParameterIsZeroFp32) {
  nn::Parameter p = nn::make_parameter("w", {2, 3}, true);
  EXPECT_EQ(p.name, "w");
  EXPECT_EQ(p.value.dtype(), DType::kFloat32);
  EXPECT_EQ(p.grad.shape(), (Shape{2, 3}));
  EXPECT_FALSE(p.value.shares_storage(p.grad));
  p.grad.fill(1.0);
  std::vector<nn::Parameter*> ps{&p};
  EXPECT_EQ(nn::count_parameters(ps), 6);
  nn::zero_grads(ps);
  for (float g : p.grad.to_vector<float>()) EXPECT_EQ(g, 0.0f);
}

}  // namespace
}  // namespace pipetrain
