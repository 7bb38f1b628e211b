// pipetrain/stage.h: the contract between the pipeline runtime and a piece of a model.
//
// A Stage is a contiguous run of layers placed on one rank (or one virtual stage of a rank).
// The runtime drives it with the schedule's actions:
//   F  -> forward(mb, input)            I -> backward_input(mb, grad_output)
//   W  -> backward_weight(mb)           B -> backward(mb, grad_output) (I then W)
// Microbatches are independent: any number may be in flight, in any order allowed by the
// dependencies (forward before backward_input before backward_weight, per microbatch).
//
// Tensors passed in (inputs, targets, gradients) are kept BY REFERENCE until the microbatch's
// backward is done: do not write into them meanwhile (hand over fresh or finished buffers).
//
// Loss: the last stage's forward returns the microbatch's loss as a 0-d tensor, not scaled (the
// GPT returns the mean cross-entropy over the microbatch's tokens; any scalar loss works). Its
// backward_input takes, as grad_output, a 0-d fp64 tensor holding the scale s (the executor
// passes 1/num_microbatches, so that the summed gradients are those of the batch's mean loss):
// the gradients computed are those of s * loss. Read s with data<double>() (data<float>()
// throws on it). An undefined grad_output means s = 1.
//
// Gradients ACCUMULATE into the parameters' grad tensors across microbatches; zero them once per
// optimizer step. Thread safety: one thread drives a stage at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain {

/// Identifies a microbatch within a step (any non-negative value; ids must not repeat while
/// in flight).
using MicrobatchId = std::int64_t;

/// A parameter replicated on several stages whose gradients must be summed (over the stages
/// that hold `key`) before the optimizer step, e.g. tied token embeddings on the first and the
/// last stage. Every copy is initialised identically; summed gradients keep them identical.
struct TiedParameter {
  std::string key;           ///< same key on every stage holding a copy, e.g. "wte"
  nn::Parameter* parameter;  ///< this stage's copy (also listed by parameters())
};

class Stage : public nn::ParameterOwner {
 public:
  /// Holds the model's first layer: forward takes int32 token ids [B, T].
  virtual bool is_first() const = 0;
  /// Holds the model's last layer: forward returns the loss and needs set_targets() first.
  virtual bool is_last() const = 0;

  /// Last stage only: the int32 targets [B, T] of microbatch mb, before forward(mb).
  /// Throws InvalidArgument on another stage or for a bad shape.
  virtual void set_targets(MicrobatchId mb, const Tensor& targets) = 0;

  /// Forward of microbatch mb, keeping what its backward needs. input: int32 tokens [B, T] on
  /// the first stage, activations [B, T, C] elsewhere. Returns activations [B, T, C], or on the
  /// last stage the 0-d mean loss. Throws InvalidArgument for a bad shape/dtype or when mb is
  /// already in flight.
  virtual Tensor forward(MicrobatchId mb, const Tensor& input) = 0;

  /// Gradient of the stage input from the gradient of its output (see the loss note above).
  /// Returns an undefined Tensor on the first stage (tokens have no gradient). Parameter
  /// gradients are NOT touched: that is backward_weight(). Throws InvalidArgument when mb has
  /// no forward pending.
  virtual Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) = 0;

  /// Adds the parameter gradients of microbatch mb, then releases everything kept for it.
  /// Throws InvalidArgument when backward_input(mb) has not run.
  virtual void backward_weight(MicrobatchId mb) = 0;

  /// backward_input then backward_weight; bitwise identical gradients to the split form.
  virtual Tensor backward(MicrobatchId mb, const Tensor& grad_output) {
    Tensor grad_input = backward_input(mb, grad_output);
    backward_weight(mb);
    return grad_input;
  }

  /// Forward that keeps nothing (evaluation, generation). On the last stage: the 0-d mean loss
  /// when targets is defined, else the logits [B, T, V].
  virtual Tensor infer(const Tensor& input, const Tensor& targets = Tensor()) = 0;

  /// Bytes of tensors this stage keeps for microbatches in flight (0 when none are).
  virtual std::size_t bytes_kept() const = 0;

  /// Parameters replicated on other stages (see TiedParameter); empty when none.
  virtual std::vector<TiedParameter> tied_parameters() = 0;

  /// Shape and dtype of forward's output for an input of `input_shape` (what the next stage
  /// receives); for the last stage the loss's shape {}.
  virtual Shape output_shape(const Shape& input_shape) const = 0;
  virtual DType output_dtype() const = 0;
};

}  // namespace pipetrain
