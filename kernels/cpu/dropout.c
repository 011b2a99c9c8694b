// dropout.c: inverted dropout with a counter-based mask (kernels.h Dropout).
//
// Nothing is stored: the mask of element (b, t, c) is dropout_bits of its
// global row and position, drawn again in the backward. Each element is
// written by one thread, so the result does not depend on the thread count.
#include "kernels.h"

// y = x * keep * scale over (B, T, C); shared by forward and backward.
static void dropout_apply(float *y,             // (B, T, C)
                          const float *x,       // (B, T, C), may be y
                          const Dropout *d, int B, int T, int C)
{
    const size_t N = (size_t)B * T;
    const uint32_t thr = d->threshold;
    const float scale = d->scale;
    #pragma omp parallel for schedule(static)
    for (size_t n = 0; n < N; n++) {
        const size_t b = n / (size_t)T, t = n % (size_t)T;
        const uint64_t rk = dropout_row(d->key, d->row0 + b);
        const uint64_t e0 = ((uint64_t)d->pos0 + t) * (uint64_t)C;
        float *yr = y + n * (size_t)C;
        const float *xr = x + n * (size_t)C;
        for (int c = 0; c < C; c++) yr[c] = dropout_bits(rk, e0 + (uint64_t)c) >= thr ? xr[c] * scale : 0.0f;
    }
}

// out = inp * keep / (1 - p)
void dropout_forward(float *out,            // (B, T, C)
                     const float *inp,      // (B, T, C)
                     const Dropout *d, int B, int T, int C)
{
    dropout_apply(out, inp, d, B, T, C);
}

// dinp = dout * keep / (1 - p): the forward's mask, drawn again.
void dropout_backward(float *dinp,          // (B, T, C) overwritten
                      const float *dout,    // (B, T, C)
                      const Dropout *d, int B, int T, int C)
{
    dropout_apply(dinp, dout, d, B, T, C);
}
