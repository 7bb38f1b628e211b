// train_pipeline: trains the byte-level GPT of train_gpt with pipeline (and data) parallelism.
//
//   train_pipeline --schedule 1f1b --pipeline 2 --microbatches 4          # P threads, in-process
//   train_pipeline --schedule zb-v --pipeline 2 --data-parallel 2         # 4 threads
//   mpirun -n 2 train_pipeline --transport mpi --schedule 1f1b --pipeline 2
//
// Same data as train_gpt (the King James Bible, or --data FILE). Rank 0 prints a progress line
// every --log-every steps; at the end rank 0 writes <out>/trace.json: the measured timeline of
// the last step for every pipeline rank beside the simulator's prediction from the measured
// per-stage costs, and logs the measured and predicted bubble. docs/runtime.md explains it.
//
// Every configuration error is reported before any transfer: unknown schedule, too few
// microbatches for the schedule, more stages than layers, a batch that does not split, a world
// size that is not P x D, ranks started with different options. Values are checked before
// training (validate_options): finite rates, ranges, --data a readable file large enough for
// --seq, a model that fits in memory, a writable --save-dir, a --resume that exists.
//
// Checkpoints (--save-dir) are committed step folders with a manifest (runtime/checkpoint.h);
// --resume takes a step folder, a save directory (its newest complete step) or "latest" (the
// newest complete step of --save-dir).
#include <CLI/CLI.hpp>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../train_gpt/checks.h"
#include "../train_gpt/corpus.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/comm/mpi.h"
#include "pipetrain/comm/transport.h"
#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/data/tokens.h"
#include "pipetrain/error.h"
#include "pipetrain/optim/lr_schedule.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/runtime/trace.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/io.h"
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/schedule.h"

namespace fs = std::filesystem;
namespace data = pipetrain::data;
namespace optim = pipetrain::optim;
namespace rt = pipetrain::runtime;
using pipetrain::Schedule;

namespace {

struct Options {
  std::string schedule = "1f1b";
  int pipeline = 2;
  int data_parallel = 1;
  int microbatches = 4;
  int stages_per_rank = 1;
  std::string transport = "inprocess";
  std::string data;
  std::string cache = "build/data/kjv.txt";
  std::string out = "build/train_pipeline";
  int steps = 100;
  int batch = 16;
  int seq = 64;
  int layers = 4;
  int heads = 4;
  int channels = 64;
  double lr = 2e-3;
  int warmup = 10;
  double grad_clip = 1.0;
  std::uint64_t seed = 1337;
  int log_every = 10;
  int timeout_ms = 60000;
  int fail_rank = -1;  // fault injection for tests: this rank throws ...
  int fail_step = -1;  // ... at the start of this step
  bool checkpointing = false;
  std::string save_dir;
  int save_every = 0;
  std::string resume_dir;

  // Canonical text of what a resumed run must share with the run that saved: the model, the
  // optimizer and its schedule, the data and its order. The pipeline layout (P, D, M, schedule,
  // chunks per rank, activation checkpointing) is left out: it may change across a resume.
  std::string model_canonical() const {
    std::ostringstream s;
    s << "optimizer=adamw data=" << data << " steps=" << steps << " batch=" << batch
      << " seq=" << seq << " layers=" << layers << " heads=" << heads << " channels=" << channels
      << " lr=" << lr << " warmup=" << warmup << " clip=" << grad_clip << " seed=" << seed;
    return s.str();
  }
  // Canonical text of everything that must agree across ranks.
  std::string canonical() const {
    std::ostringstream s;
    s << "schedule=" << schedule << " P=" << pipeline << " D=" << data_parallel
      << " M=" << microbatches << " v=" << stages_per_rank << " ckpt=" << checkpointing << " "
      << model_canonical();
    return s.str();
  }
};

// Everything derived from the options, checked before any transport exists.
struct Plan {
  Schedule schedule;
  pipetrain::nn::GptConfig config;
  rt::Partition partition;
  int micro_rows = 0;
};

// The most ranks (threads in-process, processes under MPI) one run may have.
constexpr std::int64_t kMaxWorldSize = 4096;

// Everything that can be checked before a transport or a model exists. Resolves
// --resume (a step folder, a save directory or "latest") to a committed step folder.
void validate_options(Options& opt) {
  constexpr const char* kFn = "train_pipeline";
  PIPETRAIN_CHECK_ARG(opt.transport == "inprocess" || opt.transport == "mpi", kFn,
                      "--transport=", opt.transport, " must be inprocess or mpi");
  // mpirun -n 2 without --transport mpi would train the whole job in each process.
  const pipetrain::LauncherWorld launcher = pipetrain::mpi_launcher_world();
  PIPETRAIN_CHECK_ARG(opt.transport == "mpi" || launcher.size == 1, kFn, "this process is one of ",
                      launcher.size, " started by an MPI launcher (", launcher.variable, "=",
                      launcher.size, ") but --transport ", opt.transport,
                      " runs every rank in one process: use --transport mpi");
  PIPETRAIN_CHECK_ARG(opt.steps >= 1, kFn, "--steps=", opt.steps, " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.log_every >= 1, kFn, "--log-every=", opt.log_every, " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.timeout_ms >= 1, kFn, "--timeout-ms=", opt.timeout_ms,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.pipeline >= 1 && opt.data_parallel >= 1, kFn, "--pipeline=",
                      opt.pipeline, " and --data-parallel=", opt.data_parallel, " must be >= 1");
  // Sizes first, in 64 bits: P x D is formed below, and one thread or process runs per rank.
  pipetrain::check_schedule_size(kFn, opt.pipeline, opt.stages_per_rank, opt.microbatches);
  PIPETRAIN_CHECK_ARG(std::int64_t{opt.pipeline} * opt.data_parallel <= kMaxWorldSize, kFn,
                      "--pipeline=", opt.pipeline, " x --data-parallel=", opt.data_parallel,
                      " = ", std::int64_t{opt.pipeline} * opt.data_parallel, " ranks, more than ",
                      kMaxWorldSize);
  PIPETRAIN_CHECK_ARG(opt.batch >= 1, kFn, "--batch=", opt.batch, " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.layers >= 1 && opt.heads >= 1, kFn, "--layers=", opt.layers,
                      " and --heads=", opt.heads, " must be >= 1");
  train_gpt::check_finite_positive(kFn, "--lr", opt.lr);
  train_gpt::check_finite_non_negative(kFn, "--grad-clip", opt.grad_clip, "no clipping");
  PIPETRAIN_CHECK_ARG(opt.save_every >= 0, kFn, "--save-every=", opt.save_every,
                      " must be >= 0 (0: save at the end only)");
  PIPETRAIN_CHECK_ARG(opt.save_every == 0 || !opt.save_dir.empty(), kFn, "--save-every=",
                      opt.save_every, " needs --save-dir");
  const int world = opt.pipeline * opt.data_parallel;
  PIPETRAIN_CHECK_ARG((opt.fail_rank == -1) == (opt.fail_step == -1), kFn, "--fail-rank=",
                      opt.fail_rank, " and --fail-step=", opt.fail_step,
                      " must be given together (-1: off)");
  PIPETRAIN_CHECK_ARG(opt.fail_rank >= -1 && opt.fail_rank < world, kFn, "--fail-rank=",
                      opt.fail_rank, " must be in [0, ", world - 1, "] (the world is --pipeline=",
                      opt.pipeline, " x --data-parallel=", opt.data_parallel, ") or -1 (off)");
  PIPETRAIN_CHECK_ARG(opt.fail_step >= -1 && opt.fail_step < opt.steps, kFn, "--fail-step=",
                      opt.fail_step, " must be in [0, ", opt.steps - 1,
                      "] (a step of the run) or -1 (off)");
  train_gpt::check_model_fits(
      kFn, {static_cast<std::int64_t>(data::kByteVocabSize), opt.seq, opt.layers, opt.heads,
            opt.channels, opt.batch / std::max(1, opt.data_parallel),
            // Under MPI each rank may be a machine of its own; in-process ranks share this one.
            opt.transport == "mpi" ? std::int64_t{opt.pipeline} : std::int64_t{1}});
  if (!opt.data.empty()) {
    const std::uint64_t bytes = train_gpt::check_text_file(kFn, opt.data);
    train_gpt::check_data_holds(kFn, opt.data, bytes, opt.seq, opt.batch,
                                "--batch=" + std::to_string(opt.batch));
  }
  if (!opt.save_dir.empty()) rt::check_directory_writable(opt.save_dir, "train_pipeline --save-dir");
  if (opt.resume_dir == "latest") {
    PIPETRAIN_CHECK_ARG(!opt.save_dir.empty(), kFn, "--resume latest needs --save-dir");
    const std::optional<fs::path> latest = rt::find_latest_checkpoint(opt.save_dir);
    PIPETRAIN_CHECK_ARG(latest.has_value(), kFn, "--resume latest: --save-dir='", opt.save_dir,
                        "' holds no complete checkpoint (step-<n>/manifest.txt)");
    opt.resume_dir = latest->string();
  } else if (!opt.resume_dir.empty()) {
    opt.resume_dir = rt::resolve_checkpoint(opt.resume_dir).string();
  }
}

Plan make_plan(const Options& opt) {
  Schedule compute = pipetrain::make_schedule(opt.schedule, opt.pipeline, opt.microbatches,
                                              opt.stages_per_rank);
  pipetrain::nn::GptConfig config;
  config.vocab_size = data::kByteVocabSize;
  config.context_length = opt.seq;
  config.num_layers = opt.layers;
  config.num_heads = opt.heads;
  config.channels = opt.channels;
  config.seed = opt.seed;
  config.validate();
  optim::WarmupCosineSchedule(opt.lr, opt.warmup, opt.steps, 0.1);  // throws on bad values
  PIPETRAIN_CHECK_ARG(opt.batch % opt.data_parallel == 0, "train_pipeline", "--batch=",
                      opt.batch, " is not a multiple of --data-parallel=", opt.data_parallel);
  const int micro_rows = rt::microbatch_size(opt.batch / opt.data_parallel, opt.microbatches);
  rt::Partition partition =
      pipetrain::nn::partition_gpt(config, compute.num_stages(), micro_rows, opt.seq);
  return Plan{pipetrain::lower(compute), config, std::move(partition), micro_rows};
}

// One rank's training loop. Returns normally or throws (after the executor aborted the world).
void run_rank(const Options& opt, const Plan& plan, pipetrain::Transport& transport,
              const std::vector<data::Token>& tokens) {
  const int rank = transport.rank();
  rt::Topology topo(transport.world_size(), opt.pipeline, opt.data_parallel);
  rt::check_same_configuration(transport, opt.canonical());
  const int pp = topo.pp_index(rank);
  pipetrain::nn::StageOptions stage_options;
  stage_options.activation_checkpointing = opt.checkpointing;
  auto stages = pipetrain::nn::make_gpt_stages(plan.config, plan.schedule, plan.partition, pp, stage_options);
  std::vector<pipetrain::Stage*> stage_ptrs;
  std::vector<pipetrain::nn::Parameter*> params;
  for (auto& s : stages) {
    stage_ptrs.push_back(s.get());
    for (auto* p : s->parameters()) params.push_back(p);
  }
  optim::AdamW optimizer(params);
  const optim::WarmupCosineSchedule lr_schedule(opt.lr, opt.warmup, opt.steps, 0.1);
  rt::ExecutorOptions exec_options;
  exec_options.max_grad_norm = opt.grad_clip;
  pipetrain::nn::CrossEntropyLoss loss;
  rt::Executor executor(plan.schedule, topo, transport, stage_ptrs, &loss, &optimizer,
                        exec_options);
  if (rank == 0) {
    rt::log_info(rank, "topology " + topo.to_string() + ", schedule '" + opt.schedule +
                           "' with " + std::to_string(plan.schedule.num_stages()) +
                           " stages, layers per stage " + plan.partition.to_string());
  }

  // Every rank draws the same global batches (same seed) and keeps its replica's rows.
  data::BatchSampler sampler(tokens, opt.seq, opt.batch, opt.seed);
  const std::uint64_t model_hash = rt::fnv1a64(opt.model_canonical());
  const std::vector<int> my_stages = plan.schedule.stages_of_rank(pp);
  const int num_stages = plan.schedule.num_stages();
  int first_step = 0;
  if (!opt.resume_dir.empty()) {
    // Parameters are found by name in whichever stage file holds them, so the checkpoint may
    // come from another cut (P, schedule, chunks per rank, microbatches).
    const rt::LoadedCheckpoint loaded =
        rt::load_checkpoint_into_stage(opt.resume_dir, stage_ptrs, optimizer, model_hash);
    PIPETRAIN_CHECK_ARG(loaded.meta.step <= opt.steps, "train_pipeline", "checkpoint '",
                        opt.resume_dir, "' is at step ", loaded.meta.step,
                        ", beyond --steps=", opt.steps);
    sampler.restore(loaded.meta.sampler);
    first_step = static_cast<int>(loaded.meta.step);
    if (rank == 0) {
      std::string line = "resumed from " + opt.resume_dir + " at step " +
                         std::to_string(first_step);
      if (loaded.num_stages != num_stages) {
        line += ", pipeline cut changed: " + std::to_string(loaded.num_stages) + " -> " +
                std::to_string(num_stages) + " stages";
      }
      rt::log_info(rank, line);
    }
  }
  rt::ProgressMeter meter(opt.steps, static_cast<std::int64_t>(opt.batch) * opt.seq);
  rt::StepStats stats;
  int skipped = 0, skip_streak = 0;
  for (int step = first_step; step < opt.steps; ++step) {
    if (rank == opt.fail_rank && step == opt.fail_step) {
      throw pipetrain::Error("[train_pipeline] injected failure on rank " + std::to_string(rank) +
                             " at step " + std::to_string(step) + " (--fail-rank/--fail-step)");
    }
    const data::Batch global = sampler.next();
    const data::Batch local = rt::shard_batch(global, opt.data_parallel, topo.dp_index(rank));
    stats = executor.step(data::to_microbatches(rt::split_batch(local, opt.microbatches)),
                          lr_schedule(step));
    skipped += stats.skipped ? 1 : 0;
    skip_streak = stats.skipped ? skip_streak + 1 : 0;
    const std::string line = meter.update(step, stats.loss, stats.seconds, stats.skipped);
    if (rank == 0 && ((step + 1) % opt.log_every == 0 || step == 0 || step + 1 == opt.steps)) {
      rt::log_info(rank, line + " | norm " + std::to_string(stats.grad_norm));
    }
    const bool save = !opt.save_dir.empty() &&
                      ((opt.save_every > 0 && (step + 1) % opt.save_every == 0) ||
                       step + 1 == opt.steps);
    if (save) {
      // Stage files into the staging folder, then (every file written) rank 0 commits it: the
      // manifest, the rename into place, the cleaning of what crashed saves left.
      const fs::path staging = rt::checkpoint_staging_dir(opt.save_dir, step + 1, num_stages);
      if (topo.dp_index(rank) == 0) {  // replicas are identical: replica 0 writes
        for (std::size_t i = 0; i < stages.size(); ++i) {
          rt::save_stage_checkpoint(staging, my_stages[i], num_stages, *stages[i], optimizer,
                                    rt::CheckpointMeta{step + 1, model_hash, sampler.state()});
        }
      }
      transport.barrier();
      if (rank == 0) {
        const fs::path done = rt::commit_checkpoint(opt.save_dir, step + 1, num_stages);
        if (done.filename() != "step-" + std::to_string(step + 1)) {
          rt::log_info(rank, "saved " + done.string() + " (step-" + std::to_string(step + 1) +
                                 " holds a checkpoint of another cut)");
        }
      }
      transport.barrier();
    }
  }
  // Every step skipped, or the last kSkipStreak: the weights did not train, or diverged (a
  // step skipped for a NaN weight is skipped forever after). One skipped batch is not an error.
  constexpr int kSkipStreak = 5;
  const int ran = opt.steps - first_step;
  if (ran > 0 && (skipped == ran || skip_streak >= kSkipStreak)) {
    throw pipetrain::Error("[train_pipeline] " +
                           (skipped == ran ? "all " + std::to_string(ran) + " steps"
                                           : "the last " + std::to_string(skip_streak) + " steps") +
                           " were skipped (non-finite loss or gradient): the model did not "
                           "train; lower --lr, set --grad-clip, or check --data");
  }
  if (first_step >= opt.steps) return;
  // Trace of the last step, gathered on every replica, written by rank 0.
  const auto timelines = rt::gather_timelines(transport, topo, plan.schedule, stats.timeline);
  if (rank == 0) {
    const rt::TraceReport report = rt::trace_report(plan.schedule, timelines);
    fs::create_directories(opt.out);
    const fs::path path = fs::path(opt.out) / "trace.json";
    pipetrain::write_file(path.string(), report.chrome_trace_json);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "last step: measured %.1f ms, bubble %.1f%%; predicted from measured costs "
                  "%.1f ms, bubble %.1f%%; trace: %s",
                  report.measured_makespan * 1e3, report.measured_bubble * 100,
                  report.predicted_makespan * 1e3, report.predicted_bubble * 100,
                  path.string().c_str());
    rt::log_info(rank, buf);
  }
}

std::vector<data::Token> load_tokens(const Options& opt) {
  const fs::path path =
      opt.data.empty() ? train_gpt::ensure_kjv_text(opt.cache) : fs::path(opt.data);
  return data::load_text_tokens(path);
}

int run_inprocess(const Options& opt, const Plan& plan) {
  const std::vector<data::Token> tokens = load_tokens(opt);
  const int world = opt.pipeline * opt.data_parallel;
  auto transports = pipetrain::make_inprocess_world(
      world, pipetrain::TransportOptions{std::chrono::milliseconds(opt.timeout_ms)});
  std::vector<std::string> errors(world);
  std::vector<int> aborted(world, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      try {
        run_rank(opt, plan, *transports[r], tokens);
      } catch (const pipetrain::AbortedError& e) {
        errors[r] = e.what();
        aborted[r] = 1;
      } catch (const std::exception& e) {
        errors[r] = e.what();
        transports[r]->abort(e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  // Report the root cause: the first rank that failed on its own, else the first failure.
  int shown = -1;
  for (int r = 0; r < world && shown < 0; ++r) {
    if (!errors[r].empty() && !aborted[r]) shown = r;
  }
  for (int r = 0; r < world && shown < 0; ++r) {
    if (!errors[r].empty()) shown = r;
  }
  if (shown < 0) return 0;
  std::fprintf(stderr, "error: %s\n", errors[shown].c_str());
  return 1;
}

int run_mpi(const Options& opt, const Plan& plan, int* argc, char*** argv) {
  pipetrain::MpiSession session(argc, argv);
  int code = 0;
  {
    auto transport = pipetrain::make_transport(
        "mpi", pipetrain::TransportOptions{std::chrono::milliseconds(opt.timeout_ms)});
    try {
      rt::Topology(transport->world_size(), opt.pipeline, opt.data_parallel);
      run_rank(opt, plan, *transport, load_tokens(opt));
    } catch (const std::exception& e) {
      transport->abort(e.what());
      std::fprintf(stderr, "error: rank %d: %s\n", session.rank(), e.what());
      code = 1;
    }
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"Pipeline-parallel training of a byte-level GPT (docs/runtime.md)"};
  std::string names;
  for (const auto& n : pipetrain::schedule_names()) names += (names.empty() ? "" : ", ") + n;
  app.add_option("--schedule", opt.schedule, "one of: " + names)->capture_default_str();
  app.add_option("--pipeline", opt.pipeline, "pipeline ranks P")->capture_default_str();
  app.add_option("--data-parallel", opt.data_parallel, "data-parallel replicas D")
      ->capture_default_str();
  app.add_option("--microbatches", opt.microbatches, "microbatches M per replica and step")
      ->capture_default_str();
  app.add_option("--stages-per-rank", opt.stages_per_rank,
                 "model chunks per rank (interleaved-1f1b, looped-bfs)")
      ->capture_default_str();
  app.add_option("--transport", opt.transport, "inprocess (P x D threads) or mpi (mpirun)")
      ->capture_default_str();
  app.add_option("--data", opt.data, "text file to train on (default: the KJV, see --cache)");
  app.add_option("--cache", opt.cache, "where the KJV text is extracted on first use")
      ->capture_default_str();
  app.add_option("--out", opt.out, "folder for trace.json")->capture_default_str();
  app.add_option("--steps", opt.steps, "optimizer steps")->capture_default_str();
  app.add_option("--batch", opt.batch, "sequences per optimizer step (all replicas)")
      ->capture_default_str();
  app.add_option("--seq", opt.seq, "sequence length in bytes")->capture_default_str();
  app.add_option("--layers", opt.layers, "transformer blocks")->capture_default_str();
  app.add_option("--heads", opt.heads, "attention heads")->capture_default_str();
  app.add_option("--channels", opt.channels, "embedding width")->capture_default_str();
  app.add_option("--lr", opt.lr, "peak learning rate")->capture_default_str();
  app.add_option("--warmup", opt.warmup, "warmup steps")->capture_default_str();
  app.add_option("--grad-clip", opt.grad_clip, "global gradient norm clip (finite, >= 0; 0: off)")
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "seed of initialisation and data order")
      ->capture_default_str();
  app.add_option("--log-every", opt.log_every, "steps between progress lines")
      ->capture_default_str();
  app.add_option("--timeout-ms", opt.timeout_ms, "deadline of every blocking wait")
      ->capture_default_str();
  app.add_flag("--checkpoint-activations", opt.checkpointing,
               "keep only stage inputs and recompute in the backward");
  app.add_option("--save-dir", opt.save_dir,
                 "write checkpoints to <dir>/step-<n>/ (checked writable at start)");
  app.add_option("--save-every", opt.save_every,
                 "steps between checkpoints (>= 0; 0: at the end only)")
      ->capture_default_str();
  app.add_option("--resume", opt.resume_dir, "continue from a checkpoint: a step folder "
                 "(<save-dir>/step-<n>), a save directory (its newest complete step) or 'latest' "
                 "(the newest complete step of --save-dir), of a run with the same model, "
                 "optimizer and data "
                 "options; --pipeline, --data-parallel, --schedule, --microbatches and "
                 "--stages-per-rank may differ)");
  app.add_option("--fail-rank", opt.fail_rank,
                 "testing aid: this rank (in [0, P x D), -1: off) throws at the start of "
                 "--fail-step")
      ->group("Fault injection");
  app.add_option("--fail-step", opt.fail_step, "testing aid: the step (in [0, --steps), -1: off) at which --fail-rank throws")
      ->group("Fault injection");
  CLI11_PARSE(app, argc, argv);

  try {
    validate_options(opt);
    const Plan plan = make_plan(opt);
    return opt.transport == "mpi" ? run_mpi(opt, plan, &argc, &argv) : run_inprocess(opt, plan);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
