// matmul.cu: dense layer out = inp @ W + bias on cuBLAS (fp32 sgemm, or bf16
// inputs with fp32 accumulation in bf16 mode); bias and its gradient as kernels.
//
// cuBLAS is column-major. A row-major (R x K) matrix is the column-major (K x R)
// matrix with leading dimension K, i.e. its transpose, so the row-major product
// Y = X W is computed as the column-major product Y^T = W^T X^T: swap the
// operands, keep the transposition flags of the row-major formula.
#include <climits>
#include <cstdio>
#include <cuda_bf16.h>

#include "cuda_common.cuh"

#define CVT_THREADS 256

// dst = bf16(src), round to nearest even.
__global__ void to_bf16_kernel(__nv_bfloat16 *dst, const float *src, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

// out[n, c] = bias[c]
__global__ void bias_fill_kernel(float *out, const float *bias, size_t N, int OC)
{
    size_t total = N * (size_t)OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % (size_t)OC];
}

// A bf16 copy of x (n floats) in the given scratch slot.
static const __nv_bfloat16 *bf16_copy(ScratchSlot slot, const float *x, size_t n)
{
    __nv_bfloat16 *d = (__nv_bfloat16 *)cuda_scratch(slot, n * sizeof(__nv_bfloat16));
    to_bf16_kernel<<<cuda_blocks(n, CVT_THREADS), CVT_THREADS, 0, cuda_stream_t()>>>(d, x, n);
    CUDA_LAUNCH_CHECK("to_bf16_kernel");
    return d;
}

// Column-major C (m x n) = alpha op(A) op(B) + beta C, A and B given in fp32.
// In bf16 mode A and B are rounded to bf16 in scratch first (slots A, B).
static void gemm(cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                 const float *A, int lda, size_t a_elems, const float *B, int ldb, size_t b_elems,
                 float beta, float *C, int ldc)
{
    const float alpha = 1.0f;
    cublasHandle_t h = cuda_cublas();
    if (!cuda_precision_bf16()) {
        CUBLAS_CHECK(cuda_blas.sgemm(h, ta, tb, m, n, k, &alpha, A, lda, B, ldb, &beta, C, ldc));
        return;
    }
    const __nv_bfloat16 *a16 = bf16_copy(SCRATCH_GEMM_A, A, a_elems);
    const __nv_bfloat16 *b16 = bf16_copy(SCRATCH_GEMM_B, B, b_elems);
    CUBLAS_CHECK(cuda_blas.gemm_ex(h, ta, tb, m, n, k, &alpha, a16, CUDA_R_16BF, lda, b16, CUDA_R_16BF,
                                   ldb, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                   CUBLAS_GEMM_DEFAULT));
}

static void check_dims(size_t N, int IC, int OC)
{
    CUDA_REQUIRE(N <= (size_t)INT_MAX && IC > 0 && OC > 0,
                 "matmul needs 0 < IC, OC and N = B*T <= 2^31-1 (cuBLAS takes int dimensions)");
}

// out = inp @ W + bias; W is (IC, OC) if trans_w == 0, (OC, IC) if trans_w == 1.
void cuda_matmul_forward(float *out,            // (N, OC)
                         const float *inp,      // (N, IC)
                         const float *weight,   // (IC, OC) or (OC, IC)
                         const float *bias,     // (OC) or NULL
                         size_t N, int IC, int OC, int trans_w)
{
    if (N == 0) return;
    check_dims(N, IC, OC);
    float beta = 0.0f;
    if (bias) {
        size_t total = N * (size_t)OC;
        bias_fill_kernel<<<cuda_blocks(total, 256), 256, 0, cuda_stream_t()>>>(out, bias, N, OC);
        CUDA_LAUNCH_CHECK("bias_fill_kernel");
        beta = 1.0f;
    }
    // out^T (OC x N) = W^T (OC x IC) inp^T (IC x N), column-major.
    // trans_w == 0: W row-major (IC, OC) is column-major W^T with ld OC: no transpose.
    // trans_w == 1: W row-major (OC, IC) is column-major W with ld IC: transpose.
    gemm(trans_w ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, OC, (int)N, IC,
         weight, trans_w ? IC : OC, (size_t)IC * OC, inp, IC, N * (size_t)IC, beta, out, OC);
}

// dinp = dout @ W^T (overwritten); dweight += inp^T @ dout (in W's layout);
// dbias += sum_n dout[n, :] (skipped when dbias is NULL).
void cuda_matmul_backward(float *dinp,          // (N, IC) overwritten
                          float *dweight,       // like weight, accumulates
                          float *dbias,         // (OC) accumulates, or NULL
                          const float *dout,    // (N, OC)
                          const float *inp,     // (N, IC)
                          const float *weight,  // (IC, OC) or (OC, IC)
                          size_t N, int IC, int OC, int trans_w)
{
    if (N == 0) return;
    check_dims(N, IC, OC);
    const size_t w_elems = (size_t)IC * OC, o_elems = N * (size_t)OC;
    if (trans_w) {
        // dinp = dout @ W, W (OC, IC): dinp^T (IC x N) = W^T (IC x OC) dout^T (OC x N);
        // W row-major (OC, IC) is column-major (IC x OC) with ld IC.
        gemm(CUBLAS_OP_N, CUBLAS_OP_N, IC, (int)N, OC, weight, IC, w_elems, dout, OC, o_elems,
             0.0f, dinp, IC);
    } else {
        // dinp = dout @ W^T, W (IC, OC): dinp^T (IC x N) = W (IC x OC) dout^T (OC x N);
        // W row-major (IC, OC) is column-major (OC x IC) with ld OC, transposed.
        gemm(CUBLAS_OP_T, CUBLAS_OP_N, IC, (int)N, OC, weight, OC, w_elems, dout, OC, o_elems,
             0.0f, dinp, IC);
    }
    if (dweight) cuda_matmul_dweight_rows(dweight, dout, inp, N, IC, OC, trans_w, 0, trans_w ? OC : IC, 1.0f);
    if (dbias) cuda_colsum_accumulate(dbias, dout, N, OC);
}

// Rows [r0, r1) of dweight (W's layout) = beta rows + their part of the product.
// Row-major rows of dW are column-major columns: a column range of dW^T, with the
// operand sliced the same way (its first element offset, its leading dimension kept).
void cuda_matmul_dweight_rows(float *dweight, const float *dout, const float *inp,
                              size_t N, int IC, int OC, int trans_w, int r0, int r1, float beta)
{
    if (N == 0 || r1 <= r0) return;
    check_dims(N, IC, OC);
    const size_t o_elems = N * (size_t)OC, i_elems = N * (size_t)IC;
    if (trans_w)    // dW (OC, IC) rows r0..r1: dW^T[:, r0..r1] (IC x m) = inp^T (IC x N) dout[:, r0..r1] (N x m)
        gemm(CUBLAS_OP_N, CUBLAS_OP_T, IC, r1 - r0, (int)N, inp, IC, i_elems, dout + r0, OC, o_elems - (size_t)r0,
             beta, dweight + (size_t)r0 * IC, IC);
    else            // dW (IC, OC) rows r0..r1: dW^T[:, r0..r1] (OC x m) = dout^T (OC x N) inp[:, r0..r1] (N x m)
        gemm(CUBLAS_OP_N, CUBLAS_OP_T, OC, r1 - r0, (int)N, dout, OC, o_elems, inp + r0, IC, i_elems - (size_t)r0,
             beta, dweight + (size_t)r0 * OC, OC);
}

// ---------------------------------------------------------------- peak

__global__ void fill_pattern_kernel(float *x, size_t n, unsigned int seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        unsigned int h = (unsigned int)i * 2654435761u ^ seed;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        x[i] = (float)(h & 0xffff) / 32768.0f - 1.0f;     // uniform in [-1, 1)
    }
}

// Best TFLOP/s of 10 timed n^3 GEMMs after 3 warm-ups, on random data, with
// temporary buffers (not from the arena).
double cuda_gemm_peak_tflops(int n, int bf16)
{
    CUDA_REQUIRE(n > 0, "cuda_gemm_peak_tflops needs n > 0");
    cudaStream_t st = cuda_stream_t();
    cublasHandle_t h = cuda_cublas();
    const size_t nn = (size_t)n * n;
    float *a, *b, *c;
    __nv_bfloat16 *a16 = NULL, *b16 = NULL;
    CUDA_CHECK(cudaMalloc(&a, nn * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&b, nn * sizeof(float)));
    CUDA_CHECK(cudaMalloc(&c, nn * sizeof(float)));
    fill_pattern_kernel<<<cuda_blocks(nn, 256), 256, 0, st>>>(a, nn, 1u);
    CUDA_LAUNCH_CHECK("fill_pattern_kernel");
    fill_pattern_kernel<<<cuda_blocks(nn, 256), 256, 0, st>>>(b, nn, 2u);
    CUDA_LAUNCH_CHECK("fill_pattern_kernel");
    if (bf16) {
        CUDA_CHECK(cudaMalloc(&a16, nn * sizeof(__nv_bfloat16)));
        CUDA_CHECK(cudaMalloc(&b16, nn * sizeof(__nv_bfloat16)));
        to_bf16_kernel<<<cuda_blocks(nn, CVT_THREADS), CVT_THREADS, 0, st>>>(a16, a, nn);
        CUDA_LAUNCH_CHECK("to_bf16_kernel");
        to_bf16_kernel<<<cuda_blocks(nn, CVT_THREADS), CVT_THREADS, 0, st>>>(b16, b, nn);
        CUDA_LAUNCH_CHECK("to_bf16_kernel");
    }
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const float alpha = 1.0f, beta = 0.0f;
    double best_ms = 1e30;
    for (int it = 0; it < 13; it++) {
        CUDA_CHECK(cudaEventRecord(e0, st));
        if (bf16)
            CUBLAS_CHECK(cuda_blas.gemm_ex(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a16,
                                           CUDA_R_16BF, n, b16, CUDA_R_16BF, n, &beta, c, CUDA_R_32F, n,
                                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        else
            CUBLAS_CHECK(cuda_blas.sgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, n, b, n,
                                         &beta, c, n));
        CUDA_CHECK(cudaEventRecord(e1, st));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (it >= 3 && ms < best_ms) best_ms = ms;
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    if (a16) CUDA_CHECK(cudaFree(a16));
    if (b16) CUDA_CHECK(cudaFree(b16));
    CUDA_CHECK(cudaFree(a));
    CUDA_CHECK(cudaFree(b));
    CUDA_CHECK(cudaFree(c));
    return 2.0 * (double)n * n * n / (best_ms * 1e-3) / 1e12;
}
