// comm.c: MPI collectives with counted bytes, debug signatures, a timeout and
// a core-yielding wait.
#include "comm.h"
#include "backend.h"
#include "comm_nccl.h"
#include "log.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sched.h>
#include <time.h>

static const char *op_names[COMM_NOPS] = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all", "broadcast"};

const char *comm_op_name(int op) { return op >= 0 && op < COMM_NOPS ? op_names[op] : op == COMM_SYNC ? "barrier" : "?"; }

const char *comm_progress_name(int progress) {
    return progress == COMM_PROGRESS_THREAD ? "thread" : progress == COMM_PROGRESS_NONE ? "none" : "poll";
}

// ---------------------------------------------------------------------------
// The progress thread (progress = thread). It touches no request of the
// caller's (two threads may not test one request): it probes a private
// duplicate of the communicator, which runs MPICH's progress engine for every
// request of the process.

typedef struct CommProgress {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_int inflight;    // the caller's count, mirrored
    int quit;               // under mu
    MPI_Comm probe;         // the Comm's
    struct timespec pause;
} CommProgress;

static void *progress_main(void *arg) {
    CommProgress *p = arg;
    pthread_mutex_lock(&p->mu);
    while (!p->quit) {
        if (atomic_load(&p->inflight) == 0) {
            pthread_cond_wait(&p->cv, &p->mu);
            continue;
        }
        pthread_mutex_unlock(&p->mu);
        int flag = 0;
        MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, p->probe, &flag, MPI_STATUS_IGNORE));
        if (p->pause.tv_nsec > 0) nanosleep(&p->pause, NULL);
        else sched_yield();
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

static void progress_start(Comm *c) {
    int provided = 0;
    MPI_CHECK(MPI_Query_thread(&provided));
    if (provided < MPI_THREAD_MULTIPLE)
        FATAL("set [comm] progress = poll, or use an MPI built with thread support",
              "[comm] progress = thread needs MPI_THREAD_MULTIPLE; this MPI provides level %d", provided);
    CommProgress *p = xcalloc(sizeof *p, "comm progress thread");
    p->probe = c->probe;
    double us = c->opt.progress_us > 0 ? c->opt.progress_us : 0;
    p->pause.tv_sec = (time_t)(us / 1e6);
    p->pause.tv_nsec = (long)((us - (double)p->pause.tv_sec * 1e6) * 1e3);
    SYS_CHECK(pthread_mutex_init(&p->mu, NULL) == 0, "cannot create the progress thread's mutex");
    SYS_CHECK(pthread_cond_init(&p->cv, NULL) == 0, "cannot create the progress thread's condition");
    int rc = pthread_create(&p->thread, NULL, progress_main, p);
    SYS_CHECK(rc == 0, "cannot start the comm progress thread: %s", strerror(rc));
    c->prog = p;
}

static void progress_stop(Comm *c) {
    CommProgress *p = c->prog;
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
    c->prog = NULL;
}

// A collective was issued (+1) or seen complete (-1): the in-flight clock,
// and the progress thread's wake-up.
static void fly(Comm *c, int delta) {
    if (delta > 0 && c->inflight++ == 0) c->inflight_t0 = MPI_Wtime();
    if (delta < 0 && --c->inflight == 0) c->inflight_s += MPI_Wtime() - c->inflight_t0;
    CommProgress *p = c->prog;
    if (!p) return;
    if (atomic_fetch_add(&p->inflight, delta) == 0 && delta > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
}

int comm_polls(const Comm *c) { return c->opt.progress != COMM_PROGRESS_NONE; }

void comm_progress(Comm *c) {
    if (!c->inflight || c->opt.path == COMM_PATH_NCCL) return;
    double t0 = MPI_Wtime();
    int flag = 0;
    MPI_CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, c->probe, &flag, MPI_STATUS_IGNORE));
    c->busy_s += MPI_Wtime() - t0;
}

double comm_inflight_s(const Comm *c) {
    return c->inflight_s + (c->inflight > 0 ? MPI_Wtime() - c->inflight_t0 : 0);
}

void comm_init(Comm *c, MPI_Comm comm, const char *name, const CommOptions *opt) {
    memset(c, 0, sizeof *c);
    c->comm = comm;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->opt = *opt;
    MPI_CHECK(MPI_Comm_rank(comm, &c->rank));
    MPI_CHECK(MPI_Comm_size(comm, &c->size));
    c->sigs = xcalloc(sizeof(CommSig) * (size_t)c->size, "comm signatures");
    c->vargs = xcalloc(sizeof(int) * 4 * COMM_SLOTS * (size_t)c->size, "comm counts of collectives in flight");
    c->preqs = xcalloc(sizeof(MPI_Request) * 2 * COMM_SLOTS * (size_t)c->size, "comm requests of all-gathers in flight");
    if (c->opt.path == COMM_PATH_NCCL) c->nccl = nccl_create(comm, c->rank, c->size);
    MPI_CHECK(MPI_Comm_dup(comm, &c->probe));
    if (c->opt.progress == COMM_PROGRESS_THREAD && c->opt.path != COMM_PATH_NCCL) progress_start(c);
}

const char *comm_path_name(int path) {
    return path == COMM_PATH_NCCL ? "nccl" : path == COMM_PATH_STAGED ? "staged (device-host-MPI)" : "MPI";
}

void comm_register(Comm *c, const float *buf, size_t n, const char *what) {
    if (c->opt.path != COMM_PATH_STAGED || !buf) return;
    if (c->nmirrors == c->cap_mirrors) {
        int cap = c->cap_mirrors ? 2 * c->cap_mirrors : 32;
        c->mirrors = realloc(c->mirrors, sizeof(CommMirror) * (size_t)cap);
        SYS_CHECK(c->mirrors != NULL, "out of memory for %d host mirrors on %s", cap, c->name);
        c->cap_mirrors = cap;
    }
    char name[96];
    snprintf(name, sizeof name, "host mirror of %s", what);
    c->mirrors[c->nmirrors++] = (CommMirror){.dev = buf, .host = xcalloc((n ? n : 1) * sizeof(float), name), .n = n};
}

// Staged path: the host mirror of device range [p, p + n).
static float *mirror_of(Comm *c, const float *p, size_t n) {
    for (int i = 0; i < c->nmirrors; i++) {
        const CommMirror *m = &c->mirrors[i];
        if (p >= m->dev && p + n <= m->dev + m->n) return m->host + (p - m->dev);
    }
    FATAL(NULL, "comm: a staged collective on an unregistered device buffer (%zu floats): register it with comm_register", n);
    return NULL;
}

// The point-to-point requests of r's counts slot (Comm.preqs).
static MPI_Request *slot_preqs(Comm *c, const CommReq *r) {
    return c->preqs + (size_t)r->slot * 2 * (size_t)c->size;
}

// A two-rank reduce-scatter has received the peer's part: adds this rank's
// own (the order does not matter: a + b == b + a in floating point, so the
// bits are MPI's). Its time is the collective's work on this thread (busy_s).
static void finish_sum(Comm *c, CommReq *r) {
    if (!r->sum_n) return;
    double t0 = MPI_Wtime();
    float *restrict dst = r->sum_dst;
    const float *restrict src = r->sum_src;
    for (size_t i = 0; i < r->sum_n; i++) dst[i] += src[i];
    r->sum_n = 0;
    c->busy_s += MPI_Wtime() - t0;
}

// A host-path request is complete: a two-rank reduce-scatter's sum, then, on
// the staged path, the result moves from its mirror to the device.
static void land(Comm *c, CommReq *r) {
    finish_sum(c, r);
    if (r->land) c->opt.bk->from_host(r->land, r->land_host, r->land_n);
    r->land = NULL;
}

static void set_landing(CommReq *r, float *dev, const float *host, size_t n) {
    r->land = dev;
    r->land_host = host;
    r->land_n = n;
}

void comm_free(Comm *c) {
    progress_stop(c);
    if (c->probe != MPI_COMM_NULL) MPI_CHECK(MPI_Comm_free(&c->probe));
    for (int i = 0; i < c->nmirrors; i++) free(c->mirrors[i].host);
    free(c->mirrors);
    c->mirrors = NULL;
    c->nmirrors = c->cap_mirrors = 0;
    if (c->nccl) nccl_destroy(c->nccl);
    c->nccl = NULL;
    free(c->sigs);
    free(c->vargs);
    c->vargs = NULL;
    free(c->preqs);
    c->preqs = NULL;
    c->sigs = NULL;
}

void comm_set_step(Comm *c, int64_t step) {
    c->step = step;
    c->seq = 0;
    c->stepping = 1;
}

void comm_end_step(Comm *c) { c->stepping = 0; }

static void describe(const CommSig *s, char *buf, size_t n) {
    snprintf(buf, n, "%s(%s, %lld elements, #%d of step %lld)", comm_op_name(s->op), s->tag,
             (long long)s->count, s->seq, (long long)s->step + 1);
}

// 1 when every request of q[0..n) is complete (MPI_Test each: a completed one
// becomes MPI_REQUEST_NULL, which tests complete again).
static int test_all(MPI_Request *q, int n) {
    int all = 1;
    for (int i = 0; i < n; i++) {
        int flag = 0;
        MPI_CHECK(MPI_Test(&q[i], &flag, MPI_STATUS_IGNORE));
        all &= flag;
    }
    return all;
}

// Polls until done(arg, spins) says what it waits for is there (every request
// of a set complete, a flag raised), yielding the core between polls, so that
// oversubscribed ranks let the rank that still computes run instead of
// spinning against it. After `patience` polls (-1: never) it naps nap_ns
// between polls instead. MPICH moves a large message only inside MPI calls, a
// shared-memory cell per call: a nap between polls throttles big transfers
// (20 us naps made ZeRO-3's all-gathers several times slower), so only waits
// that are mostly waiting for another rank should nap early. Returns the
// seconds waited, or -1 once timeout_s (> 0) has passed. spins: the looks so far.
static double poll_until(int (*done)(void *arg, long spins), void *arg, long patience, long nap_ns,
                         double timeout_s) {
    double t0 = MPI_Wtime();
    struct timespec nap = {0, nap_ns};
    for (long spins = 0; !done(arg, spins); spins++) {
        if (patience >= 0 && spins >= patience) nanosleep(&nap, NULL);
        else sched_yield();
        if (timeout_s > 0 && (spins & 255) == 0 && MPI_Wtime() - t0 > timeout_s) return -1.0;
    }
    return MPI_Wtime() - t0;
}

typedef struct Requests {
    MPI_Request *q;
    int n;
} Requests;

static int requests_done(void *arg, long spins) {
    Requests *r = arg;
    (void)spins;
    return test_all(r->q, r->n);
}

// A collective's wait: naps only when ranks outnumber cores and the wait has
// gone on for a while; fatal past [comm] timeout_s, naming the collective.
static void wait_request(Comm *c, MPI_Request *req, int nreq, const CommSig *sig) {
    double t0 = MPI_Wtime();
    Requests r = {req, nreq};
    double dt = poll_until(requests_done, &r, c->opt.oversubscribed ? 20000 : -1, 50000, c->opt.timeout_s);
    if (dt < 0) {
        char what[160];
        describe(sig, what, sizeof what);
        FATAL("another rank never joined it: it skipped or reordered a collective, or died; "
              "[comm] debug = true names the rank that diverged",
              "rank %d of group %s stuck %.0f s in %s", c->rank, c->name, MPI_Wtime() - t0, what);
    }
    c->wait_s += dt;
    c->wait_op_s[sig->op] += dt;
}

// An all-to-all's element count is each rank's own (MoE dispatch sends what
// its tokens chose): not compared.
static int sig_equal(const CommSig *a, const CommSig *b) {
    return a->op == b->op && (a->count == b->count || a->op == COMM_ALLTOALL) && a->step == b->step &&
           a->seq == b->seq && strcmp(a->tag, b->tag) == 0;
}

// Debug mode: every rank shows the others what it is about to issue; any
// difference is reported (by rank 0, naming every rank that differs from it)
// before the mismatched collective can hang or corrupt.
static void check_signature(Comm *c, const CommSig *mine) {
    MPI_Request req;
    MPI_CHECK(MPI_Iallgather(mine, (int)sizeof *mine, MPI_BYTE, c->sigs, (int)sizeof *mine, MPI_BYTE,
                             c->comm, &req));
    CommSig check = *mine;
    snprintf(check.tag, sizeof check.tag, "check:%.32s", mine->tag);
    wait_request(c, &req, 1, &check);
    // The signature most ranks issued is taken as the intended one; every rank
    // that issued something else is named.
    int best = 0, best_n = 0;
    for (int k = 0; k < c->size; k++) {
        int n = 0;
        for (int j = 0; j < c->size; j++) n += sig_equal(&c->sigs[k], &c->sigs[j]);
        if (n > best_n) {
            best = k;
            best_n = n;
        }
    }
    if (best_n == c->size) return;
    char text[2048], a[160], b[160];
    describe(&c->sigs[best], a, sizeof a);
    size_t len = (size_t)snprintf(text, sizeof text, "\n  %d of %d ranks issued %s", best_n, c->size, a);
    for (int k = 0; k < c->size && len < sizeof text; k++) {
        if (sig_equal(&c->sigs[k], &c->sigs[best])) continue;
        describe(&c->sigs[k], b, sizeof b);
        len += (size_t)snprintf(text + len, sizeof text - len, "\n  rank %d issued %s", k, b);
    }
    FATAL_ALL("a rank whose collective number (#) runs ahead skipped one; behind, it added one",
              "collective mismatch in group %s at step %lld:%s", c->name, (long long)c->step + 1, text);
}

// Whether this step's float collectives move nothing (comm.h, compute_only).
static int compute_only_now(const Comm *c) {
    if (!c->stepping) return 0;     // set-up, loads, evaluation and writes always communicate
    return c->opt.compute_only == COMM_COMPUTE_ON ||
           (c->opt.compute_only == COMM_COMPUTE_ALTERNATE && (c->step & 1) == 0);   // 0-based step
}

typedef struct FlagLook {
    Comm *c;
    _Atomic uint64_t *flag;
    uint64_t want;
} FlagLook;

static int flag_done(void *arg, long spins) {
    FlagLook *f = arg;
    if (atomic_load_explicit(f->flag, memory_order_acquire) >= f->want) return 1;
    if ((spins & 63) == 63) comm_progress(f->c);    // collectives in flight move meanwhile
    return 0;
}

int comm_flag_ready(const Comm *c, _Atomic uint64_t *flag, uint64_t want) {
    return compute_only_now(c) || atomic_load_explicit(flag, memory_order_acquire) >= want;
}

void comm_flag_wait(Comm *c, _Atomic uint64_t *flag, uint64_t want, int op, int peer, const char *what,
                    const char *name) {
    if (comm_flag_ready(c, flag, want)) return;
    double t0 = MPI_Wtime();
    FlagLook look = {c, flag, want};
    fly(c, 1);      // in flight while waited for (run.h5: a wait is never longer than what it waits on)
    double dt = poll_until(flag_done, &look, c->opt.oversubscribed ? 20000 : -1, 50000, c->opt.timeout_s);
    if (dt < 0)
        FATAL("the other rank stopped before its part: it failed, hung, or took another path; "
              "[comm] timeout_s bounds the wait",
              "rank %d of group %s waited %.0f s for rank %d's %s%s (step %lld)", c->rank, c->name,
              MPI_Wtime() - t0, peer, what, name, (long long)c->step + 1);
    fly(c, -1);
    c->wait_s += dt;
    c->wait_op_s[op] += dt;
}

// Fills the signature, counts the bytes, runs the debug check; returns 1 if
// the collective is skipped: a bulk one under compute_only, or the test-only
// fault switch.
static int begin(Comm *c, int op, size_t count, size_t bytes_sent, const char *tag, CommReq *r, int bulk) {
    memset(&r->sig, 0, sizeof r->sig);
    r->sig.step = c->step;
    r->sig.op = op;
    r->sig.seq = c->seq++;
    r->sig.count = (int64_t)count;
    snprintf(r->sig.tag, sizeof r->sig.tag, "%s", tag);
    r->active = 0;
    r->event = -1;
    r->land = NULL;
    r->slot = -1;
    r->req = MPI_REQUEST_NULL;
    r->npreq = 0;
    r->sum_n = 0;
    if (bulk && compute_only_now(c)) return 1;
    if (c->opt.fault_skip_rank == c->rank && c->opt.fault_skip_step == c->step + 1 && !c->skipped) {
        c->skipped = 1;
        if (c->opt.fault_hang_s > 0) {
            log_warn("test fault: stalling %.0f s before %s(%s) at step %lld", c->opt.fault_hang_s,
                     comm_op_name(op), tag, (long long)c->step + 1);
            struct timespec ts = {(time_t)c->opt.fault_hang_s, 0};
            nanosleep(&ts, NULL);
            goto issue;
        }
        log_warn("test fault: skipping %s(%s) at step %lld", comm_op_name(op), tag, (long long)c->step + 1);
        return 1;
    }
issue:
    if (c->opt.debug) check_signature(c, &r->sig);
    c->bytes[op] += bytes_sent;
    c->calls[op]++;
    fly(c, +1);
    return 0;
}

static int as_int(size_t n, const char *what) {
    if (n > (size_t)INT_MAX)
        FATAL("split the buffer into buckets below 2^31 elements ([zero] bucket_mb)",
              "%s of %zu elements exceeds MPI's int count", what, n);
    return (int)n;
}

void comm_iallreduce_sum(Comm *c, float *buf, size_t n, const char *tag, CommReq *r) {
    size_t sent = c->size > 1 ? 2 * (size_t)(c->size - 1) * n * sizeof(float) / (size_t)c->size : 0;
    if (begin(c, COMM_ALLREDUCE, n, sent, tag, r, 1)) return;
    r->active = 1;
    if (c->opt.path == COMM_PATH_NCCL) {
        r->event = nccl_allreduce_sum(c->nccl, buf, n);
        return;
    }
    if (c->opt.path == COMM_PATH_STAGED) {
        float *h = mirror_of(c, buf, n);
        c->opt.bk->to_host(h, buf, n);
        set_landing(r, buf, h, n);
        buf = h;
    }
    double t0 = MPI_Wtime();
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, as_int(n, "all-reduce"), MPI_FLOAT, MPI_SUM, c->comm, &r->req));
    c->busy_s += MPI_Wtime() - t0;
}

// A free slot of counts, now owned by r until its completion.
static int *take_slot(Comm *c, CommReq *r) {
    int k = 0;
    while (k < COMM_SLOTS && (c->busy >> k & 1u)) k++;
    if (k == COMM_SLOTS)
        FATAL("wait for some collectives before issuing more (a request that is never waited on leaks its slot)",
              "comm: more than %d v-collectives in flight on group %s", COMM_SLOTS, c->name);
    c->busy |= (uint64_t)1 << k;
    r->slot = k;
    return c->vargs + (size_t)k * 4 * (size_t)c->size;
}

static void release_slot(Comm *c, CommReq *r) {
    if (r->slot >= 0) c->busy &= ~((uint64_t)1 << r->slot);
    r->slot = -1;
}

static size_t sum_counts(const Comm *c, const size_t *counts) {
    size_t total = 0;
    for (int k = 0; k < c->size; k++) total += counts[k];
    return total;
}

// Copies counts (and their displacements) into dst as MPI's ints.
static void put_counts(Comm *c, int *cnt, int *dsp, const size_t *counts, const char *what) {
    size_t at = 0;
    for (int k = 0; k < c->size; k++) {
        cnt[k] = as_int(counts[k], what);
        dsp[k] = as_int(at, what);
        at += counts[k];
    }
}

void comm_ireduce_scatter_sum(Comm *c, const float *send, float *recv, const size_t *counts,
                              const char *tag, CommReq *r) {
    size_t total = sum_counts(c, counts);
    if (begin(c, COMM_REDUCE_SCATTER, total, (total - counts[c->rank]) * sizeof(float), tag, r, 1)) return;
    r->active = 1;
    int *cnt = take_slot(c, r);
    put_counts(c, cnt, cnt + c->size, counts, "reduce-scatter");
    if (c->opt.path == COMM_PATH_NCCL) {
        r->event = nccl_reduce_scatter_sum(c->nccl, send, recv, counts);
        return;
    }
    if (c->opt.path == COMM_PATH_STAGED) {
        float *hs = mirror_of(c, send, total), *hr = mirror_of(c, recv, counts[c->rank]);
        c->opt.bk->to_host(hs, send, total);
        set_landing(r, recv, hr, counts[c->rank]);
        send = hs;
        recv = hr;
    }
    double t0 = MPI_Wtime();
    if (c->size == 2) {
        // Two ranks: the peer's part of this rank's range arrives straight in
        // recv and this rank's own is added on completion (finish_sum). Half
        // the memory traffic of MPICH's MPI_Ireduce_scatter, which copies the
        // whole send buffer to a temporary, receives into another and copies
        // the result out: ZeRO's reductions at np = 2 spent 0.17-0.19 s a step
        // inside MPI at 124M on two busy cores (docs/architecture.md, issue 16).
        int peer = 1 - c->rank, *dsp = cnt + c->size, nq = 0;
        MPI_Request *q = slot_preqs(c, r);
        if (cnt[c->rank] > 0)
            MPI_CHECK(MPI_Irecv(recv, cnt[c->rank], MPI_FLOAT, peer, COMM_RS_TAG, c->comm, &q[nq++]));
        if (cnt[peer] > 0)
            MPI_CHECK(MPI_Isend(send + dsp[peer], cnt[peer], MPI_FLOAT, peer, COMM_RS_TAG, c->comm, &q[nq++]));
        r->npreq = nq;
        r->sum_dst = recv;
        r->sum_src = send + dsp[c->rank];
        r->sum_n = counts[c->rank];
    } else {
        MPI_CHECK(MPI_Ireduce_scatter(send, recv, cnt, MPI_FLOAT, MPI_SUM, c->comm, &r->req));
    }
    c->busy_s += MPI_Wtime() - t0;
}

void comm_iallgather(Comm *c, float *buf, const size_t *counts, const char *tag, CommReq *r) {
    size_t total = sum_counts(c, counts);
    if (begin(c, COMM_ALLGATHER, total, (total - counts[c->rank]) * sizeof(float), tag, r, 1)) return;
    r->active = 1;
    int *cnt = take_slot(c, r), *dsp = cnt + c->size;
    put_counts(c, cnt, dsp, counts, "all-gather");
    if (c->opt.path == COMM_PATH_NCCL) {
        r->event = nccl_allgather(c->nccl, buf, counts);
        return;
    }
    if (c->opt.path == COMM_PATH_STAGED) {
        float *h = mirror_of(c, buf, total);
        size_t at = (size_t)dsp[c->rank];
        c->opt.bk->to_host(h + at, buf + at, counts[c->rank]);
        set_landing(r, buf, h, total);
        buf = h;
    }
    // Point to point, not MPI_Iallgatherv: MPICH's all-gather with a rank of
    // count 0 (ZeRO-3's flat shards give every layer but one a single owner)
    // did not advance under polls at all (bench/overlap_probe.c: 10-14 ms of
    // wait per layer however often polled), while sends and receives do.
    MPI_Request *q = slot_preqs(c, r);
    int nq = 0;
    double t0 = MPI_Wtime();
    for (int k = 0; k < c->size; k++)
        if (k != c->rank && cnt[k] > 0)
            MPI_CHECK(MPI_Irecv(buf + dsp[k], cnt[k], MPI_FLOAT, k, COMM_GATHER_TAG, c->comm, &q[nq++]));
    for (int k = 0; k < c->size; k++)
        if (k != c->rank && cnt[c->rank] > 0)
            MPI_CHECK(MPI_Isend(buf + dsp[c->rank], cnt[c->rank], MPI_FLOAT, k, COMM_GATHER_TAG, c->comm, &q[nq++]));
    c->busy_s += MPI_Wtime() - t0;
    r->npreq = nq;
}

void comm_ialltoallv(Comm *c, const float *send, const size_t *counts, float *recv, const size_t *rcounts,
                     const char *tag, CommReq *r) {
    size_t total = sum_counts(c, counts), rtotal = sum_counts(c, rcounts);
    // What leaves this rank: everything but its part for itself.
    if (begin(c, COMM_ALLTOALL, total, (total - counts[c->rank]) * sizeof(float), tag, r, 1)) return;
    r->active = 1;
    int *sc = take_slot(c, r), *sd = sc + c->size, *rc = sd + c->size, *rd = rc + c->size;
    put_counts(c, sc, sd, counts, "all-to-all");
    put_counts(c, rc, rd, rcounts, "all-to-all");
    if (c->opt.path == COMM_PATH_NCCL) {
        r->event = nccl_alltoallv(c->nccl, send, counts, recv, rcounts);
        return;
    }
    if (c->opt.path == COMM_PATH_STAGED) {
        float *hs = mirror_of(c, send, total), *hr = mirror_of(c, recv, rtotal);
        c->opt.bk->to_host(hs, send, total);
        set_landing(r, recv, hr, rtotal);
        send = hs;
        recv = hr;
    }
    MPI_CHECK(MPI_Ialltoallv(send, sc, sd, MPI_FLOAT, recv, rc, rd, MPI_FLOAT, c->comm, &r->req));
}

// The MPI requests behind r (*n of them): its all-gather's point-to-point ones, or the one.
static MPI_Request *requests(Comm *c, CommReq *r, int *n) {
    *n = r->npreq ? r->npreq : 1;
    return r->npreq ? slot_preqs(c, r) : &r->req;
}

void comm_wait(Comm *c, CommReq *r) {
    if (!r->active) return;
    if (r->event >= 0) {
        nccl_wait(c->nccl, r->event);
        r->event = -1;
    } else {
        int n;
        MPI_Request *q = requests(c, r, &n);
        wait_request(c, q, n, &r->sig);
        land(c, r);
    }
    release_slot(c, r);
    r->active = 0;
    fly(c, -1);
}

int comm_test(Comm *c, CommReq *r) {
    if (!r->active) return 1;
    int done = 0;
    if (r->event >= 0) return nccl_test(c->nccl, r->event);   // comm_wait still orders the streams
    int n;
    MPI_Request *q = requests(c, r, &n);
    double t0 = MPI_Wtime();
    done = test_all(q, n);
    c->busy_s += MPI_Wtime() - t0;
    if (done) {
        land(c, r);
        release_slot(c, r);
        r->active = 0;
        fly(c, -1);
    }
    return done;
}

void comm_allreduce_sum(Comm *c, float *buf, size_t n, const char *tag) {
    CommReq r;
    comm_iallreduce_sum(c, buf, n, tag, &r);
    comm_wait(c, &r);
}

static void allreduce_f64(Comm *c, double *buf, int n, MPI_Op op, const char *tag) {
    CommReq r;
    size_t sent = c->size > 1 ? 2 * (size_t)(c->size - 1) * (size_t)n * sizeof(double) / (size_t)c->size : 0;
    if (begin(c, COMM_ALLREDUCE, (size_t)n, sent, tag, &r, 0)) return;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, op, c->comm, &r.req));
    r.active = 1;
    comm_wait(c, &r);
}

void comm_allreduce_sum_f64(Comm *c, double *buf, int n, const char *tag) { allreduce_f64(c, buf, n, MPI_SUM, tag); }
void comm_allreduce_max_f64(Comm *c, double *buf, int n, const char *tag) { allreduce_f64(c, buf, n, MPI_MAX, tag); }

void comm_bcast(Comm *c, void *buf, size_t bytes, int root, const char *tag) {
    CommReq r;
    if (begin(c, COMM_BCAST, bytes, c->rank == root ? bytes * (size_t)(c->size - 1) : 0, tag, &r, 0)) return;
    MPI_CHECK(MPI_Ibcast(buf, as_int(bytes, "broadcast"), MPI_BYTE, root, c->comm, &r.req));
    r.active = 1;
    comm_wait(c, &r);
}

// ---------------------------------------------------------------------------
// Node-shared memory

int comm_shared_alloc(Comm *c, size_t bytes, CommShared *s, char *why, size_t n) {
    memset(s, 0, sizeof *s);
    s->win = MPI_WIN_NULL;
    s->comm = MPI_COMM_NULL;
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &node));
    int nsize = 0;
    MPI_CHECK(MPI_Comm_size(node, &nsize));
    if (nsize != c->size) {     // the same answer on every rank: all on one node, or not
        snprintf(why, n, "the %d ranks of group %s span nodes (%d on this one)", c->size, c->name, nsize);
        MPI_CHECK(MPI_Comm_free(&node));
        return 0;
    }
    // Rank order within node is c's (the key above), so segments follow c's ranks.
    unsigned long long mine = bytes, below = 0, total = 0;
    MPI_CHECK(MPI_Exscan(&mine, &below, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, node));
    if (c->rank == 0) below = 0;     // MPI_Exscan leaves rank 0's undefined
    MPI_CHECK(MPI_Allreduce(&mine, &total, 1, MPI_UNSIGNED_LONG_LONG, MPI_SUM, node));
    // MPICH backs the window with a /dev/shm file: a container's small /dev/shm
    // (Docker's 64 MiB) would make the allocation fail, which MPI treats as fatal.
    struct statvfs sv;
    double room = statvfs("/dev/shm", &sv) == 0 ? (double)sv.f_bavail * (double)sv.f_frsize : -1.0;
    int fits = room < 0 || room >= 1.05 * (double)total + (double)(16 << 20), all_fit = 0;
    MPI_CHECK(MPI_Allreduce(&fits, &all_fit, 1, MPI_INT, MPI_LAND, node));     // one answer for all
    if (!all_fit) {
        snprintf(why, n, "/dev/shm has %.0f MiB free, the window needs %.0f MiB", room / 1048576.0,
                 (double)total / 1048576.0);
        MPI_CHECK(MPI_Comm_free(&node));
        return 0;
    }
    void *ptr = NULL, *base = NULL;
    MPI_Aint size0 = 0;
    int unit = 0;
    MPI_CHECK(MPI_Win_allocate_shared((MPI_Aint)bytes, 1, MPI_INFO_NULL, node, &ptr, &s->win));
    MPI_CHECK(MPI_Win_shared_query(s->win, 0, &size0, &unit, &base));
    int contiguous = (char *)ptr == (char *)base + below, all = 0;
    MPI_CHECK(MPI_Allreduce(&contiguous, &all, 1, MPI_INT, MPI_LAND, node));
    if (!all) {
        snprintf(why, n, "MPI's shared window is not contiguous across ranks");
        MPI_CHECK(MPI_Win_free(&s->win));
        MPI_CHECK(MPI_Comm_free(&node));
        return 0;
    }
    // One passive epoch for the window's life: MPI_Win_sync then orders the
    // loads and stores around each barrier (the MPI-3 shared-memory idiom).
    MPI_CHECK(MPI_Win_lock_all(MPI_MODE_NOCHECK, s->win));
    s->comm = node;
    s->base = base;
    s->mine = ptr;
    s->on = 1;
    return 1;
}

void comm_shared_sync(Comm *c, CommShared *s) {
    if (!s->on || compute_only_now(c)) return;
    MPI_CHECK(MPI_Win_sync(s->win));
    CommSig sig = {.step = c->step, .op = COMM_SYNC, .seq = c->seq};
    snprintf(sig.tag, sizeof sig.tag, "node-shared parameters");
    MPI_Request req;
    MPI_CHECK(MPI_Ibarrier(s->comm, &req));
    fly(c, 1);      // in flight while waited for: a wait is never longer than what it waits on (run.h5)
    wait_request(c, &req, 1, &sig);     // polls and yields: ranks may outnumber cores
    fly(c, -1);
    MPI_CHECK(MPI_Win_sync(s->win));
}

void comm_shared_free(CommShared *s) {
    if (!s->on) return;
    MPI_CHECK(MPI_Win_unlock_all(s->win));
    MPI_CHECK(MPI_Win_free(&s->win));
    MPI_CHECK(MPI_Comm_free(&s->comm));
    memset(s, 0, sizeof *s);
}

void comm_allreduce_napping(MPI_Comm comm, void *buf, int n, MPI_Datatype type, MPI_Op op) {
    MPI_Request rq;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, n, type, op, comm, &rq));
    Requests r = {&rq, 1};
    poll_until(requests_done, &r, 0, 100000, 0.0);  // no timeout: the load's watchdog bounds it (ckpt.c)
}
