#include "pipetrain/schedule/validate.h"

#include <algorithm>
#include <cstdint>
#include <sstream>
#include <unordered_map>

#include "action_index.h"
#include "pipetrain/error.h"

namespace pipetrain {

std::string_view to_string(Violation::Rule rule) {
  switch (rule) {
    case Violation::Rule::kPlacement:
      return "placement";
    case Violation::Rule::kCompleteness:
      return "completeness";
    case Violation::Rule::kDependency:
      return "dependency";
    case Violation::Rule::kMatching:
      return "matching";
    case Violation::Rule::kDeadlock:
      return "deadlock";
    case Violation::Rule::kRange:
      return "range";
    case Violation::Rule::kOverlap:
      return "overlap";
  }
  return "unknown";
}

namespace {

using detail::ActionIndex;
using detail::Cell;
using Rule = Violation::Rule;

std::string where(int rank, int step) {
  return "rank " + std::to_string(rank) + " step " + std::to_string(step);
}
std::string where(Cell cell) { return where(cell.rank, cell.step); }
std::string text(int stage, ActionKind kind, int microbatch) {
  return to_string(Action{stage, kind, microbatch});
}

// Report order: the rules whose failure makes the later checks meaningless come first.
int priority(Rule rule) {
  switch (rule) {
    case Rule::kRange:
      return 0;
    case Rule::kPlacement:
      return 1;
    case Rule::kCompleteness:
      return 2;
    case Rule::kMatching:
      return 3;
    case Rule::kDependency:
      return 4;
    case Rule::kDeadlock:
      return 5;
    case Rule::kOverlap:
      return 6;
  }
  return 6;
}

// The action whose output `action` consumes when that output comes from another rank, or an
// absent cell. Same-rank inputs are checked by order, not by running.
class Validator {
 public:
  explicit Validator(const Schedule& schedule)
      : s_(schedule),
        num_ranks_(schedule.num_ranks()),
        num_stages_(schedule.num_stages()),
        num_microbatches_(schedule.num_microbatches()),
        lowered_(schedule.has_comm()),
        index_(num_stages_, num_microbatches_, schedule.num_actions()) {
    rows_.reserve(static_cast<std::size_t>(num_ranks_));
    for (int r = 0; r < num_ranks_; ++r) rows_.push_back(&schedule.rank_slots(r));
    stage_rank_.resize(static_cast<std::size_t>(num_stages_));
    for (int s = 0; s < num_stages_; ++s)
      stage_rank_[static_cast<std::size_t>(s)] = schedule.rank_of_stage(s);
  }

  ValidationReport run() {
    const std::int64_t work = std::int64_t{num_stages_} * num_microbatches_;
    if (work > ScheduleLimits::kMaxWork) {
      add(Rule::kRange, -1, -1,
          "num_stages*num_microbatches=" + std::to_string(num_stages_) + "*" +
              std::to_string(num_microbatches_) + "=" + std::to_string(work) + " is more than " +
              std::to_string(ScheduleLimits::kMaxWork) +
              " (ScheduleLimits::kMaxWork): the schedule was not checked");
      return std::move(report_);
    }
    check_cells();
    check_completeness();
    if (report_.ok()) {
      check_order();
      if (lowered_) check_matching_order();
    }
    if (report_.ok()) check_cross_rank();
    if (report_.ok() && lowered_) check_deadlock();
    check_overlaps();
    std::stable_sort(
        report_.violations.begin(), report_.violations.end(),
        [](const Violation& a, const Violation& b) { return priority(a.rule) < priority(b.rule); });
    return std::move(report_);
  }

 private:
  void add(Rule rule, int rank, int step, std::string message) {
    report_.add(Violation{rule, rank, step, std::move(message)});
  }
  void add(Rule rule, Cell cell, std::string message) {
    add(rule, cell.rank, cell.step, std::move(message));
  }
  const Action& action_at(Cell cell) const {
    return *(*rows_[static_cast<std::size_t>(cell.rank)])[static_cast<std::size_t>(cell.step)];
  }
  int rank_of(int stage) const { return stage_rank_[static_cast<std::size_t>(stage)]; }
  Cell find(ActionKind kind, int stage, int microbatch) const {
    return index_.find(kind, stage, microbatch);
  }
  // B or I of (stage, microbatch): the action that produces the gradient of the stage's input.
  Cell find_backward(int stage, int microbatch) const {
    const Cell b = find(ActionKind::kBackward, stage, microbatch);
    return b.found() ? b : find(ActionKind::kBackwardInput, stage, microbatch);
  }

  // The peer stage of a communication action, or a reason why it has none.
  std::string peer_problem(const Action& a, int rank) const {
    const bool forward = a.kind == ActionKind::kSendForward || a.kind == ActionKind::kRecvForward;
    const bool send = a.kind == ActionKind::kSendForward || a.kind == ActionKind::kSendBackward;
    // A forward output goes to stage+1, a gradient to stage-1; a receive names its own stage.
    const int peer = (forward == send) ? a.stage + 1 : a.stage - 1;
    const char* role = send ? "has no receiver: " : "has no sender: ";
    if (peer < 0) return std::string(role) + "stage 0 is the first stage";
    if (peer >= num_stages_)
      return role + ("stage " + std::to_string(a.stage)) + " is the last stage";
    if (rank_of(peer) == rank)
      return role + ("stage " + std::to_string(peer)) + " runs on rank " + std::to_string(rank) +
             " too";
    return {};
  }

  // Every overlapped slot: the runtime runs one action at a time.
  void check_overlaps() {
    for (int r = 0; r < num_ranks_; ++r) {
      const auto& slots = s_.rank_slots(r);
      for (std::size_t i : s_.rank_overlaps(r)) {
        const int step = static_cast<int>(i);
        const bool pair = i + 1 < slots.size() && slots[i] && slots[i + 1] &&
                          can_overlap(*slots[i], *slots[i + 1]);
        if (!pair) {
          add(Rule::kOverlap, r, step,
              where(r, step) +
                  ": marked as an overlapped slot, but this step and the next are not an F and a "
                  "B or I of different microbatches");
          continue;
        }
        add(Rule::kOverlap, r, step,
            where(r, step) + ": " + to_string(*slots[i]) + "+" + to_string(*slots[i + 1]) +
                " is an overlapped slot; the runtime runs one action at a time: run "
                "expand_overlap() (passes.h) first");
      }
    }
  }

  // Range, placement, peers of communication actions, duplicates; fills index_.
  void check_cells() {
    for (int r = 0; r < num_ranks_; ++r) {
      const auto& row = s_.rank_slots(r);
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (!row[i]) continue;
        const Action& a = *row[i];
        const int step = static_cast<int>(i);
        auto head = [&] { return where(r, step) + ": " + to_string(a); };
        if (a.stage < 0 || a.stage >= num_stages_) {
          add(Rule::kRange, r, step,
              head() + ": stage " + std::to_string(a.stage) + " is out of range [0, " +
                  std::to_string(num_stages_) + ")");
          continue;
        }
        if (a.microbatch < 0 || a.microbatch >= num_microbatches_) {
          add(Rule::kRange, r, step,
              head() + ": microbatch " + std::to_string(a.microbatch) + " is out of range [0, " +
                  std::to_string(num_microbatches_) + ")");
          continue;
        }
        const int owner = rank_of(a.stage);
        if (owner != r) {
          add(Rule::kPlacement, r, step,
              head() + ": stage " + std::to_string(a.stage) + " runs on rank " +
                  std::to_string(owner) + ", not rank " + std::to_string(r));
        } else if (is_comm(a.kind)) {
          std::string problem = peer_problem(a, r);
          if (!problem.empty()) {
            add(Rule::kMatching, r, step, head() + " " + problem);
            continue;
          }
        }
        const Cell first = index_.insert(a, Cell{r, step});
        if (first.found())
          add(Rule::kCompleteness, r, step,
              head() + " appears twice (first at " + where(first) + ")");
      }
    }
  }

  void check_completeness() {
    using K = ActionKind;
    for (int s = 0; s < num_stages_; ++s) {
      const int owner = rank_of(s);
      const std::string on_owner = " is missing from rank " + std::to_string(owner);
      for (int m = 0; m < num_microbatches_; ++m) {
        const Cell f = find(K::kForward, s, m), b = find(K::kBackward, s, m);
        const Cell in = find(K::kBackwardInput, s, m), w = find(K::kBackwardWeight, s, m);
        if (!f.found()) add(Rule::kCompleteness, owner, -1, text(s, K::kForward, m) + on_owner);
        if (b.found() && in.found()) {
          add(Rule::kCompleteness, in,
              where(in) + ": " + text(s, K::kBackwardInput, m) + " and " +
                  text(s, K::kBackward, m) + " (" + where(b) +
                  ") both compute the input gradient of stage " + std::to_string(s) +
                  " microbatch " + std::to_string(m));
        } else if (!b.found() && !in.found() && !w.found()) {
          add(Rule::kCompleteness, owner, -1,
              text(s, K::kBackward, m) + on_owner + " (or " + text(s, K::kBackwardInput, m) +
                  " and " + text(s, K::kBackwardWeight, m) + ")");
        }
        if (w.found() && !in.found())
          add(Rule::kCompleteness, w,
              where(w) + ": " + text(s, K::kBackwardWeight, m) + " has no " +
                  text(s, K::kBackwardInput, m));
        if (in.found() && !w.found())
          add(Rule::kCompleteness, owner, -1,
              text(s, K::kBackwardWeight, m) + on_owner + " (" + text(s, K::kBackwardInput, m) +
                  " is at " + where(in) + ")");
        if (!lowered_) continue;
        if (s + 1 < num_stages_ && rank_of(s + 1) != owner)
          check_transfer(Action{s, K::kSendForward, m}, Action{s + 1, K::kRecvForward, m},
                         find(K::kForward, s + 1, m), "input");
        if (s > 0 && rank_of(s - 1) != owner)
          check_transfer(Action{s, K::kSendBackward, m}, Action{s - 1, K::kRecvBackward, m},
                         find_backward(s - 1, m), "input gradient");
      }
    }
  }

  // A transfer between ranks needs both its SEND and its RECV.
  void check_transfer(const Action& send, const Action& recv, Cell consumer, const char* what) {
    const Cell sc = index_.find(send), rc = index_.find(recv);
    if (sc.found() && rc.found()) return;
    const std::string send_rank = std::to_string(rank_of(send.stage));
    const std::string recv_rank = std::to_string(rank_of(recv.stage));
    if (sc.found()) {
      add(Rule::kMatching, sc,
          where(sc) + ": " + to_string(send) + " has no " + to_string(recv) + " on rank " +
              recv_rank);
    } else if (rc.found()) {
      add(Rule::kMatching, rc,
          where(rc) + ": " + to_string(recv) + " has no " + to_string(send) + " on rank " +
              send_rank);
    } else {
      const std::string message = to_string(send) + " and " + to_string(recv) +
                                  " are missing: the " + what + " of stage " +
                                  std::to_string(recv.stage) + " microbatch " +
                                  std::to_string(recv.microbatch) + " comes from rank " + send_rank;
      if (consumer.found())
        add(Rule::kCompleteness, consumer, where(consumer) + ": " + message);
      else
        add(Rule::kCompleteness, rank_of(recv.stage), -1, message);
    }
  }

  // Order within each rank: every action after what it needs from its own rank.
  void check_order() {
    using K = ActionKind;
    for (int r = 0; r < num_ranks_; ++r) {
      const auto& row = s_.rank_slots(r);
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (!row[i]) continue;
        const Action& a = *row[i];
        const int step = static_cast<int>(i);
        const int s = a.stage, m = a.microbatch;
        // Returns true when a violation was added.
        auto need = [&](Cell before, const char* prefix, const char* suffix) {
          if (!before.found() || before.step < step) return false;
          add(Rule::kDependency, r, step,
              where(r, step) + ": " + to_string(a) + " runs before " + prefix +
                  to_string(action_at(before)) + " (" + where(before) + ")" + suffix);
          return true;
        };
        switch (a.kind) {
          case K::kForward:
            if (s > 0 && rank_of(s - 1) == r)
              need(find(K::kForward, s - 1, m), "its input ", "");
            else if (s > 0 && lowered_)
              need(find(K::kRecvForward, s, m), "", ", which receives its input");
            break;
          case K::kBackward:
          case K::kBackwardInput:
            if (need(find(K::kForward, s, m), "its forward ", "")) break;
            if (s + 1 < num_stages_ && rank_of(s + 1) == r)
              need(find_backward(s + 1, m), "its input gradient ", "");
            else if (s + 1 < num_stages_ && lowered_)
              need(find(K::kRecvBackward, s, m), "", ", which receives its input gradient");
            break;
          case K::kBackwardWeight:
            need(find(K::kBackwardInput, s, m), "", ", which must come first");
            break;
          case K::kSendForward:
            need(find(K::kForward, s, m), "", ", which produces what it sends");
            break;
          case K::kSendBackward:
            need(find_backward(s, m), "", ", which produces what it sends");
            break;
          case K::kRecvForward:
          case K::kRecvBackward:
            break;
        }
      }
    }
  }

  // The message a communication action carries, named by the receiving action, and the peer.
  Action message_of(const Action& a) const {
    switch (a.kind) {
      case ActionKind::kSendForward:
        return Action{a.stage + 1, ActionKind::kRecvForward, a.microbatch};
      case ActionKind::kSendBackward:
        return Action{a.stage - 1, ActionKind::kRecvBackward, a.microbatch};
      default:
        return a;
    }
  }
  int peer_rank(const Action& a) const {
    switch (a.kind) {
      case ActionKind::kSendForward:
      case ActionKind::kRecvBackward:
        return rank_of(a.stage + 1);
      default:
        return rank_of(a.stage - 1);
    }
  }
  std::uint64_t pair_key(int sender, int receiver) const {
    return static_cast<std::uint64_t>(sender) * static_cast<std::uint64_t>(num_ranks_) +
           static_cast<std::uint64_t>(receiver);
  }

  // Per ordered pair of ranks, the sends (on the sender) and the receives (on the receiver).
  struct Channel {
    std::vector<Cell> sends;
    std::vector<Cell> recvs;
  };

  void collect_channels() {
    for (int r = 0; r < num_ranks_; ++r) {
      const auto& row = s_.rank_slots(r);
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (!row[i] || !is_comm(row[i]->kind)) continue;
        const Action& a = *row[i];
        const bool send = a.kind == ActionKind::kSendForward || a.kind == ActionKind::kSendBackward;
        const int peer = peer_rank(a);
        Channel& channel = channels_[send ? pair_key(r, peer) : pair_key(peer, r)];
        (send ? channel.sends : channel.recvs).push_back(Cell{r, static_cast<int>(i)});
      }
    }
  }

  void check_matching_order() {
    collect_channels();
    std::vector<std::uint64_t> keys;
    keys.reserve(channels_.size());
    for (const auto& [key, channel] : channels_) keys.push_back(key);
    std::sort(keys.begin(), keys.end());  // deterministic report order
    for (std::uint64_t key : keys) {
      const Channel& channel = channels_[key];
      const int sender = static_cast<int>(key / static_cast<std::uint64_t>(num_ranks_));
      const int receiver = static_cast<int>(key % static_cast<std::uint64_t>(num_ranks_));
      const std::size_t n = std::min(channel.sends.size(), channel.recvs.size());
      for (std::size_t k = 0; k < n; ++k) {
        const Action& send = action_at(channel.sends[k]);
        const Action& recv = action_at(channel.recvs[k]);
        if (message_of(send) == recv) continue;
        add(Rule::kMatching, channel.recvs[k],
            where(channel.recvs[k]) + ": " + to_string(recv) + " is receive #" +
                std::to_string(k + 1) + " on rank " + std::to_string(receiver) + " from rank " +
                std::to_string(sender) + ", but send #" + std::to_string(k + 1) + " from rank " +
                std::to_string(sender) + " is " + to_string(send) + " (" + where(channel.sends[k]) +
                ")");
        break;  // later pairs of this channel are shifted by the same mistake
      }
    }
  }

  // Runs the compute actions with unbounded buffering: a rank waits only for an input that
  // another rank produces. Stuck ranks are dependency violations (a cycle across ranks).
  void check_cross_rank() {
    using K = ActionKind;
    std::vector<std::size_t> cursor(static_cast<std::size_t>(num_ranks_), 0);
    std::vector<Cell> waiting_for(static_cast<std::size_t>(num_ranks_));
    std::vector<std::vector<int>> waiters(static_cast<std::size_t>(num_ranks_));
    auto input_of = [&](const Action& a, int r) -> Cell {
      if (a.kind == K::kForward && a.stage > 0 && rank_of(a.stage - 1) != r)
        return find(K::kForward, a.stage - 1, a.microbatch);
      if (is_input_backward(a.kind) && a.stage + 1 < num_stages_ && rank_of(a.stage + 1) != r)
        return find_backward(a.stage + 1, a.microbatch);
      return Cell{};
    };
    std::vector<int> work(static_cast<std::size_t>(num_ranks_));
    for (int r = 0; r < num_ranks_; ++r) work[static_cast<std::size_t>(r)] = num_ranks_ - 1 - r;
    while (!work.empty()) {
      const int r = work.back();
      work.pop_back();
      const auto ur = static_cast<std::size_t>(r);
      const auto& row = s_.rank_slots(r);
      const std::size_t start = cursor[ur];
      waiting_for[ur] = Cell{};
      while (cursor[ur] < row.size()) {
        const auto& slot = row[cursor[ur]];
        if (slot && is_compute(slot->kind)) {
          const Cell input = input_of(*slot, r);
          if (input.found() && cursor[static_cast<std::size_t>(input.rank)] <=
                                   static_cast<std::size_t>(input.step)) {
            waiting_for[ur] = input;
            waiters[static_cast<std::size_t>(input.rank)].push_back(r);
            break;
          }
        }
        ++cursor[ur];
      }
      if (cursor[ur] == start) continue;
      auto& mine = waiters[ur];
      for (std::size_t k = 0; k < mine.size();) {
        const int w = mine[k];
        if (cursor[ur] > static_cast<std::size_t>(waiting_for[static_cast<std::size_t>(w)].step)) {
          work.push_back(w);
          mine[k] = mine.back();
          mine.pop_back();
        } else {
          ++k;
        }
      }
    }
    for (int r = 0; r < num_ranks_; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      if (cursor[ur] >= s_.rank_slots(r).size()) continue;
      const Cell stuck{r, static_cast<int>(cursor[ur])};
      const Action& a = action_at(stuck);
      const Cell input = waiting_for[ur];
      add(Rule::kDependency, stuck,
          where(stuck) + ": " + to_string(a) + " waits forever for its " +
              (a.kind == K::kForward ? "input " : "input gradient ") + to_string(action_at(input)) +
              " (" + where(input) + ")");
    }
  }

  // Runs the lowered schedule under the grouped blocking semantics of validate.h.
  void check_deadlock() {
    if (channels_.empty()) collect_channels();
    const auto P = static_cast<std::size_t>(num_ranks_);
    // group_of[r][step]: index of the communication group holding that cell.
    std::vector<std::vector<int>> group_of(P);
    std::vector<std::vector<Cell>> partner(P);
    // Per rank: groups as ranges of ops; ops are steps.
    std::vector<std::vector<int>> ops(P), group_begin(P);
    for (int r = 0; r < num_ranks_; ++r) {
      const auto ur = static_cast<std::size_t>(r);
      const auto& row = s_.rank_slots(r);
      group_of[ur].assign(row.size(), -1);
      partner[ur].assign(row.size(), Cell{});
      bool in_group = false;
      for (std::size_t i = 0; i < row.size(); ++i) {
        if (!row[i]) continue;
        if (is_compute(row[i]->kind)) {
          in_group = false;
          continue;
        }
        if (!in_group) group_begin[ur].push_back(static_cast<int>(ops[ur].size()));
        in_group = true;
        group_of[ur][i] = static_cast<int>(group_begin[ur].size()) - 1;
        ops[ur].push_back(static_cast<int>(i));
      }
      group_begin[ur].push_back(static_cast<int>(ops[ur].size()));
    }
    for (const auto& [key, channel] : channels_) {
      for (std::size_t k = 0; k < channel.sends.size() && k < channel.recvs.size(); ++k) {
        const Cell a = channel.sends[k], b = channel.recvs[k];
        partner[static_cast<std::size_t>(a.rank)][static_cast<std::size_t>(a.step)] = b;
        partner[static_cast<std::size_t>(b.rank)][static_cast<std::size_t>(b.step)] = a;
      }
    }
    std::vector<std::vector<int>> pending(P);
    std::vector<int> current(P, 0);
    for (std::size_t r = 0; r < P; ++r) {
      const std::size_t groups = group_begin[r].size() - 1;
      pending[r].resize(groups);
      for (std::size_t g = 0; g < groups; ++g)
        pending[r][g] = group_begin[r][g + 1] - group_begin[r][g];
    }
    auto num_groups = [&](std::size_t r) { return static_cast<int>(pending[r].size()); };
    std::vector<int> work;
    // Posting a group satisfies the partner of each of its ops.
    auto post = [&](std::size_t r) {
      const int g = current[r];
      for (int k = group_begin[r][static_cast<std::size_t>(g)];
           k < group_begin[r][static_cast<std::size_t>(g) + 1]; ++k) {
        const Cell p = partner[r][static_cast<std::size_t>(ops[r][static_cast<std::size_t>(k)])];
        const auto q = static_cast<std::size_t>(p.rank);
        const int pg = group_of[q][static_cast<std::size_t>(p.step)];
        if (--pending[q][static_cast<std::size_t>(pg)] == 0 && current[q] == pg)
          work.push_back(static_cast<int>(q));
      }
    };
    for (std::size_t r = 0; r < P; ++r)
      if (num_groups(r) > 0) post(r);
    for (std::size_t r = 0; r < P; ++r)
      if (num_groups(r) > 0 && pending[r][0] == 0) work.push_back(static_cast<int>(r));
    while (!work.empty()) {
      const auto r = static_cast<std::size_t>(work.back());
      work.pop_back();
      if (current[r] >= num_groups(r) || pending[r][static_cast<std::size_t>(current[r])] != 0)
        continue;
      ++current[r];
      if (current[r] == num_groups(r)) continue;
      post(r);
      if (pending[r][static_cast<std::size_t>(current[r])] == 0)
        work.push_back(static_cast<int>(r));
    }
    auto blocked_at = [&](std::size_t q) {
      return ops[q][static_cast<std::size_t>(group_begin[q][static_cast<std::size_t>(current[q])])];
    };
    for (std::size_t r = 0; r < P; ++r) {
      if (current[r] >= num_groups(r)) continue;
      const auto g = static_cast<std::size_t>(current[r]);
      for (int k = group_begin[r][g]; k < group_begin[r][g + 1]; ++k) {
        const int step = ops[r][static_cast<std::size_t>(k)];
        const Cell p = partner[r][static_cast<std::size_t>(step)];
        const auto q = static_cast<std::size_t>(p.rank);
        if (group_of[q][static_cast<std::size_t>(p.step)] <= current[q]) continue;
        const Cell cell{static_cast<int>(r), step};
        add(Rule::kDeadlock, cell,
            where(cell) + ": " + to_string(action_at(cell)) + " waits for " +
                to_string(action_at(p)) + " (" + where(p) + "), which rank " +
                std::to_string(p.rank) + " never posts: it is blocked at step " +
                std::to_string(blocked_at(q)));
        break;
      }
    }
  }

  const Schedule& s_;
  int num_ranks_;
  int num_stages_;
  int num_microbatches_;
  bool lowered_;
  ActionIndex index_;
  // s_'s rows (rank_slots() checks its argument on each call; action_at() runs per message).
  std::vector<const std::vector<Schedule::Slot>*> rows_;
  std::vector<int> stage_rank_;
  std::unordered_map<std::uint64_t, Channel> channels_;
  ValidationReport report_;
};

void pad_to(std::string& line, std::size_t width) {
  if (line.size() < width) line.append(width - line.size(), ' ');
}

void trim_right(std::string& line) {
  while (!line.empty() && line.back() == ' ') line.pop_back();
}

}  // namespace

void ValidationReport::add(Violation violation) {
  std::size_t& kept = num_added[static_cast<std::size_t>(violation.rule) % num_added.size()];
  if (kept >= kMaxPerRule) {
    ++num_omitted;
    return;
  }
  ++kept;
  violations.push_back(std::move(violation));
}

std::string ValidationReport::format(const Schedule& schedule) const {
  if (ok()) return {};
  std::ostringstream out;
  const std::size_t listed = std::min(violations.size(), kMaxListed);
  for (std::size_t i = 0; i < listed; ++i)
    out << to_string(violations[i].rule) << ": " << violations[i].message << '\n';
  if (const std::size_t more = num_found() - listed; more > 0)
    out << "... and " << more << (more == 1 ? " more violation\n" : " more violations\n");

  const int ranks = schedule.num_ranks();
  const std::size_t steps = schedule.num_steps();
  // A large grid is drawn as a window around the first faulty cell (the first violation that
  // names one), so that the report stays readable and its size bounded.
  int rank_begin = 0, rank_end = ranks;
  std::size_t step_begin = 0, step_end = steps;
  const bool window = static_cast<std::size_t>(ranks) * steps > kMaxGridCells;
  if (window) {
    int focus_rank = 0;
    std::size_t focus_step = 0;
    for (const Violation& v : violations) {
      if (v.rank < 0 || v.rank >= ranks) continue;
      focus_rank = v.rank;
      focus_step = v.step < 0 ? 0 : static_cast<std::size_t>(v.step);
      break;
    }
    rank_begin = std::max(0, std::min(focus_rank - kWindowRanks / 2, ranks - kWindowRanks));
    rank_end = std::min(ranks, rank_begin + kWindowRanks);
    const auto width = static_cast<std::size_t>(kWindowSteps);
    step_begin = focus_step > width / 2 ? focus_step - width / 2 : 0;
    if (step_begin + width > steps) step_begin = steps > width ? steps - width : 0;
    step_end = std::min(steps, step_begin + width);
  }
  auto is_marked = [&](int rank, std::size_t step) {
    for (std::size_t i = 0; i < violations.size(); ++i)
      if (violations[i].rank == rank && violations[i].step >= 0 &&
          static_cast<std::size_t>(violations[i].step) == step)
        return true;
    return false;
  };

  // Each cell is " 2F0" or "[2F0]!", padded to one width, so marks never shift the columns.
  std::size_t text_width = std::to_string(steps == 0 ? 0 : steps - 1).size();
  for (int r = rank_begin; r < rank_end; ++r) {
    const auto& row = schedule.rank_slots(r);
    for (std::size_t i = step_begin; i < std::min(step_end, row.size()); ++i)
      if (row[i]) text_width = std::max(text_width, to_string(*row[i]).size());
  }
  const std::size_t cell_width = text_width + 3;
  const std::size_t label_width = ("rank " + std::to_string(ranks - 1)).size();

  out << schedule.name() << ": " << ranks << " ranks, " << schedule.num_stages() << " stages ("
      << to_string(schedule.placement()) << "), " << schedule.num_microbatches()
      << " microbatches\n";
  if (window)
    out << "showing ranks " << rank_begin << ".." << rank_end - 1 << " of " << ranks
        << ", steps " << step_begin << ".." << (step_end == 0 ? 0 : step_end - 1) << " of "
        << steps << "\n";
  std::string line = "step";
  pad_to(line, label_width);
  for (std::size_t i = step_begin; i < step_end; ++i) {
    const std::size_t start = line.size() + 1;
    line += "  " + std::to_string(i);
    pad_to(line, start + cell_width);
  }
  trim_right(line);
  out << line << '\n';
  for (int r = rank_begin; r < rank_end; ++r) {
    const auto& row = schedule.rank_slots(r);
    line = "rank " + std::to_string(r);
    pad_to(line, label_width);
    for (std::size_t i = step_begin; i < step_end; ++i) {
      const std::size_t start = line.size() + 1;
      const std::string cell = i < row.size() && row[i] ? to_string(*row[i]) : ".";
      const bool mark = i < row.size() && is_marked(r, i);
      line += mark ? " [" + cell + "]!" : "  " + cell;
      pad_to(line, start + cell_width);
    }
    trim_right(line);
    out << line << '\n';
  }
  out << "legend: [A]! marks a faulty cell named above; . is an empty slot\n";
  return out.str();
}

ValidationReport validate(const Schedule& schedule) { return Validator(schedule).run(); }

void validate_or_throw(const Schedule& schedule) {
  const ValidationReport report = validate(schedule);
  if (report.ok()) return;
  const std::size_t n = report.num_found();
  throw ScheduleError(detail::message("validate_or_throw", "schedule '", schedule.name(), "' has ",
                                      n, n == 1 ? " violation" : " violations", ":\n",
                                      report.format(schedule)));
}

}  // namespace pipetrain
