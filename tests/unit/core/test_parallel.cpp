// The kernels' worker teams (src/core/parallel.h): every chunk runs exactly once with the
// documented bounds, on the thread count asked for; exceptions reach the caller; a call from
// inside a body runs on that thread; ranks that are threads each get their own team.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "../../../src/core/parallel.h"
#include "pipetrain/cpu_threads.h"

namespace pipetrain::detail {
namespace {

// Sets the parallel_chunks() thread count for a scope; OpenBLAS keeps its own.
class Threads {
 public:
  explicit Threads(int k) { pipetrain::detail::set_parallel_threads_for_testing(k); }
  ~Threads() { pipetrain::detail::set_parallel_threads_for_testing(0); }
  Threads(const Threads&) = delete;
  Threads& operator=(const Threads&) = delete;
};

TEST(ParallelChunks, FollowsOpenBlasThreadsUnlessForced) {
  const int saved = cpu_blas_threads();
  set_cpu_blas_threads(1);
  EXPECT_EQ(parallel_threads(), 1);
  {
    Threads t(3);
    EXPECT_EQ(parallel_threads(), 3);
  }
  EXPECT_EQ(parallel_threads(), 1);
  set_cpu_blas_threads(saved);
  EXPECT_EQ(parallel_threads(), cpu_blas_threads());
}

TEST(ParallelChunks, EveryChunkOnceWithItsBounds) {
  for (int k : {1, 2, 3}) {
    Threads t(k);
    for (std::int64_t n : {0, 1, 7, 100, 1001}) {
      for (std::int64_t grain : {1, 3, 100, 5000}) {
        std::vector<std::atomic<int>> calls((n + grain - 1) / grain + 1);
        std::vector<std::atomic<int>> items(n + 1);
        parallel_chunks(n, grain, [&](std::int64_t c, std::int64_t b, std::int64_t e) {
          ++calls[c];
          EXPECT_EQ(b, c * grain);
          EXPECT_EQ(e, std::min(n, (c + 1) * grain));
          for (std::int64_t i = b; i < e; ++i) ++items[i];
        });
        for (std::int64_t c = 0; c < (n + grain - 1) / grain; ++c) EXPECT_EQ(calls[c], 1);
        for (std::int64_t i = 0; i < n; ++i) EXPECT_EQ(items[i], 1) << n << " " << grain;
      }
    }
  }
}

TEST(ParallelChunks, UsesTheThreadCountAskedFor) {
  Threads t(3);
  std::mutex mu;
  std::set<std::thread::id> seen;
  std::atomic<int> arrived{0};
  // Three chunks that wait for each other: they can only finish on three threads.
  parallel_chunks(3, 1, [&](std::int64_t, std::int64_t, std::int64_t) {
    {
      std::lock_guard<std::mutex> lock(mu);
      seen.insert(std::this_thread::get_id());
    }
    ++arrived;
    while (arrived.load() < 3) std::this_thread::yield();
  });
  EXPECT_EQ(seen.size(), 3u);
}

TEST(ParallelChunks, ExceptionsReachTheCallerAndTheTeamStaysUsable) {
  Threads t(2);
  for (std::int64_t bad : {0, 1, 5}) {
    EXPECT_THROW(parallel_chunks(6, 1,
                                 [&](std::int64_t c, std::int64_t, std::int64_t) {
                                   if (c == bad) throw std::runtime_error("chunk");
                                 }),
                 std::runtime_error);
  }
  std::atomic<int> sum{0};
  parallel_chunks(10, 1, [&](std::int64_t c, std::int64_t, std::int64_t) { sum += int(c); });
  EXPECT_EQ(sum, 45);
}

TEST(ParallelChunks, NestedCallsAndCallersOnManyThreads) {
  Threads t(2);
  std::atomic<int> inner{0};
  parallel_chunks(4, 1, [&](std::int64_t, std::int64_t, std::int64_t) {
    parallel_chunks(5, 1, [&](std::int64_t, std::int64_t, std::int64_t) { ++inner; });
  });
  EXPECT_EQ(inner, 20);
  // Ranks are threads: each caller has its own team.
  std::atomic<long> total{0};
  std::vector<std::thread> ranks;
  for (int r = 0; r < 4; ++r) {
    ranks.emplace_back([&] {
      for (int rep = 0; rep < 50; ++rep) {
        parallel_chunks(64, 1, [&](std::int64_t c, std::int64_t, std::int64_t) { total += c; });
      }
    });
  }
  for (std::thread& th : ranks) th.join();
  EXPECT_EQ(total, 4L * 50 * (63 * 64 / 2));
}

}  // namespace
}  // namespace pipetrain::detail
