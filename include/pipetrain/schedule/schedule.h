// pipetrain/schedule/schedule.h: a pipeline schedule as plain data.
//
// A Schedule holds every rank's ordered list of actions, for all ranks at once. A slot in a
// rank's list is either an action or empty (the rank idles at that step): generators lay out
// their actions on a common step grid so that the printed grid reads like the usual pictures,
// but only the order of a rank's actions matters to lowering, validation, simulation and the
// runtime; empty slots are presentation.
//
// Stages are numbered 0 .. num_stages-1 in the direction of the forward pass. With
// stages_per_rank = v, num_stages = num_ranks * v, and the placement says which rank runs
// which stage:
//   kLoop: stage s runs on rank s % num_ranks (1F1B, interleaved 1F1B, ZB-H1/H2: v = 1 or more)
//   kV:    v = 2, rank r runs stages r and 2*num_ranks-1-r (ZB-V, DualPipeV)
//
// Overlapped slots (DualPipeV's overlap, PyTorch's OVERLAP_F_B): a rank may run a forward and a
// backward (B or I) of two different microbatches together, as one slot. Such a pair is stored as
// its two actions in consecutive slots, tied by a mark on the first one (rank_overlaps()), so
// every pass that does not know about overlap sees the pair as two actions in sequence, and a
// schedule without marks is exactly what it was before overlap existed. simulate() times a pair
// as one slot; validate() reports every mark (a runtime runs one action at a time): run
// expand_overlap() (passes.h) first.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/schedule/action.h"

namespace pipetrain {

enum class Placement { kLoop, kV };

/// Sizes pipetrain accepts, checked before anything is allocated so that the memory a schedule
/// needs follows from the size of its input, never from the numbers written in it. They are far
/// above what a pipeline runs (the largest figure in docs/schedules.md has P = 128, M = 1024,
/// v = 2: 262144 (stage, microbatch) pairs); at the limits, pipetrain-schedule builds, lowers,
/// validates, simulates and draws a schedule in well under 1 GB (docs/reliability.md).
struct ScheduleLimits {
  static constexpr int kMaxRanks = 1024;          ///< num_ranks
  static constexpr int kMaxStages = 4096;         ///< num_stages = num_ranks * stages_per_rank
  static constexpr int kMaxMicrobatches = 1 << 19;  ///< num_microbatches, for the generators
  /// num_stages * num_microbatches for the generators: each pair is 2 or 3 compute actions.
  static constexpr std::int64_t kMaxWork = std::int64_t{1} << 19;
  /// Slots (actions and idle cells) of a schedule read from a file, and its size in bytes.
  static constexpr std::int64_t kMaxSlots = std::int64_t{1} << 23;
  static constexpr std::int64_t kMaxFileBytes = std::int64_t{64} << 20;
};

/// Checks a schedule shape against ScheduleLimits before anything is built; the generators call
/// it first, and a program can call it on its raw options (64-bit, so that values an int cannot
/// hold and products of counts are checked, not wrapped). Throws InvalidArgument naming
/// `function`, the value and the limit:
///   "[train_gpt] num_ranks=65536 must be <= 1024 (ScheduleLimits::kMaxRanks)"
///   "[gpipe] num_stages*num_microbatches=1*2000000=2000000 must be <= 524288
///    (ScheduleLimits::kMaxWork)"
void check_schedule_size(std::string_view function, std::int64_t num_ranks,
                         std::int64_t stages_per_rank, std::int64_t num_microbatches);

/// "loop" or "v".
std::string_view to_string(Placement placement);

class Schedule {
 public:
  using Slot = std::optional<Action>;

  /// An empty schedule (no actions on any rank).
  /// Throws InvalidArgument when num_ranks is not in [1, ScheduleLimits::kMaxRanks],
  /// stages_per_rank < 1, num_stages() > ScheduleLimits::kMaxStages, num_microbatches < 1, or
  /// placement is kV with stages_per_rank != 2. num_microbatches may exceed kMaxMicrobatches:
  /// a schedule read from a file may name a large microbatch and hold few actions (the tables of
  /// validate() and simulate() grow with the actions, not the numbers).
  Schedule(std::string name, int num_ranks, int stages_per_rank, int num_microbatches,
           Placement placement = Placement::kLoop);

  const std::string& name() const { return name_; }
  int num_ranks() const { return num_ranks_; }
  int stages_per_rank() const { return stages_per_rank_; }
  int num_stages() const { return num_ranks_ * stages_per_rank_; }
  int num_microbatches() const { return num_microbatches_; }
  Placement placement() const { return placement_; }

  /// The rank that runs `stage`. Throws InvalidArgument when stage is out of range.
  int rank_of_stage(int stage) const;
  /// The stages that `rank` runs, in increasing order.
  std::vector<int> stages_of_rank(int rank) const;

  /// Rank `rank`'s slots in execution order. Throws InvalidArgument when rank is out of range.
  const std::vector<Slot>& rank_slots(int rank) const;
  std::vector<Slot>& rank_slots(int rank);
  /// Rank `rank`'s actions in execution order, empty slots left out.
  std::vector<Action> rank_actions(int rank) const;

  /// Appends an action (or an empty slot) to the end of rank `rank`'s list.
  void append(int rank, const Action& action);
  void append_idle(int rank);
  /// Appends an overlapped slot: `first` and `second` (an F and a B or I of another microbatch, in
  /// either order) in two consecutive slots, marked as one. Throws InvalidArgument as
  /// mark_overlap().
  void append_overlapped(int rank, const Action& first, const Action& second);
  /// Marks slots `step` and `step`+1 of rank `rank` as one overlapped slot. Throws
  /// InvalidArgument unless both hold actions, one an F and the other a B or I of a different
  /// microbatch (can_overlap()), and neither is already part of an overlapped slot.
  void mark_overlap(int rank, std::size_t step);
  /// The steps of rank `rank` that begin an overlapped slot (its partner is the next slot), in
  /// increasing order. Editing rank_slots() does not move the marks: validate() reports a mark
  /// whose slots are no longer a pair, and simulate() refuses it.
  const std::vector<std::size_t>& rank_overlaps(int rank) const;
  /// True when any rank has an overlapped slot.
  bool has_overlap() const;
  /// Removes every mark, leaving the actions where they are.
  void clear_overlaps();

  /// Pads every rank with empty slots to the same length, then drops trailing columns
  /// where every rank is empty.
  void normalize();

  /// Length of the longest rank list (the number of columns of the grid).
  std::size_t num_steps() const;
  /// Number of actions (non-empty slots) on all ranks.
  std::size_t num_actions() const;
  /// True when any rank holds a SEND_* or RECV_* action (the schedule is lowered).
  bool has_comm() const;
  /// True when any rank holds an I or W action.
  bool has_split_backward() const;

  /// The rank x step grid as text: a header row of step numbers, one row per rank,
  /// fixed-width cells, "." for an empty slot. Lowered schedules print their communication
  /// actions too. The first action of an overlapped slot is followed by "+" ("0F3+ 1B1": 0F3 and
  /// 1B1 run overlapped). This is the golden-file form.
  std::string to_grid() const;

  friend bool operator==(const Schedule&, const Schedule&) = default;

 private:
  std::string name_;
  int num_ranks_;
  int stages_per_rank_;
  int num_microbatches_;
  Placement placement_;
  std::vector<std::vector<Slot>> slots_;
  std::vector<std::vector<std::size_t>> overlaps_;  // per rank: steps that begin a pair
};

/// True when `a` and `b` can form an overlapped slot: one is an F, the other a B or I, of
/// different microbatches (either order).
bool can_overlap(const Action& a, const Action& b);

}  // namespace pipetrain
