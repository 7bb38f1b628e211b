#include "pipetrain/stage.h"

#include "pipetrain/error.h"

namespace pipetrain {

std::string to_string(const TensorSpec& spec) {
  return shape_to_string(spec.shape) + " " + std::string(to_string(spec.dtype));
}

std::string to_string(const std::vector<TensorSpec>& specs) {
  std::string out = "(";
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (i) out += ", ";
    out += to_string(specs[i]);
  }
  return out + ")";
}

std::vector<TensorSpec> specs_of(const TensorList& tensors) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    PIPETRAIN_CHECK_ARG(tensors[i].defined(), "specs_of", "tensor ", i, " of ", tensors.size(),
                        " is undefined");
    specs.push_back({tensors[i].shape(), tensors[i].dtype()});
  }
  return specs;
}

bool is_differentiable(DType dtype) { return dtype != DType::kInt32; }

}  // namespace pipetrain
