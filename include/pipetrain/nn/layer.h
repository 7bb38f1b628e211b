// pipetrain/nn/layer.h: a layer with an explicit, split backward.
//
// forward(mb, x) keeps what microbatch mb's backward needs; backward_input(mb, dy) returns dx
// and keeps what the weight gradient needs; backward_weight(mb) ADDS the parameter gradients
// and releases everything kept for mb. backward() = backward_input() + backward_weight(), with
// bitwise identical results. Inputs and gradients passed in are kept by reference (see
// stage.h). A layer whose input is integer (token ids) returns an undefined input gradient.
// Errors name the layer class and the microbatch:
//   "[Linear::backward_weight] microbatch 3 has not run backward_input"
//
// Device: a layer computes on the device of its input tensors (CPU today; a CUDA
// implementation sits behind the same interface). Layers are chained into a Stage by
// Sequential (pipetrain/nn/sequential.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/stage.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn {

class Layer : public ParameterOwner {
 public:
  /// The layer's name. For the generic layers it prefixes their parameters ("fc1" ->
  /// "fc1.weight"); empty for an unnamed layer, whose parameters are "weight", "bias"... until a
  /// Sequential prefixes them with the layer's index in the model ("2.weight"). The GPT layers
  /// name their parameters after GPT-2 ("wte", "h.3.attn.c_attn.weight") whatever name() says.
  virtual std::string name() const { return ""; }
  /// Parameterless layers need not override this.
  std::vector<Parameter*> parameters() override { return {}; }

  virtual Tensor forward(MicrobatchId mb, const Tensor& input) = 0;
  virtual Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) = 0;
  virtual void backward_weight(MicrobatchId mb) = 0;
  Tensor backward(MicrobatchId mb, const Tensor& grad_output) {
    Tensor grad_input = backward_input(mb, grad_output);
    backward_weight(mb);
    return grad_input;
  }
  /// forward() in evaluation mode that keeps nothing; bitwise the same output as forward()
  /// for a layer without randomness (Dropout is the identity here).
  virtual Tensor infer(const Tensor& input) = 0;
  /// Shape and dtype of forward's output for an input of `input`, computing nothing. Throws
  /// InvalidArgument exactly when forward() would for an input of that spec.
  virtual TensorSpec output_spec(const TensorSpec& input) const = 0;
  /// Drops whatever is kept for mb (no-op when nothing is).
  virtual void release(MicrobatchId mb) = 0;
  /// Bytes of tensors kept for microbatches in flight.
  virtual std::size_t bytes_kept() const = 0;
  /// Called before each training step (see Stage::begin_step); Dropout uses it.
  virtual void begin_step(std::int64_t step) { (void)step; }
};

}  // namespace pipetrain::nn
