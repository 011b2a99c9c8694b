// zero.c: partitioned parameters, gradients and optimizer states.
#include "zero.h"
#include "log.h"
#include "offload.h"

#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
// The offload engine holds the parameter shard (params = host|nvme).
static int params_off(const Zero *z) { return z->off && z->off->params_tier != OFFLOAD_NONE; }
static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

void zero_part(const Zero *z, int k, size_t b, size_t e, size_t *pb, size_t *pe) {
    size_t lo = max_sz(b, (size_t)k * z->S), hi = min_sz(e, min_sz((size_t)(k + 1) * z->S, z->N));
    *pb = lo;
    *pe = hi > lo ? hi : lo;
}

static void fill_counts(Zero *z, size_t b, size_t e) {
    for (int k = 0; k < z->p; k++) {
        size_t lo, hi;
        zero_part(z, k, b, e, &lo, &hi);
        z->counts[k] = hi - lo;
    }
}

static const char *unit_tag(const Zero *z, int u, char *buf, size_t n) {
    if (u == 0) snprintf(buf, n, "embeddings");
    else if (u == z->m->nunits - 1) snprintf(buf, n, "ln_f");
    else snprintf(buf, n, "h.%d", u - 1);
    return buf;
}

// Backend memory that collectives may move (the comm layer mirrors it on the
// host for the staged path).
static float *alloc_floats(Zero *z, size_t n, const char *what, size_t *account) {
    *account += n * sizeof(float);
    float *p = z->m->bk->alloc(n * sizeof(float), what);
    comm_register(z->comm, p, n, what);
    return p;
}

// ---------------------------------------------------------------------------
// Buckets: whole units in backward order (ln_f, h.L-1, ..., h.0) up to the
// bucket size; the embeddings alone.

static void build_buckets(Zero *z, double bucket_mb) {
    const Model *m = z->m;
    size_t cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (cap < 1) cap = 1;
    z->buckets = xcalloc(sizeof(ZeroBucket) * (size_t)m->nunits, "buckets");
    z->bucket_of = xcalloc(sizeof(int) * (size_t)m->nunits, "bucket map");
    int nb = 0;
    for (int u = m->nunits - 1; u >= 1; ) {
        ZeroBucket *b = &z->buckets[nb];
        b->u_hi = u;
        b->u_lo = u;
        while (b->u_lo - 1 >= 1 && m->unit_end[u] - m->unit_begin[b->u_lo - 1] <= cap) b->u_lo--;
        b->begin = m->unit_begin[b->u_lo];
        b->end = m->unit_end[b->u_hi];
        for (int k = b->u_lo; k <= b->u_hi; k++) z->bucket_of[k] = nb;
        nb++;
        u = b->u_lo - 1;
    }
    ZeroBucket *e = &z->buckets[nb];
    e->u_lo = e->u_hi = 0;
    e->begin = 0;
    e->end = m->unit_end[0];
    z->bucket_of[0] = nb++;
    z->nbuckets = nb;
    for (int i = 0; i < nb; i++) z->buckets[i].slot = -1;
}

// ---------------------------------------------------------------------------
// Gradient path

// Lets MPICH advance the collectives in flight (it progresses only inside MPI calls).
static void poke(Zero *z) {
    if (!z->overlap) return;
    for (int i = 0; i < z->nbuckets; i++)
        if (z->buckets[i].req.active) comm_test(z->comm, &z->buckets[i].req);
}

// A bucket's reduction is complete: fold this rank's part into the shard.
static void bucket_finish(Zero *z, ZeroBucket *b) {
    if (!b->pending) return;
    comm_wait(z->comm, &b->req);
    b->pending = 0;
    if (z->stage >= 1) {
        size_t lo, hi;
        zero_part(z, z->r, b->begin, b->end, &lo, &hi);
        size_t at = lo - z->own_begin;
        if (z->gland[0])    // gradients on NVMe: accumulated (and, after the last micro-step, averaged) there
            offload_grad_put(z->off, at, hi - z->own_begin, z->gland[b->slot >= 0 ? b->slot : 2], z->first_micro,
                             z->last_micro, z->p > 1 ? 1.0f / (float)z->p : 1.0f);
        else
            z->m->bk->axpy(z->gshard + at, z->recv + at, 1.0f, hi - lo);
    }
    if (b->slot >= 0) z->gring_bucket[b->slot] = -1;
    b->slot = -1;
    b->staging = NULL;
}

// Stage 2-3: a zeroed staging buffer for bucket bi, reusing the ring slot
// whose reduction is oldest (waiting for it only now).
static void bucket_stage(Zero *z, int bi) {
    ZeroBucket *b = &z->buckets[bi];
    size_t n = b->end - b->begin;
    if (b->u_lo == 0) {
        b->staging = z->gembed;
    } else {
        int k = z->gring_next;
        z->gring_next ^= 1;
        if (z->gring_bucket[k] >= 0) bucket_finish(z, &z->buckets[z->gring_bucket[k]]);
        z->gring_bucket[k] = bi;
        b->slot = k;
        b->staging = z->gring[k];
    }
    z->m->bk->zero(b->staging, n);
}

static void bucket_launch(Zero *z, ZeroBucket *b, int bi) {
    char tag[40], lo_name[16], hi_name[16];
    (void)bi;
    unit_tag(z, b->u_lo, lo_name, sizeof lo_name);
    unit_tag(z, b->u_hi, hi_name, sizeof hi_name);
    if (b->u_lo == b->u_hi) snprintf(tag, sizeof tag, "grads %s", lo_name);
    else snprintf(tag, sizeof tag, "grads %s..%s", lo_name, hi_name);
    size_t lo, hi;
    zero_part(z, z->r, b->begin, b->end, &lo, &hi);
    b->pending = 1;
    if (z->stage == 0) {
        comm_iallreduce_sum(z->comm, z->grads + b->begin, b->end - b->begin, tag, &b->req);
    } else {
        const float *send = z->stage == 1 ? z->grads + b->begin : b->staging;
        fill_counts(z, b->begin, b->end);
        float *recv = z->gland[0] ? z->gland[b->slot >= 0 ? b->slot : 2] : z->recv + (lo - z->own_begin);
        comm_ireduce_scatter_sum(z->comm, send, recv, z->counts, tag, &b->req);
    }
    if (!z->overlap) bucket_finish(z, b);
}

static float *store_grads(void *ctx, int u) {
    Zero *z = ctx;
    poke(z);
    if (z->stage <= 1) return z->grads + z->m->unit_begin[u];
    int bi = z->bucket_of[u];
    ZeroBucket *b = &z->buckets[bi];
    if (!b->staging) {
        bucket_finish(z, b);   // the previous micro-step's reduction of it, if still pending
        bucket_stage(z, bi);
    }
    return b->staging + (z->m->unit_begin[u] - b->begin);
}

static void store_grads_ready(void *ctx, int u) {
    Zero *z = ctx;
    int bi = z->bucket_of[u];
    ZeroBucket *b = &z->buckets[bi];
    if (++b->ready < b->u_hi - b->u_lo + 1) return;
    // Stages 0-1 accumulate micro-steps locally and reduce once, after the last.
    if (z->stage <= 1 && !z->last_micro) return;
    bucket_launch(z, b, bi);
}

// ---------------------------------------------------------------------------
// Parameter path

static ZeroSlot *slot_holding(Zero *z, int u) {
    for (int k = 0; k < ZSLOT_N; k++)
        if (z->slots[k].unit == u) return &z->slots[k];
    return NULL;
}

// Stage 3: issues the all-gather of unit u into slot s.
static void gather_start(Zero *z, ZeroSlot *s, int u) {
    size_t ub = z->m->unit_begin[u], ue = z->m->unit_end[u], lo, hi;
    zero_part(z, z->r, ub, ue, &lo, &hi);
    if (params_off(z)) offload_param_fetch(z->off, u, s->buf + (lo - ub));   // own 1/N from host memory or NVMe
    else z->m->bk->copy(s->buf + (lo - ub), z->params + (lo - z->own_begin), hi - lo);
    fill_counts(z, ub, ue);
    char tag[40];
    comm_iallgather(z->comm, s->buf, z->counts, unit_tag(z, u, tag, sizeof tag), &s->req);
    s->unit = u;
    s->held = 0;
}

static ZeroSlot *slot_for(Zero *z, int u) {
    int L = z->m->nunits - 2;
    if (u == 0) return &z->slots[ZSLOT_EMBED];
    if (u == L + 1) return &z->slots[ZSLOT_FINAL];
    ZeroSlot *a = &z->slots[ZSLOT_LAYER_A], *b = &z->slots[ZSLOT_LAYER_B];
    if (a->held) return b;
    if (b->held) return a;
    return a->req.active ? b : a;   // never clobber a prefetch in flight
}

static void prefetch(Zero *z, int u) {
    if (!z->prefetch || u < 1 || u > z->m->nunits - 1 || slot_holding(z, u)) return;
    ZeroSlot *s = slot_for(z, u);
    if (s->held || s->req.active) return;
    gather_start(z, s, u);
}

static const float *store_params(void *ctx, int u, int phase) {
    Zero *z = ctx;
    poke(z);
    if (z->stage < 3) return z->params + z->m->unit_begin[u];
    ZeroSlot *s = slot_holding(z, u);
    if (!s) {
        s = slot_for(z, u);
        gather_start(z, s, u);
    }
    comm_wait(z->comm, &s->req);
    int at_head = z->slots[ZSLOT_FINAL].held;    // the LM head: no layer follows
    s->held = 1;
    int L = z->m->nunits - 2;
    if (phase == PHASE_FWD && !(u == 0 && at_head)) prefetch(z, u + 1 <= L + 1 ? u + 1 : -1);
    if (phase == PHASE_BWD && u >= 2 && u <= L) prefetch(z, u - 1);
    return s->buf;
}

static void store_release(void *ctx, int u, int phase) {
    Zero *z = ctx;
    (void)phase;
    if (z->stage < 3) return;
    ZeroSlot *s = slot_holding(z, u);
    if (s && !s->req.active) {
        s->held = 0;
        s->unit = -1;   // freed: the next use gathers again
    }
}

// ---------------------------------------------------------------------------
// The plan: sizes and traffic from (model, stage, p, r) alone

static size_t largest_layer(const Model *m) {
    size_t n = 0;
    for (int u = 1; u + 1 < m->nunits; u++) n = max_sz(n, m->unit_end[u] - m->unit_begin[u]);
    return n;
}

static size_t largest_bucket(const Zero *z) {
    size_t n = 0;
    for (int i = 0; i + 1 < z->nbuckets; i++) n = max_sz(n, z->buckets[i].end - z->buckets[i].begin);
    return n;
}

void zero_plan(const Model *m, const ZeroConfig *zc, int p, int r, int accum, ZeroPlan *plan) {
    Zero z;     // just the fields the partition helpers read
    memset(&z, 0, sizeof z);
    z.m = m;
    z.p = p;
    z.N = m->nparams;
    z.S = (z.N + (size_t)p - 1) / (size_t)p;
    build_buckets(&z, zc->bucket_mb);
    size_t lo, hi, f = sizeof(float);
    zero_part(&z, r, 0, z.N, &lo, &hi);
    size_t own = zc->stage == 0 ? z.N : hi - lo, N = z.N;
    memset(plan, 0, sizeof *plan);
    plan->params = (zc->stage == 3 ? own : N) * f;
    plan->grads = (zc->stage <= 1 ? N : 0) * f + (zc->stage >= 1 ? (own ? own : 1) * f : 0);
    plan->optim = 2 * own * f;
    if (zc->stage >= 1) plan->working += (own ? own : 1) * f;
    if (zc->stage >= 2) plan->working += (2 * largest_bucket(&z) + m->unit_end[0]) * f;
    if (zc->stage == 3) {
        size_t fin = m->unit_end[m->nunits - 1] - m->unit_begin[m->nunits - 1];
        plan->working += (2 * max_sz(largest_layer(m), 1) + max_sz(m->unit_end[0], 1) + max_sz(fin, 1)) * f;
    }
    // MPI's reductions stage a message-sized temporary of their own (MPICH's
    // reduce-scatter and all-reduce do): one bucket's worth when p > 1.
    if (p > 1) plan->mpi_temp = max_sz(largest_bucket(&z), m->unit_end[0]) * f;
    double rest = (double)(N - (hi - lo)) * (double)f;   // what a reduce-scatter or all-gather sends
    if (p > 1) {
        if (zc->stage == 0) plan->sent[COMM_ALLREDUCE] = 2.0 * (p - 1) / p * (double)N * (double)f;
        if (zc->stage >= 1) plan->sent[COMM_REDUCE_SCATTER] = rest * (zc->stage == 1 ? 1 : accum);
        if (zc->stage == 1 || zc->stage == 2) plan->sent[COMM_ALLGATHER] = rest;
        if (zc->stage == 3) {
            // Each unit twice per micro-step, but ln_f once (held from forward into backward).
            double ag = 0.0;
            for (int u = 0; u < m->nunits; u++) {
                size_t ub = m->unit_begin[u], ue = m->unit_end[u];
                zero_part(&z, r, ub, ue, &lo, &hi);
                ag += (double)(ue - ub - (hi - lo)) * (double)f * (u == m->nunits - 1 ? 1 : 2);
            }
            plan->sent[COMM_ALLGATHER] = ag * accum;
        }
    }
    free(z.buckets);
    free(z.bucket_of);
}

// ---------------------------------------------------------------------------
// Life cycle

void zero_create(Zero *z, const ZeroConfig *zc, Comm *comm, const Model *m, const OptimConfig *oc,
                 int64_t steps) {
    memset(z, 0, sizeof *z);
    z->stage = zc->stage;
    z->overlap = zc->overlap;
    z->prefetch = zc->prefetch && zc->overlap;
    z->comm = comm;
    z->m = m;
    z->p = comm->size;
    z->r = comm->rank;
    z->N = m->nparams;
    z->S = (z->N + (size_t)z->p - 1) / (size_t)z->p;
    zero_part(z, z->r, 0, z->N, &z->own_begin, &z->own_end);
    if (z->stage == 0) {
        z->own_begin = 0;
        z->own_end = z->N;
    }
    size_t own = z->own_end - z->own_begin;
    z->counts = xcalloc(sizeof(size_t) * (size_t)z->p, "zero counts");
    build_buckets(z, zc->bucket_mb);

    z->params = alloc_floats(z, z->stage == 3 ? own : z->N, "parameters", &z->state_bytes);
    if (z->stage <= 1) z->grads = alloc_floats(z, z->N, "gradients", &z->state_bytes);
    if (z->stage >= 1) {
        z->gshard = alloc_floats(z, own ? own : 1, "gradient shard", &z->state_bytes);
        z->recv = alloc_floats(z, own ? own : 1, "reduce-scatter buffer", &z->working_bytes);
    }
    optim_create(&z->optim, oc, steps, z->own_begin, z->own_end, m->bk);
    z->state_bytes += 2 * own * sizeof(float);

    size_t max_layer = largest_layer(m), max_bucket = largest_bucket(z);
    if (z->stage >= 2) {
        for (int k = 0; k < 2; k++) {
            z->gring[k] = alloc_floats(z, max_bucket, "gradient staging", &z->working_bytes);
            z->gring_bucket[k] = -1;
        }
        z->gembed = alloc_floats(z, m->unit_end[0], "embedding gradient staging", &z->working_bytes);
    }
    for (int k = 0; k < ZSLOT_N; k++) z->slots[k].unit = -1;
    if (z->stage == 3) {
        size_t caps[ZSLOT_N] = {max_layer, max_layer, m->unit_end[0],
                                m->unit_end[m->nunits - 1] - m->unit_begin[m->nunits - 1]};
        for (int k = 0; k < ZSLOT_N; k++) {
            z->slots[k].cap = caps[k];
            z->slots[k].buf = alloc_floats(z, caps[k] ? caps[k] : 1, "gathered parameters", &z->working_bytes);
        }
    }
    ZeroPlan plan;
    zero_plan(m, zc, z->p, z->r, 1, &plan);
    SYS_CHECK(plan.params + plan.grads + plan.optim == z->state_bytes && plan.working == z->working_bytes,
              "zero_plan disagrees with zero_create: %zu+%zu vs %zu+%zu bytes",
              plan.params + plan.grads + plan.optim, plan.working, z->state_bytes, z->working_bytes);
    if (m->bk->device_memory) {     // host copies for checkpoints and weight files
        size_t np = z->stage == 3 ? own : z->N;
        z->host_params = xcalloc((np ? np : 1) * sizeof(float), "host copy of parameters");
        z->host_m = xcalloc((own ? own : 1) * sizeof(float), "host copy of AdamW moments");
        z->host_v = xcalloc((own ? own : 1) * sizeof(float), "host copy of AdamW moments");
    } else {
        z->host_params = z->params;
        z->host_m = z->optim.m;
        z->host_v = z->optim.v;
    }
    z->store = (ParamStore){.ctx = z, .params = store_params, .release = store_release,
                            .grads = store_grads, .grads_ready = store_grads_ready};
}

static void offload_drop_host(Zero *z);

void zero_free(Zero *z) {
    const Backend *bk = z->m->bk;
    if (z->off && z->host_m) offload_drop_host(z);
    if (bk->device_memory) {
        free(z->host_params);
        free(z->host_m);
        free(z->host_v);
    }
    bk->release(z->params);
    bk->release(z->grads);
    bk->release(z->gshard);
    bk->release(z->recv);
    for (int k = 0; k < 3; k++) bk->release(z->gland[k]);
    optim_free(&z->optim);
    for (int k = 0; k < ZSLOT_N; k++) bk->release(z->slots[k].buf);
    bk->release(z->gring[0]);
    bk->release(z->gring[1]);
    bk->release(z->gembed);
    free(z->buckets);
    free(z->bucket_of);
    free(z->counts);
    memset(z, 0, sizeof *z);
}

void zero_init_weights(Zero *z, uint64_t seed, double std) {
    if (params_off(z)) {
        offload_init_params(z->off, z->m, seed, std);
        return;
    }
    size_t b = z->stage == 3 ? z->own_begin : 0, e = z->stage == 3 ? z->own_end : z->N;
    model_init_range(z->m, z->host_params, b, e, seed, std);
    if (z->m->bk->device_memory) z->m->bk->from_host(z->params, z->host_params, e - b);
}

// Offloaded states: host copies made for a checkpoint (or a resume), dropped
// at the next step. Mapped, not malloc'd: untouched pages stay out of the
// resident set (host_cap_mb), and unmapping returns them at once.
static size_t host_bytes(const Zero *z) {
    size_t own = z->own_end - z->own_begin;
    return (own ? own : 1) * sizeof(float);
}

static float *host_map(const Zero *z) {
    void *p = mmap(NULL, host_bytes(z), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SYS_CHECK(p != MAP_FAILED, "out of memory for a %zu-byte host copy of offloaded states", host_bytes(z));
    return p;
}

static void host_unmap(const Zero *z, float **p) {
    if (*p) munmap(*p, host_bytes(z));
    *p = NULL;
}

void zero_host_buffers(Zero *z) {
    if (!z->off) return;
    if (!z->host_m) z->host_m = host_map(z);
    if (!z->host_v) z->host_v = host_map(z);
    if (params_off(z) && !z->host_params) z->host_params = host_map(z);
}

static void offload_pull(Zero *z) {
    zero_host_buffers(z);
    offload_get(z->off, OFF_M, z->host_m);
    offload_get(z->off, OFF_V, z->host_v);
    if (params_off(z)) offload_get(z->off, OFF_P, z->host_params);
}

static void offload_drop_host(Zero *z) {
    host_unmap(z, &z->host_m);
    host_unmap(z, &z->host_v);
    if (params_off(z)) host_unmap(z, &z->host_params);
}

// Gradients on NVMe: the shard and its landing area give way to a landing
// buffer per gradient staging slot (two layer buckets, the embeddings).
static void attach_grads(Zero *z) {
    const Backend *bk = z->m->bk;
    size_t own = z->own_end - z->own_begin, most = 0, emb = 0, lo, hi;
    bk->release(z->gshard);
    bk->release(z->recv);
    z->gshard = z->recv = NULL;
    z->state_bytes -= own * sizeof(float);
    z->working_bytes -= own * sizeof(float);
    for (int i = 0; i < z->nbuckets; i++) {
        zero_part(z, z->r, z->buckets[i].begin, z->buckets[i].end, &lo, &hi);
        if (z->buckets[i].u_lo == 0) emb = hi - lo;
        else most = max_sz(most, hi - lo);
    }
    for (int k = 0; k < 3; k++)
        z->gland[k] = alloc_floats(z, max_sz(k < 2 ? most : emb, 1), "gradient landing", &z->working_bytes);
    offload_grad_buffers(z->off, max_sz(most, emb));
}

void zero_attach_offload(Zero *z, struct Offload *off) {
    z->off = off;
    const Backend *bk = z->m->bk;
    size_t own = z->own_end - z->own_begin;
    bk->release(z->optim.m);
    bk->release(z->optim.v);
    z->optim.m = z->optim.v = NULL;
    if (bk->device_memory) {    // the host copies are mapped when a checkpoint needs them
        free(z->host_m);
        free(z->host_v);
    }
    z->host_m = z->host_v = NULL;
    z->state_bytes -= 2 * own * sizeof(float);
    if (off->grads_nvme) attach_grads(z);
    if (!params_off(z)) return;
    bk->release(z->params);
    if (bk->device_memory) free(z->host_params);
    z->params = z->host_params = NULL;
    z->state_bytes -= own * sizeof(float);
    int nu = z->m->nunits;
    size_t *lo = xmalloc(sizeof(size_t) * (size_t)nu, "units"), *hi = xmalloc(sizeof(size_t) * (size_t)nu, "units");
    for (int u = 0; u < nu; u++) zero_part(z, z->r, z->m->unit_begin[u], z->m->unit_end[u], &lo[u], &hi[u]);
    offload_set_units(off, nu, lo, hi);
    free(lo);
    free(hi);
}

void zero_pull_states(Zero *z) {
    const Backend *bk = z->m->bk;
    size_t own = z->own_end - z->own_begin;
    if (z->off) {
        offload_pull(z);
        if (bk->device_memory && !params_off(z)) bk->to_host(z->host_params, z->params, z->stage == 3 ? own : z->N);
        return;
    }
    if (!bk->device_memory) return;
    bk->to_host(z->host_params, z->params, z->stage == 3 ? own : z->N);
    bk->to_host(z->host_m, z->optim.m, own);
    bk->to_host(z->host_v, z->optim.v, own);
}

void zero_push_states(Zero *z) {
    const Backend *bk = z->m->bk;
    size_t own = z->own_end - z->own_begin;
    if (z->off) {
        if (bk->device_memory && !params_off(z)) bk->from_host(z->params, z->host_params, z->stage == 3 ? own : z->N);
        offload_put(z->off, OFF_M, z->host_m);
        offload_put(z->off, OFF_V, z->host_v);
        if (params_off(z)) offload_put(z->off, OFF_P, z->host_params);
        offload_drop_host(z);
        return;
    }
    if (!bk->device_memory) return;
    bk->from_host(z->params, z->host_params, z->stage == 3 ? own : z->N);
    bk->from_host(z->optim.m, z->host_m, own);
    bk->from_host(z->optim.v, z->host_v, own);
}

const ParamStore *zero_store(Zero *z) { return &z->store; }

void zero_begin_step(Zero *z, int64_t step) {
    comm_set_step(z->comm, step);
    if (z->grads) z->m->bk->zero(z->grads, z->N);
    if (z->gshard) z->m->bk->zero(z->gshard, z->own_end - z->own_begin);
}

void zero_begin_micro(Zero *z, int micro, int accum) {
    if (z->gland[0])    // gradients on NVMe take each micro-step's buckets whole, in order
        for (int i = 0; i < z->nbuckets; i++) bucket_finish(z, &z->buckets[i]);
    z->first_micro = micro == 0;
    z->last_micro = micro == accum - 1;
    for (int i = 0; i < z->nbuckets; i++) {
        z->buckets[i].ready = 0;
        // Stage 2-3 staging is handed out afresh, zeroed, each micro-step (bucket_stage).
        if (z->stage >= 2) z->buckets[i].staging = NULL;
    }
}

double zero_reduce_grads(Zero *z) {
    for (int i = 0; i < z->nbuckets; i++) bucket_finish(z, &z->buckets[i]);
    float inv = 1.0f / (float)z->p;
    double ss;
    if (z->gland[0]) {  // on NVMe: averaged and summed as they were written
        ss = offload_grad_sumsq(z->off);
        comm_allreduce_sum_f64(z->comm, &ss, 1, "grad norm");
    } else if (z->stage == 0) {
        if (z->p > 1) z->m->bk->scale_inplace(z->grads, inv, z->N);
        ss = z->m->bk->sumsq(z->grads, z->N);
    } else {
        size_t own = z->own_end - z->own_begin;
        if (z->p > 1) z->m->bk->scale_inplace(z->gshard, inv, own);
        ss = z->m->bk->sumsq(z->gshard, own);
        comm_allreduce_sum_f64(z->comm, &ss, 1, "grad norm");
    }
    return sqrt(ss);
}

// AdamW on the owned range: in memory, or streamed from NVMe (offload.h).
static void update_owned(Zero *z, float *params, float *grads, double lr, float grad_scale) {
    if (!z->off) {
        optim_update(&z->optim, z->m, params, grads, lr, grad_scale);
        return;
    }
    if (z->host_m) offload_drop_host(z);    // a checkpoint's copies
    offload_update(z->off, z->m, &z->optim, params, grads, lr, grad_scale);
}

void zero_step(Zero *z, double lr, float grad_scale) {
    if (z->stage == 0) {
        update_owned(z, z->params, z->grads, lr, grad_scale);
        return;
    }
    float *mine = z->stage == 3 ? z->params : z->params + z->own_begin;
    update_owned(z, mine, z->gshard, lr, grad_scale);
    if (z->stage == 3) return;
    CommReq r;
    fill_counts(z, 0, z->N);
    comm_iallgather(z->comm, z->params, z->counts, "updated parameters", &r);
    comm_wait(z->comm, &r);
}
