// The caching device allocator (see pipetrain/cuda/allocator.h for the policy).
#include "pipetrain/cuda/allocator.h"

#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <unordered_map>
#include <utility>
#include <vector>

#include "check.h"
#include "pipetrain/cuda/device.h"

namespace pipetrain {
namespace {

class CachingCudaAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes) override {
    require_cuda_device("cuda_allocator");
    const std::size_t size = cuda::allocator_round_size(bytes);
    int device = 0;
    PIPETRAIN_CUDA_CHECK(cudaGetDevice(&device));
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.allocations;
    auto& bin = free_[{device, size}];
    void* ptr = nullptr;
    if (!bin.empty()) {
      ptr = bin.back();
      bin.pop_back();
      stats_.cached_bytes -= size;
      ++stats_.cache_hits;
    } else {
      ptr = device_malloc(size);
    }
    live_[ptr] = Block{device, size};
    stats_.in_use_bytes += size;
    if (stats_.in_use_bytes > stats_.peak_in_use_bytes) {
      stats_.peak_in_use_bytes = stats_.in_use_bytes;
    }
    return ptr;
  }

  void deallocate(void* ptr, std::size_t) noexcept override {
    if (ptr == nullptr) return;
    try {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto it = live_.find(ptr);
      if (it == live_.end()) return;  // not ours: never free what we did not hand out
      const Block block = it->second;
      live_.erase(it);
      stats_.in_use_bytes -= block.size;
      stats_.cached_bytes += block.size;
      free_[{block.device, block.size}].push_back(ptr);
    } catch (...) {
      // Only vector growth can throw here; losing the block to the cache is the lesser harm.
    }
  }

  Device device() const override { return Device::kCuda; }

  cuda::AllocatorStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    cuda::AllocatorStats s = stats_;
    s.reserved_bytes = s.in_use_bytes + s.cached_bytes;
    return s;
  }

  void reset_peak() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_in_use_bytes = stats_.in_use_bytes;
  }

  void release_cached() {
    std::lock_guard<std::mutex> lock(mutex_);
    release_cached_locked();
  }

 private:
  struct Block {
    int device;
    std::size_t size;
  };

  // Called with mutex_ held.
  void* device_malloc(std::size_t size) {
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      release_cached_locked();
      status = cudaMalloc(&ptr, size);
    }
    if (status == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      std::ostringstream out;
      out << "[cuda_allocator] out of device memory allocating " << size << " bytes ("
          << stats_.in_use_bytes << " bytes in use by pipetrain tensors)";
      throw Error(out.str());
    }
    PIPETRAIN_CUDA_CHECK(status);
    ++stats_.device_mallocs;
    return ptr;
  }

  // Called with mutex_ held. cudaFree works on any device's pointer with unified addressing.
  void release_cached_locked() {
    for (auto& [key, ptrs] : free_) {
      for (void* p : ptrs) {
        cudaFree(p);
        ++stats_.device_frees;
        stats_.cached_bytes -= key.second;
      }
      ptrs.clear();
    }
    free_.clear();
  }

  std::mutex mutex_;
  std::map<std::pair<int, std::size_t>, std::vector<void*>> free_;
  std::unordered_map<void*, Block> live_;
  cuda::AllocatorStats stats_;
};

CachingCudaAllocator& instance() {
  // Never destroyed: tensors released by static destructors must still find their allocator,
  // and the CUDA runtime may already be gone at exit.
  static auto* allocator = new CachingCudaAllocator();
  return *allocator;
}

}  // namespace

Allocator& cuda_allocator() { return instance(); }

namespace cuda {

AllocatorStats allocator_stats() { return instance().stats(); }
void reset_peak_stats() { instance().reset_peak(); }
void release_cached_memory() { instance().release_cached(); }

}  // namespace cuda
}  // namespace pipetrain
