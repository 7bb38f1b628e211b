// Private: the one macro that checks every MPI call (not installed; includes mpi.h), and the
// process-wide record of transport failures that MpiSession reads when it ends.
#pragma once

#include <mpi.h>

#include <string>
#include <string_view>

namespace pipetrain::detail {

/// Throws CommError "[mpi] rank <r>: <call> failed: <MPI error string> (<file>:<line>)".
/// The rank is MPI_COMM_WORLD's, or -1 when MPI is not running.
[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

/// `file` (a __FILE__) as shown in messages: relative to the project's root when it lies
/// below it (the root is compiled in as PIPETRAIN_SOURCE_ROOT), else from the last "src/" or
/// "tests/" component on, else unchanged. Never depends on where the repository was cloned.
const char* shown_source_path(const char* file);

/// What the MPI transports of this process leave behind, for ~MpiSession to decide between
/// MPI_Finalize and MPI_Abort. Thread-safe, never throw.
///   failed: a transport threw TimeoutError, AbortedError, MismatchError or CommError, or
///           abort() was called; the first text is kept (it names the rank and the cause).
///   unsafe: MPI may still work on something a transport could not complete or cancel (a
///           collective left posted, a send freed before it completed): MPI_Finalize could
///           hang or crash, so only MPI_Abort may end this process.
void note_mpi_failure(std::string_view text) noexcept;
void note_mpi_unsafe() noexcept;
std::string mpi_failure_text();
bool mpi_failed() noexcept;
bool mpi_unsafe() noexcept;

}  // namespace pipetrain::detail

/// Evaluates an MPI call and throws CommError naming it when it does not return MPI_SUCCESS.
/// Needs MPI_ERRORS_RETURN on the communicator involved (the transport sets it).
#define PIPETRAIN_MPI_CHECK(call)                                                  \
  do {                                                                             \
    const int pipetrain_mpi_rc_ = (call);                                          \
    if (pipetrain_mpi_rc_ != MPI_SUCCESS)                                          \
      ::pipetrain::detail::throw_mpi_error(#call, pipetrain_mpi_rc_, __FILE__, __LINE__); \
  } while (0)
