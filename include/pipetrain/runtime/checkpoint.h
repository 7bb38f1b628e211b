// pipetrain/runtime/checkpoint.h: per-stage checkpoints that resume training exactly, on the
// same pipeline cut or on another one.
//
// One file per stage, "<dir>/stage-<s>-of-<S>.ckpt", written by the rank that holds the stage
// (in data parallelism, by replica 0 only: the replicas are identical). A file holds:
//   header   magic "PTCKPT\0\1", format version, stage, num_stages, training step,
//            model hash, data position (SamplerState: seed, epoch, cursor)
//   params   count, then per parameter: name, shape, fp32 values
//   optim    kind, step count, buffers (name, fp32 values) of this stage's parameters
//   trailer  FNV-1a 64 checksum of every byte before it
// The file is written to "<path>.tmp" and renamed over <path>, so a crash never leaves a
// half-written checkpoint under the final name. All integers are little-endian.
//
// There is no RNG state beyond the data position: the GPT has no dropout, and the sampler's
// order is a pure function of (seed, epoch).
//
// Two ways back in:
// - load_stage_checkpoint(): the same cut. Stage s of S reads the file of stage s of S.
// - load_checkpoint_into_stage(): any cut of the same model. Every stage file of the directory
//   is read and checked, and each parameter of the stage is found by its global name
//   ("h.3.attn.qkv.weight"), whichever stage saved it. So a run saved with P = 2 can continue
//   with P = 4, another schedule, other microbatches or chunks per rank.
// The model hash is the caller's hash of what must not change across a resume (model shape,
// optimizer and its hyper-parameters, data, batch and sequence length); it must leave out the
// pipeline layout (P, D, M, schedule, chunks per rank) for a resume on another cut to pass.
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/stage.h"

namespace pipetrain::runtime {

struct CheckpointMeta {
  std::int64_t step = 0;            ///< optimizer steps done
  std::uint64_t model_hash = 0;     ///< e.g. fnv1a64 of the options that must not change
                                    ///< across a resume (see the top of this file)
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
///   "[load_stage_checkpoint] 'p': model hash 0x.. differs from this run's 0x.."
///   "[load_stage_checkpoint] 'p': parameter 3 is 'h.0.ln_1.weight' [16], expected
///    'h.0.ln_1.bias' [16]"
/// and Error when the file cannot be opened.
CheckpointMeta load_stage_checkpoint(const std::filesystem::path& dir, int stage, int num_stages,
                                     Stage& stage_object, optim::Optimizer& optimizer,
                                     std::uint64_t expected_model_hash);

/// What load_checkpoint_into_stage() found.
struct LoadedCheckpoint {
  CheckpointMeta meta;  ///< as every file of the checkpoint holds it
  int num_stages = 0;   ///< S of the run that saved it (files "stage-<s>-of-<S>.ckpt")
};

/// Loads the parameters of `stages` (one rank's stages, any cut of the saved model) and their
/// buffers of `optimizer` (the other buffers are kept) from the checkpoint in `dir`, whatever
/// pipeline cut saved it, and sets the optimizer's step count to the saved one.
///
/// Reads every "stage-<s>-of-<S>.ckpt" of `dir` (s = 0..S-1, all present, one S), checks each
/// (magic, version, checksum, stage number), checks that all agree on the metadata and on the
/// optimizer kind and step count, that the model hash is `expected_model_hash`, and that
/// copies of a tied parameter saved by two stages ("wte" on the first and last stage) are
/// bitwise equal (compared through a 64-bit FNV-1a of their bytes), values and optimizer
/// buffers. Then every parameter of `stages` is taken by name; a tied parameter held twice by
/// these stages gets the same value in both copies. Only the values these stages need are kept
/// in memory (every rank still reads every file). Nothing is modified unless all checks pass.
///
/// Throws ParseError, each message starting "[load_checkpoint_into_stage] ":
///   "'d': holds no stage-<s>-of-<S>.ckpt file"
///   "'d': holds checkpoints of 2 and 4 stages"
///   "'d/stage-1-of-3.ckpt': missing (a checkpoint of 3 stages has one file per stage)"
///   "'p': not a pipetrain checkpoint (bad magic)", "'p': checksum mismatch: ...",
///   "'p': truncated (...)", "'p': holds stage 0 of 2, expected stage 1 of 2"
///   "'p': model hash 0x1234 differs from this run's 0x63"
///   "'p1': step 4, data position (seed 5, epoch 0, cursor 16) differ from 'p0': step 2,
///    data position (seed 5, epoch 0, cursor 8)"
///   "'p1': optimizer step 4 differs from 'p0': optimizer step 2"
///   "'p': optimizer 'sgd', this run uses 'adamw'"
///   "'p1': parameter 'wte' differs from its copy in 'p0'" (also "optimizer buffer 'wte/m'")
///   "'d': parameter 'h.2.ln_1.weight' of this stage is not in the checkpoint"
///   "'d': parameter 'wte' is [64, 16] in the checkpoint, this stage has [32, 16]"
///   "'d': optimizer buffer 'wte/m' is not in the checkpoint"
///   "'d': optimizer buffer 'wte/m' holds 1024 values in the checkpoint, this run has 512"
/// and Error when a file cannot be opened.
LoadedCheckpoint load_checkpoint_into_stage(const std::filesystem::path& dir,
                                            std::span<Stage* const> stages,
                                            optim::Optimizer& optimizer,
                                            std::uint64_t expected_model_hash);

/// The same for one stage.
LoadedCheckpoint load_checkpoint_into_stage(const std::filesystem::path& dir, Stage& stage,
                                            optim::Optimizer& optimizer,
                                            std::uint64_t expected_model_hash);

}  // namespace pipetrain::runtime
