// pipetrain/nn/gpt_layers.h: the three kinds of layers of a GPT-2 model.
//
//   GptEmbedding      int32 tokens [B, T] -> x [B, T, C] = wte[tokens] + wpe[0..T)
//   TransformerBlock  x -> x + attn(ln_1(x)) = x2 -> x2 + mlp(ln_2(x2))
//   LmHead            x -> logits [B, T, V] = ln_f(x) wte^T (the loss is a CrossEntropyLoss)
//
// All work on the config's dtype (fp32, or fp64 for reference tests). Parameter names follow
// GPT-2 (Hugging Face) with weights stored [out, in] as in PyTorch's Linear:
//   wte [V, C], wpe [T, C];
//   h.i.ln_1.{weight,bias} [C]; h.i.attn.c_attn.{weight [3C, C], bias [3C]};
//   h.i.attn.c_proj.{weight [C, C], bias [C]}; h.i.ln_2.{weight,bias} [C];
//   h.i.mlp.c_fc.{weight [4C, C], bias [4C]}; h.i.mlp.c_proj.{weight [C, 4C], bias [C]};
//   ln_f.{weight,bias} [C]; lm_head.weight [V, C] (untied models only).
// Weight decay applies to the matrices (wte, wpe, weights), not to biases and LayerNorm gains.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "pipetrain/nn/gpt_config.h"
#include "pipetrain/nn/layer.h"

namespace pipetrain::nn {

class GptEmbedding final : public Layer {
 public:
  /// Initialises wte and wpe (N(0, 0.02)) from config.seed.
  explicit GptEmbedding(const GptConfig& config);
  std::string name() const override { return "embedding"; }
  std::vector<Parameter*> parameters() override { return {&wte_, &wpe_}; }
  Parameter& wte() { return wte_; }

  /// input: int32 [B, T] with 1 <= T <= context_length and ids in [0, vocab_size):
  ///   "[GptEmbedding::forward] token id 300 at index 5 is outside [0, 256)"
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// Returns an undefined Tensor (tokens have no gradient); keeps grad_output for the weights.
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  /// int32 [B, T] -> [B, T, C] of the config's dtype.
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved {
    Tensor tokens, grad_output;
  };
  Tensor run(const Tensor& input, const char* fn) const;

  GptConfig config_;
  Parameter wte_, wpe_;
  std::map<MicrobatchId, Saved> saved_;
};

class TransformerBlock final : public Layer {
 public:
  /// Block `index` (0-based, named "h.<index>"); residual projections initialised with
  /// std 0.02 / sqrt(2 * num_layers) as in GPT-2.
  TransformerBlock(const GptConfig& config, std::int64_t index);
  std::string name() const override { return "h." + std::to_string(index_); }
  /// ln_1.weight, ln_1.bias, c_attn.weight, c_attn.bias, attn.c_proj.weight, attn.c_proj.bias,
  /// ln_2.weight, ln_2.bias, c_fc.weight, c_fc.bias, mlp.c_proj.weight, mlp.c_proj.bias.
  std::vector<Parameter*> parameters() override;

  /// input: [B, T, C] of the config's dtype:
  ///   "[TransformerBlock::forward] input has shape [2, 4], expected [B, T, 64]"
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  Tensor infer(const Tensor& input) override;
  /// [B, T, C] -> [B, T, C].
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved;
  template <typename T>
  Tensor run_forward(const Tensor& input, Saved* saved);
  template <typename T>
  Tensor run_backward_input(Saved& s, const Tensor& grad_output);
  template <typename T>
  void run_backward_weight(Saved& s);

  GptConfig config_;
  std::int64_t index_;
  Parameter ln1_w_, ln1_b_, qkv_w_, qkv_b_, attn_proj_w_, attn_proj_b_;
  Parameter ln2_w_, ln2_b_, fc_w_, fc_b_, fc_proj_w_, fc_proj_b_;
  std::map<MicrobatchId, std::shared_ptr<Saved>> saved_;
};

class LmHead final : public Layer {
 public:
  /// Final LayerNorm and LM head. With tied embeddings the head holds its own copy of wte
  /// (named "wte", initialised like the embedding's) unless tie_to() shares another one.
  explicit LmHead(const GptConfig& config);
  std::string name() const override { return "head"; }
  /// ln_f.weight, ln_f.bias, then the LM matrix (wte copy or lm_head.weight) when owned.
  std::vector<Parameter*> parameters() override;
  /// Uses `wte` (the embedding's, in the same stage) instead of an own copy; tied models only.
  void tie_to(Parameter& wte);
  /// The LM matrix in use (own copy, shared wte, or lm_head.weight).
  Parameter& lm_weight() { return *lm_w_; }
  bool owns_lm_weight() const { return lm_w_ == &own_lm_w_; }

  /// input [B, T, C] -> logits [B, T, V] (a fresh tensor, not kept).
  Tensor forward(MicrobatchId mb, const Tensor& input) override;
  /// grad_output: the logits' gradient [B, T, V] (e.g. from CrossEntropyLoss::backward).
  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override;
  void backward_weight(MicrobatchId mb) override;
  /// Logits [B, T, V].
  Tensor infer(const Tensor& input) override;
  /// [B, T, C] -> [B, T, V].
  TensorSpec output_spec(const TensorSpec& input) const override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::size_t bytes_kept() const override;

 private:
  struct Saved;
  template <typename T>
  Tensor run_forward(const Tensor& input, Saved* saved);

  GptConfig config_;
  Parameter lnf_w_, lnf_b_, own_lm_w_;
  Parameter* lm_w_;
  std::map<MicrobatchId, std::shared_ptr<Saved>> saved_;
};

}  // namespace pipetrain::nn
