// emu_cuda.h: a CPU emulation of the CUDA subset that kernels/cuda uses, so
// that the real kernel sources and tests/gpu/test_kernels_gpu.cu can run on a
// machine without a GPU (tests/gpu/emu/run_emu.sh). Not a general emulator:
// - a block's threads are std::threads; __syncthreads is a block barrier,
//   __syncwarp and __shfl_xor_sync a barrier of the 32 lanes of the warp
//   (threads that return drop out of both), blocks run one after another;
// - __shared__ is a function-level static (fine, since blocks run in turn),
//   dynamic shared memory a heap buffer of exactly the launch's size (so
//   AddressSanitizer catches overruns) and launches above 48 KiB must have
//   raised cudaFuncAttributeMaxDynamicSharedMemorySize first;
// - device memory is host memory; cuBLAS sgemm / GemmEx are naive loops that
//   reject leading dimensions the real cuBLAS rejects; GemmEx reads bf16;
// - cub::DeviceRadixSort::SortPairs is std::stable_sort.
#ifndef PARTITA_EMU_CUDA_H
#define PARTITA_EMU_CUDA_H

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

// ---------------------------------------------------------------- thread model

struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
    unsigned int x, y, z;
};

namespace emu {
struct Block {
    std::unique_ptr<std::barrier<>> bar;
    std::vector<std::unique_ptr<std::barrier<>>> warp_bar;
    std::vector<uint64_t> xch;      // 32 slots per warp for shuffles
    std::vector<char> smem;
};
inline thread_local Block *cur;
inline thread_local unsigned int tid;
}   // namespace emu

inline thread_local uint3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

inline void __syncthreads() { emu::cur->bar->arrive_and_wait(); }
inline void __syncwarp(unsigned int = 0xffffffffu) { emu::cur->warp_bar[emu::tid / 32]->arrive_and_wait(); }

template <class T>
inline T __shfl_xor_sync(unsigned int, T v, int o)
{
    static_assert(sizeof(T) <= 8, "shuffle of more than 8 bytes");
    const unsigned int w = emu::tid / 32, lane = emu::tid % 32;
    uint64_t *x = emu::cur->xch.data() + 32 * w;
    memcpy(&x[lane], &v, sizeof(T));
    emu::cur->warp_bar[w]->arrive_and_wait();
    T r;
    memcpy(&r, &x[lane ^ (unsigned)o], sizeof(T));
    emu::cur->warp_bar[w]->arrive_and_wait();
    return r;
}

// ---------------------------------------------------------------- runtime

typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorIllegalAddress = 700,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorMisalignedAddress = 716,
    cudaErrorLaunchFailure = 719,
} cudaError_t;
typedef struct emu_stream *cudaStream_t;
typedef struct emu_event { double t; } *cudaEvent_t;
typedef enum {
    cudaMemcpyHostToDevice,
    cudaMemcpyDeviceToHost,
    cudaMemcpyDeviceToDevice
} cudaMemcpyKind;
typedef enum { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 } cudaDeviceAttr;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};

namespace emu {
inline cudaError_t last_error = cudaSuccess;
inline std::map<const void *, size_t> smem_limit;   // per kernel, raised by cudaFuncSetAttribute
// The A100's opt-in limit: the tighter of the two targets.
inline size_t smem_optin = 166912;
inline cudaError_t fail(cudaError_t e)
{
    last_error = e;
    return e;
}
}   // namespace emu

inline const char *cudaGetErrorString(cudaError_t e)
{
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument (emulated)";
    case cudaErrorMemoryAllocation: return "out of memory (emulated)";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch (emulated)";
    default: return "emulated error";
    }
}
inline cudaError_t cudaGetLastError()
{
    cudaError_t e = emu::last_error;
    emu::last_error = cudaSuccess;
    return e;
}
inline cudaError_t cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int)
{
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "CPU emulation (A100 shared-memory limits)");
    p->major = 8;
    p->minor = 0;
    p->multiProcessorCount = 4;
    p->totalGlobalMem = (size_t)16 << 30;
    return cudaSuccess;
}
inline cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int)
{
    *v = a == cudaDevAttrMaxSharedMemoryPerBlockOptin ? (int)emu::smem_optin : 0;
    return cudaSuccess;
}
inline cudaError_t cudaStreamCreate(cudaStream_t *s)
{
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
inline cudaError_t cudaStreamDestroy(cudaStream_t s)
{
    free(s);
    return cudaSuccess;
}
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline cudaError_t cudaMalloc(void **p, size_t n)
{
    *p = malloc(n ? n : 1);
    if (!*p) return emu::fail(cudaErrorMemoryAllocation);
    memset(*p, 0xa5, n);    // garbage, as fresh device memory is
    return cudaSuccess;
}
template <class T> inline cudaError_t cudaMalloc(T **p, size_t n) { return cudaMalloc((void **)p, n); }
inline cudaError_t cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}
inline cudaError_t cudaMallocHost(void **p, size_t n) { return cudaMalloc(p, n); }
inline cudaError_t cudaFreeHost(void *p) { return cudaFree(p); }
inline cudaError_t cudaMemGetInfo(size_t *f, size_t *t)
{
    *f = *t = (size_t)16 << 30;
    return cudaSuccess;
}
inline cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t = 0)
{
    memset(p, v, n);
    return cudaSuccess;
}
inline cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, cudaMemcpyKind, cudaStream_t = 0)
{
    memmove(d, s, n);
    return cudaSuccess;
}
template <class K> inline cudaError_t cudaFuncSetAttribute(K kernel, cudaFuncAttribute, int v)
{
    if ((size_t)v > emu::smem_optin) return emu::fail(cudaErrorInvalidValue);
    emu::smem_limit[(const void *)kernel] = (size_t)v;
    return cudaSuccess;
}
inline cudaError_t cudaEventCreate(cudaEvent_t *e)
{
    *e = new emu_event{0.0};
    return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t e)
{
    delete e;
    return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t = 0)
{
    e->t = (double)clock() / CLOCKS_PER_SEC * 1e3;
    return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b)
{
    *ms = (float)(b->t - a->t);
    return cudaSuccess;
}

// ---------------------------------------------------------------- launch

namespace emu {
struct Launch {
    dim3 g, b;
    size_t smem;
    Launch(dim3 g_, dim3 b_, size_t smem_ = 0, cudaStream_t = 0) : g(g_), b(b_), smem(smem_) {}
    template <class... P, class... A>
    void operator()(void (*k)(P...), A... args)
    {
        const unsigned int nt = b.x * b.y * b.z;
        if (nt == 0 || nt > 1024 || g.x == 0 || g.y == 0 || g.z == 0 || g.y > 65535 || g.z > 65535) {
            fprintf(stderr, "emu: bad launch configuration grid (%u,%u,%u) block (%u,%u,%u)\n",
                    g.x, g.y, g.z, b.x, b.y, b.z);
            fail(cudaErrorInvalidValue);
            return;
        }
        size_t limit = 48 * 1024;
        auto it = smem_limit.find((const void *)k);
        if (it != smem_limit.end()) limit = it->second > limit ? it->second : limit;
        if (smem > limit) {
            fprintf(stderr, "emu: launch asks %zu bytes of dynamic shared memory, limit %zu\n", smem,
                    limit);
            fail(cudaErrorInvalidValue);
            return;
        }
        // nt OS threads for the whole launch; between blocks they meet at an
        // outer barrier whose completion step sets up the next block.
        const size_t nblocks = (size_t)g.x * g.y * g.z;
        const unsigned int nw = (nt + 31) / 32;
        Block blk;
        size_t next = 0;
        auto setup = [&]() noexcept {
            blk.bar.reset(new std::barrier<>(nt));
            blk.warp_bar.clear();
            for (unsigned int w = 0; w < nw; w++)
                blk.warp_bar.emplace_back(new std::barrier<>(std::min(32u, nt - 32 * w)));
            blk.xch.assign(32 * nw, 0);
            blk.smem.assign(smem, (char)0xa5);
            next++;
        };
        std::barrier<decltype(setup)> outer(nt, setup);
        std::vector<std::thread> th;
        th.reserve(nt);
        for (unsigned int t = 0; t < nt; t++)
            th.emplace_back([&, t]() {
                cur = &blk;
                tid = t;
                threadIdx = uint3{t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
                blockDim = b;
                gridDim = g;
                for (;;) {
                    outer.arrive_and_wait();
                    const size_t id = next - 1;
                    if (id >= nblocks) break;
                    blockIdx = uint3{(unsigned)(id % g.x), (unsigned)((id / g.x) % g.y),
                                     (unsigned)(id / ((size_t)g.x * g.y))};
                    k(static_cast<P>(args)...);
                    blk.warp_bar[t / 32]->arrive_and_drop();
                    blk.bar->arrive_and_drop();
                }
            });
        for (auto &x : th) x.join();
    }
};
inline void *dyn_smem() { return cur->smem.empty() ? nullptr : cur->smem.data(); }
}   // namespace emu

// ---------------------------------------------------------------- bf16

struct __nv_bfloat16 {
    uint16_t x;
};
inline __nv_bfloat16 __float2bfloat16_rn(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) r.x = 0x7fc0;          // NaN
    else r.x = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); // round to nearest even
    return r;
}
inline float emu_bf16_to_float(__nv_bfloat16 h)
{
    uint32_t u = (uint32_t)h.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---------------------------------------------------------------- cuBLAS

typedef struct emu_cublas *cublasHandle_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0,
    CUBLAS_STATUS_INVALID_VALUE = 7,
    CUBLAS_STATUS_NOT_SUPPORTED = 15
} cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_COMPUTE_32F = 68 } cublasComputeType_t;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;

inline const char *cublasGetStatusString(cublasStatus_t s)
{
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS"
           : s == CUBLAS_STATUS_INVALID_VALUE ? "CUBLAS_STATUS_INVALID_VALUE (emulated)"
                                              : "CUBLAS_STATUS_NOT_SUPPORTED (emulated)";
}
inline cublasStatus_t cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
inline cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) { return CUBLAS_STATUS_SUCCESS; }
inline cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

namespace emu {
// Column-major C = alpha op(A) op(B) + beta C with cuBLAS's argument checks.
template <class GA, class GB>
cublasStatus_t gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, float alpha,
                    GA a, int lda, GB bget, int ldb, float beta, float *C, int ldc)
{
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (lda < std::max(1, ta == CUBLAS_OP_N ? m : k)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldb < std::max(1, tb == CUBLAS_OP_N ? k : n)) return CUBLAS_STATUS_INVALID_VALUE;
    if (ldc < std::max(1, m)) return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            double s = 0.0;
            for (int p = 0; p < k; p++) {
                double av = ta == CUBLAS_OP_N ? a((size_t)p * lda + i) : a((size_t)i * lda + p);
                double bv = tb == CUBLAS_OP_N ? bget((size_t)j * ldb + p) : bget((size_t)p * ldb + j);
                s += av * bv;
            }
            float *c = C + (size_t)j * ldc + i;
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    return CUBLAS_STATUS_SUCCESS;
}
}   // namespace emu

inline cublasStatus_t cublasSgemm(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                  int n, int k, const float *alpha, const float *A, int lda,
                                  const float *B, int ldb, const float *beta, float *C, int ldc)
{
    return emu::gemm(ta, tb, m, n, k, *alpha, [A](size_t i) { return (double)A[i]; }, lda,
                     [B](size_t i) { return (double)B[i]; }, ldb, *beta, C, ldc);
}
inline cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                                   int n, int k, const void *alpha, const void *A, cudaDataType at,
                                   int lda, const void *B, cudaDataType bt, int ldb,
                                   const void *beta, void *C, cudaDataType ct, int ldc,
                                   cublasComputeType_t, cublasGemmAlgo_t)
{
    if (at != CUDA_R_16BF || bt != CUDA_R_16BF || ct != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    const __nv_bfloat16 *a = (const __nv_bfloat16 *)A, *b = (const __nv_bfloat16 *)B;
    return emu::gemm(ta, tb, m, n, k, *(const float *)alpha,
                     [a](size_t i) { return (double)emu_bf16_to_float(a[i]); }, lda,
                     [b](size_t i) { return (double)emu_bf16_to_float(b[i]); }, ldb,
                     *(const float *)beta, (float *)C, ldc);
}

// ---------------------------------------------------------------- cub

namespace cub {
struct DeviceRadixSort {
    template <class K, class V>
    static cudaError_t SortPairs(void *temp, size_t &bytes, const K *kin, K *kout, const V *vin,
                                 V *vout, int n, int = 0, int = (int)sizeof(K) * 8,
                                 cudaStream_t = 0)
    {
        if (!temp) {
            bytes = 64;
            return cudaSuccess;
        }
        std::vector<std::pair<K, V>> v((size_t)n);
        for (int i = 0; i < n; i++) v[i] = {kin[i], vin[i]};
        std::stable_sort(v.begin(), v.end(),
                         [](const std::pair<K, V> &x, const std::pair<K, V> &y) { return x.first < y.first; });
        for (int i = 0; i < n; i++) {
            kout[i] = v[i].first;
            vout[i] = v[i].second;
        }
        return cudaSuccess;
    }
};
}   // namespace cub

#endif
