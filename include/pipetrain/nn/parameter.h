// pipetrain/nn/parameter.h: a trainable parameter (fp32 master value and gradient).
//
// Layers own their Parameters as members and hand out pointers through parameters(); the
// pointers stay valid as long as the layer (model, stage) lives, so optimizers can keep them.
// Gradients ACCUMULATE: every backward adds into grad (across microbatches); the trainer zeroes
// them (Optimizer::zero_grad() or zero_grads()) once per step.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "pipetrain/tensor.h"

namespace pipetrain::nn {

struct Parameter {
  /// Hierarchical name in GPT-2 / llm.c style, e.g. "h.3.attn.c_attn.weight", "wte".
  std::string name;
  /// fp32 master value.
  Tensor value;
  /// fp32 gradient, same shape as value, accumulated across microbatches.
  Tensor grad;
  /// Whether AdamW's decoupled weight decay applies: true for matrices (embeddings included),
  /// false for biases and LayerNorm parameters, as in nanoGPT / llm.c.
  bool weight_decay = true;
};

/// A Parameter with value and grad of `shape`, both zero (fp64 only for reference tests).
Parameter make_parameter(std::string name, Shape shape, bool weight_decay,
                         DType dtype = DType::kFloat32);

/// Anything that owns parameters (a layer, a model, a pipeline stage).
class ParameterOwner {
 public:
  virtual ~ParameterOwner() = default;
  /// Pointers to the owned parameters in a fixed, documented order. Valid while *this lives.
  virtual std::vector<Parameter*> parameters() = 0;
};

/// Sets every gradient to zero.
void zero_grads(std::span<Parameter* const> params);

/// Total number of elements of the values.
std::int64_t count_parameters(std::span<Parameter* const> params);

}  // namespace pipetrain::nn
