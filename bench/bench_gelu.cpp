// bench_gelu: ns per element of the fp32 GELU forward and backward, the old scalar std::tanh loop
// (kept here as the baseline) against the library's vectorised one. Old and new runs alternate
// within each repeat, and the table shows the medians, so the ratio survives a busy machine.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "pipetrain/kernels/cpu.h"

namespace {

using Clock = std::chrono::steady_clock;

// The loops of src/kernels/cpu/gelu.cpp before issue 12 (scalar std::tanh).
__attribute__((noinline)) void old_gelu_forward(float* out, const float* inp, std::int64_t n) {
  const float s = 0.7978845608028654f, a = 0.044715f;
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    out[i] = 0.5f * x * (1.0f + std::tanh(s * (x + a * x * x * x)));
  }
}

__attribute__((noinline)) void old_gelu_backward(float* dinp, const float* inp, const float* dout,
                                                 std::int64_t n) {
  const float s = 0.7978845608028654f, a = 0.044715f;
  for (std::int64_t i = 0; i < n; ++i) {
    const float x = inp[i];
    const float u = s * (x + a * x * x * x);
    const float th = std::tanh(u);
    const float sech2 = 1.0f - th * th;
    const float grad = 0.5f * (1.0f + th) + 0.5f * x * sech2 * s * (1.0f + 3.0f * a * x * x);
    dinp[i] = grad * dout[i];
  }
}

template <typename F>
double ns_per_element(F&& f, std::int64_t n) {
  const auto t = Clock::now();
  f();
  return std::chrono::duration<double, std::nano>(Clock::now() - t).count() / static_cast<double>(n);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 7;
  if (argc > 1) repeats = std::max(1, std::atoi(argv[1]));
  if (argc > 2 || (argc == 2 && std::string(argv[1]).starts_with("-"))) {
    std::fprintf(stderr, "usage: bench_gelu [repeats (default 7)]\n");
    return 2;
  }
  namespace k = pipetrain::kernels::cpu;
  std::printf("fp32 GELU, ns per element (median of %d; old and new alternate), inputs "
              "N(0, 2^2), backward out of place\n\n",
              repeats);
  std::printf("%10s %10s %10s %10s %8s\n", "n", "pass", "old ns", "new ns", "old/new");
  for (const std::int64_t n : {std::int64_t{1} << 20, std::int64_t{1} << 24}) {
    std::vector<float> x(n), dout(n), out(n);
    std::mt19937 rng(1);
    std::normal_distribution<float> dist(0.0f, 2.0f);
    for (auto& v : x) v = dist(rng);
    for (auto& v : dout) v = dist(rng);
    std::vector<double> of, nf, ob, nb;
    auto old_f = [&] { old_gelu_forward(out.data(), x.data(), n); };
    auto new_f = [&] { k::gelu_forward<float>(out.data(), x.data(), n); };
    auto old_b = [&] { old_gelu_backward(out.data(), x.data(), dout.data(), n); };
    auto new_b = [&] { k::gelu_backward<float>(out.data(), x.data(), dout.data(), n); };
    old_f(), new_f(), old_b(), new_b();  // warm-up: first touch
    for (int r = 0; r < repeats; ++r) {
      of.push_back(ns_per_element(old_f, n));
      nf.push_back(ns_per_element(new_f, n));
      ob.push_back(ns_per_element(old_b, n));
      nb.push_back(ns_per_element(new_b, n));
    }
    const double mof = median(of), mnf = median(nf), mob = median(ob), mnb = median(nb);
    std::printf("%10lld %10s %10.2f %10.2f %8.1f\n", static_cast<long long>(n), "forward", mof,
                mnf, mof / mnf);
    std::printf("%10lld %10s %10.2f %10.2f %8.1f\n", static_cast<long long>(n), "backward", mob,
                mnb, mob / mnb);
  }
  return 0;
}
