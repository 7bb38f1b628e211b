// Test helpers for layers, stages and losses: random tensors whose values are fp32-exact (so an
// fp32 copy and an fp64 copy hold the same numbers), max-norm relative errors, the parameters'
// values and gradients by name, central differences, and the generic checks every layer passes
// (test_layers.cpp, test_attention_layers.cpp).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "error_of.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/layer.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/tensor.h"

namespace pipetrain::testing {

/// A tensor of `shape` and `dtype` with N(0, scale^2) values rounded to fp32.
inline Tensor random_tensor(const Shape& shape, std::mt19937_64& rng, DType dtype = DType::kFloat64,
                            double scale = 1.0) {
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<float> v(static_cast<std::size_t>(shape_numel(shape)));
  for (float& x : v) x = static_cast<float>(normal(rng));
  return Tensor::from_vector(v, shape).to(dtype);
}

/// int32 ids in [0, limit).
inline Tensor random_ids(const Shape& shape, std::int32_t limit, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int32_t> dist(0, limit - 1);
  std::vector<std::int32_t> v(static_cast<std::size_t>(shape_numel(shape)));
  for (auto& x : v) x = dist(rng);
  return Tensor::from_vector(v, shape);
}

/// max |got - want| / max |want| (max-norm relative error; 0 when both are zero).
inline double max_rel_error(const std::vector<double>& got, const std::vector<double>& want) {
  EXPECT_EQ(got.size(), want.size());
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    diff = std::max(diff, std::abs(got[i] - want[i]));
    norm = std::max(norm, std::abs(want[i]));
  }
  return norm > 0 ? diff / norm : diff;
}

inline double max_rel_error(const Tensor& got, const Tensor& want) {
  EXPECT_EQ(got.shape(), want.shape());
  return max_rel_error(got.to_vector<double>(), want.to_vector<double>());
}

/// Adds N(0, scale^2) noise (rounded to fp32) to every parameter, drawn in order: two models
/// built alike and perturbed with the same seed stay alike, whatever their dtype. Moves gains
/// and biases off their special initial values (1, 0), which would hide gradient errors.
inline void perturb(const std::vector<nn::Parameter*>& params, std::uint64_t seed,
                    double scale = 0.1) {
  std::mt19937_64 rng(seed);
  for (nn::Parameter* p : params) {
    const Tensor noise = random_tensor(p->value.shape(), rng, DType::kFloat64, scale);
    std::vector<double> v = p->value.to_vector<double>();
    const std::vector<double> n = noise.to_vector<double>();
    for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(v[i] + n[i]);
    p->value.copy_from(Tensor::from_vector(v, p->value.shape()));
  }
}

/// name -> gradient, as doubles.
inline std::map<std::string, std::vector<double>> grads_by_name(
    const std::vector<nn::Parameter*>& params) {
  std::map<std::string, std::vector<double>> out;
  for (const nn::Parameter* p : params) out[p->name] = p->grad.to_vector<double>();
  return out;
}

/// Bitwise equality of two tensors (shape, dtype and bytes).
inline bool bitwise_equal(const Tensor& a, const Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::equal(static_cast<const char*>(a.raw_data()),
                    static_cast<const char*>(a.raw_data()) + a.nbytes(),
                    static_cast<const char*>(b.raw_data()));
}

/// <a, b> over all elements, in fp64.
inline double dot(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  double s = 0;
  for (std::size_t i = 0; i < x.size(); ++i) s += x[i] * y[i];
  return s;
}

/// Central differences (step h) of `loss` with respect to each of the n values at v; every value
/// is restored after use.
inline std::vector<double> numeric_gradient(double* v, std::int64_t n,
                                            const std::function<double()>& loss,
                                            double h = 1e-6) {
  std::vector<double> g(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const double saved = v[i];
    v[i] = saved + h;
    const double up = loss();
    v[i] = saved - h;
    const double down = loss();
    v[i] = saved;
    g[static_cast<std::size_t>(i)] = (up - down) / (2 * h);
  }
  return g;
}

// ---- the generic checks every layer passes -------------------------------------------------
// Each takes layers freshly built (and perturbed) by the caller and inputs and output gradients
// it drew, so a failure reports the caller's seed.

/// How a finite-difference check evaluates a layer: infer(), or forward() and release() of the
/// checked microbatch (a layer whose output depends on the step and microbatch, such as Dropout,
/// then keeps its mask).
enum class Evaluate { kInfer, kForward };

/// Every gradient of `layer` (fp64) against central differences of L = <layer(x), w>: the
/// input's (for int32 ids: that there is none) and each parameter's, after a split backward of
/// microbatch 7 that keeps nothing.
inline void expect_gradients_match_finite_differences(nn::Layer& layer, Tensor x, const Tensor& w,
                                                      Evaluate evaluate) {
  const MicrobatchId mb = 7;
  const auto loss = [&] {
    if (evaluate == Evaluate::kInfer) return dot(layer.infer(x), w);
    const double l = dot(layer.forward(mb, x), w);
    layer.release(mb);
    return l;
  };
  layer.forward(mb, x);
  const Tensor dx = layer.backward_input(mb, w);
  layer.backward_weight(mb);
  EXPECT_EQ(layer.bytes_kept(), 0u);
  // Bounds: 1e-6 relative (max-norm), fp64 with h = 1e-6 (as the GPT tests).
  if (x.dtype() == DType::kInt32) {
    EXPECT_FALSE(dx.defined());
  } else {
    x = x.clone();  // the layer no longer keeps it; perturb a private copy
    EXPECT_LT(max_rel_error(dx.to_vector<double>(), numeric_gradient(x.data<double>(), x.numel(), loss)),
              1e-6)
        << "input";
  }
  for (nn::Parameter* p : layer.parameters()) {
    const auto g = numeric_gradient(p->value.data<double>(), p->value.numel(), loss);
    EXPECT_LT(max_rel_error(p->grad.to_vector<double>(), g), 1e-6) << p->name;
  }
}

/// An fp32 layer against its fp64 twin built with the same arguments, on x64 (fp64, or int32 ids
/// given to both as they are) and the output gradient w64: the same parameter names and initial
/// values, then the output, the input gradient and every parameter gradient within 1e-5 relative
/// (max-norm), the fp32 tolerance of STYLE.md.
inline void expect_fp32_matches_fp64(nn::Layer& l32, nn::Layer& l64, const Tensor& x64,
                                     const Tensor& w64) {
  const auto p32 = l32.parameters(), p64 = l64.parameters();
  ASSERT_EQ(p32.size(), p64.size());
  for (std::size_t i = 0; i < p32.size(); ++i) {
    EXPECT_EQ(p32[i]->name, p64[i]->name);
    EXPECT_EQ(p32[i]->value.to_vector<double>(), p64[i]->value.to_vector<double>());
  }
  const Tensor x32 = x64.dtype() == DType::kInt32 ? x64 : x64.to(DType::kFloat32);
  const Tensor y32 = l32.forward(0, x32), y64 = l64.forward(0, x64);
  EXPECT_EQ(y32.dtype(), DType::kFloat32);
  EXPECT_LT(max_rel_error(y32, y64), 1e-5) << "output";
  const Tensor dx32 = l32.backward(0, w64.to(DType::kFloat32));
  const Tensor dx64 = l64.backward(0, w64);
  ASSERT_EQ(dx32.defined(), dx64.defined());
  if (dx64.defined()) {
    EXPECT_LT(max_rel_error(dx32, dx64), 1e-5) << "input gradient";
  }
  for (std::size_t i = 0; i < p32.size(); ++i) {
    EXPECT_LT(max_rel_error(p32[i]->grad, p64[i]->grad), 1e-5) << p64[i]->name;
  }
}

/// backward_input + backward_weight on `split`, in another order over microbatches 0 and 1, is
/// bitwise backward() on its twin `full`; backward_input touches no parameter gradient; both keep
/// nothing after.
inline void expect_split_backward_bitwise_full(nn::Layer& full, nn::Layer& split, const Tensor& x0,
                                               const Tensor& x1, const Tensor& w0,
                                               const Tensor& w1) {
  EXPECT_TRUE(bitwise_equal(full.forward(0, x0), split.forward(0, x0)));
  EXPECT_TRUE(bitwise_equal(full.forward(1, x1), split.forward(1, x1)));
  const Tensor f0 = full.backward(0, w0), f1 = full.backward(1, w1);
  const Tensor s1 = split.backward_input(1, w1), s0 = split.backward_input(0, w0);
  for (const nn::Parameter* p : split.parameters()) {
    EXPECT_EQ(p->grad.to_vector<double>(), std::vector<double>(p->grad.numel(), 0.0)) << p->name;
  }
  split.backward_weight(0);
  split.backward_weight(1);
  EXPECT_TRUE(bitwise_equal(f0, s0));
  EXPECT_TRUE(bitwise_equal(f1, s1));
  const auto pf = full.parameters(), ps = split.parameters();
  for (std::size_t i = 0; i < pf.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(pf[i]->grad, ps[i]->grad)) << pf[i]->name;
  }
  EXPECT_EQ(full.bytes_kept(), 0u);
  EXPECT_EQ(split.bytes_kept(), 0u);
}

/// Microbatches 0 and 1 through `both` (fp64) add up: the input gradients are bitwise those of
/// `only0` and `only1` (twins) run on one each, the parameter gradients their sum.
inline void expect_gradients_accumulate(nn::Layer& both, nn::Layer& only0, nn::Layer& only1,
                                        const Tensor& x0, const Tensor& x1, const Tensor& w0,
                                        const Tensor& w1) {
  both.forward(0, x0);
  both.forward(1, x1);
  const Tensor d1 = both.backward(1, w1), d0 = both.backward(0, w0);
  only0.forward(0, x0);
  only1.forward(1, x1);
  EXPECT_TRUE(bitwise_equal(only0.backward(0, w0), d0));
  EXPECT_TRUE(bitwise_equal(only1.backward(1, w1), d1));
  const auto pb = both.parameters(), p0 = only0.parameters(), p1 = only1.parameters();
  for (std::size_t i = 0; i < pb.size(); ++i) {
    std::vector<double> sum = p0[i]->grad.to_vector<double>();
    const std::vector<double> g1 = p1[i]->grad.to_vector<double>();
    for (std::size_t k = 0; k < sum.size(); ++k) sum[k] += g1[k];
    EXPECT_LT(max_rel_error(pb[i]->grad.to_vector<double>(), sum), 1e-14) << pb[i]->name;
  }
}

/// infer(x) keeps nothing and is forward(0, x) bitwise (or, when `infer_is_identity`, a copy of
/// x); output_spec() is the spec of forward's output; a backward with `w` leaves x unwritten.
inline void expect_infer_and_output_spec_agree_with_forward(nn::Layer& layer, const Tensor& x,
                                                            const Tensor& w,
                                                            bool infer_is_identity = false) {
  const Tensor x_copy = x.clone();
  const Tensor inferred = layer.infer(x);
  EXPECT_EQ(layer.bytes_kept(), 0u);
  const Tensor y = layer.forward(0, x);
  EXPECT_EQ(layer.output_spec({x.shape(), x.dtype()}), (TensorSpec{y.shape(), y.dtype()}));
  if (infer_is_identity) {
    EXPECT_TRUE(bitwise_equal(inferred, x));
    EXPECT_FALSE(inferred.shares_storage(x));
  } else {
    EXPECT_TRUE(bitwise_equal(inferred, y));
  }
  layer.backward(0, w);
  EXPECT_TRUE(bitwise_equal(x, x_copy));  // the input is never written
}

/// What a layer's per-microbatch state may be counted on to show.
struct StateExpectations {
  std::string cls;                          // the class name in error messages
  bool keeps_after_forward = true;          // false: it may keep nothing (Dropout)
  bool keeps_after_backward_input = false;  // it keeps what its weight gradients need
  bool rejects_fp64_input = false;          // x.to(fp64) is refused (not for ids or Dropout)
};

/// The per-microbatch state machine of an fp32 layer on input x and output gradient w: order
/// errors name the class, the function and the microbatch; a call that throws changes nothing;
/// release() drops a microbatch in flight (after forward or after backward_input), which may then
/// run again; a rejected forward keeps nothing.
inline void expect_state_errors_and_release(nn::Layer& layer, const Tensor& x, const Tensor& w,
                                            const StateExpectations& expect) {
  const std::string& cls = expect.cls;
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_input(0, w); }),
            "[" + cls + "::backward_input] microbatch 0 has no saved forward");
  layer.forward(0, x);
  const std::size_t kept = layer.bytes_kept();
  if (expect.keeps_after_forward) {
    EXPECT_GT(kept, 0u);
  }
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.forward(0, x); }),
            "[" + cls + "::forward] microbatch 0 is already in flight");
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_weight(0); }),
            "[" + cls + "::backward_weight] microbatch 0 has not run backward_input");
  Shape bad = w.shape();
  bad[0] += 1;
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_input(0, Tensor::zeros(bad)); }),
            "[" + cls + "::backward_input] grad_output has shape " + shape_to_string(bad) +
                ", expected " + shape_to_string(w.shape()));
  EXPECT_EQ(error_of<InvalidArgument>(
                [&] { layer.backward_input(0, Tensor::zeros(w.shape(), DType::kFloat64)); }),
            "[" + cls + "::backward_input] grad_output has dtype fp64, expected fp32");
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_input(0, Tensor()); }),
            "[" + cls + "::backward_input] grad_output is undefined");
  EXPECT_EQ(layer.bytes_kept(), kept);  // the rejected calls changed nothing
  layer.backward_input(0, w);
  if (expect.keeps_after_backward_input) {
    EXPECT_GT(layer.bytes_kept(), 0u);
  }
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_input(0, w); }),
            "[" + cls + "::backward_input] microbatch 0 already ran backward_input");
  layer.backward_weight(0);
  EXPECT_EQ(layer.bytes_kept(), 0u);
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.backward_weight(0); }),
            "[" + cls + "::backward_weight] microbatch 0 has not run backward_input");
  layer.forward(5, x);
  layer.release(5);
  layer.release(6);  // nothing kept: no-op
  EXPECT_EQ(layer.bytes_kept(), 0u);
  layer.forward(5, x);
  layer.backward_input(5, w);
  layer.release(5);
  EXPECT_EQ(layer.bytes_kept(), 0u);
  layer.forward(5, x);
  layer.backward(5, w);
  EXPECT_EQ(layer.bytes_kept(), 0u);
  EXPECT_EQ(error_of<InvalidArgument>([&] { layer.forward(8, Tensor()); }),
            "[" + cls + "::forward] input is undefined");
  if (expect.rejects_fp64_input) {
    EXPECT_EQ(error_of<InvalidArgument>([&] { layer.forward(8, x.to(DType::kFloat64)); }),
              "[" + cls + "::forward] input has dtype fp64, expected fp32");
  }
  EXPECT_EQ(layer.bytes_kept(), 0u);
  layer.forward(8, x);
}

}  // namespace pipetrain::testing
