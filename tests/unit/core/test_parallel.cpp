// The kernels' worker teams (src/core/parallel.h): every chunk runs exactly once with the
// documented bounds, on the thread count asked for; exceptions reach the caller; a call from
// inside a body runs on that thread; ranks that are threads each get their own team.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "../../../src/core/parallel.h"
#include "pipetrain/cpu_threads.h"
#include "pipetrain/kernels/cpu.h"

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

// CI installs OpenBLAS's OpenMP build and sets PIPETRAIN_EXPECT_OPENMP=1 for the default
// preset: the one-pool path must be the one its tests ran.
TEST(ParallelChunks, OnOpenMPWhereExpected) {
  const char* expect = std::getenv("PIPETRAIN_EXPECT_OPENMP");
  if (expect == nullptr || std::string(expect) != "1")
    GTEST_SKIP() << "PIPETRAIN_EXPECT_OPENMP unset";
  EXPECT_TRUE(openblas_uses_openmp()) << "the OpenBLAS loaded is not its OpenMP build";
  EXPECT_TRUE(parallel_uses_openmp());
}

// OpenBLAS's OpenMP build takes its thread count from the calling thread's OpenMP setting, which
// starts at every core on a new thread: each product first gives the thread pipetrain's count,
// also after a first product made inside a region (whose setting ends with it).
TEST(MatchBlasThreads, NewThreadsKeepTheCountPipetrainSet) {
  if (!openblas_uses_openmp()) GTEST_SKIP() << "OpenBLAS is not its OpenMP build here";
  const int saved = cpu_blas_threads();
  const int want = std::min(cpu_cores_available() + 1, 64);  // not a new thread's default
  set_cpu_blas_threads(want);
  ASSERT_EQ(cpu_blas_threads(), want);
  const std::int64_t n = 256;  // large enough that OpenBLAS threads it
  std::vector<float> a(n * n, 1.0f), b(n * n, 0.5f), c(n * n);
  const auto product = [&] {
    kernels::cpu::gemm<float>(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                              n);
  };
  int after_plain = 0, after_region = 0;
  std::thread([&] {
    product();
    after_plain = cpu_blas_threads();
  }).join();
  std::thread([&] {
    Threads t(2);
    parallel_chunks(2, 1, [&](std::int64_t, std::int64_t, std::int64_t) {
      std::vector<float> x(16, 1.0f), y(16);
      kernels::cpu::gemm<float>(false, false, 4, 4, 4, 1.0f, x.data(), 4, x.data(), 4, 0.0f,
                                y.data(), 4);
    });
    product();
    after_region = cpu_blas_threads();
  }).join();
  set_cpu_blas_threads(saved);
  EXPECT_EQ(after_plain, want);
  EXPECT_EQ(after_region, want);
  EXPECT_EQ(c[0], 0.5f * n);
}

}  // namespace
}  // namespace pipetrain::detail
