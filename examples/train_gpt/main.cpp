// train_gpt: trains a small byte-level GPT through the pipeline runtime.
//
//   train_gpt                                        # the README's main job: 2 in-process ranks,
//                                                    # ZB-H1, the King James Bible
//   train_gpt --pipeline 1                           # plain single-device training
//   train_gpt --schedule zb-v --pipeline 2 --data-parallel 2 --microbatches 8
//   mpirun -n 2 train_gpt --transport mpi            # one process per rank
//   train_gpt --data book.txt --steps 500 --out runs/book
//
// The model is nn::gpt_spec() run by a Pipeline (pipetrain/pipeline.h), like any model of the
// layer library. Rank 0 prints a progress line every --log-every steps and the validation loss
// (the held-out tail of the text, through the pipeline's forward-only schedule) every
// --eval-every steps. At the end it writes into --out: loss.csv and loss.svg (the loss curve),
// trace.json (Chrome/Perfetto) and timeline.svg (the last step's measured timeline of every
// pipeline rank above the simulator's prediction from the measured per-stage costs), then
// generates a sample through the pipeline.
//
// Every configuration error is reported before any transfer: unknown schedule, too few
// microbatches for the schedule, more stages than layers, a batch that does not split, a world
// size that is not P x D, ranks started with different options. Values are checked before
// training (validate_options): finite rates, ranges, --data a readable file large enough for
// --seq, a model that fits in memory, a writable --save-dir, a --resume that exists.
//
// Checkpoints (--save-dir) are committed step folders with a manifest (runtime/checkpoint.h);
// --resume takes a step folder, a save directory (its newest complete step) or "latest" (the
// newest complete step of --save-dir), saved by any cut of the same model.
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "checks.h"
#include "corpus.h"
#include "loss_curve.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/data/tokens.h"
#include "pipetrain/error.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/optim/lr_schedule.h"
#include "pipetrain/pipeline.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/runtime/trace.h"
#include "pipetrain/schedule/generators.h"
#include "pipetrain/schedule/io.h"
#include "pipetrain/schedule/search.h"
#include "pipetrain/schedule/simulate.h"

namespace fs = std::filesystem;
namespace data = pipetrain::data;
namespace optim = pipetrain::optim;
namespace rt = pipetrain::runtime;
using pipetrain::Tensor;

namespace {

constexpr const char* kProgram = "train_gpt";

struct Options {
  // Pipeline.
  std::string schedule = "zb-h1";
  int pipeline = 2;
  int data_parallel = 1;
  int microbatches = 4;
  int stages_per_rank = 1;
  std::string transport = "inprocess";
  bool checkpointing = false;
  int auto_probe_steps = 3;         // --schedule auto: steps run with ZB-H1 to measure costs
  std::int64_t memory_cap_mb = 0;  // --schedule auto: activation memory per rank (0: no cap)
  int timeout_ms = 60000;
  // Data and model.
  std::string data;
  std::string cache = "build/data/kjv.txt";
  std::string out = "build/train_gpt";
  int steps = 1500;
  int batch = 16;
  int seq = 64;
  int layers = 2;
  int heads = 4;
  int channels = 64;
  // Optimizer.
  double lr = 2e-3;
  double min_lr_fraction = 0.1;
  int warmup = 50;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  std::uint64_t seed = 1337;
  // Evaluation, logging, sample.
  double val_fraction = 0.05;
  int eval_every = 100;
  int eval_batches = 8;
  int log_every = 50;
  int sample_len = 300;
  double temperature = 0.8;
  std::string prompt = "And God said";
  // Checkpoints.
  std::string save_dir;
  int save_every = 0;
  std::string resume_dir;
  // Fault injection (tests).
  int fail_rank = -1;
  int fail_step = -1;

  // What a resumed run must share with the run that saved: the model, the optimizer and its
  // schedule, the data and its order. The pipeline layout (P, D, M, schedule, chunks per rank,
  // activation checkpointing) is left out: it may change across a resume.
  std::string model_canonical() const {
    std::ostringstream s;
    s << "optimizer=adamw data=" << data << " steps=" << steps << " batch=" << batch
      << " seq=" << seq << " layers=" << layers << " heads=" << heads << " channels=" << channels
      << " lr=" << lr << " warmup=" << warmup << " wd=" << weight_decay << " clip=" << grad_clip
      << " seed=" << seed << " val=" << val_fraction;
    return s.str();
  }

  pipetrain::nn::GptConfig config() const {
    pipetrain::nn::GptConfig c;
    c.vocab_size = data::kByteVocabSize;
    c.context_length = seq;
    c.num_layers = layers;
    c.num_heads = heads;
    c.channels = channels;
    c.seed = seed;
    return c;
  }
};

// The most ranks (threads in-process, processes under MPI) one run may have.
constexpr std::int64_t kMaxWorldSize = 4096;

// Everything that can be checked before a transport or a model exists. Resolves --resume (a
// step folder, a save directory or "latest") to a committed step folder.
void validate_options(Options& opt) {
  constexpr const char* kFn = kProgram;
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
  PIPETRAIN_CHECK_ARG(opt.eval_every >= 1 && opt.eval_batches >= 1, kFn, "--eval-every=",
                      opt.eval_every, " and --eval-batches=", opt.eval_batches, " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.sample_len >= 0, kFn, "--sample-len=", opt.sample_len,
                      " must be >= 0");
  PIPETRAIN_CHECK_ARG(opt.timeout_ms >= 1, kFn, "--timeout-ms=", opt.timeout_ms,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.pipeline >= 1 && opt.data_parallel >= 1, kFn, "--pipeline=",
                      opt.pipeline, " and --data-parallel=", opt.data_parallel, " must be >= 1");
  // Sizes first, in 64 bits: P x D is formed below, and one thread or process runs per rank.
  pipetrain::check_schedule_size(kFn, opt.pipeline, opt.stages_per_rank, opt.microbatches);
  if (opt.schedule == "auto") {
    PIPETRAIN_CHECK_ARG(opt.auto_probe_steps >= 1 && opt.auto_probe_steps < opt.steps, kFn,
                        "--auto-probe-steps=", opt.auto_probe_steps, " must be in [1, --steps=",
                        opt.steps, ")");
    PIPETRAIN_CHECK_ARG(opt.memory_cap_mb >= 0, kFn, "--memory-cap=", opt.memory_cap_mb,
                        " must be >= 0 (MiB; 0: no cap)");
  }
  PIPETRAIN_CHECK_ARG(std::int64_t{opt.pipeline} * opt.data_parallel <= kMaxWorldSize, kFn,
                      "--pipeline=", opt.pipeline, " x --data-parallel=", opt.data_parallel,
                      " = ", std::int64_t{opt.pipeline} * opt.data_parallel, " ranks, more than ",
                      kMaxWorldSize);
  PIPETRAIN_CHECK_ARG(opt.batch >= 1, kFn, "--batch=", opt.batch, " must be >= 1");
  PIPETRAIN_CHECK_ARG(opt.batch % (opt.data_parallel * opt.microbatches) == 0, kFn, "--batch=",
                      opt.batch, " is not a multiple of --data-parallel x --microbatches = ",
                      opt.data_parallel, " x ", opt.microbatches);
  PIPETRAIN_CHECK_ARG(opt.layers >= 1 && opt.heads >= 1, kFn, "--layers=", opt.layers,
                      " and --heads=", opt.heads, " must be >= 1");
  train_gpt::check_finite_positive(kFn, "--lr", opt.lr);
  train_gpt::check_finite_non_negative(kFn, "--grad-clip", opt.grad_clip, "no clipping");
  train_gpt::check_finite_non_negative(kFn, "--weight-decay", opt.weight_decay, "no decay");
  train_gpt::check_finite_positive(kFn, "--temperature", opt.temperature);
  PIPETRAIN_CHECK_ARG(!opt.prompt.empty(), kFn,
                      "--prompt is empty, expected at least 1 byte to start the sample from");
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
            opt.channels, opt.batch / opt.data_parallel,
            // Under MPI each rank may be a machine of its own; in-process ranks share this one.
            opt.transport == "mpi" ? std::int64_t{opt.pipeline} : std::int64_t{1}});
  if (!opt.data.empty()) {
    // The training part (1 - --val-fraction) must hold a batch of windows, and the validation
    // part one batch too (it is evaluated through the same pipeline).
    const std::uint64_t bytes = train_gpt::check_text_file(kFn, opt.data);
    const auto train_bytes = static_cast<std::uint64_t>(
        static_cast<double>(bytes) - std::round(opt.val_fraction * static_cast<double>(bytes)));
    train_gpt::check_data_holds(kFn, opt.data, train_bytes, opt.seq, opt.batch,
                                "--batch=" + std::to_string(opt.batch) + " in the training part");
    // Validation batches hold up to --batch windows, at least one per microbatch.
    const int rows = opt.data_parallel * opt.microbatches;
    train_gpt::check_data_holds(kFn, opt.data, bytes - train_bytes, opt.seq, rows,
                                "--data-parallel x --microbatches = " + std::to_string(rows) +
                                    " windows in the validation part (--val-fraction)");
  }
  opt.config().validate();
  optim::WarmupCosineSchedule(opt.lr, std::min(opt.warmup, opt.steps), opt.steps,
                              opt.min_lr_fraction);  // throws on bad values
  if (!opt.save_dir.empty()) rt::check_directory_writable(opt.save_dir, "train_gpt --save-dir");
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

// The training text, split into the training part and the held-out tail.
struct Text {
  fs::path path;
  std::vector<data::Token> train, validation;
  double entropy = 0;  // unigram entropy of the whole text, nats/byte
};

Text load_text(const Options& opt) {
  Text text;
  text.path = opt.data.empty() ? train_gpt::ensure_kjv_text(opt.cache) : fs::path(opt.data);
  const std::vector<data::Token> tokens = data::load_text_tokens(text.path);
  text.entropy = data::unigram_entropy_nats(tokens);
  data::TokenSplit split = data::split_tokens(tokens, opt.val_fraction);
  text.train = std::move(split.train);
  text.validation = std::move(split.validation);
  return text;
}

// Mean loss over the first `batches` batches of `sampler` (always the same ones), through the
// pipeline's forward-only schedule. Collective.
double evaluate(pipetrain::Pipeline& pipe, data::BatchSampler& sampler, int batches) {
  sampler.reset();
  double sum = 0.0;
  for (int i = 0; i < batches; ++i) {
    const pipetrain::Microbatch batch = data::to_microbatch(sampler.next());
    sum += pipe.eval_step(batch.inputs, batch.targets).loss;
  }
  return sum / batches;
}

// Samples `length` bytes after `prompt` through the pipeline: each step runs the context
// (the last --seq bytes) forward on every row of a batch; the rank holding the last stage of
// replica 0 draws the next byte from softmax(logits / temperature) and shares it with all.
// Collective.
std::string generate(pipetrain::Pipeline& pipe, pipetrain::Transport& transport,
                     const Options& opt) {
  std::vector<data::Token> tokens = data::encode_bytes(opt.prompt);
  const rt::Topology& topo = pipe.topology();
  const pipetrain::Schedule& schedule = pipe.schedule();
  const int drawer = topo.rank_of(schedule.rank_of_stage(schedule.num_stages() - 1), 0);
  const int rows = opt.data_parallel * opt.microbatches;
  std::mt19937_64 rng(opt.seed);
  for (int i = 0; i < opt.sample_len; ++i) {
    const std::size_t start =
        tokens.size() > static_cast<std::size_t>(opt.seq) ? tokens.size() - opt.seq : 0;
    const auto t = static_cast<std::int64_t>(tokens.size() - start);
    std::vector<data::Token> context;
    for (int r = 0; r < rows; ++r) context.insert(context.end(), tokens.begin() + start, tokens.end());
    const pipetrain::EvalResult result = pipe.eval_step({Tensor::from_vector(context, {rows, t})});
    Tensor next = Tensor::zeros({1}, pipetrain::DType::kInt32);
    if (transport.rank() == drawer) {
      // Row 0's logits at the last position.
      const std::vector<float> all = result.outputs.at(0).to_vector<float>();
      const auto v = static_cast<std::size_t>(data::kByteVocabSize);
      const float* logits = all.data() + (static_cast<std::size_t>(t) - 1) * v;
      double max_logit = logits[0];
      for (std::size_t k = 0; k < v; ++k) max_logit = std::max<double>(max_logit, logits[k]);
      std::vector<double> p(v);
      double total = 0.0;
      for (std::size_t k = 0; k < v; ++k) {
        p[k] = std::exp((logits[k] - max_logit) / opt.temperature);
        total += p[k];
      }
      // Inverse-CDF draw from the 53 high bits: the same bytes with every standard library.
      double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
      std::size_t pick = v - 1;
      for (std::size_t k = 0; k < v; ++k) {
        if (u < p[k]) {
          pick = k;
          break;
        }
        u -= p[k];
      }
      next.data<std::int32_t>()[0] = static_cast<std::int32_t>(pick);
    }
    transport.all_reduce_sum(next);
    tokens.push_back(next.data<std::int32_t>()[0]);
  }
  // Shown on a terminal: bytes that are not printable ASCII (an undertrained model makes
  // plenty) become '?'.
  std::string text = data::decode_bytes(tokens);
  for (char& c : text) {
    const auto u = static_cast<unsigned char>(c);
    if ((u < 32 && c != '\n' && c != '\t') || u >= 127) c = '?';
  }
  return text;
}

// One SVG holding `top` above `bottom` (two to_svg() pictures).
std::string stack_svgs(const std::string& top, const std::string& bottom) {
  auto number_after = [](const std::string& svg, const std::string& key) {
    const std::size_t at = svg.find(key + "=\"");
    return at == std::string::npos ? 0.0 : std::stod(svg.substr(at + key.size() + 2));
  };
  const double w = std::max(number_after(top, "width"), number_after(bottom, "width"));
  const double h1 = number_after(top, "height"), h2 = number_after(bottom, "height");
  std::ostringstream out;
  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h1 + h2
      << "\" viewBox=\"0 0 " << w << " " << h1 + h2 << "\">\n"
      << top;
  std::string shifted = bottom;
  const std::size_t at = shifted.find("<svg ");
  if (at != std::string::npos) shifted.insert(at + 5, "y=\"" + std::to_string(h1) + "\" ");
  out << shifted << "</svg>\n";
  return out.str();
}

// The last step's trace: trace.json and timeline.svg (measured above predicted), on rank 0.
// Collective over the replica.
void write_trace(pipetrain::Pipeline& pipe, pipetrain::Transport& transport, const Options& opt,
                 const rt::StepStats& last) {
  const pipetrain::Schedule& schedule = pipe.schedule();
  const auto timelines = rt::gather_timelines(transport, pipe.topology(), schedule, last.timeline);
  if (transport.rank() != 0) return;
  const rt::TraceReport report = rt::trace_report(schedule, timelines);
  const fs::path json = fs::path(opt.out) / "trace.json";
  const fs::path svg = fs::path(opt.out) / "timeline.svg";
  pipetrain::write_file(json.string(), report.chrome_trace_json);
  const pipetrain::SimulationResult measured = rt::measured_result(schedule, timelines);
  const pipetrain::SimulationResult predicted =
      pipetrain::simulate(schedule, rt::measured_costs(schedule, timelines));
  pipetrain::SvgOptions svg_options;
  svg_options.pixels_per_time_unit = 900.0 / std::max(measured.makespan, 1e-9);
  svg_options.title = "measured: last step of " + schedule.name() + " (seconds)";
  const std::string top = pipetrain::to_svg(schedule, measured, svg_options);
  svg_options.title = "predicted by the simulator from the measured per-stage costs";
  const std::string bottom = pipetrain::to_svg(schedule, predicted, svg_options);
  pipetrain::write_file(svg.string(), stack_svgs(top, bottom));
  char line[320];
  std::snprintf(line, sizeof line,
                "last step: measured %.1f ms, bubble %.1f%%; predicted from measured costs "
                "%.1f ms, bubble %.1f%%; wrote %s and %s",
                report.measured_makespan * 1e3, report.measured_bubble * 100,
                report.predicted_makespan * 1e3, report.predicted_bubble * 100,
                json.string().c_str(), svg.string().c_str());
  rt::log_info(0, line);
}

// --schedule auto: from the last probe step's measured per-stage F, I and W (each replica
// measures its own; their mean over the world is what every rank searches with, so every rank
// picks the same schedule) and the model's activation bytes,
// search_schedules() ranks every schedule and knob; the best one that fits the memory cap and
// has no more stages than the model has layers replaces the probe. The weights and optimizer
// state move through a checkpoint in <out>/auto-switch, so the losses stay those of one device.
template <typename MakePipeline>
std::unique_ptr<pipetrain::Pipeline> switch_schedule(
    const Options& opt, pipetrain::PipelineOptions options,
    std::unique_ptr<pipetrain::Pipeline> probe, const rt::StepStats& last,
    pipetrain::Transport& transport, const MakePipeline& make_pipeline,
    const data::SamplerState& position) {
  const pipetrain::Schedule probe_schedule = probe->schedule();
  const auto timelines =
      rt::gather_timelines(transport, probe->topology(), probe_schedule, last.timeline);
  pipetrain::CostModel costs = rt::measured_costs(probe_schedule, timelines);
  {
    const int s = probe_schedule.num_stages();
    Tensor all = Tensor::zeros({4, s}, pipetrain::DType::kFloat64);
    std::vector<double>* kinds[4] = {&costs.forward_per_stage, &costs.backward_per_stage,
                                     &costs.backward_input_per_stage,
                                     &costs.backward_weight_per_stage};
    for (int k = 0; k < 4; ++k) {
      for (int st = 0; st < s; ++st) all.data<double>()[k * s + st] = (*kinds[k])[st];
    }
    transport.all_reduce_sum(all);
    for (int k = 0; k < 4; ++k) {
      for (int st = 0; st < s; ++st) {
        (*kinds[k])[st] = all.data<double>()[k * s + st] / opt.data_parallel;
      }
    }
  }
  // Activation bytes of one rank's share: what the layers keep per microbatch, summed over the
  // model and divided by P (a share is 1/P of the model).
  const pipetrain::nn::GptConfig config = opt.config();
  const int rows = opt.batch / (opt.data_parallel * opt.microbatches);
  const std::vector<pipetrain::LayerProfile> profile = pipetrain::profile_layers(
      pipetrain::nn::gpt_spec(config), {{{rows, opt.seq}, pipetrain::DType::kInt32}}, 1);
  std::int64_t kept = 0;
  for (const auto& p : profile) kept += static_cast<std::int64_t>(p.bytes_kept);
  pipetrain::SearchOptions search;
  // search.overlapped stays false: the executor runs an overlapped slot's two actions in
  // sequence, so an overlapped candidate's simulated time would not be this runtime's.
  search.activation_bytes = std::max<std::int64_t>(1, kept / opt.pipeline);
  search.memory_cap_bytes = opt.memory_cap_mb * (std::int64_t{1} << 20);
  const std::vector<pipetrain::SearchResult> ranked =
      pipetrain::search_schedules(opt.pipeline, opt.microbatches, costs, search);
  const pipetrain::SearchResult* best = nullptr;
  for (const auto& r : ranked) {
    if (r.feasible && opt.pipeline * r.stages_per_rank_effective <= config.num_model_layers()) {
      best = &r;
      break;
    }
  }
  PIPETRAIN_CHECK_ARG(best != nullptr, kProgram, "--schedule auto: no schedule fits --memory-cap=",
                      opt.memory_cap_mb, " MiB with this model's ", config.num_model_layers(),
                      " layers");
  if (transport.rank() == 0) {
    std::ostringstream why;
    why << "--schedule auto: measured per stage F/I/W (ms)";
    for (int s = 0; s < probe_schedule.num_stages(); ++s) {
      char cell[64];
      std::snprintf(cell, sizeof cell, " %.2f/%.2f/%.2f", costs.forward_per_stage[s] * 1e3,
                    costs.backward_input_per_stage[s] * 1e3,
                    costs.backward_weight_per_stage[s] * 1e3);
      why << cell;
    }
    why << "; activations " << search.activation_bytes << " bytes per share and microbatch"
        << "; predicted step (ms):";
    int shown = 0;
    for (const auto& r : ranked) {
      if (!r.feasible || shown == 4) continue;
      char cell[96];
      std::snprintf(cell, sizeof cell, " %s%s%s %.2f", r.name.c_str(),
                    r.knobs.empty() ? "" : " ", r.knobs.c_str(), r.makespan * 1e3);
      why << (shown++ ? "," : "") << cell;
    }
    why << "; running " << best->name << (best->knobs.empty() ? "" : " (" + best->knobs + ")");
    rt::log_info(0, why.str());
  }
  const fs::path dir = fs::path(opt.out) / "auto-switch";
  const fs::path saved = probe->save(dir, position);
  probe.reset();  // its stages go before the new ones are built
  options.custom_schedule =
      pipetrain::make_candidate(*best, opt.pipeline, opt.microbatches, costs, search);
  options.stages_per_rank = best->stages_per_rank_effective;
  std::unique_ptr<pipetrain::Pipeline> next = make_pipeline(options);
  next->load(saved);
  if (transport.rank() == 0) fs::remove_all(dir);
  return next;
}

// One rank's run. Returns normally or throws (after the runtime aborted the world).
void run_rank(const Options& opt, const Text& text, pipetrain::Transport& transport) {
  const int rank = transport.rank();
  const pipetrain::nn::GptConfig config = opt.config();
  pipetrain::PipelineOptions options;
  options.schedule = opt.schedule;
  options.pipeline = opt.pipeline;
  options.data_parallel = opt.data_parallel;
  options.microbatches = opt.microbatches;
  options.stages_per_rank = opt.stages_per_rank;
  options.activation_checkpointing = opt.checkpointing;
  options.optimizer.adamw.weight_decay = opt.weight_decay;
  options.executor.max_grad_norm = opt.grad_clip;
  options.model_id = opt.model_canonical();
  // Cut where the estimated compute is balanced (the head's V x C product, the embedding's
  // bytes), not where the parameters are.
  pipetrain::nn::GptCostShape cost_shape;
  cost_shape.vocab_size = config.vocab_size;
  cost_shape.seq_len = opt.seq;
  cost_shape.channels = opt.channels;
  cost_shape.num_layers = opt.layers;
  cost_shape.microbatch_size = opt.batch / (opt.data_parallel * opt.microbatches);
  options.partition.method = pipetrain::PartitionOptions::Method::kCost;
  options.partition.layer_costs = pipetrain::nn::gpt_layer_costs(cost_shape);
  // --schedule auto starts with ZB-H1 (its split backward measures F, I and W apart).
  const bool automatic = opt.schedule == "auto";
  if (automatic) options.schedule = "zb-h1";
  const pipetrain::Schedule shape = pipetrain::make_schedule(
      options.schedule, opt.pipeline, opt.microbatches, opt.stages_per_rank);
  PIPETRAIN_CHECK_ARG(config.num_model_layers() >= shape.num_stages(), kProgram, "the model has ",
                      config.num_model_layers(), " layers (embedding, ", opt.layers,
                      " blocks, head), fewer than the ", shape.num_stages(),
                      " stages of --schedule ", opt.schedule, " on --pipeline=", opt.pipeline,
                      ": raise --layers");
  auto make_pipeline = [&](const pipetrain::PipelineOptions& o) {
    return std::make_unique<pipetrain::Pipeline>(
        pipetrain::nn::gpt_spec(config), std::make_unique<pipetrain::nn::CrossEntropyLoss>(), o,
        transport);
  };
  std::unique_ptr<pipetrain::Pipeline> pipeline = make_pipeline(options);
  const rt::Topology topo = pipeline->topology();
  std::int64_t n_params = pipetrain::nn::count_parameters(pipeline->parameters());
  if (rank == 0) {
    rt::log_info(rank, "data: " + text.path.string() + " (" +
                           std::to_string(text.train.size() + text.validation.size()) +
                           " bytes); unigram entropy " + std::to_string(text.entropy) +
                           " nats/byte: a model that ignores context cannot get below it");
    rt::log_info(rank, "model: GPT, " + std::to_string(opt.layers) + " layers, " +
                           std::to_string(opt.heads) + " heads, " +
                           std::to_string(opt.channels) + " channels, context " +
                           std::to_string(opt.seq) + "; rank 0 holds " +
                           std::to_string(n_params) + " parameters");
    rt::log_info(rank, "topology " + topo.to_string() + ", schedule '" + pipeline->schedule().name() +
                           "' with " + std::to_string(pipeline->schedule().num_stages()) +
                           " stages, layers per stage " + pipeline->partition().to_string() +
                           ", transport " + opt.transport);
  }

  // Every rank draws the same global batches (same seed); the Pipeline keeps each replica's rows.
  data::BatchSampler sampler(text.train, opt.seq, opt.batch, opt.seed);
  // Validation batches: --batch windows when the held-out text has them, else the most it
  // holds in whole multiples of D x M (a short --data).
  const std::size_t per_row = static_cast<std::size_t>(opt.data_parallel * opt.microbatches);
  const std::size_t val_windows =
      text.validation.empty() ? 0 : (text.validation.size() - 1) / static_cast<std::size_t>(opt.seq);
  const int val_batch = static_cast<int>(
      std::max(per_row, std::min<std::size_t>(opt.batch, val_windows / per_row * per_row)));
  data::BatchSampler val(text.validation, opt.seq, val_batch, opt.seed, /*shuffle=*/false);
  const int eval_batches = static_cast<int>(
      std::min<std::size_t>(static_cast<std::size_t>(opt.eval_batches), val.batches_per_epoch()));
  const optim::WarmupCosineSchedule lr_schedule(opt.lr, std::min(opt.warmup, opt.steps),
                                                opt.steps, opt.min_lr_fraction);
  int first_step = 0;
  if (!opt.resume_dir.empty()) {
    // Parameters are found by name in whichever stage file holds them, so the checkpoint may
    // come from another cut (P, schedule, chunks per rank, microbatches).
    const rt::LoadedCheckpoint loaded = pipeline->load(opt.resume_dir);
    PIPETRAIN_CHECK_ARG(loaded.meta.step <= opt.steps, kProgram, "checkpoint '", opt.resume_dir,
                        "' is at step ", loaded.meta.step, ", beyond --steps=", opt.steps);
    sampler.restore(loaded.meta.sampler);
    first_step = static_cast<int>(loaded.meta.step);
    if (rank == 0) {
      std::string line = "resumed from " + opt.resume_dir + " at step " +
                         std::to_string(first_step);
      if (loaded.num_stages != pipeline->schedule().num_stages()) {
        line += ", pipeline cut changed: " + std::to_string(loaded.num_stages) + " -> " +
                std::to_string(pipeline->schedule().num_stages()) + " stages";
      }
      rt::log_info(rank, line);
    }
  }

  if (automatic && first_step + opt.auto_probe_steps >= opt.steps && rank == 0) {
    rt::log_info(rank, "--schedule auto: " + std::to_string(opt.steps - first_step) +
                           " steps left, no more than --auto-probe-steps=" +
                           std::to_string(opt.auto_probe_steps) + ": the run stays on zb-h1");
  }
  std::vector<train_gpt::LossPoint> curve;
  double last_val = evaluate(*pipeline, val, eval_batches);
  data::BatchSampler train_probe = sampler;  // a copy, so the training order is untouched
  const double first_train = evaluate(*pipeline, train_probe, eval_batches);
  if (rank == 0) {
    char line[160];
    std::snprintf(line, sizeof line, "step %d: loss %.4f | val %.4f (%s; ln 256 = %.4f)",
                  first_step, first_train, last_val, first_step == 0 ? "untrained" : "resumed",
                  std::log(256.0));
    rt::log_info(rank, line);
  }
  curve.push_back({first_step, first_train, last_val, 0.0});
  rt::ProgressMeter meter(opt.steps, static_cast<std::int64_t>(opt.batch) * opt.seq);
  rt::StepStats stats;
  int skipped = 0, skip_streak = 0;
  for (int step = first_step; step < opt.steps; ++step) {
    if (rank == opt.fail_rank && step == opt.fail_step) {
      throw pipetrain::Error("[train_gpt] injected failure on rank " + std::to_string(rank) +
                             " at step " + std::to_string(step) + " (--fail-rank/--fail-step)");
    }
    const pipetrain::Microbatch batch = data::to_microbatch(sampler.next());
    const double lr = lr_schedule(step);
    stats = pipeline->train_step(batch.inputs, batch.targets, lr);
    skipped += stats.skipped ? 1 : 0;
    skip_streak = stats.skipped ? skip_streak + 1 : 0;
    const bool last = step + 1 == opt.steps;
    train_gpt::LossPoint point{step + 1, stats.loss, std::nullopt, lr};
    if ((step + 1) % opt.eval_every == 0 || last) {
      last_val = evaluate(*pipeline, val, eval_batches);
      point.val_loss = last_val;
    }
    curve.push_back(point);
    std::string line = meter.update(step, stats.loss, stats.seconds, stats.skipped);
    if (rank == 0 && ((step + 1) % opt.log_every == 0 || step == first_step || last ||
                      point.val_loss)) {
      char extra[96];
      std::snprintf(extra, sizeof extra, " | norm %.3f | lr %.2e", stats.grad_norm, lr);
      line += extra;
      if (point.val_loss) {
        std::snprintf(extra, sizeof extra, " | val %.4f", *point.val_loss);
        line += extra;
      }
      rt::log_info(rank, line);
    }
    if (automatic && step + 1 == first_step + opt.auto_probe_steps && !last) {
      pipeline = switch_schedule(opt, options, std::move(pipeline), stats, transport,
                                 make_pipeline, sampler.state());
    }
    const bool save = !opt.save_dir.empty() &&
                      ((opt.save_every > 0 && (step + 1) % opt.save_every == 0) || last);
    if (save) {
      const fs::path done = pipeline->save(opt.save_dir, sampler.state());
      if (rank == 0 && done.filename() != "step-" + std::to_string(step + 1)) {
        rt::log_info(rank, "saved " + done.string() + " (step-" + std::to_string(step + 1) +
                               " holds a checkpoint of another cut)");
      }
    }
  }
  // Every step skipped, or the last kSkipStreak: the weights did not train, or diverged (a
  // step skipped for a NaN weight is skipped forever after). One skipped batch is not an error.
  constexpr int kSkipStreak = 5;
  const int ran = opt.steps - first_step;
  if (ran > 0 && (skipped == ran || skip_streak >= kSkipStreak)) {
    throw pipetrain::Error("[train_gpt] " +
                           (skipped == ran ? "all " + std::to_string(ran) + " steps"
                                           : "the last " + std::to_string(skip_streak) + " steps") +
                           " were skipped (non-finite loss or gradient): the model did not "
                           "train; lower --lr, set --grad-clip, or check --data");
  }

  // ---- results -------------------------------------------------------------------------------
  if (rank == 0) {
    fs::create_directories(opt.out);
    const fs::path csv = fs::path(opt.out) / "loss.csv";
    const fs::path svg = fs::path(opt.out) / "loss.svg";
    train_gpt::write_text_file(csv, train_gpt::loss_csv(curve));
    char label[96];
    std::snprintf(label, sizeof label, "unigram entropy %.3f nats", text.entropy);
    train_gpt::write_text_file(
        svg, train_gpt::loss_svg(curve, text.entropy, label,
                                 "train_gpt on " + text.path.filename().string() +
                                     ": loss vs step"));
    char line[256];
    std::snprintf(line, sizeof line,
                  "final validation loss %.4f nats/byte vs unigram entropy %.4f nats/byte "
                  "(%.1f%% below); wrote %s and %s",
                  last_val, text.entropy, 100.0 * (text.entropy - last_val) / text.entropy,
                  csv.string().c_str(), svg.string().c_str());
    rt::log_info(rank, line);
  }
  if (ran > 0) {
    fs::create_directories(opt.out);
    write_trace(*pipeline, transport, opt, stats);
  }
  if (opt.sample_len > 0) {
    const std::string sample = generate(*pipeline, transport, opt);
    if (rank == 0) {
      rt::log_info(rank, "sample (temperature " + std::to_string(opt.temperature) + ", seed " +
                             std::to_string(opt.seed) + "):\n" + sample);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"Train a small byte-level GPT through the pipeline (default: 2 in-process ranks, "
               "ZB-H1, the King James Bible)"};
  std::string names;
  for (const auto& n : pipetrain::schedule_names()) names += (names.empty() ? "" : ", ") + n;
  for (const auto& n : pipetrain::overlapped_schedule_names()) names += ", " + n;
  app.add_option("--schedule", opt.schedule,
                 "one of: " + names + " (its overlapped slots run their two actions in "
                 "sequence here), or auto (measure with zb-h1, then run the schedule "
                 "search_schedules() picks)")
      ->capture_default_str();
  app.add_option("--auto-probe-steps", opt.auto_probe_steps,
                 "--schedule auto: steps run with zb-h1 before the switch")
      ->capture_default_str();
  app.add_option("--memory-cap", opt.memory_cap_mb,
                 "--schedule auto: activation memory per rank in MiB (0: no cap)")
      ->capture_default_str();
  app.add_option("--pipeline", opt.pipeline, "pipeline ranks P (1: one device)")
      ->capture_default_str();
  app.add_option("--data-parallel", opt.data_parallel, "data-parallel replicas D")
      ->capture_default_str();
  app.add_option("--microbatches", opt.microbatches, "microbatches M per replica and step")
      ->capture_default_str();
  app.add_option("--stages-per-rank", opt.stages_per_rank,
                 "model chunks per rank (interleaved-1f1b, looped-bfs)")
      ->capture_default_str();
  app.add_option("--transport", opt.transport, "inprocess (P x D threads) or mpi (mpirun)")
      ->capture_default_str();
  app.add_flag("--checkpoint-activations", opt.checkpointing,
               "keep only stage inputs and recompute in the backward");
  app.add_option("--timeout-ms", opt.timeout_ms, "deadline of every blocking wait")
      ->capture_default_str();
  app.add_option("--data", opt.data, "text file to train on (default: the KJV, see --cache)");
  app.add_option("--cache", opt.cache, "where the KJV text is extracted with `bible` on first use")
      ->capture_default_str();
  app.add_option("--out", opt.out, "folder for loss.csv, loss.svg, trace.json, timeline.svg")
      ->capture_default_str();
  app.add_option("--steps", opt.steps, "optimizer steps")->capture_default_str();
  app.add_option("--batch", opt.batch, "sequences per optimizer step (all replicas)")
      ->capture_default_str();
  app.add_option("--seq", opt.seq, "sequence length (context) in bytes")->capture_default_str();
  app.add_option("--layers", opt.layers, "transformer blocks")->capture_default_str();
  app.add_option("--heads", opt.heads, "attention heads")->capture_default_str();
  app.add_option("--channels", opt.channels, "embedding width")->capture_default_str();
  app.add_option("--lr", opt.lr, "peak learning rate")->capture_default_str();
  app.add_option("--warmup", opt.warmup, "learning-rate warmup steps")->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--weight-decay", opt.weight_decay, "AdamW weight decay")->capture_default_str();
  app.add_option("--grad-clip", opt.grad_clip,
                 "clip the global gradient norm to this (finite, >= 0; 0: off)")
      ->capture_default_str();
  app.add_option("--seed", opt.seed, "seed of initialisation, data order and sampling")
      ->capture_default_str();
  app.add_option("--val-fraction", opt.val_fraction, "tail of the text held out for validation")
      ->capture_default_str()->check(CLI::Range(0.001, 0.5));
  app.add_option("--eval-every", opt.eval_every, "steps between validation evaluations")
      ->capture_default_str();
  app.add_option("--eval-batches", opt.eval_batches, "validation batches per evaluation")
      ->capture_default_str();
  app.add_option("--log-every", opt.log_every, "steps between progress lines")
      ->capture_default_str();
  app.add_option("--sample-len", opt.sample_len, "bytes to generate at the end (0: none)")
      ->capture_default_str();
  app.add_option("--temperature", opt.temperature, "sampling temperature")->capture_default_str();
  app.add_option("--prompt", opt.prompt, "text the sample starts from (not empty)")
      ->capture_default_str();
  app.add_option("--save-dir", opt.save_dir,
                 "write checkpoints to <dir>/step-<n>/ (checked writable at start)");
  app.add_option("--save-every", opt.save_every,
                 "steps between checkpoints (>= 0; 0: at the end only)")
      ->capture_default_str();
  app.add_option("--resume", opt.resume_dir,
                 "continue from a checkpoint: a step folder (<save-dir>/step-<n>), a save "
                 "directory (its newest complete step) or 'latest' (the newest complete step of "
                 "--save-dir), of a run with the same model, optimizer and data options; "
                 "--pipeline, --data-parallel, --schedule, --microbatches and --stages-per-rank "
                 "may differ");
  app.add_option("--fail-rank", opt.fail_rank,
                 "testing aid: this rank (in [0, P x D), -1: off) throws at the start of "
                 "--fail-step")
      ->group("Fault injection");
  app.add_option("--fail-step", opt.fail_step,
                 "testing aid: the step (in [0, --steps), -1: off) at which --fail-rank throws")
      ->group("Fault injection");
  CLI11_PARSE(app, argc, argv);

  const bool mpi = opt.transport == "mpi";
  bool reported = false;
  try {
    validate_options(opt);
    const Text text = load_text(opt);
    pipetrain::launch(
        opt.pipeline * opt.data_parallel, opt.transport,
        [&](pipetrain::Transport& transport) {
          try {
            run_rank(opt, text, transport);
          } catch (const std::exception& e) {
            if (mpi) {  // every process reports its own failure
              std::fprintf(stderr, "error: rank %d: %s\n", transport.rank(), e.what());
              reported = true;
            }
            throw;
          }
        },
        pipetrain::TransportOptions{std::chrono::milliseconds(opt.timeout_ms)});
  } catch (const std::exception& e) {
    if (!reported) std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
