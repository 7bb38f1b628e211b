#include "pipetrain/tensor.h"

#include <algorithm>
#include <bit>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "pipetrain/cuda/allocator.h"
#include "pipetrain/cuda/device.h"

namespace pipetrain {
namespace {

// CPU memory: 64-byte aligned heap blocks, and a cache of freed large blocks.
//
// A training step allocates and frees the same large tensors every step (activations, logits,
// their gradients). Fresh from the heap, each is mmapped, page-faulted in page by page and
// unmapped again (glibc maps anything above 32 MiB on its own, and trims the heap's top): 58 K
// page faults a step for a 206 MB logits tensor, 7 to 10 K for bench_model's medium config. So
// freed blocks of at least kCacheMin bytes (glibc's smallest mmap threshold) are kept, by size
// class (eight classes per power of two: at most 12.5% unused), and handed out again to a
// request of the same class, with their pages already in memory. The cache holds at most
// PIPETRAIN_CPU_CACHE_MB megabytes (default 2048; 0 turns it off; off under AddressSanitizer,
// which must see every block freed); beyond that the largest cached blocks go back to the
// system first. When the system has no memory left the whole cache is released and the
// allocation tried once more. Thread-safe: one mutex, taken a few hundred times a step.
class CpuAllocator final : public Allocator {
 public:
  CpuAllocator() : limit_(cache_limit()) {}

  void* allocate(std::size_t bytes) override {
    if (bytes < kCacheMin || limit_ == 0) return heap_allocate(round64(bytes));
    const std::size_t size = size_class(bytes);
    {
      std::lock_guard<std::mutex> lock(mu_);
      // The block of this class freed last (the warmest in the caches), if any.
      auto it = free_.upper_bound(size);
      if (it != free_.begin() && (--it)->first == size) {
        void* p = it->second;
        free_.erase(it);
        cached_ -= size;
        live_.emplace(p, size);
        return p;
      }
    }
    void* p = nullptr;
    try {
      p = heap_allocate(size);
    } catch (const std::bad_alloc&) {
      release_cache();
      p = heap_allocate(size);
    }
    std::lock_guard<std::mutex> lock(mu_);
    live_.emplace(p, size);
    return p;
  }

  void deallocate(void* ptr, std::size_t bytes) noexcept override {
    if (bytes < kCacheMin || limit_ == 0) {
      std::free(ptr);
      return;
    }
    std::vector<void*> release;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = live_.find(ptr);
      const std::size_t size = it != live_.end() ? it->second : limit_ + 1;
      if (it != live_.end()) live_.erase(it);
      if (size > limit_) {
        release.push_back(ptr);
      } else {
        // Keep the block; make room by giving back the largest cached ones.
        while (cached_ + size > limit_ && !free_.empty()) {
          const auto last = std::prev(free_.end());
          cached_ -= last->first;
          release.push_back(last->second);
          free_.erase(last);
        }
        try {
          free_.emplace(size, ptr);
          cached_ += size;
        } catch (...) {  // no memory for the map node: give the block back instead
          release.push_back(ptr);
        }
      }
    }
    for (void* p : release) std::free(p);
  }

  Device device() const override { return Device::kCpu; }

 private:
  static constexpr std::size_t kCacheMin = std::size_t{128} << 10;

  static std::size_t round64(std::size_t bytes) {
    // aligned_alloc needs a size that is a multiple of the alignment.
    return std::max<std::size_t>(64, (bytes + 63) / 64 * 64);
  }

  // The smallest of 2^e, 2^e * 9/8, ..., 2^e * 15/8 (and 2^(e+1)) that holds `bytes`.
  static std::size_t size_class(std::size_t bytes) {
    const int e = std::bit_width(bytes) - 1;  // 2^e <= bytes < 2^(e+1)
    const std::size_t step = std::size_t{1} << (e - 3);
    return (bytes + step - 1) / step * step;
  }

  static void* heap_allocate(std::size_t rounded) {
    void* p = std::aligned_alloc(64, rounded);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }

  static std::size_t cache_limit() {
#if defined(__SANITIZE_ADDRESS__)
    return 0;  // AddressSanitizer must see every large block freed, to catch its later use
#endif
    const char* text = std::getenv("PIPETRAIN_CPU_CACHE_MB");
    if (text == nullptr || *text == '\0') return std::size_t{2048} << 20;
    char* end = nullptr;
    const unsigned long long mb = std::strtoull(text, &end, 10);
    PIPETRAIN_CHECK_ARG(end != text && *end == '\0' && mb <= (std::size_t{1} << 30),
                        "cpu_allocator", "PIPETRAIN_CPU_CACHE_MB='", text,
                        "' must be a whole number of megabytes");
    return static_cast<std::size_t>(mb) << 20;
  }

  void release_cache() noexcept {
    std::multimap<std::size_t, void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      blocks.swap(free_);
      cached_ = 0;
    }
    for (const auto& [size, p] : blocks) std::free(p);
  }

  const std::size_t limit_;
  std::mutex mu_;
  std::multimap<std::size_t, void*> free_;       // cached blocks by size class
  std::unordered_map<void*, std::size_t> live_;  // handed-out large blocks and their class
  std::size_t cached_ = 0;
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
  // Never destroyed: tensors in static storage may be freed after it would have been.
  static CpuAllocator* allocator = new CpuAllocator;
  return *allocator;
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
