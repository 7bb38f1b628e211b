// fuzz_checkpoint: libFuzzer target for the checkpoint readers (runtime/checkpoint.h).
//
// The first input byte picks the reader, the rest is the content:
//   0  a stage file for load_stage_checkpoint(); the harness appends the FNV-1a trailer, so
//      mutations reach the parser behind the checksum (a forger can recompute it too)
//   1  the text of a manifest for parse_checkpoint_manifest()
//   2  a one-stage step folder for load_checkpoint_into_stage(): the stage file as in 0 and a
//      manifest that matches it
// A pipetrain::Error (ParseError, InvalidArgument) is the expected answer to a bad input;
// anything else (a crash, std::bad_alloc, std::length_error, a sanitizer report) is a finding.
//
//   fuzz_checkpoint -rss_limit_mb=1024 -max_total_time=180 corpus tests/fuzz/corpus/checkpoint
//   FUZZ_CHECKPOINT_WRITE_SEEDS=tests/fuzz/corpus/checkpoint fuzz_checkpoint   # the seeds
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "pipetrain/error.h"
#include "pipetrain/nn/gpt_config.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/nn/gpt.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/schedule/generators.h"

namespace fs = std::filesystem;
namespace rt = pipetrain::runtime;

namespace {

constexpr std::uint64_t kHash = 0x77;

struct World {
  fs::path dir;
  std::unique_ptr<pipetrain::Stage> stage;
  std::unique_ptr<pipetrain::optim::AdamW> optimizer;
};

World& world() {
  static World w = [] {
    World out;
    out.dir = fs::temp_directory_path() / ("fuzz_checkpoint_" + std::to_string(::getpid()));
    fs::create_directories(out.dir);
    pipetrain::nn::GptConfig c;
    c.vocab_size = 8;
    c.context_length = 4;
    c.num_layers = 1;
    c.num_heads = 1;
    c.channels = 4;
    const pipetrain::Schedule schedule = pipetrain::make_schedule("gpipe", 1, 1);
    auto stages = pipetrain::nn::make_gpt_stages(c, schedule, pipetrain::nn::partition_gpt(c, 1, 1, 4), 0);
    out.stage = std::move(stages[0]);
    out.optimizer = std::make_unique<pipetrain::optim::AdamW>(out.stage->parameters());
    return out;
  }();
  return w;
}

void write(const fs::path& p, const std::string& bytes) {
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(),
                                                             static_cast<std::streamsize>(bytes.size()));
}

std::string with_trailer(std::string body) {
  const std::uint64_t h = rt::fnv1a64(body);  // the checksum the readers verify
  for (int i = 0; i < 8; ++i) body.push_back(static_cast<char>((h >> (8 * i)) & 0xff));
  return body;
}

std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A manifest for a one-stage folder holding `file` (its step read from the header when there).
std::string manifest_for(const std::string& file) {
  std::uint64_t step = 0;
  if (file.size() >= 40) {
    for (int i = 0; i < 8; ++i) step |= std::uint64_t{static_cast<unsigned char>(file[32 + i])} << (8 * i);
  }
  std::uint64_t trailer = 0;
  for (int i = 0; i < 8 && file.size() >= 8; ++i) {
    trailer |= std::uint64_t{static_cast<unsigned char>(file[file.size() - 8 + i])} << (8 * i);
  }
  return "pipetrain checkpoint manifest 1\nstep " + std::to_string(step % 1000) +
         "\nnum_stages 1\nmodel_hash " + hex(kHash) + "\nfile stage-0-of-1.ckpt " +
         std::to_string(file.size()) + " " + hex(trailer) + "\nend\n";
}

void write_seeds(const fs::path& out) {
  World& w = world();
  fs::create_directories(out);
  const fs::path saved = w.dir / "seed";
  rt::save_stage_checkpoint(saved, 0, 1, *w.stage, *w.optimizer,
                            rt::CheckpointMeta{3, kHash, {5, 0, 1}});
  std::ifstream in(rt::stage_checkpoint_path(saved, 0, 1), std::ios::binary);
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string body = file.substr(0, file.size() - 8);
  write(out / "stage-file", std::string(1, '\0') + body);
  write(out / "manifest", std::string(1, '\1') + manifest_for(file));
  write(out / "step-folder", std::string(1, '\2') + body);
  fs::remove_all(saved);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* seeds = std::getenv("FUZZ_CHECKPOINT_WRITE_SEEDS")) {
    write_seeds(seeds);
    std::exit(0);  // a tool mode of the fuzz program, not library code
  }
  pipetrain::runtime::set_logging(false);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  World& w = world();
  const std::string content(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    switch (data[0] % 3) {
      case 0: {
        write(rt::stage_checkpoint_path(w.dir, 0, 1), with_trailer(content));
        rt::load_stage_checkpoint(w.dir, 0, 1, *w.stage, *w.optimizer, kHash);
        break;
      }
      case 1:
        rt::parse_checkpoint_manifest(content, "fuzz");
        break;
      default: {
        const std::string file = with_trailer(content);
        write(rt::stage_checkpoint_path(w.dir, 0, 1), file);
        write(w.dir / rt::kCheckpointManifestName, manifest_for(file));
        rt::load_checkpoint_into_stage(w.dir, *w.stage, *w.optimizer, kHash);
        break;
      }
    }
  } catch (const pipetrain::Error&) {
    // the expected answer to a bad input
  }
  return 0;
}
