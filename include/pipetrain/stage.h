// pipetrain/stage.h: the contract between the pipeline runtime and a piece of a model.
//
// A Stage is a contiguous run of layers placed on one rank (or one virtual stage of a rank).
// The runtime knows nothing else about the model: a stage takes a list of tensors and returns
// a list of tensors, each boundary between two stages with its own count, shapes and dtypes.
// The runtime drives a stage with the schedule's actions:
//   F  -> forward(mb, inputs)              I -> backward_input(mb, grad_outputs)
//   W  -> backward_weight(mb)              B -> backward(mb, grad_outputs) (I then W)
// Microbatches are independent: any number may be in flight, in any order allowed by the
// dependencies (forward before backward_input before backward_weight, per microbatch).
//
// Inputs and outputs:
//   * the first stage's inputs are the user's input tensors of one microbatch (any dtypes and
//     shapes; the batch is split along dim 0); any other stage's inputs are exactly the
//     previous stage's outputs;
//   * the last stage's outputs are the model's outputs (logits, predictions...): the runtime
//     hands them, with the microbatch's targets, to a Loss (pipetrain/nn/loss.h).
// Tensors passed in (inputs, gradients) are kept BY REFERENCE until the microbatch's backward
// is done: do not write into them meanwhile (hand over fresh or finished buffers).
//
// Gradients: backward_input gets one gradient per output, in order: a tensor of the output's
// shape and dtype for a floating-point output, an undefined Tensor for an integer output (ids,
// masks: they carry no gradient). It returns one gradient per input under the same rule; the
// first stage may return undefined gradients for every input (the runtime drops them).
//
// Loss scale (exact contract): the runtime computes each microbatch's loss L_m with the Loss,
// then asks it for the gradient of L_m / M (M = microbatches per replica), passes that to the
// last stage's backward, and averages over the D data-parallel replicas. The gradients summed
// over a step are therefore those of the mean over replicas of the mean over microbatches of
// the per-microbatch loss: one device accumulating the same microbatches gets the same ones.
// It is a mean of per-microbatch means: with equal microbatches and a loss that averages over
// every element it is the batch mean; with CrossEntropyLoss's ignore_index (microbatches with
// different counts of counted positions) it differs from the mean over the batch's positions.
//
// Limits of a boundary: at most 8 tensors, each of at most 8 dimensions (the runtime agrees
// their specs in a fixed-size table); a stage declares at most 2 tied keys.
//
// Gradients ACCUMULATE into the parameters' grad tensors across microbatches; the runtime
// zeroes them once per optimizer step. Thread safety: one thread drives a stage at a time.
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

/// The tensors crossing one stage boundary for one microbatch, in a fixed order.
using TensorList = std::vector<Tensor>;

/// Shape and dtype of one tensor crossing a boundary (what two neighbouring stages agree on).
struct TensorSpec {
  Shape shape;
  DType dtype = DType::kFloat32;
  bool operator==(const TensorSpec&) const = default;
};

/// "[2, 4, 8] fp32".
std::string to_string(const TensorSpec& spec);
/// "([2, 4] int32, [2, 4, 8] fp32)"; "()" for none.
std::string to_string(const std::vector<TensorSpec>& specs);
/// The specs of `tensors`. Throws InvalidArgument for an undefined tensor:
///   "[specs_of] tensor 1 of 2 is undefined"
std::vector<TensorSpec> specs_of(const TensorList& tensors);
/// Whether a gradient flows through tensors of this dtype (fp32, bf16, fp64: yes; int32: no).
bool is_differentiable(DType dtype);

/// The training data of one microbatch: the first stage's inputs and the loss's targets.
struct Microbatch {
  TensorList inputs;
  TensorList targets;
};

/// A parameter replicated on several stages whose gradients must be summed (over the stages
/// that hold `key`) before the optimizer step, e.g. tied token embeddings on the first and the
/// last stage. The copies must have the same shape, dtype and weight_decay flag; the runtime
/// gives every copy the value of the copy on the lowest stage at its first step or evaluation,
/// and the summed gradients keep them identical after. Keys are told apart by a 30-bit hash.
struct TiedParameter {
  std::string key;           ///< same key on every stage holding a copy, e.g. "wte"
  nn::Parameter* parameter;  ///< this stage's copy (also listed by parameters())
};

class Stage : public nn::ParameterOwner {
 public:
  /// Forward of microbatch mb, keeping what its backward needs. Returns the outputs (see the
  /// file comment). Throws InvalidArgument for inputs the stage cannot take or when mb is
  /// already in flight.
  virtual TensorList forward(MicrobatchId mb, const TensorList& inputs) = 0;

  /// Gradients of the inputs from the gradients of the outputs (see the file comment).
  /// Parameter gradients are NOT touched: that is backward_weight(). Throws InvalidArgument
  /// when mb has no forward pending.
  virtual TensorList backward_input(MicrobatchId mb, const TensorList& grad_outputs) = 0;

  /// Adds the parameter gradients of microbatch mb, then releases everything kept for it.
  /// Throws InvalidArgument when backward_input(mb) has not run.
  virtual void backward_weight(MicrobatchId mb) = 0;

  /// backward_input then backward_weight; bitwise identical gradients to the split form.
  virtual TensorList backward(MicrobatchId mb, const TensorList& grad_outputs) {
    TensorList grad_inputs = backward_input(mb, grad_outputs);
    backward_weight(mb);
    return grad_inputs;
  }

  /// Forward in evaluation mode that keeps nothing (dropout off). Same outputs as forward()
  /// for a model without dropout.
  virtual TensorList infer(const TensorList& inputs) = 0;

  /// Specs of forward's outputs for inputs of `inputs` specs, without computing anything: the
  /// runtime calls it before a step whose input shapes are new, so that a stage that cannot
  /// take its neighbour's outputs is reported before any compute. Throws InvalidArgument
  /// naming the stage class and what it expected.
  virtual std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& inputs) const = 0;

  /// Drops whatever is kept for mb (no-op when nothing is): the runtime calls it for the
  /// step's microbatches when a step fails, so that the stage can serve a new Executor.
  virtual void release(MicrobatchId mb) { (void)mb; }

  /// Called before each training step with its index (Executor::steps_done(): 0, 1, ..., or
  /// the resumed step onwards): stages with randomness (dropout) derive it from (seed, step,
  /// microbatch), so recomputation is exact.
  virtual void begin_step(std::int64_t step) { (void)step; }

  /// Bytes of tensors this stage keeps for microbatches in flight (0 when none are).
  virtual std::size_t bytes_kept() const { return 0; }

  /// Parameters replicated on other stages (see TiedParameter); empty by default.
  virtual std::vector<TiedParameter> tied_parameters() { return {}; }
};

}  // namespace pipetrain
