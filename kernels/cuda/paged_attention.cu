// paged_attention.cu: single-query attention over a paged KV cache (inference).
// One warp per (row, head): lane l holds head dimensions l, l+32, ...; keys are
// visited in order with an online softmax, as the cpu backend does.
#include "cuda_common.cuh"
#include "kernels.h"

#define PA_WARPS 8
#define PA_HSMAX KERNELS_CUDA_PAGED_HSMAX

// out_i = sum_j softmax_j(scale q_i . k_j) v_j over j <= pos_i; key j of row i is
// in block tables[i, j / bs], slot j % bs: K at kv + block*block_stride + slot*C,
// V v_offset floats further on.
__global__ void paged_attention_kernel(float *out, const float *q, int q_stride, const float *kv,
                                       size_t block_stride, size_t v_offset,
                                       const int32_t *tables, int max_blocks, const int32_t *pos,
                                       int N, int C, int NH, int bs)
{
    const int lane = threadIdx.x & 31;
    const size_t w = (size_t)blockIdx.x * PA_WARPS + (threadIdx.x >> 5);
    if (w >= (size_t)N * NH) return;
    const int i = (int)(w / NH), h = (int)(w % NH);
    const int HS = C / NH;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *qi = q + (size_t)i * q_stride + (size_t)h * HS;
    const int32_t *table = tables + (size_t)i * max_blocks;
    float qr[PA_HSMAX / 32], acc[PA_HSMAX / 32];
#pragma unroll
    for (int k = 0; k < PA_HSMAX / 32; k++) {
        const int d = lane + 32 * k;
        qr[k] = d < HS ? qi[d] : 0.0f;
        acc[k] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int last = pos[i];
    for (int j = 0; j <= last; j++) {
        const float *kr = kv + (size_t)table[j / bs] * block_stride + (size_t)(j % bs) * C +
                          (size_t)h * HS;
        const float *vr = kr + v_offset;
        float s = 0.0f;
#pragma unroll
        for (int k = 0; k < PA_HSMAX / 32; k++) {
            const int d = lane + 32 * k;
            if (d < HS) s = fmaf(qr[k], kr[d], s);
        }
        s = warp_sum(s) * scale;            // the same value in every lane
        if (s > m) {
            const float c = expf(m - s);    // rescale what was summed under the old max
            l *= c;
#pragma unroll
            for (int k = 0; k < PA_HSMAX / 32; k++) acc[k] *= c;
            m = s;
        }
        const float p = expf(s - m);
        l += p;
#pragma unroll
        for (int k = 0; k < PA_HSMAX / 32; k++) {
            const int d = lane + 32 * k;
            if (d < HS) acc[k] = fmaf(p, vr[d], acc[k]);
        }
    }
    float *o = out + (size_t)i * C + (size_t)h * HS;
#pragma unroll
    for (int k = 0; k < PA_HSMAX / 32; k++) {
        const int d = lane + 32 * k;
        if (d < HS) o[d] = acc[k] / l;
    }
}

void cuda_paged_attention_forward(float *out,                  // (N, C)
                                  const float *q, int q_stride,// (N, q_stride)
                                  const float *kv, size_t block_stride, size_t v_offset,
                                  const int32_t *tables, int max_blocks,   // (N, max_blocks)
                                  const int32_t *pos,          // (N)
                                  int N, int C, int NH, int bs)
{
    if (N <= 0) return;
    CUDA_REQUIRE(NH > 0 && C % NH == 0 && C / NH <= PA_HSMAX && bs > 0,
                 "paged attention needs C divisible by NH, HS = C/NH <= 256 and bs > 0");
    const size_t warps = (size_t)N * NH;
    paged_attention_kernel<<<(unsigned)((warps + PA_WARPS - 1) / PA_WARPS), 32 * PA_WARPS, 0,
                             cuda_stream_t()>>>(out, q, q_stride, kv, block_stride, v_offset,
                                                tables, max_blocks, pos, N, C, NH, bs);
    CUDA_LAUNCH_CHECK("paged_attention_kernel");
}
