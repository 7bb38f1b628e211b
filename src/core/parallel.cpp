// The two ways parallel.h runs chunks: OpenMP regions, when OpenBLAS runs its own threads on
// OpenMP too, and otherwise worker teams: one per calling thread, created on first use, grown to
// the largest thread count asked for, joined when that thread ends, whose workers sleep on a
// condition variable between calls (see parallel.h for why).
#include "parallel.h"

#include <cblas.h>
#if PIPETRAIN_HAVE_OPENMP
#include <omp.h>
#else
// Built without OpenMP, pipetrain may still run next to OpenBLAS's OpenMP build (Debian's
// libopenblas-openmp-dev), which loads libgomp: these resolve to it then, and stay null when no
// OpenMP runtime is loaded.
extern "C" {
[[gnu::weak]] int omp_get_max_threads();
[[gnu::weak]] int omp_in_parallel();
[[gnu::weak]] void omp_set_num_threads(int);
}
#endif

#include <atomic>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace pipetrain::detail {
namespace {

// True on a team's workers, and on a caller while its team runs: a parallel_chunks() inside a
// body then runs on the thread it is called from instead of waking another team.
thread_local bool t_in_team = false;

std::atomic<int> g_threads_for_testing{0};
std::atomic<int> g_blas_threads{0};  // the count set_cpu_blas_threads() last asked for

// Runs fn(ctx, k) for the chunks k it takes from `next` until none is left; a thread that
// throws takes no more, and the first exception is kept in `error` (under `mu`). Every thread of
// a call, team or OpenMP region, runs this.
void take_chunks(std::atomic<std::int64_t>& next, std::int64_t chunks,
                 void (*fn)(const void*, std::int64_t), const void* ctx, std::mutex& mu,
                 std::exception_ptr& error) {
  try {
    for (std::int64_t k = next.fetch_add(1, std::memory_order_relaxed); k < chunks;
         k = next.fetch_add(1, std::memory_order_relaxed))
      fn(ctx, k);
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu);
    if (!error) error = std::current_exception();
  }
}

class Team {
 public:
  Team() = default;
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    start_.notify_all();
    for (std::thread& w : workers_) w.join();
  }

  void run(int threads, std::int64_t chunks, void (*fn)(const void*, std::int64_t),
           const void* ctx) {
    while (static_cast<int>(workers_.size()) < threads - 1) {
      const int id = static_cast<int>(workers_.size()) + 1;
      workers_.emplace_back([this, id] { work(id); });
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      fn_ = fn;
      ctx_ = ctx;
      chunks_ = chunks;
      threads_ = threads;
      next_.store(0, std::memory_order_relaxed);
      pending_ = threads - 1;
      error_ = nullptr;
      ++generation_;
    }
    start_.notify_all();
    share();
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [this] { return pending_ == 0; });
    if (error_) std::rethrow_exception(error_);
  }

 private:
  // Chunks go to whichever thread asks next: a worker still waking up, or one whose core is
  // taken by another process (or OpenBLAS's spinning threads), leaves its share to the others
  // instead of holding up the call. Which thread runs a chunk does not change its result.
  void share() { take_chunks(next_, chunks_, fn_, ctx_, mu_, error_); }

  void work(int id) {
    t_in_team = true;
    std::uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id >= threads_) continue;  // a smaller job than the team
      lock.unlock();
      share();
      lock.lock();
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::mutex mu_;
  std::condition_variable start_, done_;
  std::vector<std::thread> workers_;
  // The current job, written under mu_ before generation_ moves on; read by the workers after
  // they have seen the new generation under mu_.
  void (*fn_)(const void*, std::int64_t) = nullptr;
  const void* ctx_ = nullptr;
  std::int64_t chunks_ = 0;
  int threads_ = 1;
  std::atomic<std::int64_t> next_{0};  // the next chunk to run
  int pending_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

}  // namespace

int parallel_threads() {
  const int forced = g_threads_for_testing.load(std::memory_order_relaxed);
  return forced > 0 ? forced : std::max(1, cpu_blas_threads());
}

void set_parallel_threads_for_testing(int k) {
  g_threads_for_testing.store(std::max(0, k), std::memory_order_relaxed);
}

bool openblas_uses_openmp() {
  // OpenBLAS says how it was built: 0 sequential, 1 its own pthreads, 2 OpenMP.
  static const bool on = openblas_get_parallel() == 2;
  return on;
}

bool parallel_uses_openmp() {
#if PIPETRAIN_HAVE_OPENMP
  return openblas_uses_openmp();
#else
  return false;
#endif
}

bool parallel_blas_is_serial() {
  return cpu_blas_threads() == 1 || (parallel_uses_openmp() && parallel_threads() > 1);
}

void note_blas_threads(int threads) { g_blas_threads.store(threads, std::memory_order_relaxed); }

void match_blas_threads() {
  // OpenBLAS on OpenMP takes its thread count from the calling thread's OpenMP setting
  // (omp_get_max_threads(), which starts at the core count on every new thread) whenever that
  // differs from its own: an in-process rank's thread would reset it to every core. So each
  // thread that calls it is first given the count pipetrain set. Not cached per thread: inside
  // a region the setting is the region's, gone when it ends.
  if (!openblas_uses_openmp()) return;
#if !PIPETRAIN_HAVE_OPENMP
  if (omp_get_max_threads == nullptr || omp_in_parallel == nullptr ||
      omp_set_num_threads == nullptr)
    return;
#endif
  const int want = g_blas_threads.load(std::memory_order_relaxed);
  if (want > 0 && omp_in_parallel() == 0 && omp_get_max_threads() != want)
    omp_set_num_threads(want);
}

void run_chunks(int threads, std::int64_t chunks, void (*fn)(const void*, std::int64_t),
                const void* ctx) {
  if (t_in_team) {
    for (std::int64_t k = 0; k < chunks; ++k) fn(ctx, k);
    return;
  }
#if PIPETRAIN_HAVE_OPENMP
  if (parallel_uses_openmp()) {
    // One pool for OpenBLAS and the kernels: its threads spin briefly after a region (libgomp's
    // default) and the next region, or the next matrix product, finds them awake.
    std::atomic<std::int64_t> next{0};
    std::exception_ptr error;
    std::mutex error_mu;
#pragma omp parallel num_threads(threads)
    {
      t_in_team = true;
      take_chunks(next, chunks, fn, ctx, error_mu, error);
      t_in_team = false;
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  thread_local std::unique_ptr<Team> team;
  if (!team) team = std::make_unique<Team>();
  t_in_team = true;
  try {
    team->run(threads, chunks, fn, ctx);
  } catch (...) {
    t_in_team = false;
    throw;
  }
  t_in_team = false;
}

}  // namespace pipetrain::detail
