// encoder.c: token and position embeddings, forward and backward.
#include "kernels.h"

#define ENC_CB 64   // columns per block in the backward (one thread owns a block)

// out[b,t,:] = wte[tok[b,t],:] + wpe[t,:]
void encoder_forward(float *out,            // (B, T, C)
                     const int32_t *tok,    // (B, T)
                     const float *wte,      // (Vp, C)
                     const float *wpe,      // (maxT, C)
                     int B, int T, int C)
{
    size_t N = (size_t)B * T;
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        float *o = out + n * C;
        const float *we = wte + (size_t)tok[n] * C;
        const float *pe = wpe + (n % (size_t)T) * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

// dwte[tok[b,t],:] += dout[b,t,:]; dwpe[t,:] += sum_b dout[b,t,:].
// Parallel over column blocks, rows in order: repeated tokens never race and
// the summation order does not depend on the thread count.
void encoder_backward(float *dwte,          // (Vp, C) accumulates
                      float *dwpe,          // (maxT, C) accumulates
                      const float *dout,    // (B, T, C)
                      const int32_t *tok,   // (B, T)
                      int B, int T, int C)
{
    size_t N = (size_t)B * T;
    int nblk = (C + ENC_CB - 1) / ENC_CB;
    #pragma omp parallel for schedule(static)
    for (int blk = 0; blk < nblk; blk++) {
        int c0 = blk * ENC_CB;
        int c1 = c0 + ENC_CB < C ? c0 + ENC_CB : C;
        for (size_t n = 0; n < N; n++) {
            const float *d = dout + n * C;
            float *dw = dwte + (size_t)tok[n] * C;
            float *dp = dwpe + (n % (size_t)T) * C;
            for (int c = c0; c < c1; c++) {
                dw[c] += d[c];
                dp[c] += d[c];
            }
        }
    }
}

// out[i,:] = wte[tok[i],:] + wpe[pos[i],:]
void embed_rows(float *out, const int32_t *tok, const int32_t *pos, const float *wte, const float *wpe,
                int N, int C)
{
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float *o = out + (size_t)n * C;
        const float *we = wte + (size_t)tok[n] * C, *pe = wpe + (size_t)pos[n] * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}
