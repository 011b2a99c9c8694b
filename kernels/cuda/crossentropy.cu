// crossentropy.cu: fused softmax + cross-entropy over a padded vocabulary.
// One block per row; probabilities are never stored.
#include "cuda_common.cuh"

#define CE_THREADS 512

// lse = max + log sum_{v<V} exp(x_v - max) (float per thread, float64 across
// threads in a fixed tree); losses = lse - x[target], 0 when target < 0, NaN
// when target >= V (a bad target shows in the loss instead of reading past the row).
__global__ void crossentropy_forward_kernel(float *losses, float *lse, const float *logits,
                                            const int32_t *targets, int V, int Vp)
{
    __shared__ float shf[32];
    __shared__ double shd[32];
    const size_t n = blockIdx.x;
    const float *x = logits + n * Vp;
    float mx = -INFINITY;
    for (int v = threadIdx.x; v < V; v += blockDim.x) mx = fmaxf(mx, x[v]);
    mx = block_max(mx, shf);
    float s = 0.0f;
    for (int v = threadIdx.x; v < V; v += blockDim.x) s += expf(x[v] - mx);
    double sum = block_sum_d((double)s, shd);
    if (threadIdx.x == 0) {
        float l = mx + (float)log(sum);
        int32_t t = targets[n];
        lse[n] = l;
        losses[n] = t < 0 ? 0.0f : (t < V ? l - x[t] : NAN);
    }
}

// dlogits[v] = dloss (exp(x_v - lse) - [v == target]) for v < V, 0 for v >= V;
// the whole row 0 when target < 0. Each element is read and then written by the
// same thread, so dlogits may alias logits.
__global__ void crossentropy_backward_kernel(float *dlogits, const float *logits, const float *lse,
                                             const int32_t *targets, float dloss, int V, int Vp)
{
    const size_t n = blockIdx.x;
    const float *x = logits + n * Vp;
    float *d = dlogits + n * Vp;
    const int32_t t = targets[n];
    if (t < 0) {
        for (int v = threadIdx.x; v < Vp; v += blockDim.x) d[v] = 0.0f;
        return;
    }
    const float l = lse[n];
    for (int v = threadIdx.x; v < Vp; v += blockDim.x) {
        float g = 0.0f;
        if (v < V) g = dloss * (expf(x[v] - l) - (v == t ? 1.0f : 0.0f));
        d[v] = g;
    }
}

void cuda_crossentropy_forward(float *losses,           // (N)
                               float *lse,              // (N)
                               const float *logits,     // (N, Vp)
                               const int32_t *targets,  // (N)
                               size_t N, int V, int Vp)
{
    if (N == 0) return;
    CUDA_REQUIRE(V > 0 && V <= Vp && N < ((size_t)1 << 31), "crossentropy needs 0 < V <= Vp");
    crossentropy_forward_kernel<<<(unsigned)N, CE_THREADS, 0, cuda_stream_t()>>>(
        losses, lse, logits, targets, V, Vp);
    CUDA_LAUNCH_CHECK("crossentropy_forward_kernel");
}

void cuda_crossentropy_backward(float *dlogits,         // (N, Vp) overwritten, may alias logits
                                const float *logits,    // (N, Vp)
                                const float *lse,       // (N)
                                const int32_t *targets, // (N)
                                float dloss, size_t N, int V, int Vp)
{
    if (N == 0) return;
    CUDA_REQUIRE(V > 0 && V <= Vp && N < ((size_t)1 << 31), "crossentropy needs 0 < V <= Vp");
    crossentropy_backward_kernel<<<(unsigned)N, CE_THREADS, 0, cuda_stream_t()>>>(
        dlogits, logits, lse, targets, dloss, V, Vp);
    CUDA_LAUNCH_CHECK("crossentropy_backward_kernel");
}
