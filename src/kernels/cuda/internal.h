// Host-side pieces shared by the CUDA sources: launch-limit checks (pure C++, built in every
// build) and launchers used across files.
#pragma once

#include <cstdint>
#include <string>

#include "pipetrain/kernels/cuda.h"
#include "pipetrain/tensor.h"

namespace pipetrain::kernels::cuda::detail {

/// Throws InvalidArgument "[fn] c=30 must be a multiple of 8 (16-byte loads of bf16)" when c
/// is not a positive multiple of 16 / dtype_size(dtype).
void check_vector_channels(const char* fn, std::int64_t c, DType dtype);
/// Throws InvalidArgument "[fn] <name> is not 16-byte aligned" unless ptr is.
void check_aligned16(const char* fn, const char* name, const void* ptr);
/// Throws InvalidArgument "[fn] <name>=<value> must be >= 0".
void check_non_negative(const char* fn, const char* name, std::int64_t value);

/// out[j] += sum over rows of in[row, j] for a row-major in[rows, cols] (deterministic).
/// Defined in layernorm.cu (CUDA builds only); used for the linear layer's bias gradient.
template <typename T, typename G>
void column_sum_accumulate(G* out, const T* in, std::int64_t rows, std::int64_t cols,
                           StreamHandle stream);

}  // namespace pipetrain::kernels::cuda::detail
