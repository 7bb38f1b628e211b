// pipetrain/nn/layer.h: a layer with an explicit, split backward.
//
// forward(mb, x) keeps what microbatch mb's backward needs; backward_input(mb, dy) returns dx
// and keeps what the weight gradient needs; backward_weight(mb) adds the parameter gradients
// and releases everything kept for mb. backward() = backward_input() + backward_weight(), with
// bitwise identical results. Inputs and gradients passed in are kept by reference (see
// stage.h). Errors name the layer class and the microbatch:
//   "[TransformerBlock::backward_weight] microbatch 3 has not run backward_input"
#pragma once

#include <cstddef>
#include <string>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/stage.h"
#include "pipetrain/tensor.h"

namespace pipetrain::nn {

class Layer : public ParameterOwner {
 public:
  /// Name prefix of the layer's parameters: "embedding", "h.3", "head".
  virtual std::string name() const = 0;
  virtual Tensor forward(MicrobatchId mb, const Tensor& input) = 0;
  virtual Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) = 0;
  virtual void backward_weight(MicrobatchId mb) = 0;
  Tensor backward(MicrobatchId mb, const Tensor& grad_output) {
    Tensor grad_input = backward_input(mb, grad_output);
    backward_weight(mb);
    return grad_input;
  }
  /// forward() that keeps nothing; bitwise the same output.
  virtual Tensor infer(const Tensor& input) = 0;
  /// Drops whatever is kept for mb (no-op when nothing is).
  virtual void release(MicrobatchId mb) = 0;
  /// Bytes of tensors kept for microbatches in flight.
  virtual std::size_t bytes_kept() const = 0;
};

}  // namespace pipetrain::nn
