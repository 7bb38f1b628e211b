// Thread sharing between ranks on one machine (see cpu_threads.h for the rule and why).
#include "pipetrain/cpu_threads.h"

#include <cblas.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <string>
#include <thread>

#include "parallel.h"
#include "pipetrain/error.h"

namespace pipetrain {

int cpu_blas_threads() { return openblas_get_num_threads(); }

void set_cpu_blas_threads(int threads) {
  PIPETRAIN_CHECK_ARG(threads >= 1, "set_cpu_blas_threads", "threads=", threads, " must be >= 1");
  openblas_set_num_threads(threads);
  detail::note_blas_threads(openblas_get_num_threads());
}

int cpu_cores_available() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

int divide_cpu_threads(int ranks_on_host) {
  constexpr const char* kFn = "divide_cpu_threads";
  PIPETRAIN_CHECK_ARG(ranks_on_host >= 1, kFn, "ranks_on_host=", ranks_on_host,
                      " must be >= 1");
  if (const char* fixed = std::getenv("PIPETRAIN_CPU_THREADS"); fixed != nullptr) {
    char* end = nullptr;
    errno = 0;
    const long threads = std::strtol(fixed, &end, 10);
    PIPETRAIN_CHECK_ARG(end != fixed && *end == '\0' && errno == 0 && threads >= 1 &&
                            threads <= 4096,
                        kFn, "PIPETRAIN_CPU_THREADS='", fixed,
                        "' must be a whole number in [1, 4096]");
    set_cpu_blas_threads(static_cast<int>(threads));
    return cpu_blas_threads();
  }
  if (std::getenv("OPENBLAS_NUM_THREADS") != nullptr || std::getenv("OMP_NUM_THREADS") != nullptr) {
    // OpenBLAS's count stands; recorded so that every thread calling it keeps to it
    // (parallel.h: match_blas_threads).
    detail::note_blas_threads(cpu_blas_threads());
    return cpu_blas_threads();
  }
  set_cpu_blas_threads(std::max(1, cpu_cores_available() / ranks_on_host));
  return cpu_blas_threads();
}

}  // namespace pipetrain
