#include "pipetrain/tensor.h"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <sstream>

#include "pipetrain/cuda/allocator.h"
#include "pipetrain/cuda/device.h"

namespace pipetrain {
namespace {

class CpuAllocator final : public Allocator {
 public:
  void* allocate(std::size_t bytes) override {
    // aligned_alloc needs a size that is a multiple of the alignment.
    const std::size_t rounded = std::max<std::size_t>(64, (bytes + 63) / 64 * 64);
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* ptr, std::size_t) noexcept override { std::free(ptr); }
  Device device() const override { return Device::kCpu; }
};

template <typename Dst, typename Src>
void convert(void* dst, const void* src, std::int64_t n) {
  auto* d = static_cast<Dst*>(dst);
  const auto* s = static_cast<const Src*>(src);
  for (std::int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<Dst, BFloat16>) {
      if constexpr (std::is_same_v<Src, BFloat16>) {
        d[i] = s[i];
      } else {
        d[i] = float_to_bf16(static_cast<float>(s[i]));
      }
    } else if constexpr (std::is_same_v<Src, BFloat16>) {
      d[i] = static_cast<Dst>(bf16_to_float(s[i]));
    } else {
      d[i] = static_cast<Dst>(s[i]);
    }
  }
}

template <typename F>
void dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); return;
    case DType::kBFloat16: f(BFloat16{}); return;
    case DType::kFloat64: f(double{}); return;
    case DType::kInt32: f(std::int32_t{}); return;
  }
}

}  // namespace

std::string_view to_string(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return "fp32";
    case DType::kBFloat16: return "bf16";
    case DType::kFloat64: return "fp64";
    case DType::kInt32: return "int32";
  }
  return "?";
}

std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return 4;
    case DType::kBFloat16: return 2;
    case DType::kFloat64: return 8;
    case DType::kInt32: return 4;
  }
  return 0;
}

std::string_view to_string(Device device) {
  return device == Device::kCpu ? "cpu" : "cuda";
}

Allocator& cpu_allocator() {
  static CpuAllocator allocator;
  return allocator;
}

Storage::Storage(std::size_t bytes, Allocator& allocator)
    : data_(allocator.allocate(bytes)), nbytes_(bytes), allocator_(&allocator) {}

Storage::~Storage() { allocator_->deallocate(data_, nbytes_); }

std::string shape_to_string(const Shape& shape) {
  std::ostringstream out;
  out << '[';
  for (std::size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

std::int64_t shape_numel(const Shape& shape) {
  std::int64_t n = 1;
  for (std::int64_t d : shape) {
    PIPETRAIN_CHECK_ARG(d >= 0, "shape_numel", "shape ", shape_to_string(shape),
                        " has a negative dimension");
    n *= d;
  }
  return n;
}

Tensor Tensor::empty(Shape shape, DType dtype, Device device, Allocator* allocator) {
  // NotBuiltError without CUDA, Error when no device is present (src/kernels/{cuda,no_cuda}).
  if (device == Device::kCuda) require_cuda_device("Tensor::empty");
  for (std::int64_t d : shape) {
    PIPETRAIN_CHECK_ARG(d >= 0, "Tensor::empty", "shape ", shape_to_string(shape),
                        " has a negative dimension");
  }
  Tensor t;
  t.numel_ = shape_numel(shape);
  t.shape_ = std::move(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  Allocator& source = allocator != nullptr       ? *allocator
                      : device == Device::kCuda ? cuda_allocator()
                                                : cpu_allocator();
  PIPETRAIN_CHECK_ARG(source.device() == device, "Tensor::empty", "the allocator gives ",
                      to_string(source.device()), " memory, asked for a ", to_string(device),
                      " tensor");
  t.storage_ = std::make_shared<Storage>(static_cast<std::size_t>(t.numel_) * dtype_size(dtype),
                                         source);
  return t;
}

Tensor Tensor::zeros(Shape shape, DType dtype, Device device, Allocator* allocator) {
  Tensor t = empty(std::move(shape), dtype, device, allocator);
  if (t.numel_ > 0 && device == Device::kCuda) {
    cuda::zero_bytes(t.raw_data(), t.nbytes());
    cuda::synchronize(nullptr);
  } else if (t.numel_ > 0) {
    std::memset(t.raw_data(), 0, t.nbytes());
  }
  return t;
}

std::int64_t Tensor::size(std::int64_t d) const {
  const std::int64_t n = dim();
  PIPETRAIN_CHECK_ARG(d >= -n && d < n, "Tensor::size", "dimension ", d,
                      " is out of range for a tensor of shape ", shape_to_string(shape_));
  return shape_[static_cast<std::size_t>(d < 0 ? d + n : d)];
}

void Tensor::check_access(DType asked) const {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::data", "asked for ", to_string(asked),
                      " but the tensor is undefined");
  PIPETRAIN_CHECK_ARG(asked == dtype_, "Tensor::data", "asked for ", to_string(asked),
                      " but the tensor holds ", to_string(dtype_));
}

Tensor Tensor::view(Shape shape) const {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::view", "the tensor is undefined");
  int inferred = -1;
  std::int64_t known = 1;
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      PIPETRAIN_CHECK_ARG(inferred < 0, "Tensor::view", "shape ", shape_to_string(shape),
                          " has more than one -1");
      inferred = static_cast<int>(i);
    } else {
      PIPETRAIN_CHECK_ARG(shape[i] >= 0, "Tensor::view", "shape ", shape_to_string(shape),
                          " has a negative dimension");
      known *= shape[i];
    }
  }
  if (inferred >= 0 && known > 0 && numel_ % known == 0) shape[inferred] = numel_ / known;
  const bool ok = inferred >= 0 ? shape[inferred] != -1 : known == numel_;
  PIPETRAIN_CHECK_ARG(ok, "Tensor::view", "cannot view ", shape_to_string(shape_), " (", numel_,
                      " elements) as ", shape_to_string(shape),
                      inferred >= 0 ? "" : (" (" + std::to_string(known) + " elements)"));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::slice(std::int64_t begin, std::int64_t end) const {
  PIPETRAIN_CHECK_ARG(defined() && dim() > 0, "Tensor::slice",
                      "needs a tensor with at least one dimension, got shape ",
                      shape_to_string(shape_));
  PIPETRAIN_CHECK_ARG(0 <= begin && begin <= end && end <= shape_[0], "Tensor::slice", "range [",
                      begin, ", ", end, ") is outside dimension 0 of size ", shape_[0]);
  const std::int64_t row = shape_[0] == 0 ? 0 : numel_ / shape_[0];
  Tensor t = *this;
  t.shape_[0] = end - begin;
  t.numel_ = row * (end - begin);
  t.offset_ = offset_ + static_cast<std::size_t>(row * begin) * dtype_size(dtype_);
  return t;
}

Tensor Tensor::view_as(DType dtype, Shape shape) const {
  constexpr const char* kFn = "Tensor::view_as";
  PIPETRAIN_CHECK_ARG(defined(), kFn, "the tensor is undefined");
  const std::int64_t n = shape_numel(shape);
  const std::size_t bytes = static_cast<std::size_t>(n) * dtype_size(dtype);
  PIPETRAIN_CHECK_ARG(bytes <= nbytes(), kFn, shape_to_string(shape), " ", to_string(dtype),
                      " needs ", bytes, " bytes, the tensor has ", nbytes());
  PIPETRAIN_CHECK_ARG(offset_ % dtype_size(dtype) == 0, kFn, "byte offset ", offset_,
                      " is not aligned to ", to_string(dtype));
  Tensor t = *this;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.numel_ = n;
  return t;
}

Tensor Tensor::clone() const { return to(dtype_); }

Tensor Tensor::to(Device device) const {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::to", "the tensor is undefined");
  Tensor t = empty(shape_, dtype_, device);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to(DType dtype) const {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::to", "the tensor is undefined");
  Tensor t = empty(shape_, dtype, device_);
  t.copy_from(*this);
  return t;
}

void Tensor::copy_from(const Tensor& src) {
  PIPETRAIN_CHECK_ARG(defined() && src.defined(), "Tensor::copy_from",
                      "both tensors must be defined");
  PIPETRAIN_CHECK_ARG(numel_ == src.numel_, "Tensor::copy_from", "destination has ", numel_,
                      " elements, source has ", src.numel_);
  if (device_ == Device::kCuda || src.device_ == Device::kCuda) {
    if (dtype_ == src.dtype_) {
      cuda::copy_bytes(raw_data(), device_, src.raw_data(), src.device_, nbytes());
      return;
    }
    // Conversions run on the host: stage through cpu tensors (simple, not fast).
    const Tensor host_src = src.device_ == Device::kCpu ? src : src.to(Device::kCpu);
    Tensor host_dst = empty(shape_, dtype_);
    host_dst.copy_from(host_src);
    copy_from(host_dst);
    return;
  }
  if (dtype_ == src.dtype_) {
    if (numel_ > 0 && raw_data() != src.raw_data()) {
      std::memmove(raw_data(), src.raw_data(), nbytes());
    }
    return;
  }
  void* dst = raw_data();
  const void* s = src.raw_data();
  const std::int64_t n = numel_;
  dispatch(dtype_, [&](auto d) {
    dispatch(src.dtype_, [&](auto sv) {
      convert<decltype(d), decltype(sv)>(dst, s, n);
    });
  });
}

void Tensor::fill(double value) {
  PIPETRAIN_CHECK_ARG(defined(), "Tensor::fill", "the tensor is undefined");
  if (device_ == Device::kCuda) {
    Tensor host = empty(shape_, dtype_);
    host.fill(value);
    copy_from(host);
    return;
  }
  void* dst = raw_data();
  const std::int64_t n = numel_;
  dispatch(dtype_, [&](auto d) {
    using T = decltype(d);
    T v;
    if constexpr (std::is_same_v<T, BFloat16>) {
      v = float_to_bf16(static_cast<float>(value));
    } else {
      v = static_cast<T>(value);
    }
    std::fill_n(static_cast<T*>(dst), n, v);
  });
}

}  // namespace pipetrain
