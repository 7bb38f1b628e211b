// Private: the one macro that checks every NCCL call (not installed; includes nccl.h).
#pragma once

#include <nccl.h>

namespace pipetrain::detail {

/// Throws CommError "[nccl] rank <r>: <call> failed: <ncclGetErrorString> (<file>:<line>)",
/// followed by NCCL's last error text when it has one. The rank is MPI_COMM_WORLD's, or -1
/// when MPI is not running.
[[noreturn]] void throw_nccl_error(const char* call, ncclResult_t code, const char* file,
                                   int line);

}  // namespace pipetrain::detail

/// Evaluates an NCCL call once and throws CommError naming it when it does not return
/// ncclSuccess. (Communicators are blocking, so ncclInProgress is an error too.)
#define PIPETRAIN_NCCL_CHECK(call)                                                        \
  do {                                                                                    \
    const ncclResult_t pipetrain_nccl_rc_ = (call);                                       \
    if (pipetrain_nccl_rc_ != ncclSuccess)                                                \
      ::pipetrain::detail::throw_nccl_error(#call, pipetrain_nccl_rc_, __FILE__, __LINE__); \
  } while (0)
