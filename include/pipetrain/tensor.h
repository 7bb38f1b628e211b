// pipetrain/tensor.h: a dense, contiguous, reference-counted n-dimensional array.
//
// A Tensor is a shape, a dtype, a device and a view onto shared storage (storage + byte offset).
// Copying a Tensor is cheap and shares the storage (like a shared_ptr); clone() makes a deep
// copy. Every tensor is contiguous in row-major order: the only views are reshape()/view() of
// the whole tensor and slice() along dimension 0, both of which stay contiguous.
// There is no autograd: layers compute their gradients explicitly.
//
// Devices: kCpu always; kCuda tensors live in memory from cuda_allocator()
// (pipetrain/cuda/allocator.h). Asking for a kCuda tensor throws NotBuiltError in a build
// without CUDA and Error when no device is present. copy_from/to/to_vector/fill/zeros work
// across devices (synchronously; dtype conversions of CUDA tensors are staged on the host);
// data<T>() of a kCuda tensor is a device pointer.
//
// Thread safety: a Tensor is as thread-safe as a shared_ptr; concurrent writes to the same
// elements are the caller's business.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "pipetrain/error.h"

namespace pipetrain {

/// Element types. kInt32 holds token ids; kFloat64 exists for finite-difference references.
enum class DType : std::uint8_t { kFloat32, kBFloat16, kFloat64, kInt32 };

/// "fp32", "bf16", "fp64", "int32".
std::string_view to_string(DType dtype);
/// Bytes per element: 4, 2, 8, 4.
std::size_t dtype_size(DType dtype);

enum class Device : std::uint8_t { kCpu, kCuda };

/// "cpu", "cuda".
std::string_view to_string(Device device);

/// A bfloat16 value: the upper 16 bits of an IEEE fp32. Storage type only (no arithmetic).
struct BFloat16 {
  std::uint16_t bits = 0;
  bool operator==(const BFloat16&) const = default;
};

/// fp32 -> bf16 with round-to-nearest-even; NaN stays NaN (quiet), infinities stay infinite.
inline BFloat16 float_to_bf16(float value) {
  std::uint32_t u;
  std::memcpy(&u, &value, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return BFloat16{static_cast<std::uint16_t>((u >> 16) | 0x0040u)};
  }
  const std::uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return BFloat16{static_cast<std::uint16_t>((u + rounding_bias) >> 16)};
}

/// bf16 -> fp32, exact.
inline float bf16_to_float(BFloat16 value) {
  const std::uint32_t u = static_cast<std::uint32_t>(value.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// The DType of a C++ element type: float, BFloat16, double, std::int32_t.
template <typename T>
constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) {
    return DType::kFloat32;
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return DType::kBFloat16;
  } else if constexpr (std::is_same_v<T, double>) {
    return DType::kFloat64;
  } else {
    static_assert(std::is_same_v<T, std::int32_t>, "no DType for this element type");
    return DType::kInt32;
  }
}

/// Where tensor storage comes from. Implementations must be thread-safe.
class Allocator {
 public:
  virtual ~Allocator() = default;
  /// Returns at least `bytes` bytes aligned to 64 bytes (never null; bytes may be 0).
  /// Throws std::bad_alloc (or an Error) when out of memory.
  virtual void* allocate(std::size_t bytes) = 0;
  /// Releases memory returned by allocate(bytes). Never throws.
  virtual void deallocate(void* ptr, std::size_t bytes) noexcept = 0;
  virtual Device device() const = 0;
};

/// The process-wide CPU allocator (64-byte aligned heap memory). Lives for the whole program.
/// Freed blocks of 128 KiB or more are cached by size class (within 12.5%) and reused, so that a
/// training step's large tensors do not page-fault in again every step; the cache holds at most
/// PIPETRAIN_CPU_CACHE_MB megabytes (default 2048, 0 turns it off; off under AddressSanitizer).
Allocator& cpu_allocator();

/// A block of memory owned through an Allocator; freed when the last Tensor using it goes.
class Storage {
 public:
  Storage(std::size_t bytes, Allocator& allocator);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t nbytes() const { return nbytes_; }
  Device device() const { return allocator_->device(); }

 private:
  void* data_;
  std::size_t nbytes_;
  Allocator* allocator_;
};

using Shape = std::vector<std::int64_t>;

/// "[2, 3, 4]".
std::string shape_to_string(const Shape& shape);

class Tensor {
 public:
  /// An undefined tensor: defined() is false, numel() is 0, data access throws.
  Tensor() = default;

  // ---- factories --------------------------------------------------------------------------
  /// Uninitialised tensor. Throws InvalidArgument for a negative dimension or an allocator of
  /// another device; for device kCuda, NotBuiltError without CUDA and Error without a device.
  /// `allocator` defaults to cpu_allocator() (cuda_allocator() for kCuda).
  static Tensor empty(Shape shape, DType dtype = DType::kFloat32, Device device = Device::kCpu,
                      Allocator* allocator = nullptr);
  /// Tensor of zeros (same rules as empty()).
  static Tensor zeros(Shape shape, DType dtype = DType::kFloat32, Device device = Device::kCpu,
                      Allocator* allocator = nullptr);
  /// Tensor holding a copy of `values` with dtype dtype_of<T>(); `shape` defaults to
  /// {values.size()}. Throws InvalidArgument when the shape's numel differs from values.size():
  ///   "[Tensor::from_vector] shape [2, 2] holds 4 elements, got 3 values"
  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, Shape shape = {});

  // ---- description ------------------------------------------------------------------------
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  std::int64_t dim() const { return static_cast<std::int64_t>(shape_.size()); }
  /// Size of dimension d; negative d counts from the end. Throws InvalidArgument when out of range.
  std::int64_t size(std::int64_t d) const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  std::int64_t numel() const { return numel_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel_) * dtype_size(dtype_); }
  /// True when both tensors view the same storage block (possibly different ranges).
  bool shares_storage(const Tensor& other) const { return storage_ == other.storage_; }

  // ---- element access ---------------------------------------------------------------------
  /// Pointer to the first element. Throws InvalidArgument when the tensor is undefined or when
  /// dtype_of<T>() differs from dtype(), naming the function and both dtypes:
  ///   "[Tensor::data] asked for fp64 but the tensor holds fp32"
  template <typename T>
  T* data() {
    check_access(dtype_of<T>());
    return reinterpret_cast<T*>(raw_data());
  }
  template <typename T>
  const T* data() const {
    check_access(dtype_of<T>());
    return reinterpret_cast<const T*>(raw_data());
  }
  /// Untyped pointer to the first element (nullptr when undefined).
  void* raw_data() const {
    return storage_ ? static_cast<char*>(storage_->data()) + offset_ : nullptr;
  }
  /// Copy of the elements, converted to T (float <-> double <-> bf16 <-> int32 by value).
  template <typename T>
  std::vector<T> to_vector() const;

  // ---- views (share storage) --------------------------------------------------------------
  /// Same elements with another shape; one dimension may be -1 (inferred). Throws
  /// InvalidArgument when the element counts differ:
  ///   "[Tensor::view] cannot view [2, 3] (6 elements) as [4, 2] (8 elements)"
  Tensor view(Shape shape) const;
  Tensor reshape(Shape shape) const { return view(std::move(shape)); }
  /// Rows [begin, end) along dimension 0. Throws InvalidArgument for a 0-d tensor or when not
  /// 0 <= begin <= end <= size(0):
  ///   "[Tensor::slice] range [1, 5) is outside dimension 0 of size 4"
  Tensor slice(std::int64_t begin, std::int64_t end) const;

  /// The first shape_numel(shape) * dtype_size(dtype) bytes of this tensor's elements seen as
  /// a `dtype` tensor of `shape` (no conversion: the bytes are reinterpreted). Used to pack
  /// tensors of several dtypes into one buffer. Throws InvalidArgument when the bytes do not fit
  /// or the start is not aligned to dtype_size(dtype):
  ///   "[Tensor::view_as] [4] fp64 needs 32 bytes, the tensor has 16"
  Tensor view_as(DType dtype, Shape shape) const;

  // ---- copies and fills -------------------------------------------------------------------
  /// Deep copy with the same shape and dtype.
  Tensor clone() const;
  /// Deep copy converted to `dtype` (fp32 -> bf16 rounds to nearest even).
  Tensor to(DType dtype) const;
  /// Deep copy on `device`, same dtype (a host <-> CUDA copy waits until it is done).
  Tensor to(Device device) const;
  /// Copies src's elements into this tensor, converting the dtype when they differ. Throws
  /// InvalidArgument when the element counts differ:
  ///   "[Tensor::copy_from] destination has 6 elements, source has 4"
  void copy_from(const Tensor& src);
  /// Sets every element to `value` (converted to the dtype).
  void fill(double value);
  void zero() { fill(0.0); }

 private:
  void check_access(DType asked) const;

  std::shared_ptr<Storage> storage_;
  std::size_t offset_ = 0;  // bytes
  Shape shape_;
  std::int64_t numel_ = 0;
  DType dtype_ = DType::kFloat32;
  Device device_ = Device::kCpu;
};

/// Product of the dimensions (1 for a 0-d shape). Throws InvalidArgument for a negative one.
std::int64_t shape_numel(const Shape& shape);

// ---- template definitions --------------------------------------------------------------------

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, Shape shape) {
  if (shape.empty()) shape = {static_cast<std::int64_t>(values.size())};
  const std::int64_t n = shape_numel(shape);
  PIPETRAIN_CHECK_ARG(n == static_cast<std::int64_t>(values.size()), "Tensor::from_vector",
                      "shape ", shape_to_string(shape), " holds ", n, " elements, got ",
                      values.size(), " values");
  Tensor t = empty(std::move(shape), dtype_of<T>());
  if (!values.empty()) std::memcpy(t.raw_data(), values.data(), values.size() * sizeof(T));
  return t;
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::to_vector", "the tensor is undefined");
  const Tensor host = device_ == Device::kCpu ? *this : to(Device::kCpu);
  const Tensor converted = host.dtype_ == dtype_of<T>() ? host : host.to(dtype_of<T>());
  const T* p = converted.data<T>();
  return std::vector<T>(p, p + numel_);
}

}  // namespace pipetrain
