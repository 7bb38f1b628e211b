// pipetrain/kernels/cuda.h: CUDA kernels of the GPT layers, on raw row-major device arrays.
//
// The CUDA twins of pipetrain/kernels/cpu.h: same shapes and the same input/weight split of the
// backward, with these differences:
//   * Storage is T = float or BFloat16; arithmetic accumulates in fp32 (fp64 for norms).
//   * Weight-gradient kernels take the gradient type G separately (G = T, or float for bf16
//     activations with fp32 gradients). They ADD into the gradient, like the CPU ones.
//   * LayerNorm keeps mean/rstd in fp32 whatever T is; attention keeps its T x T
//     probabilities in fp32.
//   * Cross-entropy is one fused kernel: it writes the per-row loss and, in the same pass,
//     the gradient of the logits, never storing the probabilities.
// Every launcher takes the stream to queue on (nullptr: the legacy default stream), returns
// without waiting for the GPU, and checks the launch (a failure throws Error with file:line).
// All pointers are device pointers unless a comment says otherwise; they must not alias unless
// a comment says so. Sizes of 0 return at once without touching the device.
//
// Launch limits are checked on the host before anything is queued; a violated one throws
// InvalidArgument naming the value and the rule:
//   "[cuda::layernorm_forward] c=30 must be a multiple of 8 (16-byte loads of bf16)"
// The *_can_implement() functions ask the same question without throwing.
//
// In a build without CUDA every function here exists, is_available() is false and the launchers
// throw NotBuiltError naming -DPIPETRAIN_WITH_CUDA.
//
// STATUS: compiled for sm_90 but not yet run on a GPU; see docs/cuda.md.
#pragma once

#include <cstdint>
#include <string>

#include "pipetrain/cuda/device.h"
#include "pipetrain/optim/update_rules.h"
#include "pipetrain/tensor.h"

namespace pipetrain::kernels::cuda {

using StreamHandle = pipetrain::cuda::StreamHandle;

/// True when the kernels can run here: built with CUDA and a device is present.
bool is_available() noexcept;

// ---- matrix products through cuBLASLt ------------------------------------------------------
/// Row-major C[M,N] = alpha * op(A) op(B) + beta * C (+ bias[N] added to every row when bias is
/// not null), fp32 accumulation. ab_type (A and B) is kFloat32 or kBFloat16; c_type (C, D and
/// bias) is ab_type or kFloat32. Leading dimensions are in elements (row strides). Descriptors
/// and the chosen algorithm are cached per (shape, types, pointer alignment, device).
/// Throws InvalidArgument for other types or leading dimensions smaller than the rows need,
/// and Error when cuBLASLt has no algorithm for the problem.
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, float alpha,
          const void* a, std::int64_t lda, const void* b, std::int64_t ldb, float beta, void* c,
          std::int64_t ldc, DType ab_type, DType c_type, const void* bias, StreamHandle stream);

/// out[N,OC] = inp[N,C] weight[OC,C]^T + bias[OC] (bias may be null; fused as an epilogue).
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, std::int64_t n,
                    std::int64_t c, std::int64_t oc, StreamHandle stream);
/// dinp[N,C] = dout[N,OC] weight[OC,C] (overwritten).
template <typename T>
void linear_backward_input(T* dinp, const T* dout, const T* weight, std::int64_t n, std::int64_t c,
                           std::int64_t oc, StreamHandle stream);
/// dweight[OC,C] += dout^T inp (cuBLASLt with beta = 1); dbias[OC] += column sums of dout
/// (dbias may be null). G is T or float.
template <typename T, typename G>
void linear_backward_weight(G* dweight, G* dbias, const T* dout, const T* inp, std::int64_t n,
                            std::int64_t c, std::int64_t oc, StreamHandle stream);

// ---- token + position embedding --------------------------------------------------------------
/// True when the embedding kernels accept `c` channels of `dtype` (c > 0 and a multiple of
/// 16 / dtype_size: whole 16-byte vectors per row). Sets *why when not.
bool embedding_can_implement(std::int64_t c, DType dtype, std::string* why = nullptr);
/// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]. Token ids must be in [0, vocab) (not checked on
/// the device). Needs embedding_can_implement and 16-byte aligned out/wte/wpe.
template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                       std::int64_t b, std::int64_t t, std::int64_t c, StreamHandle stream);
/// dwte[tokens[b,t],:] += dout[b,t,:] (atomic adds: the order of additions into a repeated
/// token's row is not fixed); dwpe[t,:] += sum over b of dout[b,t,:] (deterministic).
template <typename T, typename G>
void embedding_backward_weight(G* dwte, G* dwpe, const T* dout, const std::int32_t* tokens,
                               std::int64_t b, std::int64_t t, std::int64_t c, StreamHandle stream);

// ---- LayerNorm over the last dimension (eps 1e-5) ---------------------------------------------
/// True when the LayerNorm kernels accept `c` channels of `dtype` (c > 0 and a multiple of
/// 16 / dtype_size). Sets *why when not.
bool layernorm_can_implement(std::int64_t c, DType dtype, std::string* why = nullptr);
/// out = (inp - mean) * rstd * weight + bias; mean[N], rstd[N] (fp32) are kept for the
/// backward. Needs layernorm_can_implement and 16-byte aligned out/inp/weight/bias.
template <typename T>
void layernorm_forward(T* out, float* mean, float* rstd, const T* inp, const T* weight,
                       const T* bias, std::int64_t n, std::int64_t c, StreamHandle stream);
/// dinp[N,C] = gradient of the input (overwritten). Same limits as the forward.
template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight,
                              const float* mean, const float* rstd, std::int64_t n, std::int64_t c,
                              StreamHandle stream);
/// dweight[C] += sum over rows of dout * xhat; dbias[C] += sum of dout (deterministic). Any c.
template <typename T, typename G>
void layernorm_backward_weight(G* dweight, G* dbias, const T* dout, const T* inp, const float* mean,
                               const float* rstd, std::int64_t n, std::int64_t c,
                               StreamHandle stream);

// ---- GELU (tanh approximation) and residual: element-wise, any n -------------------------------
/// 16-byte vector loads when every pointer is 16-byte aligned, scalar otherwise.
template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t n, StreamHandle stream);
/// dinp = dout * gelu'(inp) (overwritten; dinp may alias dout).
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t n, StreamHandle stream);
/// out = a + b (out may alias a or b).
template <typename T>
void residual_forward(T* out, const T* a, const T* b, std::int64_t n, StreamHandle stream);

// ---- causal multi-head self-attention: the reference path --------------------------------------
// Straightforward kernels that materialise the [B,NH,T,T] probabilities in fp32: memory
// O(B*NH*T^2) and far from peak speed. They exist to check a future fused (flash-style)
// kernel against, and to run small models.
/// True when c > 0, nh > 0 and c is divisible by nh. Sets *why when not.
bool attention_can_implement(std::int64_t c, std::int64_t nh, std::string* why = nullptr);
/// qkv[B,T,3C] packs q, k, v (each [B,T,NH,HS], HS = C/NH); out[B,T,C] (overwritten);
/// att[B,NH,T,T] receives the probabilities (zero above the diagonal).
template <typename T>
void attention_forward(T* out, float* att, const T* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh, StreamHandle stream);
/// dqkv[B,T,3C] (overwritten) from dout[B,T,C], the forward's qkv and att. `scratch` is
/// caller-provided fp32 workspace of B*NH*T*T elements (the softmax gradient).
template <typename T>
void attention_backward(T* dqkv, float* scratch, const T* dout, const T* qkv, const float* att,
                        std::int64_t b, std::int64_t t, std::int64_t c, std::int64_t nh,
                        StreamHandle stream);

// ---- softmax cross-entropy, forward and backward fused -----------------------------------------
/// For each row i of logits[N,V]: losses[i] = logsumexp(logits[i]) - logits[i, targets[i]]
/// (fp32), and when dlogits is not null, dlogits[i,:] = scale / N * (softmax(logits[i]) -
/// onehot(targets[i])): the gradient of scale * mean loss. dlogits may alias logits (the
/// gradient then overwrites the logits in place). Targets must be in [0, V) (not checked on
/// the device). Probabilities are never stored.
template <typename T>
void cross_entropy_fused(float* losses, T* dlogits, const T* logits, const std::int32_t* targets,
                         double scale, std::int64_t n, std::int64_t v, StreamHandle stream);

// ---- optimizer
// -----------------------------------------------------------------------------------
/// One fused AdamW step over a flat fp32 buffer of n parameters, the arithmetic of
/// optim::adamw_update (bias corrections computed once in fp64 on the host) applied to
/// grad * grad_scale (grad_scale lets a caller clip by the global norm without another pass).
/// When value_bf16 is not null it receives the updated values rounded to bf16 (the copy the
/// forward reads). Throws InvalidArgument when step < 1.
void adamw_update(float* value, const float* grad, float* m, float* v, BFloat16* value_bf16,
                  std::int64_t n, const optim::AdamWConfig& config, double lr, std::int64_t step,
                  bool decay, float grad_scale, StreamHandle stream);

/// *out += sum of x[i]^2 (out is ONE device double; per-block fp32 partial sums are added in
/// fp64, in an order that is not fixed). Call once per buffer with the same `out` to get the
/// squared global gradient norm.
template <typename T>
void sum_of_squares(double* out, const T* x, std::int64_t n, StreamHandle stream);

}  // namespace pipetrain::kernels::cuda
