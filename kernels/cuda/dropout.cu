// dropout.cu: inverted dropout with a counter-based mask (kernels.h Dropout),
// the cpu kernel's math: nothing is stored, the backward draws the mask again.
#include "cuda_common.cuh"
#include "kernels.h"

#define DROP_THREADS 256

// y[n, c] = x[n, c] * scale where dropout_bits(row of n, (pos0 + t) C + c) >= threshold, else 0.
__global__ void dropout_kernel(float *y, const float *x, Dropout d, int T, int C, size_t total)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / (size_t)C, c = i % (size_t)C;
        const size_t b = n / (size_t)T, t = n % (size_t)T;
        const uint64_t rk = dropout_row(d.key, d.row0 + b);
        const uint64_t e = ((uint64_t)d.pos0 + t) * (uint64_t)C + c;
        y[i] = dropout_bits(rk, e) >= d.threshold ? x[i] * d.scale : 0.0f;
    }
}

static void dropout_launch(float *y, const float *x, const Dropout *d, int B, int T, int C)
{
    const size_t total = (size_t)B * T * C;
    if (total == 0) return;
    dropout_kernel<<<cuda_blocks(total, DROP_THREADS), DROP_THREADS, 0, cuda_stream_t()>>>(y, x, *d, T, C, total);
    CUDA_LAUNCH_CHECK("dropout_kernel");
}

// out may be inp (each element is read before it is written, by one thread).
void cuda_dropout_forward(float *out,           // (B, T, C)
                          const float *inp,     // (B, T, C)
                          const Dropout *d, int B, int T, int C)
{
    dropout_launch(out, inp, d, B, T, C);
}

// The forward's mask, drawn again; dinp may be dout.
void cuda_dropout_backward(float *dinp,         // (B, T, C) overwritten
                           const float *dout,   // (B, T, C)
                           const Dropout *d, int B, int T, int C)
{
    dropout_launch(dinp, dout, d, B, T, C);
}
