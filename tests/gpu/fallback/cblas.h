// cblas.h: a stand-in for OpenBLAS's cblas.h, only for building the cpu
// reference of tests/gpu/test_kernels_gpu where libopenblas is not installed
// (e.g. a GPU machine with only the CUDA toolkit). It declares just what
// kernels/cpu uses; cblas_fallback.c implements it with plain loops.
#ifndef PARTITA_CBLAS_FALLBACK_H
#define PARTITA_CBLAS_FALLBACK_H

enum CBLAS_ORDER { CblasRowMajor = 101, CblasColMajor = 102 };
enum CBLAS_TRANSPOSE { CblasNoTrans = 111, CblasTrans = 112 };

void cblas_sgemm(enum CBLAS_ORDER order, enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb,
                 int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);
void openblas_set_num_threads(int n);

#endif
