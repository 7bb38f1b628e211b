#include "pipetrain/runtime/gpt_pipeline.h"

#include "pipetrain/error.h"

namespace pipetrain::runtime {

Partition partition_gpt(const nn::GptConfig& config, int num_stages, int microbatch_size,
                        int seq_len) {
  config.validate();
  PIPETRAIN_CHECK_ARG(num_stages >= 1, "partition_gpt", "num_stages=", num_stages,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(config.num_model_layers() >= num_stages, "partition_gpt",
                      "the model has ", config.num_model_layers(), " layers (embedding, ",
                      config.num_layers, " blocks, head), fewer than num_stages=", num_stages);
  GptCostShape shape;
  shape.vocab_size = config.vocab_size;
  shape.seq_len = seq_len;
  shape.channels = config.channels;
  shape.num_layers = config.num_layers;
  shape.microbatch_size = microbatch_size;
  const std::vector<double> costs = gpt_layer_costs(shape);
  return partition_layers(costs, num_stages);
}

std::vector<std::unique_ptr<nn::GptStage>> make_gpt_stages(const nn::GptConfig& config,
                                                           const Schedule& schedule,
                                                           const Partition& partition,
                                                           int pp_index,
                                                           nn::StageOptions options) {
  PIPETRAIN_CHECK_ARG(partition.num_stages() == schedule.num_stages(), "make_gpt_stages",
                      "partition has ", partition.num_stages(), " stages, the schedule ",
                      schedule.num_stages());
  std::vector<std::unique_ptr<nn::GptStage>> stages;
  for (int s : schedule.stages_of_rank(pp_index)) {
    stages.push_back(nn::make_stage(config, partition.bounds[s], partition.bounds[s + 1] - 1,
                                    options));
  }
  return stages;
}

}  // namespace pipetrain::runtime
