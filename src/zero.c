// zero.c: partitioned parameters, gradients and optimizer states.
#include "zero.h"
#include "log.h"
#include "offload.h"

#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <string.h>

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }
// The offload engine holds the groups' moments (and maybe shards, gradients): offload.h.
static int offloaded(const Zero *z) { return z->offl.moments; }

size_t zero_shard_floats(size_t n, int p) {
    size_t s = (n + (size_t)p - 1) / (size_t)p;
    size_t a = (s + MODEL_ALIGN_FLOATS - 1) / MODEL_ALIGN_FLOATS * MODEL_ALIGN_FLOATS;
    return p > 1 && s >= 100 * MODEL_ALIGN_FLOATS && (size_t)(p - 1) * a < n ? a : s;
}

void zero_group_part(const ZeroGroup *g, int k, size_t b, size_t e, size_t *pb, size_t *pe) {
    size_t lo = max_sz(b, g->begin + (size_t)k * g->S);
    size_t hi = min_sz(e, min_sz(g->begin + (size_t)(k + 1) * g->S, g->end));
    *pb = lo;
    *pe = hi > lo ? hi : lo;
}

void zero_part(const Zero *z, int k, size_t b, size_t e, size_t *pb, size_t *pe) {
    zero_group_part(&z->g[0], k, b, e, pb, pe);
}

static void fill_counts(ZeroGroup *g, size_t b, size_t e) {
    for (int k = 0; k < g->p; k++) {
        size_t lo, hi;
        zero_group_part(g, k, b, e, &lo, &hi);
        g->counts[k] = hi - lo;
    }
}

// Units L+2.. hold experts (model.h): group 1; the rest group 0.
static int unit_group(const Zero *z, int u) { return u > z->m->s.L + 1 ? 1 : 0; }

// Where flat element i of group g's shard sits in the shard buffers.
static size_t shard_at(const ZeroGroup *g, size_t i) { return g->at + (i - g->own_begin); }

static const char *unit_tag(const Zero *z, int u, char *buf, size_t n) {
    const Model *m = z->m;
    if (u == 0) snprintf(buf, n, "embeddings");
    else if (u == m->s.L + 1) snprintf(buf, n, "ln_f");
    else if (u <= m->s.L) snprintf(buf, n, "h.%d", u - 1);
    else
        for (int l = 0; l < m->s.L; l++)
            if (m->xunit[l] == u) snprintf(buf, n, "experts h.%d", l);
    return buf;
}

// The groups' ranges and this rank's shards, from the model and (p, r) of
// group 0; group 1 (the held experts) is the p/ep ranks with the same r % ep.
static void layout_groups(Zero *z, int p, int r) {
    const Model *m = z->m;
    z->ngroups = m->ngroups > 1 ? 2 : 1;
    size_t at = 0;
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        g->begin = k ? m->group_end[0] : 0;
        g->end = k ? m->group_end[1] : z->ngroups > 1 ? m->group_end[0] : m->nparams;
        g->p = k ? p / m->ep_size : p;
        g->r = k ? r / m->ep_size : r;
        g->S = zero_shard_floats(g->end - g->begin, g->p);
        zero_group_part(g, g->r, g->begin, g->end, &g->own_begin, &g->own_end);
        if (z->stage == 0) {
            g->own_begin = g->begin;
            g->own_end = g->end;
        }
        g->at = at;
        at += g->own_end - g->own_begin;
    }
    z->own = at;
    z->S = z->g[0].S;
    z->own_begin = z->g[0].own_begin;
    z->own_end = z->g[0].own_end;
}

// Backend memory that collectives may move (the comm layer mirrors it on the
// host for the staged path).
static float *alloc_floats(Zero *z, size_t n, const char *what, size_t *account) {
    *account += n * sizeof(float);
    float *p = z->m->bk->alloc(n * sizeof(float), what);
    for (int k = 0; k < z->ngroups; k++)
        if (z->g[k].comm && (k == 0 || z->g[k].comm != z->g[0].comm)) comm_register(z->g[k].comm, p, n, what);
    return p;
}

// ---------------------------------------------------------------------------
// Buckets: whole units of one group in backward order (ln_f, h.L-1, ..., h.0;
// then the held experts, last MoE layer first) up to the bucket size; the
// embeddings alone, last.

static int add_buckets(Zero *z, int nb, int u_top, int u_min, int group, size_t cap) {
    const Model *m = z->m;
    for (int u = u_top; u >= u_min; ) {
        ZeroBucket *b = &z->buckets[nb];
        b->u_hi = u;
        b->u_lo = u;
        b->group = group;
        while (b->u_lo - 1 >= u_min && m->unit_end[u] - m->unit_begin[b->u_lo - 1] <= cap) b->u_lo--;
        b->begin = m->unit_begin[b->u_lo];
        b->end = m->unit_end[b->u_hi];
        for (int k = b->u_lo; k <= b->u_hi; k++) z->bucket_of[k] = nb;
        nb++;
        u = b->u_lo - 1;
    }
    return nb;
}

static void build_buckets(Zero *z, double bucket_mb) {
    const Model *m = z->m;
    const int L = m->s.L;
    size_t cap = (size_t)(bucket_mb * 1048576.0 / sizeof(float));
    if (cap < 1) cap = 1;
    z->buckets = xcalloc(sizeof(ZeroBucket) * (size_t)m->nunits, "buckets");
    z->bucket_of = xcalloc(sizeof(int) * (size_t)m->nunits, "bucket map");
    int nb = add_buckets(z, 0, L + 1, 1, 0, cap);
    nb = add_buckets(z, nb, m->nunits - 1, L + 2, 1, cap);
    ZeroBucket *e = &z->buckets[nb];
    e->u_lo = e->u_hi = 0;
    e->group = 0;
    e->begin = 0;
    e->end = m->unit_end[0];
    z->bucket_of[0] = nb++;
    z->nbuckets = nb;
    for (int i = 0; i < nb; i++) z->buckets[i].slot = -1;
}

// ---------------------------------------------------------------------------
// Gradient path

// Lets MPICH advance the collectives in flight (it progresses only inside MPI
// calls). The stage-3 gathers advance through the probe; their requests are
// never tested here: slot_for reads an active request as a prefetch not yet
// used, and completing one early on one rank only would let that rank reuse the
// slot and issue another gather than its peers (it hung MoE ZeRO-3 at ep = 2).
static void poke(Zero *z) {
    if (!z->overlap || !comm_polls(z->comm)) return;
    for (int k = 0; k < z->ngroups; k++)
        if (k == 0 || z->g[k].comm != z->comm) comm_progress(z->g[k].comm);   // the stage-3 gathers in flight too
    for (int i = 0; i < z->nbuckets; i++)
        if (z->buckets[i].req.active) comm_test(z->g[z->buckets[i].group].comm, &z->buckets[i].req);
}

// Gradients on NVMe: where bucket b's reduce-scatter lands (its staging slot's, or the embeddings').
static float *landing(const Zero *z, const ZeroBucket *b) { return z->gland[b->slot >= 0 ? b->slot : 2]; }

// The kernels' tile hook: polls between the tiles of every matrix product
// (every few ms), so that a layer's gathers and reductions may move while the
// layer computes rather than at layer boundaries alone. Measured on the 2-core
// machine it saved nothing (docs/architecture.md, issue 16); it costs ~1000
// probes per 124M step.
static void tile_poke(void *ctx) { poke(ctx); }

static void fold_embed_rows(Zero *z, float *got, size_t lo, size_t hi);
static int early_applies(const Zero *z, size_t tokens, size_t *per);

// ---------------------------------------------------------------------------
// Fused gradients (zero.h)

// Whether tensor t has elements in [lo, hi).
static int tensor_within(const Zero *z, int t, size_t lo, size_t hi) {
    const ParamTensor *pt = &z->m->tensors[t];
    return pt->offset < hi && pt->offset + pt->numel > lo;
}

// The flags are shared by processes: an atomic that took a lock would take a
// per-process one, so both ranks could hold it at once.
_Static_assert(ATOMIC_LONG_LOCK_FREE == 2 && ATOMIC_LLONG_LOCK_FREE == 2 && sizeof(_Atomic uint64_t) == 8,
               "fused gradients' flags need lock-free 64-bit atomics");

// A rank's flags: two per tensor, then one for the embeddings' encoder rows.
enum { FLAG_FIRST = 0, FLAG_BOTH = 1, FLAG_FOLDED = 2 };
static size_t flag_bytes(const Zero *z) { return (2 * (size_t)z->m->ntensors + 1) * sizeof(uint64_t); }

// Rank k's flag of tensor t: FLAG_FIRST "first half written", FLAG_BOTH
// "both written"; FLAG_FOLDED (t unused) "encoder rows added to wte, wpe".
static _Atomic uint64_t *fflag(const Zero *z, int k, int kind, int t) {
    size_t at = kind == FLAG_FOLDED ? 2 * (size_t)z->m->ntensors : (size_t)kind * z->m->ntensors + (size_t)t;
    return (_Atomic uint64_t *)(z->fsh.base + (size_t)k * flag_bytes(z)) + at;
}

static float *grad_layout(const Zero *z) { return (float *)z->gsh.base; }

// Rows [r0, r1) of tensor rows that rank k writes in part `part` (0 first).
static void fused_rows(int k, int part, int rows, int *r0, int *r1) {
    int half = (rows + 1) / 2, which = part == 0 ? k : 1 - k;
    *r0 = which == 0 ? 0 : half;
    *r1 = which == 0 ? half : rows;
}

static int store_takes_dweight(void *ctx, int t) {
    const Zero *z = ctx;
    return z->fused && z->fuse[t];
}

static const char *const HALF_WHAT[2] = {"previous gradient of ", "first half of the gradient of "};

// This rank's half `part` of tensor t's rows (part 0 its own, first; part 1
// the other's, added), once the other rank's flag allows, then its own flag.
// dout (N, OC), inp (N, IC): the product's (kernels.h matmul_dweight_rows).
static void dweight_half(Zero *z, int t, int part, const float *dout, const float *inp, size_t N, int IC, int OC,
                         int trans_w) {
    const ParamTensor *pt = &z->m->tensors[t];
    int peer = 1 - z->r, r0, r1;
    fused_rows(z->r, part, trans_w ? OC : IC, &r0, &r1);
    // Part 0: the other rank's part 1 of the last micro-step wrote these rows,
    // and (wte) its fold of that micro-step's encoder rows added to them, which
    // comes late with overlap on (bucket_finish at this micro-step's start);
    // part 1: its part 0 of this one writes them first.
    comm_flag_wait(z->comm, fflag(z, peer, part == 0 ? FLAG_BOTH : FLAG_FIRST, t), part == 0 ? z->gen - 1 : z->gen,
                   COMM_REDUCE_SCATTER, peer, HALF_WHAT[part], pt->name);
    if (part == 0 && pt->offset < z->m->unit_end[0])
        comm_flag_wait(z->comm, fflag(z, peer, FLAG_FOLDED, 0), z->gen - 1, COMM_REDUCE_SCATTER, peer,
                       "encoder rows of the previous micro-step", "");
    float beta = part == 0 && z->first_micro ? 0.0f : 1.0f;
    z->m->bk->matmul_dweight_rows(grad_layout(z) + pt->offset, dout, inp, N, IC, OC, trans_w, r0, r1, beta);
    atomic_store_explicit(fflag(z, z->r, part, t), z->gen, memory_order_release);
}

// Postponed second halves (zero.h): a queue of ntensors, dout copies in the ring.

static ZeroPostponed *postponed(const Zero *z, int i) { return &z->dq[(z->dq_front + i) % z->m->ntensors]; }

// Runs the oldest postponed half, waiting for its rows if need be.
static void run_oldest(Zero *z) {
    const ZeroPostponed *d = postponed(z, 0);
    dweight_half(z, d->t, 1, d->dout, d->inp, d->N, d->IC, d->OC, d->trans_w);
    z->dq_front = (z->dq_front + 1) % z->m->ntensors;
    z->dq_n--;
}

// Runs the postponed halves whose rows are there, oldest first ([zero]
// fault_postpone: none, they wait until due).
static void run_ready(Zero *z) {
    while (z->dq_n && !z->fault_postpone && comm_flag_ready(z->comm, fflag(z, 1 - z->r, FLAG_FIRST, postponed(z, 0)->t), z->gen))
        run_oldest(z);
}

// Runs postponed halves, oldest first and waiting as need be, until none with
// elements in [lo, hi) is left. Oldest first keeps the ranks from waiting on
// each other: what a rank waits for, the other has passed.
static void run_due(Zero *z, size_t lo, size_t hi) {
    int last = -1;
    for (int i = 0; i < z->dq_n; i++)
        if (tensor_within(z, postponed(z, i)->t, lo, hi)) last = i;
    for (int i = 0; i <= last; i++) run_oldest(z);
}

// Runs every postponed half (a product's own wait, the backward's end).
static void run_all(Zero *z) { run_due(z, 0, z->N); }

// Room for n floats in the ring after the newest copy (or, wrapping, before
// the oldest): 1 with *at set.
static int dring_room(const Zero *z, size_t n, size_t *at) {
    const ZeroPostponed *old = NULL;
    for (int i = 0; i < z->dq_n && !old; i++)
        if (postponed(z, i)->n) old = postponed(z, i);
    size_t head = old ? old->at : 0, tail = old ? z->dring_tail : 0;
    if (old && tail <= head) {      // wrapped: the free run lies between them
        *at = tail;
        return tail + n <= head;
    }
    *at = tail + n <= z->dring_cap ? tail : 0;
    return tail + n <= z->dring_cap || n <= head;
}

// Queues the second half for later (dout (N, OC) copied unless it stays; inp
// (N, IC) must stay); 0 where inp does not, the ring cannot hold dout even
// empty, or the queue is full (a tensor twice in a micro-step: never).
static int postpone(Zero *z, int t, const float *dout, const float *inp, size_t N, int IC, int OC, int trans_w,
                    int kept) {
    size_t n = kept & DW_DOUT_KEPT ? 0 : N * (size_t)OC, at = 0;
    if (!(kept & DW_INP_KEPT) || n > z->dring_cap || z->dq_n == z->m->ntensors) return 0;
    while (n && !dring_room(z, n, &at)) run_oldest(z);
    if (n) {
        z->m->bk->copy(z->dring + at, dout, n);
        z->dring_tail = at + n;
        dout = z->dring + at;
    }
    z->npostponed++;
    *postponed(z, z->dq_n++) = (ZeroPostponed){.t = t, .IC = IC, .OC = OC, .trans_w = trans_w, .dout = dout,
                                               .inp = inp, .N = N, .at = at, .n = n};
    return 1;
}

static void store_dweight(void *ctx, int t, int part, const float *dout, const float *inp, size_t N, int IC,
                          int OC, int trans_w, int kept) {
    Zero *z = ctx;
    if (part == 0) {    // first: the other rank may be waiting for this half
        dweight_half(z, t, 0, dout, inp, N, IC, OC, trans_w);
        run_ready(z);
        return;
    }
    run_ready(z);
    if (!z->dq_n && !z->fault_postpone && comm_flag_ready(z->comm, fflag(z, 1 - z->r, FLAG_FIRST, t), z->gen)) {
        dweight_half(z, t, 1, dout, inp, N, IC, OC, trans_w);
        return;
    }
    if (postpone(z, t, dout, inp, N, IC, OC, trans_w, kept)) return;
    run_all(z);     // every older one first: a wait on a newer one could deadlock (run_due)
    dweight_half(z, t, 1, dout, inp, N, IC, OC, trans_w);
}

// Floats of dout the ring holds: two layers' worth of the matrices' outputs
// (OC, the columns of their (in, out) layout) for micro-steps of `tokens` rows.
static size_t ring_floats(const Model *m, size_t tokens) {
    size_t most = 0;
    for (int l = 0; l < m->s.L; l++) {
        size_t cols = 0;
        for (int t = 0; t < m->ntensors; t++)
            if (m->tensors[t].layer == l && model_dweight_tensor(m, t)) cols += (size_t)m->tensors[t].shape[1];
        most = max_sz(most, cols);
    }
    return 2 * tokens * most;
}

// The tensors of bucket b the products do not reduce (biases, LayerNorms,
// experts): none for the embeddings (wte by its product, wpe by the encoder's rows).
static int count_packed(const Zero *z, const ZeroBucket *b, int *list, size_t *floats) {
    int n = 0;
    *floats = 0;
    if (b->u_lo == 0) return 0;
    for (int t = 0; t < z->m->ntensors; t++) {
        if (z->fuse[t] || !tensor_within(z, t, b->begin, b->end)) continue;
        if (list) list[n] = t;
        n++;
        *floats += z->m->tensors[t].numel;
    }
    return n;
}

// The packed floats of every bucket (zero_plan counts them with a Zero of its own).
static size_t pack_floats(Zero *z, int assign) {
    size_t at = 0;
    for (int i = 0; i < z->nbuckets; i++) {
        ZeroBucket *b = &z->buckets[i];
        size_t n;
        int k = count_packed(z, b, NULL, &n);
        if (assign) {
            b->npacked = k;
            b->packed = xcalloc(sizeof(int) * (size_t)(k ? k : 1), "packed gradient tensors");
            count_packed(z, b, b->packed, &n);
            b->pack_at = at;
            b->pack_n = n;
        }
        at += n;
    }
    return at;
}

static void mark_fused(Zero *z) {
    z->fuse = xcalloc((size_t)z->m->ntensors, "fused tensors");
    for (int t = 0; t < z->m->ntensors; t++) z->fuse[t] = (char)model_dweight_tensor(z->m, t);
}

// The staging's packed tensors zeroed (all the model writes there when fused).
static void zero_packed(Zero *z, ZeroBucket *b) {
    for (int i = 0; i < b->npacked; i++) {
        const ParamTensor *pt = &z->m->tensors[b->packed[i]];
        z->m->bk->zero(b->staging + (pt->offset - b->begin), pt->numel);
    }
}

static void fused_launch(Zero *z, ZeroBucket *b, const char *tag) {
    b->direct = z->first_micro;
    b->gen = z->gen;
    if (!b->pack_n) return;
    float *pk = z->pack + b->pack_at;
    for (int i = 0; i < b->npacked; i++) {
        const ParamTensor *pt = &z->m->tensors[b->packed[i]];
        z->m->bk->copy(pk, b->staging + (pt->offset - b->begin), pt->numel);
        pk += pt->numel;
    }
    comm_iallreduce_sum(z->g[b->group].comm, z->pack + b->pack_at, b->pack_n, tag, &b->req);
}

// Bucket b complete in this rank's shard: the other rank's products into it
// done, the packed tensors' sums added (or, first in the step, put) where
// they fall in the shard, and for the embeddings the encoder's rows.
static void fused_finish(Zero *z, ZeroBucket *b) {
    ZeroGroup *g = &z->g[b->group];
    run_due(z, b->begin, b->end);   // this rank's halves of it, for both shards
    comm_wait(g->comm, &b->req);
    int peer = 1 - z->r;
    size_t lo, hi;
    zero_group_part(g, g->r, b->begin, b->end, &lo, &hi);
    float *lay = grad_layout(z);
    for (int t = 0; t < z->m->ntensors; t++)
        if (z->fuse[t] && tensor_within(z, t, lo, hi))
            comm_flag_wait(z->comm, fflag(z, peer, FLAG_BOTH, t), b->gen, COMM_REDUCE_SCATTER, peer,
                           "gradient of ", z->m->tensors[t].name);
    const float *pk = z->pack + b->pack_at;
    for (int i = 0; i < b->npacked; i++) {
        const ParamTensor *pt = &z->m->tensors[b->packed[i]];
        size_t a = max_sz(pt->offset, lo), e = min_sz(pt->offset + pt->numel, hi);
        if (a < e && b->direct) z->m->bk->copy(lay + a, pk + (a - pt->offset), e - a);
        else if (a < e) z->m->bk->axpy(lay + a, pk + (a - pt->offset), 1.0f, e - a);
        pk += pt->numel;
    }
    if (b->u_lo != 0) return;
    const ParamTensor *wpe = &z->m->tensors[1];     // by the encoder's rows alone
    size_t a = max_sz(wpe->offset, lo), e = min_sz(wpe->offset + wpe->numel, hi);
    if (a < e && b->direct) z->m->bk->zero(lay + a, e - a);
    fold_embed_rows(z, lay + lo, lo, hi);
    atomic_store_explicit(fflag(z, z->r, FLAG_FOLDED, 0), b->gen, memory_order_release);
}

// Sets z->fused where it applies (zero.h), with its windows; collective over
// z->comm when it may apply.
static int fuse_grads(Zero *z, const ZeroConfig *zc) {
    size_t per;
    const char *no = !z->shared ? "the parameters are not node-shared"
                     : z->stage < 2 ? "stage 1 reduces once a step"
                     : z->p != 2 ? "not two ranks"
                     : z->ngroups != 1 ? "two parameter groups (experts)"
                     : z->offl.grads ? "gradients offloaded"
                     : z->m->bk->device_memory ? "device memory (flags must follow the products on the host)"
                     : !z->m->bk->matmul_dweight_rows ? "the backend has no matmul_dweight_rows"
                     : !early_applies(z, zc->tokens, &per) ? "the embeddings are not taken early (zero.h)" : NULL;
    z->fused = 0;
    if (!zc->fused_grads) return 0;
    if (no) {
        if (z->r == 0 && z->shared) log_info("zero: gradients not fused: %s\n", no);
        return 0;
    }
    char why[200];
    if (!comm_shared_alloc(z->comm, (z->own ? z->own : 1) * sizeof(float), &z->gsh, why, sizeof why)) {
        if (z->r == 0) log_info("zero: gradients not fused: %s\n", why);
        return 0;
    }
    if (!comm_shared_alloc(z->comm, flag_bytes(z), &z->fsh, why, sizeof why)) {
        comm_shared_free(&z->gsh);
        if (z->r == 0) log_info("zero: gradients not fused: %s\n", why);
        return 0;
    }
    memset(z->fsh.mine, 0, flag_bytes(z));
    memset(z->gsh.mine, 0, (z->own ? z->own : 1) * sizeof(float));  // alignment gaps stay 0
    comm_shared_sync(z->comm, &z->fsh);
    z->fused = 1;
    if (z->r == 0) log_info("zero: gradients fused: each matrix's summed by the two ranks' products (zero.h)\n");
    return 1;
}

// A bucket's reduction (not fused) is complete: fold this rank's part into the
// shard. The early embeddings' encoder rows join the reduced sum first, on every path.
static void reduced_finish(Zero *z, ZeroBucket *b) {
    ZeroGroup *g = &z->g[b->group];
    comm_wait(g->comm, &b->req);
    int rows = z->early && b->u_lo == 0;
    if (z->stage == 0 && rows) fold_embed_rows(z, z->grads + b->begin, b->begin, b->end);  // all-reduced in place
    if (z->stage >= 1) {
        size_t lo, hi;
        zero_group_part(g, g->r, b->begin, b->end, &lo, &hi);
        size_t at = shard_at(g, lo);
        float *got = z->offl.grads ? landing(z, b) : b->direct ? z->gshard + at : z->recv + at;
        if (rows) fold_embed_rows(z, got, lo, hi);
        if (z->offl.grads)  // on NVMe: accumulated (and, after the last micro-step, averaged) there
            offload_grad_put(g->off, lo - g->own_begin, hi - g->own_begin, got, z->first_micro,
                             z->last_micro, z->p > 1 ? 1.0f / (float)z->p : 1.0f);
        else if (!b->direct)
            z->m->bk->axpy(z->gshard + at, got, 1.0f, hi - lo);
    }
}

// Bucket b done in this rank's shard (either path); its staging slot freed.
static void bucket_finish(Zero *z, ZeroBucket *b) {
    if (!b->pending) return;
    if (z->fused) fused_finish(z, b);
    else reduced_finish(z, b);
    b->pending = 0;
    if (b->slot >= 0) z->gring_bucket[b->slot] = -1;
    b->slot = -1;
    b->staging = NULL;
}

// Ring slot k holds a bucket still gathering this micro-step's gradients.
static int ring_busy(const Zero *z, int k) {
    if (z->gring_bucket[k] < 0) return 0;
    const ZeroBucket *b = &z->buckets[z->gring_bucket[k]];
    return b->staging && !b->pending;
}

// Stage 2-3: a zeroed staging buffer for bucket bi, reusing the ring slot
// whose reduction is oldest (waiting for it only now). With two groups a
// bucket of each may gather at once: the slot of the other is skipped.
static void bucket_stage(Zero *z, int bi) {
    ZeroBucket *b = &z->buckets[bi];
    size_t n = b->end - b->begin;
    if (b->u_lo == 0) {
        // Fused: nothing of the embeddings is staged (wte by its product, wpe by the
        // encoder's rows): the model's pointers into it are the layout's own.
        b->staging = z->fused ? grad_layout(z) : z->gembed;
    } else {
        int k = z->gring_next;
        if (ring_busy(z, k)) k ^= 1;
        SYS_CHECK(!ring_busy(z, k), "zero: no free gradient staging slot for bucket %d", bi);
        z->gring_next = k ^ 1;
        if (z->gring_bucket[k] >= 0) bucket_finish(z, &z->buckets[z->gring_bucket[k]]);
        z->gring_bucket[k] = bi;
        b->slot = k;
        b->staging = z->gring[k];
    }
    if (z->fused) zero_packed(z, b);    // nothing else of it is written
    else z->m->bk->zero(b->staging, n);
}

static void bucket_launch(Zero *z, ZeroBucket *b, int bi) {
    char tag[48], lo_name[20], hi_name[20];
    (void)bi;
    unit_tag(z, b->u_lo, lo_name, sizeof lo_name);
    unit_tag(z, b->u_hi, hi_name, sizeof hi_name);
    if (b->u_lo == b->u_hi) snprintf(tag, sizeof tag, "grads %s", lo_name);
    else snprintf(tag, sizeof tag, "grads %s..%s", lo_name, hi_name);
    ZeroGroup *g = &z->g[b->group];
    size_t lo, hi;
    zero_group_part(g, g->r, b->begin, b->end, &lo, &hi);
    b->pending = 1;
    if (z->fused) {
        fused_launch(z, b, tag);
    } else if (z->stage == 0) {
        comm_iallreduce_sum(g->comm, z->grads + b->begin, b->end - b->begin, tag, &b->req);
    } else {
        const float *send = z->stage == 1 ? z->grads + b->begin : b->staging;
        fill_counts(g, b->begin, b->end);
        // The step's first reduction of the bucket (stage 1 has one) lands in
        // the shard itself: no fold, and no zeroing of the shard beforehand
        // (the buckets tile every group, so each step writes all of it).
        b->direct = !z->offl.grads && (z->stage == 1 || z->first_micro);
        float *recv = z->offl.grads ? landing(z, b) : (b->direct ? z->gshard : z->recv) + shard_at(g, lo);
        comm_ireduce_scatter_sum(g->comm, send, recv, g->counts, tag, &b->req);
    }
    // Off: wait at once. The early embeddings' bucket is folded in only once
    // the encoder's rows are there (store_embed_rows), as with overlap on.
    if (!z->overlap && z->early && b->u_lo == 0) comm_wait(g->comm, &b->req);
    else if (!z->overlap) bucket_finish(z, b);
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
// The embeddings' gradient, early (zero.h)

enum { XHDR = 3 };      // a rank's rows begin with its position offset, row count and T

static ZeroBucket *embed_bucket(Zero *z) { return &z->buckets[z->bucket_of[0]]; }

static int store_embed_early(void *ctx, size_t tokens) {
    Zero *z = ctx;
    SYS_CHECK(tokens <= z->etokens, "zero: %zu token rows in a micro-step, %zu planned", tokens, z->etokens);
    // Stages 0-1 reduce once, after the last micro-step: before it the encoder
    // adds its rows to the local sum as usual.
    if (z->stage <= 1 && !z->last_micro) return 0;
    ZeroBucket *b = embed_bucket(z);
    b->ready = b->u_hi - b->u_lo + 1;
    bucket_launch(z, b, z->bucket_of[0]);
    return 1;
}

// Layout element where the row id r (wte row r, or wpe row r - Vp) begins.
static size_t erow_at(const Zero *z, uint32_t r) {
    const Model *m = z->m;
    size_t C = (size_t)m->s.C, Vp = (size_t)m->s.Vp;
    return r < Vp ? m->tensors[0].offset + r * C : m->tensors[1].offset + (r - Vp) * C;
}

// The embeddings' elements [lo, hi) that this rank's reduced sum holds: its
// part of them, or all of them at stage 0 (an all-reduce).
static void embed_range(const Zero *z, size_t *lo, size_t *hi) {
    const ZeroBucket *b = &z->buckets[z->bucket_of[0]];
    if (z->stage == 0) {
        *lo = b->begin;
        *hi = b->end;
        return;
    }
    zero_group_part(&z->g[b->group], z->g[b->group].r, b->begin, b->end, lo, hi);
}

// Rows of tensor t (rows of C floats) that overlap [lo, hi).
static size_t rows_within(const Zero *z, int t, size_t lo, size_t hi) {
    size_t C = (size_t)z->m->s.C, at = z->m->tensors[t].offset, end = at + z->m->tensors[t].numel;
    size_t a = max_sz(at, lo), e = min_sz(end, hi);
    return a < e ? (e - at + C - 1) / C - (a - at) / C : 0;
}

// Rows esparse has room for: at most the distinct rows a micro-step brings
// (a token and a position per row of every rank), and those in this rank's range.
static size_t embed_row_cap(const Zero *z, size_t tokens) {
    size_t lo, hi;
    embed_range(z, &lo, &hi);
    size_t within = rows_within(z, 0, lo, hi) + rows_within(z, 1, lo, hi);
    return max_sz(min_sz(2 * (size_t)z->g[0].p * tokens, within), 1);
}

// Adds row (C floats) at row id r to esparse where it overlaps [lo, hi), in
// r's slot (taken the first time). The rows are few next to the vocabulary,
// so they are kept compact and folded row by row (a dense pass over the
// embeddings' part was ~50 ms a step at 124M on the rank that owns it, which
// the other ranks then waited for).
static void add_row(Zero *z, size_t lo, size_t hi, uint32_t r, const float *row) {
    SYS_CHECK(r < (uint32_t)(z->m->s.Vp + z->m->s.maxT), "zero: encoder row %u outside the embeddings", r);
    size_t C = (size_t)z->m->s.C, at = erow_at(z, r);
    size_t a = max_sz(at, lo), e = min_sz(at + C, hi);
    if (a >= e) return;
    if (z->eslot[r] < 0) {
        SYS_CHECK(z->nerow < z->ecap, "zero: more than %zu encoder rows in this rank's range", z->ecap);
        z->eslot[r] = (int32_t)z->nerow;
        z->erow[z->nerow++] = r;
    }
    float *dst = z->esparse + (size_t)z->eslot[r] * C;
    for (size_t j = a; j < e; j++) dst[j - at] += row[j - at];
}

// got (elements [lo, hi), the embeddings' reduced sum) += the rows summed in
// esparse, which are cleared for the next micro-step.
static void fold_embed_rows(Zero *z, float *got, size_t lo, size_t hi) {
    SYS_CHECK(z->esparse_due, "zero: the embeddings' reduction finished before the encoder's rows came");
    size_t C = (size_t)z->m->s.C;
    for (size_t i = 0; i < z->nerow; i++) {
        uint32_t r = z->erow[i];
        float *src = z->esparse + i * C;
        size_t at = erow_at(z, r), a = max_sz(at, lo), e = min_sz(at + C, hi);
        for (size_t j = a; j < e; j++) got[j - lo] += src[j - at];
        memset(src, 0, C * sizeof(float));
        z->eslot[r] = -1;
    }
    z->nerow = 0;
    z->esparse_due = 0;
}

// Every rank's encoder rows to every rank (small: p B T (C + 1) floats), each
// summing, in rank order, those that fall in its part of the embeddings.
static void store_embed_rows(void *ctx, const float *dout, const int32_t *tok, int B, int T, int pos0) {
    Zero *z = ctx;
    if (z->fused) run_all(z);     // the backward's end: every product done
    const Model *m = z->m;
    ZeroBucket *b = embed_bucket(z);
    ZeroGroup *g = &z->g[b->group];
    size_t C = (size_t)m->s.C, n = (size_t)B * (size_t)T, per = XHDR + z->etokens * (1 + C);
    float *mine = z->xrows + (size_t)g->r * per;
    mine[0] = (float)pos0;      // exact: early_applies bounds them under 2^24
    mine[1] = (float)n;
    mine[2] = (float)T;
    for (size_t i = 0; i < n; i++) mine[XHDR + i] = (float)tok[i];
    memcpy(mine + XHDR + z->etokens, dout, n * C * sizeof(float));
    for (int k = 0; k < g->p; k++) g->counts[k] = per;
    CommReq r;
    comm_iallgather(g->comm, z->xrows, g->counts, "encoder rows", &r);
    comm_wait(g->comm, &r);
    size_t lo, hi;
    embed_range(z, &lo, &hi);
    SYS_CHECK(z->nerow == 0, "zero: the encoder's rows came twice before the embeddings' reduction finished");
    uint32_t Vp = (uint32_t)m->s.Vp;
    for (int k = 0; k < g->p; k++) {
        const float *x = z->xrows + (size_t)k * per;
        size_t p0 = (size_t)x[0], nk = min_sz((size_t)x[1], z->etokens), tk = max_sz((size_t)x[2], 1);
        for (size_t i = 0; i < nk; i++) {
            const float *row = x + XHDR + z->etokens + i * C;
            add_row(z, lo, hi, (uint32_t)x[XHDR + i], row);
            add_row(z, lo, hi, Vp + (uint32_t)(p0 + i % tk), row);
        }
    }
    z->esparse_due = 1;
    if (!z->overlap) bucket_finish(z, b);   // its reduction was waited for at launch
}

// Whether the early embeddings apply to z's layout with micro-steps of
// `tokens` rows; *per: the floats each rank contributes to the exchange.
static int early_applies(const Zero *z, size_t tokens, size_t *per) {
    const Model *m = z->m;
    size_t lim = (size_t)1 << 24;   // token ids and positions travel as exact floats
    *per = XHDR + tokens * (1 + (size_t)m->s.C);
    int p = z->g[0].p;     // the embeddings' group
    return p >= 2 && tokens > 0 && (size_t)p * tokens <= (size_t)m->s.Vp &&
           (size_t)m->s.Vp < lim && (size_t)m->s.maxT < lim;
}

static void create_early(Zero *z, size_t tokens) {
    size_t per;
    if (!early_applies(z, tokens, &per)) return;
    z->etokens = tokens;
    z->xrows = alloc_floats(z, (size_t)z->g[0].p * per, "encoder gradient rows", &z->working_bytes);
    z->ecap = embed_row_cap(z, tokens);
    z->esparse = alloc_floats(z, z->ecap * (size_t)z->m->s.C, "encoder gradient rows", &z->working_bytes);
    z->m->bk->zero(z->esparse, z->ecap * (size_t)z->m->s.C);    // add_row adds into free slots
    size_t rows = (size_t)z->m->s.Vp + (size_t)z->m->s.maxT;
    z->erow = xcalloc(sizeof(uint32_t) * z->ecap, "encoder gradient row list");
    z->eslot = xmalloc(sizeof(int32_t) * rows, "encoder gradient row slots");
    for (size_t r = 0; r < rows; r++) z->eslot[r] = -1;
    z->early = 1;
}

// ---------------------------------------------------------------------------
// Parameter path

static ZeroSlot *slot_holding(Zero *z, int u) {
    for (int k = 0; k < ZSLOT_N; k++)
        if (z->slots[k].buf && z->slots[k].unit == u) return &z->slots[k];
    return NULL;
}

// Stage 3: issues the all-gather of unit u into slot s.
static void gather_start(Zero *z, ZeroSlot *s, int u) {
    ZeroGroup *g = &z->g[unit_group(z, u)];
    size_t ub = z->m->unit_begin[u], ue = z->m->unit_end[u], lo, hi;
    zero_group_part(g, g->r, ub, ue, &lo, &hi);
    if (z->offl.params) offload_param_fetch(g->off, u, s->buf + (lo - ub));   // own 1/N from host memory or NVMe
    else z->m->bk->copy(s->buf + (lo - ub), z->params + shard_at(g, lo), hi - lo);
    fill_counts(g, ub, ue);
    char tag[40];
    comm_iallgather(g->comm, s->buf, g->counts, unit_tag(z, u, tag, sizeof tag), &s->req);
    s->unit = u;
    s->held = 0;
}

static ZeroSlot *slot_for(Zero *z, int u) {
    int L = z->m->s.L;
    if (u == 0) return &z->slots[ZSLOT_EMBED];
    if (u == L + 1) return &z->slots[ZSLOT_FINAL];
    if (u > L + 1) return &z->slots[ZSLOT_EXPERT];
    ZeroSlot *a = &z->slots[ZSLOT_LAYER_A], *b = &z->slots[ZSLOT_LAYER_B];
    if (a->held) return b;
    if (b->held) return a;
    return a->req.active ? b : a;   // never clobber a prefetch in flight
}

static void prefetch(Zero *z, int u) {
    if (!z->prefetch || u < 1 || u > z->m->s.L + 1 || slot_holding(z, u)) return;
    ZeroSlot *s = slot_for(z, u);
    if (s->held || s->req.active) return;
    gather_start(z, s, u);
}

// Layer unit u's held experts (a unit of their own with expert parallelism),
// gathered while the layer's attention runs.
static void prefetch_experts(Zero *z, int u) {
    const Model *m = z->m;
    if (!z->prefetch || u < 1 || u > m->s.L || m->xunit[u - 1] == u) return;
    int ux = m->xunit[u - 1];
    ZeroSlot *s = &z->slots[ZSLOT_EXPERT];
    if (slot_holding(z, ux) || s->held || s->req.active) return;
    gather_start(z, s, ux);
}

static const float *store_params(void *ctx, int u, int phase) {
    Zero *z = ctx;
    poke(z);
    if (z->stage < 3) return z->params + z->m->unit_begin[u];
    if (z->shared) return (const float *)z->shm.base + z->m->unit_begin[u];   // every shard, back to back
    ZeroSlot *s = slot_holding(z, u);
    if (!s) {
        s = slot_for(z, u);
        gather_start(z, s, u);
    }
    comm_wait(z->g[unit_group(z, u)].comm, &s->req);
    int at_head = z->slots[ZSLOT_FINAL].held;    // the LM head: no layer follows
    s->held = 1;
    int L = z->m->s.L;
    prefetch_experts(z, u);
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
    for (int u = 1; u <= m->s.L; u++) n = max_sz(n, m->unit_end[u] - m->unit_begin[u]);
    return n;
}

static size_t largest_experts(const Model *m) {
    size_t n = 0;
    for (int u = m->s.L + 2; u < m->nunits; u++) n = max_sz(n, m->unit_end[u] - m->unit_begin[u]);
    return n;
}

static size_t largest_bucket(const Zero *z) {
    size_t n = 0;
    for (int i = 0; i + 1 < z->nbuckets; i++) n = max_sz(n, z->buckets[i].end - z->buckets[i].begin);
    return n;
}

// Bytes group g sends per optimizer step (no evaluation).
static void plan_sent(const Zero *z, const ZeroGroup *g, int stage, int accum, double *sent) {
    if (g->p <= 1) return;
    int gathers = !z->shared;     // a node-shared window is read in place
    const Model *m = z->m;
    size_t lo, hi, f = sizeof(float), n = g->end - g->begin;
    zero_group_part(g, g->r, g->begin, g->end, &lo, &hi);
    double rest = (double)(n - (hi - lo)) * (double)f;   // what a reduce-scatter or all-gather sends
    if (stage == 0) sent[COMM_ALLREDUCE] += 2.0 * (g->p - 1) / g->p * (double)n * (double)f;
    if (stage >= 1) sent[COMM_REDUCE_SCATTER] += rest * (stage == 1 ? 1 : accum);
    if ((stage == 1 || stage == 2) && gathers) sent[COMM_ALLGATHER] += rest;
    if (stage == 3 && gathers) {
        // Each unit twice per micro-step, but ln_f once (held from forward into backward).
        double ag = 0.0;
        for (int u = 0; u < m->nunits; u++) {
            if (&z->g[unit_group(z, u)] != g) continue;
            size_t ub = m->unit_begin[u], ue = m->unit_end[u];
            zero_group_part(g, g->r, ub, ue, &lo, &hi);
            ag += (double)(ue - ub - (hi - lo)) * (double)f * (u == m->s.L + 1 ? 1 : 2);
        }
        sent[COMM_ALLGATHER] += ag * accum;
    }
}

// Gradients on NVMe (one group): the largest part of this rank in a layer
// bucket and in the embeddings bucket (the landing buffers' sizes).
static void landing_sizes(const Zero *z, size_t *most, size_t *emb) {
    *most = *emb = 0;
    for (int i = 0; i < z->nbuckets; i++) {
        const ZeroBucket *b = &z->buckets[i];
        const ZeroGroup *g = &z->g[b->group];
        size_t lo, hi;
        zero_group_part(g, g->r, b->begin, b->end, &lo, &hi);
        if (b->u_lo == 0) *emb = hi - lo;
        else *most = max_sz(*most, hi - lo);
    }
}

// What the offload engine can hold at this stage and with these groups.
static void check_offload(const ZeroOffload *off, int stage, int ngroups) {
    SYS_CHECK(!off->params || (stage == 3 && off->moments), "zero: parameters offloaded at stage %d", stage);
    SYS_CHECK(!off->grads || (stage >= 2 && ngroups == 1 && off->moments),
              "zero: gradients offloaded at stage %d with %d groups", stage, ngroups);
}

void zero_plan(const Model *m, const ZeroConfig *zc, int p, int r, int accum, ZeroPlan *plan) {
    zero_plan_offload(m, zc, NULL, p, r, accum, plan);
}

// Whether a Zero keeps its receive buffer: only stages 2-3 reduce more than
// once a step (every micro-step), and only in memory (on NVMe they land in gland).
static int keeps_recv(int64_t stage, int offl_grads, int fused, int64_t accum) {
    return stage >= 2 && !offl_grads && !fused && accum > 1;
}

void zero_plan_offload(const Model *m, const ZeroConfig *zc, const ZeroOffload *off, int p, int r, int accum,
                       ZeroPlan *plan) {
    Zero z;     // just the fields the partition helpers read
    memset(&z, 0, sizeof z);
    z.m = m;
    z.stage = zc->stage;
    z.shared = zc->shared;
    z.N = m->nparams;
    if (off) z.offl = *off;
    layout_groups(&z, p, r);
    check_offload(&z.offl, z.stage, z.ngroups);
    build_buckets(&z, zc->bucket_mb);
    size_t f = sizeof(float), own = z.own, N = z.N, most, emb;
    memset(plan, 0, sizeof *plan);
    plan->params = (zc->stage == 3 ? (z.offl.params ? 0 : own) : z.shared ? own : N) * f;
    plan->grads = (zc->stage <= 1 ? N : 0) * f + (zc->stage >= 1 && !z.offl.grads ? (own ? own : 1) * f : 0);
    plan->optim = z.offl.moments ? 0 : 2 * own * f;
    landing_sizes(&z, &most, &emb);
    // The receive buffer: the first reduction of a step lands in the shard
    // itself, so only stages 2-3 with micro-steps after it need one.
    if (zc->stage >= 1 && z.offl.grads) plan->working += (2 * max_sz(most, 1) + max_sz(emb, 1)) * f;
    if (keeps_recv(zc->stage, z.offl.grads, zc->fused, accum)) plan->working += (own ? own : 1) * f;
    if (zc->fused) {    // the packed other tensors (fused gradients)
        mark_fused(&z);
        plan->working += (max_sz(pack_floats(&z, 0), 1) + max_sz(ring_floats(m, zc->tokens), 1)) * f;
    }
    if (zc->stage >= 2) plan->working += (2 * largest_bucket(&z) + (zc->fused ? 0 : m->unit_end[0])) * f;
    if (zc->stage == 3 && !z.shared) {
        size_t fin = m->unit_end[m->s.L + 1] - m->unit_begin[m->s.L + 1];
        plan->working += (2 * max_sz(largest_layer(m), 1) + max_sz(m->unit_end[0], 1) + max_sz(fin, 1)) * f;
        if (z.ngroups > 1) plan->working += max_sz(largest_experts(m), 1) * f;
    }
    // MPI's reductions stage a message-sized temporary of their own (MPICH's
    // reduce-scatter and all-reduce do): one bucket's worth when p > 1. Not
    // at stages 1-3 on two ranks, whose reduce-scatter is comm.c's own, point
    // to point into the shard (the dp group's only float reduction there).
    if (p > 1 && (zc->stage == 0 || p > 2)) plan->mpi_temp = max_sz(largest_bucket(&z), m->unit_end[0]) * f;
    if (zc->fused) plan->mpi_temp = max_sz(pack_floats(&z, 0), 1) * f;    // the packed all-reduces alone
    for (int k = 0; k < z.ngroups; k++) plan_sent(&z, &z.g[k], zc->stage, accum, plan->sent);
    if (zc->fused) {    // no reduce-scatter: the packed tensors' all-reduce instead
        plan->sent[COMM_REDUCE_SCATTER] = 0.0;
        plan->sent[COMM_ALLREDUCE] += 2.0 * (p - 1) / p * (double)pack_floats(&z, 0) * (double)f * accum;
        free(z.fuse);
    }
    size_t per;
    if (early_applies(&z, zc->tokens, &per)) {   // the encoder rows' exchange (create_early)
        plan->working += ((size_t)p * per + embed_row_cap(&z, zc->tokens) * (size_t)m->s.C) * f;
        // Stages 0-1 exchange the rows once a step (the last micro-step), 2-3 every micro-step.
        plan->sent[COMM_ALLGATHER] += (double)(p - 1) * (double)per * (double)f * (zc->stage <= 1 ? 1 : accum);
    }
    free(z.buckets);
    free(z.bucket_of);
}

// ---------------------------------------------------------------------------
// Life cycle

// Node-shared parameters: where every rank of the one group shares this node
// and the parameters live in host memory, their shards sit back to back in
// one MPI-3 shared window (comm_shared_alloc): the whole flat layout, which
// every rank reads in place, while each still updates only its own shard. On
// one node this moves no parameter bytes at all: the all-gathers of stages
// 1-2 and ZeRO-3's per-layer gathers (their copies were CPU work that no
// overlap could hide on a node whose cores all compute) become barriers at
// the two points a shard changes hands (zero_step's start and end), and the
// node holds one copy of the parameters, as ZeRO-3 across the node would.
// Sets z->shared; returns it (collective over z->comm when it may apply).
static int share_params(Zero *z, const ZeroConfig *zc) {
    z->shared = 0;
    if (!zc->node_shared || z->stage < 1 || z->p < 2 || z->ngroups != 1 || z->offl.params || z->m->bk->device_memory)
        return 0;
    char why[200];
    z->shared = comm_shared_alloc(z->comm, z->own * sizeof(float), &z->shm, why, sizeof why);
    if (!z->shared && z->r == 0) log_info("zero: parameters not node-shared: %s\n", why);
    return z->shared;
}

void zero_create(Zero *z, const ZeroConfig *zc, Comm *comm, const Model *m, const OptimConfig *oc,
                 int64_t steps) {
    zero_create_ep(z, zc, comm, NULL, m, oc, steps);
}

void zero_create_ep(Zero *z, const ZeroConfig *zc, Comm *comm, Comm *xcomm, const Model *m, const OptimConfig *oc,
                    int64_t steps) {
    zero_create_offload(z, zc, comm, xcomm, m, oc, steps, NULL);
}

// Host copies of the states for checkpoints and weight files: on cuda
// buffers of their own (offloaded states: mapped when needed, zero_host_buffers),
// on cpu the states themselves.
static void host_copies(Zero *z) {
    if (z->m->bk->device_memory) {
        size_t np = z->stage == 3 ? z->own : z->N;
        if (!z->offl.params) z->host_params = xcalloc((np ? np : 1) * sizeof(float), "host copy of parameters");
        for (int k = 0; k < z->ngroups && !z->offl.moments; k++) {
            size_t n = z->g[k].own_end - z->g[k].own_begin;
            z->g[k].host_m = xcalloc((n ? n : 1) * sizeof(float), "host copy of AdamW moments");
            z->g[k].host_v = xcalloc((n ? n : 1) * sizeof(float), "host copy of AdamW moments");
        }
    } else {
        z->host_params = z->params;
        for (int k = 0; k < z->ngroups; k++) {
            z->g[k].host_m = z->g[k].optim->m;
            z->g[k].host_v = z->g[k].optim->v;
        }
    }
    z->host_m = z->g[0].host_m;
    z->host_v = z->g[0].host_v;
}

void zero_create_offload(Zero *z, const ZeroConfig *zc, Comm *comm, Comm *xcomm, const Model *m,
                         const OptimConfig *oc, int64_t steps, const ZeroOffload *off) {
    memset(z, 0, sizeof *z);
    if (off) z->offl = *off;
    z->stage = zc->stage;
    z->overlap = zc->overlap;
    z->prefetch = zc->prefetch && zc->overlap;
    z->comm = comm;
    z->m = m;
    z->p = comm->size;
    z->r = comm->rank;
    z->N = m->nparams;
    layout_groups(z, z->p, z->r);
    z->g[0].comm = comm;
    z->g[0].optim = &z->optim;
    if (z->ngroups > 1) {
        SYS_CHECK(xcomm && xcomm->size == z->g[1].p && xcomm->rank == z->g[1].r,
                  "zero: the experts' group must be rank %d of %d (r %% ep of %d data-parallel ranks), not %d of %d",
                  z->g[1].r, z->g[1].p, z->p, xcomm ? xcomm->rank : -1, xcomm ? xcomm->size : 0);
        z->g[1].comm = xcomm;
        z->g[1].optim = &z->xoptim;
    }
    for (int k = 0; k < z->ngroups; k++) z->g[k].counts = xcalloc(sizeof(size_t) * (size_t)z->g[k].p, "zero counts");
    check_offload(&z->offl, z->stage, z->ngroups);
    size_t own = z->own;
    build_buckets(z, zc->bucket_mb);

    // What the offload engine holds is not allocated here (zero_plan_offload counts the same).
    ZeroConfig zcc = *zc;
    zcc.shared = share_params(z, zc);
    zcc.fused = fuse_grads(z, zc);
    if (z->shared) {
        z->params = (float *)(z->stage == 3 ? z->shm.mine : z->shm.base);
        z->state_bytes += own * sizeof(float);
    } else if (!z->offl.params) {
        z->params = alloc_floats(z, z->stage == 3 ? own : z->N, "parameters", &z->state_bytes);
    }
    if (z->stage <= 1) z->grads = alloc_floats(z, z->N, "gradients", &z->state_bytes);
    if (z->fused) {
        z->gshard = (float *)z->gsh.mine;
        z->state_bytes += (own ? own : 1) * sizeof(float);
        mark_fused(z);
        z->pack = alloc_floats(z, max_sz(pack_floats(z, 1), 1), "packed gradients", &z->working_bytes);
        z->dq = xcalloc(sizeof *z->dq * (size_t)m->ntensors, "postponed gradient products");
        z->dring_cap = ring_floats(m, zc->tokens);
        z->fault_postpone = zc->fault_postpone;
        // no collective moves the ring: not registered with comm (alloc_floats)
        size_t ring_bytes = max_sz(z->dring_cap, 1) * sizeof(float);
        z->dring = z->m->bk->alloc(ring_bytes, "postponed products' outputs");
        z->working_bytes += ring_bytes;
    } else if (z->stage >= 1 && !z->offl.grads) {
        z->gshard = alloc_floats(z, own ? own : 1, "gradient shard", &z->state_bytes);
        if (keeps_recv(z->stage, z->offl.grads, 0, zc->accum))     // for micro-steps after the first (zero_plan_offload)
            z->recv = alloc_floats(z, own ? own : 1, "reduce-scatter buffer", &z->working_bytes);
    }
    if (z->offl.grads) {    // a landing buffer per gradient staging slot (two layer buckets, the embeddings)
        size_t most, emb;
        landing_sizes(z, &most, &emb);
        for (int k = 0; k < 3; k++)
            z->gland[k] = alloc_floats(z, max_sz(k < 2 ? most : emb, 1), "gradient landing", &z->working_bytes);
    }
    OptimConfig occ = *oc;
    occ.offloaded = z->offl.moments;
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        optim_create(g->optim, &occ, steps, g->own_begin, g->own_end, m->bk);
        if (!z->offl.moments) z->state_bytes += 2 * (g->own_end - g->own_begin) * sizeof(float);
    }

    size_t max_layer = largest_layer(m), max_bucket = largest_bucket(z);
    if (z->stage >= 2) {
        for (int k = 0; k < 2; k++) {
            z->gring[k] = alloc_floats(z, max_bucket, "gradient staging", &z->working_bytes);
            z->gring_bucket[k] = -1;
        }
        if (!z->fused) z->gembed = alloc_floats(z, m->unit_end[0], "embedding gradient staging", &z->working_bytes);
    }
    for (int k = 0; k < ZSLOT_N; k++) z->slots[k].unit = -1;
    if (z->stage == 3 && !z->shared) {
        size_t caps[ZSLOT_N] = {max_layer, max_layer, m->unit_end[0],
                                m->unit_end[m->s.L + 1] - m->unit_begin[m->s.L + 1], largest_experts(m)};
        for (int k = 0; k < ZSLOT_N; k++) {
            if (k == ZSLOT_EXPERT && z->ngroups == 1) continue;
            z->slots[k].cap = caps[k];
            z->slots[k].buf = alloc_floats(z, caps[k] ? caps[k] : 1, "gathered parameters", &z->working_bytes);
        }
    }
    create_early(z, zc->tokens);
    ZeroPlan plan;
    zero_plan_offload(m, &zcc, &z->offl, z->p, z->r, zc->accum > 1 ? (int)zc->accum : 1, &plan);
    SYS_CHECK(plan.params + plan.grads + plan.optim == z->state_bytes && plan.working == z->working_bytes,
              "zero_plan disagrees with zero_create: %zu+%zu vs %zu+%zu bytes",
              plan.params + plan.grads + plan.optim, plan.working, z->state_bytes, z->working_bytes);
    host_copies(z);
    z->store = (ParamStore){.ctx = z, .params = store_params, .release = store_release,
                            .grads = store_grads, .grads_ready = store_grads_ready};
    if (z->early) {
        z->store.embed_early = store_embed_early;
        z->store.embed_rows = store_embed_rows;
    }
    if (z->fused) {
        z->store.takes_dweight = store_takes_dweight;
        z->store.dweight = store_dweight;
    }
}

static void offload_drop_host(Zero *z);

void zero_free(Zero *z) {
    const Backend *bk = z->m->bk;
    bk->set_tile_hook(NULL, NULL);
    if (offloaded(z)) offload_drop_host(z);    // a checkpoint's mapped copies (NULL after)
    for (int k = 0; k < z->ngroups; k++) {
        if (bk->device_memory) {
            free(z->g[k].host_m);
            free(z->g[k].host_v);
        }
        optim_free(z->g[k].optim);
        free(z->g[k].counts);
    }
    if (bk->device_memory) free(z->host_params);
    if (z->shared) comm_shared_free(&z->shm);
    else bk->release(z->params);
    bk->release(z->grads);
    if (z->fused) {
        comm_shared_free(&z->gsh);
        comm_shared_free(&z->fsh);
        bk->release(z->pack);
        bk->release(z->dring);
        free(z->dq);
        free(z->fuse);
    } else {
        bk->release(z->gshard);
    }
    for (int i = 0; i < z->nbuckets; i++) free(z->buckets[i].packed);
    bk->release(z->recv);
    for (int k = 0; k < 3; k++) bk->release(z->gland[k]);
    for (int k = 0; k < ZSLOT_N; k++) bk->release(z->slots[k].buf);
    bk->release(z->gring[0]);
    bk->release(z->gring[1]);
    bk->release(z->gembed);
    bk->release(z->xrows);
    bk->release(z->esparse);
    free(z->erow);
    free(z->eslot);
    free(z->buckets);
    free(z->bucket_of);
    memset(z, 0, sizeof *z);
}

void zero_init_weights(Zero *z, uint64_t seed, double std) {
    if (z->offl.params) {   // each group's shard, where its Offload keeps it
        for (int k = 0; k < z->ngroups; k++) offload_init_params(z->g[k].off, z->m, seed, std);
        return;
    }
    if (z->shared) {    // each rank its own shard of the one copy
        model_init_range(z->m, z->params + (z->stage == 3 ? 0 : z->own_begin), z->own_begin, z->own_end, seed, std);
        comm_shared_sync(z->comm, &z->shm);
        return;
    }
    if (z->stage < 3) {
        model_init_range(z->m, z->host_params, 0, z->N, seed, std);
        if (z->m->bk->device_memory) z->m->bk->from_host(z->params, z->host_params, z->N);
        return;
    }
    for (int k = 0; k < z->ngroups; k++)
        model_init_range(z->m, z->host_params + z->g[k].at, z->g[k].own_begin, z->g[k].own_end, seed, std);
    if (z->m->bk->device_memory) z->m->bk->from_host(z->params, z->host_params, z->own);
}

// Offloaded states: host copies made for a checkpoint (or a resume), dropped
// at the next step. Mapped, not malloc'd: untouched pages stay out of the
// resident set (host_cap_mb), and unmapping returns them at once.
static size_t host_bytes(size_t n) { return (n ? n : 1) * sizeof(float); }

static float *host_map(size_t n) {
    void *p = mmap(NULL, host_bytes(n), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    SYS_CHECK(p != MAP_FAILED, "out of memory for a %zu-byte host copy of offloaded states", host_bytes(n));
    return p;
}

static void host_unmap(float **p, size_t n) {
    if (*p) munmap(*p, host_bytes(n));
    *p = NULL;
}

void zero_host_buffers(Zero *z) {
    if (!offloaded(z)) return;
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        if (!g->host_m) g->host_m = host_map(g->own_end - g->own_begin);
        if (!g->host_v) g->host_v = host_map(g->own_end - g->own_begin);
    }
    if (z->offl.params && !z->host_params) z->host_params = host_map(z->own);   // stage 3: every group's shard
    z->host_m = z->g[0].host_m;
    z->host_v = z->g[0].host_v;
}

static void offload_pull(Zero *z) {
    zero_host_buffers(z);
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        offload_get(g->off, OFF_M, g->host_m);
        offload_get(g->off, OFF_V, g->host_v);
        if (z->offl.params) offload_get(g->off, OFF_P, z->host_params + g->at);
    }
}

static void offload_drop_host(Zero *z) {
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        host_unmap(&g->host_m, g->own_end - g->own_begin);
        host_unmap(&g->host_v, g->own_end - g->own_begin);
    }
    if (z->offl.params) host_unmap(&z->host_params, z->own);
    z->host_m = z->host_v = NULL;
}

void zero_attach_offload(Zero *z, int k, struct Offload *off) {
    SYS_CHECK(k >= 0 && k < z->ngroups && offloaded(z), "zero: no group %d to offload", k);
    ZeroGroup *g = &z->g[k];
    SYS_CHECK(off->begin == g->own_begin && off->n == g->own_end - g->own_begin &&
              (off->params_tier != OFFLOAD_NONE) == z->offl.params && off->grads_nvme == z->offl.grads,
              "zero: group %d's Offload was made for another range or other arrays", k);
    g->off = off;
    if (z->offl.grads) {
        size_t most, emb;
        landing_sizes(z, &most, &emb);
        offload_grad_buffers(off, max_sz(most, emb));
    }
    if (!z->offl.params) return;
    int nu = z->m->nunits;      // each unit's part in this group's shard (empty for the other group's units)
    size_t *lo = xmalloc(sizeof(size_t) * (size_t)nu, "units"), *hi = xmalloc(sizeof(size_t) * (size_t)nu, "units");
    for (int u = 0; u < nu; u++) {
        lo[u] = hi[u] = g->own_begin;
        if (unit_group(z, u) == k) zero_group_part(g, g->r, z->m->unit_begin[u], z->m->unit_end[u], &lo[u], &hi[u]);
    }
    offload_set_units(off, nu, lo, hi);
    free(lo);
    free(hi);
}

void zero_pull_states(Zero *z) {
    const Backend *bk = z->m->bk;
    if (offloaded(z)) {
        offload_pull(z);
        if (bk->device_memory && !z->offl.params) bk->to_host(z->host_params, z->params, z->stage == 3 ? z->own : z->N);
        return;
    }
    if (!bk->device_memory) return;
    bk->to_host(z->host_params, z->params, z->stage == 3 ? z->own : z->N);
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        bk->to_host(g->host_m, g->optim->m, g->own_end - g->own_begin);
        bk->to_host(g->host_v, g->optim->v, g->own_end - g->own_begin);
    }
}

void zero_push_states(Zero *z) {
    const Backend *bk = z->m->bk;
    z->xoptim.t = z->optim.t;   // a checkpoint sets group 0's step count; every group has taken as many
    if (offloaded(z)) {
        if (bk->device_memory && !z->offl.params)
            bk->from_host(z->params, z->host_params, z->stage == 3 ? z->own : z->N);
        for (int k = 0; k < z->ngroups; k++) {
            ZeroGroup *g = &z->g[k];
            offload_put(g->off, OFF_M, g->host_m);
            offload_put(g->off, OFF_V, g->host_v);
            if (z->offl.params) offload_put(g->off, OFF_P, z->host_params + g->at);
        }
        offload_drop_host(z);
        return;
    }
    if (!bk->device_memory) return;
    bk->from_host(z->params, z->host_params, z->stage == 3 ? z->own : z->N);
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        bk->from_host(g->optim->m, g->host_m, g->own_end - g->own_begin);
        bk->from_host(g->optim->v, g->host_v, g->own_end - g->own_begin);
    }
}

const ParamStore *zero_store(Zero *z) { return &z->store; }

void zero_begin_step(Zero *z, int64_t step) {
    if (z->overlap && comm_polls(z->comm) && z->p > 1) z->m->bk->set_tile_hook(tile_poke, z);
    comm_set_step(z->comm, step);
    if (z->ngroups > 1) comm_set_step(z->g[1].comm, step);
    if (z->grads) z->m->bk->zero(z->grads, z->N);
}

void zero_begin_micro(Zero *z, int micro, int accum) {
    if (z->offl.grads)  // gradients on NVMe take each micro-step's buckets whole, in order
        for (int i = 0; i < z->nbuckets; i++) bucket_finish(z, &z->buckets[i]);
    SYS_CHECK(!z->fused || z->dq_n == 0, "zero: %d gradient products postponed past their micro-step", z->dq_n);
    z->gen++;   // fused gradients: the flags' generation
    SYS_CHECK(micro == 0 || z->recv || z->stage <= 1 || z->offl.grads || z->fused,
              "zero: micro-step %d of %d, but created for one (ZeroConfig.accum)", micro + 1, accum);
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
    // Every group by the data-parallel count: each token of the step counted once.
    float inv = 1.0f / (float)z->p;
    double ss;
    if (z->offl.grads) {    // on NVMe (one group): averaged and summed as they were written
        ss = offload_grad_sumsq(z->g[0].off);
    } else if (z->stage == 0) {
        if (z->p > 1) z->m->bk->scale_inplace(z->grads, inv, z->N);
        if (z->ngroups == 1) return sqrt(z->m->bk->sumsq(z->grads, z->N));
        // Each rank adds its partition's part of every group: each element once over the job.
        ss = 0.0;
        for (int k = 0; k < z->ngroups; k++) {
            size_t lo, hi;
            zero_group_part(&z->g[k], z->g[k].r, z->g[k].begin, z->g[k].end, &lo, &hi);
            ss += z->m->bk->sumsq(z->grads + lo, hi - lo);
        }
    } else {
        if (z->p > 1) z->m->bk->scale_inplace(z->gshard, inv, z->own);
        ss = z->m->bk->sumsq(z->gshard, z->own);
    }
    comm_allreduce_sum_f64(z->comm, &ss, 1, "grad norm");
    return sqrt(ss);
}

// AdamW on group g's owned range: in memory, or streamed from its Offload
// (offload.h); params / grads NULL where they are off the backend.
static void update_group(Zero *z, ZeroGroup *g, float *params, float *grads, double lr, float grad_scale) {
    if (!g->off) {
        optim_update(g->optim, z->m, params, grads, lr, grad_scale);
        return;
    }
    offload_update(g->off, z->m, g->optim, params, grads, lr, grad_scale);
}

void zero_step(Zero *z, double lr, float grad_scale) {
    if (offloaded(z) && z->g[0].host_m) offload_drop_host(z);   // a checkpoint's copies
    comm_shared_sync(z->comm, &z->shm);     // node-shared: no rank still reads this step's parameters
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        if (z->stage == 0) {
            update_group(z, g, z->params + g->begin, z->grads + g->begin, lr, grad_scale);
            continue;
        }
        float *mine = z->offl.params ? NULL : z->stage == 3 ? z->params + g->at : z->params + g->own_begin;
        update_group(z, g, mine, z->offl.grads ? NULL : z->gshard + g->at, lr, grad_scale);
    }
    if (z->stage == 0 || (z->stage == 3 && !z->shared)) return;
    zero_gather_params(z, "updated parameters");
}

void zero_gather_params(Zero *z, const char *tag) {
    if (z->shared) {    // every rank's shard is in place already: make them visible
        comm_shared_sync(z->comm, &z->shm);
        return;
    }
    if (z->stage == 3) return;
    CommReq r[ZERO_MAX_GROUPS];
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        fill_counts(g, g->begin, g->end);
        comm_iallgather(g->comm, z->params + g->begin, g->counts, tag, &r[k]);
    }
    for (int k = 0; k < z->ngroups; k++) comm_wait(z->g[k].comm, &r[k]);
}

int zero_reads_partition(const Zero *z) {
    return z->stage == 0 && z->p > 1 && !z->m->bk->device_memory && !z->offl.moments;
}

// Stage 0: every rank's partition of the parameters and moments to every rank of its group.
static void gather_states(Zero *z, const char *tag) {
    CommReq r[ZERO_MAX_GROUPS][3];
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        fill_counts(g, g->begin, g->end);     // the v-collectives copy the counts: one array serves all three
        comm_iallgather(g->comm, z->params + g->begin, g->counts, tag, &r[k][0]);
        comm_iallgather(g->comm, g->optim->m, g->counts, tag, &r[k][1]);    // stage 0: [begin, end) of the group
        comm_iallgather(g->comm, g->optim->v, g->counts, tag, &r[k][2]);
    }
    for (int k = 0; k < z->ngroups; k++)
        for (int j = 0; j < 3; j++) comm_wait(z->g[k].comm, &r[k][j]);
}

void zero_share_loaded(Zero *z) {
    if (z->shared || z->stage == 1 || z->stage == 2) zero_gather_params(z, "checkpoint parameters");
    else if (zero_reads_partition(z)) gather_states(z, "checkpoint states");
}
