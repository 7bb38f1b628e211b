// bench_model: forward + backward throughput of the CPU GPT, next to OpenBLAS sgemm.
//
//   bench_model [--steps N] [--vocab V] [--shape L,C,T,B,H] [--optimizer] [--ab] [--dump DIR]
//
// For each model size, times forward + backward (no optimizer step) on random byte batches and
// reports ms a step, the training forward's share of it ("fwd ms": logits and loss, activations
// kept for backward), tokens/s and GFLOP/s, counting only matrix-product FLOPs (2*m*n*k each;
// backward counted as twice the forward). --optimizer times whole training steps instead: zero the
// gradients, forward + backward, gradient norm and finite check, clip to norm 1 and AdamW,
// as the Executor's finish_step does them. --vocab sets the vocabulary (default 256, bytes;
// 50257 is GPT-2's). --shape replaces the two built-in configs by one of L layers, C channels,
// sequence length T, batch B and H heads (bench/llmc_side_by_side.py uses it to match llm.c's
// shape). "faults/step" counts the minor page faults of the timed steps (getrusage).
// --ab then times 2N more steps alternating between the non-matrix kernels on one thread and on
// the rank's share (OpenBLAS keeps its threads), and prints both medians: the kernels' threads
// measured in one run, each step next to one of the other kind. --dump DIR (implies
// --optimizer) writes, per config, the initial weights (DIR/<config>.params, fp32, in the order
// of DIR/<config>.manifest: "name numel weight_decay dims..."), the batch (DIR/<config>.tokens,
// int32 inputs then targets) and the loss of every training step, warm-up first
// (DIR/<config>.losses): what bench/pytorch_side_by_side.py rebuilds the model from. In
// the same run it times cblas_sgemm at the shape of the model's largest product (tokens x channels
// times channels x 4*channels) so the model's GFLOP/s can be read against what the BLAS reaches on
// this machine (best of 5 products after the timed steps); then it times N more steps, each next
// to that product (best of 2 after a warm-up call), and prints the median and range of the N
// ratios ("step / sgemm in pairs"): both see the machine in the same state, which on a shared
// machine the first figure's two halves may not. These add about N steps and 3N products per
// config to the run, before --ab's 2N steps. --products then times each of the linear layers'
// matrix products on its own (the shapes and transposes the step uses: forward, input gradient,
// weight gradient of every linear layer and of the tied head; warm operands, best of 5 calls
// after a warm-up call) and prints their GFLOP/s and what they would take of a step at those
// rates: what OpenBLAS gives for this model's shapes, against the one reference shape.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "../src/core/parallel.h"
#include "model_adapter.h"
#include "pipetrain/cpu_threads.h"
#include "pipetrain/optim/optimizer.h"
#include "weight_dump.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  const char* name;
  int layers, heads, channels, seq, batch;
};

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// One matrix product C[m x n] = op(A) op(B), op a transpose where asked, and how many times a
// training step computes it (--products; the reference product is one, untransposed).
struct Product {
  const char* what;
  bool trans_a, trans_b;
  int m, n, k, per_step;
};

// A product on fixed random operands, allocated once.
class Sgemm {
 public:
  explicit Sgemm(const Product& p)
      : p_(p),
        a_(static_cast<std::size_t>(p.m) * p.k),
        b_(static_cast<std::size_t>(p.k) * p.n),
        c_(static_cast<std::size_t>(p.m) * p.n) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (float& x : a_) x = u(rng);
    for (float& x : b_) x = u(rng);
  }

  // GFLOP/s, best of `reps` calls after one warm-up call.
  double gflops(int reps) {
    double best = 1e30;
    for (int r = 0; r <= reps; ++r) {
      const auto t = Clock::now();
      cblas_sgemm(CblasRowMajor, p_.trans_a ? CblasTrans : CblasNoTrans,
                  p_.trans_b ? CblasTrans : CblasNoTrans, p_.m, p_.n, p_.k, 1.0f, a_.data(),
                  p_.trans_a ? p_.m : p_.k, b_.data(), p_.trans_b ? p_.k : p_.n, 0.0f, c_.data(),
                  p_.n);
      const double s = seconds_since(t);
      if (r > 0) best = std::min(best, s);
    }
    return 2.0 * p_.m * p_.n * p_.k / best / 1e9;
  }

 private:
  Product p_;
  std::vector<float> a_, b_, c_;
};

// The products of a step of config c at vocabulary v, as src/kernels/cpu/matmul.cpp calls them:
// forward out = in W^T, input gradient din = dout W, weight gradient dW = dout^T in. Attention's
// per-head products are not among them.
std::vector<Product> linear_products(const Config& c, int vocab) {
  const int t = c.batch * c.seq, ch = c.channels, l = c.layers;
  struct Layer {
    const char* name;
    int out, in, count;
  };
  const Layer layers[] = {{"qkv", 3 * ch, ch, l},
                          {"attention proj", ch, ch, l},
                          {"mlp fc", 4 * ch, ch, l},
                          {"mlp proj", ch, 4 * ch, l},
                          {"head (tied wte)", vocab, ch, 1}};
  std::vector<Product> out;
  for (const Layer& y : layers) {
    out.push_back({y.name, false, true, t, y.out, y.in, y.count});   // forward
    out.push_back({y.name, false, false, t, y.in, y.out, y.count});  // input gradient
    out.push_back({y.name, true, false, y.out, y.in, t, y.count});   // weight gradient
  }
  return out;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 == 1 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

// "L,C,T,B,H" -> a config named "custom"; false (and a message on stderr) unless it holds five
// positive integers with C divisible by H.
bool parse_shape(const std::string& text, Config& out) {
  int v[5];
  char tail = 0;
  if (std::sscanf(text.c_str(), "%d,%d,%d,%d,%d%c", &v[0], &v[1], &v[2], &v[3], &v[4], &tail) !=
          5 ||
      *std::min_element(v, v + 5) <= 0 || v[1] % v[4] != 0) {
    std::fprintf(stderr,
                 "bench_model: --shape '%s' must be L,C,T,B,H: five positive integers (layers, "
                 "channels, sequence length, batch, heads) with C divisible by H\n",
                 text.c_str());
    return false;
  }
  out = Config{"custom", v[0], v[4], v[1], v[2], v[3]};
  return true;
}

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 5;
  int vocab = 256;
  bool with_optimizer = false;
  bool ab = false;
  bool products = false;
  std::string dump;
  std::vector<Config> configs = {
      {"small", 2, 4, 64, 64, 8},
      {"medium", 4, 8, 256, 128, 8},
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--steps" && i + 1 < argc) {
      steps = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--vocab" && i + 1 < argc) {
      vocab = std::max(2, std::atoi(argv[++i]));
    } else if (arg == "--shape" && i + 1 < argc) {
      configs.resize(1);
      if (!parse_shape(argv[++i], configs[0])) return 2;
    } else if (arg == "--optimizer") {
      with_optimizer = true;
    } else if (arg == "--ab") {
      ab = true;
    } else if (arg == "--products") {
      products = true;
    } else if (arg == "--dump" && i + 1 < argc) {
      dump = argv[++i];
      with_optimizer = true;
    } else {
      std::fprintf(
          stderr,
          "usage: bench_model [--steps N] [--vocab V] [--shape L,C,T,B,H] [--optimizer] [--ab] "
          "[--products] [--dump DIR]\n");
      return 2;
    }
  }
  // One rank on this machine: its cores, or PIPETRAIN_CPU_THREADS, as every pipetrain program
  // counts them (cpu_threads.h); OPENBLAS_NUM_THREADS, when set, stays OpenBLAS's.
  try {
    pipetrain::divide_cpu_threads(1);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_model: %s\n", e.what());
    return 2;
  }
  std::printf(
      "OpenBLAS %s, %d threads, the kernels' threads %s; %d timed %s steps per config, "
      "vocabulary %d\n\n",
      openblas_get_config(), openblas_get_num_threads(),
      pipetrain::detail::parallel_uses_openmp() ? "in OpenBLAS's OpenMP pool" : "on their own team",
      steps, with_optimizer ? "training (forward+backward+norm+AdamW)" : "forward+backward", vocab);
  std::printf("%-7s %6s %5s %8s %10s %12s %10s %8s %12s %22s %10s %12s\n", "config", "layers",
              "heads", "channels", "seq x B", "params", "ms/step", "fwd ms", "tokens/s",
              "model GFLOP/s", "sgemm GFLOP/s", "faults/step");
  std::vector<std::string> ab_lines, paired_lines, product_lines;
  for (const Config& c : configs) {
    bench_gpt::ModelShape shape;
    shape.layers = c.layers;
    shape.heads = c.heads;
    shape.channels = c.channels;
    shape.max_seq_len = c.seq;
    shape.seed = 1;
    shape.vocab_size = vocab;
    auto model = bench_gpt::make_gpt(shape);
    std::int64_t n_params = 0;
    for (const auto* p : model->parameters()) n_params += p->value.numel();

    pipetrain::data::Batch batch;
    batch.batch_size = c.batch;
    batch.seq_len = c.seq;
    std::mt19937 rng(2);
    for (int i = 0; i < c.batch * c.seq; ++i) {
      batch.inputs.push_back(static_cast<int>(rng() % vocab));
      batch.targets.push_back(static_cast<int>(rng() % vocab));
    }
    pipetrain::optim::AdamW adamw(model->parameters());
    std::vector<double> losses;
    if (!dump.empty()) {
      const std::string base = dump + "/" + c.name;
      bench::write_weights(base, model->parameters());
      std::ofstream tokens(base + ".tokens", std::ios::binary);
      for (const auto* part : {&batch.inputs, &batch.targets}) {
        for (const auto tok : *part) {
          const auto t32 = static_cast<std::int32_t>(tok);
          tokens.write(reinterpret_cast<const char*>(&t32), sizeof t32);
        }
      }
    }
    double forward_seconds = 0.0;
    auto step = [&] {
      if (with_optimizer) adamw.zero_grad();
      const auto f = Clock::now();
      const double loss = model->forward(batch);
      forward_seconds += seconds_since(f);
      model->backward(1.0);
      if (!with_optimizer) return;
      losses.push_back(loss);
      const double sumsq = pipetrain::optim::local_grad_sum_of_squares(adamw.parameters());
      if (!std::isfinite(sumsq)) return;  // the finite check: skip the update
      adamw.step(1e-4, pipetrain::optim::clip_coefficient(std::sqrt(sumsq), 1.0));
    };
    step();  // warm-up: first-touch allocations
    const long faults = minor_faults();
    forward_seconds = 0.0;
    const auto t = Clock::now();
    for (int s = 0; s < steps; ++s) step();
    const double per_step = seconds_since(t) / steps;
    const double forward_per_step = forward_seconds / steps;
    const double faults_per_step = static_cast<double>(minor_faults() - faults) / steps;
    const std::int64_t tokens = static_cast<std::int64_t>(c.batch) * c.seq;
    const double gflops = model->train_flops(tokens, c.seq) / per_step / 1e9;
    Sgemm reference(Product{"reference", false, false, static_cast<int>(tokens),
                            4 * c.channels, c.channels, 1});
    const double blas = reference.gflops(5);
    if (!dump.empty()) {
      std::ofstream out(dump + "/" + c.name + ".losses");
      out.precision(17);
      for (double l : losses) out << l << '\n';
      std::ofstream speed(dump + "/" + c.name + ".speed");
      speed << tokens / per_step << ' ' << pipetrain::detail::parallel_threads() << '\n';
    }
    // The same comparison in pairs: each step right next to the reference product (best of 2
    // after a warm-up call), so that both see the machine in the same state; on a shared
    // machine the single figure above can catch the two in different ones.
    std::vector<double> ratios;
    for (int s = 0; s < steps; ++s) {
      const auto t0 = Clock::now();
      step();
      const double step_gflops = model->train_flops(tokens, c.seq) / seconds_since(t0) / 1e9;
      ratios.push_back(step_gflops / reference.gflops(2));
    }
    std::sort(ratios.begin(), ratios.end());
    char paired_line[160];
    std::snprintf(paired_line, sizeof paired_line,
                  "step / sgemm in pairs, %s: median %.0f%%, range %.0f-%.0f%% (%d pairs)", c.name,
                  100.0 * median(ratios), 100.0 * ratios.front(), 100.0 * ratios.back(), steps);
    paired_lines.push_back(paired_line);
    if (ab) {
      std::vector<double> one, share;
      for (int s = 0; s < 2 * steps; ++s) {
        pipetrain::detail::set_parallel_threads_for_testing(s % 2 == 0 ? 1 : 0);
        const auto t0 = Clock::now();
        step();
        (s % 2 == 0 ? one : share).push_back(seconds_since(t0) * 1e3);
      }
      pipetrain::detail::set_parallel_threads_for_testing(0);
      std::sort(one.begin(), one.end());
      std::sort(share.begin(), share.end());
      char line[160];
      std::snprintf(line, sizeof line, "%-7s %16.1f %16.1f %10.3f", c.name, one[one.size() / 2],
                    share[share.size() / 2], share[share.size() / 2] / one[one.size() / 2]);
      ab_lines.push_back(line);
    }
    if (products) {
      char line[200];
      std::snprintf(line, sizeof line, "\n%s: the linear layers' products alone (step %.1f ms, "
                    "sgemm reference %.0f GFLOP/s)\n%-16s %-8s %18s %6s %9s %10s %10s", c.name,
                    per_step * 1e3, blas, "layer", "product", "m x n x k", "trans", "per step",
                    "GFLOP/s", "ms a step");
      product_lines.push_back(line);
      double flops = 0.0, ms = 0.0;
      const char* kinds[] = {"forward", "input", "weight"};
      int index = 0;
      for (const Product& p : linear_products(c, vocab)) {
        const double f = 2.0 * p.m * p.n * p.k * p.per_step;
        const double g = Sgemm(p).gflops(5);
        const double step_ms = f / g / 1e6;
        char dims[40];
        std::snprintf(dims, sizeof dims, "%dx%dx%d", p.m, p.n, p.k);
        std::snprintf(line, sizeof line, "%-16s %-8s %18s %6s %9d %10.0f %10.2f", p.what,
                      kinds[index++ % 3], dims, p.trans_a ? "T,N" : (p.trans_b ? "N,T" : "N,N"),
                      p.per_step, g, step_ms);
        product_lines.push_back(line);
        flops += f;
        ms += step_ms;
      }
      std::snprintf(line, sizeof line,
                    "all: %.2f GFLOP a step at %.0f GFLOP/s, %.1f ms: %.0f%% of the step's time "
                    "(%.0f%% of its FLOPs, attention's per-head products counted in full)",
                    flops / 1e9, flops / ms / 1e6, ms, 100.0 * ms / (per_step * 1e3),
                    100.0 * flops / model->train_flops(tokens, c.seq));
      product_lines.push_back(line);
    }
    char shape_text[32], blas_shape[48];
    std::snprintf(shape_text, sizeof shape_text, "%dx%d", c.seq, c.batch);
    std::snprintf(blas_shape, sizeof blas_shape, "%.2f (%.0f%% of sgemm)", gflops,
                  100.0 * gflops / blas);
    std::printf(
        "%-7s %6d %5d %8d %10s %12lld %10.1f %8.1f %12.0f %22s %10.2f %12.0f  [sgemm %lldx%dx%d]\n",
        c.name, c.layers, c.heads, c.channels, shape_text, static_cast<long long>(n_params),
        per_step * 1e3, forward_per_step * 1e3, tokens / per_step, blas_shape, blas,
        faults_per_step, static_cast<long long>(tokens), 4 * c.channels, c.channels);
  }
  std::printf("\n");
  for (const std::string& l : paired_lines) std::printf("%s\n", l.c_str());
  for (const std::string& l : product_lines) std::printf("%s\n", l.c_str());
  if (ab) {
    std::printf("\nnon-matrix kernels on 1 thread vs on %d (alternate steps, median ms)\n",
                pipetrain::detail::parallel_threads());
    std::printf("%-7s %16s %16s %10s\n", "config", "1 thread", "share", "share/1");
    for (const std::string& l : ab_lines) std::printf("%s\n", l.c_str());
  }
  return 0;
}
