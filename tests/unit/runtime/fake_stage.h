// A trivial Stage for runtime tests: y = (a + c) * x on [b, T] fp32 activations, where a is the
// stage's own scalar and c an optional scalar tied between the first and the last stage. The
// first stage reads x = 0.1 * token; the last stage's loss is mean(0.5 * (y - 0.1 * target)^2).
// Gradients are exact and cheap, so the executor can be checked against a hand-run reference.
#pragma once

#include <map>
#include <memory>
#include <stdexcept>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/stage.h"

namespace pipetrain::testing {

class FakeStage final : public Stage {
 public:
  FakeStage(int stage, int num_stages, bool tied)
      : stage_(stage), num_stages_(num_stages) {
    a_ = nn::make_parameter("s" + std::to_string(stage) + ".a", {1}, false);
    a_.value.fill(0.5 + 0.25 * stage);
    if (tied && (is_first() || is_last())) {
      c_ = std::make_unique<nn::Parameter>(nn::make_parameter("c", {1}, false));
      c_->value.fill(0.3);
    }
  }

  bool is_first() const override { return stage_ == 0; }
  bool is_last() const override { return stage_ == num_stages_ - 1; }

  void set_targets(MicrobatchId mb, const Tensor& targets) override { targets_[mb] = targets; }

  Tensor forward(MicrobatchId mb, const Tensor& input) override {
    if (throw_in_forward_ == mb) throw Error("[FakeStage::forward] injected failure");
    Tensor x = Tensor::empty(input.shape());
    const auto n = x.numel();
    float* px = x.data<float>();
    if (is_first()) {
      const std::int32_t* t = input.data<std::int32_t>();
      for (std::int64_t i = 0; i < n; ++i) px[i] = 0.1f * static_cast<float>(t[i]);
    } else {
      const float* in = input.data<float>();
      for (std::int64_t i = 0; i < n; ++i) px[i] = in[i];
    }
    const float k = scale();
    Tensor y = Tensor::empty(input.shape());
    float* py = y.data<float>();
    for (std::int64_t i = 0; i < n; ++i) py[i] = k * px[i];
    kept_[mb] = {x, y, Tensor()};
    if (!is_last()) return y;
    const std::int32_t* t = targets_.at(mb).data<std::int32_t>();
    double loss = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      const double d = py[i] - 0.1 * t[i];
      loss += 0.5 * d * d;
    }
    return Tensor::from_vector<float>({static_cast<float>(loss / n)}, Shape{});
  }

  Tensor backward_input(MicrobatchId mb, const Tensor& grad_output) override {
    Kept& k = kept_.at(mb);
    const auto n = k.x.numel();
    Tensor gy = Tensor::empty(k.x.shape());
    float* g = gy.data<float>();
    if (is_last()) {
      const double s = grad_output.defined() ? grad_output.to_vector<double>()[0] : 1.0;
      const std::int32_t* t = targets_.at(mb).data<std::int32_t>();
      const float* py = k.y.data<float>();
      for (std::int64_t i = 0; i < n; ++i) {
        g[i] = static_cast<float>(s * (py[i] - 0.1 * t[i]) / static_cast<double>(n));
      }
    } else {
      const float* in = grad_output.data<float>();
      for (std::int64_t i = 0; i < n; ++i) g[i] = in[i];
    }
    k.gy = gy;
    if (is_first()) return Tensor();
    Tensor gx = Tensor::empty(k.x.shape());
    const float kscale = scale();
    for (std::int64_t i = 0; i < n; ++i) gx.data<float>()[i] = kscale * g[i];
    return gx;
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
    targets_.erase(mb);
  }

  Tensor infer(const Tensor&, const Tensor&) override { throw Error("[FakeStage] no infer"); }
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
  Shape output_shape(const Shape& input_shape) const override {
    if (is_last()) return {};
    Shape out = input_shape;
    if (wrong_width_) out.back() += 1;
    return out;
  }
  DType output_dtype() const override { return DType::kFloat32; }

  nn::Parameter& a() { return a_; }
  nn::Parameter* c() { return c_.get(); }
  void throw_in_forward(MicrobatchId mb) { throw_in_forward_ = mb; }
  void report_wrong_width() { wrong_width_ = true; }

 private:
  float scale() const { return a_.value.data<float>()[0] + (c_ ? c_->value.data<float>()[0] : 0); }

  struct Kept {
    Tensor x, y, gy;
  };
  int stage_, num_stages_;
  nn::Parameter a_;
  std::unique_ptr<nn::Parameter> c_;
  std::map<MicrobatchId, Tensor> targets_;
  std::map<MicrobatchId, Kept> kept_;
  MicrobatchId throw_in_forward_ = -1;
  bool wrong_width_ = false;
};

}  // namespace pipetrain::testing
