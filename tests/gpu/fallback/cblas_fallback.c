// cblas_fallback.c: plain-loop sgemm (OpenMP over rows, float64 accumulation)
// standing in for OpenBLAS in the gpu test's cpu reference; see cblas.h here.
#include "cblas.h"

// C = alpha op(A) op(B) + beta C; row-major, or column-major as the transposed problem.
void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
                 int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc)
{
    if (order == CblasColMajor) {   // C^T = op(B)^T op(A)^T in row-major terms
        cblas_sgemm(CblasRowMajor, tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc);
        return;
    }
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                float a = ta == CblasNoTrans ? A[(long)i * lda + k] : A[(long)k * lda + i];
                float b = tb == CblasNoTrans ? B[(long)k * ldb + j] : B[(long)j * ldb + k];
                s += (double)a * b;
            }
            float *c = C + (long)i * ldc + j;
            *c = (float)(alpha * s + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
}

void openblas_set_num_threads(int n) { (void)n; }
