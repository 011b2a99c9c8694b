// generate.c: requests in, the scheduler (scheduler.h) over a paged KV cache, gen.h5 out.
//
// Rank 0 reads the requests, submits each when it arrives (all at once, or
// Poisson arrivals replayed inside the job) and lets the scheduler compose,
// broadcast, run and sample every pass; the other tensor-parallel ranks follow
// the passes it broadcasts, holding their slices of the weights and the cache.
#include "generate.h"
#include "comm.h"
#include "device.h"
#include "engine.h"
#include "stream.h"
#include "h5io.h"
#include "json.h"
#include "kernels.h"
#include "log.h"
#include "model.h"
#include "request.h"
#include "rng.h"
#include "sampler.h"
#include "scheduler.h"
#include "sysutil.h"
#include "tokenizer.h"
#include "topo.h"
#include "weights.h"

#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { R_WAITING, R_RUNNING, R_DONE, R_REFUSED };
#define REQ_LINE_MAX ((size_t)4 << 20)  // bytes of a request line (and of a mirror line)

typedef struct Req {
    Request q;
    int line;                   // in the requests file; 0 for earlier runs' outputs
    int prior;                  // done by an earlier run (read back from the JSONL mirror)
    int state;
    char note[200];
} Req;

typedef struct Gen {
    const Deck *deck;
    const Config *cfg;
    Comm comm;
    Model m;
    Tokenizer tk;
    Engine e;
    Sampler smp;
    Sched sch;
    float *full;                // whole parameters (naive mode, and to slice from)
    Req *reqs;
    int nreq;
    int max_blocks;             // per sequence
    FILE *mirror;
    char mirror_path[DECK_STR + 16];
    const char *model_name;
    double t0;
} Gen;

static const char *mode_name(const Config *c) {
    static const char *names[] = {"splitfuse", "static", "continuous"};
    return c->generate.naive ? "naive" : names[c->generate.mode];
}

// ---------------------------------------------------------------------------
// The JSONL mirror

static void mirror_failed(const Gen *g, const char *what) {
    FATAL("check the disk (space, quota, permissions); the requests written so far are kept and skipped on a rerun",
          "cannot %s '%s': %s", what, g->mirror_path, strerror(errno));
}

// One finished (or refused) request as a line of the JSONL mirror, flushed so a
// killed job loses no finished request (a rerun skips the ids found done there).
static void write_mirror_line(Gen *g, const Request *q, const char *refused) {
    if (!g->mirror) return;
    char *line = request_result_line(q, g->cfg->generate.jsonl_format, refused, g->model_name);
    size_t len = strlen(line);
    errno = 0;
    if (fwrite(line, 1, len, g->mirror) != len || fflush(g->mirror) != 0) mirror_failed(g, "write to");
    free(line);
}

static int find_id(const Gen *g, const char *id) {
    for (int i = 0; i < g->nreq; i++)
        if (strcmp(g->reqs[i].q.id, id) == 0) return i;
    return -1;
}

static void add_request(Gen *g, const Req *r) {
    g->reqs = realloc(g->reqs, sizeof(Req) * (size_t)(g->nreq + 1));
    SYS_CHECK(g->reqs, "out of memory for requests");
    g->reqs[g->nreq++] = *r;
}

// An int32 array of token ids from a JSON array, or NULL if v is not one.
static int32_t *token_array(const json_t *v, int *n) {
    if (!json_is_array(v)) return NULL;
    size_t len = json_array_size(v);
    int32_t *t = xmalloc(sizeof(int32_t) * (len + 1), "earlier tokens");
    for (size_t i = 0; i < len; i++) {
        const json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX) {
            free(t);
            return NULL;
        }
        t[i] = (int32_t)json_integer_value(e);
    }
    *n = (int)len;
    return t;
}

static double time_or_nan(const json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

// The fields of a done output line, flat or OpenAI batch output: 0 and set, or -1.
typedef struct Earlier { const json_t *id, *text, *tokens, *prompt, *times; int done; } Earlier;

static void earlier_fields(const json_t *o, Earlier *e) {
    memset(e, 0, sizeof *e);
    const json_t *resp = json_object_get(o, "response");
    if (json_is_object(resp)) {   // OpenAI batch output
        const json_t *body = json_object_get(resp, "body");
        const json_t *ch = json_array_get(json_object_get(body, "choices"), 0);
        e->id = json_object_get(o, "custom_id");
        e->done = json_integer_value(json_object_get(resp, "status_code")) == 200;
        e->text = json_object_get(ch, "text");
        e->tokens = json_object_get(ch, "token_ids");
        e->prompt = json_object_get(body, "prompt_token_ids");
        e->times = json_object_get(body, "partita");
        return;
    }
    const json_t *st = json_object_get(o, "status");
    e->id = json_object_get(o, "id");
    e->done = json_is_string(st) && strcmp(json_string_value(st), "done") == 0;
    e->text = json_object_get(o, "text");
    e->tokens = json_object_get(o, "tokens");
    e->prompt = json_object_get(o, "prompt_tokens");
    e->times = o;
}

// One line of an earlier run's mirror as a done request; -1 with why when it is not one.
static int mirror_request(Gen *g, const json_t *o, Req *r, char *why, size_t n) {
    Earlier e;
    earlier_fields(o, &e);
    size_t idlen = json_string_length(e.id);
    if (!json_is_string(e.id) || idlen == 0 || idlen > REQ_ID_MAX) { snprintf(why, n, "no string 'id' of 1 to %d bytes", REQ_ID_MAX); return -1; }
    memcpy(r->q.id, json_string_value(e.id), idlen + 1);
    if (find_id(g, r->q.id) >= 0) { snprintf(why, n, "id already read from an earlier line"); return -1; }
    if (e.text && !json_is_string(e.text)) { snprintf(why, n, "'text' is not a string"); return -1; }
    int nout = 0;
    r->q.prompt = token_array(e.prompt, &r->q.plen);
    r->q.out = token_array(e.tokens, &nout);
    if (!r->q.prompt || !r->q.out) {
        free(r->q.prompt);
        free(r->q.out);
        snprintf(why, n, "'tokens' and 'prompt_tokens' must be arrays of token ids");
        return -1;
    }
    r->q.ntok = r->q.seq.nout = nout;
    r->q.text = strdup(e.text ? json_string_value(e.text) : "");
    SYS_CHECK(r->q.text, "out of memory for earlier outputs");
    r->prior = 1;
    r->state = R_DONE;
    r->q.arrival = time_or_nan(json_object_get(e.times, "arrival"));
    r->q.first = time_or_nan(json_object_get(e.times, "first_token"));
    r->q.finish = time_or_nan(json_object_get(e.times, "finish"));
    snprintf(r->note, sizeof r->note, "done by an earlier run");
    return 0;
}

// The mirror rewritten with the done lines only (a temporary file renamed over
// it, so a crash leaves the old file or the new one).
static void rewrite_mirror(Gen *g, const char *path, const char *keep, size_t n, int dropped) {
    char tmp[DECK_STR + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    errno = 0;
    int ok = f && fwrite(keep, 1, n, f) == n && fflush(f) == 0 && fsync(fileno(f)) == 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, path) != 0) {
        if (f) unlink(tmp);
        FATAL("check the disk (space, quota, permissions)", "cannot rewrite '%s' (through '%s'): %s", g->mirror_path, tmp,
              strerror(errno ? errno : EIO));
    }
    log_info("generate: %s: %d earlier refusals and unreadable lines dropped (their requests run again and are written anew)\n",
             path, dropped);
}

// Outputs of earlier runs into the same mirror: their ids are done already. A line
// that is not a whole output (a run killed mid-write, an edited file) is reported
// with its line number and ignored: its request runs again. Refusals are tried
// again too. Either way the line is dropped from the file (rewritten with the done
// lines) before this run appends, so each id is written once: a request refused
// again gets one refusal line, not one more per rerun.
static void read_mirror(Gen *g, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno != ENOENT) log_warn("generate: cannot read the earlier outputs in '%s': %s; every request runs", path, strerror(errno));
        return;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {   // a device such as /dev/full reads forever
        fclose(f);
        return;
    }
    char *line = NULL, why[256], *keep = NULL;
    size_t cap = 0, len, nkeep = 0;
    FILE *kf = open_memstream(&keep, &nkeep);
    SYS_CHECK(kf, "open_memstream: %s", strerror(errno));
    int found = 0, lineno = 0, rc, dropped = 0;
    while ((rc = jsonl_read_line(f, &line, &cap, REQ_LINE_MAX, &len)) > 0) {
        lineno++;
        if (rc == 1 && line[strspn(line, " \t\r")] == 0) continue;
        dropped++;   // until it proves a done output
        json_t *o = NULL;
        Req r;
        memset(&r, 0, sizeof r);
        if (rc == 2) snprintf(why, sizeof why, "a NUL byte in the line");
        else if (rc == 3) snprintf(why, sizeof why, "a line longer than %zu bytes", REQ_LINE_MAX);
        if (rc != 1 || !(o = json_parse_object(line, len, why, sizeof why))) {
            log_warn("%s:%d: not an earlier output, ignored (its request, if any, runs again): %s", path, lineno, why);
            continue;
        }
        Earlier e;
        earlier_fields(o, &e);
        if (!e.done && (json_is_object(json_object_get(o, "response")) || json_is_string(json_object_get(o, "status")))) {
            json_decref(o);   // a refusal: the request is tried again
            continue;
        }
        int bad = mirror_request(g, o, &r, why, sizeof why);
        json_decref(o);
        if (bad) {
            log_warn("%s:%d: not an earlier output, ignored (its request, if any, runs again): %s", path, lineno, why);
            continue;
        }
        add_request(g, &r);
        found++;
        dropped--;
        SYS_CHECK(fwrite(line, 1, len, kf) == len && fputc('\n', kf) == '\n', "out of memory for earlier outputs");
    }
    SYS_CHECK(fclose(kf) == 0, "out of memory for earlier outputs");
    fclose(f);
    if (rc < 0) log_warn("generate: reading '%s' stopped at line %d: %s; it is appended to as it is", path, lineno, strerror(errno));
    else if (dropped) rewrite_mirror(g, path, keep, nkeep, dropped);
    free(line);
    free(keep);
    if (found) log_info("generate: %d requests already done in %s are skipped\n", found, path);
}

// ---------------------------------------------------------------------------
// Requests

static int req_error(const char *path, int line, const char *msg) {
    fprintf(stderr, "%s:%d: bad request, skipped: %s\n", path, line, msg);
    return 1;
}

// One line into r; 0, or 1 with the reason in why (r->q.id set when the line had one).
static int parse_line(Gen *g, const char *line, size_t len, int rc, Req *r, char *why, size_t n) {
    if (rc == 2 || rc == 3) {
        if (rc == 2) snprintf(why, n, "a NUL byte in the line");
        else snprintf(why, n, "a line longer than %zu bytes", REQ_LINE_MAX);
        return 1;
    }
    json_t *o = json_parse_object(line, len, why, n);
    if (!o) return 1;
    ReqDefaults d = {.tk = &g->tk, .V = g->m.s.V, .max_tokens = (int)g->cfg->generate.max_new_tokens,
                     .temperature = 0.0, .seed = 0, .model = NULL};
    const char *param;
    int prc = request_parse(&r->q, o, &d, REQ_API_JSONL, &param, why, n);
    json_decref(o);
    if (prc == 0 && find_id(g, r->q.id) >= 0) {
        char q[300];
        json_t *s = json_string(r->q.id);
        char *lit = json_dumps(s, JSON_ENCODE_ANY);
        snprintf(q, sizeof q, "%s", lit ? lit : "?");
        free(lit);
        json_decref(s);
        snprintf(why, n, "duplicate id %s", q);
        return 2;
    }
    return prc ? 1 : 0;
}

static void read_requests(Gen *g) {
    const char *path = g->cfg->generate.requests;
    FILE *f = fopen(path, "r");
    if (!f) FATAL("set [generate] requests to a JSONL file", "cannot read requests '%s': %s", path, strerror(errno));
    char *line = NULL, why[512];
    size_t cap = 0, len;
    int lineno = 0, bad = 0, skipped = 0, rc, warned = 0;
    while ((rc = jsonl_read_line(f, &line, &cap, REQ_LINE_MAX, &len)) > 0) {
        lineno++;
        if (rc == 1 && line[strspn(line, " \t\r")] == 0) continue;
        Req r;
        memset(&r, 0, sizeof r);
        r.line = lineno;
        int prc = parse_line(g, line, len, rc, &r, why, sizeof why);
        if (prc == 2 && g->reqs[find_id(g, r.q.id)].prior) {
            skipped++;   // done by an earlier run into this mirror
        } else if (prc) {
            bad += req_error(path, lineno, why);
            if (prc == 1 && r.q.id[0] && find_id(g, r.q.id) < 0) write_mirror_line(g, &r.q, why);
        } else {
            if (r.q.unknown[0] && warned++ < 8)
                log_warn("%s:%d: key '%s' is not one generate uses; ignored", path, lineno, r.q.unknown);
            add_request(g, &r);
            continue;
        }
        request_free(&r.q);
    }
    if (rc < 0) FATAL("check the file", "cannot read requests '%s' at line %d: %s", path, lineno + 1, strerror(errno));
    free(line);
    fclose(f);
    int fresh = 0;
    for (int i = 0; i < g->nreq; i++) fresh += !g->reqs[i].prior;
    log_info("generate: %d requests from %s (%d bad lines skipped, %d already done)\n", fresh, path, bad, skipped);
}

// Poisson arrivals replayed in file order, or all at time 0.
static void set_arrivals(Gen *g) {
    const char *a = g->cfg->generate.arrivals;
    double rate = 0.0;
    if (strcmp(a, "all_at_once") != 0) {
        char *end;
        if (strncmp(a, "poisson:", 8) != 0 || (rate = strtod(a + 8, &end)) <= 0 || *end) {
            char where[600];
            FATAL("use all_at_once or poisson:RATE with RATE > 0 requests per second",
                  "%s: [generate] arrivals = '%s' is not understood", deck_where(g->deck, "generate.arrivals", where, sizeof where), a);
        }
    }
    Rng rng = rng_stream((uint64_t)g->cfg->generate.arrival_seed, RNG_SAMPLE + 10, 0);
    double t = 0.0;
    for (int i = 0; i < g->nreq; i++) {
        if (g->reqs[i].prior) continue;
        if (rate > 0) t += -log(1.0 - rng_uniform(&rng)) / rate;
        g->reqs[i].q.arrival = t;
    }
}

static void refuse(Gen *g, Req *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(Gen *g, Req *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
    r->state = R_REFUSED;
    json_t *s = json_string(r->q.id);
    char *id = json_dumps(s, JSON_ENCODE_ANY);
    fprintf(stderr, "%s:%d: request %s refused: %s\n", g->cfg->generate.requests, r->line, id ? id : "?", r->note);
    free(id);
    json_decref(s);
    write_mirror_line(g, &r->q, r->note);
}

// A request that can never run: longer than the model's positions, or more
// blocks (prompt + max_tokens) than the pool holds.
static void check_fits(Gen *g) {
    const GenerateConfig *gc = &g->cfg->generate;
    for (int i = 0; i < g->nreq; i++) {
        Req *r = &g->reqs[i];
        if (r->prior) continue;
        int need = (int)((r->q.plen + r->q.max_tokens + gc->kv_block - 1) / gc->kv_block);
        if (r->q.plen + r->q.max_tokens > g->m.s.maxT)
            refuse(g, r, "prompt of %d tokens + max_tokens %d exceeds the model's %d positions", r->q.plen,
                   r->q.max_tokens, g->m.s.maxT);
        else if (need > gc->kv_blocks)
            refuse(g, r, "needs %d KV blocks (prompt %d + max_tokens %d at %lld per block) but the pool has %lld",
                   need, r->q.plen, r->q.max_tokens, (long long)gc->kv_block, (long long)gc->kv_blocks);
    }
}

// ---------------------------------------------------------------------------
// Serving the requests

static int on_token(void *ctx, Seq *s, double now) {
    Gen *g = ctx;
    Req *r = s->user;
    return request_token(&r->q, &g->tk, now);
}

static void on_done(void *ctx, Seq *s, int reason, double now) {
    Gen *g = ctx;
    Req *r = s->user;
    request_finish(&r->q, reason, now);
    r->state = R_DONE;
    write_mirror_line(g, &r->q, NULL);
}

static void start_request(Gen *g, Req *r) {
    request_start(&r->q, &g->tk, r);
    r->state = R_RUNNING;
}

// Rank 0's loop: submit what has arrived, step, until all are done. While no
// request has arrived, the other tp ranks (waiting in a broadcast bounded by
// [comm] timeout_s) get an empty pass at least every half timeout.
static void serve_batch(Gen *g) {
    int next = 0;
    for (;;) {
        double now = wall_seconds() - g->t0;
        for (; next < g->nreq; next++) {
            Req *r = &g->reqs[next];
            if (r->state != R_WAITING) continue;
            if (r->q.arrival > now) break;
            start_request(g, r);
            sched_submit(&g->sch, &r->q.seq);
        }
        if (sched_step(&g->sch) > 0) continue;
        while (next < g->nreq && g->reqs[next].state != R_WAITING) next++;
        if (next == g->nreq) {
            SYS_CHECK(!sched_busy(&g->sch), "scheduler stalled with requests admitted");
            break;
        }
        double dt = g->reqs[next].q.arrival - now, tmo = g->cfg->comm.timeout_s;
        if (dt <= 0) continue;
        if (g->comm.size > 1 && tmo > 0 && dt > tmo / 2) dt = tmo / 2;
        struct timespec ts = {(time_t)dt, (long)((dt - floor(dt)) * 1e9)};
        nanosleep(&ts, NULL);
        sched_idle(&g->sch);
    }
    sched_quit(&g->sch);
}

// ---------------------------------------------------------------------------
// The naive reference: every token recomputes the whole sequence, no cache.

static const float *naive_params(void *ctx, int u, int phase) {
    Gen *g = ctx;
    (void)phase;
    return g->full + g->m.unit_begin[u];
}
static void naive_release(void *ctx, int u, int phase) { (void)ctx; (void)u; (void)phase; }

static void serve_naive(Gen *g) {
    ParamStore ps = {.ctx = g, .params = naive_params, .release = naive_release};
    Model *m = &g->m;
    int32_t *seq = xmalloc(sizeof(int32_t) * (size_t)m->s.maxT, "naive sequence");
    for (int i = 0; i < g->nreq; i++) {
        Req *r = &g->reqs[i];
        if (r->state != R_WAITING) continue;
        start_request(g, r);
        Seq *s = &r->q.seq;
        memcpy(seq, r->q.prompt, sizeof(int32_t) * (size_t)r->q.plen);
        for (;;) {
            int len = r->q.plen + s->nout;
            model_forward(m, &ps, seq, NULL, 1, len, 0);
            const float *logits = model_logits(m) + (size_t)(len - 1) * m->s.Vp;
            int32_t t = sampler_next(&g->smp, logits, &r->q.sp, s->nout);
            seq[len] = t;
            s->out[s->nout++] = t;
            double now = wall_seconds() - g->t0;
            int stop = on_token(g, s, now);
            if (stop || s->nout >= s->max_tokens) {
                on_done(g, s, stop ? FINISH_STOP : FINISH_LENGTH, now);
                break;
            }
        }
    }
    free(seq);
}

// ---------------------------------------------------------------------------
// Outputs and the summary

static void put_stat(hid_t f, const char *name, LatStat s) {
    const char *suf[5] = {"mean", "p50", "p90", "p95", "p99"};
    double v[5] = {s.mean, s.p50, s.p90, s.p95, s.p99};
    for (int k = 0; k < 5; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s_%s", name, suf[k]);
        h5_attr_f64(f, key, v[k]);
    }
    log_info("  %-28s %10.4f %10.4f %10.4f %10.4f %10.4f   (%d)\n", name, s.mean, s.p50, s.p90, s.p95, s.p99, s.n);
}

static void summarize(Gen *g, hid_t f, double makespan) {
    int n = 0, gaps = 0, tokens = 0;
    for (int i = 0; i < g->nreq; i++) {
        const Req *r = &g->reqs[i];
        if (r->prior || r->state != R_DONE) continue;
        n++;
        tokens += r->q.seq.nout;
        gaps += r->q.seq.nout > 1 ? r->q.seq.nout - 1 : 0;
    }
    const Sched *s = &g->sch;
    log_info("generate: %d requests, %d output tokens in %.2f s; %ld passes, %.1f tokens per pass, %ld preemptions\n", n,
             tokens, makespan, s->passes, s->passes ? s->pass_tokens / (double)s->passes : 0.0, s->preemptions);
    h5_attr_i64(f, "passes", s->passes);
    h5_attr_i64(f, "preemptions", s->preemptions);
    if (n == 0) return;
    double *ttft = xmalloc(sizeof(double) * (size_t)n, "stats"), *e2e = xmalloc(sizeof(double) * (size_t)n, "stats");
    double *itl = xmalloc(sizeof(double) * (size_t)(gaps + 1), "stats");
    int k = 0, j = 0, sla[3] = {0, 0, 0};
    const double rates[3] = {2, 4, 6}, ptok = g->cfg->serve.sla_prompt_tok_s;
    for (int i = 0; i < g->nreq; i++) {
        const Req *r = &g->reqs[i];
        const Request *q = &r->q;
        if (r->prior || r->state != R_DONE) continue;
        ttft[k] = q->first - q->arrival;
        e2e[k] = q->finish - q->arrival;
        for (int t = 1; t < q->seq.nout; t++) itl[j++] = q->tok_time[t] - q->tok_time[t - 1];
        for (int x = 0; x < 3; x++) sla[x] += request_meets_sla(q->arrival, q->first, q->tok_time, q->seq.nout, q->plen, ptok, rates[x]);
        k++;
    }
    log_info("  %-28s %10s %10s %10s %10s %10s\n", "seconds", "mean", "p50", "p90", "p95", "p99");
    put_stat(f, "ttft", latency_stat(ttft, n));
    put_stat(f, "inter_token_latency", latency_stat(itl, gaps));
    put_stat(f, "e2e_latency", latency_stat(e2e, n));
    double rps = makespan > 0 ? n / makespan : 0, tps = makespan > 0 ? tokens / makespan : 0;
    log_info("  throughput: %.3f requests/s, %.1f output tokens/s\n", rps, tps);
    h5_attr_f64(f, "requests_per_s", rps);
    h5_attr_f64(f, "output_tokens_per_s", tps);
    h5_attr_f64(f, "makespan_s", makespan);
    h5_attr_f64(f, "sla_prompt_tok_s", ptok);
    if (g->e.stream) stream_report(g->e.stream, f);
    for (int x = 0; x < 3; x++) {
        char key[64];
        snprintf(key, sizeof key, "effective_rps_sla_%.0f_tok_s", rates[x]);
        double eff = makespan > 0 ? sla[x] / makespan : 0;
        h5_attr_f64(f, key, eff);
        log_info("  effective throughput (TTFT <= prompt/%g s, EMA >= %.0f tokens/s): %.3f requests/s (%d of %d)\n",
                 ptok, rates[x], eff, sla[x], n);
    }
    free(ttft);
    free(e2e);
    free(itl);
}

static void write_gen_h5(Gen *g, const char *path, const char *deck_text, double makespan) {
    hid_t f = h5_create(path);
    h5_attr_str(f, "deck", deck_text);
    h5_attr_str(f, "mode", mode_name(g->cfg));
    h5_attr_str(f, "kv_alloc", g->cfg->generate.kv_alloc == GEN_KV_RESERVE ? "reserve" : "lazy");
    h5_attr_i64(f, "tp", g->comm.size);
    h5_attr_str(f, "times", "seconds since the start of serving; arrival is when the request became available");
    int n = g->nreq;
    const char **ids = xmalloc(sizeof(char *) * (size_t)(n + 1), "ids"), **status = xmalloc(sizeof(char *) * (size_t)(n + 1), "status");
    const char **texts = xmalloc(sizeof(char *) * (size_t)(n + 1), "texts");
    int64_t *po = xmalloc(sizeof(int64_t) * (size_t)(n + 1), "offsets"), *oo = xmalloc(sizeof(int64_t) * (size_t)(n + 1), "offsets");
    double *arr = xmalloc(sizeof(double) * (size_t)(n + 1), "times"), *fst = xmalloc(sizeof(double) * (size_t)(n + 1), "times");
    double *fin = xmalloc(sizeof(double) * (size_t)(n + 1), "times");
    char (*notes)[232] = xmalloc(sizeof *notes * (size_t)(n + 1), "notes");
    po[0] = oo[0] = 0;
    for (int i = 0; i < n; i++) {
        const Req *r = &g->reqs[i];
        int done = r->state == R_DONE;
        ids[i] = r->q.id;
        snprintf(notes[i], sizeof notes[i], "%s%s%s", done ? "done" : "refused", r->note[0] ? ": " : "", r->note);
        status[i] = notes[i];
        texts[i] = r->q.text ? r->q.text : "";
        po[i + 1] = po[i] + r->q.plen;
        oo[i + 1] = oo[i] + (done ? r->q.ntok : 0);
        arr[i] = r->q.arrival;
        fst[i] = done ? r->q.first : NAN;
        fin[i] = done ? r->q.finish : NAN;
    }
    int32_t *pt = xmalloc(sizeof(int32_t) * (size_t)(po[n] + 1), "prompt tokens");
    int32_t *ot = xmalloc(sizeof(int32_t) * (size_t)(oo[n] + 1), "output tokens");
    for (int i = 0; i < n; i++) {
        const Req *r = &g->reqs[i];
        memcpy(pt + po[i], r->q.prompt, sizeof(int32_t) * (size_t)r->q.plen);
        if (r->state == R_DONE) memcpy(ot + oo[i], r->q.out, sizeof(int32_t) * (size_t)r->q.ntok);
    }
    hid_t grp = h5_group(f, "requests");
    h5_attr_str(grp, "layout", "ragged: request i's tokens are [offsets[i], offsets[i+1]) of the tokens arrays");
    h5_write_strings(grp, "id", ids, (uint64_t)n);
    h5_write_strings(grp, "status", status, (uint64_t)n);
    h5_write_strings(grp, "text", texts, (uint64_t)n);
    h5_write_i64(grp, "prompt_offsets", po, (uint64_t)n + 1);
    uint64_t np_ = (uint64_t)po[n], no = (uint64_t)oo[n];
    h5_write_i32(grp, "prompt_tokens", pt, 1, &np_);
    h5_write_i64(grp, "output_offsets", oo, (uint64_t)n + 1);
    h5_write_i32(grp, "output_tokens", ot, 1, &no);
    h5_write_f64(grp, "arrival", arr, (uint64_t)n);
    h5_write_f64(grp, "first_token", fst, (uint64_t)n);
    h5_write_f64(grp, "finish", fin, (uint64_t)n);
    H5_CHECK(H5Gclose(grp));
    summarize(g, f, makespan);
    h5_close(f);
    free(ids); free(status); free(texts); free(po); free(oo); free(arr); free(fst); free(fin); free(notes); free(pt); free(ot);
}

// ---------------------------------------------------------------------------

static void derive_path(char *dst, size_t n, const char *given, const char *dir, const char *name) {
    if (given[0]) snprintf(dst, n, "%s", given);
    else snprintf(dst, n, "%s/%s", dir, name);
}

static int count_waiting(const Gen *g) {
    int n = 0;
    for (int i = 0; i < g->nreq; i++) n += g->reqs[i].state == R_WAITING;
    return n;
}

int generate_run(const Deck *d) {
    Gen g;
    memset(&g, 0, sizeof g);
    g.deck = d;
    g.cfg = &d->cfg;
    const Config *c = g.cfg;
    g.model_name = c->serve.model[0] ? c->serve.model : c->run.name;
    int local_rank = engine_start_ranks(&g.comm, "tp", c->run.threads, c->comm.debug, c->comm.timeout_s);
    int rank = g.comm.rank;
    char *deck_text = xmalloc(1 << 16, "deck text");
    deck_format(d, deck_text, 1 << 16);
    char why[600];
    if (tokenizer_open(&g.tk, c->data.tokenizer, c->data.tokenizer_dir, why, sizeof why) != 0)
        FATAL_ALL("run `make deps`, or set [data] tokenizer_dir", "generate: %s", why);
    EngineSetup es;
    if (c->generate.naive) {   // the whole model on the cpu, no engine: the reference the engine is checked against
        memset(&es, 0, sizeof es);
        engine_whole_model(&g.m, c, 1, (int)c->model.seq_len);
        es.full = xmalloc(g.m.nparams * sizeof(float), "weights");
        weights_read(&g.m, c->generate.weights, es.full);
        es.bs = (int)c->generate.kv_block;
        es.max_blocks = (g.m.s.maxT + es.bs - 1) / es.bs;
        es.Nmax = (int)c->generate.token_budget;
    } else {
        engine_open(&g.e, &g.m, &es, d, &g.comm, local_rank);
    }
    g.full = es.full;
    g.max_blocks = es.max_blocks;
    const int Nmax = es.Nmax, bs = es.bs;
    sampler_create(&g.smp, g.m.s.V);
    char out[DECK_STR + 16], *mirror = g.mirror_path;
    derive_path(out, sizeof out, c->generate.out, c->run.out_dir, "gen.h5");
    derive_path(mirror, sizeof g.mirror_path, c->generate.jsonl, c->run.out_dir, "gen.jsonl");
    int rc = 0;
    if (rank == 0) {
        make_dirs(c->run.out_dir, "set [run] out_dir to a directory you can write");
        make_parent_dirs(out, "set [generate] out to a path you can write");
        make_parent_dirs(mirror, "set [generate] jsonl to a path you can write");
        log_info("generate: %s backend\n", g.e.bk ? g.e.bk->name : "cpu");
        log_info("generate: %s, %zu parameters, tp = %d, %d threads per rank, mode %s, token budget %d, KV cache %lld blocks of %d tokens (%.1f MiB per rank, %s)\n",
                 c->generate.weights, model_count_params(&g.m), g.comm.size, kernels_get_threads(), mode_name(c), Nmax,
                 (long long)c->generate.kv_blocks, bs,
                 (double)engine_kv_bytes_per_block(&g.m, g.comm.size, bs) * (double)c->generate.kv_blocks / 1048576.0,
                 c->generate.kv_alloc == GEN_KV_RESERVE ? "reserved up front" : "lazy, preempting");
        if (!c->generate.naive) {
            static const char *dtypes[] = {"fp32", "bf16", "int8"};
            log_info("generate: matrices held as %s: %.1f MiB per rank streamed by each decode pass (held_bytes %zu)\n",
                     dtypes[c->generate.weights_dtype], (double)g.e.held_bytes / 1048576.0, g.e.held_bytes);
        }
        read_mirror(&g, mirror);
        g.mirror = fopen(mirror, "a");
        if (!g.mirror) mirror_failed(&g, "append to");
        read_requests(&g);
        set_arrivals(&g);
        check_fits(&g);
        int todo = count_waiting(&g);
        if (!c->generate.naive) {
            SchedOptions so = {.mode = c->generate.mode, .reserve = c->generate.kv_alloc == GEN_KV_RESERVE,
                               .max_batch = (int)c->generate.max_batch, .kv_block = bs, .kv_blocks = (int)c->generate.kv_blocks,
                               .max_blocks = g.max_blocks, .t0 = 0};
            SchedHooks hk = {.ctx = &g, .on_token = on_token, .on_done = on_done};
            sched_create(&g.sch, &so, &hk, &g.comm, &g.e, &g.smp);
        }
        g.t0 = wall_seconds();
        g.sch.o.t0 = g.t0;
        if (c->generate.naive) serve_naive(&g);
        else serve_batch(&g);
        double makespan = wall_seconds() - g.t0;
        errno = 0;
        if (fsync(fileno(g.mirror)) != 0 && errno != EINVAL) mirror_failed(&g, "sync");
        if (fclose(g.mirror) != 0) mirror_failed(&g, "close");
        g.mirror = NULL;
        if (todo == 0) {
            // Nothing ran: say so, and keep the earlier gen.h5 (its summary is the earlier run's).
            log_info("generate: nothing to do: every request in %s is already done in %s (or refused); %s is left as it was\n"
                     "  hint: delete %s, or set [generate] jsonl to another file, to run them again\n",
                     c->generate.requests, mirror, out, mirror);
        } else {
            write_gen_h5(&g, out, deck_text, makespan);
            log_info("generate: wrote %s and %s\n", out, mirror);
        }
        if (!c->generate.naive) sched_free(&g.sch);
    } else if (!c->generate.naive) {
        sched_follow(&g.comm, &g.e, g.max_blocks);
    }
    for (int i = 0; i < g.nreq; i++) request_free(&g.reqs[i].q);
    free(g.reqs);
    if (!c->generate.naive) {
        engine_free(&g.e);
        device_stop(&es.dev);
    }
    sampler_free(&g.smp);
    tokenizer_free(&g.tk);
    free(g.full);
    model_free(&g.m);
    comm_free(&g.comm);
    free(deck_text);
    return rc;
}
