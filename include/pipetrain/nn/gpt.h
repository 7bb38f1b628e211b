// pipetrain/nn/gpt.h: a GPT-2 model cut into pipeline stages at any layer boundary.
//
// The model is the list of layers 0 = GptEmbedding, 1..L = TransformerBlock h.0..h.(L-1),
// L+1 = LmHead. A GptStage holds layers [first_layer, last_layer] (inclusive) and implements
// the runtime's Stage interface; the whole model is the stage [0, L+1] (make_model()). The
// first stage takes one int32 tensor of token ids [B, T]; the last stage returns the logits
// [B, T, V], trained with CrossEntropyLoss (pipetrain/nn/loss.h); any other boundary carries
// one activation [B, T, C] of the config's dtype.
//
// Tied embeddings across stages: when the Embedding and the LmHead are in different stages,
// each holds its own copy of wte (same initial values) and lists it in tied_parameters() with
// key "wte"; the runtime must sum the two copies' gradients before the optimizer step (the
// updates then stay identical). When both are in one stage they share one Parameter and
// tied_parameters() is empty.
//
// Activation checkpointing (StageOptions::activation_checkpointing): forward keeps only the
// stage input; backward_input recomputes the forward first. Results are bitwise
// those of a plain stage.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "pipetrain/nn/gpt_config.h"
#include "pipetrain/nn/gpt_layers.h"
#include "pipetrain/stage.h"

namespace pipetrain::nn {

struct StageOptions {
  bool activation_checkpointing = false;
};

class GptStage final : public Stage {
 public:
  /// Throws InvalidArgument for an invalid config or unless
  /// 0 <= first_layer <= last_layer < config.num_model_layers():
  ///   "[GptStage] layers [3, 7] are outside the model's layers [0, 5]"
  GptStage(const GptConfig& config, std::int64_t first_layer, std::int64_t last_layer,
           StageOptions options = {});

  bool is_first() const { return first_layer_ == 0; }
  bool is_last() const { return last_layer_ == config_.num_model_layers() - 1; }
  std::int64_t first_layer() const { return first_layer_; }
  std::int64_t last_layer() const { return last_layer_; }
  const GptConfig& config() const { return config_; }
  const StageOptions& options() const { return options_; }

  TensorList forward(MicrobatchId mb, const TensorList& inputs) override;
  TensorList backward_input(MicrobatchId mb, const TensorList& grad_outputs) override;
  void backward_weight(MicrobatchId mb) override;
  TensorList infer(const TensorList& inputs) override;
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& inputs) const override;
  void release(MicrobatchId mb) override;
  std::size_t bytes_kept() const override;
  /// Layer by layer, in layer order (the tied wte listed once).
  std::vector<Parameter*> parameters() override;
  std::vector<TiedParameter> tied_parameters() override;

  /// The layers, in order (layers()[0] is layer first_layer()).
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }

 private:
  enum class Phase { kForward, kInput };
  struct InFlight {
    Phase phase = Phase::kForward;
    Tensor input;  // checkpointing only, until the recompute
  };

  GptConfig config_;
  std::int64_t first_layer_, last_layer_;
  StageOptions options_;
  std::vector<std::unique_ptr<Layer>> layers_;
  GptEmbedding* embedding_ = nullptr;
  LmHead* head_ = nullptr;
  std::map<MicrobatchId, InFlight> in_flight_;
};

/// The stage holding layers [first_layer, last_layer] (inclusive).
std::unique_ptr<GptStage> make_stage(const GptConfig& config, std::int64_t first_layer,
                                     std::int64_t last_layer, StageOptions options = {});
/// The whole model as one stage.
std::unique_ptr<GptStage> make_model(const GptConfig& config, StageOptions options = {});

/// Cuts the config.num_model_layers() layers into num_stages inclusive [first, last] ranges,
/// spreading the blocks as evenly as possible (earlier stages get the extra block; the
/// embedding joins the first stage and the head the last). Throws InvalidArgument unless
/// 1 <= num_stages <= num_layers (or num_stages == 1).
std::vector<std::pair<std::int64_t, std::int64_t>> split_layers(const GptConfig& config,
                                                                std::int64_t num_stages);

}  // namespace pipetrain::nn
