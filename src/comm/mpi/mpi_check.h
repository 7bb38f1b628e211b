// Private: the one macro that checks every MPI call (not installed; includes mpi.h).
#pragma once

#include <mpi.h>

namespace pipetrain::detail {

/// Throws CommError "[mpi] rank <r>: <call> failed: <MPI error string> (<file>:<line>)".
/// The rank is MPI_COMM_WORLD's, or -1 when MPI is not running.
[[noreturn]] void throw_mpi_error(const char* call, int code, const char* file, int line);

}  // namespace pipetrain::detail

/// Evaluates an MPI call and throws CommError naming it when it does not return MPI_SUCCESS.
/// Needs MPI_ERRORS_RETURN on the communicator involved (the transport sets it).
#define PIPETRAIN_MPI_CHECK(call)                                                  \
  do {                                                                             \
    const int pipetrain_mpi_rc_ = (call);                                          \
    if (pipetrain_mpi_rc_ != MPI_SUCCESS)                                          \
      ::pipetrain::detail::throw_mpi_error(#call, pipetrain_mpi_rc_, __FILE__, __LINE__); \
  } while (0)
