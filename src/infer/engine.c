// engine.c: tensor-parallel forward through the paged KV cache.
#include "engine.h"
#include "kernels.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>

size_t engine_kv_bytes_per_block(const Model *m, int tp, int bs) {
    return (size_t)m->s.L * 2 * (size_t)bs * (size_t)(m->s.C / tp) * sizeof(float);
}

// Copies columns [c0, c0+n) of a (rows, cols) matrix into dst (rows, n).
static float *take_cols(float *dst, const float *src, int rows, int cols, int c0, int n) {
    for (int r = 0; r < rows; r++) memcpy(dst + (size_t)r * n, src + (size_t)r * cols + c0, (size_t)n * sizeof(float));
    return dst + (size_t)rows * n;
}

static const float *T(const Model *m, const float *full, int l, int j) {
    return full + m->tensors[2 + P_PER_LAYER * l + j].offset;
}

void engine_create(Engine *e, const Model *m, const float *full, Comm *comm, int nblocks, int bs, int Nmax, int Smax) {
    memset(e, 0, sizeof *e);
    e->s = m->s;
    e->comm = comm;
    e->tp = comm->size;
    e->tp_rank = comm->rank;
    const int C = m->s.C, H = m->s.H, L = m->s.L, tp = e->tp, r = e->tp_rank;
    SYS_CHECK(m->s.NH % tp == 0 && H % tp == 0, "tp = %d must divide the heads (%d) and the MLP width (%d)", tp, m->s.NH, H);
    e->Cl = C / tp;
    e->NHl = m->s.NH / tp;
    e->Hl = H / tp;
    const int Cl = e->Cl, Hl = e->Hl;
    size_t per_layer = 4 * (size_t)C + (size_t)C * 3 * Cl + 3 * (size_t)Cl + (size_t)Cl * C + C
                       + (size_t)C * Hl + Hl + (size_t)Hl * C + C;
    size_t total = (size_t)m->s.Vp * C + (size_t)m->s.maxT * C + 2 * (size_t)C + per_layer * L;
    e->weights = xmalloc(total * sizeof(float), "inference weights");
    e->layers = xcalloc(sizeof(EngineLayer) * (size_t)L, "inference layers");
    float *w = e->weights;
#define COPY(dst, src, n) do { memcpy(w, (src), (size_t)(n) * sizeof(float)); (dst) = w; w += (n); } while (0)
    COPY(e->wte, full + m->tensors[0].offset, m->tensors[0].numel);
    COPY(e->wpe, full + m->tensors[1].offset, m->tensors[1].numel);
    int lnf = 2 + P_PER_LAYER * L;
    COPY(e->lnfw, full + m->tensors[lnf].offset, C);
    COPY(e->lnfb, full + m->tensors[lnf + 1].offset, C);
    for (int l = 0; l < L; l++) {
        EngineLayer *ly = &e->layers[l];
        COPY(ly->ln1w, T(m, full, l, P_LN1W), C);
        COPY(ly->ln1b, T(m, full, l, P_LN1B), C);
        COPY(ly->ln2w, T(m, full, l, P_LN2W), C);
        COPY(ly->ln2b, T(m, full, l, P_LN2B), C);
        // c_attn: this rank's heads of q, of k and of v, side by side.
        float *q = w;
        for (int part = 0; part < 3; part++) {
            float *tmp = xmalloc((size_t)C * Cl * sizeof(float), "slice");
            take_cols(tmp, T(m, full, l, P_QKVW), C, 3 * C, part * C + r * Cl, Cl);
            for (int row = 0; row < C; row++)
                memcpy(q + (size_t)row * 3 * Cl + part * Cl, tmp + (size_t)row * Cl, (size_t)Cl * sizeof(float));
            free(tmp);
        }
        ly->qkvw = q;
        w += (size_t)C * 3 * Cl;
        float *qb = w;
        for (int part = 0; part < 3; part++)
            memcpy(qb + part * Cl, T(m, full, l, P_QKVB) + part * C + r * Cl, (size_t)Cl * sizeof(float));
        ly->qkvb = qb;
        w += 3 * Cl;
        COPY(ly->attpw, T(m, full, l, P_ATTPW) + (size_t)r * Cl * C, (size_t)Cl * C);   // rows of c_proj
        COPY(ly->attpb, T(m, full, l, P_ATTPB), C);
        ly->fcw = w;
        w = take_cols(w, T(m, full, l, P_FCW), C, H, r * Hl, Hl);
        COPY(ly->fcb, T(m, full, l, P_FCB) + r * Hl, Hl);
        COPY(ly->fcpw, T(m, full, l, P_FCPW) + (size_t)r * Hl * C, (size_t)Hl * C);
        COPY(ly->fcpb, T(m, full, l, P_FCPB), C);
    }
#undef COPY
    e->nblocks = nblocks;
    e->bs = bs;
    e->v_offset = (size_t)bs * Cl;
    e->layer_stride = 2 * e->v_offset;
    e->block_stride = e->layer_stride * (size_t)L;
    e->kv = xcalloc((size_t)nblocks * e->block_stride * sizeof(float), "KV cache");
    e->Nmax = Nmax;
    e->Smax = Smax;
    size_t N = (size_t)Nmax;
    e->x = xmalloc(N * C * sizeof(float), "pass x");
    e->ln = xmalloc(N * C * sizeof(float), "pass ln");
    e->mean = xmalloc(N * sizeof(float), "pass mean");
    e->rstd = xmalloc(N * sizeof(float), "pass rstd");
    e->qkv = xmalloc(N * 3 * Cl * sizeof(float), "pass qkv");
    e->att = xmalloc(N * Cl * sizeof(float), "pass att");
    e->proj = xmalloc(N * C * sizeof(float), "pass proj");
    e->fc = xmalloc(N * Hl * sizeof(float), "pass fc");
    e->fcg = xmalloc(N * Hl * sizeof(float), "pass fc gelu");
    e->lnf = xmalloc((size_t)Smax * C * sizeof(float), "pass lnf");
}

void engine_free(Engine *e) {
    free(e->weights);
    free(e->layers);
    free(e->kv);
    free(e->x); free(e->ln); free(e->mean); free(e->rstd); free(e->qkv); free(e->att);
    free(e->proj); free(e->fc); free(e->fcg); free(e->lnf);
    memset(e, 0, sizeof *e);
}

// proj holds this rank's partial product: sum over ranks, add the bias once, add to x.
static void reduce_into_residual(Engine *e, int N, const float *bias) {
    const int C = e->s.C;
    if (e->tp > 1) comm_allreduce_sum(e->comm, e->proj, (size_t)N * C, "tp");
    for (int i = 0; i < N; i++) {
        float *x = e->x + (size_t)i * C;
        const float *p = e->proj + (size_t)i * C;
        for (int c = 0; c < C; c++) x[c] += p[c] + bias[c];
    }
}

void engine_forward(Engine *e, int N, const int32_t *tok, const int32_t *pos, const int32_t *tables,
                    int max_blocks, int nsample, const int32_t *sample_rows, float *logits) {
    SYS_CHECK(N >= 0 && nsample >= 0 && N <= e->Nmax && nsample <= e->Smax, "pass of %d rows (%d sampled) exceeds %d (%d)", N, nsample, e->Nmax, e->Smax);
    const int C = e->s.C, Cl = e->Cl, Hl = e->Hl, bs = e->bs;
    // Rank 0 composed the pass; every rank checks it before indexing with it.
    for (int i = 0; i < N; i++) {
        SYS_CHECK(tok[i] >= 0 && tok[i] < e->s.V && pos[i] >= 0 && pos[i] < e->s.maxT && pos[i] / bs < max_blocks,
                  "pass row %d: token %d or position %d out of range (V %d, positions %d)", i, tok[i], pos[i], e->s.V, e->s.maxT);
        int32_t blk = tables[(size_t)i * max_blocks + pos[i] / bs];
        SYS_CHECK(blk >= 0 && blk < e->nblocks, "pass row %d: KV block %d outside the pool of %d", i, blk, e->nblocks);
    }
    for (int k = 0; k < nsample; k++)
        SYS_CHECK(sample_rows[k] >= 0 && sample_rows[k] < N, "sampled row %d of a pass of %d rows", sample_rows[k], N);
    for (int i = 0; i < N; i++) {
        const float *a = e->wte + (size_t)tok[i] * C, *b = e->wpe + (size_t)pos[i] * C;
        float *x = e->x + (size_t)i * C;
        for (int c = 0; c < C; c++) x[c] = a[c] + b[c];
    }
    for (int l = 0; l < e->s.L; l++) {
        const EngineLayer *ly = &e->layers[l];
        layernorm_forward(e->ln, e->mean, e->rstd, e->x, ly->ln1w, ly->ln1b, (size_t)N, C);
        matmul_forward(e->qkv, e->ln, ly->qkvw, ly->qkvb, (size_t)N, C, 3 * Cl, 0);
        // Every row's key and value go into its cache slot before any row attends,
        // so a prompt chunk sees its own earlier tokens.
        float *kvl = e->kv + (size_t)l * e->layer_stride;
        for (int i = 0; i < N; i++) {
            int32_t blk = tables[(size_t)i * max_blocks + pos[i] / bs];
            float *k = kvl + (size_t)blk * e->block_stride + (size_t)(pos[i] % bs) * Cl;
            memcpy(k, e->qkv + (size_t)i * 3 * Cl + Cl, (size_t)Cl * sizeof(float));
            memcpy(k + e->v_offset, e->qkv + (size_t)i * 3 * Cl + 2 * Cl, (size_t)Cl * sizeof(float));
        }
        paged_attention_forward(e->att, e->qkv, 3 * Cl, kvl, e->block_stride, e->v_offset, tables, max_blocks,
                                pos, N, Cl, e->NHl, bs);
        matmul_forward(e->proj, e->att, ly->attpw, NULL, (size_t)N, Cl, C, 0);
        reduce_into_residual(e, N, ly->attpb);
        layernorm_forward(e->ln, e->mean, e->rstd, e->x, ly->ln2w, ly->ln2b, (size_t)N, C);
        matmul_forward(e->fc, e->ln, ly->fcw, ly->fcb, (size_t)N, C, Hl, 0);
        gelu_forward(e->fcg, e->fc, (size_t)N * Hl);
        matmul_forward(e->proj, e->fcg, ly->fcpw, NULL, (size_t)N, Hl, C, 0);
        reduce_into_residual(e, N, ly->fcpb);
    }
    for (int k = 0; k < nsample; k++)
        memcpy(e->ln + (size_t)k * C, e->x + (size_t)sample_rows[k] * C, (size_t)C * sizeof(float));
    layernorm_forward(e->lnf, e->mean, e->rstd, e->ln, e->lnfw, e->lnfb, (size_t)nsample, C);
    if (nsample) matmul_forward(logits, e->lnf, e->wte, NULL, (size_t)nsample, C, e->s.Vp, 1);
}
