// A trivial Stage for runtime tests: y = (a + c) * x on [b, T] fp32 activations, where a is the
// stage's own scalar and c an optional scalar tied between the first and the last stage. The
// first stage reads x = 0.1 * token (int32 [b, T]); FakeLoss is mean(0.5 * (y - 0.1 * target)^2).
// Gradients are exact and cheap, so the executor can be checked against a hand-run reference.
#pragma once

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/stage.h"

namespace pipetrain::testing {

class FakeStage final : public Stage {
 public:
  FakeStage(int stage, int num_stages, bool tied, std::int64_t width = 3)
      : stage_(stage), num_stages_(num_stages), width_(width) {
    a_ = nn::make_parameter("s" + std::to_string(stage) + ".a", {1}, false);
    a_.value.fill(0.5 + 0.25 * stage);
    if (tied && (is_first() || is_last())) {
      c_ = std::make_unique<nn::Parameter>(nn::make_parameter("c", {1}, false));
      c_->value.fill(0.3);
    }
  }

  bool is_first() const { return stage_ == 0; }
  bool is_last() const { return stage_ == num_stages_ - 1; }

  TensorList forward(MicrobatchId mb, const TensorList& inputs) override {
    if (throw_in_forward_ == mb) throw Error("[FakeStage::forward] injected failure");
    if (stall_in_forward_ == mb) std::this_thread::sleep_for(stall_);
    kept_[mb] = {input_of(inputs[0]), Tensor()};
    return {scaled(kept_[mb].x)};
  }

  TensorList backward_input(MicrobatchId mb, const TensorList& grad_outputs) override {
    Kept& k = kept_.at(mb);
    k.gy = grad_outputs.at(0);
    if (is_first()) return {Tensor()};
    return {scaled(k.gy)};
  }

  void backward_weight(MicrobatchId mb) override {
    Kept& k = kept_.at(mb);
    double sum = 0;
    const float* x = k.x.data<float>();
    const float* g = k.gy.data<float>();
    for (std::int64_t i = 0; i < k.x.numel(); ++i) sum += static_cast<double>(x[i]) * g[i];
    a_.grad.data<float>()[0] += static_cast<float>(sum);
    if (c_) c_->grad.data<float>()[0] += static_cast<float>(sum);
    kept_.erase(mb);
  }

  TensorList infer(const TensorList& inputs) override { return {scaled(input_of(inputs[0]))}; }
  void release(MicrobatchId mb) override { kept_.erase(mb); }
  std::size_t bytes_kept() const override { return kept_.size(); }
  std::vector<nn::Parameter*> parameters() override {
    std::vector<nn::Parameter*> p{&a_};
    if (c_) p.push_back(c_.get());
    return p;
  }
  std::vector<TiedParameter> tied_parameters() override {
    if (!c_ || num_stages_ == 1) return {};
    return {TiedParameter{"c", c_.get()}};
  }
  std::vector<TensorSpec> output_specs(const std::vector<TensorSpec>& inputs) const override {
    const TensorSpec want{{inputs.empty() || inputs[0].shape.empty() ? 0 : inputs[0].shape[0],
                           width_},
                          is_first() ? DType::kInt32 : DType::kFloat32};
    PIPETRAIN_CHECK_ARG(inputs.size() == 1 && inputs[0] == want, "FakeStage::output_specs",
                        "inputs are ", to_string(inputs), ", expected (", to_string(want), ")");
    TensorSpec out{want.shape, DType::kFloat32};
    if (wrong_width_) out.shape.back() += 1;
    return {out};
  }

  nn::Parameter& a() { return a_; }
  nn::Parameter* c() { return c_.get(); }
  void throw_in_forward(MicrobatchId mb) { throw_in_forward_ = mb; }
  void report_wrong_width() { wrong_width_ = true; }
  /// forward(mb) sleeps `how_long` first (a peer that is slow, not failed).
  void stall_in_forward(MicrobatchId mb, std::chrono::milliseconds how_long) {
    stall_in_forward_ = mb;
    stall_ = how_long;
  }

 private:
  float scale() const { return a_.value.data<float>()[0] + (c_ ? c_->value.data<float>()[0] : 0); }
  Tensor input_of(const Tensor& input) const {
    if (!is_first()) return input;
    Tensor x = Tensor::empty(input.shape());
    const std::int32_t* t = input.data<std::int32_t>();
    for (std::int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = 0.1f * static_cast<float>(t[i]);
    return x;
  }
  Tensor scaled(const Tensor& x) const {
    Tensor y = Tensor::empty(x.shape());
    const float k = scale();
    for (std::int64_t i = 0; i < x.numel(); ++i) y.data<float>()[i] = k * x.data<float>()[i];
    return y;
  }

  struct Kept {
    Tensor x, gy;
  };
  int stage_, num_stages_;
  std::int64_t width_;
  nn::Parameter a_;
  std::unique_ptr<nn::Parameter> c_;
  std::map<MicrobatchId, Kept> kept_;
  MicrobatchId throw_in_forward_ = -1;
  MicrobatchId stall_in_forward_ = -1;
  std::chrono::milliseconds stall_{0};
  bool wrong_width_ = false;
};

/// mean(0.5 * (y - 0.1 * target)^2) over fp32 y [b, T] and int32 targets [b, T].
class FakeLoss final : public nn::Loss {
 public:
  std::string name() const override { return "fake"; }
  void check(const std::vector<TensorSpec>& outputs,
             const std::vector<TensorSpec>& targets) const override {
    PIPETRAIN_CHECK_ARG(outputs.size() == 1 && targets.size() == 1 &&
                            outputs[0].shape == targets[0].shape,
                        "FakeLoss::check", "outputs ", to_string(outputs), " and targets ",
                        to_string(targets), " differ");
  }
  double forward(MicrobatchId mb, const TensorList& outputs, const TensorList& targets) override {
    saved_[mb] = {outputs[0], targets[0]};
    return evaluate(outputs, targets);
  }
  TensorList backward(MicrobatchId mb, double scale) override {
    auto& [y, t] = saved_.at(mb);
    Tensor g = Tensor::empty(y.shape());
    const auto n = y.numel();
    for (std::int64_t i = 0; i < n; ++i) {
      g.data<float>()[i] = static_cast<float>(
          scale * (y.data<float>()[i] - 0.1 * t.data<std::int32_t>()[i]) / static_cast<double>(n));
    }
    saved_.erase(mb);
    return {g};
  }
  double evaluate(const TensorList& outputs, const TensorList& targets) override {
    const Tensor& y = outputs[0];
    double loss = 0;
    for (std::int64_t i = 0; i < y.numel(); ++i) {
      const double d = y.data<float>()[i] - 0.1 * targets[0].data<std::int32_t>()[i];
      loss += 0.5 * d * d;
    }
    return loss / static_cast<double>(y.numel());
  }
  void release(MicrobatchId mb) override { saved_.erase(mb); }

 private:
  std::map<MicrobatchId, std::pair<Tensor, Tensor>> saved_;
};

}  // namespace pipetrain::testing
