// pipetrain/nn/attention.h: the transformer layers of the generic layer library
// (pipetrain/nn/layers.h), each one nn::Layer made of the generic layers and the attention kernel:
//
//   CausalSelfAttention  [B, T, C] -> [B, T, C]       qkv = x W_qkv^T + b, causal softmax(q k^T /
//                                                     sqrt(C / heads)) v per head, then x W_o^T + b
//   Mlp                  [..., C] -> [..., C]         Linear(C, hidden), GELU, Linear(hidden, C)
//   PreLnBlock           [B, T, C] -> [B, T, C]       y = x + attn(ln1(x)); y + mlp(ln2(y))
//
// They follow the rules of layers.h: one compute dtype, fp32 or fp64 (the reference), given to
// the constructor; errors name the outer class ("[PreLnBlock::forward] input has shape [2, 8],
// expected [B, T, 16]"), never an inner layer; the split backward (backward_input keeps what
// backward_weight needs; backward_weight ADDS the gradients and releases) is bitwise backward().
// PreLnBlock is a generic block (GPT-2's layout, PyTorch-like init); the GPT's own block,
// initialised as GPT-2, is nn::TransformerBlock (pipetrain/nn/gpt_layers.h).
//
// Names: parameters are "<name>.<part>.weight" / ".bias", or "<part>.weight" for an unnamed
// layer (until a Sequential prefixes its index: "2.qkv.weight"):
//   CausalSelfAttention  qkv.weight [3C, C], qkv.bias [3C], proj.weight [C, C], proj.bias [C]
//   Mlp                  fc.weight [hidden, C], fc.bias [hidden], proj.weight [C, hidden],
//                        proj.bias [C]
//   PreLnBlock           ln1.weight, ln1.bias, attn.qkv.*, attn.proj.*, ln2.weight, ln2.bias,
//                        mlp.fc.*, mlp.proj.*
// parameters() lists them in that order.
//
// Init: every Linear as PyTorch's nn.Linear (U(-1/sqrt(in), 1/sqrt(in)) for weight and bias,
// drawn from (seed, parameter name) as in layers.h: fp32 and fp64 layers built alike hold the
// same values); LayerNorm weight 1, bias 0.
//
// Kept memory (bytes_kept) per microbatch in flight, for an input of N = B*T rows (4 bytes per
// element in fp32, 8 in fp64):
//   CausalSelfAttention  after forward: the input (N C), qkv (3 N C), the attention
//                        probabilities (B heads T T) and the attention output (N C);
//                        after backward_input: the input, d qkv (3 N C), the attention output
//                        and grad_output (N C) (qkv and the probabilities are dropped).
//   Mlp                  after forward: the input (N C), the hidden pre-activation and
//                        activation (2 N hidden); after backward_input: the input, the hidden
//                        activation, the gradient of the pre-activation (2 N hidden) and
//                        grad_output (N C).
//   PreLnBlock           what its LayerNorms, attention and Mlp keep (layers.h, above).
// Tensors passed in are kept by reference (see stage.h); released by backward_weight/release.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pipetrain/nn/layer.h"
#include "pipetrain/nn/layers.h"

namespace pipetrain::nn {

/// Causal multi-head self-attention on [B, T, C] (GPT-2's, without dropout): the output at
/// position t depends on the inputs at positions <= t only.
class CausalSelfAttention final : public Layer {
 public:
  /// Throws InvalidArgument for channels or heads < 1, channels not divisible by heads or a
  /// dtype other than fp32/fp64:
  ///   "[CausalSelfAttention] channels=10 must be divisible by heads=4"
  CausalSelfAttention(std::int64_t channels, std::int64_t heads, bool bias = true,
                      DType dtype = DType::kFloat32, std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  /// qkv.weight, qkv.bias, proj.weight, proj.bias (no biases when built without).
  std::vector<Parameter*> parameters() override;
  Linear& qkv() { return qkv_; }
  Linear& proj() { return proj_; }
  std::int64_t channels() const { return channels_; }
  std::int64_t heads() const { return heads_; }
  DType dtype() const { return dtype_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_input through the projection, the attention and the qkv projection.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  /// qkv and proj weight (and bias) gradients, added.
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override;
  std::size_t bytes_kept() const override;
  void begin_step(std::int64_t step) override;

 private:
  struct Saved {
    Tensor qkv, att;  // the attention kernel's input and probabilities, until backward_input
    bool input_done = false;
    std::size_t bytes() const;
  };

  Tensor attend(const Tensor& qkv, Tensor* att, const char* fn) const;

  std::int64_t channels_, heads_;
  DType dtype_;
  std::string name_;
  Linear qkv_, proj_;
  std::map<MicrobatchId, Saved> saved_;
};

/// Linear(C, hidden) -> GELU (tanh) -> Linear(hidden, C) on [..., C], as one layer.
class Mlp final : public Layer {
 public:
  /// Throws InvalidArgument for a size < 1 or a dtype other than fp32/fp64:
  ///   "[Mlp] hidden=0 must be >= 1"
  Mlp(std::int64_t channels, std::int64_t hidden, bool bias = true, DType dtype = DType::kFloat32,
      std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  /// fc.weight, fc.bias, proj.weight, proj.bias (no biases when built without).
  std::vector<Parameter*> parameters() override;
  Linear& fc() { return fc_; }
  Linear& proj() { return proj_; }
  std::int64_t channels() const { return channels_; }
  std::int64_t hidden() const { return hidden_; }
  DType dtype() const { return dtype_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override;
  std::size_t bytes_kept() const override;
  void begin_step(std::int64_t step) override;

 private:
  struct Saved {
    TensorSpec input;  // checks grad_output
    bool input_done = false;
    std::size_t bytes() const { return 0; }
  };

  std::int64_t channels_, hidden_;
  DType dtype_;
  std::string name_;
  Linear fc_;
  GELU gelu_;
  Linear proj_;
  std::map<MicrobatchId, Saved> saved_;
};

/// A pre-LayerNorm transformer block on [B, T, C]: y = x + attn(ln1(x)); out = y + mlp(ln2(y)),
/// LayerNorm eps 1e-5, biases everywhere.
class PreLnBlock final : public Layer {
 public:
  /// Throws InvalidArgument as CausalSelfAttention and Mlp do, naming PreLnBlock:
  ///   "[PreLnBlock] channels=10 must be divisible by heads=4"
  PreLnBlock(std::int64_t channels, std::int64_t heads, std::int64_t hidden,
             DType dtype = DType::kFloat32, std::uint64_t seed = 0, std::string name = "");
  std::string name() const override { return name_; }
  /// ln1.*, attn.*, ln2.*, mlp.* (see the file comment).
  std::vector<Parameter*> parameters() override;
  LayerNorm& ln1() { return ln1_; }
  CausalSelfAttention& attn() { return attn_; }
  LayerNorm& ln2() { return ln2_; }
  Mlp& mlp() { return mlp_; }
  std::int64_t channels() const { return channels_; }
  DType dtype() const { return dtype_; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override;
  std::size_t bytes_kept() const override;
  void begin_step(std::int64_t step) override;

 private:
  struct Saved {
    TensorSpec input;  // checks grad_output
    bool input_done = false;
    std::size_t bytes() const { return 0; }
  };

  std::int64_t channels_;
  DType dtype_;
  std::string name_;
  LayerNorm ln1_;
  CausalSelfAttention attn_;
  LayerNorm ln2_;
  Mlp mlp_;
  std::map<MicrobatchId, Saved> saved_;
};

}  // namespace pipetrain::nn
