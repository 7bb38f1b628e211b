// Launch limits and pure arithmetic of the CUDA backend: compiled in every build so that the
// questions can be asked (and tested) without a GPU or without CUDA.
#include "internal.h"

#include <bit>
#include <sstream>

#include "pipetrain/cuda/allocator.h"
#include "pipetrain/error.h"
#include "pipetrain/kernels/cuda.h"

namespace pipetrain {
namespace kernels::cuda {
namespace {

bool vector_channels_ok(std::int64_t c, DType dtype, std::string* why) {
  const std::int64_t lanes = 16 / static_cast<std::int64_t>(dtype_size(dtype));
  if (dtype != DType::kFloat32 && dtype != DType::kBFloat16) {
    if (why) *why = "dtype " + std::string(to_string(dtype)) + " is not fp32 or bf16";
    return false;
  }
  if (c <= 0 || c % lanes != 0) {
    if (why) {
      std::ostringstream out;
      out << "c=" << c;
      if (c <= 0) {
        out << " must be > 0";
      } else {
        out << " must be a multiple of " << lanes << " (16-byte loads of " << to_string(dtype)
            << ")";
      }
      *why = out.str();
    }
    return false;
  }
  return true;
}

}  // namespace

bool embedding_can_implement(std::int64_t c, DType dtype, std::string* why) {
  return vector_channels_ok(c, dtype, why);
}

bool layernorm_can_implement(std::int64_t c, DType dtype, std::string* why) {
  return vector_channels_ok(c, dtype, why);
}

bool attention_can_implement(std::int64_t c, std::int64_t nh, std::string* why) {
  std::ostringstream out;
  if (c <= 0 || nh <= 0) {
    out << "c=" << c << " and nh=" << nh << " must be > 0";
  } else if (c % nh != 0) {
    out << "c=" << c << " must be divisible by nh=" << nh;
  } else {
    return true;
  }
  if (why) *why = out.str();
  return false;
}

namespace detail {

void check_vector_channels(const char* fn, std::int64_t c, DType dtype) {
  std::string why;
  if (!vector_channels_ok(c, dtype, &why))
    throw InvalidArgument(pipetrain::detail::message(fn, why));
}

void check_aligned16(const char* fn, const char* name, const void* ptr) {
  PIPETRAIN_CHECK_ARG((reinterpret_cast<std::uintptr_t>(ptr) & 15u) == 0, fn, name,
                      " is not 16-byte aligned");
}

void check_non_negative(const char* fn, const char* name, std::int64_t value) {
  PIPETRAIN_CHECK_ARG(value >= 0, fn, name, "=", value, " must be >= 0");
}

}  // namespace detail
}  // namespace kernels::cuda

namespace cuda {

std::size_t allocator_round_size(std::size_t bytes) {
  constexpr std::size_t kSmall = 1u << 20;
  if (bytes <= kSmall) return bytes <= 512 ? 512 : (bytes + 511) / 512 * 512;
  // Four size classes per power of two bound the waste to 25% while keeping few bins.
  const std::size_t step = std::bit_floor(bytes) / 4;
  return (bytes + step - 1) / step * step;
}

}  // namespace cuda
}  // namespace pipetrain
