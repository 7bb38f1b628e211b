// What the generic layers (pipetrain/nn/layers.h) share: the per-microbatch state machine
// forward -> backward_input -> backward_weight, and the checks of their inputs (not installed).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "layer_util.h"
#include "pipetrain/error.h"
#include "pipetrain/stage.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn::detail {

// ---- the per-microbatch state machine ----------------------------------------------------------
// A layer keeps std::map<MicrobatchId, Saved>, where Saved has `bool input_done` (backward_input
// ran) and `std::size_t bytes() const` (bytes of the tensors it holds). Every check throws
// InvalidArgument naming the caller `fn` and the microbatch and changes nothing, so a layer
// checks first and records after computing: a call that throws leaves the layer as it was.

/// Throws unless mb is new: "[Linear::forward] microbatch 3 is already in flight".
template <typename Saved>
void check_new(const std::map<MicrobatchId, Saved>& saved, MicrobatchId mb, const char* fn) {
  PIPETRAIN_CHECK_ARG(!saved.contains(mb), fn, "microbatch ", mb, " is already in flight");
}

/// mb's state for backward_input: throws unless forward ran and backward_input did not.
template <typename Saved>
Saved& for_input(std::map<MicrobatchId, Saved>& saved, MicrobatchId mb, const char* fn) {
  auto it = saved.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved.end(), fn, "microbatch ", mb, " has no saved forward");
  PIPETRAIN_CHECK_ARG(!it->second.input_done, fn, "microbatch ", mb, " already ran backward_input");
  return it->second;
}

/// mb's state for backward_weight: throws unless backward_input ran.
template <typename Saved>
typename std::map<MicrobatchId, Saved>::iterator for_weight(std::map<MicrobatchId, Saved>& saved,
                                                            MicrobatchId mb, const char* fn) {
  auto it = saved.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved.end() && it->second.input_done, fn, "microbatch ", mb,
                      " has not run backward_input");
  return it;
}

template <typename Saved>
std::size_t bytes_kept(const std::map<MicrobatchId, Saved>& saved) {
  std::size_t n = 0;
  for (const auto& [mb, s] : saved) n += s.bytes();
  return n;
}

/// Checks a spec is [..., features] (at least 1-d) of `dtype`:
///   "[Linear::forward] input has shape [2, 3], expected [..., 4]"
///   "[Linear::forward] input has dtype fp64, expected fp32"
inline void check_features(const TensorSpec& spec, std::int64_t features, DType dtype,
                           const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(!spec.shape.empty() && spec.shape.back() == features, fn, what, " has shape ",
                      shape_to_string(spec.shape), ", expected [..., ", features, "]");
  PIPETRAIN_CHECK_ARG(spec.dtype == dtype, fn, what, " has dtype ", to_string(spec.dtype),
                      ", expected ", to_string(dtype));
}

/// Checks a spec has `dtype` (any shape).
inline void check_dtype(const TensorSpec& spec, DType dtype, const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(spec.dtype == dtype, fn, what, " has dtype ", to_string(spec.dtype),
                      ", expected ", to_string(dtype));
}

/// The spec of a defined tensor: "[Linear::forward] input is undefined".
inline TensorSpec spec_of(const Tensor& t, const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(t.defined(), fn, what, " is undefined");
  PIPETRAIN_CHECK_ARG(t.device() == Device::kCpu, fn, what, " is on ", to_string(t.device()),
                      ", expected cpu (the generic layers have no CUDA path yet)");
  return {t.shape(), t.dtype()};
}

/// Checks a gradient has exactly the spec of the output it belongs to:
///   "[Linear::backward_input] grad_output has shape [1, 3, 8], expected [1, 2, 8]"
inline void check_grad(const Tensor& grad, const TensorSpec& expected, const char* fn) {
  const TensorSpec spec = spec_of(grad, fn, "grad_output");
  PIPETRAIN_CHECK_ARG(spec.shape == expected.shape, fn, "grad_output has shape ",
                      shape_to_string(spec.shape), ", expected ", shape_to_string(expected.shape));
  check_dtype(spec, expected.dtype, fn, "grad_output");
}

/// A layer's parameter name: "weight" for an unnamed layer, "fc1.weight" for layer "fc1".
inline std::string param_name(const std::string& layer, const char* what) {
  return layer.empty() ? std::string(what) : layer + "." + what;
}

}  // namespace pipetrain::nn::detail
