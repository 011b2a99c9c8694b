// paged_attention.c: decode/prefill attention through a block table, and the
// store of each row's key and value into its cache slot.
#include "fastmath.h"
#include "kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef float vf __attribute__((vector_size(32)));
#define VL 8

static inline vf load_f(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline void store_f(float *p, vf v) { memcpy(p, &v, sizeof v); }

static inline float dot(const float *a, const float *b, int n) {
    vf acc = (vf){0};
    int i = 0;
    for (; i + VL <= n; i += VL) acc += load_f(a + i) * load_f(b + i);
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// acc = acc * c + p * v over n floats.
static inline void scale_add(float *acc, float c, float p, const float *v, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL) store_f(acc + i, load_f(acc + i) * c + p * load_f(v + i));
    for (; i < n; i++) acc[i] = acc[i] * c + p * v[i];
}

// out_i = sum_j softmax_j(q_i . k_j * scale) v_j over j <= pos_i, one (row,
// head) per task. Keys are taken a block at a time: the block's scores as dot
// products, one max and the exponentials for the whole block (exp_fast
// vectorises), then the values added with one rescale of the running sum per block.
void paged_attention_forward(float *out, const float *q, int q_stride, const float *kv,
                             size_t block_stride, size_t v_offset, const int32_t *tables, int max_blocks,
                             const int32_t *pos, int N, int C, int NH, int bs) {
    if (NH <= 0 || C % NH != 0 || C / NH > KERNELS_PAGED_HSMAX || bs <= 0) abort();   // the deck refuses these
    const int HS = C / NH;
    const float scale = 1.0f / sqrtf((float)HS);
#pragma omp parallel
    {
        float *sc = malloc(sizeof(float) * (size_t)bs);
        if (!sc) abort();
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int i = 0; i < N; i++) {
            for (int h = 0; h < NH; h++) {
                const float *qi = q + (size_t)i * q_stride + h * HS;
                const int32_t *table = tables + (size_t)i * max_blocks;
                float *o = out + (size_t)i * C + h * HS;
                float acc[KERNELS_PAGED_HSMAX];
                float m = -INFINITY, l = 0.0f;
                for (int d = 0; d < HS; d++) acc[d] = 0.0f;
                const int len = pos[i] + 1;
                for (int j0 = 0; j0 < len; j0 += bs) {
                    const int n = len - j0 < bs ? len - j0 : bs;
                    const float *kb = kv + (size_t)table[j0 / bs] * block_stride + h * HS;
                    float bm = -INFINITY;
                    for (int s = 0; s < n; s++) {
                        sc[s] = dot(qi, kb + (size_t)s * C, HS) * scale;
                        bm = sc[s] > bm ? sc[s] : bm;
                    }
                    const float mnew = bm > m ? bm : m;
                    const float c = exp_fast(m - mnew);   // m = -inf at the first block: c = 0
                    float bl = 0.0f;
                    for (int s = 0; s < n; s++) {
                        sc[s] = exp_fast(sc[s] - mnew);
                        bl += sc[s];
                    }
                    l = l * c + bl;
                    const float *vb = kb + v_offset;
                    scale_add(acc, c, sc[0], vb, HS);
                    for (int s = 1; s < n; s++) scale_add(acc, 1.0f, sc[s], vb + (size_t)s * C, HS);
                    m = mnew;
                }
                const float inv = 1.0f / l;
                for (int d = 0; d < HS; d++) o[d] = acc[d] * inv;
            }
        }
        free(sc);
    }
}

void kv_store(float *kv, size_t block_stride, size_t v_offset, const float *qkv, const int32_t *tables,
              int max_blocks, const int32_t *pos, int N, int C, int bs) {
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        int32_t blk = tables[(size_t)i * max_blocks + pos[i] / bs];
        float *k = kv + (size_t)blk * block_stride + (size_t)(pos[i] % bs) * C;
        memcpy(k, qkv + (size_t)i * 3 * C + C, (size_t)C * sizeof(float));
        memcpy(k + v_offset, qkv + (size_t)i * 3 * C + 2 * C, (size_t)C * sizeof(float));
    }
}
