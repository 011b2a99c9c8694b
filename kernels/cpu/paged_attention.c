// paged_attention.c: decode/prefill attention through a block table.
#include "kernels.h"

#include <math.h>
#include <stdlib.h>

// out_i = sum_j softmax_j(q_i . k_j * scale) v_j over j <= pos_i, one
// (row, head) per task, keys visited in order with an online softmax.
void paged_attention_forward(float *out, const float *q, int q_stride, const float *kv,
                             size_t block_stride, size_t v_offset, const int32_t *tables, int max_blocks,
                             const int32_t *pos, int N, int C, int NH, int bs) {
    if (NH <= 0 || C % NH != 0 || C / NH > KERNELS_PAGED_HSMAX) abort();   // the deck refuses these
    const int HS = C / NH;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel for schedule(dynamic, 1) collapse(2)
    for (int i = 0; i < N; i++) {
        for (int h = 0; h < NH; h++) {
            const float *qi = q + (size_t)i * q_stride + h * HS;
            const int32_t *table = tables + (size_t)i * max_blocks;
            float *o = out + (size_t)i * C + h * HS;
            float acc[KERNELS_PAGED_HSMAX];
            float m = -INFINITY, l = 0.0f;
            for (int d = 0; d < HS; d++) acc[d] = 0.0f;
            for (int j = 0; j <= pos[i]; j++) {
                const float *k = kv + (size_t)table[j / bs] * block_stride + (size_t)(j % bs) * C + h * HS;
                const float *v = k + v_offset;
                float s = 0.0f;
                for (int d = 0; d < HS; d++) s += qi[d] * k[d];
                s *= scale;
                if (s > m) {
                    float c = expf(m - s);   // rescale what was summed under the old max
                    l *= c;
                    for (int d = 0; d < HS; d++) acc[d] *= c;
                    m = s;
                }
                float p = expf(s - m);
                l += p;
                for (int d = 0; d < HS; d++) acc[d] += p * v[d];
            }
            for (int d = 0; d < HS; d++) o[d] = acc[d] / l;
        }
    }
}
