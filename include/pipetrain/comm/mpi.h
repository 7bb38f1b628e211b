// pipetrain/comm/mpi.h: MPI start-up and the last-resort abort. No MPI header is included.
//
// The MPI transport itself is created with make_transport("mpi") (transport.h): one process per
// rank, host memory, a private duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN, each message
// a fixed-size header then the payload (two tags, so the pair stays in order), polled with
// MPI_Test until the deadline so that a dead peer gives a TimeoutError rather than a hang.
// all_reduce_sum uses MPI_Iallreduce on one sub-communicator per group (created on first use
// by the group's members, then cached); barrier() uses MPI_Ibarrier.
// Every MPI call is checked; a failure throws CommError:
//   "[mpi] rank 1: MPI_Isend(...) failed: MPI_ERR_RANK: invalid rank (src/comm/mpi/...:123)"
//
// In a build without MPI these functions exist and throw NotBuiltError.
#pragma once

namespace pipetrain {

/// Initialises MPI for the life of the object (RAII) and finalises it on destruction, unless MPI
/// was already initialised by someone else (then it does neither). Create one, first thing in
/// main(), before any make_transport("mpi"); destroy every Transport before it.
///
/// Threads: asks for MPI_THREAD_SERIALIZED. The MPI transport serialises its own MPI calls
/// with a mutex, so abort() may come from another thread than the rank's driver; that needs at
/// least SERIALIZED, and the constructor throws CommError (after finalising) when the library
/// provides less. Code that also makes its own MPI calls from several threads must ask for
/// kMultiple.
class MpiSession {
 public:
  enum class ThreadLevel { kSerialized, kMultiple };

  /// argc/argv may be null. Throws NotBuiltError in a build without MPI:
  ///   "[MpiSession] pipetrain was built without MPI: reconfigure with -DPIPETRAIN_WITH_MPI=ON
  ///    (and install it)"
  explicit MpiSession(int* argc = nullptr, char*** argv = nullptr,
                      ThreadLevel level = ThreadLevel::kSerialized);
  ~MpiSession();
  MpiSession(const MpiSession&) = delete;
  MpiSession& operator=(const MpiSession&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  /// False when MPI was initialised before this session (it will not finalise MPI).
  bool owns_mpi() const { return owns_; }

 private:
  bool owns_ = false;
  int rank_ = 0;
  int world_size_ = 1;
};

/// MPI_Abort(MPI_COMM_WORLD, error_code): ends every process of the job. The last resort of a
/// runtime after Transport::abort() and a grace period, for a peer that no longer listens.
/// Never returns. In a build without MPI it throws NotBuiltError instead.
[[noreturn]] void mpi_abort_world(int error_code);

}  // namespace pipetrain
