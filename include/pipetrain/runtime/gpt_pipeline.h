// pipetrain/runtime/gpt_pipeline.h: building one rank's GPT stages from a schedule.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pipetrain/nn/gpt.h"
#include "pipetrain/runtime/partition.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain::runtime {

/// Cuts the config.num_model_layers() layers (embedding, blocks, head) into `num_stages`
/// stages minimising the largest estimated cost (gpt_layer_costs with this microbatch shape).
/// Throws InvalidArgument for an invalid config, and when there are fewer layers than stages:
///   "[partition_gpt] the model has 6 layers (embedding, 4 blocks, head), fewer than
///    num_stages=8"
Partition partition_gpt(const nn::GptConfig& config, int num_stages, int microbatch_size,
                        int seq_len);

/// The stages `schedule` places on pipeline rank `pp_index`, in increasing stage order, each
/// holding the layers `partition` gives it. Throws InvalidArgument when the partition does not
/// have schedule.num_stages() stages.
std::vector<std::unique_ptr<nn::GptStage>> make_gpt_stages(const nn::GptConfig& config,
                                                           const Schedule& schedule,
                                                           const Partition& partition,
                                                           int pp_index,
                                                           nn::StageOptions options = {});

}  // namespace pipetrain::runtime
