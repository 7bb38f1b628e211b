// pipetrain/kernels/cpu.h: CPU kernels of the GPT layers, on raw row-major arrays.
//
// Every kernel is a function template over the scalar type T, instantiated for float (the real
// path) and double (the reference used by finite-difference tests). Shapes follow llm.c:
// N = B*T rows of C channels; a linear layer's weight is [OC, C] (PyTorch layout).
//
// Backward kernels are split the way the pipeline needs them: *_backward_input computes the
// gradient of the layer input (written, not accumulated), *_backward_weight ADDS the gradient
// of the parameters into their gradient buffers (they accumulate across microbatches).
// Matrix products go through OpenBLAS (cblas_sgemm / cblas_dgemm).
//
// Preconditions are the caller's (the layers check shapes); pointers must not alias unless
// a kernel says so. Thread safety: kernels touch only their arguments (and attention_backward a
// scratch buffer per thread that runs it).
//
// Threads: the work outside the matrix products runs on cpu_blas_threads() threads (the rank's
// share, cpu_threads.h) that belong to the calling thread: OpenBLAS's own OpenMP threads when
// OpenBLAS is its OpenMP build and pipetrain was built with OpenMP, a worker team otherwise.
// The work is cut by shape alone, never by thread count, so the fp32 results are the same bits
// on any number of threads (the matrix products are OpenBLAS's, whose results depend on its
// thread count).
#pragma once

#include <cstdint>

namespace pipetrain::kernels::cpu {

/// C[M,N] = alpha * op(A) op(B) + beta * C, row-major, with leading dimensions lda/ldb/ldc.
template <typename T>
void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k, T alpha,
          const T* a, std::int64_t lda, const T* b, std::int64_t ldb, T beta, T* c,
          std::int64_t ldc);

// ---- linear: out[N,OC] = inp[N,C] weight[OC,C]^T + bias[OC] ---------------------------------
/// bias may be null.
template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, std::int64_t n,
                    std::int64_t c, std::int64_t oc);
/// dinp[N,C] = dout[N,OC] weight[OC,C] (overwritten).
template <typename T>
void linear_backward_input(T* dinp, const T* dout, const T* weight, std::int64_t n,
                           std::int64_t c, std::int64_t oc);
/// dweight[OC,C] += dout^T inp; dbias[OC] += column sums of dout (dbias may be null).
template <typename T>
void linear_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, std::int64_t n,
                            std::int64_t c, std::int64_t oc);

// ---- token + position embedding -------------------------------------------------------------
/// out[b,t,:] = wte[tokens[b,t],:] + wpe[t,:]. Token ids must be in [0, vocab).
template <typename T>
void embedding_forward(T* out, const std::int32_t* tokens, const T* wte, const T* wpe,
                       std::int64_t b, std::int64_t t, std::int64_t c);
/// dwte[tokens[b,t],:] += dout[b,t,:]; dwpe[t,:] += dout[b,t,:].
template <typename T>
void embedding_backward_weight(T* dwte, T* dwpe, const T* dout, const std::int32_t* tokens,
                               std::int64_t b, std::int64_t t, std::int64_t c);

// ---- LayerNorm over the last dimension -------------------------------------------------------
/// out = (inp - mean) * rstd * weight + bias with rstd = 1 / sqrt(var + eps) (GPT-2: eps 1e-5);
/// mean[N], rstd[N] are kept for the backward, which needs no eps.
template <typename T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* weight, const T* bias,
                       std::int64_t n, std::int64_t c, double eps = 1e-5);
/// dinp[N,C] = gradient of the input (overwritten).
template <typename T>
void layernorm_backward_input(T* dinp, const T* dout, const T* inp, const T* weight,
                              const T* mean, const T* rstd, std::int64_t n, std::int64_t c);
/// dweight[C] += sum dout * xhat; dbias[C] += sum dout.
template <typename T>
void layernorm_backward_weight(T* dweight, T* dbias, const T* dout, const T* inp, const T* mean,
                               const T* rstd, std::int64_t n, std::int64_t c);

// ---- GELU, tanh approximation (GPT-2) -------------------------------------------------------
/// out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). T = double is the scalar std::tanh
/// reference; T = float is vectorised (SSE2, or AVX2 chosen at run time, bit-identical results)
/// and within 0.51 ulp of the exact function over the whole fp32 range, denormals included
/// (the backward near its zero at x = -0.7518: within 2^-40 of its two terms' size).
/// NaN propagates; gelu(+inf) = +inf, gelu(-inf) = -0, gelu'(+inf) = 1, gelu'(-inf) = 0 for
/// float (the double reference gives NaN at the infinities).
template <typename T>
void gelu_forward(T* out, const T* inp, std::int64_t n);
/// dinp = dout * gelu'(inp) (overwritten; dinp may alias dout).
template <typename T>
void gelu_backward(T* dinp, const T* inp, const T* dout, std::int64_t n);

// ---- residual --------------------------------------------------------------------------------
/// out = a + b (out may alias a or b).
template <typename T>
void residual_forward(T* out, const T* a, const T* b, std::int64_t n);

// ---- causal multi-head self-attention -------------------------------------------------------
/// qkv[B,T,3C] packs q, k, v (each [B,T,NH,HS] with HS = C/NH); out[B,T,C];
/// att[B,NH,T,T] receives the softmax probabilities (zero above the diagonal), kept for the
/// backward. C must be divisible by NH.
template <typename T>
void attention_forward(T* out, T* att, const T* qkv, std::int64_t b, std::int64_t t,
                       std::int64_t c, std::int64_t nh);
/// dqkv[B,T,3C] (overwritten) from dout[B,T,C], the forward's qkv and att.
template <typename T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, std::int64_t b,
                        std::int64_t t, std::int64_t c, std::int64_t nh);

// ---- softmax cross-entropy fused with the mean loss -----------------------------------------
/// probs[N,V] = softmax(logits) (probs may alias logits); losses[N] = -log probs[target].
/// Returns the mean of losses (accumulated in double). Targets must be in [0, V).
template <typename T>
double cross_entropy_forward(T* probs, T* losses, const T* logits, const std::int32_t* targets,
                             std::int64_t n, std::int64_t v);
/// dlogits = scale / N * (probs - onehot(targets)): the gradient of scale * mean loss.
/// dlogits may alias probs.
template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const std::int32_t* targets, double scale,
                            std::int64_t n, std::int64_t v);

}  // namespace pipetrain::kernels::cpu
