#include "pipetrain/nn/init.h"

#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "random_util.h"

namespace pipetrain::nn {
namespace {

void check_floating(const Tensor& t, const char* fn) {
  PIPETRAIN_CHECK_ARG(t.defined(), fn, "the tensor is undefined");
  PIPETRAIN_CHECK_ARG(t.dtype() != DType::kInt32, fn,
                      "tensor has dtype int32, expected fp32, bf16 or fp64");
}

// Values are computed in double, rounded to fp32, then stored in the tensor's dtype.
void store(Tensor& t, const std::vector<float>& values) {
  t.copy_from(Tensor::from_vector(values, t.shape()));
}

std::vector<float> normal_values(std::int64_t n, double mean, double std, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Box-Muller on 53-bit uniforms in (0, 1): the same values on every standard library.
  auto uniform = [&rng] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  std::vector<float> values(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double theta = 2.0 * std::numbers::pi * uniform();
    values[static_cast<std::size_t>(i)] = static_cast<float>(mean + std * r * std::cos(theta));
    if (i + 1 < n)
      values[static_cast<std::size_t>(i + 1)] =
          static_cast<float>(mean + std * r * std::sin(theta));
  }
  return values;
}

double leaky_relu_gain(double a) { return std::sqrt(2.0 / (1.0 + a * a)); }

double fan(const Parameter& p, FanMode mode, const char* fn) {
  PIPETRAIN_CHECK_ARG(p.value.defined(), fn, "parameter \"", p.name, "\" is undefined");
  PIPETRAIN_CHECK_ARG(p.value.dim() >= 2, fn, "parameter \"", p.name, "\" has shape ",
                      shape_to_string(p.value.shape()), ", expected at least 2 dimensions");
  const Fans f = fans_of(p.value.shape(), fn);
  return static_cast<double>(mode == FanMode::kFanIn ? f.fan_in : f.fan_out);
}

double xavier_std(const Parameter& p, double gain, const char* fn) {
  const double in = fan(p, FanMode::kFanIn, fn), out = fan(p, FanMode::kFanOut, fn);
  return gain * std::sqrt(2.0 / (in + out));
}

}  // namespace

Fans fans_of(const Shape& shape, const char* fn) {
  PIPETRAIN_CHECK_ARG(shape.size() >= 2, fn, "shape ", shape_to_string(shape),
                      " has fewer than 2 dimensions");
  std::int64_t receptive = 1;
  for (std::size_t d = 2; d < shape.size(); ++d) receptive *= shape[d];
  return {shape[1] * receptive, shape[0] * receptive};
}

namespace {
thread_local std::uint64_t init_salt = 0;
}  // namespace

InitScope::InitScope(std::uint64_t salt) : previous_(init_salt) { init_salt = salt; }
InitScope::~InitScope() { init_salt = previous_; }

std::uint64_t parameter_seed(std::uint64_t seed, const std::string& name) {
  const std::uint64_t s = detail::splitmix64(seed ^ detail::splitmix64(detail::fnv1a64(name)));
  return init_salt == 0 ? s : detail::splitmix64(s ^ detail::splitmix64(init_salt));
}

void init_normal(Tensor& t, double mean, double std, std::uint64_t seed) {
  constexpr const char* kFn = "init_normal";
  check_floating(t, kFn);
  PIPETRAIN_CHECK_ARG(std >= 0.0, kFn, "std=", std, " must be >= 0");
  store(t, normal_values(t.numel(), mean, std, seed));
}

void init_uniform(Tensor& t, double lo, double hi, std::uint64_t seed) {
  constexpr const char* kFn = "init_uniform";
  check_floating(t, kFn);
  PIPETRAIN_CHECK_ARG(lo <= hi, kFn, "lo=", lo, " must be <= hi=", hi);
  std::mt19937_64 rng(seed);
  std::vector<float> values(static_cast<std::size_t>(t.numel()));
  for (float& v : values) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
    v = static_cast<float>(lo + (hi - lo) * u);
  }
  store(t, values);
}

void init_normal(Parameter& p, double mean, double std, std::uint64_t seed) {
  init_normal(p.value, mean, std, parameter_seed(seed, p.name));
}

void init_uniform(Parameter& p, double lo, double hi, std::uint64_t seed) {
  init_uniform(p.value, lo, hi, parameter_seed(seed, p.name));
}

void init_xavier_uniform(Parameter& p, double gain, std::uint64_t seed) {
  const double bound = std::sqrt(3.0) * xavier_std(p, gain, "init_xavier_uniform");
  init_uniform(p, -bound, bound, seed);
}

void init_xavier_normal(Parameter& p, double gain, std::uint64_t seed) {
  init_normal(p, 0.0, xavier_std(p, gain, "init_xavier_normal"), seed);
}

void init_kaiming_uniform(Parameter& p, double a, FanMode mode, std::uint64_t seed) {
  const double std = leaky_relu_gain(a) / std::sqrt(fan(p, mode, "init_kaiming_uniform"));
  const double bound = std::sqrt(3.0) * std;
  init_uniform(p, -bound, bound, seed);
}

void init_kaiming_normal(Parameter& p, double a, FanMode mode, std::uint64_t seed) {
  init_normal(p, 0.0, leaky_relu_gain(a) / std::sqrt(fan(p, mode, "init_kaiming_normal")), seed);
}

void init_zeros(Parameter& p) { p.value.zero(); }

void init_constant(Parameter& p, double value) { p.value.fill(value); }

}  // namespace pipetrain::nn
