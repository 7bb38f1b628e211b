// The MPI transport: one process per rank, host memory, polled non-blocking MPI calls.
#include <algorithm>
#include <climits>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../comm_util.h"
#include "pipetrain/cpu_threads.h"
#include "mpi_check.h"

namespace pipetrain {
namespace {

using Clock = std::chrono::steady_clock;

// Tags on the transport's private communicator. Each kind of traffic has its own tag, and MPI
// keeps messages of one (source, tag, communicator) in order, so the k-th header and the k-th
// payload from a peer belong to the k-th send.
constexpr int kHeaderTag = 1;
constexpr int kPayloadTag = 2;
constexpr int kAbortTag = 3;
constexpr int kMaxDims = detail::kMaxWireDims;
constexpr int kMaxReason = 512;


struct Op {
  bool send = false;
  int peer = 0;
  MessageHeader header;
  Tensor tensor;
  detail::WireHeader wire;
  MPI_Request header_request = MPI_REQUEST_NULL;
  MPI_Request payload_request = MPI_REQUEST_NULL;
  bool header_checked = false;  // receive: the arrived header was compared
};

// A collective left posted when its wait threw (deadline, abort). MPI offers no way to cancel
// one, and libnbc keeps progressing it, reading its buffer and its communicator: both must
// outlive the process's last MPI call (freeing the communicator made MPI_Finalize crash).
struct Stranded {
  MPI_Request request = MPI_REQUEST_NULL;
  Tensor buffer;
};

// What a transport leaves to MPI when it goes after a failure: never freed, since MPI may still
// read or write it; the process ends soon after (MpiSession ends it with MPI_Abort).
struct Leftovers {
  std::unordered_map<std::uint64_t, std::unique_ptr<Op>> pending;
  std::vector<std::unique_ptr<Op>> retired;
  std::vector<Stranded> stranded;
  std::unique_ptr<std::string> abort_notice;  // the bytes of the abort notices still being sent
};

// Where they are kept: reachable from a global for as long as the process runs, so that
// LeakSanitizer sees memory held on purpose rather than lost.
void keep_leftovers(std::unique_ptr<Leftovers> leftovers) {
  static std::mutex mutex;
  static auto* kept = new std::vector<std::unique_ptr<Leftovers>>();
  const std::lock_guard lock(mutex);
  kept->push_back(std::move(leftovers));
}

class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(const TransportOptions& options) : Transport(options) {
    int initialized = 0;
    PIPETRAIN_MPI_CHECK(MPI_Initialized(&initialized));
    if (!initialized) {
      throw InvalidArgument(detail::message(
          "make_transport", "MPI is not initialised: create a pipetrain::MpiSession first"));
    }
    PIPETRAIN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm_));
    PIPETRAIN_MPI_CHECK(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
    PIPETRAIN_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
    PIPETRAIN_MPI_CHECK(MPI_Comm_size(comm_, &size_));
    // The processes of one host share its cores (cpu_threads.h).
    MPI_Comm host = MPI_COMM_NULL;
    PIPETRAIN_MPI_CHECK(
        MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &host));
    int ranks_on_host = 1;
    const int rc = MPI_Comm_size(host, &ranks_on_host);
    MPI_Comm_free(&host);
    PIPETRAIN_MPI_CHECK(rc);
    divide_cpu_threads(ranks_on_host);
  }

  // After a failure some requests may still be posted: receives are cancelled, everything else
  // is left to MPI together with its buffers and communicators (see Leftovers), and
  // note_mpi_unsafe() tells MpiSession that only MPI_Abort may end the process.
  ~MpiTransport() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (finalized) return;
    for (auto& [id, op] : pending_) release(*op);
    bool notice_in_flight = false;
    for (MPI_Request& r : abort_requests_) {
      if (r == MPI_REQUEST_NULL) continue;
      int done = 0;
      if (MPI_Test(&r, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS || !done) {
        MPI_Request_free(&r);
        notice_in_flight = true;
      }
    }
    if (notice_in_flight) detail::note_mpi_unsafe();
    if (stranded_.empty()) {
      for (auto& [group, comm] : group_comms_) MPI_Comm_free(&comm);
      MPI_Comm_free(&comm_);
    }
    if (!pending_.empty() || !retired_.empty() || !stranded_.empty() || notice_in_flight) {
      try {
        keep_leftovers(std::make_unique<Leftovers>(Leftovers{std::move(pending_),
                                                             std::move(retired_),
                                                             std::move(stranded_),
                                                             std::move(abort_notice_)}));
      } catch (...) {  // out of memory: the members are freed below, as before this fix
      }
    }
  }

  std::string_view name() const override { return "mpi"; }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }

  Request isend(int peer, const MessageHeader& header, const Tensor& tensor) override {
    constexpr std::string_view kFunction = "MpiTransport::isend";
    detail::check_post(kFunction, rank_, size_, peer, header, tensor, true);
    check_sizes(kFunction, header);
    auto op = make_op(true, peer, header, tensor);
    std::lock_guard lock(mutex_);
    poll_abort_locked();
    throw_if_aborted(kFunction);
    PIPETRAIN_MPI_CHECK(MPI_Isend(&op->wire, sizeof(detail::WireHeader), MPI_BYTE, peer, kHeaderTag,
                                  comm_, &op->header_request));
    PIPETRAIN_MPI_CHECK(MPI_Isend(op->tensor.raw_data(), static_cast<int>(header.nbytes),
                                  MPI_BYTE, peer, kPayloadTag, comm_, &op->payload_request));
    return remember(std::move(op));
  }

  Request irecv(int peer, const MessageHeader& expected, Tensor& destination) override {
    constexpr std::string_view kFunction = "MpiTransport::irecv";
    detail::check_post(kFunction, rank_, size_, peer, expected, destination, false);
    check_sizes(kFunction, expected);
    auto op = make_op(false, peer, expected, destination);
    std::lock_guard lock(mutex_);
    poll_abort_locked();
    throw_if_aborted(kFunction);
    PIPETRAIN_MPI_CHECK(MPI_Irecv(&op->wire, sizeof(detail::WireHeader), MPI_BYTE, peer, kHeaderTag,
                                  comm_, &op->header_request));
    PIPETRAIN_MPI_CHECK(MPI_Irecv(op->tensor.raw_data(), static_cast<int>(expected.nbytes),
                                  MPI_BYTE, peer, kPayloadTag, comm_, &op->payload_request));
    return remember(std::move(op));
  }

  bool test(Request& request) override {
    constexpr std::string_view kFunction = "MpiTransport::test";
    Op& op = find(kFunction, request);
    std::lock_guard lock(mutex_);
    poll_abort_locked();
    throw_if_aborted(kFunction);
    if (!progress(kFunction, request, op)) return false;
    pending_.erase(request.id);
    request.id = 0;
    return true;
  }

  void wait(Request& request) override {
    std::vector<Request> one{request};
    wait_requests("MpiTransport::wait", one);
    request.id = 0;
  }

  void wait_all(std::vector<Request>& requests) override {
    wait_requests("MpiTransport::wait_all", requests);
  }

  void all_reduce_sum(Tensor& tensor, const std::vector<int>& group) override {
    constexpr std::string_view kFunction = "MpiTransport::all_reduce_sum";
    const std::vector<int> members = detail::check_group(kFunction, group, rank_, size_);
    detail::check_reduce_tensor(kFunction, tensor);
    PIPETRAIN_CHECK_ARG(tensor.numel() <= INT_MAX, kFunction, "tensor of ", tensor.numel(),
                        " elements is too large for one MPI call");
    const std::string what = "all_reduce_sum over " + detail::ranks_to_string(members) + " of " +
                             shape_to_string(tensor.shape()) + ' ' +
                             std::string(to_string(tensor.dtype()));
    const auto deadline = Clock::now() + timeout();
    MPI_Comm comm = group_comm(kFunction, members);
    // bf16 has no MPI type: reduce an fp32 copy and round once at the end.
    Tensor work = tensor.dtype() == DType::kBFloat16 ? tensor.to(DType::kFloat32) : tensor;
    MPI_Datatype type = MPI_FLOAT;
    switch (work.dtype()) {
      case DType::kFloat32: type = MPI_FLOAT; break;
      case DType::kFloat64: type = MPI_DOUBLE; break;
      case DType::kInt32: type = MPI_INT32_T; break;
      case DType::kBFloat16: break;  // converted above
    }
    MPI_Request request = MPI_REQUEST_NULL;
    {
      std::lock_guard lock(mutex_);
      poll_abort_locked();
      throw_if_aborted(kFunction);
      PIPETRAIN_MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, work.raw_data(),
                                         static_cast<int>(work.numel()), type, MPI_SUM, comm,
                                         &request));
    }
    poll_collective(kFunction, request, deadline, what, work);
    if (work.dtype() != tensor.dtype()) tensor.copy_from(work);
  }

  void barrier() override {
    constexpr std::string_view kFunction = "MpiTransport::barrier";
    const auto deadline = Clock::now() + timeout();
    MPI_Request request = MPI_REQUEST_NULL;
    {
      std::lock_guard lock(mutex_);
      poll_abort_locked();
      throw_if_aborted(kFunction);
      PIPETRAIN_MPI_CHECK(MPI_Ibarrier(comm_, &request));
    }
    poll_collective(kFunction, request, deadline, "barrier", Tensor());
  }

  void abort(std::string_view reason) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      if (aborted_) return;
      aborted_ = true;
      abort_rank_ = rank_;
      abort_reason_ = std::string(reason.substr(0, kMaxReason));
      detail::note_mpi_failure(detail::message("MpiTransport::abort", "rank ", rank_,
                                               " aborted the world: ", abort_reason_));
      // Best effort: tell every peer. A peer notices when it next polls the transport. The
      // bytes live on the heap, apart from this object: a send may outlive the transport
      // (Leftovers), and a short string's bytes would sit inside the object itself.
      abort_notice_ = std::make_unique<std::string>(abort_reason_);
      abort_requests_.resize(static_cast<std::size_t>(size_), MPI_REQUEST_NULL);
      for (int peer = 0; peer < size_; ++peer) {
        if (peer == rank_) continue;
        MPI_Isend(abort_notice_->data(), static_cast<int>(abort_notice_->size()), MPI_CHAR, peer,
                  kAbortTag, comm_, &abort_requests_[static_cast<std::size_t>(peer)]);
      }
    } catch (...) {  // nothing better to do in a noexcept function
    }
  }

  bool aborted() const override {
    std::lock_guard lock(mutex_);
    const_cast<MpiTransport*>(this)->poll_abort_locked();
    return aborted_;
  }

 private:
  static void check_sizes(std::string_view function, const MessageHeader& header) {
    PIPETRAIN_CHECK_ARG(header.shape.size() <= kMaxDims, function, "shape ",
                        shape_to_string(header.shape), " has ", header.shape.size(),
                        " dimensions; the MPI transport sends at most ", kMaxDims);
    PIPETRAIN_CHECK_ARG(header.nbytes <= static_cast<std::uint64_t>(INT_MAX), function,
                        "message of ", header.nbytes, " bytes is too large for one MPI call");
  }

  static std::unique_ptr<Op> make_op(bool send, int peer, const MessageHeader& header,
                                     const Tensor& tensor) {
    auto op = std::make_unique<Op>();
    op->send = send;
    op->peer = peer;
    op->header = header;
    op->tensor = tensor;
    if (send) op->wire = detail::encode_wire(header);
    return op;
  }

  Request remember(std::unique_ptr<Op> op) {
    const Request request{next_id_++};
    pending_.emplace(request.id, std::move(op));
    return request;
  }

  Op& find(std::string_view function, const Request& request) {
    const auto it = pending_.find(request.id);
    PIPETRAIN_CHECK_ARG(it != pending_.end(), function, "request ", request.id,
                        request.valid() ? " is not pending on this transport"
                                        : " is invalid (never posted or already completed)");
    return *it->second;
  }

  // Reads abort notices from peers. Called locked.
  void poll_abort_locked() {
    if (aborted_) return;
    int flag = 0;
    MPI_Status status;
    PIPETRAIN_MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, kAbortTag, comm_, &flag, &status));
    if (!flag) return;
    int count = 0;
    PIPETRAIN_MPI_CHECK(MPI_Get_count(&status, MPI_CHAR, &count));
    std::string reason(static_cast<std::size_t>(std::max(count, 0)), '\0');
    PIPETRAIN_MPI_CHECK(MPI_Recv(reason.data(), count, MPI_CHAR, status.MPI_SOURCE, kAbortTag,
                                 comm_, MPI_STATUS_IGNORE));
    aborted_ = true;
    abort_rank_ = status.MPI_SOURCE;
    abort_reason_ = std::move(reason);
    detail::note_mpi_failure(detail::message("MpiTransport", "rank ", rank_,
                                             ": the world was aborted by rank ", abort_rank_,
                                             ": ", abort_reason_));
  }

  // (An abort was already noted as a failure where it was learnt, in abort() or
  // poll_abort_locked().)
  void throw_if_aborted(std::string_view function) const {
    if (!aborted_) return;
    throw AbortedError(detail::message(function, "rank ", rank_, ": the world was aborted by rank ",
                                       abort_rank_, ": ", abort_reason_));
  }

  // Advances one operation; true when it has completed. Throws MismatchError. Called locked.
  bool progress(std::string_view function, const Request& request, Op& op) {
    int done = 0;
    if (op.header_request != MPI_REQUEST_NULL) {
      PIPETRAIN_MPI_CHECK(MPI_Test(&op.header_request, &done, MPI_STATUS_IGNORE));
      if (!done) return false;
    }
    if (!op.send && !op.header_checked) {
      op.header_checked = true;
      const MessageHeader sent = detail::decode_wire(op.wire);
      if (!matches(sent, op.header)) {
        // Only the receiver learns of a mismatch; the sender finds out by the abort that the
        // failing rank is expected to send, or by its deadline.
        const std::string text = detail::message(
            function, detail::recv_mismatch(rank_, op.peer, op.header, sent));
        retire(request);
        detail::note_mpi_failure(text);
        throw MismatchError(text);
      }
    }
    if (op.payload_request != MPI_REQUEST_NULL) {
      PIPETRAIN_MPI_CHECK(MPI_Test(&op.payload_request, &done, MPI_STATUS_IGNORE));
      if (!done) return false;
    }
    return true;
  }

  // Cancels what can be cancelled of an unfinished operation, so that MPI_Finalize does not
  // wait for it. Receives are cancelled; sends still running are freed (MPI completes them in
  // the background, if the peer ever receives them), which makes MPI_Finalize unsafe.
  void release(Op& op) noexcept {
    for (MPI_Request* r : {&op.header_request, &op.payload_request}) {
      if (*r == MPI_REQUEST_NULL) continue;
      if (!op.send) {
        MPI_Cancel(r);
        MPI_Request_free(r);
        continue;
      }
      int done = 0;
      if (MPI_Test(r, &done, MPI_STATUS_IGNORE) == MPI_SUCCESS && done) continue;
      MPI_Request_free(r);
      detail::note_mpi_unsafe();
    }
  }

  // Releases an unfinished operation and keeps its buffers alive until the transport goes:
  // MPI may still read a freed send's buffers, or write a receive that was matched before the
  // cancel took effect.
  void retire(const Request& request) noexcept {
    const auto it = pending_.find(request.id);
    if (it == pending_.end()) return;
    release(*it->second);
    try {
      retired_.push_back(std::move(it->second));
    } catch (...) {  // out of memory: leak rather than free buffers MPI may use
      (void)it->second.release();
    }
    pending_.erase(it);
  }

  void wait_requests(std::string_view function, std::vector<Request>& requests) {
    std::vector<Op*> ops;
    ops.reserve(requests.size());
    for (Request& request : requests) ops.push_back(&find(function, request));
    const auto deadline = Clock::now() + timeout();
    std::size_t next = 0;
    for (int spins = 0;; ++spins) {
      {
        std::lock_guard lock(mutex_);
        poll_abort_locked();
        throw_if_aborted(function);
        while (next < requests.size() && progress(function, requests[next], *ops[next])) {
          pending_.erase(requests[next].id);
          requests[next].id = 0;
          ++next;
        }
        if (next == requests.size()) return;
        if (Clock::now() >= deadline) {
          const Op& op = *ops[next];
          const std::string what = detail::describe_op(op.header, op.peer);
          for (std::size_t i = next; i < requests.size(); ++i) {
            retire(requests[i]);
            requests[i].id = 0;
          }
          std::string text = detail::message(function, "rank ", rank_, " timed out after ",
                                             detail::format_ms(timeout()), " waiting for ", what);
          detail::note_mpi_failure(text);
          throw TimeoutError(std::move(text));
        }
      }
      pause(spins);
    }
  }

  // Polls a posted collective until it completes, the deadline or an abort. When it throws, the
  // collective stays posted (MPI cannot cancel one): it is stranded with its buffer, and its
  // communicator is never freed.
  void poll_collective(std::string_view function, MPI_Request& request, Clock::time_point deadline,
                       const std::string& what, const Tensor& buffer) {
    for (int spins = 0;; ++spins) {
      {
        std::lock_guard lock(mutex_);
        try {
          poll_abort_locked();
          throw_if_aborted(function);
          int done = 0;
          PIPETRAIN_MPI_CHECK(MPI_Test(&request, &done, MPI_STATUS_IGNORE));
          if (done) return;
          if (Clock::now() >= deadline) {
            std::string text = detail::message(function, "rank ", rank_, " timed out after ",
                                               detail::format_ms(timeout()), " waiting for ",
                                               what);
            detail::note_mpi_failure(text);
            throw TimeoutError(std::move(text));
          }
        } catch (...) {
          strand(request, buffer);
          throw;
        }
      }
      pause(spins);
    }
  }

  // Keeps a collective that is still posted, and its buffer, for as long as MPI runs. Locked.
  void strand(MPI_Request& request, const Tensor& buffer) noexcept {
    if (request == MPI_REQUEST_NULL) return;
    detail::note_mpi_unsafe();
    try {
      stranded_.push_back(Stranded{request, buffer});
    } catch (...) {  // out of memory: leak the buffer rather than free memory MPI may use
      (void)new (std::nothrow) Tensor(buffer);
    }
    request = MPI_REQUEST_NULL;
  }

  // Spin briefly for latency, then sleep a little so that a long wait does not burn a core.
  static void pause(int spins) {
    if (spins < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // The communicator of a group: the whole world, or one made by the group's members on first
  // use (MPI_Comm_create_group is collective over the group only) and cached.
  MPI_Comm group_comm(std::string_view function, const std::vector<int>& members) {
    (void)function;
    if (static_cast<int>(members.size()) == size_) return comm_;
    const auto it = group_comms_.find(members);
    if (it != group_comms_.end()) return it->second;
    std::lock_guard lock(mutex_);
    MPI_Group world_group;
    MPI_Group sub_group;
    MPI_Comm sub = MPI_COMM_NULL;
    PIPETRAIN_MPI_CHECK(MPI_Comm_group(comm_, &world_group));
    PIPETRAIN_MPI_CHECK(MPI_Group_incl(world_group, static_cast<int>(members.size()),
                                       members.data(), &sub_group));
    PIPETRAIN_MPI_CHECK(MPI_Comm_create_group(comm_, sub_group, /*tag=*/0, &sub));
    MPI_Group_free(&sub_group);
    MPI_Group_free(&world_group);
    PIPETRAIN_MPI_CHECK(MPI_Comm_set_errhandler(sub, MPI_ERRORS_RETURN));
    group_comms_.emplace(members, sub);
    return sub;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  mutable std::mutex mutex_;  // serialises MPI calls so that abort() may come from any thread
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Op>> pending_;
  std::vector<std::unique_ptr<Op>> retired_;
  std::vector<Stranded> stranded_;
  std::map<std::vector<int>, MPI_Comm> group_comms_;
  bool aborted_ = false;
  int abort_rank_ = -1;
  std::string abort_reason_;
  std::unique_ptr<std::string> abort_notice_;  // what abort() sends to the peers
  std::vector<MPI_Request> abort_requests_;
};

}  // namespace

namespace detail {

bool mpi_transport_built() { return true; }

std::unique_ptr<Transport> make_mpi_transport(const TransportOptions& options) {
  return std::make_unique<MpiTransport>(options);
}

}  // namespace detail
}  // namespace pipetrain
