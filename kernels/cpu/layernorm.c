// layernorm.c: layer normalization over the last dimension, forward and backward.
#include <math.h>
#include "kernels.h"

#define LN_EPS 1e-5f
#define LN_CB 64    // columns per block in the weight/bias gradient reduction

// out = (x - mean) * rstd * weight + bias, per row of C; rstd = 1/sqrt(var + eps).
void layernorm_forward(float *out,          // (N, C)
                       float *mean,         // (N)
                       float *rstd,         // (N)
                       const float *inp,    // (N, C)
                       const float *weight, // (C)
                       const float *bias,   // (C)
                       size_t N, int C)
{
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * C;
        float *o = out + n * C;
        float s = 0.0f;
        #pragma omp simd reduction(+:s)
        for (int c = 0; c < C; c++) s += x[c];
        float m = s / C;
        float v = 0.0f;
        #pragma omp simd reduction(+:v)
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v = fmaf(d, d, v);
        }
        float r = 1.0f / sqrtf(v / C + LN_EPS);
        for (int c = 0; c < C; c++) o[c] = fmaf((x[c] - m) * r, weight[c], bias[c]);
        mean[n] = m;
        rstd[n] = r;
    }
}

// With xh = (x - mean) rstd and g = dout * weight:
//   dinp += rstd (g - mean_c(g) - xh mean_c(g xh));  dweight += sum_n dout xh;  dbias += sum_n dout.
void layernorm_backward(float *dinp,        // (N, C) accumulates (residual stream)
                        float *dweight,     // (C) accumulates
                        float *dbias,       // (C) accumulates
                        const float *dout,  // (N, C)
                        const float *inp,   // (N, C)
                        const float *weight,// (C)
                        const float *mean,  // (N)
                        const float *rstd,  // (N)
                        size_t N, int C)
{
    // dinp: rows are independent.
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *g = dout + n * C;
        const float *x = inp + n * C;
        float *di = dinp + n * C;
        float m = mean[n], r = rstd[n];
        float a = 0.0f, b = 0.0f;
        #pragma omp simd reduction(+:a, b)
        for (int c = 0; c < C; c++) {
            float dn = weight[c] * g[c];
            a += dn;
            b = fmaf(dn, (x[c] - m) * r, b);
        }
        a /= C;
        b /= C;
        for (int c = 0; c < C; c++) {
            float xh = (x[c] - m) * r;
            di[c] += (weight[c] * g[c] - a - xh * b) * r;
        }
    }
    // dweight, dbias: each thread owns a column block and walks the rows in order.
    int nblk = (C + LN_CB - 1) / LN_CB;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * LN_CB;
        int nc = c0 + LN_CB < C ? LN_CB : C - c0;
        float aw[LN_CB] = {0}, ab[LN_CB] = {0};
        for (size_t n = 0; n < N; n++) {
            const float *g = dout + n * C + c0;
            const float *x = inp + n * C + c0;
            float m = mean[n], r = rstd[n];
            for (int c = 0; c < nc; c++) {
                aw[c] = fmaf(g[c], (x[c] - m) * r, aw[c]);
                ab[c] += g[c];
            }
        }
        for (int c = 0; c < nc; c++) {
            dweight[c0 + c] += aw[c];
            dbias[c0 + c] += ab[c];
        }
    }
}
