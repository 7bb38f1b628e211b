#include "pipetrain/nn/gpt_config.h"

#include "pipetrain/nn/init.h"

namespace pipetrain::nn {

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

// The generic initialiser draws exactly GPT-2's values: N(0, std) from (seed, p.name), rounded
// to fp32.
void init_normal(Parameter& p, double std, std::uint64_t seed) { init_normal(p, 0.0, std, seed); }

}  // namespace pipetrain::nn
