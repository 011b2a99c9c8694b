// infer.cu: the inference kernels of kernels.h on the device: row embeddings,
// the KV-cache store, and products against weights held (OC, IC) in fp32,
// bf16 or int8.
//
// Few rows (decode, N <= HELD_SMALL_M): one warp per output column streams that
// column's weights once (coalesced, converted in registers) against all N
// input rows, reduced by the fixed butterfly of warp_sum, epilogue fused. More
// rows (prefill): the weight is converted to fp32 in scratch (bf16, int8) and
// the product is one cuBLAS sgemm, then an epilogue kernel.
#include <climits>

#include "cuda_common.cuh"
#include "kernels.h"

#define HELD_SMALL_M 8
#define HELD_WARPS 8
#define INF_THREADS 256

__global__ void embed_rows_kernel(float *out, const int32_t *tok, const int32_t *pos, const float *wte,
                                  const float *wpe, int N, int C)
{
    const size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / (size_t)C, c = i % (size_t)C;
        out[i] = wte[(size_t)tok[n] * C + c] + wpe[(size_t)pos[n] * C + c];
    }
}

void cuda_embed_rows(float *out, const int32_t *tok, const int32_t *pos, const float *wte, const float *wpe,
                     int N, int C)
{
    if (N <= 0) return;
    embed_rows_kernel<<<cuda_blocks((size_t)N * C, INF_THREADS), INF_THREADS, 0, cuda_stream_t()>>>(
        out, tok, pos, wte, wpe, N, C);
    CUDA_LAUNCH_CHECK("embed_rows_kernel");
}

__global__ void kv_store_kernel(float *kv, size_t block_stride, size_t v_offset, const float *qkv,
                                const int32_t *tables, int max_blocks, const int32_t *pos, int N, int C, int bs)
{
    const size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const int n = (int)(i / (size_t)C), c = (int)(i % (size_t)C);
        const int32_t blk = tables[(size_t)n * max_blocks + pos[n] / bs];
        float *k = kv + (size_t)blk * block_stride + (size_t)(pos[n] % bs) * C + c;
        k[0] = qkv[(size_t)n * 3 * C + C + c];
        k[v_offset] = qkv[(size_t)n * 3 * C + 2 * C + c];
    }
}

void cuda_kv_store(float *kv, size_t block_stride, size_t v_offset, const float *qkv, const int32_t *tables,
                   int max_blocks, const int32_t *pos, int N, int C, int bs)
{
    if (N <= 0) return;
    kv_store_kernel<<<cuda_blocks((size_t)N * C, INF_THREADS), INF_THREADS, 0, cuda_stream_t()>>>(
        kv, block_stride, v_offset, qkv, tables, max_blocks, pos, N, C, bs);
    CUDA_LAUNCH_CHECK("kv_store_kernel");
}

__device__ __forceinline__ float held_w(const void *w, int dt, size_t i)
{
    if (dt == WDT_F32) return ((const float *)w)[i];
    if (dt == WDT_BF16) return __uint_as_float((unsigned int)((const uint16_t *)w)[i] << 16);
    return (float)((const int8_t *)w)[i];
}

// gelu_forward's formula (kernels/cuda/gelu.cu and the cpu kernels).
__device__ __forceinline__ float held_gelu(float x)
{
    float z = -2.0f * 0.7978845608028654f * fmaf(0.044715f * x, x * x, x);
    z = fminf(z, 80.0f);
    return x / (1.0f + expf(z));
}

__device__ __forceinline__ void held_store(float *o, float v, int epi)
{
    if (epi == EPI_GELU) *o = held_gelu(v);
    else if (epi == EPI_RESIDUAL) *o += v;
    else *o = v;
}

// One warp per output column j: the dot products of W[j, :] with the N rows.
__global__ void held_small_kernel(float *out, const float *inp, const void *w, int dt, const float *scale,
                                  const float *bias, int N, int IC, int OC, int epi)
{
    const int lane = threadIdx.x & 31;
    const int j = blockIdx.x * HELD_WARPS + (threadIdx.x >> 5);
    if (j >= OC) return;
    float acc[HELD_SMALL_M];
#pragma unroll
    for (int n = 0; n < HELD_SMALL_M; n++) acc[n] = 0.0f;
    const size_t row = (size_t)j * IC;
    for (int i = lane; i < IC; i += 32) {
        const float wv = held_w(w, dt, row + i);
#pragma unroll
        for (int n = 0; n < HELD_SMALL_M; n++)
            if (n < N) acc[n] = fmaf(inp[(size_t)n * IC + i], wv, acc[n]);
    }
    const float s = scale ? scale[j] : 1.0f, b = bias ? bias[j] : 0.0f;
#pragma unroll
    for (int n = 0; n < HELD_SMALL_M; n++) {
        if (n >= N) break;
        const float v = warp_sum(acc[n]);
        if (lane == 0) held_store(out + (size_t)n * OC + j, v * s + b, epi);
    }
}

// W as fp32 (OC, IC), scales applied.
__global__ void held_convert_kernel(float *dst, const void *w, int dt, const float *scale, int OC, int IC)
{
    const size_t total = (size_t)OC * IC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = held_w(w, dt, i) * (scale ? scale[i / (size_t)IC] : 1.0f);
}

__global__ void held_epilogue_kernel(float *out, const float *y, const float *bias, size_t N, int OC, int epi)
{
    const size_t total = N * (size_t)OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        held_store(out + i, y[i] + (bias ? bias[i % (size_t)OC] : 0.0f), epi);
}

void cuda_matmul_held_forward(float *out, const float *inp, const void *weight, int wdtype, const float *scale,
                              const float *bias, size_t N, int IC, int OC, int epilogue, float *tmp)
{
    (void)tmp;      // device scratch of the backend's own instead
    if (N == 0) return;
    CUDA_REQUIRE(N <= (size_t)INT_MAX && IC > 0 && OC > 0 && wdtype >= WDT_F32 && wdtype <= WDT_I8,
                 "held matmul needs 0 < IC, OC, N <= 2^31-1 and a weight dtype of kernels.h");
    if (N <= HELD_SMALL_M) {
        held_small_kernel<<<(unsigned)((OC + HELD_WARPS - 1) / HELD_WARPS), 32 * HELD_WARPS, 0, cuda_stream_t()>>>(
            out, inp, weight, wdtype, scale, bias, (int)N, IC, OC, epilogue);
        CUDA_LAUNCH_CHECK("held_small_kernel");
        return;
    }
    const float *w = (const float *)weight;
    if (wdtype != WDT_F32) {
        float *c = (float *)cuda_scratch(SCRATCH_HELD, (size_t)OC * IC * sizeof(float));
        held_convert_kernel<<<cuda_blocks((size_t)OC * IC, INF_THREADS), INF_THREADS, 0, cuda_stream_t()>>>(
            c, weight, wdtype, scale, OC, IC);
        CUDA_LAUNCH_CHECK("held_convert_kernel");
        w = c;
    }
    float *y = (float *)cuda_scratch(SCRATCH_HELD_OUT, N * (size_t)OC * sizeof(float));
    // y (N, OC) row-major = y^T (OC x N) column-major = W (OC x IC) inp^T (IC x N); W row-major
    // (OC, IC) is column-major (IC x OC) with ld IC, so it is transposed.
    const float alpha = 1.0f, beta = 0.0f;
    CUBLAS_CHECK(cuda_blas.sgemm(cuda_cublas(), CUBLAS_OP_T, CUBLAS_OP_N, OC, (int)N, IC, &alpha, w, IC, inp, IC, &beta,
                                 y, OC));
    held_epilogue_kernel<<<cuda_blocks(N * (size_t)OC, INF_THREADS), INF_THREADS, 0, cuda_stream_t()>>>(
        out, y, bias, N, OC, epilogue);
    CUDA_LAUNCH_CHECK("held_epilogue_kernel");
}
