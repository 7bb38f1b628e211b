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
#include "pipetrain/schedule/passes.h"
#include "pipetrain/schedule/validate.h"

namespace pipetrain::runtime {

namespace {

using Clock = std::chrono::steady_clock;
using Key = std::pair<int, int>;  // (stage, microbatch)

constexpr int kMaxTied = 2;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
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

// Every rank's 64-bit hash and flag, gathered in one all-reduce over the world: each rank fills
// its own row (three 22-bit pieces of the hash, the flag), so the sum is exact.
struct RankHash {
  std::uint64_t hash = 0;
  bool flag = false;
};
std::vector<RankHash> gather_hashes(Transport& transport, std::uint64_t hash, bool flag) {
  const int n = transport.world_size();
  Tensor table = Tensor::zeros({n, 4}, DType::kInt32);
  std::int32_t* t = table.data<std::int32_t>();
  for (int k = 0; k < 3; ++k) {
    t[transport.rank() * 4 + k] = static_cast<std::int32_t>((hash >> (22 * k)) & 0x3fffffu);
  }
  t[transport.rank() * 4 + 3] = flag ? 1 : 0;
  transport.all_reduce_sum(table);
  std::vector<RankHash> out(static_cast<std::size_t>(n));
  for (int r = 0; r < n; ++r) {
    for (int k = 0; k < 3; ++k) {
      out[r].hash |= static_cast<std::uint64_t>(t[r * 4 + k]) << (22 * k);
    }
    out[r].flag = t[r * 4 + 3] != 0;
  }
  return out;
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

// ---- boundary transfers ------------------------------------------------------------------

namespace {

// Agreement table layout (fp64, exact for every count): per tensor dtype, ndims, dims.
constexpr int kMaxTensors = 8;
constexpr int kSpecDims = 8;
constexpr int kSpecLen = 2 + kSpecDims;
constexpr int kListLen = 1 + kMaxTensors * kSpecLen;  // count, then the specs

void encode(const std::vector<TensorSpec>& specs, double* out) {
  out[0] = static_cast<double>(specs.size());
  for (std::size_t i = 0; i < specs.size(); ++i) {
    double* e = out + 1 + i * kSpecLen;
    e[0] = static_cast<double>(specs[i].dtype);
    e[1] = static_cast<double>(specs[i].shape.size());
    for (std::size_t d = 0; d < specs[i].shape.size(); ++d) {
      e[2 + d] = static_cast<double>(specs[i].shape[d]);
    }
  }
}

std::vector<TensorSpec> decode(const double* in) {
  std::vector<TensorSpec> specs(static_cast<std::size_t>(in[0]));
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const double* e = in + 1 + i * kSpecLen;
    specs[i].dtype = static_cast<DType>(static_cast<int>(e[0]));
    for (int d = 0; d < static_cast<int>(e[1]); ++d) {
      specs[i].shape.push_back(static_cast<std::int64_t>(e[2 + d]));
    }
  }
  return specs;
}

void check_encodable(const std::vector<TensorSpec>& specs, const char* fn, const std::string& what) {
  PIPETRAIN_CHECK_ARG(specs.size() <= kMaxTensors, fn, what, " has ", specs.size(),
                      " tensors, at most ", kMaxTensors, " may cross a boundary");
  for (const TensorSpec& spec : specs) {
    PIPETRAIN_CHECK_ARG(spec.shape.size() <= kSpecDims, fn, what, " has a tensor of shape ",
                        shape_to_string(spec.shape), ": at most ", kSpecDims,
                        " dimensions are supported");
  }
}

std::uint64_t hash_specs(std::uint64_t h, const std::vector<TensorSpec>& specs) {
  auto mix = [&](std::uint64_t v) {
    for (int b = 0; b < 8; ++b) {
      h ^= (v >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  mix(specs.size());
  for (const TensorSpec& spec : specs) {
    mix(static_cast<std::uint64_t>(spec.dtype));
    mix(spec.shape.size());
    for (std::int64_t d : spec.shape) mix(static_cast<std::uint64_t>(d));
  }
  return h;
}

// The tensors of `specs` whose gradients travel backward.
std::vector<TensorSpec> differentiable(const std::vector<TensorSpec>& specs) {
  std::vector<TensorSpec> out;
  for (const TensorSpec& spec : specs) {
    if (is_differentiable(spec.dtype)) out.push_back(spec);
  }
  return out;
}

std::int64_t padded_words(const TensorSpec& spec) {
  const auto bytes = static_cast<std::int64_t>(shape_numel(spec.shape)) *
                     static_cast<std::int64_t>(dtype_size(spec.dtype));
  return (bytes + 7) / 8;
}

// One message carries a boundary: the tensor itself when there is one, else the tensors packed
// into one fp64 buffer, each padded to 8 bytes (so every view stays aligned).
TensorSpec wire_spec(const std::vector<TensorSpec>& specs) {
  if (specs.size() == 1) return specs[0];
  std::int64_t words = 0;
  for (const TensorSpec& spec : specs) words += padded_words(spec);
  return {{words}, DType::kFloat64};
}

Tensor pack(const TensorList& tensors, const std::vector<TensorSpec>& specs) {
  if (specs.size() == 1) return tensors[0];
  const TensorSpec wire = wire_spec(specs);
  Tensor buffer = Tensor::zeros(wire.shape, wire.dtype, tensors.empty() ? Device::kCpu
                                                                         : tensors[0].device());
  std::int64_t at = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const std::int64_t w = padded_words(specs[i]);
    buffer.slice(at, at + w).view_as(specs[i].dtype, specs[i].shape).copy_from(tensors[i]);
    at += w;
  }
  return buffer;
}

TensorList unpack(const Tensor& buffer, const std::vector<TensorSpec>& specs) {
  if (specs.size() == 1) return {buffer};
  TensorList out;
  std::int64_t at = 0;
  for (const TensorSpec& spec : specs) {
    const std::int64_t w = padded_words(spec);
    out.push_back(buffer.slice(at, at + w).view_as(spec.dtype, spec.shape));
    at += w;
  }
  return out;
}

// Checks that `tensors` match `specs` exactly (what the neighbour expects).
void check_against(const TensorList& tensors, const std::vector<TensorSpec>& specs,
                   const std::string& what) {
  bool ok = tensors.size() == specs.size();
  for (std::size_t i = 0; ok && i < specs.size(); ++i) {
    ok = tensors[i].defined() && tensors[i].shape() == specs[i].shape &&
         tensors[i].dtype() == specs[i].dtype;
  }
  if (ok) return;
  std::string got = "(";
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    if (i) got += ", ";
    got += tensors[i].defined() ? to_string(TensorSpec{tensors[i].shape(), tensors[i].dtype()})
                                : std::string("undefined");
  }
  got += ")";
  throw InvalidArgument(detail::message("Executor", what, " are ", got, ", the agreed specs are ",
                                        to_string(specs)));
}

// The differentiable members of `grads` (checked against specs), in order.
TensorList select_differentiable(const TensorList& grads, const std::vector<TensorSpec>& specs,
                                 const std::string& what) {
  PIPETRAIN_CHECK_ARG(grads.size() == specs.size(), "Executor", what, ": got ", grads.size(),
                      " gradients for ", specs.size(), " tensors ", to_string(specs));
  TensorList out;
  std::vector<TensorSpec> want;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (!is_differentiable(specs[i].dtype)) continue;
    PIPETRAIN_CHECK_ARG(grads[i].defined(), "Executor", what, ": the gradient of tensor ", i, " (",
                        to_string(specs[i]),
                        ") is undefined; return zeros for an input that does not affect the loss");
    out.push_back(grads[i]);
    want.push_back(specs[i]);
  }
  check_against(out, want, what);
  return out;
}

// Spreads the differentiable gradients back to one entry per tensor (undefined for integers).
TensorList expand_gradients(TensorList grads, const std::vector<TensorSpec>& specs) {
  TensorList out(specs.size());
  std::size_t k = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    if (is_differentiable(specs[i].dtype)) out[i] = std::move(grads[k++]);
  }
  return out;
}

}  // namespace

// ---- per-step state ------------------------------------------------------------------------

struct Executor::StepState {
  StepStats stats;
  EvalStats eval;
  Mode mode = Mode::kTrain;
  Clock::time_point t0;
  int slot = -1;                          // slot being run, for error reports
  int peer = -1;                          // peer involved in the slot being run, -1 when none
  std::map<Key, TensorList> outputs;      // forward outputs waiting for SEND_F or a local stage
  std::map<Key, TensorList> input_grads;  // input gradients waiting for SEND_B or a local stage
  struct PendingRecv {
    Request request;
    Tensor buffer;
    int peer = -1;
  };
  std::map<Key, PendingRecv> recv_f, recv_b;
  std::vector<Request> sends;
  std::size_t next_recv = 0;  // index into recv_slots
  std::vector<int> recv_slots;
  std::vector<double> losses;  // this replica's, by microbatch (NaN until computed)
};

Executor::Plan::Plan(Schedule s) : schedule(std::move(s)) {}

namespace {
// Communication groups: maximal runs of consecutive communication slots (empty slots do not
// break a run, as in validate()).
void group_slots(const std::vector<Schedule::Slot>& slots, std::vector<int>& group_of_slot,
                 std::vector<int>& groups_started) {
  group_of_slot.assign(slots.size(), -1);
  groups_started.assign(slots.size(), 0);
  int groups = 0;
  bool in_group = false;
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] && is_comm(slots[i]->kind)) {
      if (!in_group) ++groups;
      in_group = true;
      group_of_slot[i] = groups - 1;
    } else if (slots[i]) {
      in_group = false;
    }
    groups_started[i] = groups;
  }
}

// True when both lists hold the same parameters, in any order.
bool same_parameters(std::span<nn::Parameter* const> a, const std::vector<nn::Parameter*>& b) {
  if (a.size() != b.size()) return false;
  std::vector<nn::Parameter*> x(a.begin(), a.end()), y = b;
  std::sort(x.begin(), x.end());
  std::sort(y.begin(), y.end());
  return x == y;
}
}  // namespace

Executor::Executor(Schedule schedule, Topology topology, Transport& transport,
                   std::vector<Stage*> stages, nn::Loss* loss, optim::Optimizer* optimizer,
                   ExecutorOptions options)
    // One action at a time: an overlapped slot's two actions run in sequence, the F first.
    : schedule_(expand_overlap(schedule)),
      train_(schedule_),
      eval_(forward_only(schedule_)),
      topology_(topology),
      transport_(transport),
      stages_(std::move(stages)),
      loss_(loss),
      optimizer_(optimizer),
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
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    PIPETRAIN_CHECK_ARG(stages_[i] != nullptr, kFn, "Stage object for stage ", stage_ids_[i],
                        " is null");
  }
  const int last = schedule_.num_stages() - 1;
  PIPETRAIN_CHECK_ARG(local_stage(last) == nullptr || loss_ != nullptr, kFn, "rank ", rank_,
                      " holds the last stage (", last, ") but has no Loss");

  // Parameters, each once; a tied copy counts toward the norm only on its lowest stage here
  // (agree_stages() later drops copies whose key has a lower stage on another rank).
  std::set<nn::Parameter*> seen;
  for (Stage* stage : stages_) {
    for (nn::Parameter* p : stage->parameters()) {
      if (seen.insert(p).second) params_.push_back(p);
    }
  }
  for (Plan* plan : {&train_, &eval_}) {
    group_slots(plan->schedule.rank_slots(pp_index_), plan->group_of_slot, plan->groups_started);
  }
}

Stage* Executor::local_stage(int stage) const {
  for (std::size_t i = 0; i < stage_ids_.size(); ++i) {
    if (stage_ids_[i] == stage) return stages_[i];
  }
  return nullptr;
}

// ---- agreement -----------------------------------------------------------------------------

void Executor::agree_stages() {
  constexpr const char* kFn = "Executor";
  const int num_stages = schedule_.num_stages();
  // Row: present, error flag, tied hashes[kMaxTied]. A stage this rank cannot accept is flagged
  // so that every rank of the replica throws, instead of the others waiting out the deadline.
  constexpr int kRowLen = 2 + kMaxTied;
  Tensor table = Tensor::zeros({num_stages, kRowLen}, DType::kInt32);
  std::int32_t* t = table.data<std::int32_t>();
  std::map<int, std::vector<TiedParameter>> tied_by_stage;
  std::string local_error;
  std::map<std::string, const nn::Parameter*> first_copy;
  for (std::size_t i = 0; i < stages_.size(); ++i) {
    const int s = stage_ids_[i];
    std::int32_t* row = t + static_cast<std::ptrdiff_t>(s) * kRowLen;
    row[0] = 1;
    std::vector<TiedParameter> tied = stages_[i]->tied_parameters();
    try {
      PIPETRAIN_CHECK_ARG(static_cast<int>(tied.size()) <= kMaxTied, kFn, "stage ", s, " has ",
                          tied.size(), " tied parameters, at most ", kMaxTied, " are supported");
      for (const TiedParameter& tp : tied) {
        // Copies on this rank must be alike (those on other ranks meet in the all-reduce,
        // which refuses another shape or dtype).
        auto [it, fresh] = first_copy.emplace(tp.key, tp.parameter);
        const nn::Parameter& a = *it->second;
        const nn::Parameter& b = *tp.parameter;
        PIPETRAIN_CHECK_ARG(fresh || (a.value.shape() == b.value.shape() &&
                                      a.value.dtype() == b.value.dtype() &&
                                      a.weight_decay == b.weight_decay),
                            kFn, "tied copies of '", tp.key, "' differ: '", a.name, "' is ",
                            to_string(TensorSpec{a.value.shape(), a.value.dtype()}),
                            a.weight_decay ? " with" : " without", " weight decay, '", b.name,
                            "' is ", to_string(TensorSpec{b.value.shape(), b.value.dtype()}),
                            b.weight_decay ? " with" : " without", " weight decay");
      }
      for (std::size_t k = 0; k < tied.size(); ++k) row[2 + k] = key_hash(tied[k].key);
    } catch (const InvalidArgument& e) {
      if (local_error.empty()) local_error = e.what();
      row[1] = 1;
    }
    tied_by_stage[s] = std::move(tied);
  }
  transport_.all_reduce_sum(table, topology_.pipeline_group(dp_index_));
  if (!local_error.empty()) throw InvalidArgument(local_error);
  for (int s = 0; s < num_stages; ++s) {
    PIPETRAIN_CHECK_ARG(t[static_cast<std::ptrdiff_t>(s) * kRowLen + 1] == 0, kFn, "stage ", s,
                        " (rank ", topology_.rank_of(schedule_.rank_of_stage(s), dp_index_),
                        ") has tied parameters it cannot use (its error says why)");
  }
  auto row_of = [&](int s) { return t + static_cast<std::ptrdiff_t>(s) * kRowLen; };
  for (int s = 0; s < num_stages; ++s) {
    const int holder = topology_.rank_of(schedule_.rank_of_stage(s), dp_index_);
    PIPETRAIN_CHECK_ARG(row_of(s)[0] == 1, kFn, "stage ", s, " is held by ", row_of(s)[0],
                        " ranks, expected exactly 1 (rank ", holder,
                        "): the ranks run different schedules");
  }
  // Tied groups: every stage holding a key, in this replica. The first copy on the lowest
  // stage holding the key is the reference: it alone counts toward the gradient norm, and its
  // value is given to every other copy now (copies built from different initialisers would
  // otherwise never meet).
  tied_.clear();
  std::set<nn::Parameter*> not_counted;
  std::map<std::string, TiedGroup> groups;
  std::map<std::string, nn::Parameter*> reference;  // this rank's copy that is the reference
  for (const auto& [s, tied] : tied_by_stage) {
    for (const TiedParameter& tp : tied) {
      const std::int32_t h = key_hash(tp.key);
      TiedGroup& g = groups[tp.key];
      g.key = tp.key;
      g.copies.push_back(tp.parameter);
      int lowest = num_stages;
      std::set<int> ranks;
      for (int other = 0; other < num_stages; ++other) {
        for (int k = 0; k < kMaxTied; ++k) {
          if (row_of(other)[2 + k] == h) {
            ranks.insert(topology_.rank_of(schedule_.rank_of_stage(other), dp_index_));
            lowest = std::min(lowest, other);
          }
        }
      }
      g.ranks.assign(ranks.begin(), ranks.end());
      if (s == lowest && !reference.count(tp.key)) {
        reference[tp.key] = tp.parameter;
      } else {
        not_counted.insert(tp.parameter);
      }
    }
  }
  for (auto& [key, g] : groups) {
    const auto it = reference.find(key);
    Tensor value = it != reference.end() ? g.copies[0]->value.clone() : Tensor();
    if (it != reference.end()) {
      value.copy_from(it->second->value);
    } else {
      value = Tensor::zeros(g.copies[0]->value.shape(), g.copies[0]->value.dtype());
    }
    if (g.ranks.size() > 1) transport_.all_reduce_sum(value, g.ranks);
    for (nn::Parameter* p : g.copies) {
      if (p != (it != reference.end() ? it->second : nullptr)) p->value.copy_from(value);
    }
    tied_.push_back(std::move(g));
  }
  norm_params_.clear();
  for (nn::Parameter* p : params_) {
    if (!not_counted.count(p)) norm_params_.push_back(p);
  }
  stages_checked_ = true;
}

void Executor::agree(StepState& state, const Plan& plan,
                     const std::vector<Microbatch>& microbatches, const char* fn) {
  try {
    agree_specs(microbatches, state.mode, fn);
  } catch (const InvalidArgument&) {
    throw;  // every rank throws alike: nothing to abort, the Executor stays usable
  } catch (const std::exception& e) {
    fail(state, plan, e, fn);  // a peer is missing or aborted
  }
}

void Executor::agree_specs(const std::vector<Microbatch>& microbatches, Mode mode,
                           const char* fn) {
  // Local checks first; their verdict travels with the hash so that every rank throws together.
  std::string local_error;
  std::uint64_t signature = 1469598103934665603ull;
  try {
    PIPETRAIN_CHECK_ARG(static_cast<int>(microbatches.size()) == schedule_.num_microbatches(), fn,
                        "got ", microbatches.size(),
                        " microbatches, the schedule has num_microbatches=",
                        schedule_.num_microbatches());
    const std::vector<TensorSpec> in0 = specs_of(microbatches[0].inputs);
    const std::vector<TensorSpec> tg0 = specs_of(microbatches[0].targets);
    PIPETRAIN_CHECK_ARG(!in0.empty(), fn, "microbatch 0 has no input tensors");
    PIPETRAIN_CHECK_ARG(mode == Mode::kEval || !tg0.empty(), fn,
                        "microbatch 0 has no targets: training needs them");
    check_encodable(in0, fn, "the inputs");
    check_encodable(tg0, fn, "the targets");
    for (std::size_t m = 1; m < microbatches.size(); ++m) {
      const std::vector<TensorSpec> in = specs_of(microbatches[m].inputs);
      const std::vector<TensorSpec> tg = specs_of(microbatches[m].targets);
      PIPETRAIN_CHECK_ARG(in == in0, fn, "microbatch ", m, " has inputs ", to_string(in),
                          " but microbatch 0 has ", to_string(in0),
                          ": every microbatch of a step must have the same shapes");
      PIPETRAIN_CHECK_ARG(tg == tg0, fn, "microbatch ", m, " has targets ", to_string(tg),
                          " but microbatch 0 has ", to_string(tg0),
                          ": every microbatch of a step must have the same shapes");
    }
    signature = hash_specs(hash_specs(signature, in0), tg0);
  } catch (const std::exception& e) {
    local_error = e.what();
  }

  // One all-reduce over the world: each rank's signature and error flag.
  const std::vector<RankHash> ranks = gather_hashes(transport_, signature, !local_error.empty());
  if (!local_error.empty()) throw InvalidArgument(local_error);
  const int n = static_cast<int>(ranks.size());
  for (int r = 0; r < n; ++r) {
    if (ranks[r].flag) {
      throw InvalidArgument(detail::message(fn, "rank ", r,
                                            " refused its microbatches (its error says why)"));
    }
  }
  for (int r = 1; r < n; ++r) {
    if (ranks[r].hash != ranks[0].hash) {
      throw InvalidArgument(detail::message(
          fn, "rank ", r, " passes microbatches of other shapes than rank 0",
          ": every rank must pass microbatches with the same specs"));
    }
  }
  if (!stages_checked_) agree_stages();
  // The signature covers the targets: an evaluation without them re-agrees (no loss check), one
  // with them checks the loss like a training step, so switching modes costs nothing more.
  if (signature == agreed_signature_ && !boundaries_.empty()) return;
  propagate_specs(microbatches, mode, fn);
  agreed_signature_ = signature;
}

void Executor::propagate_specs(const std::vector<Microbatch>& microbatches, Mode mode,
                               const char* fn) {
  // Stage by stage over the world: the holder of stage s (in each replica) adds its output
  // specs, or an error flag, to row s of its replica. Row layout: error flag, spec list.
  const int num_stages = schedule_.num_stages();
  const int d = topology_.data_parallel_size();
  constexpr int kRowLen = 1 + kListLen;
  std::vector<std::vector<TensorSpec>> boundaries(static_cast<std::size_t>(num_stages) + 1);
  boundaries[0] = specs_of(microbatches[0].inputs);
  const std::vector<TensorSpec> targets = specs_of(microbatches[0].targets);
  for (int s = 0; s <= num_stages; ++s) {
    // Round num_stages: the last stage's holder checks the outputs against the targets.
    const bool loss_round = s == num_stages;
    const int holder_stage = loss_round ? num_stages - 1 : s;
    Stage* stage = local_stage(holder_stage);
    Tensor table = Tensor::zeros({d, kRowLen}, DType::kFloat64);
    double* row = table.data<double>() + static_cast<std::ptrdiff_t>(dp_index_) * kRowLen;
    std::string local_error;
    if (stage != nullptr) {
      try {
        if (loss_round) {
          if (mode == Mode::kTrain || !targets.empty()) loss_->check(boundaries[s], targets);
        } else {
          std::vector<TensorSpec> out = stage->output_specs(boundaries[s]);
          check_encodable(out, fn, "stage " + std::to_string(s) + "'s output");
          encode(out, row + 1);
        }
      } catch (const std::exception& e) {
        local_error = e.what();
        row[0] = 1.0;
      }
    }
    transport_.all_reduce_sum(table);
    if (!local_error.empty()) {
      throw InvalidArgument(detail::message(
          fn, loss_round ? "the loss" : "stage " + std::to_string(s), " (rank ", rank_,
          ") cannot take ",
          loss_round ? "the outputs " + to_string(boundaries[s]) + " with the targets " +
                           to_string(targets)
                     : "its inputs " + to_string(boundaries[s]),
          ": ", local_error));
    }
    const double* all = table.data<double>();
    for (int r = 0; r < d; ++r) {
      if (all[r * kRowLen] != 0.0) {
        const int holder = topology_.rank_of(schedule_.rank_of_stage(holder_stage), r);
        throw InvalidArgument(detail::message(
            fn, loss_round ? "the loss" : "stage " + std::to_string(s), " (rank ", holder,
            ") cannot take ", loss_round ? "the outputs with these targets" : "its inputs",
            " (rank ", holder, "'s error says why)"));
      }
    }
    if (!loss_round) boundaries[s + 1] = decode(all + static_cast<std::ptrdiff_t>(dp_index_) * kRowLen + 1);
  }
  boundaries_ = std::move(boundaries);
}

// ---- the step ------------------------------------------------------------------------------

std::string Executor::grid_row(const Plan& plan, int slot) const {
  std::ostringstream out;
  out << "rank " << rank_ << ":";
  const auto& slots = plan.schedule.rank_slots(pp_index_);
  for (int i = 0; i < static_cast<int>(slots.size()); ++i) {
    const std::string cell = slots[i] ? to_string(*slots[i]) : std::string(".");
    out << ' ' << (i == slot ? "[" + cell + "]!" : cell);
  }
  return out.str();
}

void Executor::fail(StepState& state, const Plan& plan, const std::exception& e, const char* fn) {
  std::ostringstream msg;
  msg << "rank " << rank_ << " failed";
  const auto& slots = plan.schedule.rank_slots(pp_index_);
  if (state.slot >= 0 && state.slot < static_cast<int>(slots.size()) && slots[state.slot]) {
    const Action& a = *slots[state.slot];
    msg << " at " << a << " (microbatch " << a.microbatch;
    if (state.peer >= 0) msg << ", peer rank " << state.peer;
    msg << ", slot " << state.slot << ")";
  } else {
    msg << (state.t0 == Clock::time_point{} ? " before the first action"
                                            : " after the last action");
  }
  msg << " in " << (state.mode == Mode::kTrain ? "step " : "evaluation after step ") << step_
      << ":\n"
      << e.what() << "\n"
      << grid_row(plan, state.slot);
  transport_.abort(msg.str());
  failure_ = e.what();
  // Whatever the stages and the loss keep for this step's microbatches goes, so that they can
  // serve a new Executor (stage.h promises it).
  const int m = schedule_.num_microbatches();
  for (int k = 0; k < m; ++k) {
    const MicrobatchId id = static_cast<MicrobatchId>(dp_index_) * m + k;
    try {
      for (Stage* stage : stages_) stage->release(id);
      if (loss_ != nullptr) loss_->release(id);
    } catch (...) {
    }
  }
  rethrow_as(e, detail::message(fn, msg.str()));
}

void Executor::set_steps_done(std::int64_t steps) {
  PIPETRAIN_CHECK_ARG(steps >= 0, "Executor::set_steps_done", "steps=", steps, " must be >= 0");
  step_ = steps;
}

void Executor::check_usable(const char* fn) const {
  if (failure_.empty()) return;
  throw AbortedError(detail::message(
      fn, "rank ", rank_, ": this Executor failed earlier and aborted its transport; build a "
      "new one (and a new transport). The failure was: ", failure_));
}

StepStats Executor::step(const std::vector<Microbatch>& microbatches, double lr) {
  constexpr const char* kFn = "Executor::step";
  check_usable(kFn);
  StepState state;
  state.mode = Mode::kTrain;
  state.stats.step = step_;
  agree(state, train_, microbatches, kFn);
  try {
    for (Stage* stage : stages_) stage->begin_step(step_);
    for (nn::Parameter* p : params_) p->grad.zero();
    if (options_.barrier_at_step_start) transport_.barrier();
    state.t0 = Clock::now();
    run_slots(state, train_, microbatches);
    state.slot = -1;
    state.peer = -1;
    finish_step(state, lr);
  } catch (const std::exception& e) {
    fail(state, train_, e, kFn);
  }
  ++step_;
  return std::move(state.stats);
}

EvalStats Executor::evaluate(const std::vector<Microbatch>& microbatches) {
  constexpr const char* kFn = "Executor::evaluate";
  check_usable(kFn);
  StepState state;
  state.mode = Mode::kEval;
  agree(state, eval_, microbatches, kFn);
  const bool has_targets = !microbatches[0].targets.empty();
  try {
    state.t0 = Clock::now();
    run_slots(state, eval_, microbatches);
    state.slot = -1;
    state.peer = -1;
    if (has_targets) {
      const int m = schedule_.num_microbatches();
      const int d = topology_.data_parallel_size();
      Tensor losses = Tensor::zeros({static_cast<std::int64_t>(d) * m}, DType::kFloat64);
      if (local_stage(schedule_.num_stages() - 1) != nullptr) {
        for (int k = 0; k < m; ++k) losses.data<double>()[dp_index_ * m + k] = state.losses[k];
      }
      transport_.all_reduce_sum(losses);
      state.eval.microbatch_losses = losses.to_vector<double>();
      double sum = 0;
      for (double l : state.eval.microbatch_losses) sum += l;
      state.eval.loss = sum / static_cast<double>(state.eval.microbatch_losses.size());
    } else {
      state.eval.loss = std::numeric_limits<double>::quiet_NaN();
    }
  } catch (const std::exception& e) {
    fail(state, eval_, e, kFn);
  }
  state.eval.seconds = seconds_since(state.t0);
  return std::move(state.eval);
}

void Executor::run_slots(StepState& state, const Plan& plan,
                         const std::vector<Microbatch>& microbatches) {
  const auto& slots = plan.schedule.rank_slots(pp_index_);
  const int num_stages = schedule_.num_stages();
  const int num_micro = schedule_.num_microbatches();
  const std::int64_t step = step_;
  const bool train = state.mode == Mode::kTrain;
  const bool last_here = local_stage(num_stages - 1) != nullptr;
  const bool with_targets = !microbatches[0].targets.empty();
  state.losses.assign(num_micro, std::numeric_limits<double>::quiet_NaN());
  if (!train && last_here) state.eval.outputs.resize(num_micro);

  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (slots[i] && slots[i]->kind == ActionKind::kRecvForward) state.recv_slots.push_back(i);
    if (slots[i] && slots[i]->kind == ActionKind::kRecvBackward) state.recv_slots.push_back(i);
  }
  auto peer_rank = [&](int stage) {
    return topology_.rank_of(schedule_.rank_of_stage(stage), dp_index_);
  };
  // What travels for an action: forward, boundary s (RECV_F of s, SEND_F of s-1); backward,
  // the differentiable part of boundary s (SEND_B of s, RECV_B of s-1).
  auto transfer_specs = [&](const Action& a) {
    switch (a.kind) {
      case ActionKind::kRecvForward: return boundaries_[a.stage];
      case ActionKind::kSendForward: return boundaries_[a.stage + 1];
      case ActionKind::kSendBackward: return differentiable(boundaries_[a.stage]);
      default: return differentiable(boundaries_[a.stage + 1]);  // kRecvBackward
    }
  };
  // Posts, in schedule order, every receive whose group index is below `limit`.
  auto post_receives = [&](int limit) {
    while (state.next_recv < state.recv_slots.size() &&
           plan.group_of_slot[state.recv_slots[state.next_recv]] < limit) {
      const int slot = state.recv_slots[state.next_recv];
      const Action& a = *slots[slot];
      const int from = a.kind == ActionKind::kRecvForward ? a.stage - 1 : a.stage + 1;
      const TensorSpec wire = wire_spec(transfer_specs(a));
      StepState::PendingRecv pending;
      pending.peer = peer_rank(from);
      pending.buffer = Tensor::empty(wire.shape, wire.dtype);
      const int saved_slot = state.slot;
      state.slot = slot;
      state.peer = pending.peer;
      pending.request = transport_.irecv(pending.peer, comm_header(step, a, wire.shape, wire.dtype),
                                         pending.buffer);
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
  auto take = [&](std::map<Key, TensorList>& map, int stage, int mb,
                  const char* what) -> TensorList {
    auto it = map.find({stage, mb});
    if (it == map.end()) {
      throw ScheduleError(detail::message("Executor::step", "no ", what, " of stage ", stage,
                                          " microbatch ", mb, " is available"));
    }
    TensorList t = std::move(it->second);
    map.erase(it);
    return t;
  };

  const double loss_scale = 1.0 / num_micro;
  // Stages and the loss see the microbatch's index in the global batch (replica d's m-th is
  // d * M + m), so that randomness derived from it (Dropout) is that of one device running all
  // D * M microbatches.
  auto id_of = [&](const Action& a) {
    return static_cast<MicrobatchId>(dp_index_) * num_micro + a.microbatch;
  };
  for (std::size_t i = 0; i < slots.size(); ++i) {
    if (!slots[i]) continue;
    const Action a = *slots[i];
    state.slot = static_cast<int>(i);
    state.peer = -1;
    post_receives(plan.groups_started[i] + options_.recv_lookahead_groups);
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
        TensorList t = take(fwd ? state.outputs : state.input_grads, a.stage, a.microbatch,
                            fwd ? "forward output" : "input gradient");
        timing.start = seconds_since(state.t0);
        const std::vector<TensorSpec> specs = transfer_specs(a);
        const TensorSpec wire = wire_spec(specs);
        state.sends.push_back(transport_.isend(
            state.peer, comm_header(step, a, wire.shape, wire.dtype), pack(t, specs)));
        timing.end = seconds_since(state.t0);
        break;
      }
      case ActionKind::kForward: {
        Stage* stage = local_stage(a.stage);
        TensorList inputs;
        if (a.stage == 0) {
          inputs = microbatches[a.microbatch].inputs;
        } else if (local_stage(a.stage - 1) != nullptr) {
          inputs = take(state.outputs, a.stage - 1, a.microbatch, "forward output");
        } else {
          inputs = unpack(take_receive(state.recv_f, a.stage, a.microbatch, timing.wait),
                          boundaries_[a.stage]);
        }
        timing.start = seconds_since(state.t0);
        TensorList out = train ? stage->forward(id_of(a), inputs) : stage->infer(inputs);
        check_against(out, boundaries_[a.stage + 1],
                      "stage " + std::to_string(a.stage) + "'s outputs");
        if (a.stage == num_stages - 1) {
          const TensorList& targets = microbatches[a.microbatch].targets;
          if (train) {
            state.losses[a.microbatch] = loss_->forward(id_of(a), out, targets);
          } else {
            if (with_targets) state.losses[a.microbatch] = loss_->evaluate(out, targets);
            state.eval.outputs[a.microbatch] = std::move(out);
          }
        } else {
          state.outputs[key] = std::move(out);
        }
        timing.end = seconds_since(state.t0);
        break;
      }
      case ActionKind::kBackward:
      case ActionKind::kBackwardInput: {
        Stage* stage = local_stage(a.stage);
        const std::vector<TensorSpec>& out_specs = boundaries_[a.stage + 1];
        TensorList grad_out;
        timing.start = seconds_since(state.t0);
        if (a.stage == num_stages - 1) {
          // Checked like a neighbour's gradients: one per output, the outputs' specs.
          grad_out = select_differentiable(loss_->backward(id_of(a), loss_scale), out_specs,
                                           "the loss's gradients");
        } else if (local_stage(a.stage + 1) != nullptr) {
          grad_out = take(state.input_grads, a.stage + 1, a.microbatch, "input gradient");
        } else {
          grad_out = unpack(take_receive(state.recv_b, a.stage, a.microbatch, timing.wait),
                            differentiable(out_specs));
          timing.start = seconds_since(state.t0);
        }
        // Local and received gradients hold the differentiable outputs only; the stage gets
        // one entry per output.
        grad_out = expand_gradients(std::move(grad_out), out_specs);
        TensorList grad_in = a.kind == ActionKind::kBackward
                                 ? stage->backward(id_of(a), grad_out)
                                 : stage->backward_input(id_of(a), grad_out);
        timing.end = seconds_since(state.t0);
        if (a.stage > 0) {
          state.input_grads[key] = select_differentiable(
              grad_in, boundaries_[a.stage],
              "stage " + std::to_string(a.stage) + "'s input gradients");
        }
        break;
      }
      case ActionKind::kBackwardWeight: {
        timing.start = seconds_since(state.t0);
        local_stage(a.stage)->backward_weight(id_of(a));
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
  // own, identical after averaging), non-finite flag, then every microbatch's loss.
  const int m = schedule_.num_microbatches();
  const bool last_here = local_stage(schedule_.num_stages() - 1) != nullptr;
  double loss_sum = 0;
  if (last_here) {
    for (double l : state.losses) loss_sum += l;
  }
  // One pass: the fp32 sum of squares is finite exactly when every element is, and each tied
  // copy left out of norm_params_ holds the gradient of a copy counted on some rank.
  const double sumsq = optim::local_grad_sum_of_squares(norm_params_);
  const bool finite = std::isfinite(loss_sum);
  Tensor stats = Tensor::zeros({2 + static_cast<std::int64_t>(d) * m}, DType::kFloat64);
  double* s = stats.data<double>();
  s[0] = std::isfinite(sumsq) ? sumsq : 0.0;
  s[1] = finite && std::isfinite(sumsq) ? 0.0 : 1.0;
  if (last_here) {
    for (int k = 0; k < m; ++k) s[2 + dp_index_ * m + k] = state.losses[k];
  }
  transport_.all_reduce_sum(stats);
  state.stats.grad_norm = std::sqrt(s[0] / d);
  state.stats.microbatch_losses.assign(s + 2, s + 2 + static_cast<std::ptrdiff_t>(d) * m);
  double total = 0;
  for (double l : state.stats.microbatch_losses) total += l;
  state.stats.loss = total / (static_cast<double>(d) * m);
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
    double grad_scale = 1.0;
    if (options_.max_grad_norm > 0.0) {
      state.stats.clip_coefficient =
          optim::clip_coefficient(state.stats.grad_norm, options_.max_grad_norm);
      grad_scale = std::min(1.0, state.stats.clip_coefficient);
    }
    // Clipping fused with the update (one pass) when the optimizer holds exactly our parameters.
    if (optimizer_ != nullptr && same_parameters(optimizer_->parameters(), params_)) {
      optimizer_->step(lr, grad_scale);
    } else {
      optim::scale_grads(params_, grad_scale);
      if (optimizer_ != nullptr) optimizer_->step(lr);
    }
  }
  state.stats.seconds = seconds_since(state.t0);
}

// ---- configuration agreement ---------------------------------------------------------------

void check_same_configuration(Transport& transport, const std::string& config_text) {
  const std::vector<RankHash> ranks = gather_hashes(transport, fnv1a64(config_text), false);
  const int n = static_cast<int>(ranks.size());
  auto hash_of = [&](int r) { return ranks[r].hash; };
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
