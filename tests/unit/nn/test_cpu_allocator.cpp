// cpu_allocator()'s cache of large blocks (src/tensor/tensor.cpp): a freed large block comes
// back for the next request of its size class, small blocks and other classes do not share,
// alignment holds, and ranks allocating and freeing on many threads at once get sound memory.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "pipetrain/tensor.h"

namespace pipetrain {
namespace {

bool cache_enabled() {
#if defined(__SANITIZE_ADDRESS__)
  return false;
#else
  const char* mb = std::getenv("PIPETRAIN_CPU_CACHE_MB");
  return mb == nullptr || std::string(mb) != "0";
#endif
}

TEST(CpuAllocator, ReusesFreedLargeBlocksOfTheSameClass) {
  if (!cache_enabled()) GTEST_SKIP() << "the cache is off in this build or environment";
  Allocator& a = cpu_allocator();
  const std::size_t big = (std::size_t{3} << 20) + 12345;
  void* p = a.allocate(big);
  ASSERT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u);
  std::memset(p, 1, big);
  a.deallocate(p, big);
  void* q = a.allocate(big + 1000);  // the same size class (steps of 256 KiB here)
  EXPECT_EQ(q, p);
  std::memset(q, 2, big + 1000);
  void* r = a.allocate(big);  // p is in use: a new block
  EXPECT_NE(r, q);
  a.deallocate(q, big + 1000);
  a.deallocate(r, big);

  // Tensors: a step's large tensor lands where the last step's was.
  const void* first = nullptr;
  for (int step = 0; step < 3; ++step) {
    Tensor logits = Tensor::empty({512, 1031}, DType::kFloat32);
    if (step == 0) first = logits.data<float>();
    EXPECT_EQ(logits.data<float>(), first) << "step " << step;
  }
}

TEST(CpuAllocator, SmallBlocksAndZeroBytes) {
  Allocator& a = cpu_allocator();
  for (std::size_t n : {0ul, 1ul, 63ul, 64ul, 65ul, 4096ul, (128ul << 10) - 1}) {
    void* p = a.allocate(n);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % 64, 0u) << n;
    std::memset(p, 3, n);
    a.deallocate(p, n);
  }
}

TEST(CpuAllocator, ManyThreadsAllocateAndFree) {
  std::vector<std::thread> threads;
  std::vector<int> bad(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &bad] {
      for (int i = 0; i < 40; ++i) {
        const std::int64_t rows = 300 + (i * 7 + t) % 5 * 100;
        Tensor x = Tensor::empty({rows, 1024}, DType::kFloat32);  // 1.2 to 2.8 MB
        float* d = x.data<float>();
        for (std::int64_t k = 0; k < x.numel(); k += 997) d[k] = static_cast<float>(t);
        for (std::int64_t k = 0; k < x.numel(); k += 997) bad[t] += d[k] != static_cast<float>(t);
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(bad[t], 0) << "thread " << t;
}

}  // namespace
}  // namespace pipetrain
