// The worker teams of parallel.h: one per calling thread, created on first use, grown to the
// largest thread count asked for, joined when that thread ends. Workers sleep on a condition
// variable between calls (see parallel.h for why they never spin).
#include "parallel.h"

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
  void share() {
    try {
      for (std::int64_t k = next_.fetch_add(1, std::memory_order_relaxed); k < chunks_;
           k = next_.fetch_add(1, std::memory_order_relaxed))
        fn_(ctx_, k);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!error_) error_ = std::current_exception();
    }
  }

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

void run_chunks(int threads, std::int64_t chunks, void (*fn)(const void*, std::int64_t),
                const void* ctx) {
  if (t_in_team) {
    for (std::int64_t k = 0; k < chunks; ++k) fn(ctx, k);
    return;
  }
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
