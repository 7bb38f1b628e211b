// train_gpt: trains a small byte-level GPT on one text file, in one process, on the CPU.
//
//   train_gpt                         # the King James Bible, extracted with `bible` on first use
//   train_gpt --data book.txt --steps 500 --out runs/book
//
// Prints a progress line every --log-every steps, evaluates on the held-out tail of the text
// every --eval-every steps, writes loss.csv and loss.svg into --out, and ends with a sample.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "checks.h"
#include "corpus.h"
#include "loss_curve.h"
#include "model_adapter.h"
#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/data/tokens.h"
#include "pipetrain/error.h"
#include "pipetrain/optim/lr_schedule.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/progress.h"

namespace fs = std::filesystem;
namespace data = pipetrain::data;
namespace optim = pipetrain::optim;
using pipetrain::runtime::ProgressMeter;

namespace {

struct Options {
  std::string data;
  std::string cache = "build/data/kjv.txt";
  std::string out = "build/train_gpt";
  int steps = 1500;
  int batch = 16;
  int microbatches = 2;
  int seq = 64;
  int layers = 2;
  int heads = 4;
  int channels = 64;
  double lr = 2e-3;
  double min_lr_fraction = 0.1;
  int warmup = 50;
  double weight_decay = 0.1;
  double grad_clip = 1.0;
  std::uint64_t seed = 1337;
  double val_fraction = 0.05;
  int eval_every = 100;
  int eval_batches = 8;
  int log_every = 50;
  int sample_len = 300;
  double temperature = 0.8;
  std::string prompt = "And God said";
};

// Mean loss over the first `batches` batches of the validation text (always the same ones).
double evaluate(train_gpt::LanguageModel& model, data::BatchSampler& sampler, int batches) {
  sampler.reset();
  double sum = 0.0;
  for (int i = 0; i < batches; ++i) sum += model.evaluate(sampler.next());
  return sum / batches;
}

// Samples `length` bytes after `prompt`, from softmax(logits / temperature).
std::string generate(train_gpt::LanguageModel& model, const std::string& prompt, int length,
                     int max_context, double temperature, std::uint64_t seed) {
  std::vector<data::Token> tokens = data::encode_bytes(prompt);
  std::mt19937_64 rng(seed);
  for (int i = 0; i < length; ++i) {
    const std::size_t start =
        tokens.size() > static_cast<std::size_t>(max_context) ? tokens.size() - max_context : 0;
    const std::vector<float> logits =
        model.next_token_logits(std::span(tokens).subspan(start));
    double max_logit = logits[0];
    for (float l : logits) max_logit = std::max<double>(max_logit, l);
    std::vector<double> p(logits.size());
    double total = 0.0;
    for (std::size_t k = 0; k < logits.size(); ++k) {
      p[k] = std::exp((logits[k] - max_logit) / temperature);
      total += p[k];
    }
    // Inverse-CDF draw from the 53 high bits: the same bytes with every standard library.
    double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
    std::size_t next = p.size() - 1;
    for (std::size_t k = 0; k < p.size(); ++k) {
      if (u < p[k]) {
        next = k;
        break;
      }
      u -= p[k];
    }
    tokens.push_back(static_cast<data::Token>(next));
  }
  return data::decode_bytes(tokens);
}

// What CLI11's checks do not cover, checked before the data is read or the model allocated.
// (CLI::PositiveNumber lets inf and nan through.)
void validate_options(const Options& opt) {
  constexpr const char* kFn = "train_gpt";
  train_gpt::check_finite_positive(kFn, "--lr", opt.lr);
  train_gpt::check_finite_non_negative(kFn, "--grad-clip", opt.grad_clip, "no clipping");
  train_gpt::check_finite_non_negative(kFn, "--weight-decay", opt.weight_decay, "no decay");
  train_gpt::check_finite_positive(kFn, "--temperature", opt.temperature);
  PIPETRAIN_CHECK_ARG(!opt.prompt.empty(), kFn,
                      "--prompt is empty, expected at least 1 byte to start the sample from");
  train_gpt::check_model_fits(kFn, {static_cast<std::int64_t>(data::kByteVocabSize), opt.seq,
                                    opt.layers, opt.heads, opt.channels,
                                    opt.batch / opt.microbatches});
  if (!opt.data.empty()) {
    // The training part (1 - --val-fraction) must hold a microbatch of windows, and the
    // validation part one window.
    const std::uint64_t bytes = train_gpt::check_text_file(kFn, opt.data);
    const std::int64_t rows = opt.batch / opt.microbatches;
    const auto train_bytes = static_cast<std::uint64_t>(
        static_cast<double>(bytes) - std::round(opt.val_fraction * static_cast<double>(bytes)));
    train_gpt::check_data_holds(kFn, opt.data, train_bytes, opt.seq, rows,
                                "(--batch/--microbatches=" + std::to_string(rows) +
                                    ") in the training part");
    train_gpt::check_data_holds(kFn, opt.data, bytes - train_bytes, opt.seq, 1,
                                "1 window in the validation part (--val-fraction)");
  }
}

int run(const Options& opt) {
  // ---- data ------------------------------------------------------------------------------
  const fs::path text_path = 
      opt.data.empty() ? train_gpt::ensure_kjv_text(opt.cache) : fs::path(opt.data);
  const std::vector<data::Token> tokens = data::load_text_tokens(text_path);
  const double entropy = data::unigram_entropy_nats(tokens);
  spdlog::info("data: {} ({} bytes, byte-level vocabulary {})", text_path.string(),
               tokens.size(), data::kByteVocabSize);
  spdlog::info("unigram entropy of the text: {:.4f} nats/byte ({:.4f} bits/byte); "
               "a model that ignores context cannot get its loss below this",
               entropy, entropy / std::log(2.0));
  data::TokenSplit split = data::split_tokens(tokens, opt.val_fraction);
  const int micro_batch = opt.batch / opt.microbatches;
  data::BatchSampler train(std::move(split.train), opt.seq, micro_batch, opt.seed);
  data::BatchSampler val(std::move(split.validation), opt.seq, micro_batch, opt.seed,
                         /*shuffle=*/false);
  const int eval_batches = static_cast<int>(
      std::min<std::size_t>(static_cast<std::size_t>(opt.eval_batches), val.batches_per_epoch()));
  spdlog::info("train: {} windows of {} tokens; validation: {} windows, {} batches per eval",
               train.num_windows(), opt.seq, val.num_windows(), eval_batches);

  // ---- model and optimizer -----------------------------------------------------------------
  train_gpt::ModelShape shape;
  shape.vocab_size = data::kByteVocabSize;
  shape.max_seq_len = opt.seq;
  shape.layers = opt.layers;
  shape.heads = opt.heads;
  shape.channels = opt.channels;
  shape.seed = opt.seed;
  const std::unique_ptr<train_gpt::LanguageModel> model = train_gpt::make_gpt(shape);
  const std::vector<pipetrain::nn::Parameter*> params = model->parameters();
  std::int64_t n_params = 0;
  for (const auto* p : params) n_params += p->value.numel();
  spdlog::info("model: GPT, {} layers, {} heads, {} channels, context {}: {} parameters "
               "in {} tensors",
               opt.layers, opt.heads, opt.channels, opt.seq, n_params, params.size());
  optim::AdamWConfig adam;
  adam.weight_decay = opt.weight_decay;
  optim::AdamW optimizer(params, adam);
  const optim::WarmupCosineSchedule schedule(opt.lr, opt.warmup, opt.steps, opt.min_lr_fraction);
  spdlog::info("optimizer: AdamW lr {} (warmup {}, cosine to {}), weight decay {}, clip {}; "
               "{} sequences per step in {} microbatches",
               opt.lr, opt.warmup, schedule.min_lr(), opt.weight_decay, opt.grad_clip, opt.batch,
               opt.microbatches);

  // ---- training ----------------------------------------------------------------------------
  fs::create_directories(opt.out);
  std::vector<train_gpt::LossPoint> curve;
  const double initial_val = evaluate(*model, val, eval_batches);
  data::BatchSampler train_probe = train;  // a copy, so the training order is untouched
  const double initial_train = evaluate(*model, train_probe, eval_batches);
  spdlog::info("step {:>5}: loss {:.4f} | val {:.4f} (untrained; ln 256 = {:.4f})", 0,
               initial_train, initial_val, std::log(256.0));
  curve.push_back({0, initial_train, initial_val, 0.0});
  const std::int64_t tokens_per_step = static_cast<std::int64_t>(opt.batch) * opt.seq;
  using Clock = std::chrono::steady_clock;
  const auto start = Clock::now();
  auto window_start = start;
  int window_steps = 0;
  double last_val = initial_val;
  for (int step = 0; step < opt.steps; ++step) {
    optimizer.zero_grad();
    double loss = 0.0;
    for (int m = 0; m < opt.microbatches; ++m) {
      loss += model->forward_backward(train.next(), 1.0 / opt.microbatches);
    }
    loss /= opt.microbatches;
    if (!optim::is_finite(loss) || !optim::grads_are_finite(params)) {
      spdlog::error("step {}: loss {} or a gradient is not finite; stopping", step + 1, loss);
      return 1;
    }
    const double norm = opt.grad_clip > 0.0
                            ? optim::clip_grad_norm(params, opt.grad_clip)
                            : std::sqrt(optim::local_grad_sum_of_squares(params));
    const double lr = schedule(step);
    optimizer.step(lr);
    ++window_steps;

    train_gpt::LossPoint point{step + 1, loss, std::nullopt, lr};
    const bool last = step + 1 == opt.steps;
    if ((step + 1) % opt.eval_every == 0 || last) {
      last_val = evaluate(*model, val, eval_batches);
      point.val_loss = last_val;
    }
    curve.push_back(point);
    if ((step + 1) % opt.log_every == 0 || point.val_loss || last) {
      const auto now = Clock::now();
      const double window = std::chrono::duration<double>(now - window_start).count();
      const double elapsed = std::chrono::duration<double>(now - start).count();
      const double tok_s = static_cast<double>(tokens_per_step) * window_steps / window;
      const double eta = elapsed / (step + 1) * (opt.steps - step - 1);
      if (point.val_loss) {
        spdlog::info("step {:>5}/{}: loss {:.4f} | val {:.4f} | lr {:.2e} | norm {:.3f} | "
                     "{:.0f} tok/s | {:.2f} GFLOP/s | ETA {}",
                     step + 1, opt.steps, loss, *point.val_loss, lr, norm, tok_s,
                     model->train_flops(tokens_per_step, opt.seq) * window_steps / window / 1e9,
                     ProgressMeter::format_duration(eta));
      } else {
        spdlog::info("step {:>5}/{}: loss {:.4f} | lr {:.2e} | norm {:.3f} | {:.0f} tok/s | "
                     "ETA {}",
                     step + 1, opt.steps, loss, lr, norm, tok_s,
                     ProgressMeter::format_duration(eta));
      }
      window_start = now;
      window_steps = 0;
    }
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();

  // ---- results -----------------------------------------------------------------------------
  const fs::path csv = fs::path(opt.out) / "loss.csv";
  const fs::path svg = fs::path(opt.out) / "loss.svg";
  train_gpt::write_text_file(csv, train_gpt::loss_csv(curve));
  char entropy_label[96];
  std::snprintf(entropy_label, sizeof entropy_label, "unigram entropy %.3f nats", entropy);
  train_gpt::write_text_file(
      svg, train_gpt::loss_svg(curve, entropy, entropy_label,
                               "train_gpt on " + text_path.filename().string() + ": loss vs step"));
  spdlog::info("trained {} steps ({} tokens) in {}; wrote {} and {}", opt.steps,
               tokens_per_step * opt.steps, ProgressMeter::format_duration(seconds), csv.string(),
               svg.string());
  spdlog::info("final validation loss {:.4f} nats/byte vs unigram entropy {:.4f} nats/byte "
               "({:.1f}% below)",
               last_val, entropy, 100.0 * (entropy - last_val) / entropy);
  const std::string sample =
      generate(*model, opt.prompt, opt.sample_len, opt.seq, opt.temperature, opt.seed);
  spdlog::info("sample (temperature {}, seed {}):\n{}", opt.temperature, opt.seed, sample);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{"Train a small byte-level GPT on a text file (default: the King James Bible)"};
  app.add_option("--data", opt.data, "text file to train on (default: the KJV, see --cache)");
  app.add_option("--cache", opt.cache, "where the KJV text is extracted with `bible` on first use")
      ->capture_default_str();
  app.add_option("--out", opt.out, "folder for loss.csv and loss.svg")->capture_default_str();
  app.add_option("--steps", opt.steps, "optimizer steps")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--batch", opt.batch, "sequences per optimizer step")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--microbatches", opt.microbatches,
                 "gradient accumulation: microbatches per step (divides --batch)")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--seq", opt.seq, "sequence length (context) in bytes")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--layers", opt.layers, "transformer blocks")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--heads", opt.heads, "attention heads")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--channels", opt.channels, "embedding width")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--lr", opt.lr, "peak learning rate")->capture_default_str()
      ->check(CLI::PositiveNumber);
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
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--eval-batches", opt.eval_batches, "validation batches per evaluation")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--log-every", opt.log_every, "steps between progress lines")
      ->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--sample-len", opt.sample_len, "bytes to generate at the end")
      ->capture_default_str()->check(CLI::NonNegativeNumber);
  app.add_option("--temperature", opt.temperature, "sampling temperature")->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--prompt", opt.prompt, "text the sample starts from (not empty)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (opt.batch % opt.microbatches != 0) {
    spdlog::error("--batch={} must be a multiple of --microbatches={}", opt.batch,
                  opt.microbatches);
    return 2;
  }
  if (opt.warmup > opt.steps) opt.warmup = opt.steps;
  try {
    validate_options(opt);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  try {
    return run(opt);
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
