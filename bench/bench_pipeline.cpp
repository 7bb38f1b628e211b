// bench_pipeline: the GPT trained through a Pipeline with one schedule, its initial weights,
// batches, losses and speed written for bench/torch_pipelining_side_by_side.py.
//
//   mpirun -n 2 bench_pipeline --schedule 1f1b|interleaved-1f1b|zb-v --dump DIR
//          [--steps N] [--layers L] [--heads H] [--channels C] [--seq T] [--batch B]
//          [--microbatches M] [--vocab V] [--lr LR] [--transport mpi|inprocess]
//
// P = 2 pipeline ranks (D = 1). The GPT (nn::gpt_spec, tied wte) is cut into the schedule's
// stages at explicit layer counts (PartitionOptions::kCounts): blocks spread as evenly as
// possible, earlier stages first, the embedding joining stage 0 and the head the last stage
// (2 stages of 4 blocks: [emb h.0 h.1] [h.2 h.3 head]; 4 stages: [emb h.0] [h.1] [h.2]
// [h.3 head]), so the PyTorch side can cut identically from the parameter names alone.
// Training: AdamW (pipetrain's defaults: betas 0.9/0.95, eps 1e-8, weight decay 0.1 on
// matrices), constant --lr, gradient norm clipped to 1, N + 1 steps of which the first is a
// warm-up. Every step draws a fresh batch of B rows of T + 1 tokens x_t = (s + k t) mod V with
// s and k drawn per row (a pattern the model can learn in context, so the loss moves).
//
// Writes into DIR: stage<s>.manifest ("name numel weight_decay dims...") and stage<s>.params
// (fp32 initial values in that order) for every stage, by the rank holding it (the tied wte
// appears in stage 0 and in the last stage); on rank 0 placement (line r: the stages rank r
// holds, in increasing order), tokens (int32; per step the inputs
// [B, T] then the targets [B, T]), losses (one per step, warm-up first) and speed ("median
// mean threads": tokens/s of the median timed step and over all timed steps, each step's wall
// time on rank 0 from the call of train_step, whose first act is a barrier, to its return).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "pipetrain/cpu_threads.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/pipeline.h"
#include "pipetrain/schedule/generators.h"
#include "weight_dump.h"

namespace {

struct Options {
  std::string schedule = "1f1b";
  std::string transport = "mpi";
  std::string dump;
  int steps = 20;
  int layers = 4, heads = 4, channels = 128, seq = 64, batch = 8, microbatches = 4;
  int vocab = 256;
  double lr = 1e-3;
};

// Layers per stage: `blocks` spread over `stages`, earlier stages first, plus the embedding in
// the first and the head in the last.
std::vector<int> layer_counts(int blocks, int stages) {
  std::vector<int> counts(stages, blocks / stages);
  for (int s = 0; s < blocks % stages; ++s) ++counts[s];
  counts.front() += 1;
  counts.back() += 1;
  return counts;
}

// Step `step`'s batch: inputs then targets, each [batch, seq].
std::pair<std::vector<std::int32_t>, std::vector<std::int32_t>> make_batch(const Options& o,
                                                                           int step) {
  std::mt19937 rng(1000u + static_cast<unsigned>(step));
  std::vector<std::int32_t> in, tg;
  for (int r = 0; r < o.batch; ++r) {
    const int start = static_cast<int>(rng() % o.vocab);
    const int stride = 1 + static_cast<int>(rng() % 7);
    for (int t = 0; t < o.seq; ++t) {
      in.push_back((start + stride * t) % o.vocab);
      tg.push_back((start + stride * (t + 1)) % o.vocab);
    }
  }
  return {in, tg};
}

void run(const Options& o, pipetrain::Transport& transport) {
  pipetrain::nn::GptConfig config;
  config.vocab_size = o.vocab;
  config.context_length = o.seq;
  config.num_layers = o.layers;
  config.num_heads = o.heads;
  config.channels = o.channels;
  config.seed = 1;
  const int v = o.schedule == "interleaved-1f1b" ? 2 : 1;
  const pipetrain::Schedule shape = pipetrain::make_schedule(o.schedule, 2, o.microbatches, v);
  pipetrain::PipelineOptions options;
  options.schedule = o.schedule;
  options.pipeline = 2;
  options.microbatches = o.microbatches;
  options.stages_per_rank = v;
  options.partition.method = pipetrain::PartitionOptions::Method::kCounts;
  options.partition.layers_per_stage = layer_counts(o.layers, shape.num_stages());
  options.executor.max_grad_norm = 1.0;
  options.model_id = "bench_pipeline";
  pipetrain::Pipeline pipe(pipetrain::nn::gpt_spec(config),
                           std::make_unique<pipetrain::nn::CrossEntropyLoss>(), options, transport);
  const int rank = transport.rank();
  const std::vector<int> mine = pipe.schedule().stages_of_rank(rank);
  for (std::size_t i = 0; i < mine.size(); ++i) {
    bench::write_weights(o.dump + "/stage" + std::to_string(mine[i]),
                           pipe.stages()[i]->parameters());
  }
  std::ofstream tokens;
  if (rank == 0) {
    tokens.open(o.dump + "/tokens", std::ios::binary);
    std::ofstream placement(o.dump + "/placement");
    for (int r = 0; r < 2; ++r) {
      for (int s : pipe.schedule().stages_of_rank(r)) placement << s << ' ';
      placement << '\n';
    }
  }
  std::vector<double> losses, seconds;
  for (int step = 0; step <= o.steps; ++step) {
    auto [in, tg] = make_batch(o, step);
    if (rank == 0) {
      for (const auto* part : {&in, &tg}) {
        tokens.write(reinterpret_cast<const char*>(part->data()),
                     static_cast<std::streamsize>(part->size() * sizeof(std::int32_t)));
      }
    }
    const pipetrain::Tensor inputs = pipetrain::Tensor::from_vector(in, {o.batch, o.seq});
    const pipetrain::Tensor targets = pipetrain::Tensor::from_vector(tg, {o.batch, o.seq});
    const auto start = std::chrono::steady_clock::now();
    const pipetrain::StepResult r = pipe.train_step({inputs}, {targets}, o.lr);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    losses.push_back(r.loss);
  }
  if (rank != 0) return;
  std::ofstream out(o.dump + "/losses");
  out.precision(17);
  for (double l : losses) out << l << '\n';
  // The median timed step: a step that the machine's other load stalls moves it little.
  std::vector<double> timed(seconds.begin() + 1, seconds.end());
  std::sort(timed.begin(), timed.end());
  const double median = timed[(timed.size() - 1) / 2];  // the lower median, as Python's median_low
  double total = 0;
  for (double t : timed) total += t;
  std::ofstream speed(o.dump + "/speed");
  speed << static_cast<double>(o.batch) * o.seq / median << ' '
        << static_cast<double>(o.steps) * o.batch * o.seq / total << ' '
        << pipetrain::cpu_blas_threads() << '\n';
  std::printf("%s: %d steps, median %.1f ms/step, loss %.6f -> %.6f\n", o.schedule.c_str(), o.steps,
              median * 1e3, losses.front(), losses.back());
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"GPT through a 2-rank Pipeline; dumps weights, batches, losses and speed"};
  app.add_option("--schedule", o.schedule, "1f1b, interleaved-1f1b (2 stages per rank) or zb-v")
      ->capture_default_str();
  app.add_option("--transport", o.transport, "mpi (mpirun -n 2) or inprocess")
      ->capture_default_str();
  app.add_option("--dump", o.dump, "folder to write into (must exist)")->required();
  app.add_option("--steps", o.steps, "timed steps (one warm-up step more)")->capture_default_str();
  app.add_option("--layers", o.layers, "transformer blocks")->capture_default_str();
  app.add_option("--heads", o.heads, "attention heads")->capture_default_str();
  app.add_option("--channels", o.channels, "embedding width")->capture_default_str();
  app.add_option("--seq", o.seq, "sequence length")->capture_default_str();
  app.add_option("--batch", o.batch, "rows per step")->capture_default_str();
  app.add_option("--microbatches", o.microbatches, "microbatches per step")->capture_default_str();
  app.add_option("--vocab", o.vocab, "vocabulary size")->capture_default_str();
  app.add_option("--lr", o.lr, "constant learning rate")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    PIPETRAIN_CHECK_ARG(std::filesystem::is_directory(o.dump), "bench_pipeline", "--dump='", o.dump,
                        "' is not a folder");
    pipetrain::launch(2, o.transport, [&](pipetrain::Transport& t) { run(o, t); });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
