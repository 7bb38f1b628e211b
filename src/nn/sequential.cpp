#include "pipetrain/nn/sequential.h"

#include <algorithm>
#include <set>
#include <string>

#include "pipetrain/error.h"

namespace pipetrain::nn {

Sequential::Sequential(std::vector<std::unique_ptr<Layer>> layers, SequentialOptions options)
    : layers_(std::move(layers)), options_(options) {
  constexpr const char* kFn = "Sequential";
  PIPETRAIN_CHECK_ARG(!layers_.empty(), kFn, "got no layers, expected at least one");
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    PIPETRAIN_CHECK_ARG(layers_[i] != nullptr, kFn, "layer ", i, " of ", layers_.size(),
                        " is null");
  }
  PIPETRAIN_CHECK_ARG(options_.first_index >= 0, kFn, "first_index=", options_.first_index,
                      " must be >= 0");
  // Parameter names, once: an unnamed layer's parameters get the layer's index in the model as
  // prefix, as in PyTorch's nn.Sequential. A parameter listed by several layers (shared) is
  // renamed by the first that lists it only.
  std::set<const Parameter*> seen;
  std::map<std::string, std::size_t> owner;  // parameter name -> layer
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    const bool unnamed = layers_[i]->name().empty();
    const std::string prefix = std::to_string(options_.first_index + static_cast<std::int64_t>(i));
    for (Parameter* p : layers_[i]->parameters()) {
      if (!seen.insert(p).second) continue;
      if (unnamed) p->name = prefix + "." + p->name;
      const auto [it, added] = owner.emplace(p->name, i);
      PIPETRAIN_CHECK_ARG(added, kFn, "parameter name \"", p->name, "\" is used by layers ",
                          it->second, " and ", i, " (give the layers distinct names)");
    }
  }
}

TensorList Sequential::forward(MicrobatchId mb, const TensorList& inputs) {
  constexpr const char* kFn = "Sequential::forward";
  PIPETRAIN_CHECK_ARG(inputs.size() == 1, kFn, "got ", inputs.size(), " input tensors, expected 1");
  PIPETRAIN_CHECK_ARG(!in_flight_.contains(mb), kFn, "microbatch ", mb, " is already in flight");
  Tensor x = inputs[0];
  std::size_t done = 0;
  try {
    for (auto& layer : layers_) {
      x = layer->forward(mb, x);
      ++done;
      // Checkpointing: keep nothing inside the layers; backward_input recomputes.
      if (options_.activation_checkpointing) layer->release(mb);
    }
  } catch (...) {
    for (std::size_t i = 0; i < done; ++i) layers_[i]->release(mb);
    throw;
  }
  InFlight& f = in_flight_[mb];
  if (options_.activation_checkpointing) f.input = inputs[0];
  return {x};
}

TensorList Sequential::backward_input(MicrobatchId mb, const TensorList& grad_outputs) {
  constexpr const char* kFn = "Sequential::backward_input";
  auto it = in_flight_.find(mb);
  PIPETRAIN_CHECK_ARG(it != in_flight_.end(), kFn, "microbatch ", mb, " has no saved forward");
  PIPETRAIN_CHECK_ARG(it->second.phase == Phase::kForward, kFn, "microbatch ", mb,
                      " already ran backward_input");
  PIPETRAIN_CHECK_ARG(grad_outputs.size() == 1, kFn, "got ", grad_outputs.size(),
                      " gradient tensors, expected 1");
  InFlight& f = it->second;
  const std::size_t n = layers_.size();
  if (options_.activation_checkpointing) {
    // The recompute: the same forward() calls on the same input, so layers with randomness
    // (Dropout) draw the same values; this time the layers keep what their backward needs.
    Tensor x = f.input;
    std::size_t done = 0;
    try {
      for (auto& layer : layers_) {
        x = layer->forward(mb, x);
        ++done;
      }
    } catch (...) {
      for (std::size_t i = 0; i < done; ++i) layers_[i]->release(mb);
      throw;
    }
  }
  Tensor g = grad_outputs[0];
  std::size_t first = n;  // the first layer that ran backward_input
  try {
    // An undefined gradient (an integer tensor, or a layer such as Embedding whose input has
    // none) stops the chain: the layers before get no gradient and have nothing to add.
    while (first > 0 && g.defined()) {
      g = layers_[first - 1]->backward_input(mb, g);
      --first;
    }
  } catch (...) {
    // With checkpointing, dropping what the recompute kept returns mb to its state after
    // forward (the stage input is still kept), so the call can be repeated.
    if (options_.activation_checkpointing) {
      for (auto& layer : layers_) layer->release(mb);
    }
    throw;
  }
  for (std::size_t i = 0; i < first; ++i) layers_[i]->release(mb);
  f.phase = Phase::kInput;
  f.input = Tensor();
  f.first_backward = first;
  return {g};
}

void Sequential::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "Sequential::backward_weight";
  auto it = in_flight_.find(mb);
  PIPETRAIN_CHECK_ARG(it != in_flight_.end() && it->second.phase == Phase::kInput, kFn,
                      "microbatch ", mb, " has not run backward_input");
  for (std::size_t i = it->second.first_backward; i < layers_.size(); ++i) {
    layers_[i]->backward_weight(mb);
  }
  in_flight_.erase(it);
}

TensorList Sequential::infer(const TensorList& inputs) {
  PIPETRAIN_CHECK_ARG(inputs.size() == 1, "Sequential::infer", "got ", inputs.size(),
                      " input tensors, expected 1");
  Tensor x = inputs[0];
  for (auto& layer : layers_) x = layer->infer(x);
  return {x};
}

std::vector<TensorSpec> Sequential::output_specs(const std::vector<TensorSpec>& inputs) const {
  PIPETRAIN_CHECK_ARG(inputs.size() == 1, "Sequential::output_specs", "got ", inputs.size(),
                      " input specs, expected 1");
  TensorSpec spec = inputs[0];
  for (const auto& layer : layers_) spec = layer->output_spec(spec);
  return {spec};
}

void Sequential::release(MicrobatchId mb) {
  for (auto& layer : layers_) layer->release(mb);
  in_flight_.erase(mb);
}

void Sequential::begin_step(std::int64_t step) {
  for (auto& layer : layers_) layer->begin_step(step);
}

std::size_t Sequential::bytes_kept() const {
  std::size_t n = 0;
  for (const auto& layer : layers_) n += layer->bytes_kept();
  for (const auto& [mb, f] : in_flight_) n += f.input.defined() ? f.input.nbytes() : 0;
  return n;
}

std::vector<Parameter*> Sequential::parameters() {
  std::vector<Parameter*> out;
  std::set<const Parameter*> seen;
  for (auto& layer : layers_) {
    for (Parameter* p : layer->parameters()) {
      if (seen.insert(p).second) out.push_back(p);
    }
  }
  return out;
}

void Sequential::add_tied_parameter(std::string key, Parameter* parameter) {
  constexpr const char* kFn = "Sequential::add_tied_parameter";
  PIPETRAIN_CHECK_ARG(!key.empty(), kFn, "key is empty");
  PIPETRAIN_CHECK_ARG(parameter != nullptr, kFn, "parameter for key \"", key, "\" is null");
  const std::vector<Parameter*> own = parameters();
  PIPETRAIN_CHECK_ARG(std::find(own.begin(), own.end(), parameter) != own.end(), kFn,
                      "parameter \"", parameter->name, "\" (key \"", key,
                      "\") is not a parameter of this stage's layers");
  for (const TiedParameter& t : tied_) {
    PIPETRAIN_CHECK_ARG(t.parameter != parameter, kFn, "parameter \"", parameter->name,
                        "\" is already tied (key \"", t.key, "\")");
  }
  tied_.push_back({std::move(key), parameter});
}

}  // namespace pipetrain::nn
