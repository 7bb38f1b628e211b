// The free functions of pipetrain/stage.h: how boundary specs print, specs_of, and which dtypes
// carry gradients.
#include <gtest/gtest.h>

#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/stage.h"

namespace pipetrain {
namespace {

TEST(TensorSpec, Prints) {
  EXPECT_EQ(to_string(TensorSpec{{2, 4, 8}, DType::kFloat32}), "[2, 4, 8] fp32");
  EXPECT_EQ(to_string(TensorSpec{{}, DType::kFloat64}), "[] fp64");
  EXPECT_EQ(
      to_string(std::vector<TensorSpec>{{{2, 4}, DType::kInt32}, {{2, 4, 8}, DType::kFloat32}}),
      "([2, 4] int32, [2, 4, 8] fp32)");
  EXPECT_EQ(to_string(std::vector<TensorSpec>{}), "()");
}

TEST(TensorSpec, SpecsOf) {
  const TensorList tensors = {Tensor::zeros({3}, DType::kInt32), Tensor::zeros({1, 2})};
  EXPECT_EQ(specs_of(tensors),
            (std::vector<TensorSpec>{{{3}, DType::kInt32}, {{1, 2}, DType::kFloat32}}));
  EXPECT_TRUE(specs_of({}).empty());
  EXPECT_EQ(testing::error_of<InvalidArgument>([] {
              specs_of({Tensor::zeros({1}), Tensor()});
            }),
            "[specs_of] tensor 1 of 2 is undefined");
}

TEST(TensorSpec, IsDifferentiable) {
  EXPECT_TRUE(is_differentiable(DType::kFloat32));
  EXPECT_TRUE(is_differentiable(DType::kBFloat16));
  EXPECT_TRUE(is_differentiable(DType::kFloat64));
  EXPECT_FALSE(is_differentiable(DType::kInt32));
}

}  // namespace
}  // namespace pipetrain
