// Test helper for the transports, in the style of nccl-tests: every element of a message is a
// function of (sender, receiver, message number, index), so every receiver knows what it must get.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "pipetrain/comm/transport.h"
#include "pipetrain/tensor.h"

namespace pipetrain::testing {

inline float expected_value(int from, int to, int message, std::int64_t i) {
  return static_cast<float>(from * 1000 + to * 100 + message * 10) + static_cast<float>(i) * 0.5f;
}

/// An fp32 tensor of `shape` on `device` holding expected_value(from, to, message, i).
inline Tensor make_payload(int from, int to, int message, const Shape& shape,
                           Device device = Device::kCpu) {
  Tensor host = Tensor::empty(shape);
  float* p = host.data<float>();
  for (std::int64_t i = 0; i < host.numel(); ++i) p[i] = expected_value(from, to, message, i);
  return device == Device::kCpu ? host : host.to(device);
}

/// Asserts that `t` (on any device) holds what make_payload(from, to, message, ...) wrote.
inline void expect_payload(const Tensor& t, int from, int to, int message) {
  ASSERT_EQ(t.dtype(), DType::kFloat32);
  const std::vector<float> values = t.to_vector<float>();  // copies to the host
  for (std::size_t i = 0; i < values.size(); ++i) {
    ASSERT_EQ(values[i], expected_value(from, to, message, static_cast<std::int64_t>(i)))
        << "element " << i << " of message " << message << " from " << from << " to " << to;
  }
}

/// The fp32 header of action (stage, kind, microbatch) carrying `shape`.
inline MessageHeader make_header(ActionKind kind, int stage, int microbatch, const Shape& shape,
                                 std::int64_t step = 0) {
  return MessageHeader::make(step, {stage, kind, microbatch}, DType::kFloat32, shape);
}

}  // namespace pipetrain::testing
