#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../comm_util.h"
#include "mpi_check.h"
#include "pipetrain/comm/mpi.h"

namespace pipetrain {

namespace detail {

void throw_mpi_error(const char* call, int code, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof text, "MPI error code %d", code);
  }
  int rank = -1;
  int initialized = 0;
  int finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  // Keep the path from src/ or tests/ on: the build machine's prefix says nothing.
  const char* shown = std::strstr(file, "/src/");
  if (shown == nullptr) shown = std::strstr(file, "/tests/");
  if (shown != nullptr) ++shown;
  throw CommError(message("mpi", "rank ", rank, ": ", call, " failed: ", text, " (",
                          shown ? shown : file, ':', line, ')'));
}

}  // namespace detail

MpiSession::MpiSession(int* argc, char*** argv, ThreadLevel level) {
  int initialized = 0;
  PIPETRAIN_MPI_CHECK(MPI_Initialized(&initialized));
  if (!initialized) {
    const int wanted =
        level == ThreadLevel::kMultiple ? MPI_THREAD_MULTIPLE : MPI_THREAD_SERIALIZED;
    int provided = MPI_THREAD_SINGLE;
    PIPETRAIN_MPI_CHECK(MPI_Init_thread(argc, argv, wanted, &provided));
    if (provided < wanted) {
      MPI_Finalize();
      throw CommError(detail::message(
          "MpiSession", "asked MPI for thread level ",
          level == ThreadLevel::kMultiple ? "MPI_THREAD_MULTIPLE" : "MPI_THREAD_SERIALIZED",
          ", the library provides only level ", provided));
    }
    owns_ = true;
  }
  PIPETRAIN_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank_));
  PIPETRAIN_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &world_size_));
}

MpiSession::~MpiSession() {
  if (!owns_) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) MPI_Finalize();
}

void mpi_abort_world(int error_code) {
  MPI_Abort(MPI_COMM_WORLD, error_code);
  std::abort();  // MPI_Abort does not return; this satisfies [[noreturn]] if it ever did
}

}  // namespace pipetrain
