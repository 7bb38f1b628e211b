// pipetrain/model_spec.h: a model as an ordered list of layer factories.
//
// A ModelSpec lists the layers of a whole model in forward order without building them
// (DeepSpeed's LayerSpec idea): a pipeline rank builds only the layers of its stages, with
// build(first, last), as an nn::Sequential. Layers holding copies of one parameter on different
// stages (a GPT's token embedding and its LM head) are declared with add_tied(): the runtime
// gives every copy the first copy's value at the first step and sums their gradients (see
// TiedParameter in stage.h); copies that land in one stage share one Parameter when the spec
// says how (LayerSpec::share).
//
// Initialisation: build() makes layer i inside nn::InitScope(i + 1) (see pipetrain/nn/init.h),
// so layers that share a seed and a shape still start different, and a layer's initial values
// do not depend on the cut; salt_init(false) turns that off for models whose parameter names are
// unique already (the GPT, whose values then equal those of its layers built on their own).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "pipetrain/nn/layer.h"
#include "pipetrain/nn/sequential.h"

namespace pipetrain {

/// Makes one layer. Called only on the rank that holds the layer (and by ModelSpec for
/// parameter counts, see parameter_counts()).
using LayerFactory = std::function<std::unique_ptr<nn::Layer>()>;

/// One entry of a ModelSpec.
struct LayerSpec {
  LayerFactory make;
  /// Non-empty for a layer holding a copy of a parameter tied to other layers (TiedLayerSpec):
  /// every layer with the same key holds its own copy (same shape, dtype and weight decay), set
  /// to the first copy's value at the first step, whose gradients the runtime sums before each
  /// update (e.g. "wte" on a GPT's embedding and head).
  std::string tie_key;
  /// The tied copy inside the built layer (required when tie_key is set).
  std::function<nn::Parameter*(nn::Layer&)> tied_parameter;
  /// Optional: makes the built layer use `first` (the copy of an earlier layer of the same
  /// stage with the same key) instead of its own copy, e.g. LmHead::tie_to. Without it both
  /// copies stay and are summed like copies on different stages.
  std::function<void(nn::Layer&, nn::Parameter& first)> share;
  /// Parameter elements of the layer when known (>= 0), so that partitioning by parameters
  /// need not build it; -1: counted by building it once.
  std::int64_t parameters = -1;
};

class ModelSpec {
 public:
  /// Appends a layer made by `make` (with its parameter count when known, see LayerSpec).
  ModelSpec& add(LayerFactory make, std::int64_t parameters = -1);
  /// Appends a layer constructed as L(args...) (the arguments are copied into the factory).
  template <typename L, typename... Args>
  ModelSpec& add(Args... args) {
    return add(LayerFactory([=] { return std::unique_ptr<nn::Layer>(new L(args...)); }));
  }
  /// Appends a layer holding a tied copy (see LayerSpec::tie_key).
  ModelSpec& add_tied(std::string key, LayerFactory make,
                      std::function<nn::Parameter*(nn::Layer&)> tied_parameter,
                      std::int64_t parameters = -1,
                      std::function<void(nn::Layer&, nn::Parameter&)> share = nullptr);
  /// Whether build() salts each layer's initialisation with its index (the default, see the
  /// file comment).
  ModelSpec& salt_init(bool on) {
    salt_init_ = on;
    return *this;
  }

  std::size_t size() const { return layers_.size(); }
  const std::vector<LayerSpec>& layers() const { return layers_; }

  /// Parameter elements of each layer: LayerSpec::parameters where known, else by building the
  /// layer once on the CPU and dropping it (every call; safe from several threads).
  std::vector<double> parameter_counts() const;

  /// The stage holding layers [first, last) as a Sequential (first_index = first, so unnamed
  /// layers' parameters are "<model index>.weight"), with the tied copies it holds declared.
  /// Throws InvalidArgument unless 0 <= first < last <= size():
  ///   "[ModelSpec::build] layers [3, 9) are outside the model's 5 layers"
  std::unique_ptr<nn::Sequential> build(int first, int last,
                                        bool activation_checkpointing = false) const;

 private:
  std::vector<LayerSpec> layers_;
  bool salt_init_ = true;
};

}  // namespace pipetrain
