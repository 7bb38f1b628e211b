// pipetrain/runtime/checkpoint.h: per-stage checkpoints that resume training exactly.
//
// One file per stage, "<dir>/stage-<s>-of-<S>.ckpt", written by the rank that holds the stage
// (in data parallelism, by replica 0 only: the replicas are identical). A file holds:
//   header   magic "PTCKPT\0\1", format version, stage, num_stages, training step,
//            configuration hash, data position (SamplerState: seed, epoch, cursor)
//   params   count, then per parameter: name, shape, fp32 values
//   optim    kind, step count, buffers (name, fp32 values) of this stage's parameters
//   trailer  FNV-1a 64 checksum of every byte before it
// The file is written to "<path>.tmp" and renamed over <path>, so a crash never leaves a
// half-written checkpoint under the final name. All integers are little-endian.
//
// There is no RNG state beyond the data position: the GPT has no dropout, and the sampler's
// order is a pure function of (seed, epoch).
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/stage.h"

namespace pipetrain::runtime {

struct CheckpointMeta {
  std::int64_t step = 0;            ///< optimizer steps done
  std::uint64_t config_hash = 0;    ///< e.g. fnv1a64 of the run's canonical options
  data::SamplerState sampler;       ///< where the data continues
  bool operator==(const CheckpointMeta&) const = default;
};

/// "<dir>/stage-<stage>-of-<num_stages>.ckpt".
std::filesystem::path stage_checkpoint_path(const std::filesystem::path& dir, int stage,
                                            int num_stages);

/// Writes the checkpoint of one stage: its parameters and the buffers of `optimizer` that
/// belong to them (matched by the "<parameter name>/" prefix). Creates `dir` when missing.
/// Throws Error naming the path when the file cannot be written.
void save_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                           Stage& stage_object, const optim::Optimizer& optimizer,
                           const CheckpointMeta& meta);

/// Reads a stage's checkpoint into `stage_object`'s parameters and this stage's buffers of
/// `optimizer` (the other buffers are kept), and returns the metadata. Nothing is modified
/// unless the whole file checks out. Throws ParseError naming the path:
///   "[load_stage_checkpoint] 'p': not a pipetrain checkpoint (bad magic)"
///   "[load_stage_checkpoint] 'p': checksum mismatch: stored 0x.., computed 0x.."
///   "[load_stage_checkpoint] 'p': truncated (needs 120 bytes at offset 64, file has 100)"
///   "[load_stage_checkpoint] 'p': holds stage 1 of 2, expected stage 0 of 2"
///   "[load_stage_checkpoint] 'p': configuration hash 0x.. differs from this run's 0x.."
///   "[load_stage_checkpoint] 'p': parameter 3 is 'h.0.ln_1.weight' [16], expected
///    'h.0.ln_1.bias' [16]"
/// and Error when the file cannot be opened.
CheckpointMeta load_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                                     Stage& stage_object, optim::Optimizer& optimizer,
                                     std::uint64_t expected_config_hash);

}  // namespace pipetrain::runtime
