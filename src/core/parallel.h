// parallel.h (private): the CPU kernels' threads outside the matrix products.
//
// parallel_chunks(n, grain, body) cuts [0, n) into chunks of `grain` items (the last one
// shorter) and calls body(chunk, begin, end) once per chunk, on threads that belong to the
// calling thread (so in-process ranks, which are threads, each get their own): an OpenMP region
// or a team of workers, below.
//
// Determinism: the chunks depend on n and grain only, never on the thread count, so a body that
// writes per-chunk results (and a caller that combines them in chunk order afterwards) gives
// bit-identical results on 1 thread and on k threads.
//
// Thread count: the rank's share of the cores, the one OpenBLAS uses (cpu_threads.h:
// divide_cpu_threads), so ranks sharing a machine do not oversubscribe it.
//
// Which threads: OpenBLAS's and these must not be two pools that both wait actively. On two
// cores, OpenBLAS's pthreads workers (they call sched_yield in a loop for a while after every
// product) took turns with the kernels' threads for the second core: a GELU over 1M elements
// took 1.25 ms inside a training step against 0.85 ms alone. So:
//  - OpenBLAS built for OpenMP (openblas_get_parallel() == 2; Debian's libopenblas0-openmp) and
//    pipetrain built with OpenMP (PIPETRAIN_WITH_OPENMP): the chunks run in OpenMP regions, on
//    the same threads as OpenBLAS's products, which spin briefly between regions as libgomp does
//    by default. One pool, never two.
//  - Otherwise (OpenBLAS's own pthreads, or no OpenMP): a team of workers per calling thread
//    that sleep on a condition variable between calls. libgomp's spinning threads next to
//    OpenBLAS's pthreads took 4 times as long as one thread on bench_model's small config;
//    OMP_WAIT_POLICY=passive would fix that but libgomp reads it only when it loads, so a
//    library cannot choose it. The team needs no compiler support and runs under
//    ThreadSanitizer.
#pragma once

#include <algorithm>
#include <cstdint>

#include "pipetrain/cpu_threads.h"

namespace pipetrain::detail {

/// Threads a parallel_chunks() call may use now: cpu_blas_threads(), at least 1, unless
/// set_parallel_threads_for_testing() says otherwise.
int parallel_threads();

/// For tests: k >= 1 makes parallel_chunks() use k threads whatever OpenBLAS uses (OpenBLAS's
/// own results depend on its thread count: at one thread it takes other kernels for small
/// products), 0 goes back to the rule above. For the whole process.
void set_parallel_threads_for_testing(int k);

/// True when the OpenBLAS loaded is its OpenMP build (openblas_get_parallel() == 2).
bool openblas_uses_openmp();

/// True when the chunks run in OpenMP regions (see above): openblas_uses_openmp() and pipetrain
/// built with OpenMP.
bool parallel_uses_openmp();

/// True when a BLAS call made inside a parallel_chunks() body runs on one thread: OpenBLAS at
/// one thread, or OpenBLAS on OpenMP inside a region of more than one thread. Kernels that
/// call BLAS from chunks (attention's per-head products) run them in parallel only then: two
/// threads of OpenBLAS's own pool each starting a multi-threaded product would serialise or
/// oversubscribe.
bool parallel_blas_is_serial();

/// Records the OpenBLAS thread count pipetrain set (set_cpu_blas_threads calls it).
void note_blas_threads(int threads);

/// Before every BLAS call: with OpenBLAS on OpenMP (whether or not pipetrain was built with
/// OpenMP), sets this thread's OpenMP thread count to the recorded one when it differs and the
/// thread is outside a region (OpenBLAS would otherwise take the thread's own setting, which
/// starts at every core). A no-op otherwise. Two cheap OpenMP queries when nothing changes.
void match_blas_threads();

/// Runs fn(ctx, k) for k in [0, chunks) on `threads` threads (the caller and threads - 1
/// workers of its team or OpenMP region), each thread taking the next chunk not yet taken, and
/// returns when all are done. The first exception thrown by fn is rethrown here after every thread
/// has finished (a thread that threw takes no more chunks; the others go on). Called from inside a
/// body, it runs every chunk on the calling thread.
void run_chunks(int threads, std::int64_t chunks, void (*fn)(const void* ctx, std::int64_t k),
                const void* ctx);

/// body(chunk, begin, end) for chunk = 0, 1, ... over [0, n) in chunks of `grain` (>= 1).
/// Chunks go to whichever thread is free next, which balances rows of unequal cost such as
/// causal attention's, and a worker slow to wake (or whose core is busy) holds nothing up.
template <typename Body>
void parallel_chunks(std::int64_t n, std::int64_t grain, const Body& body) {
  grain = std::max<std::int64_t>(grain, 1);
  if (n <= 0) return;
  const std::int64_t chunks = (n + grain - 1) / grain;
  const auto call = [&](std::int64_t k) { body(k, k * grain, std::min(n, (k + 1) * grain)); };
  const int threads =
      chunks > 1 ? static_cast<int>(std::min<std::int64_t>(chunks, parallel_threads())) : 1;
  if (threads <= 1) {
    for (std::int64_t k = 0; k < chunks; ++k) call(k);
    return;
  }
  using Call = decltype(call);
  run_chunks(
      threads, chunks, [](const void* ctx, std::int64_t k) { (*static_cast<const Call*>(ctx))(k); },
      &call);
}

/// Rows per chunk so that a chunk holds about `items` items of `row_size` each (at least one
/// row): chunks of roughly equal work, large enough that waking the team (some microseconds)
/// does not show.
inline std::int64_t rows_per_chunk(std::int64_t row_size, std::int64_t items = 16384) {
  return std::max<std::int64_t>(1, items / std::max<std::int64_t>(row_size, 1));
}

}  // namespace pipetrain::detail
