#include <cmath>

#include "pipetrain/error.h"
#include "pipetrain/nn/gpt.h"

namespace pipetrain::nn {

ModelSpec gpt_spec(const GptConfig& config) {
  config.validate();
  const std::int64_t c = config.channels, v = config.vocab_size;
  ModelSpec spec;
  // Parameter names are unique and initial values depend on (seed, name) alone: no salting,
  // so that a GPT built from its spec equals its layers built on their own.
  spec.salt_init(false);
  auto wte_of = [](Layer& layer) { return &static_cast<GptEmbedding&>(layer).wte(); };
  auto lm_of = [](Layer& layer) { return &static_cast<LmHead&>(layer).lm_weight(); };
  auto tie = [](Layer& head, Parameter& wte) { static_cast<LmHead&>(head).tie_to(wte); };
  auto embedding = [config] { return std::unique_ptr<Layer>(new GptEmbedding(config)); };
  const std::int64_t embedding_params = (v + config.context_length) * c;
  if (config.tied_embeddings) {
    spec.add_tied("wte", embedding, wte_of, embedding_params);
  } else {
    spec.add(embedding, embedding_params);
  }
  for (std::int64_t i = 0; i < config.num_layers; ++i) {
    spec.add([config, i] { return std::unique_ptr<Layer>(new TransformerBlock(config, i)); },
             12 * c * c + 13 * c);
  }
  auto head = [config] { return std::unique_ptr<Layer>(new LmHead(config)); };
  if (config.tied_embeddings) {
    spec.add_tied("wte", head, lm_of, v * c + 2 * c, tie);
  } else {
    spec.add(head, v * c + 2 * c);
  }
  return spec;
}

std::unique_ptr<GptStage> make_stage(const GptConfig& config, std::int64_t first_layer,
                                     std::int64_t last_layer, StageOptions options) {
  config.validate();
  const std::int64_t end = config.num_model_layers() - 1;
  PIPETRAIN_CHECK_ARG(0 <= first_layer && first_layer <= last_layer && last_layer <= end,
                      "make_stage", "layers [", first_layer, ", ", last_layer,
                      "] are outside the model's layers [0, ", end, "]");
  return gpt_spec(config).build(static_cast<int>(first_layer), static_cast<int>(last_layer) + 1,
                                options.activation_checkpointing);
}

std::unique_ptr<GptStage> make_model(const GptConfig& config, StageOptions options) {
  return make_stage(config, 0, config.num_model_layers() - 1, options);
}

std::vector<std::pair<std::int64_t, std::int64_t>> split_layers(const GptConfig& config,
                                                                std::int64_t num_stages) {
  config.validate();
  const std::int64_t l = config.num_layers;
  PIPETRAIN_CHECK_ARG(num_stages >= 1 && (num_stages == 1 || num_stages <= l), "split_layers",
                      "num_stages=", num_stages, " must be in [1, num_layers=", l, "]");
  std::vector<std::pair<std::int64_t, std::int64_t>> ranges;
  if (num_stages == 1) return {{0, l + 1}};
  std::int64_t next_block = 1;  // model layer index of the next block
  for (std::int64_t s = 0; s < num_stages; ++s) {
    const std::int64_t blocks = l / num_stages + (s < l % num_stages ? 1 : 0);
    const std::int64_t first = s == 0 ? 0 : next_block;
    next_block += blocks;
    const std::int64_t last = s == num_stages - 1 ? l + 1 : next_block - 1;
    ranges.emplace_back(first, last);
  }
  return ranges;
}

std::vector<double> gpt_layer_costs(const GptCostShape& shape, double flops_per_byte) {
  PIPETRAIN_CHECK_ARG(shape.vocab_size >= 1, "gpt_layer_costs", "vocab_size=", shape.vocab_size,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.seq_len >= 1, "gpt_layer_costs", "seq_len=", shape.seq_len,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.channels >= 1, "gpt_layer_costs", "channels=", shape.channels,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.num_layers >= 1, "gpt_layer_costs", "num_layers=", shape.num_layers,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(shape.microbatch_size >= 1, "gpt_layer_costs",
                      "microbatch_size=", shape.microbatch_size, " must be >= 1");
  PIPETRAIN_CHECK_ARG(std::isfinite(flops_per_byte) && flops_per_byte >= 0.0, "gpt_layer_costs",
                      "flops_per_byte=", flops_per_byte, " must be finite and >= 0");
  const double c = static_cast<double>(shape.channels);
  const double t = static_cast<double>(shape.seq_len);
  const double v = static_cast<double>(shape.vocab_size);
  const double tokens = t * static_cast<double>(shape.microbatch_size);
  constexpr double kTrain = 3.0;  // forward + backward (input and weight gradients)
  constexpr double kFloat = 4.0;

  // Activation bytes written per token: the embedding writes C values; a block keeps about 16 C
  // (layer norms, QKV, attention output, MLP hidden 4C x2, residuals); the head writes V logits.
  const double embed_bytes = kFloat * (tokens * c + v * c + t * c);
  const double block_flops = 2.0 * tokens * (24.0 * c * c + 4.0 * t * c);
  const double block_bytes = kFloat * (tokens * 16.0 * c + 12.0 * c * c);
  const double head_flops = 2.0 * tokens * c * v;
  const double head_bytes = kFloat * (tokens * (c + v) + v * c);

  std::vector<double> costs;
  costs.push_back(kTrain * flops_per_byte * embed_bytes);
  for (std::int64_t i = 0; i < shape.num_layers; ++i) {
    costs.push_back(kTrain * (block_flops + flops_per_byte * block_bytes));
  }
  costs.push_back(kTrain * (head_flops + flops_per_byte * head_bytes));
  return costs;
}


runtime::Partition partition_gpt(const GptConfig& config, int num_stages, int microbatch_size,
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
  return runtime::partition_layers(gpt_layer_costs(shape), num_stages);
}

std::vector<std::unique_ptr<GptStage>> make_gpt_stages(const GptConfig& config,
                                                       const Schedule& schedule,
                                                       const runtime::Partition& partition,
                                                       int pp_index, StageOptions options) {
  PIPETRAIN_CHECK_ARG(partition.num_stages() == schedule.num_stages(), "make_gpt_stages",
                      "partition has ", partition.num_stages(), " stages, the schedule ",
                      schedule.num_stages());
  const ModelSpec spec = gpt_spec(config);
  std::vector<std::unique_ptr<GptStage>> stages;
  for (int s : schedule.stages_of_rank(pp_index)) {
    const auto i = static_cast<std::size_t>(s);
    stages.push_back(spec.build(partition.bounds[i], partition.bounds[i + 1],
                                options.activation_checkpointing));
  }
  return stages;
}

}  // namespace pipetrain::nn
