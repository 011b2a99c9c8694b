// moe.cu: the row moves of a Mixture-of-Experts layer on the device (kernels.h
// moe_*, kernels/cpu/moe.c), driven by the token -> slot table pos[n*K + k]:
// the dispatch-buffer row of choice k of token n, -1 where it was dropped.
//
// Deterministic without atomics: dispatch writes each kept (n, k) to its own
// row (moe.c never gives two choices one row); combine has one thread per
// output element that sums the choices in k order, as the cpu loop does;
// rowdot reduces each (n, k) in one warp, in float64, in a fixed order.
#include "cuda_common.cuh"

#define MOE_THREADS 256
#define MOE_ROWDOT_WARPS (MOE_THREADS / 32)

// dst[pos[n,k], c] = w[n,k] * src[n, c] for every kept choice (one thread per element).
__global__ void moe_dispatch_kernel(float *dst, const float *src, const int32_t *pos, const float *w,
                                    size_t N, int K, int C)
{
    const size_t total = N * (size_t)K * (size_t)C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t nk = i / (size_t)C, c = i - nk * (size_t)C;
        int32_t p = pos[nk];
        if (p < 0) continue;
        float s = w ? w[nk] : 1.0f;
        size_t n = nk / (size_t)K;
        dst[(size_t)p * (size_t)C + c] = s * src[n * (size_t)C + c];
    }
}

// out[n, c] (= or +=) sum_k w[n,k] y[pos[n,k], c], k in order (one thread per element).
__global__ void moe_combine_kernel(float *out, const float *y, const int32_t *pos, const float *w,
                                   size_t N, int K, int C, int accumulate)
{
    const size_t total = N * (size_t)C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / (size_t)C, c = i - n * (size_t)C;
        float o = accumulate ? out[i] : 0.0f;
        for (int k = 0; k < K; k++) {
            size_t nk = n * (size_t)K + (size_t)k;
            int32_t p = pos[nk];
            if (p < 0) continue;
            float s = w ? w[nk] : 1.0f;
            o += s * y[(size_t)p * (size_t)C + c];
        }
        out[i] = o;
    }
}

// dots[n,k] = a[n] . y[pos[n,k]] in float64: one warp per (n, k), lane-strided
// partial sums, then the fixed butterfly.
__global__ void moe_rowdot_kernel(float *dots, const float *a, const float *y, const int32_t *pos,
                                  size_t N, int K, int C)
{
    const int lane = threadIdx.x & 31;
    const size_t nwarps = (size_t)gridDim.x * MOE_ROWDOT_WARPS;
    for (size_t i = blockIdx.x * (size_t)MOE_ROWDOT_WARPS + (threadIdx.x >> 5); i < N * (size_t)K;
         i += nwarps) {
        size_t n = i / (size_t)K;
        int32_t p = pos ? pos[i] : (int32_t)n;
        if (p < 0) {                    // the whole warp takes this branch
            if (lane == 0) dots[i] = 0.0f;
            continue;
        }
        const float *x = a + n * (size_t)C, *r = y + (size_t)p * (size_t)C;
        double s = 0.0;
        for (int c = lane; c < C; c += 32) s += (double)x[c] * (double)r[c];
        s = warp_sum_d(s);
        if (lane == 0) dots[i] = (float)s;
    }
}

void cuda_moe_dispatch(float *dst,              // (rows, C): rows pos names are written
                       const float *src,        // (N, C)
                       const int32_t *pos,      // (N*K)
                       const float *w,          // (N*K) or NULL
                       size_t N, int K, int C)
{
    size_t total = N * (size_t)K * (size_t)C;
    if (total == 0) return;
    moe_dispatch_kernel<<<cuda_blocks(total, MOE_THREADS), MOE_THREADS, 0, cuda_stream_t()>>>(
        dst, src, pos, w, N, K, C);
    CUDA_LAUNCH_CHECK("moe_dispatch_kernel");
}

// out must not alias y.
void cuda_moe_combine(float *out,               // (N, C) overwritten or accumulated
                      const float *y,           // (rows, C)
                      const int32_t *pos,       // (N*K)
                      const float *w,           // (N*K) or NULL
                      size_t N, int K, int C, int accumulate)
{
    size_t total = N * (size_t)C;
    if (total == 0) return;
    moe_combine_kernel<<<cuda_blocks(total, MOE_THREADS), MOE_THREADS, 0, cuda_stream_t()>>>(
        out, y, pos, w, N, K, C, accumulate);
    CUDA_LAUNCH_CHECK("moe_combine_kernel");
}

void cuda_moe_rowdot(float *dots,               // (N*K)
                     const float *a,            // (N, C)
                     const float *y,            // (rows, C)
                     const int32_t *pos,        // (N*K), or NULL: K = 1 and row n of y
                     size_t N, int K, int C)
{
    size_t rows = N * (size_t)K;
    if (rows == 0) return;
    moe_rowdot_kernel<<<cuda_blocks(rows, MOE_ROWDOT_WARPS), MOE_THREADS, 0, cuda_stream_t()>>>(
        dots, a, y, pos, N, K, C);
    CUDA_LAUNCH_CHECK("moe_rowdot_kernel");
}
