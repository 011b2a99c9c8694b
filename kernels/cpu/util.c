// util.c: elementwise helpers (residual, scale), sum of squares, thread control.
#include <cblas.h>
#include <omp.h>
#include "kernels.h"

#define SUMSQ_MIN_CHUNK ((size_t)1 << 14)   // floats per partial sum, at least
#define SUMSQ_MAX_PARTS 4096                // partials (on the stack) per call, at most

// out = a + b
void residual_forward(float *out,           // (n)
                      const float *a,       // (n)
                      const float *b,       // (n)
                      size_t n)
{
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

// x *= s
void scale_inplace(float *x,                // (n)
                   float s, size_t n)
{
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

// The chunk of sumsq over n floats: a multiple of SUMSQ_MIN_CHUNK giving at
// most SUMSQ_MAX_PARTS chunks.
size_t sumsq_chunk_size(size_t n)
{
    size_t chunk = (n + SUMSQ_MAX_PARTS - 1) / SUMSQ_MAX_PARTS;
    chunk = (chunk + SUMSQ_MIN_CHUNK - 1) / SUMSQ_MIN_CHUNK * SUMSQ_MIN_CHUNK;
    return chunk ? chunk : SUMSQ_MIN_CHUNK;
}

// One chunk's partial: sum_i x_i^2 in float64, one thread. Not inlined, so that
// sumsq and a caller that sums a vector streamed piece by piece (gradients on
// NVMe, src/offload.c) run the same machine code.
__attribute__((noinline)) double sumsq_chunk(const float *x,    // (n)
                                             size_t n)
{
    double s = 0.0;
    #pragma omp simd reduction(+:s)
    for (size_t i = 0; i < n; i++) s += (double)x[i] * (double)x[i];
    return s;
}

// sum_i x_i^2 in float64: chunks of sumsq_chunk_size(n) (depends on n only),
// their partials added in index order, so the bits do not depend on the thread
// count. One parallel region per call.
double sumsq(const float *x,                // (n)
             size_t n)
{
    if (n == 0) return 0.0;
    const size_t chunk = sumsq_chunk_size(n);
    const int nc = (int)((n + chunk - 1) / chunk);
    double part[SUMSQ_MAX_PARTS];
    #pragma omp parallel for schedule(static) if (nc > 1)
    for (int c = 0; c < nc; c++) {
        const size_t lo = (size_t)c * chunk;
        const size_t hi = lo + chunk < n ? lo + chunk : n;
        part[c] = sumsq_chunk(x + lo, hi - lo);
    }
    double total = 0.0;
    for (int c = 0; c < nc; c++) total += part[c];
    return total;
}

// Threads of the OpenMP regions and of OpenBLAS; n < 1 means 1. The kernels
// call sgemm from inside their own OpenMP loops (matmul.c), where the OpenMP
// build of OpenBLAS runs single-threaded; a direct cblas call elsewhere (the
// sgemm peak in src/peak.c) gets n threads. Order matters: that build's
// openblas_set_num_threads calls omp_set_num_threads itself.
void kernels_set_threads(int n)
{
    if (n < 1) n = 1;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

// Threads the next OpenMP region of a kernel will use.
int kernels_get_threads(void)
{
    return omp_get_max_threads();
}
