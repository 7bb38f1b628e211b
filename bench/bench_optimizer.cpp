// bench_optimizer: the end of a training step on the CPU, before and after issue 12.
//
//   bench_optimizer [params_millions] [repeats]     (defaults 3.26, the medium GPT, and 7)
//
// "old" is the pre-issue-12 sequence, kept here as the baseline: four single-threaded passes
// over the gradients (sum of squares, finite check, scale by the clip coefficient, AdamW).
// "new" is the library's: local_grad_sum_of_squares() (threaded, also the finite check) and
// AdamW::step(lr, clip) (clipping fused with the update, threaded), on 1 thread and on the
// rank's share (cpu_blas_threads()). Prints ms per step, median of `repeats`, old and new
// alternating.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "../src/core/parallel.h"
#include "pipetrain/cpu_threads.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/tensor.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace optim = pipetrain::optim;

// The old passes, as they were.
double old_sum_of_squares(const std::vector<pipetrain::nn::Parameter*>& ps) {
  double total = 0;
  for (auto* p : ps) {
    double sum = 0;
    const float* g = p->grad.data<float>();
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) sum += double(g[i]) * double(g[i]);
    total += sum;
  }
  return total;
}
bool old_finite(const std::vector<pipetrain::nn::Parameter*>& ps) {
  for (auto* p : ps) {
    const float* g = p->grad.data<float>();
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) {
      if (!std::isfinite(g[i])) return false;
    }
  }
  return true;
}
void old_scale(const std::vector<pipetrain::nn::Parameter*>& ps, float s) {
  for (auto* p : ps) {
    float* g = p->grad.data<float>();
    for (std::int64_t i = 0; i < p->grad.numel(); ++i) g[i] *= s;
  }
}
void old_adamw(const std::vector<pipetrain::nn::Parameter*>& ps, std::vector<std::vector<float>>& m,
               std::vector<std::vector<float>>& v, std::int64_t step) {
  // adamw_update() before issue 12, compiled here as it was then (errno-setting std::sqrt, so
  // GCC does not vectorise the loop).
  const optim::AdamWConfig c;
  const auto b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
  const auto one_minus_b1 = static_cast<float>(1.0 - c.beta1);
  const auto one_minus_b2 = static_cast<float>(1.0 - c.beta2);
  const auto eps = static_cast<float>(c.eps), lr_f = 1e-4f;
  const auto correction1 = static_cast<float>(1.0 - std::pow(c.beta1, double(step)));
  const auto correction2 = static_cast<float>(1.0 - std::pow(c.beta2, double(step)));
  for (std::size_t k = 0; k < ps.size(); ++k) {
    float* value = ps[k]->value.data<float>();
    const float* grad = ps[k]->grad.data<float>();
    const auto wd = static_cast<float>(ps[k]->weight_decay ? c.weight_decay : 0.0);
    for (std::int64_t i = 0; i < ps[k]->value.numel(); ++i) {
      const float g = grad[i];
      const float mi = b1 * m[k][i] + one_minus_b1 * g;
      const float vi = b2 * v[k][i] + one_minus_b2 * g * g;
      m[k][i] = mi;
      v[k][i] = vi;
      const float m_hat = mi / correction1;
      const float v_hat = vi / correction2;
      value[i] -= lr_f * (m_hat / (std::sqrt(v_hat) + eps) + wd * value[i]);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const double millions = argc > 1 ? std::atof(argv[1]) : 3.26;
  const int repeats = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
  // Parameters shaped like a GPT's: a few large matrices and many small vectors.
  const auto total = static_cast<std::int64_t>(millions * 1e6);
  std::vector<std::int64_t> sizes;
  for (std::int64_t left = total; left > 0;) {
    const std::int64_t n = std::min<std::int64_t>(left, sizes.size() % 4 == 3 ? 256 : 196608);
    sizes.push_back(n);
    left -= n;
  }
  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::unique_ptr<pipetrain::nn::Parameter>> owned;
  std::vector<pipetrain::nn::Parameter*> ps;
  for (std::int64_t n : sizes) {
    auto p = std::make_unique<pipetrain::nn::Parameter>();
    p->value = pipetrain::Tensor::empty({n}, pipetrain::DType::kFloat32);
    p->grad = pipetrain::Tensor::empty({n}, pipetrain::DType::kFloat32);
    for (std::int64_t i = 0; i < n; ++i) p->value.data<float>()[i] = normal(rng);
    p->weight_decay = n > 256;
    ps.push_back(p.get());
    owned.push_back(std::move(p));
  }
  auto fill_grads = [&] {
    for (auto* p : ps) {
      float* g = p->grad.data<float>();
      for (std::int64_t i = 0; i < p->grad.numel(); ++i) g[i] = 1e-3f * float(i % 97);
    }
  };
  std::vector<std::vector<float>> m, v;
  for (auto* p : ps) {
    m.emplace_back(p->value.numel());
    v.emplace_back(p->value.numel());
  }
  optim::AdamW adamw(ps);
  std::int64_t old_step = 0;
  const int share = pipetrain::cpu_blas_threads();
  auto time_ms = [&](auto&& fn) {
    fill_grads();  // not timed: every variant starts from the same gradients
    const auto t = Clock::now();
    fn();
    return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
  };
  auto old_fn = [&] {
    const double sumsq = old_sum_of_squares(ps);
    if (!old_finite(ps)) return;
    const double clip = optim::clip_coefficient(std::sqrt(sumsq), 1.0);
    if (clip < 1.0) old_scale(ps, float(clip));
    old_adamw(ps, m, v, ++old_step);
  };
  auto new_fn = [&] {
    const double sumsq = optim::local_grad_sum_of_squares(ps);
    if (!std::isfinite(sumsq)) return;
    adamw.step(1e-4, optim::clip_coefficient(std::sqrt(sumsq), 1.0));
  };
  std::vector<double> t_old, t_new1, t_new;
  for (int r = 0; r <= repeats; ++r) {
    const double a = time_ms(old_fn);
    pipetrain::detail::set_parallel_threads_for_testing(1);
    const double b = time_ms(new_fn);
    pipetrain::detail::set_parallel_threads_for_testing(0);
    const double c = time_ms(new_fn);
    if (r == 0) continue;  // warm-up
    t_old.push_back(a);
    t_new1.push_back(b);
    t_new.push_back(c);
  }
  auto median = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  std::printf(
      "grad norm + finite check + clip + AdamW over %.2f M fp32 parameters (%zu tensors), "
      "ms per step, median of %d\n\n",
      double(total) / 1e6, ps.size(), repeats);
  std::printf("%12s %14s %14s %14s %10s\n", "old (4 passes)", "new, 1 thread", "new, threads",
              "threads used", "old/new");
  std::printf("%14.2f %14.2f %14.2f %14d %10.2f\n", median(t_old), median(t_new1), median(t_new),
              share, median(t_old) / median(t_new));
  return 0;
}
