// pipetrain/cuda/allocator.h: the caching CUDA device allocator behind Device::kCuda tensors.
//
// cudaMalloc and cudaFree synchronise the device and cost tens of microseconds, so freed
// blocks are kept in per-device free lists keyed by a rounded size and handed out again:
//   sizes up to 1 MiB round up to a multiple of 512 bytes;
//   larger sizes round up to the next of four steps per power of two (1.25x, 1.5x, 1.75x, 2x)
//   so that a block serves requests within 25% of its size without unbounded waste.
// When cudaMalloc runs out of memory, every cached free block is released and the call
// retried once; a second failure throws Error naming the size asked for and the stats.
//
// Stream semantics: the allocator does not track streams. A block freed by the host may be
// handed out again at once, so the work that used it must be ordered before the next user's
// work: true when both use the same stream, or when the caller synchronises in between.
//
// Thread safety: all functions are thread-safe (one mutex).
#pragma once

#include <cstddef>
#include <cstdint>

#include "pipetrain/tensor.h"

namespace pipetrain {

/// The process-wide caching CUDA allocator; device() is Device::kCuda and blocks are allocated
/// on the calling thread's current device. Lives for the whole program (never destroyed, so it
/// may be used from static destructors). allocate() throws NotBuiltError in a build without
/// CUDA and Error "[cuda_allocator] no CUDA device is present: cuda_device_count() is 0"
/// without a device; getting the reference itself never throws.
Allocator& cuda_allocator();

namespace cuda {

/// Counters of cuda_allocator(), over all devices.
struct AllocatorStats {
  std::size_t in_use_bytes = 0;       ///< rounded bytes handed out and not yet returned
  std::size_t cached_bytes = 0;       ///< rounded bytes held in free lists
  std::size_t reserved_bytes = 0;     ///< in_use + cached: everything obtained from cudaMalloc
  std::size_t peak_in_use_bytes = 0;  ///< maximum of in_use_bytes since the last reset
  std::int64_t allocations = 0;       ///< allocate() calls
  std::int64_t cache_hits = 0;        ///< allocate() calls served from a free list
  std::int64_t device_mallocs = 0;    ///< cudaMalloc calls
  std::int64_t device_frees = 0;      ///< cudaFree calls (release_cached_memory, OOM retry)
};

/// A snapshot of the counters (all zero in a build without CUDA).
AllocatorStats allocator_stats();
/// Sets peak_in_use_bytes to the current in_use_bytes.
void reset_peak_stats();
/// Returns every cached free block to the driver (cudaFree). Blocks in use are untouched.
/// Does nothing in a build without CUDA.
void release_cached_memory();
/// The size class a request of `bytes` bytes is served from (the rule above); pure arithmetic,
/// available in every build.
std::size_t allocator_round_size(std::size_t bytes);

}  // namespace cuda
}  // namespace pipetrain
