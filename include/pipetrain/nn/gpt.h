// pipetrain/nn/gpt.h: a GPT-2 model as a ModelSpec of three kinds of layers.
//
// The model is the list of layers 0 = GptEmbedding, 1..L = TransformerBlock h.0..h.(L-1),
// L+1 = LmHead (pipetrain/nn/gpt_layers.h); gpt_spec() lists them, and any contiguous range of
// them is a stage (an nn::Sequential, like any model built from layers). The first stage takes
// one int32 tensor of token ids [B, T]; the last stage returns the logits [B, T, V], trained
// with CrossEntropyLoss (pipetrain/nn/loss.h); any other boundary carries one activation
// [B, T, C] of the config's dtype.
//
// Tied embeddings: the embedding's wte and the head's LM matrix are tied under the key "wte".
// In one stage the head uses the embedding's wte (LmHead::tie_to); in two stages each holds a
// copy (same initial values) declared as a TiedParameter, and the runtime sums their gradients
// so that the copies stay identical.
//
// Activation checkpointing (StageOptions::activation_checkpointing) is Sequential's: forward
// keeps only the stage input; backward_input recomputes the forward first, bitwise.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "pipetrain/model_spec.h"
#include "pipetrain/nn/gpt_config.h"
#include "pipetrain/nn/gpt_layers.h"
#include "pipetrain/nn/sequential.h"
#include "pipetrain/runtime/partition.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain::nn {

struct StageOptions {
  bool activation_checkpointing = false;
};

/// A GPT stage is a Sequential of GPT layers.
using GptStage = Sequential;

/// The model's num_model_layers() layers as a ModelSpec (initialised from config.seed; each
/// parameter's values depend only on the seed and its name, whatever the cut). Throws
/// InvalidArgument for an invalid config.
ModelSpec gpt_spec(const GptConfig& config);

/// The stage holding layers [first_layer, last_layer] (inclusive). Throws InvalidArgument for an
/// invalid config or unless 0 <= first_layer <= last_layer < config.num_model_layers():
///   "[make_stage] layers [3, 7] are outside the model's layers [0, 5]"
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

/// Shape of a GPT for cost estimates.
struct GptCostShape {
  std::int64_t vocab_size = 256;
  std::int64_t seq_len = 128;
  std::int64_t channels = 128;
  std::int64_t num_layers = 4;  ///< transformer blocks
  std::int64_t microbatch_size = 1;
};

/// Per-layer cost estimate of one training step (forward + backward, about 3x forward) of one
/// microbatch, for the list [embedding, block 0, ..., block n-1, head], in floating-point
/// operations plus `flops_per_byte` times the bytes each layer reads and writes (activations
/// and weights): the cost of a memory-bound layer such as the embedding is not zero.
///   block:     per token 24 C^2 (QKV, projection, MLP) + 4 T C (attention) multiply-adds x 2
///   head:      per token 2 C V (final norm ignored)
///   embedding: no matrix product; bytes only
/// Throws InvalidArgument when a size is < 1 or flops_per_byte < 0.
std::vector<double> gpt_layer_costs(const GptCostShape& shape, double flops_per_byte = 4.0);

/// Cuts the model's layers into `num_stages` stages minimising the largest estimated cost
/// (gpt_layer_costs with this microbatch shape). Throws InvalidArgument for an invalid config,
/// and when there are fewer layers than stages:
///   "[partition_gpt] the model has 6 layers (embedding, 4 blocks, head), fewer than
///    num_stages=8"
runtime::Partition partition_gpt(const GptConfig& config, int num_stages, int microbatch_size,
                                 int seq_len);

/// The stages `schedule` places on pipeline rank `pp_index`, in increasing stage order, each
/// holding the layers `partition` gives it. Throws InvalidArgument when the partition does not
/// have schedule.num_stages() stages.
std::vector<std::unique_ptr<GptStage>> make_gpt_stages(const GptConfig& config,
                                                       const Schedule& schedule,
                                                       const runtime::Partition& partition,
                                                       int pp_index, StageOptions options = {});

}  // namespace pipetrain::nn
