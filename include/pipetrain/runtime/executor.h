// pipetrain/runtime/executor.h: runs one rank's lowered schedule, one training step at a time.
//
// Every rank of a run builds one Executor with the same lowered schedule, its own Stage objects
// (the stages Schedule::stages_of_rank(pp_index) names, in increasing order), its Transport, the
// Loss (on the rank holding the last stage) and its optimizer, then calls step() once per batch
// (and evaluate() for forward-only passes). One step:
//
//  1. Agreement, before any compute (collective over the world, no abort on failure): every
//     rank checks its microbatches (count, and the same input and target specs in every
//     microbatch: a ragged batch is refused) and all-reduces a hash of their specs with an error
//     flag. When any rank found an error, or the ranks pass different shapes, every rank throws
//     InvalidArgument and the Executor stays usable. When the specs differ from the last agreed
//     ones (the first step, a smaller last batch), the boundary specs are agreed stage by stage:
//     the holder of stage s computes Stage::output_specs(its input specs) and shares them, and
//     the last stage's holder checks them against the targets with Loss::check(); a stage or
//     loss that refuses is reported on every rank, again before any compute.
//  2. Zeroes the gradients and walks the rank's slots in order:
//       RECV_F / RECV_B  posts the receive into fresh buffers of the agreed specs (receives
//                        are posted in schedule order, each with its whole communication group
//                        and up to recv_lookahead_groups groups ahead), never waits;
//       SEND_F / SEND_B  posts the send of what the preceding F / B / I produced; sends are
//                        waited at the end of the step (or tested on the way);
//       F  (s, m)        takes its inputs (the microbatch's inputs on stage 0, the previous
//                        stage's outputs from this rank or its RECV_F), runs Stage::forward; on
//                        the last stage, Loss::forward(outputs, targets) gives the loss;
//       B / I (s, m)     takes the output gradients (Loss::backward(m, 1/M) on the last stage,
//                        else from this rank or its RECV_B), runs backward / backward_input;
//       W  (s, m)        runs backward_weight.
//     A boundary carrying one tensor sends it as it is; several tensors travel packed in one
//     message (unpacked as views, no copy). Gradients travel for floating tensors only.
//  3. After the last slot: waits the sends; sums the gradients of tied parameters over the ranks
//     that hold a copy; averages gradients over the data-parallel group; all-reduces over the
//     world the sum of squares of the gradients (each tied copy counted once), a non-finite flag
//     and every microbatch's loss, so every rank sees the same global gradient norm, the same
//     losses and the same decision. A NaN/Inf in any loss or gradient makes every rank skip the
//     update (StepStats::skipped, logged as a warning); otherwise gradients are clipped to
//     max_grad_norm (when > 0) and the optimizer takes exactly one step.
//
// Loss scaling: see stage.h: the gradient is that of the mean over the global batch's
// microbatches of their losses, as a single device accumulating the same microbatches.
// Limits (stage.h): at most 8 tensors of at most 8 dimensions cross a boundary; at most 2 tied
// keys per stage.
//
// Failures: every wait carries the transport's deadline. A failure after the agreement (during
// compute or communication) makes the executor call Transport::abort() (so the other ranks stop
// waiting at once) and throw an exception of the same category (TimeoutError, AbortedError,
// MismatchError, CommError, InvalidArgument, otherwise Error) whose message names the rank, the
// action, the microbatch and the peer, then the original message, then the rank's row of the
// schedule grid with the failing slot marked:
//   [Executor::step] rank 1 failed at 1F0 (microbatch 0, peer rank 0, slot 1) in step 0:
//   [InProcessTransport::wait] rank 1 timed out after 50 ms waiting for RECV_F ...
//   rank 1: 1RECV_F0 [1F0]! 1SEND_B0 ...
// After such a failure the Executor (and its transport) cannot be used again: step() and
// evaluate() then throw AbortedError quoting the failure.
//
// Microbatch ids: stages and the loss see replica d's m-th microbatch as id d * M + m (its
// index in the global batch), so that randomness derived from the id (Dropout) is that of one
// device accumulating all D * M microbatches. Tied parameters: on the first step, every copy
// takes the value of the copy on the lowest stage holding its key.
//
// Thread safety: an Executor is driven by one thread (its rank's).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipetrain/comm/transport.h"
#include "pipetrain/nn/loss.h"
#include "pipetrain/optim/optimizer.h"
#include "pipetrain/runtime/topology.h"
#include "pipetrain/schedule/schedule.h"
#include "pipetrain/stage.h"

namespace pipetrain::runtime {

struct ExecutorOptions {
  /// Clip the global gradient norm to this value; <= 0 disables clipping.
  double max_grad_norm = 0.0;
  /// How many communication groups beyond the current one have their receives posted early.
  int recv_lookahead_groups = 1;
  /// Barrier at the start of every step, so that the timelines of all ranks share an origin
  /// (the agreement's all-reduce already synchronises the ranks; this adds an explicit one).
  bool barrier_at_step_start = true;
  /// Log skipped steps (spdlog warning with the rank prefix).
  bool log_skipped_steps = true;
};

/// One slot's measured execution. Times are seconds since the start of the step (after the
/// optional barrier), std::chrono::steady_clock.
struct ActionTiming {
  int slot = 0;       ///< index into Schedule::rank_slots(pp_index)
  Action action;
  double start = 0;   ///< compute: after the awaited receive completed; comm: post time
  double end = 0;
  double wait = 0;    ///< seconds spent waiting for the input's receive before start
};

struct StepStats {
  std::int64_t step = 0;       ///< 0 for the first step()
  double loss = 0;             ///< mean loss over the global batch (all replicas), every rank
  /// Every microbatch's loss, replica by replica (D * M values, replica d's microbatch m at
  /// d * M + m), on every rank.
  std::vector<double> microbatch_losses;
  double grad_norm = 0;        ///< global L2 norm before clipping, every rank
  double clip_coefficient = 1; ///< factor applied to the gradients (1 when not clipped)
  bool skipped = false;        ///< non-finite loss or gradient somewhere: no update anywhere
  double seconds = 0;          ///< wall time of the step on this rank
  std::vector<ActionTiming> timeline;  ///< this rank's actions, in execution order
};

struct EvalStats {
  /// Mean loss over all replicas' microbatches (every rank); NaN when no targets were given.
  double loss = 0;
  /// As StepStats::microbatch_losses (empty when no targets were given).
  std::vector<double> microbatch_losses;
  /// The last stage's outputs of this replica's microbatches, in microbatch order, on the rank
  /// holding the last stage; empty on other ranks.
  std::vector<TensorList> outputs;
  double seconds = 0;
};

class Executor {
 public:
  /// `schedule` must be valid and lowered (or have a single rank); it is validated here.
  /// Overlapped slots (schedule.h) run in sequence, the F first: the Executor runs (and
  /// schedule() returns) expand_overlap() of `schedule` (passes.h).
  /// `rank` is transport.rank(); its pipeline position is topology.pp_index(rank). `stages` are
  /// this rank's stages in increasing stage order; `loss` is required on the rank holding the
  /// last stage (ignored elsewhere); `optimizer` (may be null: no update, for tests) updates the
  /// parameters of all of them. Stages, loss, transport and optimizer must outlive the Executor.
  /// Throws InvalidArgument:
  ///   "[Executor] transport world_size=2 must equal topology world_size=4"
  ///   "[Executor] schedule has 2 ranks, topology pipeline_size=4"
  ///   "[Executor] schedule '1f1b' has 2 ranks but no communication: lower() it first"
  ///   "[Executor] rank 0 holds stages [0, 3] (2 stages), got 1 Stage objects"
  ///   "[Executor] rank 1 holds the last stage (3) but has no Loss"
  /// and ScheduleError (validate_or_throw) for an invalid schedule.
  Executor(Schedule schedule, Topology topology, Transport& transport, std::vector<Stage*> stages,
           nn::Loss* loss, optim::Optimizer* optimizer, ExecutorOptions options = {});

  /// Runs one training step over `microbatches` (this replica's M microbatches; every rank
  /// passes them with the same specs, only the first and last stage read them) with learning
  /// rate `lr`. Collective: every rank of the world must call it. Throws InvalidArgument
  /// (every rank, before any compute; the Executor stays usable) for a wrong count, a ragged
  /// batch, ranks passing different shapes, a stage refusing its inputs or a loss refusing the
  /// targets:
  ///   "[Executor::step] microbatch 3 has inputs ([2, 8] fp32) but microbatch 0 has
  ///    ([4, 8] fp32): every microbatch of a step must have the same shapes"
  ///   "[Executor::step] stage 1 (rank 1) cannot take its inputs ([4, 16] fp32):
  ///    [Linear::output_spec] input has shape [4, 16], expected [..., 8]"
  /// (on the other ranks: "... cannot take its inputs (rank 1's error says why)").
  /// then the errors described in the file comment.
  StepStats step(const std::vector<Microbatch>& microbatches, double lr);

  /// Forward only (the schedule's forward_only() form, Stage::infer, nothing kept): returns the
  /// last stage's outputs and, when the microbatches have targets, the loss. Collective, with
  /// the same agreement and failure rules as step(). Parameters and gradients are untouched.
  EvalStats evaluate(const std::vector<Microbatch>& microbatches);

  const Schedule& schedule() const { return schedule_; }
  const Topology& topology() const { return topology_; }
  int rank() const { return rank_; }
  int pp_index() const { return pp_index_; }
  std::int64_t steps_done() const { return step_; }
  /// Sets the index of the next step (e.g. a resumed run's step): Stage::begin_step() receives
  /// it, so randomness derived from (step, microbatch) continues where the saved run stopped.
  /// Throws InvalidArgument for a negative value.
  void set_steps_done(std::int64_t steps);
  /// Parameters of this rank's stages (each once).
  const std::vector<nn::Parameter*>& parameters() const { return params_; }
  /// The agreed specs of boundary b (b = 0: the first stage's inputs; b = s: stage s's
  /// inputs; b = num_stages: the model's outputs), after the first step. Empty before.
  const std::vector<std::vector<TensorSpec>>& boundary_specs() const { return boundaries_; }

 private:
  struct StepState;
  struct Plan {
    Schedule schedule;
    std::vector<int> group_of_slot;   // communication group index of each slot (-1: compute)
    std::vector<int> groups_started;  // number of groups that start at or before each slot
    explicit Plan(Schedule s);
  };
  enum class Mode { kTrain, kEval };
  // agree_specs(), failing the step (fail()) unless it refused the batch with InvalidArgument.
  void agree(StepState& state, const Plan& plan, const std::vector<Microbatch>& microbatches,
             const char* fn);
  void agree_specs(const std::vector<Microbatch>& microbatches, Mode mode, const char* fn);
  void agree_stages();
  void propagate_specs(const std::vector<Microbatch>& microbatches, Mode mode, const char* fn);
  void run_slots(StepState& state, const Plan& plan, const std::vector<Microbatch>& mbs);
  void finish_step(StepState& state, double lr);
  [[noreturn]] void fail(StepState& state, const Plan& plan, const std::exception& e,
                         const char* fn);
  std::string grid_row(const Plan& plan, int slot) const;
  void check_usable(const char* fn) const;
  Stage* local_stage(int stage) const;

  Schedule schedule_;
  Plan train_, eval_;
  Topology topology_;
  Transport& transport_;
  std::vector<Stage*> stages_;
  std::vector<int> stage_ids_;
  nn::Loss* loss_;
  optim::Optimizer* optimizer_;
  ExecutorOptions options_;
  int rank_;
  int pp_index_;
  int dp_index_;
  std::int64_t step_ = 0;
  bool stages_checked_ = false;
  std::uint64_t agreed_signature_ = 0;  // hash of the microbatch specs of the agreed boundaries
  std::vector<std::vector<TensorSpec>> boundaries_;
  std::vector<nn::Parameter*> params_;
  std::vector<nn::Parameter*> norm_params_;  // tied copies counted once
  std::string failure_;  // what made step() or evaluate() abort, "" while usable
  /// (group of ranks, local copies) per tied key, in key order.
  struct TiedGroup {
    std::string key;
    std::vector<int> ranks;
    std::vector<nn::Parameter*> copies;
  };
  std::vector<TiedGroup> tied_;
};

/// Builds the header of a communication action carrying `shape` / `dtype` (what both ends
/// agree on). Exposed for tests.
MessageHeader comm_header(std::int64_t step, const Action& action, const Shape& shape,
                          DType dtype);

/// Checks that every rank of the world runs the same configuration: all-gathers (through
/// all_reduce_sum) a 64-bit hash of `config_text` and throws InvalidArgument on every rank when
/// they differ, naming the first rank that disagrees with rank 0:
///   "[check_same_configuration] rank 1 runs configuration hash 0x... but rank 0 runs 0x...:
///    start every rank with the same options"
/// `config_text` is any canonical text of the options (e.g. "schedule=1f1b P=2 M=4 ...").
void check_same_configuration(Transport& transport, const std::string& config_text);

/// FNV-1a 64-bit hash (stable across platforms and runs).
std::uint64_t fnv1a64(const std::string& text);

}  // namespace pipetrain::runtime
