// bench_split_backward: what splitting the backward into I and W costs on the CPU.
//
//   ./build/bench/bench_split_backward            # medium: 4 blocks, C=256, T=128, B=8
//   ./build/bench/bench_split_backward 2 64 64 8  # blocks C T B
//
// Times, for one middle stage (transformer blocks only) and one microbatch, the forward F, the
// full backward B, and the split backward I then W, each the median of 7 runs. Zero-bubble
// schedules assume I + W costs what B costs; the last column says how far that holds here.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "pipetrain/nn/gpt.h"
#include "pipetrain/tensor.h"

namespace {

using Clock = std::chrono::steady_clock;

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

pipetrain::Tensor random_tensor(const pipetrain::Shape& shape, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> values(static_cast<std::size_t>(pipetrain::shape_numel(shape)));
  for (float& x : values) x = normal(rng);
  return pipetrain::Tensor::from_vector(values, shape);
}

}  // namespace

static int run(int argc, char** argv) {
  pipetrain::nn::GptConfig config;
  config.vocab_size = 256;
  config.num_layers = 4;
  config.channels = 256;
  std::int64_t T = 128, B = 8;
  CLI::App app{"Times B against I + W of a stage of GPT blocks (the split backward)"};
  app.add_option("layers", config.num_layers, "transformer blocks")->check(CLI::Range(1, 1024));
  app.add_option("channels", config.channels, "channels C")->check(CLI::Range(8, 65536));
  app.add_option("seq", T, "sequence length T")->check(CLI::Range(1, 65536));
  app.add_option("batch", B, "batch B")->check(CLI::Range(1, 65536));
  CLI11_PARSE(app, argc, argv);
  config.num_heads = config.channels >= 128 ? 8 : 4;
  config.context_length = T;
  config.tied_embeddings = false;
  // Layers 1..L are the blocks: a stage in the middle of a pipeline.
  auto stage = pipetrain::nn::make_stage(config, 1, config.num_layers);
  std::mt19937_64 rng(7);
  const pipetrain::Shape shape{B, T, config.channels};

  std::vector<double> f, b, i, w;
  auto seconds = [](Clock::time_point t0) {
    return std::chrono::duration<double>(Clock::now() - t0).count();
  };
  for (int rep = 0; rep < 8; ++rep) {
    const pipetrain::Tensor x = random_tensor(shape, rng);
    const pipetrain::Tensor dy = random_tensor(shape, rng);
    auto t0 = Clock::now();
    stage->forward(2 * rep, {x});
    const double tf = seconds(t0);
    t0 = Clock::now();
    stage->backward(2 * rep, {dy});
    const double tb = seconds(t0);
    stage->forward(2 * rep + 1, {x});
    t0 = Clock::now();
    stage->backward_input(2 * rep + 1, {dy});
    const double ti = seconds(t0);
    t0 = Clock::now();
    stage->backward_weight(2 * rep + 1);
    const double tw = seconds(t0);
    if (rep == 0) continue;  // warm-up
    f.push_back(tf);
    b.push_back(tb);
    i.push_back(ti);
    w.push_back(tw);
  }
  const double mf = median(f) * 1e3, mb = median(b) * 1e3, mi = median(i) * 1e3,
               mw = median(w) * 1e3;
  std::printf("stage: %d blocks, C=%d, T=%lld, B=%lld (median of %zu runs, ms)\n\n",
              config.num_layers, static_cast<int>(config.channels), static_cast<long long>(T),
              static_cast<long long>(B), f.size());
  std::printf("%8s %8s %8s %8s %8s %10s %10s\n", "F", "B", "I", "W", "I+W", "(I+W)/B", "B/F");
  std::printf("%8.2f %8.2f %8.2f %8.2f %8.2f %10.3f %10.3f\n", mf, mb, mi, mw, mi + mw,
              (mi + mw) / mb, mb / mf);
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_split_backward: %s\n", e.what());
    return 1;
  }
}
