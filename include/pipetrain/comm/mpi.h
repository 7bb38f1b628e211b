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
//
// How a job ends after a failure (docs/transports.md, "Ending an MPI job"): MPI_Finalize is
// collective in practice, so it hangs when a peer is stopped, and crashes when a non-blocking
// collective is still posted; MpiSession therefore ends the job with MPI_Abort whenever a clean
// finalize cannot be guaranteed. The library calls MPI_Abort in exactly two places:
// ~MpiSession (the cases listed there) and MpiSession::abort / mpi_abort_world, called by the
// program. It never calls exit().
#pragma once

#include <chrono>
#include <string>
#include <string_view>

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
///
/// Ending. The destructor (of a session that owns MPI) first takes an exit vote: a small
/// non-blocking all-reduce over every rank of what each rank's MPI transports left behind
/// (nothing; a failure: a TimeoutError, AbortedError, MismatchError or CommError was thrown, or
/// abort() called; unfinished work: a collective still posted or a send freed before it
/// completed), polled:
///   - a rank with a failure waits for the vote at most exit_grace() (default 3 s), time for the
///     other ranks to notice the abort, report their error and arrive; a rank without one waits
///     as MPI_Finalize would (without limit);
///   - every rank voted and none left unfinished work: MPI_Finalize, the program returns its
///     own exit status (a failure is reported by the program, not by the session);
///   - otherwise (a rank is stopped, dead or still busy after the grace, or some rank left
///     unfinished work): the session prints one line on stderr,
///       "[MpiSession] rank 0: ending the job with MPI_Abort(1): <why> after: <first failure>"
///     and calls MPI_Abort(MPI_COMM_WORLD, 1), which ends every process of the job (mpirun
///     exits non-zero). The process does not return from the destructor.
/// An exception unwinding through the session (std::uncaught_exceptions()) counts as a failure.
/// A session that does not own MPI does nothing of this: whoever initialised MPI decides.
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

  /// How long a rank whose transport failed waits at the end for the others (see above).
  void set_exit_grace(std::chrono::milliseconds grace) { exit_grace_ = grace; }
  std::chrono::milliseconds exit_grace() const { return exit_grace_; }

  /// The first failure an MPI transport of this process reported (the text of the exception it
  /// threw, or the reason given to abort()), "" when none did.
  static std::string failure();

  /// Ends the whole job now, from any thread: prints
  ///   "[MpiSession] rank <r>: ending the job with MPI_Abort(<code>): <reason>"
  /// on stderr and calls MPI_Abort(MPI_COMM_WORLD, error_code), which does not wait for the
  /// other ranks. For a program that knows that the job cannot finish (prefer Transport::abort()
  /// and rethrowing, which lets the session's end give every rank time to report).
  [[noreturn]] void abort(int error_code, std::string_view reason) noexcept;

 private:
  bool owns_ = false;
  // std::uncaught_exceptions() at construction; unused in a build without MPI (the stub session).
  [[maybe_unused]] int uncaught_ = 0;
  std::chrono::milliseconds exit_grace_{3000};
  int rank_ = 0;
  int world_size_ = 1;
};

/// MPI_Abort(MPI_COMM_WORLD, error_code): ends every process of the job. The last resort of a
/// runtime after Transport::abort() and a grace period, for a peer that no longer listens
/// (MpiSession::abort does the same with a line saying why).
/// Never returns. In a build without MPI it throws NotBuiltError instead.
[[noreturn]] void mpi_abort_world(int error_code);

}  // namespace pipetrain
