// pipetrain/optim/optimizer.h: optimizers over nn::Parameter, gradient clipping, checks.
//
// The passes over all the parameters' elements (updates, sums of squares, scaling, zeroing) run
// on the rank's share of the cores (cpu_threads.h) when the build has OpenMP, with results that
// do not depend on the thread count.
//
// An optimizer holds pointers to the parameters it updates (they must outlive it) and fp32
// state per parameter. step(lr) applies one update from the parameters' gradients and counts
// it; the learning rate is passed in so that any schedule (lr_schedule.h) can drive it.
// Parameters must be fp32 (keep fp32 master weights for lower-precision models).
//
// Gradient clipping across pipeline stages: each stage computes local_grad_sum_of_squares() of
// its own parameters, the sums are all-reduced, and every stage calls
// scale_grads(params, clip_coefficient(sqrt(total), max_norm)). clip_grad_norm() does the same
// for parameters that all live in one process.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/update_rules.h"

namespace pipetrain::optim {

/// One named fp32 buffer of optimizer state, e.g. "h.0.attn.c_attn.weight/m".
struct StateBuffer {
  std::string name;
  std::vector<float> data;
  bool operator==(const StateBuffer&) const = default;
};

/// Everything an optimizer needs to continue exactly where it stopped.
struct OptimizerState {
  std::string kind;        ///< "adamw" or "sgd"
  std::int64_t step = 0;   ///< updates done
  std::vector<StateBuffer> buffers;
  bool operator==(const OptimizerState&) const = default;
};

class Optimizer {
 public:
  /// Throws InvalidArgument when a pointer is null, a parameter is not fp32, or its gradient
  /// does not have the value's number of elements:
  ///   "[AdamW] parameter 'wte' has dtype bf16, expected fp32"
  Optimizer(std::string kind, std::vector<nn::Parameter*> params);
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  /// Applies one update with learning rate `lr` (>= 0) and increments step_count().
  virtual void step(double lr) = 0;

  /// Multiplies every gradient by `grad_scale` (finite, > 0; the gradients stay scaled, as
  /// after scale_grads()) and applies one update from them: gradient clipping and the update
  /// in one pass over the gradients. The same result as scale_grads(parameters(), grad_scale)
  /// then step(lr), bit for bit. The default does exactly that; AdamW and Sgd fuse it.
  virtual void step(double lr, double grad_scale);

  /// Sets every gradient to zero.
  void zero_grad();

  /// Updates done so far.
  std::int64_t step_count() const { return step_; }
  std::span<nn::Parameter* const> parameters() const { return params_; }

  /// A copy of the state, and its inverse. load_state() throws InvalidArgument when the state
  /// belongs to another kind of optimizer or its buffers do not match these parameters (name,
  /// count or size), e.g.
  ///   "[Optimizer::load_state] buffer 3 is 'wpe/m' with 96 values, expected 'wpe/m' with 128"
  OptimizerState state() const;
  void load_state(const OptimizerState& state);

 protected:
  std::string kind_;
  std::vector<nn::Parameter*> params_;
  std::int64_t step_ = 0;
  /// Buffers in the order of state(): for each parameter, its buffers by suffix.
  std::vector<StateBuffer> buffers_;
};

/// AdamW with bias correction and decoupled weight decay, skipping decay on parameters whose
/// `weight_decay` flag is false (biases, norm gains). See adamw_update() for the formula.
class AdamW final : public Optimizer {
 public:
  /// Throws InvalidArgument (besides Optimizer's checks) unless 0 <= beta1, beta2 < 1,
  /// eps > 0 and weight_decay >= 0: "[AdamW] beta2=1 must be in [0, 1)"
  AdamW(std::vector<nn::Parameter*> params, AdamWConfig config = {});
  void step(double lr) override;
  void step(double lr, double grad_scale) override;
  const AdamWConfig& config() const { return config_; }

 private:
  AdamWConfig config_;
};

/// Stochastic gradient descent with optional (Nesterov) momentum. See sgd_update().
class Sgd final : public Optimizer {
 public:
  /// Throws InvalidArgument unless 0 <= momentum < 1 and weight_decay >= 0.
  Sgd(std::vector<nn::Parameter*> params, SgdConfig config = {});
  void step(double lr) override;
  void step(double lr, double grad_scale) override;
  const SgdConfig& config() const { return config_; }

 private:
  SgdConfig config_;
};

/// Sum of squares of the gradients of `params` (fp64 accumulation): the local part of the
/// global gradient norm. It is finite exactly when every gradient element is (an fp32 square
/// is at most 1.2e77), so it doubles as the finite check. Threaded; the same bits on any
/// thread count (chunks of 32768 elements added in order).
double local_grad_sum_of_squares(std::span<nn::Parameter* const> params);

/// The factor that brings a gradient of norm `global_norm` down to `max_norm`:
/// min(1, max_norm / (global_norm + 1e-6)). Throws InvalidArgument when max_norm <= 0.
/// A non-finite global_norm gives 1: clipping cannot repair it; check it with is_finite().
double clip_coefficient(double global_norm, double max_norm);

/// Multiplies every gradient by `scale`.
void scale_grads(std::span<nn::Parameter* const> params, double scale);

/// Clips the gradients of `params` (all in this process) to global L2 norm `max_norm` and
/// returns the norm before clipping.
double clip_grad_norm(std::span<nn::Parameter* const> params, double max_norm);

/// True when every gradient element of `params` is finite (no NaN, no +-Inf).
bool grads_are_finite(std::span<nn::Parameter* const> params);

/// True when `value` (a loss or a norm) is neither NaN nor infinite.
bool is_finite(double value);

}  // namespace pipetrain::optim
