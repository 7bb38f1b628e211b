// Embedding: the generic lookup table of pipetrain/nn/layers.h (GptEmbedding is embedding.cpp).
#include <algorithm>

#include "layer_state.h"
#include "pipetrain/nn/init.h"
#include "pipetrain/nn/layers.h"

namespace pipetrain::nn {

Embedding::Embedding(std::int64_t num_embeddings, std::int64_t dim, DType dtype, std::uint64_t seed,
                     std::string name)
    : num_(num_embeddings), dim_(dim), dtype_(dtype), name_(std::move(name)) {
  constexpr const char* kFn = "Embedding";
  PIPETRAIN_CHECK_ARG(num_ >= 1, kFn, "num_embeddings=", num_, " must be >= 1");
  PIPETRAIN_CHECK_ARG(dim_ >= 1, kFn, "dim=", dim_, " must be >= 1");
  detail::dispatch_float(dtype_, kFn, [](auto) {});
  weight_ = make_parameter(detail::param_name(name_, "weight"), {num_, dim_}, true, dtype_);
  init_normal(weight_, 0.0, 1.0, seed);
}

std::size_t Embedding::Saved::bytes() const {
  return detail::bytes_of(ids) + detail::bytes_of(grad_output);
}

TensorSpec Embedding::output_spec(const TensorSpec& input) const {
  detail::check_dtype(input, DType::kInt32, "Embedding::output_spec", "input");
  TensorSpec out{input.shape, dtype_};
  out.shape.push_back(dim_);
  return out;
}

Tensor Embedding::run(const Tensor& input, const char* fn) const {
  detail::check_dtype(detail::spec_of(input, fn, "input"), DType::kInt32, fn, "input");
  detail::check_ids(input, num_, fn, "input");
  Shape shape = input.shape();
  shape.push_back(dim_);
  Tensor out = Tensor::empty(std::move(shape), dtype_);
  detail::dispatch_float(dtype_, fn, [&](auto zero) {
    using T = decltype(zero);
    const std::int32_t* ids = input.data<std::int32_t>();
    const T* table = weight_.value.data<T>();
    T* y = out.data<T>();
    for (std::int64_t i = 0; i < input.numel(); ++i) {
      std::copy_n(table + ids[i] * dim_, dim_, y + i * dim_);
    }
  });
  return out;
}

Tensor Embedding::forward(MicrobatchId mb, const Tensor& input) {
  constexpr const char* kFn = "Embedding::forward";
  detail::check_new(saved_, mb, kFn);
  Tensor out = run(input, kFn);
  saved_[mb].ids = input;
  return out;
}

Tensor Embedding::infer(const Tensor& input) { return run(input, "Embedding::infer"); }

Tensor Embedding::backward_input(MicrobatchId mb, const Tensor& grad_output) {
  constexpr const char* kFn = "Embedding::backward_input";
  Saved& s = detail::for_input(saved_, mb, kFn);
  detail::check_grad(grad_output, output_spec({s.ids.shape(), DType::kInt32}), kFn);
  s.grad_output = grad_output;
  s.input_done = true;
  return Tensor();
}

void Embedding::backward_weight(MicrobatchId mb) {
  constexpr const char* kFn = "Embedding::backward_weight";
  auto it = detail::for_weight(saved_, mb, kFn);
  const Saved& s = it->second;
  detail::dispatch_float(dtype_, kFn, [&](auto zero) {
    using T = decltype(zero);
    const std::int32_t* ids = s.ids.data<std::int32_t>();
    const T* dy = s.grad_output.data<T>();
    T* grad = weight_.grad.data<T>();
    for (std::int64_t i = 0; i < s.ids.numel(); ++i) {
      T* row = grad + ids[i] * dim_;
      const T* d = dy + i * dim_;
      for (std::int64_t k = 0; k < dim_; ++k) row[k] += d[k];
    }
  });
  saved_.erase(it);
}

std::size_t Embedding::bytes_kept() const { return detail::bytes_kept(saved_); }

}  // namespace pipetrain::nn
