// crossentropy.c: fused softmax + cross-entropy over a padded vocabulary.
#include <assert.h>
#include <math.h>
#include "kernels.h"
#include "fastmath.h"

#define CE_CHUNK 1024   // logits per chunk: read from memory once, then reused from L1

// losses[i] = lse_i - logits[i, target_i], lse_i = log sum_{v<V} exp(logits[i,v]);
// rows with target < 0 get loss 0 (lse is still computed).
// One pass over memory: per chunk a max m_c and s_c = sum exp(x - m_c) in float
// (the chunk is still in L1 for the second loop), merged into the row's running
// (M, S) in float64 in chunk order.
void crossentropy_forward(float *losses,        // (N)
                          float *lse,           // (N)
                          const float *logits,  // (N, Vp)
                          const int32_t *targets, // (N)
                          size_t N, int V, int Vp)
{
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *x = logits + n * Vp;
        double M = -INFINITY, S = 0.0;
        for (int v0 = 0; v0 < V; v0 += CE_CHUNK) {
            const int v1 = v0 + CE_CHUNK < V ? v0 + CE_CHUNK : V;
            float mc = -INFINITY;
            #pragma omp simd reduction(max:mc)
            for (int v = v0; v < v1; v++) mc = x[v] > mc ? x[v] : mc;
            float sc = 0.0f;
            #pragma omp simd reduction(+:sc)
            for (int v = v0; v < v1; v++) sc += exp_fast(x[v] - mc);
            if (mc > M) {
                S = S * exp(M - mc) + sc;   // exp(-inf) = 0 on the first chunk
                M = mc;
            } else {
                S += sc * exp(mc - M);
            }
        }
        float l = (float)(M + log(S));
        int32_t t = targets[n];
        assert(t < V);
        lse[n] = l;
        losses[n] = t < 0 ? 0.0f : l - x[t];
    }
}

// dlogits[i,v] = dloss (exp(logits[i,v] - lse_i) - [v == target_i]) for v < V, 0 for v >= V;
// whole row 0 when target_i < 0. dlogits may be logits itself.
void crossentropy_backward(float *dlogits,      // (N, Vp) overwritten, may alias logits
                           const float *logits, // (N, Vp)
                           const float *lse,    // (N)
                           const int32_t *targets, // (N)
                           float dloss,
                           size_t N, int V, int Vp)
{
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const float *x = logits + n * Vp;
        float *d = dlogits + n * Vp;
        int32_t t = targets[n];
        assert(t < V);
        if (t < 0) {
            for (int v = 0; v < Vp; v++) d[v] = 0.0f;
            continue;
        }
        float l = lse[n];
        float xt = x[t];
        // Each iteration reads x[v] before writing d[v]: safe (and vectorizable) when d == x.
        #pragma omp simd
        for (int v = 0; v < V; v++) d[v] = dloss * exp_fast(x[v] - l);
        d[t] = dloss * (exp_fast(xt - l) - 1.0f);
        for (int v = V; v < Vp; v++) d[v] = 0.0f;
    }
}
