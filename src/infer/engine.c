// engine.c: the inference parameter store (tensor-parallel slices, weight
// dtypes) and the paged KV cache around model_forward_paged.
#include "engine.h"
#include "kernels.h"
#include "log.h"
#include "stream.h"
#include "weights.h"
#include "sysutil.h"
#include "topo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

size_t engine_kv_bytes_per_block(const Model *m, int tp, int bs) {
    return (size_t)m->s.L * 2 * (size_t)bs * (size_t)(m->s.C / tp) * sizeof(float);
}

uint16_t engine_bf16(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);   // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// ---------------------------------------------------------------------------
// Slicing: this rank's part of a whole tensor (model.h TP_*)

// Column of the whole (in, out) matrix or bias behind held output j.
static int src_col(const Model *m, int split, int j) {
    if (split == TP_COLS_QKV) return (j / m->Ct) * m->s.C + m->tp_rank * m->Ct + j % m->Ct;
    if (split == TP_COLS) return m->tp_rank * m->Ht + j;
    return j;
}

// Held matrix t as fp32 (out, in) rows into dst, from the whole (Rg, Cg) one.
static void slice_matrix(const Model *m, const ParamTensor *lt, const float *G, int Cg, float *dst) {
    const int OC = lt->shape[0], IC = lt->shape[1];
    const int row0 = lt->tp_split == TP_ROWS ? m->tp_rank * IC : 0;
    for (int j = 0; j < OC; j++) {
        const int c = src_col(m, lt->tp_split, j);
        for (int i = 0; i < IC; i++) dst[(size_t)j * IC + i] = G[(size_t)(row0 + i) * Cg + c];
    }
}

// A non-matrix tensor's held part into dst.
static void slice_vector(const Model *m, const ParamTensor *lt, const float *G, float *dst) {
    if (lt->tp_split == TP_RANK0 && m->tp_rank != 0) {
        memset(dst, 0, lt->numel * sizeof(float));
        return;
    }
    if (lt->tp_split == TP_COLS || lt->tp_split == TP_COLS_QKV) {
        for (size_t j = 0; j < lt->numel; j++) dst[j] = G[src_col(m, lt->tp_split, (int)j)];
        return;
    }
    memcpy(dst, G, lt->numel * sizeof(float));
}

// fp32 (rows, cols) into the engine's dtype, in backend memory; sets *scale for int8.
static void *hold(Engine *e, const float *w, int rows, int cols, float **scale) {
    const size_t n = (size_t)rows * (size_t)cols;
    size_t bytes = e->wdtype == WDT_F32 ? 4 * n : e->wdtype == WDT_BF16 ? 2 * n : n;
    size_t words = (bytes + 3) / 4;
    uint32_t *host = xcalloc(words * 4, "held weights");
    *scale = NULL;
    if (e->wdtype == WDT_F32) {
        memcpy(host, w, bytes);
    } else if (e->wdtype == WDT_BF16) {
        uint16_t *h = (uint16_t *)host;
        for (size_t i = 0; i < n; i++) h[i] = engine_bf16(w[i]);
    } else {
        int8_t *q = (int8_t *)host;
        float *s = xmalloc(sizeof(float) * (size_t)rows, "int8 scales");
        for (int r = 0; r < rows; r++) {
            const float *x = w + (size_t)r * cols;
            float mx = 0.0f;
            for (int i = 0; i < cols; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
            float sc = mx > 0 ? mx / 127.0f : 1.0f;
            for (int i = 0; i < cols; i++) q[(size_t)r * cols + i] = (int8_t)lrintf(x[i] / sc);
            s[r] = sc;
        }
        *scale = e->bk->alloc(sizeof(float) * (size_t)rows, "int8 scales");
        e->bk->from_host(*scale, s, (size_t)rows);
        free(s);
    }
    void *d = e->bk->alloc(words * 4, "held weights");
    e->bk->from_host(d, (const float *)host, words);
    free(host);
    e->held_bytes += bytes;
    return d;
}

// Streaming: a layer unit's matrices are acquired with it (units 1..L are the layers).
static const float *store_params(void *ctx, int u, int phase) {
    Engine *e = ctx;
    (void)phase;
    if (e->stream && u >= 1 && u <= e->m.s.L) stream_acquire(e->stream, u - 1);
    return e->flat + e->m.unit_begin[u];
}
static void store_release(void *ctx, int u, int phase) {
    Engine *e = ctx;
    (void)phase;
    if (e->stream && u >= 1 && u <= e->m.s.L) stream_release(e->stream, u - 1);
}
static HeldMatrix store_matrix(void *ctx, int t) {
    Engine *e = ctx;
    if (e->stream && t != 0) return stream_matrix(e->stream, t);
    if (t == 0 && e->wdtype == WDT_F32) return (HeldMatrix){e->flat, WDT_F32, NULL};   // the tied head is wte
    SYS_CHECK(t >= 0 && t < e->m.ntensors && e->mats[t], "tensor %d is not a held matrix", t);
    return (HeldMatrix){e->mats[t], e->wdtype, e->scales[t]};
}

// ep > 1: the tp and ep groups of this rank (engine.h: rank = replica tp ep + ep_rank tp + tp_rank).
static void split_groups(Engine *e, Comm *world, int tp, int ep) {
    const int r = world->rank, per = tp * ep;
    SYS_CHECK(world->size % per == 0, "%d ranks do not form replicas of tp x ep = %d x %d", world->size, tp, ep);
    MPI_Comm tc, ec;
    MPI_CHECK(MPI_Comm_split(world->comm, r / tp, r, &tc));
    MPI_CHECK(MPI_Comm_split(world->comm, (r / per) * tp + r % tp, r, &ec));
    comm_init(&e->tpc, tc, "tp", &world->opt);
    comm_init(&e->epc, ec, "ep", &world->opt);
    e->split = 1;
    e->ep_size = ep;
    e->ep_rank = e->epc.rank;
    e->replica = r / per;
    e->replicas = world->size / per;
}

// Whole tensor t: from the full parameters, or the stream's resident segment.
static const float *whole(const Engine *e, const Model *g, const float *full, int t) {
    return e->stream ? stream_resident(e->stream, t) : full + g->tensors[t].offset;
}

// engine_create_ep's work on a zeroed e (e->stream set when streaming).
static void create(Engine *e, const Model *g, const float *full, const ModelConfig *mc, const Backend *bk,
                   Comm *world, int tp, int ep, int wdtype, int nblocks, int bs, int Nmax, int Smax,
                   int max_blocks) {
    Comm *tpc = tp > 1 ? world : NULL, *epc = NULL;
    e->ep_size = 1;
    e->replicas = world && tp == 1 ? world->size : 1;
    e->replica = world && tp == 1 ? world->rank : 0;
    if (ep > 1) {
        split_groups(e, world, tp, ep);
        tpc = tp > 1 ? &e->tpc : NULL;
        epc = &e->epc;
    }
    if (g->moe.nmoe && !bk->moe_dispatch)
        FATAL_ALL("set [run] backend = cpu for MoE models", "the %s backend has no Mixture-of-Experts kernels: "
                  "MoE layers run on the cpu backend only", bk->name);
    if (ep > 1 && bk != backend_cpu())   // the ep all-reduce runs on host buffers (the job's comm path)
        FATAL_ALL("set [parallel] ep = 1 or [run] backend = cpu", "expert-parallel inference (ep = %d) runs on the "
                  "cpu backend only, not on %s", ep, bk->name);
    e->bk = bk;
    e->wdtype = wdtype;
    e->Nmax = Nmax;
    e->Smax = Smax;
    Model *m = &e->m;
    model_create_infer_moe(m, mc, Nmax, Smax, max_blocks, bk, tpc, &g->moe, epc);
    SYS_CHECK(m->ntensors == g->ntensors, "inference table of %d tensors, whole model %d", m->ntensors, g->ntensors);
    float *flat = xcalloc(m->nparams * sizeof(float) + 1, "held parameters");
    e->mats = xcalloc(sizeof(void *) * (size_t)m->ntensors, "held matrices");
    e->scales = xcalloc(sizeof(float *) * (size_t)m->ntensors, "held scales");
    size_t most = 0;
    for (int t = 0; t < m->ntensors; t++) most = m->tensors[t].numel > most ? m->tensors[t].numel : most;
    float *tmp = xmalloc(most * sizeof(float), "slice");
    for (int t = 0; t < m->ntensors; t++) {
        const ParamTensor *lt = &m->tensors[t], *gt = &g->tensors[t];
        if (!lt->held) continue;    // another ep rank's expert
        if (lt->apart && e->stream) continue;   // streamed
        if (lt->expert >= 0 && lt->ndim == 2) e->held_bytes += lt->numel * sizeof(float);
        if (lt->apart) {
            slice_matrix(m, lt, whole(e, g, full, t), gt->shape[1], tmp);
            e->mats[t] = hold(e, tmp, lt->shape[0], lt->shape[1], &e->scales[t]);
        } else {
            slice_vector(m, lt, whole(e, g, full, t), flat + lt->offset);
        }
    }
    // The tied LM head: wte's rows as held (fp32: wte itself, in the flat layout).
    if (wdtype != WDT_F32) e->mats[0] = hold(e, whole(e, g, full, 0), m->s.Vp, m->s.C, &e->scales[0]);
    else e->held_bytes += m->tensors[0].numel * sizeof(float);
    free(tmp);
    e->flat = bk->alloc(m->nparams * sizeof(float) + 4, "held parameters");
    bk->from_host(e->flat, flat, m->nparams);
    free(flat);
    e->ps = (ParamStore){.ctx = e, .params = store_params, .release = store_release, .matrix = store_matrix};
    e->kv = model_kv_layout(m, nblocks, bs);
    e->kv.kv = bk->alloc((size_t)nblocks * e->kv.block_stride * sizeof(float), "KV cache");
}

void engine_create(Engine *e, const Model *g, const float *full, const ModelConfig *mc, const Backend *bk,
                   Comm *tp, int wdtype, int nblocks, int bs, int Nmax, int Smax, int max_blocks) {
    engine_create_ep(e, g, full, mc, bk, tp, tp ? tp->size : 1, 1, wdtype, nblocks, bs, Nmax, Smax, max_blocks);
}

void engine_create_ep(Engine *e, const Model *g, const float *full, const ModelConfig *mc, const Backend *bk,
                      Comm *world, int tp, int ep, int wdtype, int nblocks, int bs, int Nmax, int Smax,
                      int max_blocks) {
    memset(e, 0, sizeof *e);
    create(e, g, full, mc, bk, world, tp, ep, wdtype, nblocks, bs, Nmax, Smax, max_blocks);
}

void engine_create_streamed(Engine *e, const Model *g, struct Stream *st, const ModelConfig *mc, const Backend *bk,
                            Comm *tp, int nblocks, int bs, int Nmax, int Smax, int max_blocks) {
    memset(e, 0, sizeof *e);
    e->stream = st;
    create(e, g, NULL, mc, bk, tp, tp ? tp->size : 1, 1, stream_dtype(st), nblocks, bs, Nmax, Smax, max_blocks);
    stream_resident_done(st);
}

size_t engine_arena_bytes(const Model *g, int tp, int nblocks, int bs, int Nmax, int Smax, int max_blocks) {
    const GPTShape *s = &g->s;
    const size_t C = (size_t)s->C, H = (size_t)s->H, N = (size_t)Nmax, S = (size_t)Smax;
    const size_t wide = H > 3 * C ? H : 3 * C;
    size_t held = 4 * (g->nparams + (size_t)s->Vp * C) + 512 * (size_t)g->ntensors;   // + per-allocation alignment
    size_t kv = (size_t)nblocks * engine_kv_bytes_per_block(g, tp, bs);
    size_t acts = 4 * (N * (8 * C + wide + H + 4) + S * (C + (size_t)s->Vp + 8)) + 64 * 64;
    size_t ints = 4 * (N * (3 + (size_t)max_blocks) + S);
    for (int l = 0; l < s->L && g->moe.nmoe; l++)    // MoE layers' buffers (moe_layer_create_replicated)
        if (g->moe.experts[l] > 0) acts += moe_layer_bytes(&g->moe, g->moe.experts[l], s->C, s->H, Nmax, 1, 1) + 4096;
    return held + kv + acts + ints + ((size_t)16 << 20);
}

void engine_free(Engine *e) {
    stream_close(e->stream);
    for (int t = 0; t < e->m.ntensors; t++) {
        if (e->mats[t]) e->bk->release(e->mats[t]);
        if (e->scales[t]) e->bk->release(e->scales[t]);
    }
    free(e->mats);
    free(e->scales);
    e->bk->release(e->flat);
    e->bk->release(e->kv.kv);
    model_free(&e->m);
    if (e->split) {
        MPI_Comm tc = e->tpc.comm, ec = e->epc.comm;
        comm_free(&e->tpc);
        comm_free(&e->epc);
        MPI_CHECK(MPI_Comm_free(&tc));
        MPI_CHECK(MPI_Comm_free(&ec));
    }
    memset(e, 0, sizeof *e);
}

void engine_forward(Engine *e, const RaggedBatch *b, float *logits) {
    model_forward_paged(&e->m, &e->ps, &e->kv, b, e->m.tp_rank == 0 && e->ep_rank == 0 ? logits : NULL);
}

void engine_whole_model(Model *g, const Config *c, int B, int T) {
    MoeSpec s;
    moe_spec_from_config(&s, c);
    s.drop_tokens = c->generate.moe_drop;   // generate's rule: no drops unless asked
    ModelParallel mp = {.moe = &s};
    if (T > 0) model_create_parallel(g, &c->model, B, T, backend_cpu(), &mp);
    else model_table_moe(g, &c->model, &s, 1, 0);
    moe_spec_free(&s);
}

int engine_start_ranks(Comm *comm, const char *name, int64_t threads_key, int debug, double timeout_s) {
    int local_rank = 0, on_node = 1;
    topo_node_place(&local_rank, &on_node);
    int threads = threads_per_rank(threads_key, on_node);
    kernels_set_threads(threads);
    CommOptions co = {.debug = debug, .timeout_s = timeout_s, .fault_skip_rank = -1,
                      .oversubscribed = (long)threads * on_node > sysconf(_SC_NPROCESSORS_ONLN)};
    comm_init(comm, MPI_COMM_WORLD, name, &co);
    return local_rank;
}

void engine_open(Engine *e, Model *g, EngineSetup *es, const Deck *d, Comm *world, int local_rank) {
    const Config *c = &d->cfg;
    memset(es, 0, sizeof *es);
    engine_whole_model(g, c, 1, 1);
    const int streamed = c->generate.weights_from != GEN_FROM_MEMORY;   // ZeRO-Inference (stream.h)
    if (!streamed) {
        es->full = xmalloc(g->nparams * sizeof(float), "weights");
        weights_read(g, c->generate.weights, es->full);
    }
    es->bs = (int)c->generate.kv_block;
    es->max_blocks = (g->s.maxT + es->bs - 1) / es->bs;
    es->Nmax = (int)c->generate.token_budget;
    if (streamed && es->Nmax < c->generate.max_batch) es->Nmax = (int)c->generate.max_batch;   // a pass reads every layer: decode all at once
    es->Smax = c->generate.max_batch < es->Nmax ? (int)c->generate.max_batch : es->Nmax;   // a pass samples at most its rows
    // The cuda backend where the deck asks for it (or auto finds a device) at tp = 1.
    char err[2048];
    if (device_select(d, world->size == 1, &es->dev, err, sizeof err) != 0) FATAL_ALL(NULL, "%s", err);
    size_t arena = engine_arena_bytes(g, world->size, (int)c->generate.kv_blocks, es->bs, es->Nmax, es->Smax, es->max_blocks);
    if (streamed)   // the device holds the window's layers, not all of them
        arena = stream_arena_bytes(g, world->size, (int)c->generate.window, c->generate.weights_dtype, arena);
    const Backend *bk = device_start(&es->dev, local_rank, arena);
    if (streamed)   // dense models at tp = the job's ranks (main.c refuses MoE and ep > 1 with streaming)
        engine_create_streamed(e, g, stream_open(d, g, bk, world), &c->model, bk, world, (int)c->generate.kv_blocks,
                               es->bs, es->Nmax, es->Smax, es->max_blocks);
    else
        engine_create_ep(e, g, es->full, &c->model, bk, world, (int)c->parallel.tp, (int)c->parallel.ep,
                         c->generate.weights_dtype, (int)c->generate.kv_blocks, es->bs, es->Nmax, es->Smax,
                         es->max_blocks);
}

int engine_check_deck(const Deck *d, int size, char *msg, size_t n) {
    const GenerateConfig *g = &d->cfg.generate;
    char where[600];
    msg[0] = 0;
    if (g->weights_from == GEN_FROM_MEMORY && (!g->weights[0] || access(g->weights, R_OK) != 0)) {
        snprintf(msg, n, "error: %s: [generate] weights = \"%s\": no such readable file\n"
                 "  hint: use a run's final.h5, an `partita ckpt export`, or a checkpoint",
                 deck_where(d, "generate.weights", where, sizeof where), g->weights);
    } else if (d->cfg.parallel.tp * d->cfg.parallel.ep != size) {
        long long tp = (long long)d->cfg.parallel.tp, ep = (long long)d->cfg.parallel.ep;
        snprintf(msg, n, "error: %s: generate and serve run tensor x expert parallel over all %d ranks, but [parallel] "
                 "tp x ep = %lld x %lld = %lld\n  hint: launch %lld ranks, or choose tp and ep whose product is %d",
                 deck_where(d, ep > 1 ? "parallel.ep" : "parallel.tp", where, sizeof where), size, tp, ep, tp * ep,
                 tp * ep, size);
    } else if (g->naive && g->weights_from != GEN_FROM_MEMORY) {
        snprintf(msg, n, "error: %s: [generate] naive recomputes from resident weights only\n"
                 "  hint: set [generate] weights_from = memory", deck_where(d, "generate.naive", where, sizeof where));
    } else if (g->weights_from != GEN_FROM_MEMORY && d->cfg.moe.experts > 0) {
        snprintf(msg, n, "error: %s: [generate] weights_from = %s: streaming Mixture-of-Experts models is not "
                 "built (the staged file holds dense layers)\n  hint: set [generate] weights_from = memory",
                 deck_where(d, "generate.weights_from", where, sizeof where), g->weights_from == GEN_FROM_HOST ? "host" : "nvme");
    } else if (g->naive && size != 1) {
        snprintf(msg, n, "error: %s: [generate] naive runs on one rank\n  hint: launch with -np 1",
                 deck_where(d, "generate.naive", where, sizeof where));
    } else if (d->cfg.model.heads % d->cfg.parallel.tp || (d->cfg.model.mlp_ratio * d->cfg.model.d_model) % d->cfg.parallel.tp) {
        snprintf(msg, n, "error: %s: tp = %lld must divide [model] heads = %lld and the MLP width\n"
                 "  hint: use a tp that divides the heads", deck_where(d, "model.heads", where, sizeof where),
                 (long long)d->cfg.parallel.tp, (long long)d->cfg.model.heads);
    }
    return msg[0] ? -1 : 0;
}
