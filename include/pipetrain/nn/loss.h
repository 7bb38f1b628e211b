// pipetrain/nn/loss.h: losses applied to the last stage's outputs.
//
// The runtime calls, for each microbatch mb of a step on the rank holding the last stage:
//   L = forward(mb, outputs, targets)      after the last stage's forward; keeps what the
//                                          gradient needs
//   g = backward(mb, scale)                before the last stage's backward: one gradient per
//                                          output (see stage.h), those of scale * L; releases mb
// and, before the first step with new shapes, check(output specs, target specs), so that
// targets that do not fit the outputs are reported before any compute. `evaluate` is the
// forward that keeps nothing (evaluation). Losses are means over the microbatch's samples, so
// microbatches of equal size weigh equally (see the loss-scale contract in stage.h).
//
// Write a new loss by deriving from Loss; MseLoss (loss.cpp) is a short example.
// Thread safety: one thread drives a Loss at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "pipetrain/stage.h"

namespace pipetrain::nn {

class Loss {
 public:
  virtual ~Loss() = default;
  /// "cross_entropy", "mse", ...
  virtual std::string name() const = 0;
  /// Throws InvalidArgument naming the loss and what it expected when outputs and targets of
  /// these specs cannot be used.
  virtual void check(const std::vector<TensorSpec>& outputs,
                     const std::vector<TensorSpec>& targets) const = 0;
  /// The loss of microbatch mb, keeping what backward(mb) needs. Throws InvalidArgument for
  /// shapes check() rejects or when mb is already pending.
  virtual double forward(MicrobatchId mb, const TensorList& outputs, const TensorList& targets) = 0;
  /// Gradients of scale * loss with respect to the outputs (one per output, undefined for
  /// integer outputs); releases mb. Throws InvalidArgument when mb has no forward pending.
  virtual TensorList backward(MicrobatchId mb, double scale) = 0;
  /// The loss without keeping anything.
  virtual double evaluate(const TensorList& outputs, const TensorList& targets) = 0;
  /// Drops what is kept for mb (no-op when nothing is).
  virtual void release(MicrobatchId mb) = 0;
};

/// Softmax cross-entropy, mean over the positions whose target is not `ignore_index`.
/// outputs: one fp32 or fp64 tensor of logits [..., V]; targets: one int32 tensor [...] with
/// the logits' leading dimensions and ids in [0, V) or equal to ignore_index. A microbatch
/// whose targets are all ignored has loss 0 and zero gradient.
class CrossEntropyLoss final : public Loss {
 public:
  explicit CrossEntropyLoss(std::int32_t ignore_index = -100) : ignore_index_(ignore_index) {}
  std::string name() const override { return "cross_entropy"; }
  void check(const std::vector<TensorSpec>& outputs,
             const std::vector<TensorSpec>& targets) const override;
  double forward(MicrobatchId mb, const TensorList& outputs, const TensorList& targets) override;
  TensorList backward(MicrobatchId mb, double scale) override;
  double evaluate(const TensorList& outputs, const TensorList& targets) override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }
  std::int32_t ignore_index() const { return ignore_index_; }

 private:
  struct Saved {
    Tensor probs;    // softmax of the logits, in the logits' shape [..., V]; 0 in ignored rows
    Tensor targets;  // int32 [N]
    std::int64_t counted = 0;
  };
  double run(const TensorList& outputs, const TensorList& targets, Saved* saved,
             const char* fn) const;

  std::int32_t ignore_index_;
  std::map<MicrobatchId, Saved> saved_;
};

/// Mean squared error, mean over every element: outputs and targets are one floating tensor
/// each, of the same shape and dtype.
class MseLoss final : public Loss {
 public:
  std::string name() const override { return "mse"; }
  void check(const std::vector<TensorSpec>& outputs,
             const std::vector<TensorSpec>& targets) const override;
  double forward(MicrobatchId mb, const TensorList& outputs, const TensorList& targets) override;
  TensorList backward(MicrobatchId mb, double scale) override;
  double evaluate(const TensorList& outputs, const TensorList& targets) override;
  void release(MicrobatchId mb) override { saved_.erase(mb); }

 private:
  std::map<MicrobatchId, Tensor> saved_;  // outputs - targets, in the outputs' dtype
};

}  // namespace pipetrain::nn
