// peak.c: times cblas_sgemm to find what "100% MFU" means on this machine.
#include "peak.h"
#include "sysutil.h"
#include "log.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fill(float *x, size_t n, unsigned mul, unsigned mod) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((i * mul) % mod) * 0.01f;
}

// One timed sgemm of side n; returns seconds.
static double time_sgemm(int n, const float *a, const float *b, float *c) {
    double t0 = wall_seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    return wall_seconds() - t0;
}

double peak_sgemm_gflops(int n, int reps) {
    size_t nn = (size_t)n * n;
    float *a = xmalloc(nn * sizeof(float), "sgemm peak A");
    float *b = xmalloc(nn * sizeof(float), "sgemm peak B");
    float *c = xmalloc(nn * sizeof(float), "sgemm peak C");
    fill(a, nn, 7, 13);
    fill(b, nn, 5, 11);
    double best = 1e30;
    for (int r = 0; r <= reps; r++) {
        double dt = time_sgemm(n, a, b, c);
        if (r > 0 && dt < best) best = dt;   // r = 0 warms caches and threads
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * (double)n * n * n / best * 1e-9;
}

void peak_sgemm_measure(PeakInfo *p, double budget_s) {
    static const int sides[] = {512, 1024, 2048};
    enum { NS = 3, MIN_REPS = 2, MAX_REPS = 5 };
    memset(p, 0, sizeof *p);
    size_t nn = (size_t)sides[NS - 1] * sides[NS - 1];
    float *a = xmalloc(nn * sizeof(float), "sgemm peak A");
    float *b = xmalloc(nn * sizeof(float), "sgemm peak B");
    float *c = xmalloc(nn * sizeof(float), "sgemm peak C");
    fill(a, nn, 7, 13);
    fill(b, nn, 5, 11);
    p->reps = MAX_REPS;
    for (int s = 0; s < NS; s++) {
        int n = sides[s], r = 0;
        double flop = 2.0 * (double)n * n * n, best = 1e30, t0 = wall_seconds();
        time_sgemm(n, a, b, c);     // warm-up: threads, caches, pages
        for (r = 0; r < MAX_REPS; r++) {
            if (r >= MIN_REPS && wall_seconds() - t0 > budget_s / NS) break;
            double dt = time_sgemm(n, a, b, c);
            if (dt < best) best = dt;
        }
        p->sizes[s] = n;
        p->size_gflops[s] = flop / best * 1e-9;
        if (p->size_gflops[s] > p->gflops) p->gflops = p->size_gflops[s];
        if (r < p->reps) p->reps = r;
    }
    p->nsizes = NS;
    snprintf(p->method, sizeof p->method,
             "cblas_sgemm fp32, square sides 512/1024/2048, a warm-up then %d-%d timed repetitions each, "
             "best rate; all ranks at once", p->reps, MAX_REPS);
    free(a);
    free(b);
    free(c);
}
