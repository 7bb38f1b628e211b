// pipetrain/optim/update_rules.h: the optimizer update rules on plain fp32 arrays.
//
// These are the arithmetic of AdamW and SGD, separate from parameters and tensors so that a
// CUDA twin or a test can check against them element by element. The optimizer classes
// (optimizer.h: AdamW, Sgd) call them on each parameter.
#pragma once

#include <cstdint>
#include <span>

namespace pipetrain::optim {

/// Hyper-parameters of AdamW (Loshchilov & Hutter, decoupled weight decay).
struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  ///< applied only to parameters whose weight_decay flag is set
};

/// One AdamW step, element-wise, with bias correction (`step` counts from 1):
///   m = beta1 m + (1 - beta1) g
///   v = beta2 v + (1 - beta2) g^2
///   w = w - lr * ( (m / (1 - beta1^step)) / (sqrt(v / (1 - beta2^step)) + eps) + wd * w )
/// where wd = weight_decay when `decay` is true and 0 otherwise. The arithmetic is done in
/// fp32 except the bias corrections, computed once in fp64. All spans have the same size.
/// Throws InvalidArgument when the sizes differ or step < 1.
void adamw_update(std::span<float> value, std::span<const float> grad, std::span<float> m,
                  std::span<float> v, const AdamWConfig& config, double lr, std::int64_t step,
                  bool decay);

/// Hyper-parameters of SGD.
struct SgdConfig {
  double momentum = 0.0;      ///< 0 turns momentum off (no buffer is kept)
  double weight_decay = 0.0;  ///< decoupled, only on parameters whose weight_decay flag is set
  bool nesterov = false;
};

/// One SGD step, element-wise:
///   without momentum: w = w - lr * (g + wd * w)
///   with momentum:    b = momentum * b + g   (b = g on the first step, `first_step` true)
///                     w = w - lr * (d + wd * w),  d = b, or g + momentum * b with nesterov
/// `buffer` is ignored (may be empty) without momentum. Throws InvalidArgument on size mismatch.
void sgd_update(std::span<float> value, std::span<const float> grad, std::span<float> buffer,
                const SgdConfig& config, double lr, bool first_step, bool decay);

/// Sum of squares of `values`, accumulated in fp64.
double sum_of_squares(std::span<const float> values);

/// True when no element of `values` is NaN or +-Inf.
bool all_finite(std::span<const float> values);

}  // namespace pipetrain::optim
