// The in-process world: one Transport per rank, one thread per rank, shared mailboxes.
#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <unordered_map>

#include "../comm_util.h"
#include "pipetrain/comm/inprocess.h"
#include "pipetrain/cpu_threads.h"

namespace pipetrain {
namespace {

using Clock = std::chrono::steady_clock;

struct Op {
  bool send = false;
  int peer = 0;
  MessageHeader header;
  Tensor tensor;
  bool done = false;
  std::string mismatch;  // non-empty when the matched peer's header disagreed
};

struct Mailbox {  // messages from one rank to another, matched in order
  std::deque<std::shared_ptr<Op>> sends;
  std::deque<std::shared_ptr<Op>> recvs;
};

// One collective (all-reduce or barrier) over one group, reused round after round.
struct Collective {
  std::vector<Tensor> contributions;  // by position in the group; undefined until arrived
  std::vector<bool> arrived;
  int num_arrived = 0;
  int num_departed = 0;
  bool complete = false;
  Tensor result;
  std::string error;
};

struct World {
  explicit World(int n) : size(n), mailboxes(static_cast<std::size_t>(n) * n) {}
  Mailbox& mailbox(int from, int to) {
    return mailboxes[static_cast<std::size_t>(from) * size + to];
  }

  const int size;
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<Mailbox> mailboxes;
  std::map<std::pair<bool, std::vector<int>>, Collective> collectives;  // (is_barrier, group)
  bool aborted = false;
  int abort_rank = -1;
  std::string abort_reason;
};

template <typename T, typename Acc>
void sum_in_rank_order(const std::vector<Tensor>& inputs, Tensor& result) {
  const std::int64_t n = result.numel();
  std::vector<Acc> acc(static_cast<std::size_t>(n), Acc{});
  for (const Tensor& t : inputs) {
    const T* p = t.data<T>();
    for (std::int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<T, BFloat16>) {
        acc[static_cast<std::size_t>(i)] += bf16_to_float(p[i]);
      } else {
        acc[static_cast<std::size_t>(i)] += p[i];
      }
    }
  }
  T* out = result.data<T>();
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, BFloat16>) {
      out[i] = float_to_bf16(acc[static_cast<std::size_t>(i)]);
    } else {
      out[i] = acc[static_cast<std::size_t>(i)];
    }
  }
}

class InProcessTransport final : public Transport {
 public:
  InProcessTransport(std::shared_ptr<World> world, int rank, const TransportOptions& options)
      : Transport(options), world_(std::move(world)), rank_(rank) {}

  std::string_view name() const override { return "inprocess"; }
  int rank() const override { return rank_; }
  int world_size() const override { return world_->size; }

  Request isend(int peer, const MessageHeader& header, const Tensor& tensor) override {
    detail::check_post("InProcessTransport::isend", rank_, world_->size, peer, header, tensor,
                       true);
    return post(true, peer, header, tensor, "InProcessTransport::isend");
  }

  Request irecv(int peer, const MessageHeader& expected, Tensor& destination) override {
    detail::check_post("InProcessTransport::irecv", rank_, world_->size, peer, expected,
                       destination, false);
    return post(false, peer, expected, destination, "InProcessTransport::irecv");
  }

  bool test(Request& request) override {
    const auto op = find("InProcessTransport::test", request);
    std::unique_lock lock(world_->mutex);
    if (!op->done) throw_if_aborted("InProcessTransport::test");
    if (!op->done) return false;
    finish("InProcessTransport::test", request, *op);
    return true;
  }

  void wait(Request& request) override {
    const auto op = find("InProcessTransport::wait", request);
    const auto deadline = Clock::now() + timeout();
    std::unique_lock lock(world_->mutex);
    wait_for("InProcessTransport::wait", lock, deadline, request, *op);
  }

  void wait_all(std::vector<Request>& requests) override {
    std::vector<std::shared_ptr<Op>> ops;
    ops.reserve(requests.size());
    for (Request& request : requests) ops.push_back(find("InProcessTransport::wait_all", request));
    const auto deadline = Clock::now() + timeout();
    std::unique_lock lock(world_->mutex);
    for (std::size_t i = 0; i < requests.size(); ++i) {
      wait_for("InProcessTransport::wait_all", lock, deadline, requests[i], *ops[i]);
    }
  }

  void all_reduce_sum(Tensor& tensor, const std::vector<int>& group) override {
    constexpr std::string_view kFunction = "InProcessTransport::all_reduce_sum";
    const std::vector<int> members = detail::check_group(kFunction, group, rank_, world_->size);
    detail::check_reduce_tensor(kFunction, tensor);
    collective(kFunction, false, members, tensor,
               "all_reduce_sum over " + detail::ranks_to_string(members) + " of " +
                   shape_to_string(tensor.shape()) + ' ' + std::string(to_string(tensor.dtype())));
  }

  void barrier() override {
    Tensor none;
    collective("InProcessTransport::barrier", true,
               detail::check_group("InProcessTransport::barrier", {}, rank_, world_->size), none,
               "barrier");
  }

  void abort(std::string_view reason) noexcept override {
    try {
      std::lock_guard lock(world_->mutex);
      if (!world_->aborted) {
        world_->aborted = true;
        world_->abort_rank = rank_;
        world_->abort_reason = std::string(reason);
      }
    } catch (...) {  // a failed lock or allocation leaves nothing better to do
    }
    world_->changed.notify_all();
  }

  bool aborted() const override {
    std::lock_guard lock(world_->mutex);
    return world_->aborted;
  }

 private:
  Request post(bool send, int peer, const MessageHeader& header, const Tensor& tensor,
               std::string_view function) {
    auto op = std::make_shared<Op>();
    op->send = send;
    op->peer = peer;
    op->header = header;
    op->tensor = tensor;
    {
      std::lock_guard lock(world_->mutex);
      throw_if_aborted(function);
      Mailbox& box = send ? world_->mailbox(rank_, peer) : world_->mailbox(peer, rank_);
      (send ? box.sends : box.recvs).push_back(op);
      match(box, send ? rank_ : peer, send ? peer : rank_);
    }
    world_->changed.notify_all();
    const Request request{next_id_++};
    pending_.emplace(request.id, std::move(op));
    return request;
  }

  // Pairs the oldest send with the oldest receive, as long as both exist. Called locked.
  static void match(Mailbox& box, int from, int to) {
    while (!box.sends.empty() && !box.recvs.empty()) {
      Op& send = *box.sends.front();
      Op& recv = *box.recvs.front();
      if (matches(send.header, recv.header)) {
        if (send.header.nbytes > 0) {
          std::memcpy(recv.tensor.raw_data(), send.tensor.raw_data(), send.header.nbytes);
        }
      } else {
        recv.mismatch = detail::recv_mismatch(to, from, recv.header, send.header);
        send.mismatch = detail::send_mismatch(from, to, send.header, recv.header);
      }
      send.done = recv.done = true;
      box.sends.pop_front();
      box.recvs.pop_front();
    }
  }

  std::shared_ptr<Op> find(std::string_view function, const Request& request) const {
    const auto it = pending_.find(request.id);
    PIPETRAIN_CHECK_ARG(it != pending_.end(), function, "request ", request.id,
                        request.valid() ? " is not pending on this transport"
                                        : " is invalid (never posted or already completed)");
    return it->second;
  }

  // Called locked.
  void throw_if_aborted(std::string_view function) const {
    if (!world_->aborted) return;
    throw AbortedError(detail::message(function, "rank ", rank_, ": the world was aborted by rank ",
                                       world_->abort_rank, ": ", world_->abort_reason));
  }

  // Called locked, for a completed op.
  void finish(std::string_view function, Request& request, const Op& op) {
    pending_.erase(request.id);
    request.id = 0;
    if (!op.mismatch.empty()) throw MismatchError(detail::message(function, op.mismatch));
  }

  void wait_for(std::string_view function, std::unique_lock<std::mutex>& lock,
                Clock::time_point deadline, Request& request, const Op& op) {
    world_->changed.wait_until(lock, deadline, [&] { return op.done || world_->aborted; });
    // A transfer that completed before the abort completed: only unfinished waits fail.
    if (!op.done) throw_if_aborted(function);
    if (!op.done) {
      throw TimeoutError(detail::message(function, "rank ", rank_, " timed out after ",
                                         detail::format_ms(timeout()), " waiting for ",
                                         detail::describe_op(op.header, op.peer)));
    }
    finish(function, request, op);
  }

  void collective(std::string_view function, bool is_barrier, const std::vector<int>& members,
                  Tensor& tensor, const std::string& what) {
    const auto deadline = Clock::now() + timeout();
    const auto position = static_cast<std::size_t>(
        std::lower_bound(members.begin(), members.end(), rank_) - members.begin());
    std::unique_lock lock(world_->mutex);
    throw_if_aborted(function);
    Collective& c = world_->collectives[{is_barrier, members}];
    if (c.arrived.empty()) {
      c.arrived.assign(members.size(), false);
      c.contributions.resize(members.size());
    }
    auto wait_or_throw = [&](auto done) {
      world_->changed.wait_until(lock, deadline, [&] { return done() || world_->aborted; });
      if (done()) return;  // completed before the abort: it stands
      throw_if_aborted(function);
      std::vector<int> missing;
      for (std::size_t i = 0; i < members.size(); ++i) {
        if (!c.arrived[i]) missing.push_back(members[i]);
      }
      throw TimeoutError(detail::message(function, "rank ", rank_, " timed out after ",
                                         detail::format_ms(timeout()), " waiting for ranks ",
                                         detail::ranks_to_string(missing), " in ", what));
    };
    // Members of the previous round may still be collecting their result.
    wait_or_throw([&] { return !c.complete; });
    c.arrived[position] = true;
    c.contributions[position] = tensor;
    if (++c.num_arrived == static_cast<int>(members.size())) {
      if (!is_barrier) reduce(c, members);
      c.complete = true;
      world_->changed.notify_all();
    }
    wait_or_throw([&] { return c.complete; });
    const std::string error = c.error;
    if (!is_barrier && error.empty()) tensor.copy_from(c.result);
    if (++c.num_departed == static_cast<int>(members.size())) {
      c = Collective{};
      c.arrived.assign(members.size(), false);
      c.contributions.resize(members.size());
      world_->changed.notify_all();
    }
    if (!error.empty()) throw MismatchError(detail::message(function, error));
  }

  static void reduce(Collective& c, const std::vector<int>& members) {
    const Tensor& first = c.contributions[0];
    for (std::size_t i = 1; i < members.size(); ++i) {
      const Tensor& t = c.contributions[i];
      if (t.shape() != first.shape() || t.dtype() != first.dtype()) {
        c.error = "members disagree: rank " + std::to_string(members[0]) + " has " +
                  shape_to_string(first.shape()) + ' ' + std::string(to_string(first.dtype())) +
                  ", rank " + std::to_string(members[i]) + " has " +
                  shape_to_string(t.shape()) + ' ' + std::string(to_string(t.dtype()));
        return;
      }
    }
    c.result = Tensor::empty(first.shape(), first.dtype());
    switch (first.dtype()) {
      case DType::kFloat32: sum_in_rank_order<float, float>(c.contributions, c.result); break;
      case DType::kFloat64: sum_in_rank_order<double, double>(c.contributions, c.result); break;
      case DType::kBFloat16: sum_in_rank_order<BFloat16, float>(c.contributions, c.result); break;
      case DType::kInt32:
        sum_in_rank_order<std::int32_t, std::int32_t>(c.contributions, c.result);
        break;
    }
  }

  std::shared_ptr<World> world_;
  const int rank_;
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::shared_ptr<Op>> pending_;
};

}  // namespace

LauncherWorld mpi_launcher_world() {
  // Set in every process by Open MPI's mpirun, by MPICH's and Intel MPI's Hydra (and srun with
  // PMI-2), and by MVAPICH's launcher.
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"}) {
    const char* value = std::getenv(variable);
    if (value == nullptr || *value == '\0') continue;
    char* end = nullptr;
    const long size = std::strtol(value, &end, 10);
    if (*end == '\0' && size >= 1 && size <= 1 << 24) {
      return LauncherWorld{static_cast<int>(size), variable};
    }
  }
  return LauncherWorld{};
}

std::vector<std::unique_ptr<Transport>> make_inprocess_world(int world_size,
                                                             const TransportOptions& options) {
  PIPETRAIN_CHECK_ARG(world_size >= 1, "make_inprocess_world", "world_size=", world_size,
                      " must be >= 1");
  const LauncherWorld launcher = mpi_launcher_world();
  PIPETRAIN_CHECK_ARG(launcher.size <= 1, "make_inprocess_world", "this process is one of ",
                      launcher.size, " started by an MPI launcher (", launcher.variable, "=",
                      launcher.size, "), but an in-process world runs every rank as a thread "
                      "of one process, so each process would run the whole job: use the MPI "
                      "transport (make_transport(\"mpi\")) or start a single process");
  divide_cpu_threads(world_size);
  auto world = std::make_shared<World>(world_size);
  std::vector<std::unique_ptr<Transport>> transports;
  for (int r = 0; r < world_size; ++r) {
    transports.push_back(std::make_unique<InProcessTransport>(world, r, options));
  }
  return transports;
}

}  // namespace pipetrain
