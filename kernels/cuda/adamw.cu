// adamw.cu: AdamW optimizer step on fp32 parameters and moments.
#include <cmath>

#include "cuda_common.cuh"

#define ADAMW_THREADS 256

// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr (m c1 / (sqrt(v c2) + eps) + wd p), c1 = 1/(1 - b1^t), c2 = 1/(1 - b2^t).
__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             float lr, float beta1, float beta2, float eps, float wd, float c1,
                             float c2)
{
    const float a1 = 1.0f - beta1, a2 = 1.0f - beta2;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float g = grad[i];
        float mi = fmaf(beta1, m[i], a1 * g);
        float vi = fmaf(beta2, v[i], a2 * g * g);
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        param[i] = p - lr * ((mi * c1) / (sqrtf(vi * c2) + eps) + wd * p);
    }
}

void cuda_adamw_update(float *param,        // (n)
                       const float *grad,   // (n)
                       float *m,            // (n) first moment
                       float *v,            // (n) second moment
                       size_t n, float lr, float beta1, float beta2, float eps, float wd, int t)
{
    if (n == 0) return;
    CUDA_REQUIRE(t >= 1, "adamw step count t starts at 1");
    float c1 = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    float c2 = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    adamw_kernel<<<cuda_blocks(n, ADAMW_THREADS), ADAMW_THREADS, 0, cuda_stream_t()>>>(
        param, grad, m, v, n, lr, beta1, beta2, eps, wd, c1, c2);
    CUDA_LAUNCH_CHECK("adamw_kernel");
}
