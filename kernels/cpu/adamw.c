// adamw.c: AdamW optimizer step.
#include <math.h>
#include "kernels.h"
#include "fastmath.h"

// m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
// p -= lr (mhat / (sqrt(vhat) + eps) + wd p), mhat = m / (1 - b1^t), vhat = v / (1 - b2^t).
void adamw_update(float *param,             // (n)
                  const float *grad,        // (n)
                  float *m,                 // (n) first moment
                  float *v,                 // (n) second moment
                  size_t n, float lr, float beta1, float beta2, float eps, float wd, int t)
{
    float c1 = (float)(1.0 / (1.0 - pow(beta1, t)));
    float c2 = (float)(1.0 / (1.0 - pow(beta2, t)));
    float a1 = 1.0f - beta1, a2 = 1.0f - beta2;
    #pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float mi = fmaf(beta1, m[i], a1 * g);
        float vi = fmaf(beta2, v[i], a2 * g * g);
        m[i] = mi;
        v[i] = vi;
        float p = param[i];
        param[i] = p - lr * ((mi * c1) / (sqrt_fast(vi * c2) + eps) + wd * p);
    }
}
