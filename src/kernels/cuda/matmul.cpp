// Matrix products through cuBLASLt: row-major problems mapped onto column-major cuBLASLt,
// descriptors and the heuristic's algorithm cached per shape, a bias epilogue for the forward,
// beta = 1 accumulation for the weight gradient.
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>

#include "check.h"
#include "internal.h"
#include "pipetrain/kernels/cuda.h"

namespace pipetrain::kernels::cuda {
namespace {

constexpr std::size_t kWorkspaceBytes = 32u << 20;  // Hopper's heuristics ask for up to 32 MiB

cudaDataType_t cuda_type(DType dtype) {
  return dtype == DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

// Largest power of two (<= 256) dividing the address: cuBLASLt's default assumes 256-byte
// aligned pointers and may pick kernels that fault on less, so tell it the truth.
std::uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<std::uintptr_t>(p);
  std::uint32_t align = 256;
  while (align > 1 && (address % align) != 0) align /= 2;
  return align;
}

using Key = std::tuple<int, bool, bool, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                       std::int64_t, std::int64_t, int, int, bool, std::uint32_t, std::uint32_t,
                       std::uint32_t, std::uint32_t>;

struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  ~Plan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

class LtContext {
 public:
  // Runs D = alpha op(A) op(B) + beta C (+ bias) in cuBLASLt's column-major terms.
  void matmul(int device, bool trans_a, bool trans_b, std::int64_t m, std::int64_t n,
              std::int64_t k, float alpha, const void* a, std::int64_t lda, const void* b,
              std::int64_t ldb, float beta, void* c, std::int64_t ldc, DType ab_type,
              DType c_type, const void* bias, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    cublasLtHandle_t handle = handle_for(device);
    void* workspace = workspace_for(device, stream);
    const Key key{device, trans_a, trans_b, m, n, k, lda, ldb, ldc,
                  static_cast<int>(ab_type), static_cast<int>(c_type), bias != nullptr,
                  alignment_of(a), alignment_of(b), alignment_of(c),
                  bias ? alignment_of(bias) : 0u};
    auto it = plans_.find(key);
    if (it == plans_.end()) {
      it = plans_.emplace(key, make_plan(handle, key, trans_a, trans_b, m, n, k, lda, ldb, ldc,
                                         ab_type, c_type, bias != nullptr, a, b, c)).first;
    }
    Plan& plan = *it->second;
    if (bias != nullptr) {
      // The pointer changes from call to call; the descriptor is ours alone under the lock.
      PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          plan.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    }
    // Operands swapped, as make_plan() lays them out: cuBLASLt's A is our b, its B our a.
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmul(handle, plan.op, &alpha, b, plan.a, a, plan.b, &beta,
                                          c, plan.c, c, plan.c, &plan.algo, workspace,
                                          kWorkspaceBytes, stream));
  }

 private:
  cublasLtHandle_t handle_for(int device) {
    auto& handle = handles_[device];
    if (handle == nullptr) PIPETRAIN_CUBLAS_CHECK(cublasLtCreate(&handle));
    return handle;
  }

  // One workspace per (device, stream): two streams must not share scratch concurrently.
  void* workspace_for(int device, cudaStream_t stream) {
    auto& ptr = workspaces_[{device, stream}];
    if (ptr == nullptr) PIPETRAIN_CUDA_CHECK(cudaMalloc(&ptr, kWorkspaceBytes));
    return ptr;
  }

  // Row-major C[M,N] = op(A) op(B) is column-major C^T[N,M] = op(B)^T op(A)^T: cuBLASLt's
  // "A" is our B and its "B" is our A, with the transposes carried over.
  static std::unique_ptr<Plan> make_plan(cublasLtHandle_t handle, const Key& key, bool trans_a,
                                         bool trans_b, std::int64_t m, std::int64_t n,
                                         std::int64_t k, std::int64_t lda, std::int64_t ldb,
                                         std::int64_t ldc, DType ab_type, DType c_type,
                                         bool has_bias, const void* a, const void* b,
                                         const void* c) {
    auto plan = std::make_unique<Plan>();
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_a = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's A
    const cublasOperation_t op_b = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // cuBLASLt's B
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    if (has_bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          plan->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
      const cudaDataType_t bias_type = cuda_type(c_type);
      PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
          plan->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
    }
    const auto u = [](std::int64_t x) { return static_cast<std::uint64_t>(x); };
    // Stored shapes (rows x cols, column-major, leading dimension = our row stride).
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->a, cuda_type(ab_type),
                                                      trans_b ? u(k) : u(n),
                                                      trans_b ? u(n) : u(k), ldb));
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&plan->b, cuda_type(ab_type),
                                                      trans_a ? u(m) : u(k),
                                                      trans_a ? u(k) : u(m), lda));
    PIPETRAIN_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&plan->c, cuda_type(c_type), u(n), u(m), ldc));

    cublasLtMatmulPreference_t pref = nullptr;
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    std::unique_ptr<std::remove_pointer_t<cublasLtMatmulPreference_t>,
                    decltype(&cublasLtMatmulPreferenceDestroy)>
        pref_guard(pref, &cublasLtMatmulPreferenceDestroy);
    const std::size_t workspace = kWorkspaceBytes;
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace)));
    const std::uint32_t align_a = std::get<13>(key), align_b = std::get<12>(key),
                        align_c = std::get<14>(key);
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof(align_a)));
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof(align_b)));
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof(align_c)));
    PIPETRAIN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof(align_c)));
    (void)a;
    (void)b;
    (void)c;

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    // "No algorithm" comes either as found == 0 or as CUBLAS_STATUS_NOT_SUPPORTED.
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        handle, plan->op, plan->a, plan->b, plan->c, plan->c, pref, 1, &result, &found);
    if (status != CUBLAS_STATUS_SUCCESS && status != CUBLAS_STATUS_NOT_SUPPORTED) {
      ::pipetrain::cuda::detail::throw_cublas_error(status, "cublasLtMatmulAlgoGetHeuristic",
                                                    __FILE__, __LINE__);
    }
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || found == 0) {
      throw Error(pipetrain::detail::message(
          "cuda::gemm", "cuBLASLt has no algorithm for m=", m, " n=", n, " k=", k, " lda=", lda,
          " ldb=", ldb, " ldc=", ldc, " ab=", to_string(ab_type), " c=", to_string(c_type),
          has_bias ? " with bias" : ""));
    }
    plan->algo = result.algo;
    return plan;
  }

  std::mutex mutex_;
  std::map<int, cublasLtHandle_t> handles_;
  std::map<std::pair<int, cudaStream_t>, void*> workspaces_;
  std::map<Key, std::unique_ptr<Plan>> plans_;
};

LtContext& context() {
  // Never destroyed: handles and workspaces live as long as the process (the driver reclaims
  // them), which keeps static destruction order out of the picture.
  static auto* ctx = new LtContext();
  return *ctx;
}

}  // namespace

void gemm(bool trans_a, bool trans_b, std::int64_t m, std::int64_t n, std::int64_t k,
          float alpha, const void* a, std::int64_t lda, const void* b, std::int64_t ldb,
          float beta, void* c, std::int64_t ldc, DType ab_type, DType c_type, const void* bias,
          StreamHandle stream) {
  constexpr const char* kFn = "cuda::gemm";
  PIPETRAIN_CHECK_ARG(ab_type == DType::kFloat32 || ab_type == DType::kBFloat16, kFn,
                      "ab_type=", to_string(ab_type), " must be fp32 or bf16");
  PIPETRAIN_CHECK_ARG(c_type == ab_type || c_type == DType::kFloat32, kFn, "c_type=",
                      to_string(c_type), " must be fp32",
                      ab_type == DType::kBFloat16 ? " or bf16" : "", " with ab_type=",
                      to_string(ab_type));
  detail::check_non_negative(kFn, "m", m);
  detail::check_non_negative(kFn, "n", n);
  PIPETRAIN_CHECK_ARG(k > 0, kFn, "k=", k, " must be > 0");
  PIPETRAIN_CHECK_ARG(lda >= (trans_a ? m : k) && lda >= 1, kFn, "lda=", lda, " must be >= ",
                      trans_a ? m : k, " (A is ", trans_a ? "transposed" : "not transposed",
                      ")");
  PIPETRAIN_CHECK_ARG(ldb >= (trans_b ? k : n) && ldb >= 1, kFn, "ldb=", ldb, " must be >= ",
                      trans_b ? k : n, " (B is ", trans_b ? "transposed" : "not transposed",
                      ")");
  PIPETRAIN_CHECK_ARG(ldc >= n && ldc >= 1, kFn, "ldc=", ldc, " must be >= n=", n);
  if (m == 0 || n == 0) return;
  require_cuda_device(kFn);
  int device = 0;
  PIPETRAIN_CUDA_CHECK(cudaGetDevice(&device));
  context().matmul(device, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc,
                   ab_type, c_type, bias, static_cast<cudaStream_t>(stream));
}

template <typename T>
void linear_forward(T* out, const T* inp, const T* weight, const T* bias, std::int64_t n,
                    std::int64_t c, std::int64_t oc, StreamHandle stream) {
  gemm(false, true, n, oc, c, 1.0f, inp, c, weight, c, 0.0f, out, oc, dtype_of<T>(),
       dtype_of<T>(), bias, stream);
}

template <typename T>
void linear_backward_input(T* dinp, const T* dout, const T* weight, std::int64_t n,
                           std::int64_t c, std::int64_t oc, StreamHandle stream) {
  gemm(false, false, n, c, oc, 1.0f, dout, oc, weight, c, 0.0f, dinp, c, dtype_of<T>(),
       dtype_of<T>(), nullptr, stream);
}

template <typename T, typename G>
void linear_backward_weight(G* dweight, G* dbias, const T* dout, const T* inp, std::int64_t n,
                            std::int64_t c, std::int64_t oc, StreamHandle stream) {
  detail::check_non_negative("cuda::linear_backward_weight", "n", n);
  if (n == 0) return;  // nothing to add (k = 0 for the product)
  gemm(true, false, oc, c, n, 1.0f, dout, oc, inp, c, 1.0f, dweight, c, dtype_of<T>(),
       dtype_of<G>(), nullptr, stream);
  if (dbias != nullptr) detail::column_sum_accumulate<T, G>(dbias, dout, n, oc, stream);
}

#define PIPETRAIN_INSTANTIATE(T)                                                              \
  template void linear_forward<T>(T*, const T*, const T*, const T*, std::int64_t,             \
                                  std::int64_t, std::int64_t, StreamHandle);                  \
  template void linear_backward_input<T>(T*, const T*, const T*, std::int64_t, std::int64_t,  \
                                         std::int64_t, StreamHandle);
PIPETRAIN_INSTANTIATE(float)
PIPETRAIN_INSTANTIATE(BFloat16)
#undef PIPETRAIN_INSTANTIATE
#define PIPETRAIN_INSTANTIATE(T, G)                                                           \
  template void linear_backward_weight<T, G>(G*, G*, const T*, const T*, std::int64_t,        \
                                             std::int64_t, std::int64_t, StreamHandle);
PIPETRAIN_INSTANTIATE(float, float)
PIPETRAIN_INSTANTIATE(BFloat16, BFloat16)
PIPETRAIN_INSTANTIATE(BFloat16, float)
#undef PIPETRAIN_INSTANTIATE

bool is_available() noexcept { return cuda_is_available(); }

}  // namespace pipetrain::kernels::cuda
