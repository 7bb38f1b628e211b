#include "pipetrain/nn/parameter.h"

namespace pipetrain::nn {

Parameter make_parameter(std::string name, Shape shape, bool weight_decay, DType dtype) {
  Parameter p;
  p.name = std::move(name);
  p.value = Tensor::zeros(shape, dtype);
  p.grad = Tensor::zeros(std::move(shape), dtype);
  p.weight_decay = weight_decay;
  return p;
}

void zero_grads(std::span<Parameter* const> params) {
  for (Parameter* p : params) p->grad.zero();
}

std::int64_t count_parameters(std::span<Parameter* const> params) {
  std::int64_t n = 0;
  for (const Parameter* p : params) n += p->value.numel();
  return n;
}

}  // namespace pipetrain::nn
