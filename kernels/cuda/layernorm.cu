// layernorm.cu: layer normalization over the last dimension, forward and backward.
//
// One warp per row: lane l takes columns l, l+32, ... and the warp adds the
// lane sums with a butterfly, so every row's statistics have a fixed order.
// The weight/bias gradients sum over rows: per-chunk partials (COLSUM_ROWS rows
// per chunk, fixed order inside), then the chunks in order. No atomics.
#include "cuda_common.cuh"

#define LN_EPS 1e-5f
#define LN_WARPS 8          // rows per block in the row kernels
#define LN_ROWS 256         // rows per partial in the weight/bias gradient

// out = (x - mean) * rstd * weight + bias, per row of C; rstd = 1/sqrt(var + eps).
__global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp,
                                         const float *weight, const float *bias, size_t N, int C)
{
    const int lane = threadIdx.x & 31;
    size_t n = (size_t)blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const float *x = inp + n * C;
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += x[c];
    const float m = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float d = x[c] - m;
        v = fmaf(d, d, v);
    }
    const float r = 1.0f / sqrtf(warp_sum(v) / C + LN_EPS);
    float *o = out + n * C;
    for (int c = lane; c < C; c += 32) o[c] = fmaf((x[c] - m) * r, weight[c], bias[c]);
    if (lane == 0) {
        mean[n] = m;
        rstd[n] = r;
    }
}

// dinp += rstd (g - mean_c(g) - xh mean_c(g xh)), g = dout * weight, xh = (x - mean) rstd.
__global__ void layernorm_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                      const float *weight, const float *mean, const float *rstd,
                                      size_t N, int C)
{
    const int lane = threadIdx.x & 31;
    size_t n = (size_t)blockIdx.x * LN_WARPS + (threadIdx.x >> 5);
    if (n >= N) return;
    const float *g = dout + n * C, *x = inp + n * C;
    float *di = dinp + n * C;
    const float m = mean[n], r = rstd[n];
    float a = 0.0f, b = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float dn = weight[c] * g[c];
        a += dn;
        b = fmaf(dn, (x[c] - m) * r, b);
    }
    a = warp_sum(a) / C;
    b = warp_sum(b) / C;
    for (int c = lane; c < C; c += 32) {
        float xh = (x[c] - m) * r;
        di[c] += (weight[c] * g[c] - a - xh * b) * r;
    }
}

// partial[0][r, c] = sum dout xh, partial[1][r, c] = sum dout over the rows of
// chunk r: thread (x, y) takes rows y, y+8, ... in order, then the 8 in y order.
__global__ void layernorm_dwb_partial_kernel(float *pw, float *pb, const float *dout,
                                             const float *inp, const float *mean,
                                             const float *rstd, size_t N, int C, size_t R)
{
    __shared__ float sw[8][33], sb[8][33];
    const int c = blockIdx.x * 32 + threadIdx.x;
    for (size_t r = blockIdx.y; r < R; r += gridDim.y) {
        size_t n0 = r * LN_ROWS, n1 = n0 + LN_ROWS < N ? n0 + LN_ROWS : N;
        float aw = 0.0f, ab = 0.0f;
        if (c < C)
            for (size_t n = n0 + threadIdx.y; n < n1; n += 8) {
                float g = dout[n * C + c];
                aw = fmaf(g, (inp[n * C + c] - mean[n]) * rstd[n], aw);
                ab += g;
            }
        sw[threadIdx.y][threadIdx.x] = aw;
        sb[threadIdx.y][threadIdx.x] = ab;
        __syncthreads();
        if (threadIdx.y == 0 && c < C) {
            float tw = 0.0f, tb = 0.0f;
            for (int y = 0; y < 8; y++) {
                tw += sw[y][threadIdx.x];
                tb += sb[y][threadIdx.x];
            }
            pw[r * C + c] = tw;
            pb[r * C + c] = tb;
        }
        __syncthreads();
    }
}

// dweight[c] += sum_r pw[r, c]; dbias[c] += sum_r pb[r, c]; r in order.
__global__ void layernorm_dwb_final_kernel(float *dweight, float *dbias, const float *pw,
                                           const float *pb, int C, size_t R)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float tw = 0.0f, tb = 0.0f;
    for (size_t r = 0; r < R; r++) {
        tw += pw[r * C + c];
        tb += pb[r * C + c];
    }
    dweight[c] += tw;
    dbias[c] += tb;
}

void cuda_layernorm_forward(float *out,             // (N, C)
                            float *mean,            // (N)
                            float *rstd,            // (N)
                            const float *inp,       // (N, C)
                            const float *weight,    // (C)
                            const float *bias,      // (C)
                            size_t N, int C)
{
    if (N == 0 || C <= 0) return;
    unsigned blocks = (unsigned)((N + LN_WARPS - 1) / LN_WARPS);
    layernorm_forward_kernel<<<blocks, 32 * LN_WARPS, 0, cuda_stream_t()>>>(out, mean, rstd, inp,
                                                                            weight, bias, N, C);
    CUDA_LAUNCH_CHECK("layernorm_forward_kernel");
}

void cuda_layernorm_backward(float *dinp,           // (N, C) accumulates (residual stream)
                             float *dweight,        // (C) accumulates
                             float *dbias,          // (C) accumulates
                             const float *dout,     // (N, C)
                             const float *inp,      // (N, C)
                             const float *weight,   // (C)
                             const float *mean,     // (N)
                             const float *rstd,     // (N)
                             size_t N, int C)
{
    if (N == 0 || C <= 0) return;
    cudaStream_t st = cuda_stream_t();
    unsigned blocks = (unsigned)((N + LN_WARPS - 1) / LN_WARPS);
    layernorm_dinp_kernel<<<blocks, 32 * LN_WARPS, 0, st>>>(dinp, dout, inp, weight, mean, rstd,
                                                            N, C);
    CUDA_LAUNCH_CHECK("layernorm_dinp_kernel");
    size_t R = (N + LN_ROWS - 1) / LN_ROWS;
    float *pw = (float *)cuda_scratch(SCRATCH_REDUCE, 2 * R * (size_t)C * sizeof(float));
    float *pb = pw + R * (size_t)C;
    dim3 grid((C + 31) / 32, (unsigned)(R < 65535 ? R : 65535));
    layernorm_dwb_partial_kernel<<<grid, dim3(32, 8), 0, st>>>(pw, pb, dout, inp, mean, rstd, N,
                                                              C, R);
    CUDA_LAUNCH_CHECK("layernorm_dwb_partial_kernel");
    layernorm_dwb_final_kernel<<<(C + 255) / 256, 256, 0, st>>>(dweight, dbias, pw, pb, C, R);
    CUDA_LAUNCH_CHECK("layernorm_dwb_final_kernel");
}
