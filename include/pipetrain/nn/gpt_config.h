// pipetrain/nn/gpt_config.h: the shape of a GPT-2 style model and its initialisation.
#pragma once

#include <cstdint>
#include <string>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn {

struct GptConfig {
  std::int64_t vocab_size = 50257;
  std::int64_t context_length = 1024;  ///< maximum sequence length T (rows of wpe)
  std::int64_t num_layers = 12;        ///< transformer blocks L
  std::int64_t num_heads = 12;
  std::int64_t channels = 768;         ///< C, divisible by num_heads
  bool tied_embeddings = true;         ///< the LM head reuses the token embedding wte
  /// Compute and parameter dtype: kFloat32 (training) or kFloat64 (reference tests only; the
  /// optimizers take fp32 parameters).
  DType dtype = DType::kFloat32;
  /// Initialisation seed: every parameter's values depend only on (seed, parameter name), so
  /// any cut of the model into stages holds the same values as the whole model.
  std::uint64_t seed = 1337;

  /// Throws InvalidArgument for a non-positive size, channels % num_heads != 0 or a dtype other
  /// than fp32/fp64: "[GptConfig::validate] channels=10 must be divisible by num_heads=4"
  void validate() const;
  /// Layers of the model as cut into stages: embedding, num_layers blocks, head.
  std::int64_t num_model_layers() const { return num_layers + 2; }
  /// Number of distinct parameter elements (the tied wte counted once).
  std::int64_t num_parameters() const;
};

/// GPT-2 small: vocab 50257, context 1024, 12 layers, 12 heads, 768 channels, tied (124M).
GptConfig gpt2_124m();

/// Fills p.value with GPT-2's initialisation from (seed, p.name): N(0, std) values, rounded to
/// fp32 even in an fp64 model (so fp32 and fp64 models start from the same values).
void init_normal(Parameter& p, double std, std::uint64_t seed);

}  // namespace pipetrain::nn
