// One checking macro per library: a failed CUDA runtime or cuBLAS(Lt) call throws
// pipetrain::Error with the call's text, the library's error string, file:line and the device.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <string>
#include <string_view>

#include "pipetrain/error.h"

namespace pipetrain::cuda::detail {

[[noreturn]] void throw_cuda_error(cudaError_t status, std::string_view call, const char* file,
                                   int line);
[[noreturn]] void throw_cublas_error(cublasStatus_t status, std::string_view call,
                                     const char* file, int line);

}  // namespace pipetrain::cuda::detail

/// Evaluates a CUDA runtime call once; throws Error when it does not return cudaSuccess.
#define PIPETRAIN_CUDA_CHECK(call)                                                         \
  do {                                                                                     \
    const cudaError_t pipetrain_status_ = (call);                                          \
    if (pipetrain_status_ != cudaSuccess)                                                  \
      ::pipetrain::cuda::detail::throw_cuda_error(pipetrain_status_, #call, __FILE__,      \
                                                  __LINE__);                               \
  } while (0)

/// Evaluates a cuBLAS / cuBLASLt call once; throws Error when it does not succeed.
#define PIPETRAIN_CUBLAS_CHECK(call)                                                       \
  do {                                                                                     \
    const cublasStatus_t pipetrain_status_ = (call);                                       \
    if (pipetrain_status_ != CUBLAS_STATUS_SUCCESS)                                        \
      ::pipetrain::cuda::detail::throw_cublas_error(pipetrain_status_, #call, __FILE__,    \
                                                    __LINE__);                             \
  } while (0)

/// After a <<<...>>> launch: a bad configuration shows only through cudaGetLastError.
#define PIPETRAIN_CUDA_CHECK_LAUNCH(kernel_name)                                           \
  do {                                                                                     \
    const cudaError_t pipetrain_status_ = cudaGetLastError();                              \
    if (pipetrain_status_ != cudaSuccess)                                                  \
      ::pipetrain::cuda::detail::throw_cuda_error(pipetrain_status_,                       \
                                                  "launch of " kernel_name, __FILE__,      \
                                                  __LINE__);                               \
  } while (0)
