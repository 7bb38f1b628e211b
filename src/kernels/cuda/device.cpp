// Devices, streams, copies and the error helpers of the checking macros (CUDA builds).
#include "pipetrain/cuda/device.h"

#include <mutex>
#include <sstream>

#include "check.h"
#include "pipetrain/build_info.h"

namespace pipetrain {
namespace cuda::detail {
namespace {

std::string where(const char* file, int line) {
  std::ostringstream out;
  out << " at " << file << ':' << line;
  int device = -1;
  // Best effort only: asking for the device must not replace the error being reported.
  if (cudaGetDevice(&device) == cudaSuccess) {
    out << " on device " << device;
  } else {
    cudaGetLastError();
  }
  return out.str();
}

// cublasGetStatusString lives in libcublas, which pipetrain does not otherwise need.
const char* cublas_status_name(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

}  // namespace

void throw_cuda_error(cudaError_t status, std::string_view call, const char* file, int line) {
  // A failed runtime call also stays the thread's last error; left there, the next launch
  // check would report it again, against a kernel that did nothing wrong.
  cudaGetLastError();
  std::ostringstream out;
  out << "[cuda] " << call << " failed: " << cudaGetErrorString(status) << " ("
      << cudaGetErrorName(status) << ')' << where(file, line);
  throw Error(out.str());
}

void throw_cublas_error(cublasStatus_t status, std::string_view call, const char* file,
                        int line) {
  std::ostringstream out;
  out << "[cublas] " << call << " failed: " << cublas_status_name(status) << where(file, line);
  throw Error(out.str());
}

}  // namespace cuda::detail

namespace {

struct DeviceQuery {
  int count = 0;
  std::string reason;
};

const DeviceQuery& device_query() {
  static const DeviceQuery query = [] {
    DeviceQuery q;
    const cudaError_t status = cudaGetDeviceCount(&q.count);
    if (status != cudaSuccess) {
      // No driver or no device is an answer here, not an error: clear the sticky state.
      cudaGetLastError();
      q.count = 0;
      q.reason = cudaGetErrorString(status);
    } else if (q.count == 0) {
      q.reason = "cudaGetDeviceCount returned 0";
    }
    return q;
  }();
  return query;
}

}  // namespace

int cuda_device_count() noexcept {
  try {
    return device_query().count;
  } catch (...) {
    return 0;
  }
}

bool cuda_is_available() noexcept { return cuda_device_count() > 0; }

std::string cuda_unavailable_reason() { return device_query().reason; }

void require_cuda_device(std::string_view what) {
  if (cuda_device_count() > 0) return;
  throw Error(detail::message(what, "no CUDA device is present: cuda_device_count() is 0"));
}

namespace cuda {

int current_device() {
  require_cuda_device("cuda::current_device");
  int device = 0;
  PIPETRAIN_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void set_device(int device) {
  require_cuda_device("cuda::set_device");
  PIPETRAIN_CHECK_ARG(device >= 0 && device < cuda_device_count(), "cuda::set_device",
                      "device=", device, " must be in [0, ", cuda_device_count(), ")");
  PIPETRAIN_CUDA_CHECK(cudaSetDevice(device));
}

StreamHandle create_stream() {
  require_cuda_device("cuda::create_stream");
  cudaStream_t stream = nullptr;
  PIPETRAIN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void destroy_stream(StreamHandle stream) noexcept {
  if (stream != nullptr) cudaStreamDestroy(static_cast<cudaStream_t>(stream));
}

void synchronize(StreamHandle stream) {
  require_cuda_device("cuda::synchronize");
  PIPETRAIN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)));
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device,
                std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  require_cuda_device("cuda::copy_bytes");
  const bool dst_gpu = dst_device == Device::kCuda;
  const bool src_gpu = src_device == Device::kCuda;
  const cudaMemcpyKind kind = dst_gpu ? (src_gpu ? cudaMemcpyDeviceToDevice
                                                 : cudaMemcpyHostToDevice)
                                      : (src_gpu ? cudaMemcpyDeviceToHost
                                                 : cudaMemcpyHostToHost);
  auto s = static_cast<cudaStream_t>(stream);
  PIPETRAIN_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
  PIPETRAIN_CUDA_CHECK(cudaStreamSynchronize(s));
}

void zero_bytes(void* ptr, std::size_t bytes, StreamHandle stream) {
  if (bytes == 0) return;
  require_cuda_device("cuda::zero_bytes");
  PIPETRAIN_CUDA_CHECK(cudaMemsetAsync(ptr, 0, bytes, static_cast<cudaStream_t>(stream)));
}

}  // namespace cuda
}  // namespace pipetrain
