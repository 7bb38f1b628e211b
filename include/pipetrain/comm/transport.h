// pipetrain/comm/transport.h: point-to-point messages, all-reduce and abort for one rank.
//
// A Transport is one rank's end of a communication world of world_size() ranks. The runtime
// drives it with the communication actions of a lowered schedule (SEND_F, RECV_F, SEND_B,
// RECV_B); data parallelism and tied embeddings use all_reduce_sum() over groups of ranks.
// Implementations: the in-process world (comm/inprocess.h, one thread per rank), MPI
// (comm/mpi.h, one process per rank), NCCL (one process per GPU, CUDA tensors, bootstrapped
// through MPI; see docs/transports.md). make_transport() picks one by name.
//
// Messages. Every message carries a MessageHeader (training step, stage, microbatch, action
// kind, dtype, shape, byte count). The sender describes its own action (SEND_F of stage s), the
// receiver the action it expects to run (RECV_F of stage s+1); the transport checks on arrival
// that the two are the two ends of one transfer (see matches()) and throws MismatchError
// naming both sides when they are not:
//   [InProcessTransport::wait] rank 1 expected RECV_F stage 1 microbatch 3 [4, 64] fp32 step 0
//   from rank 0, got SEND_F stage 0 microbatch 2 [4, 64] fp32 step 0
//
// Ordering. Messages between an ordered pair of ranks are matched in posting order, as NCCL
// does: the k-th send from rank a to rank b pairs with the k-th receive posted on rank b from
// rank a, whatever their headers (a different header is then a mismatch, not a reordering).
// lower() emits sends and receives in the same order between every pair, so a valid schedule
// always pairs correctly.
//
// Completion. A send completes when its receiver has posted the matching receive and the data
// has been delivered (in-process: rendezvous, as NCCL), or earlier when the implementation
// buffers it (MPI may send small messages eagerly). Code must therefore be deadlock-free under
// rendezvous semantics, which is exactly what validate() checks: a rank posts each maximal run
// of consecutive communication actions as one group and waits for all of them (run_group()).
//
// Deadlines. Every blocking call (wait, wait_all, run_group, all_reduce_sum, barrier) gives up
// after timeout() (default 300 s, set_timeout() to change it) measured from the start of that
// call, and throws TimeoutError naming this rank, the peer and what was waited for:
//   [InProcessTransport::wait] rank 0 timed out after 50 ms waiting for RECV_F stage 1
//   microbatch 0 [2, 3] fp32 step 0 from rank 1
// A dead or stuck peer thus yields an error, never a hang.
//
// Abort. abort(reason) makes every pending and future blocking call (and every post) on every
// rank of the world throw AbortedError carrying the reason; in-process, a transfer or collective
// that had already completed when the abort came is still reported complete by wait()/test(). In-process this is a shared flag
// that wakes every waiter. With MPI it is best effort: the aborting rank sends a notice to every
// peer, and a peer sees it the next time it waits; a peer that never enters the transport again
// (stuck in compute) does not. As a last resort a runtime may call mpi_abort_world()
// (comm/mpi.h), which is MPI_Abort and ends every process.
// After any error (timeout, mismatch, abort), messages still in flight are in an unspecified
// state: the only useful calls left are abort() and destruction. A failing rank should call
// abort() before rethrowing so that the other ranks do not wait out their deadlines.
//
// Memory. Tensors are host (Device::kCpu) memory for the in-process and MPI transports; a
// device tensor is rejected with InvalidArgument. The NCCL transport takes Device::kCuda
// tensors only and rejects host tensors the same way. A sent tensor must not be modified, and a
// receive destination must not be read, until the request completes. The transport keeps a
// reference to both (Tensor shares storage), so they stay alive until completion.
//
// Thread safety. A Transport object belongs to one thread at a time: its rank's driver calls
// isend/irecv/wait/all_reduce_sum/barrier from that thread only. abort() and aborted() may be
// called from any thread at any time. The Transports of one in-process world are meant to be
// driven concurrently, one thread each.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "pipetrain/error.h"
#include "pipetrain/schedule/action.h"
#include "pipetrain/tensor.h"

namespace pipetrain {

// ---- errors ----------------------------------------------------------------------------------

/// Base class of the errors a transport raises at run time (not for bad arguments, which throw
/// InvalidArgument).
class CommError : public Error {
 public:
  using Error::Error;
};

/// A blocking call passed its deadline. The message names the rank, the peer (or the group)
/// and the message or collective that was waited for.
class TimeoutError : public CommError {
 public:
  using CommError::CommError;
};

/// The world was aborted (by this rank or another); the message carries the reason.
class AbortedError : public CommError {
 public:
  using CommError::CommError;
};

/// A received header does not match the expected one; the message names both.
class MismatchError : public CommError {
 public:
  using CommError::CommError;
};

// ---- message headers -------------------------------------------------------------------------

struct MessageHeader {
  std::int64_t step = 0;  ///< training step (iteration) the message belongs to
  int stage = 0;          ///< stage of the action that posts it (sender's or receiver's)
  int microbatch = 0;
  ActionKind kind = ActionKind::kSendForward;  ///< SEND_F/SEND_B to send, RECV_F/RECV_B to receive
  DType dtype = DType::kFloat32;
  Shape shape;
  std::uint64_t nbytes = 0;  ///< numel(shape) * dtype_size(dtype)

  /// Header for `action` (a communication action) carrying a tensor of `shape` and `dtype`;
  /// nbytes is computed. Throws InvalidArgument when action.kind is not a communication kind:
  ///   "[MessageHeader::make] action 1F0 is not a send or receive"
  static MessageHeader make(std::int64_t step, const Action& action, DType dtype, Shape shape);
  /// make() with the tensor's dtype and shape.
  static MessageHeader for_tensor(std::int64_t step, const Action& action, const Tensor& tensor);

  /// The action this header describes: {stage, kind, microbatch}.
  Action action() const { return Action{stage, kind, microbatch}; }
  bool is_send() const {
    return kind == ActionKind::kSendForward || kind == ActionKind::kSendBackward;
  }
  bool is_recv() const {
    return kind == ActionKind::kRecvForward || kind == ActionKind::kRecvBackward;
  }

  friend bool operator==(const MessageHeader&, const MessageHeader&) = default;
};

/// "RECV_F stage 1 microbatch 3 [4, 64] fp32 step 0". nbytes is shown only when it disagrees
/// with the shape and dtype (" 100 bytes").
std::string to_string(const MessageHeader& header);

/// The other end of a communication action, as validate() pairs them: SEND_F of stage s with
/// RECV_F of stage s+1, SEND_B of stage s with RECV_B of stage s-1, same microbatch (and back).
/// Throws InvalidArgument for a compute action:
///   "[peer_action] action 1F0 is not a send or receive"
Action peer_action(const Action& action);

/// True when `sent` (a SEND_* header) and `expected` (a RECV_* header) are the two ends of one
/// transfer: peer_action(sent.action()) == expected.action(), same step, dtype, shape, nbytes.
bool matches(const MessageHeader& sent, const MessageHeader& expected);

// ---- requests and groups ---------------------------------------------------------------------

/// Handle of a posted send or receive. Obtained from isend()/irecv() of one Transport and only
/// valid with that Transport; wait() consumes it (valid() is false afterwards).
struct Request {
  std::uint64_t id = 0;
  bool valid() const { return id != 0; }
};

/// One operation of a group: a send when header.is_send() (tensor is the source), a receive
/// when header.is_recv() (tensor is the destination; it shares storage with the caller's).
struct CommOp {
  int peer = 0;
  MessageHeader header;
  Tensor tensor;
};

/// Options common to every transport.
struct TransportOptions {
  /// Deadline of each blocking call.
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
};

// ---- the interface ---------------------------------------------------------------------------

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  /// "inprocess", "mpi", "nccl".
  virtual std::string_view name() const = 0;
  /// This rank, 0 <= rank() < world_size().
  virtual int rank() const = 0;
  virtual int world_size() const = 0;

  /// Posts a send of `tensor` to `peer` and returns at once. Throws InvalidArgument when peer is
  /// out of range or is rank(), when header is not a SEND_* header, or when the tensor is
  /// undefined, not on the CPU, or disagrees with the header's dtype, shape or nbytes:
  ///   "[InProcessTransport::isend] tensor [2, 3] fp32 does not match header SEND_F stage 0
  ///    microbatch 0 [3, 2] fp32 step 0"
  /// Throws AbortedError when the world was aborted.
  virtual Request isend(int peer, const MessageHeader& header, const Tensor& tensor) = 0;

  /// Posts a receive from `peer` into `destination` (defined, CPU, of the expected dtype and
  /// shape) and returns at once. The arriving header is checked against `expected` when the
  /// message is matched; a mismatch is reported by wait(). Same argument errors as isend()
  /// with RECV_* in place of SEND_*.
  virtual Request irecv(int peer, const MessageHeader& expected, Tensor& destination) = 0;

  /// True when the request has completed (it is then consumed, as by wait()); false otherwise.
  /// Never blocks. Throws as wait() for a failed request.
  virtual bool test(Request& request) = 0;

  /// Blocks until the request completes (consuming it), or throws: MismatchError (headers
  /// differ: both sides throw), TimeoutError (after timeout()), AbortedError. Throws
  /// InvalidArgument for an invalid or unknown request.
  virtual void wait(Request& request) = 0;

  /// Waits for every request with one deadline (timeout() from now); each is consumed. On the
  /// first failure throws as wait(); the remaining requests are then in an unspecified state.
  virtual void wait_all(std::vector<Request>& requests) = 0;

  /// Posts every operation in order, then waits for all of them: one group under validate()'s
  /// blocking semantics. Two ranks whose groups send and receive in opposite orders complete.
  /// Throws InvalidArgument for a header that is neither send nor receive, then as
  /// isend()/irecv()/wait_all().
  void run_group(const std::vector<CommOp>& ops);

  /// Sums `tensor` element-wise over the ranks of `group` (sorted, distinct, holding rank());
  /// every member gets the same result. Every member must call it, in the same order relative
  /// to the member's other collectives on the same group, with the same shape and dtype. An
  /// empty group means every rank. fp32/fp64/int32 sum in their type, bf16 in fp32 rounded
  /// once at the end. Throws InvalidArgument for a bad group or a non-CPU/undefined tensor:
  ///   "[InProcessTransport::all_reduce_sum] group [0, 2] must contain this rank 1"
  /// and TimeoutError / AbortedError / MismatchError (members disagree on shape or dtype).
  virtual void all_reduce_sum(Tensor& tensor, const std::vector<int>& group) = 0;
  void all_reduce_sum(Tensor& tensor) { all_reduce_sum(tensor, {}); }

  /// Returns when every rank has entered barrier(). Throws TimeoutError / AbortedError.
  virtual void barrier() = 0;

  /// Aborts the world (see the file comment). Safe from any thread; never throws; calling it
  /// again keeps the first reason.
  virtual void abort(std::string_view reason) noexcept = 0;
  /// True once this rank knows of an abort (its own, or another rank's that reached it).
  virtual bool aborted() const = 0;

  /// Deadline of each blocking call (default 300 s). Throws InvalidArgument when not positive.
  void set_timeout(std::chrono::milliseconds timeout);
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  explicit Transport(const TransportOptions& options);

 private:
  std::chrono::milliseconds timeout_;
};

// ---- factory ---------------------------------------------------------------------------------

/// The transport names this build knows: "inprocess", "mpi", "nccl".
std::vector<std::string> transport_names();

/// True when `name` can be created by this build ("inprocess" always; "mpi" when built with
/// MPI; "nccl" when built with NCCL and MPI and a CUDA device is present). Throws
/// InvalidArgument for an unknown name:
///   "[is_available] unknown transport 'tcp': expected one of inprocess, mpi, nccl"
bool is_available(std::string_view name);

/// This process's transport of a multi-process world: "mpi" (over MPI_COMM_WORLD; MPI must be
/// initialised, e.g. by an MpiSession) or "nccl". Throws NotBuiltError when the part was not
/// built:
///   "[make_transport] pipetrain was built without NCCL: reconfigure with -DPIPETRAIN_WITH_NCCL=ON
///    (and install it)"
/// InvalidArgument for "inprocess" (use make_inprocess_world()) and for unknown names. "nccl"
/// in a build that has it, on a machine without a CUDA device, throws Error:
///   "[make_transport] no CUDA device is present: cuda_device_count() is 0"
std::unique_ptr<Transport> make_transport(std::string_view name,
                                          const TransportOptions& options = {});

}  // namespace pipetrain
