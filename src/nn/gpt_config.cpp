#include "pipetrain/nn/gpt_config.h"

#include <cmath>
#include <numbers>
#include <random>

namespace pipetrain::nn {
namespace {

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

std::uint64_t fnv1a(const std::string& s) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

}  // namespace

void GptConfig::validate() const {
  constexpr const char* kFn = "GptConfig::validate";
  PIPETRAIN_CHECK_ARG(vocab_size > 0, kFn, "vocab_size=", vocab_size, " must be > 0");
  PIPETRAIN_CHECK_ARG(context_length > 0, kFn, "context_length=", context_length, " must be > 0");
  PIPETRAIN_CHECK_ARG(num_layers > 0, kFn, "num_layers=", num_layers, " must be > 0");
  PIPETRAIN_CHECK_ARG(num_heads > 0, kFn, "num_heads=", num_heads, " must be > 0");
  PIPETRAIN_CHECK_ARG(channels > 0, kFn, "channels=", channels, " must be > 0");
  PIPETRAIN_CHECK_ARG(channels % num_heads == 0, kFn, "channels=", channels,
                      " must be divisible by num_heads=", num_heads);
  PIPETRAIN_CHECK_ARG(dtype == DType::kFloat32 || dtype == DType::kFloat64, kFn, "dtype ",
                      to_string(dtype), " must be fp32 or fp64");
}

std::int64_t GptConfig::num_parameters() const {
  const std::int64_t c = channels;
  const std::int64_t block =
      2 * c + (3 * c * c + 3 * c) + (c * c + c) + 2 * c + (4 * c * c + 4 * c) + (4 * c * c + c);
  return vocab_size * c + context_length * c + num_layers * block + 2 * c +
         (tied_embeddings ? 0 : vocab_size * c);
}

GptConfig gpt2_124m() {
  GptConfig config;
  config.vocab_size = 50257;
  config.context_length = 1024;
  config.num_layers = 12;
  config.num_heads = 12;
  config.channels = 768;
  config.tied_embeddings = true;
  return config;
}

void init_normal(Parameter& p, double std, std::uint64_t seed) {
  std::mt19937_64 rng(splitmix64(seed ^ splitmix64(fnv1a(p.name))));
  // Box-Muller on 53-bit uniforms: the same values on every standard library.
  auto uniform = [&rng] { return (static_cast<double>(rng() >> 11) + 0.5) * 0x1.0p-53; };
  const std::int64_t n = p.value.numel();
  std::vector<float> values(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double theta = 2.0 * std::numbers::pi * uniform();
    values[static_cast<std::size_t>(i)] = static_cast<float>(std * r * std::cos(theta));
    if (i + 1 < n)
      values[static_cast<std::size_t>(i + 1)] = static_cast<float>(std * r * std::sin(theta));
  }
  p.value.copy_from(Tensor::from_vector(values, p.value.shape()));
}

}  // namespace pipetrain::nn
