// pipetrain/nn/sequential.h: a chain of layers that is a pipeline Stage.
//
// Sequential runs its layers in order on one input tensor and returns one output tensor; its
// backward runs them in reverse, its backward_weight calls every layer's backward_weight. So a
// model built from layers needs no backward code of its own: cut the layer list into pieces,
// wrap each piece in a Sequential, and every schedule can run it.
//
// Undefined gradients: when a layer's backward_input returns an undefined Tensor (its input is
// integer, e.g. an Embedding's ids), or the output gradient itself is undefined, the backward
// stops there: the layers before it get no gradient (they are released, and backward_weight
// skips them) and backward_input returns an undefined gradient. backward_weight runs the other
// layers in layer order.
//
// Activation checkpointing (SequentialOptions::activation_checkpointing): forward keeps only
// the stage input (each layer's forward runs and its kept tensors are released at once);
// backward_input recomputes the forward first, keeping what the backward needs this time.
// Layers with randomness derive it from (seed, step, microbatch), so the recompute is bitwise
// the original forward.
//
// Parameter names: the parameters of a layer whose name() is empty are prefixed with the
// layer's index in the whole model ("<first_index + position>."), as in PyTorch's
// nn.Sequential ("2.weight"); named layers keep their names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "pipetrain/nn/layer.h"
#include "pipetrain/stage.h"

namespace pipetrain::nn {

struct SequentialOptions {
  /// Index of the first layer in the whole model (for parameter names).
  std::int64_t first_index = 0;
  bool activation_checkpointing = false;
};

class Sequential : public Stage {
 public:
  /// Throws InvalidArgument when `layers` is empty or holds a null pointer, or when two
  /// parameters end up with the same name (two layers given the same name):
  ///   "[Sequential] layer 2 of 4 is null"
  ///   "[Sequential] parameter name "fc.weight" is used by layers 0 and 1 (give the layers
  ///    distinct names)"
  explicit Sequential(std::vector<std::unique_ptr<Layer>> layers, SequentialOptions options = {});

  /// inputs: exactly one tensor; returns one tensor. Throws InvalidArgument otherwise:
  ///   "[Sequential::forward] got 2 input tensors, expected 1"
  TensorList forward(MicrobatchId mb, const TensorList& inputs) override;
  TensorList backward_input(MicrobatchId mb, const TensorList& grad_outputs) override;
  void backward_weight(MicrobatchId mb) override;
  TensorList infer(const TensorList& inputs) override;
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& inputs) const override;
  void release(MicrobatchId mb) override;
  void begin_step(std::int64_t step) override;
  std::size_t bytes_kept() const override;
  /// Layer by layer, in layer order, each parameter once.
  std::vector<Parameter*> parameters() override;
  std::vector<TiedParameter> tied_parameters() override { return tied_; }

  /// Declares `parameter` (owned by one of the layers) as a copy of the parameter tied under
  /// `key` (see TiedParameter); a stage may hold several copies of one key. Throws
  /// InvalidArgument when the parameter is not the layers' or is declared twice.
  void add_tied_parameter(std::string key, Parameter* parameter);

  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  const SequentialOptions& options() const { return options_; }

 private:
  enum class Phase { kForward, kInput };
  struct InFlight {
    Phase phase = Phase::kForward;
    Tensor input;  // checkpointing only, until the recompute
    // After backward_input: the first layer that ran it (layers before it got an undefined
    // gradient and were released), so backward_weight runs layers [first_backward, end).
    std::size_t first_backward = 0;
  };

  std::vector<std::unique_ptr<Layer>> layers_;
  SequentialOptions options_;
  std::vector<TiedParameter> tied_;
  std::map<MicrobatchId, InFlight> in_flight_;
};

}  // namespace pipetrain::nn
