// pipetrain/pipeline.h: train your own model through any schedule, in a few lines.
//
//   pipetrain::ModelSpec model;                      // the whole model, as a list of layers
//   model.add<nn::Linear>(784, 512).add<nn::ReLU>().add<nn::Linear>(512, 10);
//   pipetrain::PipelineOptions options;              // schedule, P x D, M, optimizer
//   options.schedule = "zb-h1";
//   options.pipeline = 2;
//   options.microbatches = 4;
//   pipetrain::launch(2, "inprocess", [&](pipetrain::Transport& transport) {
//     pipetrain::Pipeline pipe(model, std::make_unique<nn::CrossEntropyLoss>(), options,
//                              transport);
//     for (...) auto result = pipe.train_step({features}, {labels});
//   });
//
// A ModelSpec is an ordered list of layer factories (DeepSpeed's LayerSpec idea): nothing is
// built until a Pipeline on some rank asks for the layers of its stages, so each rank holds
// only its part of the model. Layers are cut into contiguous stages (by parameter count,
// uniformly, by a cost per layer, or at explicit layer counts); each stage is an nn::Sequential.
// Layer i is built inside nn::InitScope(i + 1): its initial values depend on its constructor's
// seed and its index in the model, not on the cut, and layers that share a seed and a shape
// still start different.
//
// A Pipeline is one rank's share of a pipeline-parallel (P) x data-parallel (D) training run:
// every rank of the world builds one with the same ModelSpec and options and calls the same
// methods in the same order (they are collective). The schedule, the stages, the loss, the
// optimizer (built from exactly the parameters its stages own) and the runtime Executor are
// its own. train_step() splits the global batch along dim 0: replica d takes rows
// [d N/D, (d+1) N/D), cut into M microbatches.
//
// Errors: bad options throw InvalidArgument from the constructor on every rank alike; a bad
// batch (rows not divisible by D x M, tensors with different row counts, targets the loss
// refuses, a stage refusing its inputs) throws InvalidArgument from train_step/eval_step on
// every rank before any compute, and the Pipeline stays usable. A failure during compute or
// communication aborts the transport (see runtime/executor.h): the Pipeline is then unusable.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "pipetrain/comm/transport.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/model_spec.h"
#include "pipetrain/nn/sequential.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/checkpoint.h"
#include "pipetrain/runtime/executor.h"
#include "pipetrain/runtime/partition.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/schedule/schedule.h"

namespace pipetrain {

/// How a ModelSpec is cut into stages.
struct PartitionOptions {
  enum class Method {
    kParameters,  ///< balance parameter elements (the default)
    kUniform,     ///< balance the number of layers
    kCost,        ///< balance `layer_costs` (e.g. measured seconds per layer)
    kCounts,      ///< exactly `layers_per_stage`
  };
  Method method = Method::kParameters;
  std::vector<double> layer_costs;    ///< kCost: one per layer
  std::vector<int> layers_per_stage;  ///< kCounts: one per stage
};

/// The cut of `model` into `num_stages` stages. Throws InvalidArgument when the model has fewer
/// layers than stages ("[partition_model] the model has 3 layers, fewer than num_stages=4:
/// each stage needs at least one layer") and as partition_layers / partition_from_counts.
runtime::Partition partition_model(const ModelSpec& model, int num_stages,
                                   const PartitionOptions& options = {});

struct OptimizerOptions {
  enum class Kind { kAdamW, kSgd };
  Kind kind = Kind::kAdamW;
  double lr = 1e-3;           ///< used when train_step() is given no learning rate
  optim::AdamWConfig adamw;   ///< kind == kAdamW
  optim::SgdConfig sgd;       ///< kind == kSgd
};

/// One layer measured on this machine for one microbatch.
struct LayerProfile {
  double seconds = 0;          ///< forward + backward_input + backward_weight (median of repeats)
  /// What the layer keeps for a microbatch in flight: the larger of its bytes_kept() after
  /// forward and after backward_input (what it holds until backward_weight).
  std::size_t bytes_kept = 0;
  std::int64_t parameters = 0; ///< parameter elements
};

/// Builds the model on the CPU, layer after layer, and runs one microbatch of `inputs` (zeros:
/// valid ids for an embedding) through each: forward, then backward_input with zero output
/// gradients, then backward_weight, `repeats` times; returns each layer's median time, the
/// bytes it keeps after its forward (the activations a schedule holds per microbatch in flight)
/// and its parameter count. Use the times as PartitionOptions::layer_costs (Method::kCost) and
/// the bytes with estimate_memory(). Throws InvalidArgument when a layer refuses its input
/// (as Layer::output_spec), inputs does not hold exactly one spec, or repeats < 1.
std::vector<LayerProfile> profile_layers(const ModelSpec& model,
                                         const std::vector<TensorSpec>& inputs, int repeats = 3);

/// Estimated memory of one pipeline rank, in bytes.
struct RankMemory {
  std::int64_t parameters = 0;   ///< fp32 values of its stages' parameters
  std::int64_t gradients = 0;    ///< fp32 gradients
  std::int64_t optimizer = 0;    ///< optimizer state (AdamW: 2 values per parameter; SGD: 0)
  std::int64_t activations = 0;  ///< peak of what its stages keep for microbatches in flight
  int peak_in_flight = 0;        ///< stage-microbatches held at once (analyze_memory's peak_held)
  std::int64_t total() const { return parameters + gradients + optimizer + activations; }
};

/// Per pipeline rank: parameters, gradients and optimizer state of the layers `partition` gives
/// its stages, plus the schedule's peak number of stage-microbatches held at once times the
/// largest per-microbatch activation bytes of those stages (an upper bound: the peak may mix
/// cheaper stages). `profile` from profile_layers() with the microbatch's input specs.
std::vector<RankMemory> estimate_memory(const std::vector<LayerProfile>& profile,
                                        const runtime::Partition& partition,
                                        const Schedule& schedule,
                                        OptimizerOptions::Kind optimizer);

struct PipelineOptions {
  /// A make_schedule() name ("gpipe", "1f1b", "interleaved-1f1b", "zb-h1", "zb-v", ...),
  /// ignored when `custom_schedule` is set. A schedule with overlapped slots
  /// ("dualpipe-v-overlap") runs each slot's two actions in sequence (expand_overlap()), so it
  /// trains, and takes the time of, the plain one ("dualpipe-v").
  std::string schedule = "1f1b";
  /// A compute schedule of your own (expanded and lowered here); its ranks and microbatches win.
  std::optional<Schedule> custom_schedule;
  int pipeline = 1;         ///< P: pipeline ranks
  int data_parallel = 1;    ///< D: replicas; the world has P x D ranks
  int microbatches = 1;     ///< M per replica and step
  int stages_per_rank = 1;  ///< v (interleaved and looped schedules; V schedules use 2)
  PartitionOptions partition;
  OptimizerOptions optimizer;
  bool activation_checkpointing = false;
  runtime::ExecutorOptions executor;  ///< max_grad_norm, receive lookahead, ...
  /// Text naming the model (and whatever a resumed run must share with the saving one, e.g.
  /// its hyper-parameters); its hash is written into checkpoints and checked by load(). Empty:
  /// the parameter count of every layer.
  std::string model_id;
};

/// What train_step() returns (every rank sees the same numbers).
using StepResult = runtime::StepStats;

struct EvalResult {
  double loss = 0;  ///< mean over the global batch's microbatches; NaN without targets
  std::vector<double> microbatch_losses;
  /// The last stage's outputs for this replica's rows, concatenated along dim 0, on the ranks
  /// holding the last stage; empty on the others.
  TensorList outputs;
};

class Pipeline {
 public:
  /// Builds this rank's stages, the loss (kept only where the last stage is), the optimizer
  /// and the executor. Collective: checks that every rank runs the same options. Throws
  /// InvalidArgument for bad options, e.g.
  ///   "[Pipeline] pipeline=2 x data_parallel=2 = 4 ranks, the transport has 2"
  ///   "[partition_model] the model has 3 layers, fewer than num_stages=4: ..."
  Pipeline(const ModelSpec& model, std::unique_ptr<nn::Loss> loss, PipelineOptions options,
           Transport& transport);
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  /// One optimizer step on the global batch (inputs and targets: every tensor with the same
  /// number of rows N, a multiple of D x M). Every rank passes the same batch (only the first
  /// and last stage's ranks read it). lr < 0 means options.optimizer.lr.
  StepResult train_step(const TensorList& inputs, const TensorList& targets, double lr = -1);

  /// Forward only through the pipeline (nothing kept, parameters untouched); targets may be
  /// empty (no loss). Same batch rules as train_step.
  EvalResult eval_step(const TensorList& inputs, const TensorList& targets = {});

  /// save() and load() are collective: a rank that throws (a full disk, a bad file) leaves the
  /// others waiting in their barrier until the transport's deadline.
  /// Saves a checkpoint of step steps_done() under `save_dir` (step-<n>/, or
  /// step-<n>-stages-<S> when step-<n> holds another cut; committed by a manifest, see
  /// runtime/checkpoint.h), with `sampler` (the data position) in its metadata. Collective.
  /// Returns the committed folder, on every rank.
  std::filesystem::path save(const std::filesystem::path& save_dir,
                             const data::SamplerState& sampler = {});
  /// Loads a committed checkpoint folder saved by any cut of the same model (another P, D,
  /// schedule or partition) into the parameters and the optimizer state; steps_done() becomes
  /// its step (so Dropout masks continue where the saved run stopped). Collective. Returns its
  /// metadata (step, data position) and the number of stages of the run that saved it. Throws
  /// ParseError as runtime::load_checkpoint_into_stage (nothing is modified then), Error for a
  /// file it cannot open. Parameters are matched by name: tied copies that one cut shares
  /// (LayerSpec::share) must carry the same name in every layer to load on another cut (the
  /// GPT's are all "wte").
  runtime::LoadedCheckpoint load(const std::filesystem::path& step_dir);

  std::int64_t steps_done() const;
  int rank() const { return transport_.rank(); }
  const Schedule& schedule() const;
  const runtime::Topology& topology() const;
  const runtime::Partition& partition() const { return partition_; }
  /// This rank's stages, in increasing stage order.
  const std::vector<std::unique_ptr<nn::Sequential>>& stages() const { return stages_; }
  /// The parameters the optimizer updates: exactly those of this rank's stages.
  const std::vector<nn::Parameter*>& parameters() const;
  optim::Optimizer& optimizer() { return *optimizer_; }
  runtime::Executor& executor() { return *executor_; }

 private:
  // split_rows(), or on a bad batch the executor's agreement joined with no microbatches (so
  // every rank refuses together), then the rethrown error.
  std::vector<Microbatch> split(const TensorList& inputs, const TensorList& targets,
                                const char* fn, bool train);
  std::vector<Microbatch> split_rows(const TensorList& inputs, const TensorList& targets,
                                     const char* fn) const;

  PipelineOptions options_;
  Transport& transport_;
  runtime::Partition partition_;
  std::vector<std::unique_ptr<nn::Sequential>> stages_;
  std::unique_ptr<nn::Loss> loss_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::unique_ptr<runtime::Executor> executor_;
  std::uint64_t model_hash_ = 0;
};

/// Runs `body(transport)` once per rank and returns when every rank has finished:
///   "inprocess": world_size threads of this process, each with its own in-process transport;
///   "mpi":       this process's rank of an mpirun job (world_size must equal the job's size);
///                launch() starts MPI and ends it when `body` returns (an MpiSession, see
///                comm/mpi.h), so it runs once per process.
/// When a rank throws, the others are aborted (their waits end at once), and after every rank
/// has ended the root cause (the first rank that failed on its own) is rethrown. Throws
/// InvalidArgument for an unknown transport or a world_size that does not match.
void launch(int world_size, const std::string& transport,
            const std::function<void(Transport&)>& body, const TransportOptions& options = {});

}  // namespace pipetrain
