// pipetrain/cpu_threads.h: how many threads the CPU kernels use, and how ranks share the cores.
//
// The CPU matrix products run on OpenBLAS, whose thread count is one setting for the whole
// process. Ranks that share a machine (threads of an in-process world, or MPI processes on one
// host) would each ask for every core and oversubscribe them: two in-process ranks on two cores,
// each calling a two-thread sgemm, spent 43% of their samples spinning in OpenBLAS. So the
// transports divide the cores: make_inprocess_world(n) gives each of its n ranks
// cores / n threads, and the MPI transport gives each process cores / (processes on its host);
// at least 1, and at most the thread count OpenBLAS was built for (64 in Debian 12). "cores"
// are those this process may run on (its affinity mask). The CPU kernels' other work (softmax,
// LayerNorm, cross-entropy, the optimizer's passes) uses the same count: on OpenBLAS's threads
// when OpenBLAS is its OpenMP build (Debian: libopenblas-openmp-dev) and pipetrain was built with
// OpenMP, on threads of its own otherwise.
//
// Environment, in order of precedence:
//   PIPETRAIN_CPU_THREADS=k   exactly k threads, whatever the ranks
//   OPENBLAS_NUM_THREADS, OMP_NUM_THREADS   left to OpenBLAS: pipetrain changes nothing
#pragma once

namespace pipetrain {

/// Threads OpenBLAS uses now (for the whole process).
int cpu_blas_threads();

/// Sets OpenBLAS's thread count for the whole process (OpenBLAS lowers it to the most it was
/// built for). Throws InvalidArgument unless threads >= 1:
/// "[set_cpu_blas_threads] threads=0 must be >= 1".
void set_cpu_blas_threads(int threads);

/// Cores this process may run on (sched_getaffinity; std::thread::hardware_concurrency() where
/// that is unavailable), at least 1.
int cpu_cores_available();

/// Applies the sharing rule above for `ranks_on_host` ranks of this process's machine and
/// returns the thread count now in use. Throws InvalidArgument unless ranks_on_host >= 1, or
/// when PIPETRAIN_CPU_THREADS is not a positive integer.
int divide_cpu_threads(int ranks_on_host);

}  // namespace pipetrain
