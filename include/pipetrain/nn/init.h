// pipetrain/nn/init.h: initialisers of parameters (and tensors) from a seed.
//
// Deterministic everywhere: values come from std::mt19937_64 (specified bit for bit by the C++
// standard) through Box-Muller and 53-bit uniforms, never through std::*_distribution (whose
// results differ between standard libraries). They are drawn in double and rounded to fp32
// whatever the tensor's dtype, so an fp32 layer and its fp64 reference twin start from the
// same values.
//
// Seeds: the Tensor overloads draw from `seed` alone. The Parameter overloads draw from
// (seed, parameter name), so every parameter of a model built from one seed gets its own
// stream and its values do not depend on which other layers exist (any cut of a model into
// stages holds the values of the whole model). Two parameters with the same name and the same
// seed therefore start identical, except under an InitScope: a ModelSpec (pipetrain/model_spec.h)
// builds layer i inside InitScope(i + 1), so its layers differ even when they share a seed and
// a shape, and each keeps the same values on whatever stage it lands.
//
// Fans (xavier_*, kaiming_*) follow PyTorch's layout: a weight is [out, in, *receptive], so
// fan_in = in * receptive and fan_out = out * receptive; tensors of fewer than 2 dimensions are
// rejected:
//   "[init_xavier_uniform] parameter "bias" has shape [4], expected at least 2 dimensions"
#pragma once

#include <cstdint>
#include <string>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn {

/// Which fan the Kaiming initialisers preserve the variance of.
enum class FanMode : std::uint8_t { kFanIn, kFanOut };

struct Fans {
  std::int64_t fan_in = 0;
  std::int64_t fan_out = 0;
};
/// Fans of a weight of `shape` ([out, in, *receptive]); `fn` names the caller in the error.
Fans fans_of(const Shape& shape, const char* fn = "fans_of");

/// The seed of parameter `name`'s stream under model seed `seed` (what the Parameter overloads
/// pass to the Tensor ones), mixed with the innermost InitScope's salt when there is one.
std::uint64_t parameter_seed(std::uint64_t seed, const std::string& name);

/// While alive, parameter_seed() on this thread also mixes in `salt` (0: no salt, the values
/// of a layer built outside any scope). Scopes nest; the innermost wins.
class InitScope {
 public:
  explicit InitScope(std::uint64_t salt);
  ~InitScope();
  InitScope(const InitScope&) = delete;
  InitScope& operator=(const InitScope&) = delete;

 private:
  std::uint64_t previous_;
};

// ---- Tensor overloads: any floating dtype (fp32, bf16, fp64), values from `seed` ------------
/// N(mean, std^2). Throws InvalidArgument for std < 0 or a non-floating tensor.
void init_normal(Tensor& t, double mean, double std, std::uint64_t seed);
/// U(lo, hi). Throws InvalidArgument unless lo <= hi.
void init_uniform(Tensor& t, double lo, double hi, std::uint64_t seed);

// ---- Parameter overloads: values from (seed, p.name) ----------------------------------------
void init_normal(Parameter& p, double mean, double std, std::uint64_t seed);
void init_uniform(Parameter& p, double lo, double hi, std::uint64_t seed);
/// U(-b, b), b = gain sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio).
void init_xavier_uniform(Parameter& p, double gain, std::uint64_t seed);
/// N(0, s^2), s = gain sqrt(2 / (fan_in + fan_out)).
void init_xavier_normal(Parameter& p, double gain, std::uint64_t seed);
/// U(-b, b), b = sqrt(3) gain / sqrt(fan), gain = sqrt(2 / (1 + a^2)) (He et al.; PyTorch's
/// leaky_relu gain: a = 0 is ReLU's sqrt(2); a = sqrt(5) is nn.Linear's default, b = 1/sqrt(fan)).
void init_kaiming_uniform(Parameter& p, double a, FanMode mode, std::uint64_t seed);
/// N(0, s^2), s = gain / sqrt(fan), gain as for init_kaiming_uniform.
void init_kaiming_normal(Parameter& p, double a, FanMode mode, std::uint64_t seed);
void init_zeros(Parameter& p);
void init_constant(Parameter& p, double value);

}  // namespace pipetrain::nn
