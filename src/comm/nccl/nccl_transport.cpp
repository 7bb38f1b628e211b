// The NCCL transport: one process per GPU, CUDA tensors, bootstrapped through MPI.
//
// Posts are queued and launched together, as one ncclGroupStart/End, by the next call that
// waits (wait, wait_all, test, all_reduce_sum, barrier). A maximal run of posts is thus one
// NCCL group, which is what validate()'s blocking semantics need: NCCL point-to-point calls
// block the stream until the peer posts, so two ranks whose sends come first would deadlock if
// each send were its own group.
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "../../kernels/cuda/check.h"
#include "../comm_util.h"
#include "../mpi/mpi_check.h"
#include "nccl_check.h"
#include "pipetrain/cuda/device.h"

namespace pipetrain {

namespace detail {

void throw_nccl_error(const char* call, ncclResult_t code, const char* file, int line) {
  int rank = -1;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const char* shown = shown_source_path(file);  // mpi_check.h: independent of the checkout
  std::string text = "[nccl] rank " + std::to_string(rank) + ": " + call +
                     " failed: " + ncclGetErrorString(code) + " (" + shown + ":" +
                     std::to_string(line) + ")";
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && *last != '\0') text += ": " + std::string(last);
  throw CommError(text);
}

}  // namespace detail

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxDims = detail::kMaxWireDims;

// Staging for one header: NCCL moves device memory, the check reads host memory. The pinned
// host half lets the device-to-host copy stay asynchronous.
struct HeaderSlot {
  detail::WireHeader* host = nullptr;
  void* device = nullptr;
};

// One launched NCCL group; its event is recorded after the group (and the header copies).
struct Batch {
  cudaEvent_t done = nullptr;
  ~Batch() {
    if (done != nullptr) cudaEventDestroy(done);
  }
};

struct Op {
  bool send = false;
  int peer = 0;
  MessageHeader header;
  Tensor tensor;
  HeaderSlot slot;
  std::shared_ptr<Batch> batch;  // null while queued
};

class NcclTransport final : public Transport {
 public:
  explicit NcclTransport(const TransportOptions& options) : Transport(options) {
    require_cuda_device("make_transport");
    int initialized = 0;
    PIPETRAIN_MPI_CHECK(MPI_Initialized(&initialized));
    if (!initialized) {
      throw InvalidArgument(detail::message(
          "make_transport", "MPI is not initialised: create a pipetrain::MpiSession first"));
    }
    try {
      bootstrap();
    } catch (...) {
      release_all(/*abort=*/true);
      throw;
    }
  }

  ~NcclTransport() override {
    bool in_flight = false;
    for (const auto& [id, op] : pending_) in_flight = in_flight || op->batch != nullptr;
    release_all(/*abort=*/aborted_ || in_flight || !retired_.empty());
  }

  std::string_view name() const override { return "nccl"; }
  int rank() const override { return rank_; }
  int world_size() const override { return size_; }

  Request isend(int peer, const MessageHeader& header, const Tensor& tensor) override {
    return post("NcclTransport::isend", true, peer, header, tensor);
  }

  Request irecv(int peer, const MessageHeader& expected, Tensor& destination) override {
    return post("NcclTransport::irecv", false, peer, expected, destination);
  }

  bool test(Request& request) override {
    constexpr std::string_view kFunction = "NcclTransport::test";
    Op& op = find(kFunction, request);
    std::lock_guard lock(mutex_);
    throw_if_aborted(kFunction);
    PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
    launch_locked();
    check_async_locked(kFunction, detail::describe_op(op.header, op.peer));
    if (!event_done(op.batch->done)) return false;
    finish_locked(kFunction, request);
    return true;
  }

  void wait(Request& request) override {
    std::vector<Request> one{request};
    wait_requests("NcclTransport::wait", one);
    request.id = 0;
  }

  void wait_all(std::vector<Request>& requests) override {
    wait_requests("NcclTransport::wait_all", requests);
  }

  void all_reduce_sum(Tensor& tensor, const std::vector<int>& group) override {
    constexpr std::string_view kFunction = "NcclTransport::all_reduce_sum";
    const std::vector<int> members = detail::check_group(kFunction, group, rank_, size_);
    PIPETRAIN_CHECK_ARG(tensor.defined(), kFunction, "tensor is undefined");
    PIPETRAIN_CHECK_ARG(tensor.device() == Device::kCuda, kFunction, "tensor is on ",
                        to_string(tensor.device()),
                        ": the NCCL transport reduces CUDA memory only");
    const std::string what = "all_reduce_sum over " + detail::ranks_to_string(members) + " of " +
                             shape_to_string(tensor.shape()) + ' ' +
                             std::string(to_string(tensor.dtype()));
    const auto deadline = Clock::now() + timeout();
    PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
    // bf16 sums in fp32 and rounds once at the end, as the other transports do (NCCL's own
    // bf16 sum would round at every step of the ring).
    Tensor work = tensor.dtype() == DType::kBFloat16 ? tensor.to(DType::kFloat32) : tensor;
    ncclDataType_t type = ncclFloat32;
    switch (work.dtype()) {
      case DType::kFloat32:
        type = ncclFloat32;
        break;
      case DType::kFloat64:
        type = ncclFloat64;
        break;
      case DType::kInt32:
        type = ncclInt32;
        break;
      case DType::kBFloat16:
        break;  // converted above
    }
    {
      std::lock_guard lock(mutex_);
      throw_if_aborted(kFunction);
      launch_locked();
      ncclComm_t comm = group_comm_locked(members);
      PIPETRAIN_NCCL_CHECK(ncclAllReduce(work.raw_data(), work.raw_data(),
                                         static_cast<std::size_t>(work.numel()), type, ncclSum,
                                         comm, stream_));
      PIPETRAIN_CUDA_CHECK(cudaEventRecord(collective_done_, stream_));
    }
    poll_collective(kFunction, deadline, what);
    if (work.dtype() != tensor.dtype()) tensor.copy_from(work);
  }

  void barrier() override {
    constexpr std::string_view kFunction = "NcclTransport::barrier";
    const auto deadline = Clock::now() + timeout();
    {
      std::lock_guard lock(mutex_);
      throw_if_aborted(kFunction);
      PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
      launch_locked();
      PIPETRAIN_NCCL_CHECK(
          ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_));
      PIPETRAIN_CUDA_CHECK(cudaEventRecord(collective_done_, stream_));
    }
    poll_collective(kFunction, deadline, "barrier");
  }

  void abort(std::string_view reason) noexcept override {
    try {
      std::lock_guard lock(mutex_);
      abort_locked(std::string(reason));
    } catch (...) {  // nothing better to do in a noexcept function
    }
  }

  bool aborted() const override {
    std::lock_guard lock(mutex_);
    return aborted_;
  }

 private:
  void bootstrap() {
    PIPETRAIN_MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &mpi_comm_));
    PIPETRAIN_MPI_CHECK(MPI_Comm_set_errhandler(mpi_comm_, MPI_ERRORS_RETURN));
    PIPETRAIN_MPI_CHECK(MPI_Comm_rank(mpi_comm_, &rank_));
    PIPETRAIN_MPI_CHECK(MPI_Comm_size(mpi_comm_, &size_));
    // One process per GPU: the rank among the processes of this node picks the device.
    MPI_Comm node = MPI_COMM_NULL;
    PIPETRAIN_MPI_CHECK(
        MPI_Comm_split_type(mpi_comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    int local_rank = 0;
    const int rc = MPI_Comm_rank(node, &local_rank);
    MPI_Comm_free(&node);
    PIPETRAIN_MPI_CHECK(rc);
    device_ = local_rank % cuda_device_count();
    PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
    comm_ = init_comm(mpi_comm_, rank_, size_);
    // A blocking stream: it waits for work queued before on the legacy default stream.
    PIPETRAIN_CUDA_CHECK(cudaStreamCreate(&stream_));
    PIPETRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&collective_done_, cudaEventDisableTiming));
    PIPETRAIN_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
    PIPETRAIN_CUDA_CHECK(cudaMemset(scratch_, 0, sizeof(float)));
  }

  // ncclCommInitRank over the processes of `mpi_comm`; its rank 0 makes the id.
  static ncclComm_t init_comm(MPI_Comm mpi_comm, int rank, int size) {
    ncclUniqueId id;
    std::memset(&id, 0, sizeof id);
    if (rank == 0) PIPETRAIN_NCCL_CHECK(ncclGetUniqueId(&id));
    PIPETRAIN_MPI_CHECK(MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, mpi_comm));
    ncclComm_t comm = nullptr;
    PIPETRAIN_NCCL_CHECK(ncclCommInitRank(&comm, size, id, rank));
    return comm;
  }

  // The communicator of a group: the whole world, or one made by the group's members on first
  // use and cached. Not ncclCommSplit: that is collective over every rank of the parent, and
  // all_reduce_sum is called by the group's members only. Called locked.
  ncclComm_t group_comm_locked(const std::vector<int>& members) {
    if (static_cast<int>(members.size()) == size_) return comm_;
    const auto it = group_comms_.find(members);
    if (it != group_comms_.end()) return it->second;
    MPI_Group world_group;
    MPI_Group sub_group;
    MPI_Comm sub = MPI_COMM_NULL;
    PIPETRAIN_MPI_CHECK(MPI_Comm_group(mpi_comm_, &world_group));
    PIPETRAIN_MPI_CHECK(
        MPI_Group_incl(world_group, static_cast<int>(members.size()), members.data(), &sub_group));
    PIPETRAIN_MPI_CHECK(MPI_Comm_create_group(mpi_comm_, sub_group, /*tag=*/0, &sub));
    MPI_Group_free(&sub_group);
    MPI_Group_free(&world_group);
    const int sub_rank =
        static_cast<int>(std::lower_bound(members.begin(), members.end(), rank_) - members.begin());
    ncclComm_t comm = nullptr;
    try {
      comm = init_comm(sub, sub_rank, static_cast<int>(members.size()));
    } catch (...) {
      MPI_Comm_free(&sub);
      throw;
    }
    MPI_Comm_free(&sub);
    group_comms_.emplace(members, comm);
    return comm;
  }

  Request post(std::string_view function, bool send, int peer, const MessageHeader& header,
               const Tensor& tensor) {
    check_post(function, peer, header, tensor, send);
    auto op = std::make_unique<Op>();
    op->send = send;
    op->peer = peer;
    op->header = header;
    op->tensor = tensor;
    std::lock_guard lock(mutex_);
    throw_if_aborted(function);
    PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
    op->slot = take_slot_locked();
    const Request request{next_id_++};
    queued_.push_back(request.id);
    pending_.emplace(request.id, std::move(op));
    return request;
  }

  void check_post(std::string_view function, int peer, const MessageHeader& header,
                  const Tensor& tensor, bool send) const {
    detail::check_post(function, rank_, size_, peer, header, tensor, send, Device::kCuda);
    PIPETRAIN_CHECK_ARG(header.shape.size() <= kMaxDims, function, "shape ",
                        shape_to_string(header.shape), " has ", header.shape.size(),
                        " dimensions; the NCCL transport sends at most ", kMaxDims);
  }

  HeaderSlot take_slot_locked() {
    if (!free_slots_.empty()) {
      const HeaderSlot slot = free_slots_.back();
      free_slots_.pop_back();
      return slot;
    }
    HeaderSlot slot;
    PIPETRAIN_CUDA_CHECK(
        cudaMallocHost(reinterpret_cast<void**>(&slot.host), sizeof(detail::WireHeader)));
    all_slots_.push_back(slot);  // owned from here on, even if the device half fails
    PIPETRAIN_CUDA_CHECK(cudaMalloc(&slot.device, sizeof(detail::WireHeader)));
    all_slots_.back().device = slot.device;
    return slot;
  }

  // Launches the queued posts as one NCCL group. Called locked, device set. A failure leaves
  // the stream in an unknown state, so it aborts the world before it is reported.
  void launch_locked() {
    if (queued_.empty()) return;
    try {
      launch_queued_locked();
    } catch (const std::exception& e) {
      abort_locked(std::string("launching a group failed: ") + e.what());
      throw;
    }
  }

  void launch_queued_locked() {
    auto batch = std::make_shared<Batch>();
    PIPETRAIN_CUDA_CHECK(cudaEventCreateWithFlags(&batch->done, cudaEventDisableTiming));
    std::vector<Op*> ops;
    ops.reserve(queued_.size());
    for (std::uint64_t id : queued_) ops.push_back(pending_.at(id).get());
    queued_.clear();
    for (Op* op : ops) {
      op->batch = batch;  // from here on the op counts as in flight
      if (!op->send) continue;
      *op->slot.host = detail::encode_wire(op->header);
      PIPETRAIN_CUDA_CHECK(cudaMemcpyAsync(op->slot.device, op->slot.host,
                                           sizeof(detail::WireHeader), cudaMemcpyHostToDevice,
                                           stream_));
    }
    PIPETRAIN_NCCL_CHECK(ncclGroupStart());
    try {
      for (Op* op : ops) {
        // Header first, then payload: NCCL keeps the operations between two ranks in order.
        void* payload = op->tensor.raw_data();
        const std::size_t bytes = op->header.nbytes;
        if (op->send) {
          PIPETRAIN_NCCL_CHECK(ncclSend(op->slot.device, sizeof(detail::WireHeader), ncclUint8,
                                        op->peer, comm_, stream_));
          if (bytes > 0) {
            PIPETRAIN_NCCL_CHECK(ncclSend(payload, bytes, ncclUint8, op->peer, comm_, stream_));
          }
        } else {
          PIPETRAIN_NCCL_CHECK(ncclRecv(op->slot.device, sizeof(detail::WireHeader), ncclUint8,
                                        op->peer, comm_, stream_));
          if (bytes > 0) {
            PIPETRAIN_NCCL_CHECK(ncclRecv(payload, bytes, ncclUint8, op->peer, comm_, stream_));
          }
        }
      }
    } catch (...) {
      ncclGroupEnd();  // close the group this thread opened; the first error is the one to report
      throw;
    }
    PIPETRAIN_NCCL_CHECK(ncclGroupEnd());
    for (Op* op : ops) {
      if (op->send) continue;
      PIPETRAIN_CUDA_CHECK(cudaMemcpyAsync(op->slot.host, op->slot.device,
                                           sizeof(detail::WireHeader), cudaMemcpyDeviceToHost,
                                           stream_));
    }
    PIPETRAIN_CUDA_CHECK(cudaEventRecord(batch->done, stream_));
  }

  static bool event_done(cudaEvent_t event) {
    const cudaError_t status = cudaEventQuery(event);
    if (status == cudaErrorNotReady) return false;
    PIPETRAIN_CUDA_CHECK(status);
    return true;
  }

  Op& find(std::string_view function, const Request& request) {
    std::lock_guard lock(mutex_);
    const auto it = pending_.find(request.id);
    PIPETRAIN_CHECK_ARG(it != pending_.end(), function, "request ", request.id,
                        request.valid() ? " is not pending on this transport"
                                        : " is invalid (never posted or already completed)");
    return *it->second;
  }

  // Consumes a completed request: checks a receive's header, recycles the header slot.
  void finish_locked(std::string_view function, Request& request) {
    const auto it = pending_.find(request.id);
    std::unique_ptr<Op> op = std::move(it->second);
    pending_.erase(it);
    request.id = 0;
    free_slots_.push_back(op->slot);
    if (op->send) return;
    const MessageHeader sent = detail::decode_wire(*op->slot.host);
    if (!matches(sent, op->header)) {
      // As with MPI, only the receiver learns of a mismatch.
      throw MismatchError(
          detail::message(function, detail::recv_mismatch(rank_, op->peer, op->header, sent)));
    }
  }

  void wait_requests(std::string_view function, std::vector<Request>& requests) {
    for (Request& request : requests) find(function, request);
    const auto deadline = Clock::now() + timeout();
    std::size_t next = 0;
    for (int spins = 0;; ++spins) {
      {
        std::lock_guard lock(mutex_);
        throw_if_aborted(function);
        PIPETRAIN_CUDA_CHECK(cudaSetDevice(device_));
        launch_locked();
        while (next < requests.size() && event_done(pending_.at(requests[next].id)->batch->done)) {
          finish_locked(function, requests[next]);
          ++next;
        }
        if (next == requests.size()) return;
        const Op& op = *pending_.at(requests[next].id);
        const std::string what = detail::describe_op(op.header, op.peer);
        check_async_locked(function, what);
        if (Clock::now() >= deadline) {
          const std::string text = "rank " + std::to_string(rank_) + " timed out after " +
                                   detail::format_ms(timeout()) + " waiting for " + what;
          retire_locked(requests, next);
          abort_locked(text);
          throw TimeoutError(detail::message(function, text));
        }
      }
      pause(spins);
    }
  }

  void poll_collective(std::string_view function, Clock::time_point deadline,
                       const std::string& what) {
    for (int spins = 0;; ++spins) {
      {
        std::lock_guard lock(mutex_);
        throw_if_aborted(function);
        if (event_done(collective_done_)) return;
        check_async_locked(function, what);
        if (Clock::now() >= deadline) {
          const std::string text = "rank " + std::to_string(rank_) + " timed out after " +
                                   detail::format_ms(timeout()) + " waiting for " + what;
          abort_locked(text);
          throw TimeoutError(detail::message(function, text));
        }
      }
      pause(spins);
    }
  }

  // Keeps unfinished operations (and their buffers) until the transport goes. Called locked.
  void retire_locked(std::vector<Request>& requests, std::size_t from) {
    for (std::size_t i = from; i < requests.size(); ++i) {
      const auto it = pending_.find(requests[i].id);
      if (it != pending_.end()) {
        retired_.push_back(std::move(it->second));
        pending_.erase(it);
      }
      requests[i].id = 0;
    }
  }

  // An asynchronous NCCL error (a peer died, a network failure) ends the world. Called locked.
  void check_async_locked(std::string_view function, const std::string& what) {
    auto check = [&](ncclComm_t comm) {
      if (comm == nullptr) return;
      ncclResult_t state = ncclSuccess;
      PIPETRAIN_NCCL_CHECK(ncclCommGetAsyncError(comm, &state));
      if (state == ncclSuccess || state == ncclInProgress) return;
      const std::string text = "rank " + std::to_string(rank_) + ": NCCL reported " +
                               ncclGetErrorString(state) + " while waiting for " + what;
      abort_locked(text);
      throw CommError(detail::message(function, text));
    };
    check(comm_);
    for (const auto& [members, comm] : group_comms_) check(comm);
  }

  void throw_if_aborted(std::string_view function) const {
    if (!aborted_) return;
    throw AbortedError(detail::message(function, "rank ", rank_, ": the world was aborted by rank ",
                                       abort_rank_, ": ", abort_reason_));
  }

  // ncclCommAbort on every communicator: kernels waiting for a peer return, and every later
  // call throws AbortedError. Called locked; never throws.
  void abort_locked(std::string reason) noexcept {
    if (aborted_) return;
    aborted_ = true;
    abort_rank_ = rank_;
    abort_reason_ = std::move(reason);
    cudaSetDevice(device_);
    for (auto& [members, comm] : group_comms_) {
      if (comm != nullptr) ncclCommAbort(comm);
      comm = nullptr;
    }
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  // Spin briefly for latency, then sleep a little so that a long wait does not burn a core.
  static void pause(int spins) {
    if (spins < 1000) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  void release_all(bool abort) noexcept {
    if (device_ >= 0) cudaSetDevice(device_);
    auto end = [abort](ncclComm_t comm) {
      if (comm == nullptr) return;
      if (abort) {
        ncclCommAbort(comm);
      } else {
        ncclCommDestroy(comm);
      }
    };
    for (auto& [members, comm] : group_comms_) end(comm);
    group_comms_.clear();
    end(comm_);
    comm_ = nullptr;
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    pending_.clear();
    retired_.clear();
    for (const HeaderSlot& slot : all_slots_) {
      if (slot.host != nullptr) cudaFreeHost(slot.host);
      if (slot.device != nullptr) cudaFree(slot.device);
    }
    all_slots_.clear();
    free_slots_.clear();
    if (scratch_ != nullptr) cudaFree(scratch_);
    scratch_ = nullptr;
    if (collective_done_ != nullptr) cudaEventDestroy(collective_done_);
    collective_done_ = nullptr;
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    stream_ = nullptr;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized && mpi_comm_ != MPI_COMM_NULL) MPI_Comm_free(&mpi_comm_);
  }

  MPI_Comm mpi_comm_ = MPI_COMM_NULL;  // bootstrap of the world and of group communicators
  int rank_ = 0;
  int size_ = 1;
  int device_ = -1;
  ncclComm_t comm_ = nullptr;
  std::map<std::vector<int>, ncclComm_t> group_comms_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t collective_done_ = nullptr;
  void* scratch_ = nullptr;  // one float for barrier()

  mutable std::mutex mutex_;  // so that abort() may come from any thread
  std::uint64_t next_id_ = 1;
  std::unordered_map<std::uint64_t, std::unique_ptr<Op>> pending_;
  std::vector<std::uint64_t> queued_;  // posted, not yet launched
  std::vector<std::unique_ptr<Op>> retired_;
  std::vector<HeaderSlot> all_slots_;
  std::vector<HeaderSlot> free_slots_;
  bool aborted_ = false;
  int abort_rank_ = -1;
  std::string abort_reason_;
};

}  // namespace

namespace detail {

// Available means usable here: built, and a CUDA device to run on.
bool nccl_transport_built() { return cuda_device_count() > 0; }

std::unique_ptr<Transport> make_nccl_transport(const TransportOptions& options) {
  return std::make_unique<NcclTransport>(options);
}

}  // namespace detail
}  // namespace pipetrain
