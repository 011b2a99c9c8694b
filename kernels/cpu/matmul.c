// matmul.c: dense layer out = inp @ W + bias on OpenBLAS sgemm; bias work on OpenMP.
//
// Determinism: OpenBLAS's own threading changes the bits of the result with
// the thread count (it partitions C differently, and elements on partition
// edges go through other micro-kernels). So every product here is cut into a
// fixed grid of tiles of C that depends on the shape only, and each tile is
// one single-threaded sgemm called from our OpenMP loop (the OpenMP build of
// OpenBLAS runs single-threaded inside a parallel region). The full K is
// summed inside each call, so a tile's bits do not depend on who computes it.
#include <cblas.h>
#include "kernels.h"

#define MM_CB 64        // columns per block in the bias gradient reduction
#define MM_TILE_M 512   // rows of C: an even number of blocks of at most MM_TILE_M / 2
#define MM_TILE_N 1024  // columns of C: blocks of at most MM_TILE_N

// The tile hook (kernels.h): the one piece of state here, thread-local so that
// only the thread that set it (the rank's MPI thread) ever calls it.
static _Thread_local struct { void (*fn)(void *); void *ctx; } tile_hook;

void kernels_set_tile_hook(void (*fn)(void *ctx), void *ctx)
{
    tile_hook.fn = fn;
    tile_hook.ctx = ctx;
}

// ceil(n / parts) rounded up to a multiple of 16 (the sgemm micro-kernel widths).
static int tile_size(int n, int parts)
{
    int t = (n + parts - 1) / parts;
    return (t + 15) & ~15;
}

// C = op(A) op(B) + beta C, row-major, on a shape-fixed grid of tiles of C.
static void gemm_tiled(int ta, int tb, int M, int N, int K,
                       const float *A, int lda,     // (M, K), or (K, M) when ta
                       const float *B, int ldb,     // (K, N), or (N, K) when tb
                       float beta, float *C, int ldc) // (M, N)
{
    if (M <= 0 || N <= 0) return;
    const int mb = tile_size(M, 2 * ((M + MM_TILE_M - 1) / MM_TILE_M));
    const int nb = tile_size(N, (N + MM_TILE_N - 1) / MM_TILE_N);
    const int mt = (M + mb - 1) / mb, nt = (N + nb - 1) / nb;
    #pragma omp parallel for schedule(dynamic, 1)
    for (int u = 0; u < mt * nt; u++) {
        const int i0 = (u / nt) * mb, j0 = (u % nt) * nb;
        const int m = M - i0 < mb ? M - i0 : mb, n = N - j0 < nb ? N - j0 : nb;
        const float *a = ta ? A + i0 : A + (size_t)i0 * lda;
        const float *b = tb ? B + (size_t)j0 * ldb : B + j0;
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, K, 1.0f, a, lda, b, ldb, beta, C + (size_t)i0 * ldc + j0, ldc);
        if (tile_hook.fn) tile_hook.fn(tile_hook.ctx);
    }
}

// out = inp @ W + bias; W is (IC, OC) if trans_w == 0, (OC, IC) if trans_w == 1.
void matmul_forward(float *out,             // (N, OC)
                    const float *inp,       // (N, IC)
                    const float *weight,    // (IC, OC) or (OC, IC)
                    const float *bias,      // (OC) or NULL
                    size_t N, int IC, int OC, int trans_w)
{
    float beta = 0.0f;
    if (bias) {
        #pragma omp parallel for schedule(static)
        for (size_t n = 0; n < N; n++) {
            float *o = out + n * OC;
            for (int c = 0; c < OC; c++) o[c] = bias[c];
        }
        beta = 1.0f;
    }
    gemm_tiled(0, trans_w, (int)N, OC, IC, inp, IC, weight, trans_w ? IC : OC, beta, out, OC);
}

// dinp = dout @ W^T; dweight += inp^T @ dout (or its transpose when trans_w);
// dbias += sum_n dout[n,:].
void matmul_backward(float *dinp,           // (N, IC) overwritten
                     float *dweight,        // like weight, accumulates
                     float *dbias,          // (OC) accumulates, or NULL
                     const float *dout,     // (N, OC)
                     const float *inp,      // (N, IC)
                     const float *weight,   // (IC, OC) or (OC, IC)
                     size_t N, int IC, int OC, int trans_w)
{
    if (trans_w)            // W (OC, IC): dinp = dout W
        gemm_tiled(0, 0, (int)N, IC, OC, dout, OC, weight, IC, 0.0f, dinp, IC);
    else                    // W (IC, OC): dinp = dout W^T
        gemm_tiled(0, 1, (int)N, IC, OC, dout, OC, weight, OC, 0.0f, dinp, IC);
    if (dweight) matmul_dweight_rows(dweight, dout, inp, N, IC, OC, trans_w, 0, trans_w ? OC : IC, 1.0f);
    if (!dbias) return;
    // Each thread owns a column block and walks the rows in order (thread-count independent).
    int nblk = (OC + MM_CB - 1) / MM_CB;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * MM_CB;
        int nc = c0 + MM_CB < OC ? MM_CB : OC - c0;
        float acc[MM_CB] = {0};
        for (size_t n = 0; n < N; n++) {
            const float *d = dout + n * OC + c0;
            for (int c = 0; c < nc; c++) acc[c] += d[c];
        }
        for (int c = 0; c < nc; c++) dbias[c0 + c] += acc[c];
    }
}

void matmul_dweight_rows(float *dweight, const float *dout, const float *inp,
                         size_t N, int IC, int OC, int trans_w, int r0, int r1, float beta)
{
    if (r1 <= r0) return;
    if (trans_w)            // dW (OC, IC) rows r0..r1 = dout[:, r0..r1]^T inp
        gemm_tiled(1, 0, r1 - r0, IC, (int)N, dout + r0, OC, inp, IC, beta, dweight + (size_t)r0 * IC, IC);
    else                    // dW (IC, OC) rows r0..r1 = inp[:, r0..r1]^T dout
        gemm_tiled(1, 0, r1 - r0, OC, (int)N, inp + r0, IC, dout, OC, beta, dweight + (size_t)r0 * OC, OC);
}
