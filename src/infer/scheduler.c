// scheduler.c: admission, KV blocks, pass composition and sampling (scheduler.h).
#include "scheduler.h"
#include "log.h"
#include "sysutil.h"

#include <stdlib.h>
#include <string.h>

static size_t msg_length(const Engine *e, int max_blocks) {
    return 3 + (size_t)e->Nmax * (2 + (size_t)max_blocks) + (size_t)e->Smax;
}

void sched_create(Sched *s, const SchedOptions *o, const SchedHooks *h, Comm *comm, Engine *e, Sampler *smp) {
    memset(s, 0, sizeof *s);
    s->o = *o;
    s->h = *h;
    s->comm = comm;
    s->e = e;
    s->smp = smp;
    int nb = o->max_batch;
    s->running = xcalloc(sizeof(Seq *) * (size_t)nb, "running sequences");
    s->tables = xcalloc(sizeof(int32_t) * (size_t)nb * (size_t)o->max_blocks, "block tables");
    s->free_slots = xmalloc(sizeof(int) * (size_t)nb, "slots");
    for (int i = nb - 1; i >= 0; i--) s->free_slots[s->nfree_slots++] = i;
    s->free_blocks = xmalloc(sizeof(int32_t) * (size_t)o->kv_blocks, "free blocks");
    for (int b = o->kv_blocks - 1; b >= 0; b--) s->free_blocks[s->nfree++] = b;
    s->msg_len = msg_length(e, o->max_blocks);
    s->msg = xcalloc(s->msg_len * sizeof(int32_t), "pass message");
    s->sample_seq = xcalloc(sizeof(Seq *) * (size_t)e->Smax, "sampled sequences");
    s->logits = xmalloc(sizeof(float) * (size_t)e->Smax * (size_t)e->m.s.Vp, "logits");
}

void sched_free(Sched *s) {
    free(s->running);
    free(s->tables);
    free(s->free_slots);
    free(s->free_blocks);
    free(s->msg);
    free(s->sample_seq);
    free(s->logits);
    memset(s, 0, sizeof *s);
}

int sched_blocks(const Sched *s, int n) { return (n + s->o.kv_block - 1) / s->o.kv_block; }
int sched_busy(const Sched *s) { return s->nwaiting > 0 || s->nrunning > 0; }
int sched_blocks_used(const Sched *s) { return s->o.kv_blocks - s->nfree; }

// Tokens q still has to feed before its next token can be sampled (1: a decode).
static int left(const Seq *q) { return q->plen + q->nout - q->fed; }

// ---------------------------------------------------------------------------
// Queues

static void wait_push(Sched *s, Seq *q, int front) {
    q->state = SEQ_WAITING;
    q->prev = q->next = NULL;
    if (!s->wait_head) {
        s->wait_head = s->wait_tail = q;
    } else if (front) {
        q->next = s->wait_head;
        s->wait_head->prev = q;
        s->wait_head = q;
    } else {
        q->prev = s->wait_tail;
        s->wait_tail->next = q;
        s->wait_tail = q;
    }
    s->nwaiting++;
}

static void wait_unlink(Sched *s, Seq *q) {
    if (q->prev) q->prev->next = q->next;
    else s->wait_head = q->next;
    if (q->next) q->next->prev = q->prev;
    else s->wait_tail = q->prev;
    q->prev = q->next = NULL;
    s->nwaiting--;
}

// Takes q out of the running set (order kept), its blocks and slot back to the pools.
static void run_remove(Sched *s, Seq *q) {
    int i = 0;
    while (i < s->nrunning && s->running[i] != q) i++;
    SYS_CHECK(i < s->nrunning, "scheduler: a running sequence is missing");
    memmove(s->running + i, s->running + i + 1, sizeof(Seq *) * (size_t)(s->nrunning - i - 1));
    s->nrunning--;
    if (s->next_decode > i) s->next_decode--;
    if (s->next_decode >= s->nrunning) s->next_decode = 0;
    for (int k = 0; k < q->nblocks; k++) s->free_blocks[s->nfree++] = q->table[k];
    q->nblocks = 0;
    s->free_slots[s->nfree_slots++] = q->slot;
    q->slot = -1;
    q->table = NULL;
}

void sched_submit(Sched *s, Seq *q) {
    q->nout = q->fed = q->nblocks = q->preemptions = 0;
    q->slot = -1;
    q->table = NULL;
    wait_push(s, q, 0);
}

static void retire(Sched *s, Seq *q, int reason, double now) {
    if (q->state == SEQ_RUNNING) run_remove(s, q);
    else if (q->state == SEQ_WAITING) wait_unlink(s, q);
    q->state = SEQ_DONE;
    s->h.on_done(s->h.ctx, q, reason, now);
}

void sched_cancel(Sched *s, Seq *q, double now) {
    if (q->state == SEQ_RUNNING || q->state == SEQ_WAITING) retire(s, q, FINISH_CANCELLED, now);
}

// ---------------------------------------------------------------------------
// Admission and blocks

// Adds blocks to q until it holds n tokens; 0, or -1 when the pool is dry.
static int grow(Sched *s, Seq *q, int n) {
    int need = sched_blocks(s, n);
    while (q->nblocks < need) {
        if (s->nfree == 0) return -1;
        q->table[q->nblocks++] = s->free_blocks[--s->nfree];
    }
    return 0;
}

// First come, first served while slots and blocks last; static batches only
// into an empty batch. Lazy: the blocks of what is known (prompt and any
// outputs of a preempted run), kept above a watermark of 1% of the pool so
// that a newly admitted sequence does not force a preemption at once.
static void admit(Sched *s) {
    if (s->o.mode == SCHED_STATIC && s->nrunning > 0) return;
    const int watermark = s->o.reserve ? 0 : s->o.kv_blocks / 100;
    while (s->wait_head && s->nrunning < s->o.max_batch) {
        Seq *q = s->wait_head;
        int need = sched_blocks(s, s->o.reserve ? q->plen + q->max_tokens : q->plen + q->nout);
        if (need > s->nfree - (s->nrunning > 0 ? watermark : 0)) return;
        wait_unlink(s, q);
        q->slot = s->free_slots[--s->nfree_slots];
        q->table = s->tables + (size_t)q->slot * (size_t)s->o.max_blocks;
        memset(q->table, 0, sizeof(int32_t) * (size_t)s->o.max_blocks);
        q->nblocks = 0;
        q->fed = 0;
        SYS_CHECK(grow(s, q, need * s->o.kv_block) == 0, "scheduler: admission without blocks");
        q->state = SEQ_RUNNING;
        s->running[s->nrunning++] = q;
    }
}

// Frees q's blocks and queues it again at the front: it recomputes its prompt and outputs.
static void preempt(Sched *s, Seq *q) {
    run_remove(s, q);
    q->fed = 0;
    q->preemptions++;
    s->preemptions++;
    wait_push(s, q, 1);
}

// Lazy KV: every sequence about to decode gets room for one more token; when
// the pool is dry, the most recently admitted sequence gives its blocks up.
static void make_room(Sched *s) {
    for (int i = 0; i < s->nrunning; i++) {
        Seq *q = s->running[i];
        if (left(q) != 1) continue;
        while (grow(s, q, q->fed + 1) != 0) {
            Seq *victim = s->running[s->nrunning - 1];
            preempt(s, victim);
            if (victim == q) { i--; break; }
        }
    }
}

// ---------------------------------------------------------------------------
// Passes

typedef struct Pass {
    int N, nsample;
    int32_t *tok, *pos, *tables, *sample;
} Pass;

static Pass pass_view(int32_t *msg, const Engine *e, int max_blocks) {
    int Nmax = e->Nmax;
    Pass p = {msg[0], msg[1], msg + 3, msg + 3 + Nmax, msg + 3 + 2 * (size_t)Nmax,
              msg + 3 + (size_t)Nmax * (2 + (size_t)max_blocks)};
    return p;
}

// Adds k tokens of q (from cache position q->fed); the last is sampled when it
// completes what q knows (its prompt and outputs so far).
static void add_rows(Sched *s, Pass *p, Seq *q, int k) {
    const int mb = s->o.max_blocks;
    for (int j = 0; j < k; j++) {
        int at = q->fed + j;
        p->tok[p->N] = at < q->plen ? q->prompt[at] : q->out[at - q->plen];
        p->pos[p->N] = at;
        memcpy(p->tables + (size_t)p->N * mb, q->table, sizeof(int32_t) * (size_t)mb);
        p->N++;
    }
    q->fed += k;
    if (left(q) == 0) {
        s->sample_seq[p->nsample] = q;
        p->sample[p->nsample++] = p->N - 1;
    }
}

static int room(const Sched *s, const Pass *p) { return p->N < s->e->Nmax && p->nsample < s->e->Smax; }

// Static and continuous batching while any prompt is unfinished: prompts only,
// no decodes (they stall). Static fills the budget with chunks; continuous
// (vLLM) takes whole prompts, chunking only one that cannot fit an empty pass.
static void compose_prefill(Sched *s, Pass *p) {
    const int budget = s->e->Nmax;
    for (int i = 0; i < s->nrunning && room(s, p); i++) {
        Seq *q = s->running[i];
        int k = left(q);
        if (k <= 1) continue;
        if (k > budget - p->N) {
            if (s->o.mode == SCHED_CONTINUOUS && p->N > 0) break;
            k = budget - p->N;
        }
        add_rows(s, p, q, k);
    }
}

// Dynamic SplitFuse (and the decode passes of the others): running decodes
// first, then prompt chunks fill the token budget. When the decodes alone fill
// the budget (or the sampled rows of a pass) and leave no room for a waiting
// prompt, or exceed it, rows go round-robin over every running sequence from
// where the last pass stopped, one decode row or one prompt chunk each: none
// starves behind the ones admitted before it.
static void compose(Sched *s, Pass *p) {
    const int budget = s->e->Nmax, smax = s->e->Smax, sf = s->o.mode == SCHED_SPLITFUSE;
    p->N = p->nsample = 0;
    int prefilling = 0, decoding = 0;
    for (int i = 0; i < s->nrunning; i++) {
        if (left(s->running[i]) > 1) prefilling = 1;
        else decoding++;
    }
    if (!sf && prefilling) {
        compose_prefill(s, p);
        return;
    }
    const int full = decoding > budget || decoding > smax || (prefilling && (decoding >= budget || decoding >= smax));
    if (full) {
        int last = -1, n = s->nrunning;
        for (int k = 0; k < n && room(s, p); k++) {
            int i = (s->next_decode + k) % n;
            Seq *q = s->running[i];
            int l = left(q);
            add_rows(s, p, q, l > 1 ? (l < budget - p->N ? l : budget - p->N) : 1);
            last = i;
        }
        if (last >= 0) s->next_decode = (last + 1) % n;
        return;
    }
    for (int i = 0; i < s->nrunning && room(s, p); i++)
        if (left(s->running[i]) == 1) add_rows(s, p, s->running[i], 1);
    for (int i = 0; i < s->nrunning && room(s, p); i++) {
        Seq *q = s->running[i];
        int l = left(q);
        if (l > 1) add_rows(s, p, q, l < budget - p->N ? l : budget - p->N);
    }
}

static void broadcast(Comm *comm, int32_t *msg, size_t len) {
    if (comm->size > 1) comm_bcast(comm, msg, len * sizeof(int32_t), 0, "pass");
}

static void run_pass(Engine *e, int32_t *msg, int max_blocks, float *logits) {
    Pass p = pass_view(msg, e, max_blocks);
    RaggedBatch b = {.N = p.N, .nsample = p.nsample, .max_blocks = max_blocks, .tok = p.tok, .pos = p.pos,
                     .tables = p.tables, .sample = p.sample};
    engine_forward(e, &b, logits);
}

int sched_step(Sched *s) {
    admit(s);
    if (!s->o.reserve) make_room(s);
    Pass p = pass_view(s->msg, s->e, s->o.max_blocks);
    compose(s, &p);
    if (p.N == 0) return 0;
    s->msg[0] = p.N;
    s->msg[1] = p.nsample;
    s->msg[2] = 0;
    broadcast(s->comm, s->msg, s->msg_len);
    run_pass(s->e, s->msg, s->o.max_blocks, s->logits);
    s->passes++;
    s->pass_tokens += p.N;
    double now = wall_seconds() - s->o.t0;
    const size_t Vp = (size_t)s->e->m.s.Vp;
    for (int k = 0; k < p.nsample; k++) {
        Seq *q = s->sample_seq[k];
        q->out[q->nout] = sampler_next(s->smp, s->logits + (size_t)k * Vp, &q->sp, q->nout);
        q->nout++;
        int stop = s->h.on_token(s->h.ctx, q, now);
        if (stop || q->nout >= q->max_tokens) retire(s, q, stop ? FINISH_STOP : FINISH_LENGTH, now);
    }
    return p.N;
}

void sched_idle(Sched *s) {
    s->msg[0] = s->msg[1] = s->msg[2] = 0;
    broadcast(s->comm, s->msg, s->msg_len);
}

void sched_quit(Sched *s) {
    s->msg[0] = s->msg[1] = 0;
    s->msg[2] = 1;
    broadcast(s->comm, s->msg, s->msg_len);
}

void sched_follow(Comm *comm, Engine *e, int max_blocks) {
    size_t len = msg_length(e, max_blocks);
    int32_t *msg = xcalloc(len * sizeof(int32_t), "pass message");
    for (;;) {
        comm_bcast(comm, msg, len * sizeof(int32_t), 0, "pass");
        if (msg[2]) break;
        if (msg[0] > 0) run_pass(e, msg, max_blocks, NULL);   // N = 0: rank 0 is idle
    }
    free(msg);
}
