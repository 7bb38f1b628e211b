// pipetrain/nn/layers.h: generic layers to build a model from (see pipetrain/nn/sequential.h).
//
//   Linear     [..., in] -> [..., out]         y = x W^T + b, W [out, in] as in PyTorch
//   ReLU       any shape                       y = max(x, 0)
//   GELU       any shape                       GPT-2's tanh approximation
//   LayerNorm  [..., features] -> same         over the last dimension
//   Dropout    any shape                       zeroes elements with probability p in training
//   Embedding  int32 ids [...] -> [..., dim]   rows of a table
//
// The transformer layers built from these, CausalSelfAttention, Mlp and PreLnBlock, are in
// pipetrain/nn/attention.h.
//
// Every layer computes in one dtype, fp32 (training) or fp64 (the reference the tests check fp32
// against), given to its constructor; Dropout follows its input (fp32 or fp64). Inputs of
// another dtype or shape are rejected, naming the layer, the function and what was expected:
//   "[Linear::forward] input has shape [2, 3], expected [..., 4]"
//   "[Linear::backward_weight] microbatch 3 has not run backward_input"
// Inputs must be on the CPU (no CUDA path yet).
//
// Names: the trailing `name` argument prefixes the parameters ("fc1" -> "fc1.weight",
// "fc1.bias"); an unnamed layer's parameters are "weight" and "bias" until a Sequential
// prefixes them with the layer's index ("2.weight").
//
// Seeds: random initial values are drawn from (seed, parameter name as constructed) with
// pipetrain/nn/init.h and rounded to fp32, so an fp32 layer and an fp64 layer built with the
// same arguments hold the same values, on every platform and whatever stage the layer lands
// on. Outside a ModelSpec, two layers with the same seed, name and shape start IDENTICAL: give
// them different seeds (or names). A ModelSpec salts each layer's streams with its index
// (nn::InitScope), so its layers differ even with the default seed.
//
// Kept memory (bytes_kept): Linear the input, then also grad_output after backward_input;
// ReLU, GELU the input until backward_input; LayerNorm the input, mean and rstd, then also
// grad_output; Dropout nothing (the mask is recomputed from its seed); Embedding the ids, then
// also grad_output. Tensors passed in are kept by reference (see stage.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pipetrain/nn/layer.h"

namespace pipetrain::nn {

/// y = x W^T + b on [..., in_features] -> [..., out_features].
class Linear final : public Layer {
 public:
  /// weight [out, in] (weight decay) and bias [out] (none) are both drawn from
  /// U(-1/sqrt(in), 1/sqrt(in)), PyTorch's default (kaiming_uniform with a = sqrt(5) for the
  /// weight). Throws InvalidArgument for a size < 1 or a dtype other than fp32/fp64:
  ///   "[Linear] in_features=0 must be >= 1"
  Linear(std::int64_t in_features, std::int64_t out_features, bool bias = true,
         DType dtype = DType::kFloat32, std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  /// weight, then bias (when there is one).
  std::vector<Parameter*> parameters() override;
  Parameter& weight() { return weight_; }
  /// nullptr without bias.
  Parameter* bias() { return has_bias_ ? &bias_ : nullptr; }
  std::int64_t in_features() const { return in_; }
  std::int64_t out_features() const { return out_; }
  DType dtype() const { return dtype_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_input = grad_output W.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// weight.grad += grad_output^T input; bias.grad += column sums of grad_output.
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor input, grad_output;
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor run(const Tensor& input, const char* fn) const;

  std::int64_t in_, out_;
  bool has_bias_;
  DType dtype_;
  std::string name_;
  Parameter weight_, bias_;
  std::map<MicrobatchId, Saved> saved_;
};

/// Elementwise max(x, 0) (NaN stays NaN); the gradient at 0 is 0 (as in PyTorch).
class ReLU final : public Layer {
 public:
  explicit ReLU(DType dtype = DType::kFloat32, std::string name = "");
  std::string name() const override { return name_; }
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_input = grad_output where input > 0, else 0; releases the input.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// Releases mb (no parameters).
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor input;
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor run(const Tensor& input, const char* fn) const;

  DType dtype_;
  std::string name_;
  std::map<MicrobatchId, Saved> saved_;
};

/// GELU, tanh approximation (GPT-2), with pipetrain's fp32 kernel (pipetrain/kernels/cpu.h).
class GELU final : public Layer {
 public:
  explicit GELU(DType dtype = DType::kFloat32, std::string name = "");
  std::string name() const override { return name_; }
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_input = grad_output gelu'(input); releases the input.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// Releases mb (no parameters).
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor input;
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor run(const Tensor& input, const char* fn) const;

  DType dtype_;
  std::string name_;
  std::map<MicrobatchId, Saved> saved_;
};

/// LayerNorm over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias, with the
/// biased variance (as PyTorch). weight = 1 and bias = 0 initially, no weight decay.
class LayerNorm final : public Layer {
 public:
  /// Throws InvalidArgument for features < 1, eps not finite and > 0, or a dtype other than
  /// fp32/fp64.
  explicit LayerNorm(std::int64_t features, double eps = 1e-5, DType dtype = DType::kFloat32,
                     std::string name = "");
  std::string name() const override { return name_; }
  /// weight, bias.
  std::vector<Parameter*> parameters() override { return {&weight_, &bias_}; }
  Parameter& weight() { return weight_; }
  Parameter& bias() { return bias_; }
  std::int64_t features() const { return features_; }
  double eps() const { return eps_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor input, mean, rstd, grad_output;
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor run(const Tensor& input, Saved* saved, const char* fn) const;

  std::int64_t features_;
  double eps_;
  DType dtype_;
  std::string name_;
  Parameter weight_, bias_;
  std::map<MicrobatchId, Saved> saved_;
};

/// Inverted dropout: in forward() each element is zeroed with probability p and the others are
/// scaled by 1 / (1 - p); infer() is the identity (a copy of its input).
///
/// The mask is a pure function of (seed, step, microbatch, element index): a counter-based hash
/// (SplitMix64) decides every element on its own, so forward() of the same (step, microbatch)
/// gives the same mask every time (Sequential's checkpoint recompute is exact), whatever the
/// schedule's order, and backward_input recomputes it instead of keeping it. The step is the
/// one of the last begin_step() (0 before the first); the input's dtype (fp32 or fp64) is the
/// output's.
class Dropout final : public Layer {
 public:
  /// Throws InvalidArgument unless 0 <= p < 1: "[Dropout] p=1 must be in [0, 1)".
  explicit Dropout(double p, std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  double p() const { return p_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_input = grad_output * mask / (1 - p).
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// Releases mb (no parameters).
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  /// Always 0: the mask is recomputed.
  std::size_t bytes_kept() const override { return 0; }
  void begin_step(std::int64_t step) override { step_ = step; }

  /// Whether element `index` of microbatch mb's input at `step` is kept (what forward uses).
  bool keeps(std::int64_t step, MicrobatchId mb, std::int64_t index) const;

 private:
  struct Saved {
    TensorSpec spec;        // of the input (and output)
    std::int64_t step = 0;  // the mask's step
    bool input_done = false;
    std::size_t bytes() const { return 0; }
  };

  Tensor apply(const Tensor& x, std::int64_t step, MicrobatchId mb, const char* fn) const;

  double p_;
  std::uint64_t seed_;
  std::string name_;
  std::int64_t step_ = 0;
  std::map<MicrobatchId, Saved> saved_;
};

/// A table of num_embeddings rows of `dim` values: int32 ids [...] -> [..., dim]. The ids carry
/// no gradient: backward_input returns an undefined Tensor.
class Embedding final : public Layer {
 public:
  /// weight [num_embeddings, dim] ~ N(0, 1) (PyTorch's default), with weight decay (a matrix,
  /// see Parameter). Throws InvalidArgument for a size < 1 or a dtype other than fp32/fp64.
  Embedding(std::int64_t num_embeddings, std::int64_t dim, DType dtype = DType::kFloat32,
            std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  std::vector<Parameter*> parameters() override { return {&weight_}; }
  Parameter& weight() { return weight_; }
  std::int64_t num_embeddings() const { return num_; }
  std::int64_t dim() const { return dim_; }

  /// Ids outside [0, num_embeddings) are rejected:
  ///   "[Embedding::forward] input id 11 at index 1 is outside [0, 11)"
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// Checks and keeps grad_output; returns an undefined Tensor.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// weight.grad[id] += grad_output at every position holding id.
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor ids, grad_output;
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor run(const Tensor& input, const char* fn) const;

  std::int64_t num_, dim_;
  DType dtype_;
  std::string name_;
  Parameter weight_;
  std::map<MicrobatchId, Saved> saved_;
};

}  // namespace pipetrain::nn
