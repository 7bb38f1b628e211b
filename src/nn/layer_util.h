// Helpers shared by the layer implementations (not installed).
#pragma once

#include <cstddef>

#include "pipetrain/error.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn::detail {

inline std::size_t bytes_of(const Tensor& t) { return t.defined() ? t.nbytes() : 0; }

/// Calls f(float{}) or f(double{}) for the layer's compute dtype.
template <typename F>
decltype(auto) dispatch_float(DType dtype, const char* fn, F&& f) {
  if (dtype == DType::kFloat64) return f(double{});
  PIPETRAIN_CHECK_ARG(dtype == DType::kFloat32, fn, "dtype ", to_string(dtype),
                      " must be fp32 or fp64");
  return f(float{});
}

/// Checks x is [B, T, C] of `dtype` with B, T >= 1.
inline void check_activation(const Tensor& x, std::int64_t c, DType dtype, const char* fn,
                             const char* what) {
  PIPETRAIN_CHECK_ARG(x.defined(), fn, what, " is undefined");
  PIPETRAIN_CHECK_ARG(x.dim() == 3 && x.size(2) == c && x.size(0) > 0 && x.size(1) > 0, fn, what,
                      " has shape ", shape_to_string(x.shape()), ", expected [B, T, ", c, "]");
  PIPETRAIN_CHECK_ARG(x.dtype() == dtype, fn, what, " has dtype ", to_string(x.dtype()),
                      ", expected ", to_string(dtype));
}

/// Checks tokens are int32 [B, T] with 1 <= T <= context and B >= 1.
inline void check_tokens(const Tensor& x, std::int64_t context, const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(x.defined(), fn, what, " is undefined");
  PIPETRAIN_CHECK_ARG(x.dtype() == DType::kInt32, fn, what, " has dtype ", to_string(x.dtype()),
                      ", expected int32");
  PIPETRAIN_CHECK_ARG(x.dim() == 2 && x.size(0) > 0 && x.size(1) > 0, fn, what, " has shape ",
                      shape_to_string(x.shape()), ", expected [B, T]");
  PIPETRAIN_CHECK_ARG(x.size(1) <= context, fn, what, " has T=", x.size(1),
                      ", more than context_length=", context);
}

/// Checks every id is in [0, limit).
inline void check_ids(const Tensor& x, std::int64_t limit, const char* fn, const char* what) {
  const std::int32_t* p = x.data<std::int32_t>();
  for (std::int64_t i = 0; i < x.numel(); ++i) {
    PIPETRAIN_CHECK_ARG(p[i] >= 0 && p[i] < limit, fn, what, " id ", p[i], " at index ", i,
                        " is outside [0, ", limit, ")");
  }
}

}  // namespace pipetrain::nn::detail
