#include "pipetrain/runtime/executor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include "pipetrain/error.h"
#include "pipetrain/runtime/progress.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain::runtime {

namespace {

using Clock = std::chrono::steady_clock;
using Key = std::pair<int, int>;  // (stage, microbatch)

constexpr int kMaxDims = 6;
constexpr int kMaxTied = 2;
// Handshake row: present, is_first, is_last, in_dtype, in_ndims, in[kMaxDims], out_dtype,
// out_ndims, out[kMaxDims], tied hashes[kMaxTied].
constexpr int kRow = 5 + kMaxDims + 2 + kMaxDims + kMaxTied;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string describe(const Shape& shape, DType dtype) {
  return shape_to_string(shape) + " " + std::string(to_string(dtype));
}

// 31-bit non-zero hash of a tied key, so that it sums exactly in int32 (one holder per stage).
std::int32_t key_hash(const std::string& key) {
  return static_cast<std::int32_t>(fnv1a64(key) & 0x3fffffffu) + 1;
}

// Rethrows `e` as the same category with `message`.
[[noreturn]] void rethrow_as(const std::exception& e, const std::string& message) {
  if (dynamic_cast<const TimeoutError*>(&e)) throw TimeoutError(message);
  if (dynamic_cast<const AbortedError*>(&e)) throw AbortedError(message);
  if (dynamic_cast<const MismatchError*>(&e)) throw MismatchError(message);
  if (dynamic_cast<const CommError*>(&e)) throw CommError(message);
  if (dynamic_cast<const InvalidArgument*>(&e)) throw InvalidArgument(message);
  if (dynamic_cast<const ScheduleError*>(&e)) throw ScheduleError(message);
  throw Error(message);
}

}  // namespace

std::uint64_t fnv1a64(const std::string& text) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

MessageHeader comm_header(std::int64_t step, const Action& action, const Shape& shape,
                          DType dtype) {
  return MessageHeader::make(step, action, dtype, shape);
}

// ---- per-step state ------------------------------------------------------------------------

struct Executor::StepState {
  StepStats stats;
  Clock::time_point t0;
  int slot = -1;                      // slot being run, for error reports
  int peer = -1;                      // peer involved in the slot being run, -1 when none
  std::map<Key, Tensor> outputs;      // forward outputs waiting for SEND_F or a local stage
  std::map<Key, Tensor> input_grads;  // input gradients waiting for SEND_B or a local stage
  struct PendingRecv {
    Request request;
    Tensor buffer;
    int peer = -1;
  };
  std::map<Key, PendingRecv> recv_f, recv_b;
  std::vector<Request> sends;
  std::size_t next_recv = 0;  // index into recv_slots
  std::vector<int> recv_slots;
  double loss_sum = 0;
  int losses = 0;
};

Executor::Executor(Schedule schedule, Topology topology, Transport& transport,
                   std::vector<Stage*> stages, optim::Optimizer* optimizer, Shape activation_shape,
                   DType activation_dtype, ExecutorOptions options)
    : schedule_(std::move(schedule)),
      topology_(topology),
      transport_(transport),
      stages_(std::move(stages)),
      optimizer_(optimizer),
      activation_shape_(std::move(activation_shape)),
      activation_dtype_(activation_dtype),
      options_(options),
      rank_(transport.rank()) {
  constexpr const char* kFn = "Executor";
  PIPETRAIN_CHECK_ARG(transport.world_size() == topology_.world_size(), kFn,
                      "transport world_size=", transport.world_size(),
                      " must equal topology world_size=", topology_.world_size());
  PIPETRAIN_CHECK_ARG(schedule_.num_ranks() == topology_.pipeline_size(), kFn, "schedule has ",
                      schedule_.num_ranks(),
                      " ranks, topology pipeline_size=", topology_.pipeline_size());
  PIPETRAIN_CHECK_ARG(schedule_.num_ranks() == 1 || schedule_.has_comm(), kFn, "schedule '",
                      schedule_.name(), "' has ", schedule_.num_ranks(),
                      " ranks but no communication: lower() it first");
  PIPETRAIN_CHECK_ARG(options_.recv_lookahead_groups >= 0, kFn,
                      "recv_lookahead_groups=", options_.recv_lookahead_groups, " must be >= 0");
  validate_or_throw(schedule_);
  pp_index_ = topology_.pp_index(rank_);
  dp_index_ = topology_.dp_index(rank_);
  stage_ids_ = schedule_.stages_of_rank(pp_index_);
  std::ostringstream ids;
  for (std::size_t i = 0; i < stage_ids_.size(); ++i) ids << (i ? ", " : "") << stage_ids_[i];
  PIPETRAIN_CHECK_ARG(stages_.size() == stage_ids_.size(), kFn, "rank ", rank_, " holds stages [",
                      ids.str(), "] (", stage_ids_.size(), " stages), got ", stages_.size(),
                      " Stage objects");
  const int last = schedule_.num_stages() - 1;
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    const int s = stage_ids_[i];
    PIPETRAIN_CHECK_ARG(stages_[i] != nullptr, kFn, "Stage object for stage ", s, " is null");
    PIPETRAIN_CHECK_ARG(stages_[i]->is_first() == (s == 0), kFn, "stage ", s, " is ",
                        s == 0 ? "" : "not ", "the first stage but its Stage says is_first()=",
                        stages_[i]->is_first() ? "true" : "false");
    PIPETRAIN_CHECK_ARG(
        stages_[i]->is_last() == (s == last), kFn, "stage ", s, " is ", s == last ? "" : "not ",
        "the last stage but its Stage says is_last()=", stages_[i]->is_last() ? "true" : "false");
  }

  // Parameters, each once; a tied copy counts toward the norm only on its lowest stage here
  // (the handshake later drops copies whose key has a lower stage on another rank).
  std::set<nn::Parameter*> seen;
  for (Stage* stage : stages_) {
    for (nn::Parameter* p : stage->parameters()) {
      if (seen.insert(p).second) params_.push_back(p);
    }
  }

  // Communication groups: maximal runs of consecutive communication slots (empty slots do not
  // break a run, as in validate()).
  const auto& slots = schedule_.rank_slots(pp_index_);
  group_of_slot_.assign(slots.size(), -1);
  groups_started_.assign(slots.size(), 0);
  int groups = 0;
  bool in_group = false;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] && is_comm(slots[i]->kind)) {
      if (!in_group) ++groups;
      in_group = true;
      group_of_slot_[i] = groups - 1;
    } else if (slots[i]) {
      in_group = false;
    }
    groups_started_[i] = groups;
  }
}

Stage* Executor::local_stage(int stage) const {
  for (std::size_t i = 0; i < stage_ids_.size(); ++i) {
    if (stage_ids_[i] == stage) return stages_[i];
  }
  return nullptr;
}

// ---- shape handshake -----------------------------------------------------------------------

void Executor::check_shapes(const Shape& token_shape) {
  constexpr const char* kFn = "Executor";
  const int num_stages = schedule_.num_stages();
  PIPETRAIN_CHECK_ARG(static_cast<int>(activation_shape_.size()) <= kMaxDims, kFn,
                      "activation_shape ", shape_to_string(activation_shape_), " has more than ",
                      kMaxDims, " dimensions");
  PIPETRAIN_CHECK_ARG(static_cast<int>(token_shape.size()) <= kMaxDims, kFn, "token shape ",
                      shape_to_string(token_shape), " has more than ", kMaxDims, " dimensions");
  Tensor table = Tensor::zeros({num_stages, kRow}, DType::kInt32);
  std::int32_t* t = table.data<std::int32_t>();
  std::map<int, std::vector<TiedParameter>> tied_by_stage;
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    const int s = stage_ids_[i];
    Stage* stage = stages_[i];
    std::int32_t* row = t + static_cast<std::ptrdiff_t>(s) * kRow;
    const Shape in_shape = s == 0 ? token_shape : activation_shape_;
    const DType in_dtype = s == 0 ? DType::kInt32 : activation_dtype_;
    Shape out_shape = stage->output_shape(in_shape);
    row[0] = 1;
    row[1] = stage->is_first();
    row[2] = stage->is_last();
    row[3] = static_cast<std::int32_t>(in_dtype);
    row[4] = static_cast<std::int32_t>(in_shape.size());
    for (std::size_t d = 0; d < in_shape.size(); ++d)
      row[5 + d] = static_cast<std::int32_t>(in_shape[d]);
    int o = 5 + kMaxDims;
    PIPETRAIN_CHECK_ARG(static_cast<int>(out_shape.size()) <= kMaxDims, kFn, "stage ", s,
                        " output shape ", shape_to_string(out_shape), " has more than ", kMaxDims,
                        " dimensions");
    row[o] = static_cast<std::int32_t>(stage->output_dtype());
    row[o + 1] = static_cast<std::int32_t>(out_shape.size());
    for (std::size_t d = 0; d < out_shape.size(); ++d)
      row[o + 2 + d] = static_cast<std::int32_t>(out_shape[d]);
    std::vector<TiedParameter> tied = stage->tied_parameters();
    PIPETRAIN_CHECK_ARG(static_cast<int>(tied.size()) <= kMaxTied, kFn, "stage ", s, " has ",
                        tied.size(), " tied parameters, at most ", kMaxTied, " are supported");
    for (std::size_t k = 0; k < tied.size(); ++k) row[o + 2 + kMaxDims + k] = key_hash(tied[k].key);
    tied_by_stage[s] = std::move(tied);
  }
  transport_.all_reduce_sum(table, topology_.pipeline_group(dp_index_));

  auto row_of = [&](int s) { return t + static_cast<std::ptrdiff_t>(s) * kRow; };
  auto shape_at = [&](const std::int32_t* r, int at) {
    Shape shape;
    for (int d = 0; d < r[at]; ++d) shape.push_back(r[at + 1 + d]);
    return shape;
  };
  for (int s = 0; s < num_stages; ++s) {
    const int holder = topology_.rank_of(schedule_.rank_of_stage(s), dp_index_);
    PIPETRAIN_CHECK_ARG(row_of(s)[0] == 1, kFn, "stage ", s, " is held by ", row_of(s)[0],
                        " ranks, expected exactly 1 (rank ", holder,
                        "): the ranks run different schedules");
  }
  for (int s = 1; s < num_stages; ++s) {
    const std::int32_t* prev = row_of(s - 1);
    const std::int32_t* cur = row_of(s);
    const Shape out = shape_at(prev, 5 + kMaxDims + 1);
    const DType out_dtype = static_cast<DType>(prev[5 + kMaxDims]);
    const Shape in = shape_at(cur, 4);
    const DType in_dtype = static_cast<DType>(cur[3]);
    if (out != in || out_dtype != in_dtype) {
      throw InvalidArgument(
          detail::message(kFn, "stage ", s - 1, " (rank ",
                          topology_.rank_of(schedule_.rank_of_stage(s - 1), dp_index_),
                          ") outputs ", describe(out, out_dtype), " but stage ", s, " (rank ",
                          topology_.rank_of(schedule_.rank_of_stage(s), dp_index_), ") expects ",
                          describe(in, in_dtype)));
    }
  }

  // Tied groups: every stage holding a key, in this replica.
  tied_.clear();
  std::set<nn::Parameter*> not_counted;
  std::map<std::string, TiedGroup> groups;
  for (const auto& [s, tied] : tied_by_stage) {
    for (const TiedParameter& tp : tied) {
      const std::int32_t h = key_hash(tp.key);
      TiedGroup& g = groups[tp.key];
      g.key = tp.key;
      g.copies.push_back(tp.parameter);
      int lowest = num_stages;
      std::set<int> ranks;
      for (int other = 0; other < num_stages; ++other) {
        const std::int32_t* r = row_of(other);
        for (int k = 0; k < kMaxTied; ++k) {
          if (r[5 + kMaxDims + 2 + kMaxDims + k] == h) {
            ranks.insert(topology_.rank_of(schedule_.rank_of_stage(other), dp_index_));
            lowest = std::min(lowest, other);
          }
        }
      }
      g.ranks.assign(ranks.begin(), ranks.end());
      if (s != lowest) not_counted.insert(tp.parameter);
    }
  }
  for (auto& [key, g] : groups) tied_.push_back(std::move(g));
  norm_params_.clear();
  for (nn::Parameter* p : params_) {
    if (!not_counted.count(p)) norm_params_.push_back(p);
  }
  shapes_checked_ = true;
}

// ---- the step ------------------------------------------------------------------------------

std::string Executor::grid_row(int slot) const {
  std::ostringstream out;
  out << "rank " << rank_ << ":";
  const auto& slots = schedule_.rank_slots(pp_index_);
  for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
    const std::string cell = slots[i] ? to_string(*slots[i]) : std::string(".");
    out << ' ' << (i == slot ? "[" + cell + "]!" : cell);
  }
  return out.str();
}

StepStats Executor::step(const std::vector<data::Batch>& microbatches, double lr) {
  PIPETRAIN_CHECK_ARG(
      static_cast<int>(microbatches.size()) == schedule_.num_microbatches(), "Executor::step",
      "got ", microbatches.size(),
      " microbatches, the schedule has num_microbatches=", schedule_.num_microbatches());
  for (std::size_t m = 0; m < microbatches.size(); ++m) {
    const data::Batch& b = microbatches[m];
    const auto n = static_cast<std::size_t>(b.batch_size) * b.seq_len;
    PIPETRAIN_CHECK_ARG(
        b.inputs.size() == n && b.targets.size() == n &&
            b.batch_size == microbatches[0].batch_size && b.seq_len == microbatches[0].seq_len,
        "Executor::step", "microbatch ", m, " is ", b.batch_size, " x ", b.seq_len, " with ",
        b.inputs.size(), " inputs and ", b.targets.size(), " targets, expected ",
        microbatches[0].batch_size, " x ", microbatches[0].seq_len, " like microbatch 0");
  }
  StepState state;
  state.stats.step = step_;
  bool agreed_failure = false;
  try {
    if (!shapes_checked_) {
      try {
        check_shapes({microbatches[0].batch_size, microbatches[0].seq_len});
      } catch (const InvalidArgument&) {
        // Every rank saw the same table and throws the same error: aborting would only race
        // the others' exit from the all-reduce and replace their message.
        agreed_failure = true;
        throw;
      }
    }
    for (nn::Parameter* p : params_) p->grad.zero();
    if (options_.barrier_at_step_start) transport_.barrier();
    state.t0 = Clock::now();
    run_slots(state, microbatches);
    state.slot = -1;
    state.peer = -1;
    finish_step(state, lr);
  } catch (const std::exception& e) {
    std::ostringstream msg;
    msg << "rank " << rank_ << " failed";
    const auto& slots = schedule_.rank_slots(pp_index_);
    if (state.slot >= 0 && state.slot < static_cast<int>(slots.size()) && slots[state.slot]) {
      const Action& a = *slots[state.slot];
      msg << " at " << a << " (microbatch " << a.microbatch;
      if (state.peer >= 0) msg << ", peer rank " << state.peer;
      msg << ", slot " << state.slot << ")";
    } else {
      msg << (state.t0 == Clock::time_point{} ? " before the first action"
                                              : " after the last action");
    }
    msg << " in step " << step_ << ":\n" << e.what() << "\n" << grid_row(state.slot);
    if (!agreed_failure) transport_.abort(msg.str());
    rethrow_as(e, detail::message("Executor::step", msg.str()));
  }
  ++step_;
  return std::move(state.stats);
}

void Executor::run_slots(StepState& state, const std::vector<data::Batch>& microbatches) {
  const auto& slots = schedule_.rank_slots(pp_index_);
  const int num_stages = schedule_.num_stages();
  const int num_micro = schedule_.num_microbatches();
  const std::int64_t step = step_;
  const Shape token_shape{microbatches[0].batch_size, microbatches[0].seq_len};

  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] && slots[i]->kind == ActionKind::kRecvForward) state.recv_slots.push_back(i);
    if (slots[i] && slots[i]->kind == ActionKind::kRecvBackward) state.recv_slots.push_back(i);
  }
  auto peer_rank = [&](int stage) {
    return topology_.rank_of(schedule_.rank_of_stage(stage), dp_index_);
  };
  // Posts, in schedule order, every receive whose group index is below `limit`.
  auto post_receives = [&](int limit) {
    while (state.next_recv < state.recv_slots.size() &&
           group_of_slot_[state.recv_slots[state.next_recv]] < limit) {
      const int slot = state.recv_slots[state.next_recv];
      const Action& a = *slots[slot];
      const int from = a.kind == ActionKind::kRecvForward ? a.stage - 1 : a.stage + 1;
      StepState::PendingRecv pending;
      pending.peer = peer_rank(from);
      pending.buffer = Tensor::empty(activation_shape_, activation_dtype_);
      const int saved_slot = state.slot;
      state.slot = slot;
      state.peer = pending.peer;
      pending.request = transport_.irecv(
          pending.peer, comm_header(step, a, activation_shape_, activation_dtype_), pending.buffer);
      state.slot = saved_slot;
      state.peer = -1;
      auto& map = a.kind == ActionKind::kRecvForward ? state.recv_f : state.recv_b;
      map[{a.stage, a.microbatch}] = std::move(pending);
      ++state.next_recv;
    }
  };
  // Waits for the receive of (stage, mb) and returns its buffer.
  auto take_receive = [&](std::map<Key, StepState::PendingRecv>& map, int stage, int mb,
                          double& wait) -> Tensor {
    auto it = map.find({stage, mb});
    if (it == map.end()) {
      throw ScheduleError(detail::message("Executor::step", "no receive was posted for stage ",
                                          stage, " microbatch ", mb, " before its use"));
    }
    state.peer = it->second.peer;
    const auto w0 = Clock::now();
    transport_.wait(it->second.request);
    wait = seconds_since(w0);
    Tensor buffer = std::move(it->second.buffer);
    map.erase(it);
    return buffer;
  };
  auto take = [&](std::map<Key, Tensor>& map, int stage, int mb, const char* what) -> Tensor {
    auto it = map.find({stage, mb});
    if (it == map.end()) {
      throw ScheduleError(detail::message("Executor::step", "no ", what, " of stage ", stage,
                                          " microbatch ", mb, " is available"));
    }
    Tensor t = std::move(it->second);
    map.erase(it);
    return t;
  };

  Tensor loss_scale = Tensor::from_vector<double>({1.0 / num_micro}, Shape{});
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i]) continue;
    const Action a = *slots[i];
    state.slot = static_cast<int>(i);
    state.peer = -1;
    post_receives(groups_started_[i] + options_.recv_lookahead_groups);
    ActionTiming timing;
    timing.slot = static_cast<int>(i);
    timing.action = a;
    const std::pair<int, int> key{a.stage, a.microbatch};
    switch (a.kind) {
      case ActionKind::kRecvForward:
      case ActionKind::kRecvBackward:
        timing.start = timing.end = seconds_since(state.t0);
        break;  // posted by post_receives()
      case ActionKind::kSendForward:
      case ActionKind::kSendBackward: {
        const bool fwd = a.kind == ActionKind::kSendForward;
        state.peer = peer_rank(fwd ? a.stage + 1 : a.stage - 1);
        Tensor t = take(fwd ? state.outputs : state.input_grads, a.stage, a.microbatch,
                        fwd ? "forward output" : "input gradient");
        timing.start = seconds_since(state.t0);
        state.sends.push_back(transport_.isend(
            state.peer, comm_header(step, a, activation_shape_, activation_dtype_), t));
        timing.end = seconds_since(state.t0);
        break;
      }
      case ActionKind::kForward: {
        Stage* stage = local_stage(a.stage);
        Tensor input;
        if (a.stage == 0) {
          input = Tensor::from_vector(microbatches[a.microbatch].inputs, token_shape);
        } else if (local_stage(a.stage - 1) != nullptr) {
          input = take(state.outputs, a.stage - 1, a.microbatch, "forward output");
        } else {
          input = take_receive(state.recv_f, a.stage, a.microbatch, timing.wait);
        }
        if (a.stage == num_stages - 1) {
          stage->set_targets(a.microbatch,
                             Tensor::from_vector(microbatches[a.microbatch].targets, token_shape));
        }
        timing.start = seconds_since(state.t0);
        Tensor out = stage->forward(a.microbatch, input);
        timing.end = seconds_since(state.t0);
        if (a.stage == num_stages - 1) {
          state.loss_sum += out.to_vector<double>()[0];
          ++state.losses;
        } else {
          state.outputs[key] = std::move(out);
        }
        break;
      }
      case ActionKind::kBackward:
      case ActionKind::kBackwardInput: {
        Stage* stage = local_stage(a.stage);
        Tensor grad_out;
        if (a.stage == num_stages - 1) {
          grad_out = loss_scale;
        } else if (local_stage(a.stage + 1) != nullptr) {
          grad_out = take(state.input_grads, a.stage + 1, a.microbatch, "input gradient");
        } else {
          grad_out = take_receive(state.recv_b, a.stage, a.microbatch, timing.wait);
        }
        timing.start = seconds_since(state.t0);
        Tensor grad_in = a.kind == ActionKind::kBackward
                             ? stage->backward(a.microbatch, grad_out)
                             : stage->backward_input(a.microbatch, grad_out);
        timing.end = seconds_since(state.t0);
        if (a.stage > 0) state.input_grads[key] = std::move(grad_in);
        break;
      }
      case ActionKind::kBackwardWeight: {
        timing.start = seconds_since(state.t0);
        local_stage(a.stage)->backward_weight(a.microbatch);
        timing.end = seconds_since(state.t0);
        break;
      }
    }
    state.stats.timeline.push_back(timing);
    // Retire completed sends now and then so their buffers go early.
    if (state.sends.size() > 8) {
      std::erase_if(state.sends, [&](Request& r) { return transport_.test(r); });
    }
  }
  state.slot = -1;
  transport_.wait_all(state.sends);
  if (!state.recv_f.empty() || !state.recv_b.empty() || !state.outputs.empty() ||
      !state.input_grads.empty()) {
    throw ScheduleError(
        detail::message("Executor::step", "rank ", rank_, " ends the step with ",
                        state.recv_f.size() + state.recv_b.size(), " unused receives and ",
                        state.outputs.size() + state.input_grads.size(), " unsent tensors"));
  }
}

void Executor::finish_step(StepState& state, double lr) {
  // Tied parameters: sum the copies' gradients over their holders.
  for (TiedGroup& g : tied_) {
    Tensor sum = g.copies[0]->grad.clone();
    for (std::size_t k = 1; k < g.copies.size(); ++k) {
      // Added through fp64 to stay dtype-agnostic (exact for fp32 copies).
      std::vector<double> a = sum.to_vector<double>();
      const std::vector<double> b = g.copies[k]->grad.to_vector<double>();
      for (std::size_t e = 0; e < a.size(); ++e) a[e] += b[e];
      sum.copy_from(Tensor::from_vector(a, sum.shape()));
    }
    if (g.ranks.size() > 1) transport_.all_reduce_sum(sum, g.ranks);
    for (nn::Parameter* p : g.copies) p->grad.copy_from(sum);
  }

  // Data parallelism: average every gradient over the replicas, in one collective.
  const int d = topology_.data_parallel_size();
  if (d > 1 && !params_.empty()) {
    bool fp64 = false;
    std::int64_t total = 0;
    for (nn::Parameter* p : params_) {
      fp64 = fp64 || p->grad.dtype() == DType::kFloat64;
      total += p->grad.numel();
    }
    Tensor flat = Tensor::empty({total}, fp64 ? DType::kFloat64 : DType::kFloat32);
    std::int64_t at = 0;
    for (nn::Parameter* p : params_) {
      const std::int64_t n = p->grad.numel();
      flat.slice(at, at + n).copy_from(p->grad.view({n}));
      at += n;
    }
    transport_.all_reduce_sum(flat, topology_.data_parallel_group(pp_index_));
    at = 0;
    for (nn::Parameter* p : params_) {
      const std::int64_t n = p->grad.numel();
      p->grad.view({n}).copy_from(flat.slice(at, at + n));
      at += n;
    }
    optim::scale_grads(params_, 1.0 / d);
  }

  // Global statistics in one collective over the world: sum of squares (each replica adds its
  // own, identical after averaging), non-finite flag, loss.
  const double sumsq = optim::local_grad_sum_of_squares(norm_params_);
  const bool finite = optim::grads_are_finite(params_) && std::isfinite(state.loss_sum);
  Tensor stats = Tensor::from_vector<double>(
      {std::isfinite(sumsq) ? sumsq : 0.0, finite && std::isfinite(sumsq) ? 0.0 : 1.0,
       state.losses > 0 ? state.loss_sum / state.losses : 0.0});
  transport_.all_reduce_sum(stats);
  const std::vector<double> s = stats.to_vector<double>();
  state.stats.grad_norm = std::sqrt(s[0] / d);
  state.stats.loss = s[2] / d;
  state.stats.skipped = s[1] > 0.0;
  if (state.stats.skipped) {
    state.stats.grad_norm = std::numeric_limits<double>::quiet_NaN();
    for (nn::Parameter* p : params_) p->grad.zero();
    if (options_.log_skipped_steps) {
      log_warning(rank_, "step " + std::to_string(step_) +
                             " skipped on every rank: non-finite loss or gradient (" +
                             std::to_string(static_cast<int>(s[1])) + " rank(s) reported it)");
    }
  } else {
    if (options_.max_grad_norm > 0.0) {
      state.stats.clip_coefficient =
          optim::clip_coefficient(state.stats.grad_norm, options_.max_grad_norm);
      if (state.stats.clip_coefficient < 1.0) {
        optim::scale_grads(params_, state.stats.clip_coefficient);
      }
    }
    if (optimizer_ != nullptr) optimizer_->step(lr);
  }
  state.stats.seconds = seconds_since(state.t0);
}

// ---- configuration agreement ---------------------------------------------------------------

void check_same_configuration(Transport& transport, const std::string& config_text) {
  const int n = transport.world_size();
  const std::uint64_t h = fnv1a64(config_text);
  // Three 22-bit pieces per rank, so that the sum (one non-zero row per rank) is exact in int32.
  Tensor table = Tensor::zeros({n, 3}, DType::kInt32);
  std::int32_t* t = table.data<std::int32_t>();
  for (int k = 0; k < 3; ++k) {
    t[transport.rank() * 3 + k] = static_cast<std::int32_t>((h >> (22 * k)) & 0x3fffffu);
  }
  transport.all_reduce_sum(table);
  auto hash_of = [&](int r) {
    std::uint64_t v = 0;
    for (int k = 0; k < 3; ++k) v |= static_cast<std::uint64_t>(t[r * 3 + k]) << (22 * k);
    return v;
  };
  for (int r = 1; r < n; ++r) {
    if (hash_of(r) != hash_of(0)) {
      std::ostringstream a, b;
      a << "0x" << std::hex << hash_of(r);
      b << "0x" << std::hex << hash_of(0);
      throw InvalidArgument(detail::message(
          "check_same_configuration", "rank ", r, " runs configuration hash ", a.str(),
          " but rank 0 runs ", b.str(), ": start every rank with the same options"));
    }
  }
}

}  // namespace pipetrain::runtime
