// gelu.c: tanh-approximated GELU, forward and backward.
#include "kernels.h"
#include "fastmath.h"

#define GELU_K 0.7978845608028654f  // sqrt(2/pi)
#define GELU_A 0.044715f
#define GELU_ZMAX 80.0f             // clamp of -2u so that e^(-2u) stays finite

// out = 0.5 x (1 + tanh(u)) = x / (1 + e^(-2u)), u = sqrt(2/pi) (x + 0.044715 x^3).
// The sigmoid form has no cancellation for negative x.
void gelu_forward(float *out,               // (n)
                  const float *inp,         // (n)
                  size_t n)
{
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float z = -2.0f * GELU_K * fmaf(GELU_A * x, x * x, x);
        z = z > GELU_ZMAX ? GELU_ZMAX : z;
        out[i] = x / (1.0f + exp_fast(z));
    }
}

// dinp = dout * (s + 2 x s (1 - s) u'), s = sigmoid(2u), 1 - s = e^(-2u) s,
// u' = sqrt(2/pi) (1 + 3 * 0.044715 x^2).
void gelu_backward(float *dinp,             // (n) overwritten
                   const float *inp,        // (n)
                   const float *dout,       // (n)
                   size_t n)
{
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        float x2 = x * x;
        float z = -2.0f * GELU_K * fmaf(GELU_A * x, x2, x);
        z = z > GELU_ZMAX ? GELU_ZMAX : z;
        float e = exp_fast(z);
        float s = 1.0f / (1.0f + e);
        float du = GELU_K * fmaf(3.0f * GELU_A, x2, 1.0f);
        float ds = 2.0f * x * s * (e * s) * du;
        dinp[i] = dout[i] * (s + ds);
    }
}
