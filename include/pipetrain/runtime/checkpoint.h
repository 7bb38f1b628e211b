// pipetrain/runtime/checkpoint.h: per-stage checkpoints that resume training exactly, on the
// same pipeline cut or on another one, and that no crash or re-cut run can poison.
//
// One file per stage, "stage-<s>-of-<S>.ckpt", written by the rank that holds the stage (in
// data parallelism, by replica 0 only: the replicas are identical). A file holds:
//   header   magic "PTCKPT\0\1", format version, stage, num_stages, training step,
//            model hash, data position (SamplerState: seed, epoch, cursor)
//   params   count, then per parameter: name, shape, fp32 values
//   optim    kind, step count, buffers (name, fp32 values) of this stage's parameters
//   trailer  FNV-1a 64 checksum of every byte before it
// A file is written to "<path>.tmp", fsynced, renamed over <path>, and its folder fsynced. All
// integers are little-endian.
//
// A training run saves step n into a save directory in three moves (docs/runtime.md):
//   1. every stage file goes into the staging folder "<save>/step-<n>.tmp-<S>"
//      (checkpoint_staging_dir), one per stage, by whichever rank holds the stage;
//   2. after every file is written (the caller's barrier), one process calls
//      commit_checkpoint(): it re-reads every stage file, writes "manifest.txt" (step, S, model
//      hash, and the size and checksum of every stage file), fsyncs it and the folder, renames
//      the folder to "<save>/step-<n>" and fsyncs the save directory. The manifest is the
//      marker: a folder without it is not a checkpoint.
//   3. commit_checkpoint() removes every other "step-*.tmp-*" entry of the save directory
//      (what a crashed save left behind).
// A complete folder is never written into. When "<save>/step-<n>" already holds a complete
// checkpoint of another cut (a run resumed with another P), the new one is committed as
// "<save>/step-<n>-stages-<S>" instead; a complete checkpoint of the same cut and step is
// replaced: the two folders are swapped in one atomic rename (RENAME_EXCHANGE), then the old one
// is removed.
// One save directory serves one run at a time.
//
// There is no RNG state beyond the data position: the GPT has no dropout, and the sampler's
// order is a pure function of (seed, epoch).
//
// Two ways back in:
// - load_stage_checkpoint(): the same cut. Stage s of S reads the file of stage s of S (no
//   manifest needed: a low-level reader of one file).
// - load_checkpoint_into_stage(): any cut of the same model, from a committed step folder.
//   The manifest names the files; each parameter of the stage is found by its global name
//   ("h.3.attn.c_attn.weight"), whichever stage saved it. So a run saved with P = 2 can continue
//   with P = 4, another schedule, other microbatches or chunks per rank.
// The model hash is the caller's hash of what must not change across a resume (model shape,
// optimizer and its hyper-parameters, data, batch and sequence length); it must leave out the
// pipeline layout (P, D, M, schedule, chunks per rank) for a resume on another cut to pass.
//
// Every reader range-checks what it reads before using it: 0 <= step <= kMaxCheckpointStep,
// 0 <= stage < num_stages <= kMaxCheckpointStages, tensor dimensions in [0, 2^31) whose product
// fits the file, and all sizes against the bytes actually present.
#pragma once

#include <cstdint>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/data/batch_sampler.h"
#include "pipetrain/nn/parameter.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/stage.h"

namespace pipetrain::runtime {

/// Largest training or optimizer step a checkpoint may hold (the trainers count steps in int).
inline constexpr std::int64_t kMaxCheckpointStep = std::numeric_limits<std::int32_t>::max();
/// Largest number of pipeline stages a checkpoint may have.
inline constexpr int kMaxCheckpointStages = 1 << 16;
/// The marker of a complete step folder.
inline constexpr const char* kCheckpointManifestName = "manifest.txt";

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
/// The file is written to "<path>.tmp", fsynced, renamed, and `dir` fsynced.
/// Throws InvalidArgument unless 0 <= stage < num_stages <= kMaxCheckpointStages and
/// 0 <= meta.step <= kMaxCheckpointStep; Error naming the path when the file cannot be written.
/// A training run writes into checkpoint_staging_dir() and then calls commit_checkpoint().
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
///   "[load_stage_checkpoint] 'p': step -5 must be in [0, 2147483647]"
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
/// `dir` must be a committed step folder: its manifest.txt names S and the files
/// "stage-<s>-of-<S>.ckpt" (s = 0..S-1) with their sizes and checksums; any other file of the
/// folder is ignored. Checks each file against the manifest (size, checksum, step) and on its
/// own (magic, version, checksum, stage number, ranges), that all agree on the metadata and on the
/// optimizer kind and step count, that the model hash is `expected_model_hash`, and that
/// copies of a tied parameter saved by two stages ("wte" on the first and last stage) are
/// bitwise equal (compared through a 64-bit FNV-1a of their bytes), values and optimizer
/// buffers. Then every parameter of `stages` is taken by name; a tied parameter held twice by
/// these stages gets the same value in both copies. Only the values these stages need are kept
/// in memory (every rank still reads every file). Nothing is modified unless all checks pass.
///
/// Throws ParseError, each message starting "[load_checkpoint_into_stage] ":
///   "'d': does not exist"
///   "'d': holds no manifest.txt, so it is not a complete checkpoint (a save that did not
///    finish, or a folder written before manifests existed)"
///   "'d/manifest.txt': line 3: num_stages=0 must be in [1, 65536]"
///   "'d/stage-1-of-3.ckpt': missing (the manifest lists it)"
///   "'d/stage-1-of-3.ckpt': holds 100 bytes, the manifest says 120"
///   "'d/stage-1-of-3.ckpt': checksum 0x.. differs from the manifest's 0x.."
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

/// "<save_dir>/step-<step>.tmp-<num_stages>": where the stage files of one save are written
/// before commit_checkpoint() completes it.
std::filesystem::path checkpoint_staging_dir(const std::filesystem::path& save_dir,
                                             std::int64_t step, int num_stages);

/// What manifest.txt says (see the top of this file).
struct CheckpointManifest {
  struct File {
    std::string name;             ///< "stage-<s>-of-<S>.ckpt", in stage order
    std::uint64_t size = 0;       ///< bytes
    std::uint64_t checksum = 0;   ///< the file's FNV-1a trailer
  };
  std::int64_t step = 0;
  int num_stages = 0;
  std::uint64_t model_hash = 0;
  std::vector<File> files;
};

/// Parses the text of a manifest; `where` names it in errors. Range-checks every field and
/// requires the final "end" line. Throws ParseError "[parse_checkpoint_manifest] 'where': line
/// <k>: <what>".
CheckpointManifest parse_checkpoint_manifest(std::string_view text, const std::string& where);

/// Completes the save of step `step` (see the top of this file): checks every stage file of
/// checkpoint_staging_dir(save_dir, step, num_stages) (checksum, stage number, step, one model
/// hash), removes anything else from the staging folder, writes and fsyncs manifest.txt,
/// renames the folder into place and fsyncs the save directory, then removes stale
/// "step-*.tmp-*" entries. Returns the final folder ("<save>/step-<n>", or
/// "<save>/step-<n>-stages-<S>" when step-<n> holds a complete checkpoint of another cut).
/// Call it from one process, after every stage file is written. Throws ParseError or Error
/// naming the file when a stage file is missing or wrong.
std::filesystem::path commit_checkpoint(const std::filesystem::path& save_dir, std::int64_t step,
                                        int num_stages);

/// The newest complete step folder of `save_dir` (largest step whose manifest.txt parses and
/// whose listed files exist with their sizes; of several folders of the same step, e.g.
/// "step-20" and "step-20-stages-4", the one whose manifest was written last, then the larger
/// name), or nullopt when there is none. Staging folders ("*.tmp-*") and folders without a
/// manifest are ignored.
std::optional<std::filesystem::path> find_latest_checkpoint(const std::filesystem::path& save_dir);

/// What `--resume PATH` means: PATH itself when it holds manifest.txt, else the newest complete
/// step folder of PATH taken as a save directory. Throws Error:
///   "[resolve_checkpoint] 'p': does not exist"
///   "[resolve_checkpoint] 'p': is not a directory"
///   "[resolve_checkpoint] 'p': holds no complete checkpoint (no manifest.txt in it or in any
///    step-<n> folder)"
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);

/// Creates `dir` when missing and checks that a file can be created, written, fsynced and
/// removed in it; throws Error "[function] cannot write in 'dir': <reason>" otherwise. Call it
/// before training, so an unwritable save directory is found before the work it should keep.
void check_directory_writable(const std::filesystem::path& dir, const char* function);

}  // namespace pipetrain::runtime
