#include "pipetrain/nn/loss.h"

#include <algorithm>

#include "layer_util.h"
#include "pipetrain/error.h"
#include "pipetrain/kernels/cpu.h"

namespace pipetrain::nn {
namespace {

namespace cpu = kernels::cpu;

// The specs of `tensors`, each defined and on the CPU: "[MseLoss::forward] targets 0 is undefined".
std::vector<TensorSpec> specs(const TensorList& tensors, const char* fn, const char* what) {
  std::vector<TensorSpec> out;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    PIPETRAIN_CHECK_ARG(tensors[i].defined(), fn, what, " ", i, " is undefined");
    PIPETRAIN_CHECK_ARG(tensors[i].device() == Device::kCpu, fn, what, " ", i, " is on ",
                        to_string(tensors[i].device()), ", expected cpu");
    out.push_back({tensors[i].shape(), tensors[i].dtype()});
  }
  return out;
}

void check_counts(const std::vector<TensorSpec>& outputs, const std::vector<TensorSpec>& targets,
                  const char* fn, const char* outputs_are, const char* targets_are) {
  PIPETRAIN_CHECK_ARG(outputs.size() == 1, fn, "got ", outputs.size(), " outputs, expected 1 (",
                      outputs_are, ")");
  PIPETRAIN_CHECK_ARG(targets.size() == 1, fn, "got ", targets.size(), " targets, expected 1 (",
                      targets_are, ")");
}

bool is_float(DType dtype) { return dtype == DType::kFloat32 || dtype == DType::kFloat64; }

void check_cross_entropy(const std::vector<TensorSpec>& outputs,
                         const std::vector<TensorSpec>& targets, const char* fn) {
  check_counts(outputs, targets, fn, "the logits", "the class ids");
  const TensorSpec& logits = outputs[0];
  const TensorSpec& ids = targets[0];
  PIPETRAIN_CHECK_ARG(is_float(logits.dtype), fn, "logits have dtype ", to_string(logits.dtype),
                      ", expected fp32 or fp64");
  PIPETRAIN_CHECK_ARG(!logits.shape.empty() && logits.shape.back() >= 1, fn, "logits have shape ",
                      shape_to_string(logits.shape), ", expected [..., V] with V >= 1");
  PIPETRAIN_CHECK_ARG(ids.dtype == DType::kInt32, fn, "targets have dtype ",
                      to_string(ids.dtype), ", expected int32");
  const Shape leading(logits.shape.begin(), logits.shape.end() - 1);
  PIPETRAIN_CHECK_ARG(ids.shape == leading, fn, "targets have shape ", shape_to_string(ids.shape),
                      ", expected ", shape_to_string(leading), " (the logits' leading dimensions)");
}

void check_mse(const std::vector<TensorSpec>& outputs, const std::vector<TensorSpec>& targets,
               const char* fn) {
  check_counts(outputs, targets, fn, "the predictions", "the values to predict");
  PIPETRAIN_CHECK_ARG(is_float(outputs[0].dtype), fn, "outputs have dtype ",
                      to_string(outputs[0].dtype), ", expected fp32 or fp64");
  PIPETRAIN_CHECK_ARG(targets[0] == outputs[0], fn, "targets are ", to_string(targets[0]),
                      ", expected ", to_string(outputs[0]), " (the outputs' shape and dtype)");
}

}  // namespace

// ---- CrossEntropyLoss ------------------------------------------------------------------------

void CrossEntropyLoss::check(const std::vector<TensorSpec>& outputs,
                             const std::vector<TensorSpec>& targets) const {
  check_cross_entropy(outputs, targets, "CrossEntropyLoss::check");
}

// Rows whose target is ignore_index are skipped; the others go one by one through the fused
// kernel (pipetrain/kernels/cpu.h), so a microbatch without ignored targets gets bitwise the
// kernel's loss and gradient on all rows at once. Losses are summed in double.
double CrossEntropyLoss::run(const TensorList& outputs, const TensorList& targets, Saved* saved,
                             const char* fn) const {
  check_cross_entropy(specs(outputs, fn, "outputs"), specs(targets, fn, "targets"), fn);
  const Tensor& logits = outputs[0];
  const std::int64_t v = logits.size(-1);
  const std::int64_t n = logits.numel() / v;
  const Tensor ids = targets[0].view({n});
  const std::int32_t* t = ids.data<std::int32_t>();
  for (std::int64_t i = 0; i < n; ++i) {
    PIPETRAIN_CHECK_ARG(t[i] == ignore_index_ || (t[i] >= 0 && t[i] < v), fn, "target ", t[i],
                        " at index ", i, " is outside [0, ", v, ") and is not ignore_index=",
                        ignore_index_);
  }
  // Probabilities: the whole [..., V] tensor when kept, else one row of scratch.
  Tensor probs = Tensor::empty(saved != nullptr ? logits.shape() : Shape{v}, logits.dtype());
  double total = 0.0;
  std::int64_t counted = 0;
  detail::dispatch_float(logits.dtype(), fn, [&](auto zero) {
    using T = decltype(zero);
    const T* z = logits.data<T>();
    T* p = probs.data<T>();
    for (std::int64_t i = 0; i < n; ++i) {
      T* row = saved != nullptr ? p + i * v : p;
      if (t[i] == ignore_index_) {
        if (saved != nullptr) std::fill(row, row + v, T(0));
        continue;
      }
      T loss;
      total += cpu::cross_entropy_forward<T>(row, &loss, z + i * v, t + i, 1, v);
      ++counted;
    }
  });
  if (saved != nullptr) {
    saved->probs = std::move(probs);
    saved->targets = ids;
    saved->counted = counted;
  }
  return counted > 0 ? total / static_cast<double>(counted) : 0.0;
}

double CrossEntropyLoss::forward(MicrobatchId mb, const TensorList& outputs,
                                 const TensorList& targets) {
  constexpr const char* kFn = "CrossEntropyLoss::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already pending");
  Saved s;
  const double loss = run(outputs, targets, &s, kFn);
  saved_[mb] = std::move(s);
  return loss;
}

double CrossEntropyLoss::evaluate(const TensorList& outputs, const TensorList& targets) {
  return run(outputs, targets, nullptr, "CrossEntropyLoss::evaluate");
}

TensorList CrossEntropyLoss::backward(MicrobatchId mb, double scale) {
  constexpr const char* kFn = "CrossEntropyLoss::backward";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no forward pending");
  Saved s = std::move(it->second);
  saved_.erase(it);
  // The gradient overwrites the probabilities (the kernel allows it); ignored rows are zero.
  Tensor grad = s.probs;
  const std::int64_t v = grad.size(-1);
  const std::int64_t n = grad.numel() / v;
  const std::int32_t* t = s.targets.data<std::int32_t>();
  const double row_scale = s.counted > 0 ? scale / static_cast<double>(s.counted) : 0.0;
  detail::dispatch_float(grad.dtype(), kFn, [&](auto zero) {
    using T = decltype(zero);
    T* d = grad.data<T>();
    for (std::int64_t i = 0; i < n; ++i) {
      if (t[i] == ignore_index_) continue;  // zero since forward
      cpu::cross_entropy_backward<T>(d + i * v, d + i * v, t + i, row_scale, 1, v);
    }
  });
  return {grad};
}

// ---- MseLoss ---------------------------------------------------------------------------------

void MseLoss::check(const std::vector<TensorSpec>& outputs,
                    const std::vector<TensorSpec>& targets) const {
  check_mse(outputs, targets, "MseLoss::check");
}

namespace {

// Sum of squared differences in double; *diff (when given) receives outputs - targets.
double squared_error(const Tensor& outputs, const Tensor& targets, Tensor* diff, const char* fn) {
  double total = 0.0;
  detail::dispatch_float(outputs.dtype(), fn, [&](auto zero) {
    using T = decltype(zero);
    const T* o = outputs.data<T>();
    const T* y = targets.data<T>();
    T* d = diff != nullptr ? diff->data<T>() : nullptr;
    for (std::int64_t i = 0; i < outputs.numel(); ++i) {
      const T e = o[i] - y[i];
      if (d != nullptr) d[i] = e;
      total += static_cast<double>(e) * static_cast<double>(e);
    }
  });
  return total;
}

double mean(double total, std::int64_t n) { return n > 0 ? total / static_cast<double>(n) : 0.0; }

}  // namespace

double MseLoss::forward(MicrobatchId mb, const TensorList& outputs, const TensorList& targets) {
  constexpr const char* kFn = "MseLoss::forward";
  PIPETRAIN_CHECK_ARG(!saved_.contains(mb), kFn, "microbatch ", mb, " is already pending");
  check_mse(specs(outputs, kFn, "outputs"), specs(targets, kFn, "targets"), kFn);
  Tensor diff = Tensor::empty(outputs[0].shape(), outputs[0].dtype());
  const double loss = mean(squared_error(outputs[0], targets[0], &diff, kFn), diff.numel());
  saved_[mb] = std::move(diff);
  return loss;
}

double MseLoss::evaluate(const TensorList& outputs, const TensorList& targets) {
  constexpr const char* kFn = "MseLoss::evaluate";
  check_mse(specs(outputs, kFn, "outputs"), specs(targets, kFn, "targets"), kFn);
  return mean(squared_error(outputs[0], targets[0], nullptr, kFn), outputs[0].numel());
}

TensorList MseLoss::backward(MicrobatchId mb, double scale) {
  constexpr const char* kFn = "MseLoss::backward";
  auto it = saved_.find(mb);
  PIPETRAIN_CHECK_ARG(it != saved_.end(), kFn, "microbatch ", mb, " has no forward pending");
  Tensor grad = std::move(it->second);
  saved_.erase(it);
  // d(scale * mean(e^2)) / d output = 2 scale e / n, computed in double and written over e.
  const double f = grad.numel() > 0 ? 2.0 * scale / static_cast<double>(grad.numel()) : 0.0;
  detail::dispatch_float(grad.dtype(), kFn, [&](auto zero) {
    using T = decltype(zero);
    T* g = grad.data<T>();
    for (std::int64_t i = 0; i < grad.numel(); ++i) {
      g[i] = static_cast<T>(f * static_cast<double>(g[i]));
    }
  });
  return {grad};
}

}  // namespace pipetrain::nn
