// Test helpers for layers, stages and losses: random tensors whose values are fp32-exact (so an
// fp32 copy and an fp64 copy hold the same numbers), max-norm relative errors, and the
// parameters' values and gradients by name.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain::testing {

/// A tensor of `shape` and `dtype` with N(0, scale^2) values rounded to fp32.
inline Tensor random_tensor(const Shape& shape, std::mt19937_64& rng, DType dtype = DType::kFloat64,
                            double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(normal(rng));
  return Tensor::from_vector(v, shape).to(dtype);
}

/// int32 ids in [0, limit).
inline Tensor random_ids(const Shape& shape, std::int32_t limit, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> dist(0, limit - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(shape_numel(shape)));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}

/// max |got - want| / max |want| (max-norm relative error; 0 when both are zero).
inline double max_rel_error(const std::vector<double>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    norm = std::max(norm, std::abs(want[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

inline double max_rel_error(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  return max_rel_error(got.to_vector<double>(), want.to_vector<double>());
}

/// Adds N(0, scale^2) noise (rounded to fp32) to every parameter, drawn in order: two models
/// built alike and perturbed with the same seed stay alike, whatever their dtype. Moves gains
/// and biases off their special initial values (1, 0), which would hide gradient errors.
inline void perturb(const std::vector<nn::Parameter*>& params, std::uint64_t seed,
                    double scale = 0.1) {
  std::mt19937_64 rng(seed);
  for (nn::Parameter* p : params) {
    const Tensor noise = random_tensor(p->value.shape(), rng, DType::kFloat64, scale);
    std::vector<double> v = p->value.to_vector<double>();
    const std::vector<double> n = noise.to_vector<double>();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(v[i] + n[i]);
    p->value.copy_from(Tensor::from_vector(v, p->value.shape()));
  }
}

/// name -> gradient, as doubles.
inline std::map<std::string, std::vector<double>> grads_by_name(
    const std::vector<nn::Parameter*>& params) {
  std::map<std::string, std::vector<double>> out;
  for (const nn::Parameter* p : params) out[p->name] = p->grad.to_vector<double>();
  return out;
}

/// Bitwise equality of two tensors (shape, dtype and bytes).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::equal(static_cast<const char*>(a.raw_data()),
                    static_cast<const char*>(a.raw_data()) + a.nbytes(),
                    static_cast<const char*>(b.raw_data()));
}

}  // namespace pipetrain::testing
