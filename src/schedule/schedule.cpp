#include "pipetrain/schedule/schedule.h"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <sstream>

#include "pipetrain/error.h"

namespace pipetrain {

std::string_view to_string(Placement placement) {
  return placement == Placement::kLoop ? "loop" : "v";
}

void check_schedule_size(std::string_view function, std::int64_t num_ranks,
                         std::int64_t stages_per_rank, std::int64_t num_microbatches) {
  using L = ScheduleLimits;
  PIPETRAIN_CHECK_ARG(num_ranks >= 1, function, "num_ranks=", num_ranks, " must be >= 1");
  PIPETRAIN_CHECK_ARG(num_microbatches >= 1, function, "num_microbatches=", num_microbatches,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(stages_per_rank >= 1, function, "stages_per_rank=", stages_per_rank,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(num_ranks <= L::kMaxRanks, function, "num_ranks=", num_ranks,
                      " must be <= ", L::kMaxRanks, " (ScheduleLimits::kMaxRanks)");
  PIPETRAIN_CHECK_ARG(stages_per_rank <= L::kMaxStages, function, "stages_per_rank=",
                      stages_per_rank, " must be <= ", L::kMaxStages,
                      " (ScheduleLimits::kMaxStages)");
  // Both factors are at most kMaxStages here, so the product cannot overflow.
  const std::int64_t stages = num_ranks * stages_per_rank;
  PIPETRAIN_CHECK_ARG(stages <= L::kMaxStages, function, "num_stages=num_ranks*stages_per_rank=",
                      num_ranks, "*", stages_per_rank, "=", stages, " must be <= ", L::kMaxStages,
                      " (ScheduleLimits::kMaxStages)");
  PIPETRAIN_CHECK_ARG(num_microbatches <= L::kMaxMicrobatches, function, "num_microbatches=",
                      num_microbatches, " must be <= ", L::kMaxMicrobatches,
                      " (ScheduleLimits::kMaxMicrobatches)");
  const std::int64_t work = stages * num_microbatches;  // <= 2^12 * 2^19: no overflow
  PIPETRAIN_CHECK_ARG(work <= L::kMaxWork, function, "num_stages*num_microbatches=", stages, "*",
                      num_microbatches, "=", work, " must be <= ", L::kMaxWork,
                      " (ScheduleLimits::kMaxWork)");
}

Schedule::Schedule(std::string name, int num_ranks, int stages_per_rank, int num_microbatches,
                   Placement placement)
    : name_(std::move(name)),
      num_ranks_(num_ranks),
      stages_per_rank_(stages_per_rank),
      num_microbatches_(num_microbatches),
      placement_(placement) {
  PIPETRAIN_CHECK_ARG(num_ranks >= 1, "Schedule", "num_ranks=", num_ranks, " must be >= 1");
  PIPETRAIN_CHECK_ARG(num_ranks <= ScheduleLimits::kMaxRanks, "Schedule", "num_ranks=", num_ranks,
                      " must be <= ", ScheduleLimits::kMaxRanks, " (ScheduleLimits::kMaxRanks)");
  PIPETRAIN_CHECK_ARG(stages_per_rank >= 1, "Schedule", "stages_per_rank=", stages_per_rank,
                      " must be >= 1");
  // 64-bit so that num_stages() (an int) is known to fit before it is ever formed.
  PIPETRAIN_CHECK_ARG(
      std::int64_t{num_ranks} * stages_per_rank <= ScheduleLimits::kMaxStages, "Schedule",
      "num_stages=num_ranks*stages_per_rank=", num_ranks, "*", stages_per_rank, "=",
      std::int64_t{num_ranks} * stages_per_rank, " must be <= ", ScheduleLimits::kMaxStages,
      " (ScheduleLimits::kMaxStages)");
  PIPETRAIN_CHECK_ARG(num_microbatches >= 1, "Schedule", "num_microbatches=", num_microbatches,
                      " must be >= 1");
  PIPETRAIN_CHECK_ARG(placement != Placement::kV || stages_per_rank == 2, "Schedule",
                      "stages_per_rank=", stages_per_rank, " must be 2 for the V placement");
  slots_.resize(static_cast<std::size_t>(num_ranks));
  overlaps_.resize(static_cast<std::size_t>(num_ranks));
}

bool can_overlap(const Action& a, const Action& b) {
  const auto pair = [](const Action& f, const Action& g) {
    return f.kind == ActionKind::kForward && is_input_backward(g.kind);
  };
  return a.microbatch != b.microbatch && (pair(a, b) || pair(b, a));
}

int Schedule::rank_of_stage(int stage) const {
  PIPETRAIN_CHECK_ARG(stage >= 0 && stage < num_stages(), "Schedule::rank_of_stage",
                      "stage=", stage, " must be in [0, ", num_stages(), ")");
  if (placement_ == Placement::kLoop) return stage % num_ranks_;
  return stage < num_ranks_ ? stage : 2 * num_ranks_ - 1 - stage;
}

std::vector<int> Schedule::stages_of_rank(int rank) const {
  PIPETRAIN_CHECK_ARG(rank >= 0 && rank < num_ranks_, "Schedule::stages_of_rank", "rank=", rank,
                      " must be in [0, ", num_ranks_, ")");
  std::vector<int> stages;
  if (placement_ == Placement::kLoop) {
    for (int s = rank; s < num_stages(); s += num_ranks_) stages.push_back(s);
  } else {
    stages = {rank, 2 * num_ranks_ - 1 - rank};
  }
  return stages;
}

const std::vector<Schedule::Slot>& Schedule::rank_slots(int rank) const {
  PIPETRAIN_CHECK_ARG(rank >= 0 && rank < num_ranks_, "Schedule::rank_slots", "rank=", rank,
                      " must be in [0, ", num_ranks_, ")");
  return slots_[static_cast<std::size_t>(rank)];
}

std::vector<Schedule::Slot>& Schedule::rank_slots(int rank) {
  PIPETRAIN_CHECK_ARG(rank >= 0 && rank < num_ranks_, "Schedule::rank_slots", "rank=", rank,
                      " must be in [0, ", num_ranks_, ")");
  return slots_[static_cast<std::size_t>(rank)];
}

std::vector<Action> Schedule::rank_actions(int rank) const {
  std::vector<Action> actions;
  for (const Slot& slot : rank_slots(rank))
    if (slot) actions.push_back(*slot);
  return actions;
}

void Schedule::append(int rank, const Action& action) { rank_slots(rank).emplace_back(action); }
void Schedule::append_idle(int rank) { rank_slots(rank).emplace_back(std::nullopt); }

void Schedule::append_overlapped(int rank, const Action& first, const Action& second) {
  PIPETRAIN_CHECK_ARG(can_overlap(first, second), "Schedule::append_overlapped", to_string(first),
                      " and ", to_string(second),
                      " cannot overlap: expected an F and a B or I of different microbatches");
  auto& row = rank_slots(rank);
  row.emplace_back(first);
  row.emplace_back(second);
  mark_overlap(rank, row.size() - 2);
}

void Schedule::mark_overlap(int rank, std::size_t step) {
  const auto& row = rank_slots(rank);
  PIPETRAIN_CHECK_ARG(step + 1 < row.size() && row[step] && row[step + 1], "Schedule::mark_overlap",
                      "rank ", rank, " step ", step,
                      ": an overlapped slot needs actions at this step and the next");
  PIPETRAIN_CHECK_ARG(can_overlap(*row[step], *row[step + 1]), "Schedule::mark_overlap", "rank ",
                      rank, " step ", step, ": ", to_string(*row[step]), " and ",
                      to_string(*row[step + 1]),
                      " cannot overlap: expected an F and a B or I of different microbatches");
  auto& marks = overlaps_[static_cast<std::size_t>(rank)];
  const auto at = std::lower_bound(marks.begin(), marks.end(), step);
  const bool clash = (at != marks.end() && *at <= step + 1) ||
                     (at != marks.begin() && *std::prev(at) + 1 >= step);
  PIPETRAIN_CHECK_ARG(!clash, "Schedule::mark_overlap", "rank ", rank, " step ", step,
                      " is already part of an overlapped slot");
  marks.insert(at, step);
}

const std::vector<std::size_t>& Schedule::rank_overlaps(int rank) const {
  PIPETRAIN_CHECK_ARG(rank >= 0 && rank < num_ranks_, "Schedule::rank_overlaps", "rank=", rank,
                      " must be in [0, ", num_ranks_, ")");
  return overlaps_[static_cast<std::size_t>(rank)];
}

bool Schedule::has_overlap() const {
  return std::any_of(overlaps_.begin(), overlaps_.end(),
                     [](const auto& marks) { return !marks.empty(); });
}

void Schedule::clear_overlaps() {
  for (auto& marks : overlaps_) marks.clear();
}

void Schedule::normalize() {
  std::size_t last = 0;
  for (const auto& row : slots_)
    for (std::size_t i = 0; i < row.size(); ++i)
      if (row[i]) last = std::max(last, i + 1);
  for (auto& row : slots_) row.resize(last);
}

std::size_t Schedule::num_steps() const {
  std::size_t steps = 0;
  for (const auto& row : slots_) steps = std::max(steps, row.size());
  return steps;
}

std::size_t Schedule::num_actions() const {
  std::size_t count = 0;
  for (const auto& row : slots_)
    count += static_cast<std::size_t>(
        std::count_if(row.begin(), row.end(), [](const Slot& s) { return s.has_value(); }));
  return count;
}

bool Schedule::has_comm() const {
  for (const auto& row : slots_)
    for (const Slot& slot : row)
      if (slot && is_comm(slot->kind)) return true;
  return false;
}

bool Schedule::has_split_backward() const {
  for (const auto& row : slots_)
    for (const Slot& slot : row)
      if (slot &&
          (slot->kind == ActionKind::kBackwardInput || slot->kind == ActionKind::kBackwardWeight))
        return true;
  return false;
}

std::string Schedule::to_grid() const {
  const std::size_t steps = num_steps();
  // The text of a cell: the action, "+" after the first action of an overlapped slot.
  auto cell = [this](std::size_t r, std::size_t i) -> std::string {
    const auto& row = slots_[r];
    if (i >= row.size() || !row[i]) return ".";
    const auto& marks = overlaps_[r];
    const bool first = std::binary_search(marks.begin(), marks.end(), i);
    return to_string(*row[i]) + (first ? "+" : "");
  };
  std::size_t width = 1;
  for (std::size_t r = 0; r < slots_.size(); ++r)
    for (std::size_t i = 0; i < slots_[r].size(); ++i) width = std::max(width, cell(r, i).size());
  width = std::max(width, std::to_string(steps == 0 ? 0 : steps - 1).size());
  const std::string rank_label = "rank " + std::to_string(num_ranks_ - 1);
  const std::size_t label_width = rank_label.size();

  std::ostringstream out;
  out << name_ << ": " << num_ranks_ << " ranks, " << num_stages() << " stages ("
      << to_string(placement_) << "), " << num_microbatches_ << " microbatches\n";
  auto pad = [](std::ostringstream& o, const std::string& text, std::size_t w) {
    o << text;
    for (std::size_t i = text.size(); i < w; ++i) o << ' ';
  };
  pad(out, "step", label_width);
  for (std::size_t i = 0; i < steps; ++i) {
    out << ' ';
    pad(out, std::to_string(i), width);
  }
  std::string header = out.str();
  while (!header.empty() && header.back() == ' ') header.pop_back();
  out.str("");
  out << header << '\n';
  for (int r = 0; r < num_ranks_; ++r) {
    std::ostringstream line;
    pad(line, "rank " + std::to_string(r), label_width);
    for (std::size_t i = 0; i < steps; ++i) {
      line << ' ';
      pad(line, cell(static_cast<std::size_t>(r), i), width);
    }
    std::string text = line.str();
    while (!text.empty() && text.back() == ' ') text.pop_back();
    out << text << '\n';
  }
  return out.str();
}

}  // namespace pipetrain
