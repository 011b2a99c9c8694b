// cuda_common.cuh: private to kernels/cuda: checking macros, the backend
// context, scratch buffers, launch helpers and deterministic reductions.
#ifndef PARTITA_CUDA_COMMON_CUH
#define PARTITA_CUDA_COMMON_CUH

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "cuda_kernels.h"

// Prints "partita cuda: FILE:LINE: CALL failed: WHAT" and a hint, then calls
// the fatal handler (abort by default). Never returns.
[[noreturn]] void cuda_fatal(const char *file, int line, const char *call, const char *what,
                             const char *hint);
// A hint for a CUDA error code ("" when there is nothing better to say).
const char *cuda_error_hint(cudaError_t e);

#define CUDA_CHECK(call)                                                                    \
    do {                                                                                    \
        cudaError_t e_ = (call);                                                            \
        if (e_ != cudaSuccess)                                                              \
            cuda_fatal(__FILE__, __LINE__, #call, cudaGetErrorString(e_), cuda_error_hint(e_)); \
    } while (0)

// cuBLAS's entries, through the table cuda_init fills (cublas.cu): the
// library is opened when a device starts, not linked, because loading it
// (libcublasLt's constructors) costs every process ~0.5 s of CPU, which cpu
// runs, `partita check` and each test rank would pay for nothing.
// (Spelled out: C++ overloads some of them with 64-bit sizes.)
struct CublasApi {
    cublasStatus_t (*create)(cublasHandle_t *h);
    cublasStatus_t (*destroy)(cublasHandle_t h);
    cublasStatus_t (*set_stream)(cublasHandle_t h, cudaStream_t s);
    cublasStatus_t (*set_workspace)(cublasHandle_t h, void *ws, size_t bytes);
    cublasStatus_t (*set_math_mode)(cublasHandle_t h, cublasMath_t mode);
    cublasStatus_t (*sgemm)(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const float *alpha, const float *A, int lda, const float *B, int ldb, const float *beta,
                            float *C, int ldc);
    cublasStatus_t (*gemm_ex)(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                              cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                              cublasComputeType_t compute, cublasGemmAlgo_t algo);
    const char *(*status_string)(cublasStatus_t s);
};
// Opens cuBLAS once (fatal, naming the library, where it cannot); then the table.
const CublasApi *cuda_blas_open(void);
// The table; valid after cuda_init.
extern CublasApi cuda_blas;

#define CUBLAS_CHECK(call)                                                                  \
    do {                                                                                    \
        cublasStatus_t s_ = (call);                                                         \
        if (s_ != CUBLAS_STATUS_SUCCESS)                                                    \
            cuda_fatal(__FILE__, __LINE__, #call, cuda_blas.status_string(s_),              \
                       "check the GEMM shapes and leading dimensions in the message above"); \
    } while (0)

// A violated precondition of a kernel (bad shape, unsupported size).
#define CUDA_REQUIRE(cond, hint)                                                            \
    do {                                                                                    \
        if (!(cond)) cuda_fatal(__FILE__, __LINE__, #cond, "precondition violated", hint);   \
    } while (0)

// After every kernel launch: launch errors at once; with PARTITA_CUDA_SYNC=1
// also the kernel's own faults, attributed to this launch.
#define CUDA_LAUNCH_CHECK(name)                                                             \
    do {                                                                                    \
        cudaError_t e_ = cudaGetLastError();                                                \
        if (e_ != cudaSuccess)                                                              \
            cuda_fatal(__FILE__, __LINE__, "launch of " name, cudaGetErrorString(e_),       \
                       cuda_error_hint(e_));                                                \
        if (cuda_sync_debug()) {                                                            \
            e_ = cudaStreamSynchronize(cuda_stream_t());                                    \
            if (e_ != cudaSuccess)                                                          \
                cuda_fatal(__FILE__, __LINE__, "kernel " name, cudaGetErrorString(e_),      \
                           cuda_error_hint(e_));                                            \
        }                                                                                   \
    } while (0)

// ---------------------------------------------------------------- context (util.cu)

cudaStream_t cuda_stream_t(void);
cublasHandle_t cuda_cublas(void);
int cuda_sync_debug(void);
int cuda_num_sms(void);
size_t cuda_smem_optin(void);     // max dynamic shared memory per block, bytes

// Private scratch, one buffer per purpose; grows (never shrinks) to the largest
// request. The pointer is valid until the next call with the same slot asks for more.
enum ScratchSlot {
    SCRATCH_GEMM_A,     // bf16 copy of a GEMM operand
    SCRATCH_GEMM_B,     // bf16 copy of the other operand
    SCRATCH_REDUCE,     // column-reduction partials
    SCRATCH_SORT,       // encoder backward: sorted tokens and cub temp storage
    SCRATCH_ATTN,       // attention backward: D = rowsum(dout * out)
    SCRATCH_SUMSQ,      // sumsq partials
    SCRATCH_HELD,       // inference: a bf16/int8 weight converted to fp32 for a prefill GEMM
    SCRATCH_HELD_OUT,   // inference: a prefill GEMM's output before its epilogue
    SCRATCH_NSLOTS
};
void *cuda_scratch(ScratchSlot slot, size_t bytes);

// dst[c] += sum_n src[n*C + c], n in a fixed order (util.cu).
void cuda_colsum_accumulate(float *dst, const float *src, size_t N, int C);

// ---------------------------------------------------------------- launch helpers

static inline unsigned int cuda_blocks(size_t n, int threads)
{
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    const size_t cap = (size_t)1 << 20;   // grid-stride loops cover the rest
    return (unsigned int)(b < cap ? (b ? b : 1) : cap);
}

// ---------------------------------------------------------------- deterministic reductions

// Butterfly reductions: every lane ends with the same bits, and the order of
// the additions is fixed, so the result does not vary from run to run.
__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ double warp_sum_d(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024); every thread
// gets the result. shared: 32 slots. Ends with a barrier, so shared may be reused.
__device__ __forceinline__ double block_sum_d(double v, double *shared)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum_d(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    double w = lane < nw ? shared[lane] : 0.0;
    w = warp_sum_d(w);
    __syncthreads();
    return w;
}
__device__ __forceinline__ float block_max(float v, float *shared)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float w = lane < nw ? shared[lane] : -INFINITY;
    w = warp_max(w);
    __syncthreads();
    return w;
}

#endif
