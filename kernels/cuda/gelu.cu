// gelu.cu: tanh-approximated GELU, forward and backward (the cpu backend's
// sigmoid form, which has no cancellation for negative x).
#include "cuda_common.cuh"

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)
#define GELU_A 0.044715f
#define GELU_ZMAX 80.0f             // clamp of -2u so that e^(-2u) stays finite
#define GELU_THREADS 256

// out = 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
__global__ void gelu_forward_kernel(float *out, const float *inp, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float x = inp[i];
        float z = fminf(-2.0f * GELU_K * fmaf(GELU_A * x, x * x, x), GELU_ZMAX);
        out[i] = x / (1.0f + expf(z));
    }
}

// dinp = dout * (s + 2 x s (1 - s) u'), s = sigmoid(2u), 1 - s = e^(-2u) s,
// u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
__global__ void gelu_backward_kernel(float *dinp, const float *inp, const float *dout, size_t n)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float x = inp[i];
        float x2 = x * x;
        float z = fminf(-2.0f * GELU_K * fmaf(GELU_A * x, x2, x), GELU_ZMAX);
        float e = expf(z);
        float s = 1.0f / (1.0f + e);
        float du = GELU_K * fmaf(3.0f * GELU_A, x2, 1.0f);
        float ds = 2.0f * x * s * (e * s) * du;
        dinp[i] = dout[i] * (s + ds);
    }
}

void cuda_gelu_forward(float *out,          // (n)
                       const float *inp,    // (n)
                       size_t n)
{
    if (n == 0) return;
    gelu_forward_kernel<<<cuda_blocks(n, GELU_THREADS), GELU_THREADS, 0, cuda_stream_t()>>>(
        out, inp, n);
    CUDA_LAUNCH_CHECK("gelu_forward_kernel");
}

// dinp may alias dout (each element is read before it is written, by one thread).
void cuda_gelu_backward(float *dinp,        // (n) overwritten
                        const float *inp,   // (n)
                        const float *dout,  // (n)
                        size_t n)
{
    if (n == 0) return;
    gelu_backward_kernel<<<cuda_blocks(n, GELU_THREADS), GELU_THREADS, 0, cuda_stream_t()>>>(
        dinp, inp, dout, n);
    CUDA_LAUNCH_CHECK("gelu_backward_kernel");
}
