// What the transformer layers (pipetrain/nn/attention.h) share: the checks of their
// constructor arguments and of [B, T, C] inputs (not installed).
#pragma once

#include <cstdint>

#include "layer_util.h"
#include "pipetrain/error.h"
#include "pipetrain/stage.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn::detail {

/// Checks a spec is [B, T, channels] with B, T >= 1, of `dtype`:
///   "[CausalSelfAttention::forward] input has shape [2, 8], expected [B, T, 8]"
///   "[CausalSelfAttention::forward] input has dtype fp64, expected fp32"
inline void check_sequence(const TensorSpec& spec, std::int64_t channels, DType dtype,
                           const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(spec.shape.size() == 3 && spec.shape[0] >= 1 && spec.shape[1] >= 1 &&
                          spec.shape[2] == channels,
                      fn, what, " has shape ", shape_to_string(spec.shape), ", expected [B, T, ",
                      channels, "]");
  PIPETRAIN_CHECK_ARG(spec.dtype == dtype, fn, what, " has dtype ", to_string(spec.dtype),
                      ", expected ", to_string(dtype));
}

/// Checks channels >= 1, heads >= 1, channels divisible by heads and an fp32/fp64 dtype;
/// returns channels (for a constructor's initialiser list).
inline std::int64_t check_heads(std::int64_t channels, std::int64_t heads, DType dtype,
                                const char* fn) {
  PIPETRAIN_CHECK_ARG(channels >= 1, fn, "channels=", channels, " must be >= 1");
  PIPETRAIN_CHECK_ARG(heads >= 1, fn, "heads=", heads, " must be >= 1");
  PIPETRAIN_CHECK_ARG(channels % heads == 0, fn, "channels=", channels,
                      " must be divisible by heads=", heads);
  dispatch_float(dtype, fn, [](auto) {});
  return channels;
}

}  // namespace pipetrain::nn::detail
