// util.cu: the cuda backend's context (device, stream, cuBLAS handle, arena,
// scratch), error reporting, copies, elementwise helpers (residual, scale,
// axpy), the deterministic column sum and sum of squares, thread no-ops.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cuda_common.cuh"

#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
#define ARENA_ALIGN 256
#define SCRATCH_GRAIN ((size_t)1 << 20)     // scratch sizes are rounded up to this
#define ELT_THREADS 256
#define COLSUM_ROWS 256                     // rows per partial sum of a column reduction
#define SUMSQ_CHUNK 16384                   // floats per float64 partial (as the cpu backend)

// The backend's one context. The kernel interface (kernels.h) has no context
// parameter, so it lives here, created by cuda_init and destroyed by cuda_shutdown.
typedef struct {
    int initialized;
    int device, bf16, sync_debug, num_sms;
    size_t smem_optin;
    cudaStream_t stream;
    cudaStream_t copy_stream;               // offload copies (cuda_copy_*_async)
    cudaEvent_t order;                      // backend stream -> copy stream ordering
    cublasHandle_t cublas;
    void *cublas_ws;
    char *arena;
    size_t arena_size, arena_used;
    void *scratch[SCRATCH_NSLOTS];
    size_t scratch_size[SCRATCH_NSLOTS];
    double *host_result;                    // pinned, for sumsq
    char name[320];
} CudaCtx;

static CudaCtx ctx;
static void (*fatal_handler)(void);
static char probe_error[256];

// ---------------------------------------------------------------- errors

void cuda_fatal(const char *file, int line, const char *call, const char *what, const char *hint)
{
    fprintf(stderr, "partita cuda: %s:%d: %s failed: %s\n", file, line, call, what);
    if (hint && hint[0]) fprintf(stderr, "hint: %s\n", hint);
    fflush(stderr);
    if (fatal_handler) fatal_handler();
    abort();
}

const char *cuda_error_hint(cudaError_t e)
{
    switch (e) {
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidDeviceFunction:
        return "this build holds machine code for sm_80 and sm_90 only: add a -gencode for this "
               "GPU's compute capability in kernels/cuda/cuda.mk and rebuild";
    case cudaErrorInsufficientDriver:
        return "the NVIDIA driver is older than the CUDA runtime this was built with: update the "
               "driver or build with the toolkit that matches it (nvidia-smi shows the driver)";
    case cudaErrorNoDevice:
        return "no CUDA device is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES";
    case cudaErrorMemoryAllocation:
        return "out of device memory: lower the batch size or the arena; nvidia-smi shows what "
               "else holds memory on this GPU";
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorMisalignedAddress:
        return "a kernel touched memory outside its buffers: rerun with PARTITA_CUDA_SYNC=1 to "
               "name the kernel, or under compute-sanitizer";
    case cudaErrorLaunchOutOfResources:
        return "a kernel asked for more registers or shared memory than the device has";
    default:
        return "errors of asynchronous work surface at a later call: rerun with "
               "PARTITA_CUDA_SYNC=1 to attribute them to the kernel that caused them";
    }
}

void cuda_set_fatal_handler(void (*handler)(void)) { fatal_handler = handler; }

static void require_init(const char *fn)
{
    if (!ctx.initialized)
        cuda_fatal(__FILE__, __LINE__, fn, "the cuda backend is not initialized",
                   "call cuda_init(device, precision_bf16) first");
}

// ---------------------------------------------------------------- context

int cuda_device_count(void)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(probe_error, sizeof probe_error, "cudaGetDeviceCount: %s", cudaGetErrorString(e));
        (void)cudaGetLastError();   // clear the sticky-free error so later calls start clean
        return 0;
    }
    if (n == 0) snprintf(probe_error, sizeof probe_error, "cudaGetDeviceCount: 0 devices");
    else probe_error[0] = '\0';
    return n;
}

const char *cuda_probe_error(void) { return probe_error; }

void cuda_init(int device, int precision_bf16)
{
    if (ctx.initialized)
        cuda_fatal(__FILE__, __LINE__, "cuda_init", "called twice", "call cuda_shutdown first");
    int count = cuda_device_count();
    if (device < 0 || device >= count) {
        char what[400];
        snprintf(what, sizeof what, "device %d asked for, %d visible%s%s", device, count,
                 probe_error[0] ? "; " : "", probe_error);
        cuda_fatal(__FILE__, __LINE__, "cuda_init", what,
                   "check nvidia-smi and CUDA_VISIBLE_DEVICES; ranks on one node pick "
                   "local_rank % device_count");
    }
    CUDA_CHECK(cudaSetDevice(device));
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    if (p.major < 8) {
        char what[400];
        snprintf(what, sizeof what, "%s has compute capability %d.%d", p.name, p.major, p.minor);
        cuda_fatal(__FILE__, __LINE__, "cuda_init", what,
                   "the cuda backend needs compute capability 8.0 or newer (bf16, large shared "
                   "memory); run with the cpu backend");
    }
    int optin = 0;
    CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    ctx.device = device;
    ctx.bf16 = precision_bf16 ? 1 : 0;
    ctx.num_sms = p.multiProcessorCount;
    ctx.smem_optin = (size_t)optin;
    const char *sync = getenv("PARTITA_CUDA_SYNC");
    ctx.sync_debug = sync && sync[0] && strcmp(sync, "0") != 0;
    snprintf(ctx.name, sizeof ctx.name, "%.200s (sm_%d%d, %d SMs, %.1f GiB)", p.name, p.major, p.minor,
             p.multiProcessorCount, (double)p.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));

    // A blocking stream: it also orders against the legacy default stream, so
    // code that forgets to pass cuda_stream() is still correct, only slower.
    CUDA_CHECK(cudaStreamCreate(&ctx.stream));
    CUDA_CHECK(cudaStreamCreateWithFlags(&ctx.copy_stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&ctx.order, cudaEventDisableTiming));
    cuda_blas_open();
    CUBLAS_CHECK(cuda_blas.create(&ctx.cublas));
    CUBLAS_CHECK(cuda_blas.set_stream(ctx.cublas, ctx.stream));
    CUDA_CHECK(cudaMalloc(&ctx.cublas_ws, CUBLAS_WORKSPACE_BYTES));
    CUBLAS_CHECK(cuda_blas.set_workspace(ctx.cublas, ctx.cublas_ws, CUBLAS_WORKSPACE_BYTES));
    // Plain fp32 sgemm (no TF32) in fp32 mode; bf16 GEMMs ask for fp32 compute explicitly.
    CUBLAS_CHECK(cuda_blas.set_math_mode(ctx.cublas, CUBLAS_DEFAULT_MATH));
    CUDA_CHECK(cudaMallocHost((void **)&ctx.host_result, sizeof(double)));
    ctx.initialized = 1;
}

void cuda_shutdown(void)
{
    if (!ctx.initialized) return;
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    for (int s = 0; s < SCRATCH_NSLOTS; s++)
        if (ctx.scratch[s]) CUDA_CHECK(cudaFree(ctx.scratch[s]));
    if (ctx.arena) CUDA_CHECK(cudaFree(ctx.arena));
    CUDA_CHECK(cudaFreeHost(ctx.host_result));
    CUBLAS_CHECK(cuda_blas.destroy(ctx.cublas));
    CUDA_CHECK(cudaFree(ctx.cublas_ws));
    CUDA_CHECK(cudaStreamSynchronize(ctx.copy_stream));
    CUDA_CHECK(cudaEventDestroy(ctx.order));
    CUDA_CHECK(cudaStreamDestroy(ctx.copy_stream));
    CUDA_CHECK(cudaStreamDestroy(ctx.stream));
    memset(&ctx, 0, sizeof ctx);
}

int cuda_precision_bf16(void) { return ctx.bf16; }
const char *cuda_device_name(void) { return ctx.name; }
cudaStream_t cuda_stream_t(void) { return ctx.stream; }
void *cuda_stream(void) { return (void *)ctx.stream; }
cublasHandle_t cuda_cublas(void) { return ctx.cublas; }
int cuda_sync_debug(void) { return ctx.sync_debug; }
int cuda_num_sms(void) { return ctx.num_sms; }
size_t cuda_smem_optin(void) { return ctx.smem_optin; }

void cuda_synchronize(void)
{
    require_init("cuda_synchronize");
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
}

// ---------------------------------------------------------------- memory

static void checked_malloc(void **p, size_t bytes, const char *what)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e == cudaSuccess) return;
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    char msg[400];
    snprintf(msg, sizeof msg, "%s: %.3f GiB asked, %.3f GiB free of %.3f GiB (%s)", what,
             bytes / 1073741824.0, free_b / 1073741824.0, total_b / 1073741824.0,
             cudaGetErrorString(e));
    cuda_fatal(__FILE__, __LINE__, "cudaMalloc", msg, cuda_error_hint(cudaErrorMemoryAllocation));
}

void cuda_arena_reserve(size_t bytes)
{
    require_init("cuda_arena_reserve");
    if (ctx.arena)
        cuda_fatal(__FILE__, __LINE__, "cuda_arena_reserve", "the arena is already reserved",
                   "reserve once, for everything, after cuda_init");
    checked_malloc((void **)&ctx.arena, bytes ? bytes : ARENA_ALIGN, "device arena");
    ctx.arena_size = bytes;
    ctx.arena_used = 0;
}

void *cuda_malloc(size_t bytes)
{
    require_init("cuda_malloc");
    if (!ctx.arena)
        cuda_fatal(__FILE__, __LINE__, "cuda_malloc", "no arena",
                   "call cuda_arena_reserve(bytes) once after cuda_init");
    size_t off = (ctx.arena_used + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (off > ctx.arena_size || bytes > ctx.arena_size - off) {
        char msg[300];
        snprintf(msg, sizeof msg, "arena full: %zu bytes asked, %zu of %zu used", bytes,
                 ctx.arena_used, ctx.arena_size);
        cuda_fatal(__FILE__, __LINE__, "cuda_malloc", msg,
                   "reserve a larger arena (sum the tensors plus 256 bytes of alignment each)");
    }
    ctx.arena_used = off + bytes;
    return ctx.arena + off;
}

size_t cuda_arena_used(void) { return ctx.arena_used; }

size_t cuda_scratch_bytes(void)
{
    size_t s = 0;
    for (int i = 0; i < SCRATCH_NSLOTS; i++) s += ctx.scratch_size[i];
    return s;
}

void *cuda_scratch(ScratchSlot slot, size_t bytes)
{
    require_init("cuda_scratch");
    if (bytes <= ctx.scratch_size[slot] && ctx.scratch[slot]) return ctx.scratch[slot];
    // Growing: earlier work on the stream may still read the old buffer.
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    if (ctx.scratch[slot]) CUDA_CHECK(cudaFree(ctx.scratch[slot]));
    size_t want = bytes + bytes / 8;    // a little headroom for a slightly larger next call
    want = (want + SCRATCH_GRAIN - 1) / SCRATCH_GRAIN * SCRATCH_GRAIN;
    ctx.scratch[slot] = NULL;
    ctx.scratch_size[slot] = 0;
    checked_malloc(&ctx.scratch[slot], want, "kernel scratch");
    ctx.scratch_size[slot] = want;
    return ctx.scratch[slot];
}

void cuda_memset_zero(float *x, size_t n)
{
    require_init("cuda_memset_zero");
    CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof(float), ctx.stream));
}

static void copy_sync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    require_init("cuda_copy");
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
}

void cuda_copy_h2d(float *dst, const float *src, size_t n)
{
    copy_sync(dst, src, n * sizeof(float), cudaMemcpyHostToDevice);
}
void cuda_copy_d2h(float *dst, const float *src, size_t n)
{
    copy_sync(dst, src, n * sizeof(float), cudaMemcpyDeviceToHost);
}
void cuda_copy_h2d_i32(int32_t *dst, const int32_t *src, size_t n)
{
    copy_sync(dst, src, n * sizeof(int32_t), cudaMemcpyHostToDevice);
}
void cuda_copy_d2d(float *dst, const float *src, size_t n)
{
    require_init("cuda_copy_d2d");
    CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream));
}

// ---------------------------------------------------------------- pinned memory, the copy stream

void *cuda_host_alloc(size_t bytes)
{
    require_init("cuda_host_alloc");
    void *p = NULL;
    cudaError_t e = cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocDefault);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        char msg[200];
        snprintf(msg, sizeof msg, "%zu bytes of pinned host memory: %s", bytes, cudaGetErrorString(e));
        cuda_fatal(__FILE__, __LINE__, "cudaHostAlloc", msg,
                   "lower [offload] subgroup_mb or buffers, or check the locked-memory limit (ulimit -l)");
    }
    memset(p, 0, bytes);
    return p;
}

void cuda_host_free(void *p)
{
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

void *cuda_event_create(void)
{
    require_init("cuda_event_create");
    cudaEvent_t e;
    CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    return (void *)e;
}

void cuda_event_destroy(void *ev)
{
    if (ev) CUDA_CHECK(cudaEventDestroy((cudaEvent_t)ev));
}

// A copy on the copy stream after the backend stream's work so far, then ev.
static void copy_async(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, void *ev)
{
    require_init("cuda_copy_async");
    CUDA_CHECK(cudaEventRecord(ctx.order, ctx.stream));
    CUDA_CHECK(cudaStreamWaitEvent(ctx.copy_stream, ctx.order, 0));
    if (bytes) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, ctx.copy_stream));
    if (ev) CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, ctx.copy_stream));
    if (ctx.sync_debug) CUDA_CHECK(cudaStreamSynchronize(ctx.copy_stream));
}

void cuda_copy_d2h_async(float *host, const float *src, size_t n, void *ev)
{
    copy_async(host, src, n * sizeof(float), cudaMemcpyDeviceToHost, ev);
}

void cuda_copy_h2d_async(float *dst, const float *host, size_t n, void *ev)
{
    copy_async(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, ev);
}

void cuda_copy_fence(void *ev)
{
    require_init("cuda_copy_fence");
    if (ev) CUDA_CHECK(cudaEventRecord((cudaEvent_t)ev, ctx.copy_stream));
}

void cuda_event_sync(void *ev)
{
    if (ev) CUDA_CHECK(cudaEventSynchronize((cudaEvent_t)ev));
}

void cuda_compute_wait(void *ev)
{
    require_init("cuda_compute_wait");
    if (ev) CUDA_CHECK(cudaStreamWaitEvent(ctx.stream, (cudaEvent_t)ev, 0));
}

__global__ void copy2d_kernel(float *dst, size_t dst_stride, const float *src, size_t src_stride,
                              size_t rows, size_t cols)
{
    size_t n = rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / cols, c = i - r * cols;
        dst[r * dst_stride + c] = src[r * src_stride + c];
    }
}

// Strided block copy (the layout permutations of sequence parallelism).
void cuda_copy2d(float *dst,                // (rows, dst_stride)
                 size_t dst_stride,
                 const float *src,          // (rows, src_stride)
                 size_t src_stride, size_t rows, size_t cols)
{
    require_init("cuda_copy2d");
    if (rows == 0 || cols == 0) return;
    copy2d_kernel<<<cuda_blocks(rows * cols, ELT_THREADS), ELT_THREADS, 0, ctx.stream>>>(
        dst, dst_stride, src, src_stride, rows, cols);
    CUDA_LAUNCH_CHECK("copy2d_kernel");
}

// ---------------------------------------------------------------- elementwise

__global__ void residual_kernel(float *out, const float *a, const float *b, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

__global__ void scale_kernel(float *x, float s, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] *= s;
}

__global__ void axpy_kernel(float *y, const float *x, float a, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = fmaf(a, x[i], y[i]);
}

// out = a + b
void cuda_residual_forward(float *out,      // (n)
                           const float *a,  // (n)
                           const float *b,  // (n)
                           size_t n)
{
    if (n == 0) return;
    residual_kernel<<<cuda_blocks(n, ELT_THREADS), ELT_THREADS, 0, ctx.stream>>>(out, a, b, n);
    CUDA_LAUNCH_CHECK("residual_kernel");
}

// x *= s
void cuda_scale_inplace(float *x,           // (n)
                        float s, size_t n)
{
    if (n == 0) return;
    scale_kernel<<<cuda_blocks(n, ELT_THREADS), ELT_THREADS, 0, ctx.stream>>>(x, s, n);
    CUDA_LAUNCH_CHECK("scale_kernel");
}

// y += a x
void cuda_axpy(float *y,                    // (n)
               const float *x,              // (n)
               float a, size_t n)
{
    if (n == 0) return;
    axpy_kernel<<<cuda_blocks(n, ELT_THREADS), ELT_THREADS, 0, ctx.stream>>>(y, x, a, n);
    CUDA_LAUNCH_CHECK("axpy_kernel");
}

// ---------------------------------------------------------------- column sum

// partial[r, c] = sum of src[n, c] over the rows n of chunk r (COLSUM_ROWS rows),
// thread (x, y) taking rows y, y+8, ... in order, then the 8 sums added in y order.
__global__ void colsum_partial_kernel(float *partial,       // (R, C)
                                      const float *src,     // (N, C)
                                      size_t N, int C, size_t R)
{
    __shared__ float s[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    for (size_t r = blockIdx.y; r < R; r += gridDim.y) {
        size_t n0 = r * COLSUM_ROWS, n1 = n0 + COLSUM_ROWS < N ? n0 + COLSUM_ROWS : N;
        float acc = 0.0f;
        if (c < C)
            for (size_t n = n0 + threadIdx.y; n < n1; n += 8) acc += src[n * C + c];
        s[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float t = 0.0f;
            for (int y = 0; y < 8; y++) t += s[y][threadIdx.x];
            partial[r * C + c] = t;
        }
        __syncthreads();
    }
}

// dst[c] += sum_r partial[r, c], r in order.
__global__ void colsum_final_kernel(float *dst, const float *partial, int C, size_t R)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float t = 0.0f;
    for (size_t r = 0; r < R; r++) t += partial[r * C + c];
    dst[c] += t;
}

// dst[c] += sum_n src[n, c]: per-chunk partials, then the chunks in order.
void cuda_colsum_accumulate(float *dst,         // (C) accumulates
                            const float *src,   // (N, C)
                            size_t N, int C)
{
    if (N == 0 || C <= 0) return;
    size_t R = (N + COLSUM_ROWS - 1) / COLSUM_ROWS;
    float *partial = (float *)cuda_scratch(SCRATCH_REDUCE, R * (size_t)C * sizeof(float));
    dim3 grid((C + 31) / 32, (unsigned)(R < 65535 ? R : 65535));
    colsum_partial_kernel<<<grid, dim3(32, 8), 0, ctx.stream>>>(partial, src, N, C, R);
    CUDA_LAUNCH_CHECK("colsum_partial_kernel");
    colsum_final_kernel<<<(C + 255) / 256, 256, 0, ctx.stream>>>(dst, partial, C, R);
    CUDA_LAUNCH_CHECK("colsum_final_kernel");
}

// ---------------------------------------------------------------- sum of squares

// partial[k] = sum of x_i^2 (float64) over chunk k: thread t takes i = t, t+256, ...
__global__ void sumsq_partial_kernel(double *partial, const float *x, size_t n)
{
    __shared__ double sh[32];
    size_t lo = (size_t)blockIdx.x * SUMSQ_CHUNK;
    size_t hi = lo + SUMSQ_CHUNK < n ? lo + SUMSQ_CHUNK : n;
    double s = 0.0;
    for (size_t i = lo + threadIdx.x; i < hi; i += blockDim.x) s += (double)x[i] * (double)x[i];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

// *out = sum_k partial[k]: thread t takes k = t, t+1024, ..., then a fixed tree.
__global__ void sumsq_final_kernel(double *out, const double *partial, size_t nchunks)
{
    __shared__ double sh[32];
    double s = 0.0;
    for (size_t k = threadIdx.x; k < nchunks; k += blockDim.x) s += partial[k];
    s = block_sum_d(s, sh);
    if (threadIdx.x == 0) *out = s;
}

// sum_i x_i^2 in float64, fixed chunks in a fixed order; synchronizes.
double cuda_sumsq(const float *x,               // (n)
                  size_t n)
{
    require_init("cuda_sumsq");
    if (n == 0) return 0.0;
    size_t nchunks = (n + SUMSQ_CHUNK - 1) / SUMSQ_CHUNK;
    CUDA_REQUIRE(nchunks < ((size_t)1 << 31), "sumsq of more than 2^45 floats");
    double *partial = (double *)cuda_scratch(SCRATCH_SUMSQ, (nchunks + 1) * sizeof(double));
    sumsq_partial_kernel<<<(unsigned)nchunks, 256, 0, ctx.stream>>>(partial, x, n);
    CUDA_LAUNCH_CHECK("sumsq_partial_kernel");
    sumsq_final_kernel<<<1, 1024, 0, ctx.stream>>>(partial + nchunks, partial, nchunks);
    CUDA_LAUNCH_CHECK("sumsq_final_kernel");
    CUDA_CHECK(cudaMemcpyAsync(ctx.host_result, partial + nchunks, sizeof(double),
                               cudaMemcpyDeviceToHost, ctx.stream));
    CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
    return *ctx.host_result;
}

// ---------------------------------------------------------------- threads

void cuda_kernels_set_threads(int n) { (void)n; }
int cuda_kernels_get_threads(void) { return 1; }
