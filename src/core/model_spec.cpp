#include "pipetrain/model_spec.h"

#include <map>
#include <utility>

#include "pipetrain/error.h"
#include "pipetrain/nn/init.h"

namespace pipetrain {

ModelSpec& ModelSpec::add(LayerFactory make, std::int64_t parameters) {
  PIPETRAIN_CHECK_ARG(static_cast<bool>(make), "ModelSpec::add", "layer ", layers_.size(),
                      " has an empty factory");
  layers_.push_back(LayerSpec{std::move(make), "", nullptr, nullptr, parameters});
  return *this;
}

ModelSpec& ModelSpec::add_tied(std::string key, LayerFactory make,
                               std::function<nn::Parameter*(nn::Layer&)> tied_parameter,
                               std::int64_t parameters,
                               std::function<void(nn::Layer&, nn::Parameter&)> share) {
  constexpr const char* kFn = "ModelSpec::add_tied";
  PIPETRAIN_CHECK_ARG(!key.empty(), kFn, "layer ", layers_.size(), " has an empty tie key");
  PIPETRAIN_CHECK_ARG(static_cast<bool>(make) && static_cast<bool>(tied_parameter), kFn,
                      "layer ", layers_.size(), " ('", key,
                      "') needs a factory and a tied_parameter accessor");
  layers_.push_back(
      LayerSpec{std::move(make), std::move(key), std::move(tied_parameter), std::move(share),
                parameters});
  return *this;
}

std::vector<double> ModelSpec::parameter_counts() const {
  std::vector<double> counts;
  for (std::size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i].parameters >= 0) {
      counts.push_back(static_cast<double>(layers_[i].parameters));
      continue;
    }
    const nn::InitScope scope(salt_init_ ? i + 1 : 0);
    std::unique_ptr<nn::Layer> layer = layers_[i].make();
    counts.push_back(static_cast<double>(nn::count_parameters(layer->parameters())));
  }
  return counts;
}

std::unique_ptr<nn::Sequential> ModelSpec::build(int first, int last,
                                                 bool activation_checkpointing) const {
  PIPETRAIN_CHECK_ARG(0 <= first && first < last && last <= static_cast<int>(layers_.size()),
                      "ModelSpec::build", "layers [", first, ", ", last,
                      ") are outside the model's ", layers_.size(), " layers");
  std::vector<std::unique_ptr<nn::Layer>> layers;
  for (int i = first; i < last; ++i) {
    // Layer i draws its initial values from its own streams, on whatever stage it is built.
    const nn::InitScope scope(salt_init_ ? static_cast<std::uint64_t>(i) + 1 : 0);
    layers.push_back(layers_[static_cast<std::size_t>(i)].make());
    PIPETRAIN_CHECK_ARG(layers.back() != nullptr, "ModelSpec::build", "the factory of layer ", i,
                        " returned null");
  }
  nn::SequentialOptions options;
  options.first_index = first;
  options.activation_checkpointing = activation_checkpointing;
  // Tied copies: the first of a key in this stage is declared; a later one shares it when the
  // spec says how (before the Sequential lists the parameters), else is declared too.
  std::map<std::string, nn::Parameter*> first_copy;
  std::vector<std::pair<std::string, nn::Parameter*>> declared;
  for (int i = first; i < last; ++i) {
    const LayerSpec& spec = layers_[static_cast<std::size_t>(i)];
    if (spec.tie_key.empty()) continue;
    nn::Layer& layer = *layers[static_cast<std::size_t>(i - first)];
    auto it = first_copy.find(spec.tie_key);
    if (it != first_copy.end() && spec.share) {
      spec.share(layer, *it->second);
      continue;
    }
    nn::Parameter* p = spec.tied_parameter(layer);
    PIPETRAIN_CHECK_ARG(p != nullptr, "ModelSpec::build", "layer ", i, " ('", spec.tie_key,
                        "') returned no tied parameter");
    first_copy.emplace(spec.tie_key, p);
    declared.emplace_back(spec.tie_key, p);
  }
  // A key whose every holder is in this stage, sharing one Parameter, is tied to nothing else.
  std::map<std::string, int> in_model, in_stage, copies;
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) {
    const std::string& key = layers_[static_cast<std::size_t>(i)].tie_key;
    if (key.empty()) continue;
    ++in_model[key];
    if (first <= i && i < last) ++in_stage[key];
  }
  for (const auto& [key, p] : declared) ++copies[key];
  auto stage = std::make_unique<nn::Sequential>(std::move(layers), options);
  for (auto& [key, p] : declared) {
    if (in_stage[key] == in_model[key] && copies[key] == 1) continue;
    stage->add_tied_parameter(key, p);
  }
  return stage;
}

}  // namespace pipetrain
