// pipetrain/runtime/executor.h: runs one rank's lowered schedule, one training step at a time.
//
// Every rank of a run builds one Executor with the same lowered schedule, its own Stage objects
// (the stages Schedule::stages_of_rank(pp_index) names, in increasing order), its Transport and
// its optimizer, then calls step() once per batch. One step:
//
//  1. Zeroes the gradients. On the first step only, a shape handshake (an all-reduce over the
//     pipeline replica) checks that every stage is held by exactly one rank and that each
//     stage's output shape and dtype are what the next stage expects, so a mismatch between
//     neighbouring stages is reported by every rank before any point-to-point transfer.
//  2. Walks the rank's slots in order:
//       RECV_F / RECV_B  posts the receive into a fresh buffer (receives are posted in schedule
//                        order, each with its whole communication group and up to
//                        recv_lookahead_groups groups ahead), never waits;
//       SEND_F / SEND_B  posts the send of the tensor the preceding F / B / I produced; sends
//                        are waited at the end of the step (or tested on the way);
//       F  (s, m)        waits for its RECV_F (unless s is the first stage, which takes the
//                        microbatch's int32 tokens [b, T], or s-1 is on this rank), runs
//                        Stage::forward; the last stage sets the targets first and its loss is
//                        recorded;
//       B / I (s, m)     waits for its RECV_B (unless s is the last stage, whose output gradient
//                        is the loss scale 1/M, or s+1 is on this rank), runs backward /
//                        backward_input;
//       W  (s, m)        runs backward_weight.
//     Forward and backward run exactly in schedule order; a receive is waited only by the
//     action that consumes it, so posting early can only let peers progress sooner.
//  3. After the last slot: waits the sends; sums the gradients of tied parameters (e.g. the
//     token embedding on the first and last stage) over the ranks that hold a copy; averages
//     gradients over the data-parallel group (Topology::data_parallel_group); all-reduces over
//     the whole world the sum of squares of the gradients (each tied copy counted once), a
//     non-finite flag and the loss; so every rank sees the same global gradient norm, the same
//     loss and the same decision. A NaN/Inf in any loss or gradient makes every rank skip the
//     update (StepStats::skipped, logged as a warning); otherwise gradients are clipped to
//     max_grad_norm (when > 0) and the optimizer takes exactly one step.
//
// Loss scaling: each microbatch's loss is scaled by 1/M (M = microbatches per replica) and data
// parallelism averages over the D replicas, so the gradient is that of the mean loss over the
// global batch, as a single device training on the whole batch with gradient accumulation.
//
// Failures: every wait carries the transport's deadline. On any exception the executor calls
// Transport::abort() (so the other ranks stop waiting at once) and throws an exception of the
// same category (TimeoutError, AbortedError, MismatchError, CommError, InvalidArgument,
// otherwise Error) whose message names the rank, the action, the microbatch and the peer, then
// the original message, then the rank's row of the schedule grid with the failing slot marked:
//   [Executor::step] rank 1 failed at 1F0 (microbatch 0, peer rank 0, slot 1) in step 0:
//   [InProcessTransport::wait] rank 1 timed out after 50 ms waiting for RECV_F ...
//   rank 1: 1RECV_F0 [1F0]! 1SEND_B0 ...
// After a failure the Executor (and its transport) must not be used again.
//
// Thread safety: an Executor is driven by one thread (its rank's).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pipetrain/comm/transport.h"
#include "pipetrain/data/batch_sampler.h"
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
  /// Barrier at the start of every step, so that the timelines of all ranks share an origin.
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
  double grad_norm = 0;        ///< global L2 norm before clipping, every rank
  double clip_coefficient = 1; ///< factor applied to the gradients (1 when not clipped)
  bool skipped = false;        ///< non-finite loss or gradient somewhere: no update anywhere
  double seconds = 0;          ///< wall time of the step on this rank
  std::vector<ActionTiming> timeline;  ///< this rank's actions, in execution order
};

class Executor {
 public:
  /// `schedule` must be valid and lowered (or have a single rank); it is validated here.
  /// `rank` is transport.rank(); its pipeline position is topology.pp_index(rank). `stages` are
  /// this rank's stages in increasing stage order; `optimizer` (may be null: no update, for
  /// tests) updates the parameters of all of them. `activation_shape` / `activation_dtype`
  /// describe every tensor that crosses a stage boundary for one microbatch (inputs of stages
  /// 1..S-1 and their gradients), e.g. [b, T, C] fp32.
  /// Stages, transport and optimizer must outlive the Executor.
  /// Throws InvalidArgument:
  ///   "[Executor] transport world_size=2 must equal topology world_size=4"
  ///   "[Executor] schedule has 2 ranks, topology pipeline_size=4"
  ///   "[Executor] schedule '1f1b' has 2 ranks but no communication: lower() it first"
  ///   "[Executor] rank 0 holds stages [0, 3] (2 stages), got 1 Stage objects"
  ///   "[Executor] stage 3 is the last stage but its Stage says is_last()=false"
  /// and ScheduleError (validate_or_throw) for an invalid schedule.
  Executor(Schedule schedule, Topology topology, Transport& transport, std::vector<Stage*> stages,
           optim::Optimizer* optimizer, Shape activation_shape,
           DType activation_dtype = DType::kFloat32, ExecutorOptions options = {});

  /// Runs one training step over `microbatches` (this replica's M microbatches, each
  /// [b, T] tokens and targets; every rank passes them, only the first and last stage read
  /// them) with learning rate `lr`. Collective: every rank of the world must call it.
  /// Throws InvalidArgument (before any transfer) when microbatches.size() != M, then the
  /// errors described in the file comment.
  StepStats step(const std::vector<data::Batch>& microbatches, double lr);

  /// The shape handshake of the first step, callable on its own (collective over the pipeline
  /// replica). Throws InvalidArgument on every rank, naming both stages and ranks:
  ///   "[Executor] stage 0 (rank 0) outputs [2, 4, 8] fp32 but stage 1 (rank 1) expects
  ///    [2, 4, 16] fp32"
  void check_shapes(const Shape& token_shape);

  const Schedule& schedule() const { return schedule_; }
  const Topology& topology() const { return topology_; }
  int rank() const { return rank_; }
  int pp_index() const { return pp_index_; }
  std::int64_t steps_done() const { return step_; }
  /// Parameters of this rank's stages (each once).
  const std::vector<nn::Parameter*>& parameters() const { return params_; }

 private:
  struct StepState;
  void run_slots(StepState& state, const std::vector<data::Batch>& microbatches);
  void finish_step(StepState& state, double lr);
  std::string grid_row(int slot) const;
  Stage* local_stage(int stage) const;

  Schedule schedule_;
  Topology topology_;
  Transport& transport_;
  std::vector<Stage*> stages_;
  std::vector<int> stage_ids_;
  optim::Optimizer* optimizer_;
  Shape activation_shape_;
  DType activation_dtype_;
  ExecutorOptions options_;
  int rank_;
  int pp_index_;
  int dp_index_;
  std::int64_t step_ = 0;
  bool shapes_checked_ = false;
  std::vector<nn::Parameter*> params_;
  std::vector<nn::Parameter*> norm_params_;  // tied copies counted once
  /// (group of ranks, local copies) per tied key, in key order.
  struct TiedGroup {
    std::string key;
    std::vector<int> ranks;
    std::vector<nn::Parameter*> copies;
  };
  std::vector<TiedGroup> tied_;
  std::vector<int> group_of_slot_;  // communication group index of each slot (-1: compute)
  std::vector<int> groups_started_;  // number of groups that start at or before each slot
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
