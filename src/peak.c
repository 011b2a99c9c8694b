// peak.c: times cblas_sgemm to find what "100% MFU" means on this machine.
#include "peak.h"
#include "sysutil.h"
#include "log.h"

#include <cblas.h>
#include <stdlib.h>
#include <time.h>

double peak_sgemm_gflops(int n, int reps) {
    size_t nn = (size_t)n * n;
    float *a = xmalloc(nn * sizeof(float), "sgemm peak A");
    float *b = xmalloc(nn * sizeof(float), "sgemm peak B");
    float *c = xmalloc(nn * sizeof(float), "sgemm peak C");
    for (size_t i = 0; i < nn; i++) {
        a[i] = (float)((i * 7) % 13) * 0.01f;
        b[i] = (float)((i * 5) % 11) * 0.01f;
    }
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double t0 = wall_seconds();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = wall_seconds() - t0;
        if (r > 0 && dt < best) best = dt;   // r = 0 warms caches and threads
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * (double)n * n * n / best * 1e-9;
}
