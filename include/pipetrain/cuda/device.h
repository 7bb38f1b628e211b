// pipetrain/cuda/device.h: CUDA devices, streams and raw copies, without any CUDA header.
//
// Every build of pipetrain has these functions. In a build without CUDA
// (-DPIPETRAIN_WITH_CUDA=OFF) cuda_device_count() is 0, cuda_is_available() is false and the
// other entry points throw NotBuiltError naming -DPIPETRAIN_WITH_CUDA. In a CUDA build on a
// machine without a GPU (or without a driver) cuda_device_count() is 0 and never throws for it;
// entry points that need a device throw Error "[<function>] no CUDA device is present: ...".
//
// A failed CUDA call throws pipetrain::Error with the call's text, the CUDA error string,
// file:line and the device, e.g.
//   "[cuda] cudaMemcpyAsync(...) failed: invalid argument (cudaErrorInvalidValue) at
//    src/kernels/cuda/device.cpp:88 on device 0"
//
// Streams pass as opaque handles: a StreamHandle is a cudaStream_t; nullptr is the legacy
// default stream.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "pipetrain/tensor.h"

namespace pipetrain {

/// Number of CUDA devices visible to this process; 0 without CUDA, without a driver or without
/// a device. Never throws. The first call caches the answer.
int cuda_device_count() noexcept;

/// True when this build has CUDA and cuda_device_count() > 0.
bool cuda_is_available() noexcept;

/// Why cuda_is_available() is false ("" when it is true): "built without CUDA", or the CUDA
/// runtime's answer to cudaGetDeviceCount (e.g. "no CUDA-capable device is detected").
std::string cuda_unavailable_reason();

/// Does nothing when a device is present. Otherwise throws NotBuiltError (built without CUDA,
/// message as require(Part::kCuda, what)) or Error:
///   "[<what>] no CUDA device is present: cuda_device_count() is 0"
void require_cuda_device(std::string_view what);

namespace cuda {

/// A cudaStream_t. nullptr is the legacy default stream, which synchronises with all others.
using StreamHandle = void*;

/// The calling thread's current device (cudaGetDevice). Throws as require_cuda_device.
int current_device();
/// Makes `device` current for the calling thread. Throws InvalidArgument when
/// device is not in [0, cuda_device_count()).
void set_device(int device);

/// A new non-blocking stream on the current device; release it with destroy_stream().
StreamHandle create_stream();
/// Destroys a stream from create_stream() (nullptr is ignored). Never throws.
void destroy_stream(StreamHandle stream) noexcept;
/// Blocks until all work queued on `stream` has finished; rethrows a failure of that work.
void synchronize(StreamHandle stream);

/// Copies `bytes` bytes between host and device memory (any direction), queued on `stream`
/// and then waited for: when it returns, dst holds the data. Host memory may be pageable.
/// dst_device/src_device say where each pointer lives.
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes, StreamHandle stream = nullptr);

/// Sets `bytes` bytes of device memory to zero, queued on `stream` (asynchronous).
void zero_bytes(void* ptr, std::size_t bytes, StreamHandle stream = nullptr);

}  // namespace cuda
}  // namespace pipetrain
