// moe.c: the row moves of a Mixture-of-Experts layer (kernels.h), driven by a
// token -> slot table: pos[n*K + k] is the row of choice k of token n in the
// dispatch buffer, -1 where the choice was dropped.
#include "kernels.h"

void moe_dispatch(float *dst, const float *src, const int32_t *pos, const float *w, size_t N, int K, int C) {
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            int32_t p = pos[n * (size_t)K + (size_t)k];
            if (p < 0) continue;
            float s = w ? w[n * (size_t)K + (size_t)k] : 1.0f;
            const float *x = src + n * (size_t)C;
            float *d = dst + (size_t)p * (size_t)C;
            for (int c = 0; c < C; c++) d[c] = s * x[c];
        }
    }
}

void moe_combine(float *out, const float *y, const int32_t *pos, const float *w, size_t N, int K, int C,
                 int accumulate) {
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        float *o = out + n * (size_t)C;
        if (!accumulate)
            for (int c = 0; c < C; c++) o[c] = 0.0f;
        for (int k = 0; k < K; k++) {     // choices in order: the same sum on every layout
            int32_t p = pos[n * (size_t)K + (size_t)k];
            if (p < 0) continue;
            float s = w ? w[n * (size_t)K + (size_t)k] : 1.0f;
            const float *r = y + (size_t)p * (size_t)C;
            for (int c = 0; c < C; c++) o[c] += s * r[c];
        }
    }
}

void moe_rowdot(float *dots, const float *a, const float *y, const int32_t *pos, size_t N, int K, int C) {
#pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        for (int k = 0; k < K; k++) {
            size_t i = n * (size_t)K + (size_t)k;
            int32_t p = pos ? pos[i] : (int32_t)n;
            if (p < 0) {
                dots[i] = 0.0f;
                continue;
            }
            const float *x = a + n * (size_t)C, *r = y + (size_t)p * (size_t)C;
            double s = 0.0;
            for (int c = 0; c < C; c++) s += (double)x[c] * (double)r[c];
            dots[i] = (float)s;
        }
    }
}
