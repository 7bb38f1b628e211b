// parallel.h (private): the CPU kernels' threads outside the matrix products.
//
// parallel_chunks(n, grain, body) cuts [0, n) into chunks of `grain` items (the last one
// shorter) and calls body(chunk, begin, end) once per chunk, on a team of worker threads that
// belongs to the calling thread (so in-process ranks, which are threads, each get their own).
//
// Determinism: the chunks depend on n and grain only, never on the thread count, so a body that
// writes per-chunk results (and a caller that combines them in chunk order afterwards) gives
// bit-identical results on 1 thread and on k threads.
//
// Thread count: the rank's share of the cores, the one OpenBLAS uses (cpu_threads.h:
// divide_cpu_threads), so ranks sharing a machine do not oversubscribe it.
//
// Why not OpenMP: libgomp's threads spin at the end of every region (OMP_WAIT_POLICY, read
// only when the library loads), and so do OpenBLAS's pthreads workers after every sgemm; on two
// cores the two kinds of spinners took turns stealing each other's core, and a training step of
// bench_model's small config took 4 times as long as on one thread. The team here sleeps on a
// condition variable between calls (what OMP_WAIT_POLICY=passive gave libgomp, which measured
// the same), needs no compiler support, and runs under ThreadSanitizer.
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

/// Runs fn(ctx, k) for k in [0, chunks) on `threads` threads (the caller and threads - 1
/// workers of its team), each thread taking the next chunk not yet taken, and returns when all
/// are done. The first exception thrown by fn is rethrown here after every thread has finished
/// (a thread that threw takes no more chunks; the others go on). Called from
/// inside a body, it runs every chunk on the calling thread.
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
