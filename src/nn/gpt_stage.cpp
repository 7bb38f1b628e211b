#include "layer_util.h"
#include "pipetrain/nn/gpt.h"

namespace pipetrain::nn {

GptStage::GptStage(const GptConfig& config, std::int64_t first_layer, std::int64_t last_layer,
                   StageOptions options)
    : config_(config), first_layer_(first_layer), last_layer_(last_layer), options_(options) {
  config_.validate();
  const std::int64_t end = config.num_model_layers() - 1;
  PIPETRAIN_CHECK_ARG(0 <= first_layer && first_layer <= last_layer && last_layer <= end,
                      "GptStage", "layers [", first_layer, ", ", last_layer,
                      "] are outside the model's layers [0, ", end, "]");
  for (std::int64_t i = first_layer; i <= last_layer; ++i) {
    if (i == 0) {
      auto layer = std::make_unique<GptEmbedding>(config_);
      embedding_ = layer.get();
      layers_.push_back(std::move(layer));
    } else if (i == end) {
      auto layer = std::make_unique<LmHead>(config_);
      head_ = layer.get();
      layers_.push_back(std::move(layer));
    } else {
      layers_.push_back(std::make_unique<TransformerBlock>(config_, i - 1));
    }
  }
  if (config_.tied_embeddings && embedding_ != nullptr && head_ != nullptr) {
    head_->tie_to(embedding_->wte());
  }
}

namespace {
const Tensor& only(const TensorList& list, const char* fn, const char* what) {
  PIPETRAIN_CHECK_ARG(list.size() == 1, fn, "got ", list.size(), " ", what,
                      " tensors, expected 1");
  return list[0];
}
}  // namespace

TensorList GptStage::forward(MicrobatchId mb, const TensorList& inputs) {
  constexpr const char* kFn = "GptStage::forward";
  const Tensor& input = only(inputs, kFn, "input");
  PIPETRAIN_CHECK_ARG(!in_flight_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  InFlight state;
  Tensor x = input;
  try {
    for (auto& layer : layers_) {
      x = options_.activation_checkpointing ? layer->infer(x) : layer->forward(mb, x);
    }
  } catch (...) {
    for (auto& layer : layers_) layer->release(mb);
    throw;
  }
  if (options_.activation_checkpointing) state.input = input;
  in_flight_[mb] = std::move(state);
  return {x};
}

TensorList GptStage::backward_input(MicrobatchId mb, const TensorList& grad_outputs) {
  constexpr const char* kFn = "GptStage::backward_input";
  const Tensor& grad_output = only(grad_outputs, kFn, "grad_output");
  auto it = in_flight_.find(mb);
  PIPETRAIN_CHECK_ARG(it != in_flight_.end(), kFn, "microbatch ", mb, " has no saved forward");
  PIPETRAIN_CHECK_ARG(it->second.phase == Phase::kForward, kFn, "microbatch ", mb,
                      " already ran backward_input");
  if (options_.activation_checkpointing) {
    // Recompute the forward, keeping what the backward needs this time; the same kernels on
    // the same inputs give bitwise the same activations.
    Tensor x = it->second.input;
    for (auto& layer : layers_) x = layer->forward(mb, x);
    it->second.input = Tensor();
  }
  Tensor g = grad_output;
  for (auto layer = layers_.rbegin(); layer != layers_.rend(); ++layer) {
    g = (*layer)->backward_input(mb, g);
  }
  it->second.phase = Phase::kInput;
  return {g};
}

void GptStage::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "GptStage::backward_weight";
  auto it = in_flight_.find(mb);
  PIPETRAIN_CHECK_ARG(it != in_flight_.end() && it->second.phase == Phase::kInput, kFn,
                      "microbatch ", mb, " has not run backward_input");
  for (auto layer = layers_.rbegin(); layer != layers_.rend(); ++layer) {
    (*layer)->backward_weight(mb);
  }
  in_flight_.erase(it);
}

TensorList GptStage::infer(const TensorList& inputs) {
  Tensor x = only(inputs, "GptStage::infer", "input");
  for (auto& layer : layers_) x = layer->infer(x);
  return {x};
}

std::vector<TensorSpec> GptStage::output_specs(const std::vector<TensorSpec>& inputs) const {
  PIPETRAIN_CHECK_ARG(inputs.size() == 1, "GptStage::output_specs", "got ", inputs.size(),
                      " input tensors, expected 1");
  TensorSpec spec = inputs[0];
  for (const auto& layer : layers_) spec = layer->output_spec(spec);
  return {spec};
}

void GptStage::release(MicrobatchId mb) {
  for (auto& layer : layers_) layer->release(mb);
  in_flight_.erase(mb);
}

std::size_t GptStage::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& layer : layers_) n += layer->bytes_kept();
  for (const auto& [mb, state] : in_flight_) n += detail::bytes_of(state.input);
  return n;
}

std::vector<Parameter*> GptStage::parameters() {
  std::vector<Parameter*> params;
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) params.push_back(p);
  }
  return params;
}

std::vector<TiedParameter> GptStage::tied_parameters() {
  if (!config_.tied_embeddings || (embedding_ != nullptr) == (head_ != nullptr)) return {};
  if (embedding_ != nullptr) return {TiedParameter{"wte", &embedding_->wte()}};
  return {TiedParameter{"wte", &head_->lm_weight()}};
}

std::unique_ptr<GptStage> make_stage(const GptConfig& config, std::int64_t first_layer,
                                     std::int64_t last_layer, StageOptions options) {
  return std::make_unique<GptStage>(config, first_layer, last_layer, options);
}

std::unique_ptr<GptStage> make_model(const GptConfig& config, StageOptions options) {
  return std::make_unique<GptStage>(config, 0, config.num_model_layers() - 1, options);
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

}  // namespace pipetrain::nn
