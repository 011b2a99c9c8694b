// generate.c: requests in, continuous batching over a paged KV cache, gen.h5 out.
//
// Rank 0 reads the requests, admits them (reserving KV blocks for prompt plus
// max_tokens, so a full cache can never deadlock), composes every forward pass
// and samples; it broadcasts each pass to the other tensor-parallel ranks,
// which hold their slices of the weights and of the cache.
#include "generate.h"
#include "comm.h"
#include "device.h"
#include "engine.h"
#include "stream.h"
#include "h5io.h"
#include "kernels.h"
#include "json.h"
#include "log.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "sysutil.h"
#include "topo.h"
#include "tokenizer.h"
#include "utf8.h"
#include "weights.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

enum { R_WAITING, R_RUNNING, R_DONE, R_REFUSED };
#define MAX_STOPS 4
#define REQ_ID_MAX 127                  // bytes of a request id
#define REQ_LINE_MAX ((size_t)4 << 20)  // bytes of a request line (and of a mirror line)
#define REQ_TEMPERATURE_MAX 100.0
#define REQ_SEED_MAX 9007199254740992.0 // 2^53: every integer up to it is exact in JSON's doubles

typedef struct Req {
    char id[REQ_ID_MAX + 1];
    int line;                   // in the requests file; 0 for earlier runs' outputs
    int prior;                  // done by an earlier run (read back from the JSONL mirror)
    int32_t *prompt;
    int plen;
    int max_tokens;
    SamplerParams sp;
    char *stops[MAX_STOPS];
    int nstop;
    int state;
    double arrival, first, finish;
    int32_t *out;
    int nout;
    double *tok_time;           // (max_tokens) when each output token was sampled
    int32_t *table;             // (max_blocks) KV blocks reserved for it
    int nblocks;
    int fed;                    // tokens already in the cache
    char *raw;                  // (max_tokens * max_token_bytes + 5) decoded bytes, appended per token
    size_t nraw;
    TokStream stream;           // bytes of a UTF-8 sequence a token left incomplete
    char *text;                 // (3 max_tokens + 1) the output as clean UTF-8
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
    float *full;                // whole parameters (naive mode, and to slice from)
    Req *reqs;
    int nreq;
    int max_blocks;             // per sequence
    int32_t *free_blocks;       // stack of free block ids
    int nfree;
    int32_t *msg;               // a pass as broadcast: N, nsample, quit, tok, pos, tables, sample rows
    size_t msg_len;
    int32_t *sample_req;        // (Smax) request of each sampled row
    float *logits;              // (Smax, Vp)
    FILE *mirror;
    char mirror_path[DECK_STR + 16];
    char *line;                 // the JSONL line being written, grown as needed
    size_t line_cap;
    double t0;
    int passes;
    double pass_tokens;
    int next_decode;            // the request the next pass's decode rows start from (round-robin)
} Gen;

// ---------------------------------------------------------------------------
// Text

// Appends the bytes of r's newest token to r->raw (streaming: each token is
// decoded once; a UTF-8 sequence it leaves incomplete waits for the next). Returns 1 when a stop string appears, with r->nraw cut where
// the earliest one starts. Only matches that end in the new bytes can be new,
// so only the last (longest stop - 1) old bytes are searched again. The bytes
// are matched raw (they may hold NULs).
static int decode_step(Gen *g, Req *r) {
    const size_t old = r->nraw;
    r->nraw += tokenizer_decode_step(&g->tk, &r->stream, (uint32_t)r->out[r->nout - 1], r->raw + old);
    size_t cut = r->nraw + 1;
    for (int k = 0; k < r->nstop; k++) {
        size_t len = strlen(r->stops[k]), from = old + 1 > len ? old + 1 - len : 0;
        const char *hit = memmem(r->raw + from, r->nraw - from, r->stops[k], len);
        if (hit && (size_t)(hit - r->raw) < cut) cut = (size_t)(hit - r->raw);
    }
    if (cut > r->nraw) return 0;
    r->nraw = cut;
    return 1;
}

// The output as clean UTF-8, once, when r finishes: a byte that starts no valid
// sequence (the byte tokenizer can emit any byte), and a NUL, becomes U+FFFD.
static void finish_text(Req *r, int stopped) {
    if (!stopped) r->nraw += tokenizer_decode_flush(&r->stream, r->raw + r->nraw);
    r->raw[r->nraw] = 0;
    utf8_clean(r->raw, r->nraw, r->text);
}

// ---------------------------------------------------------------------------
// Requests

// A request's output buffers, sized once when it starts: no allocation per token.
static void req_buffers(const Gen *g, Req *r) {
    size_t n = (size_t)r->max_tokens, bytes = n * (size_t)g->tk.max_token_bytes + 5;
    r->out = xmalloc(sizeof(int32_t) * n, "output tokens");
    r->tok_time = xmalloc(sizeof(double) * n, "token times");
    r->raw = xmalloc(bytes, "decoded output");
    r->text = xcalloc(3 * bytes + 1, "output text");
    memset(&r->stream, 0, sizeof r->stream);
}

static int req_error(const char *path, int line, char *msg) {
    fprintf(stderr, "%s:%d: bad request, skipped: %s\n", path, line, msg);
    return -1;
}

static int find_id(const Gen *g, const char *id) {
    for (int i = 0; i < g->nreq; i++)
        if (strcmp(g->reqs[i].id, id) == 0) return i;
    return -1;
}

// v is an integer number in [lo, hi] (doubles: exact for every bound used here).
static int int_in(const JsonValue *v, double lo, double hi) {
    return v && v->type == JSON_NUMBER && v->num == floor(v->num) && v->num >= lo && v->num <= hi;
}

// r->id from "id": a non-empty string of at most REQ_ID_MAX bytes, or an integer
// of at most 2^53 in magnitude (written in decimal).
static int parse_id(const JsonValue *v, Req *r, char *why, size_t n) {
    if (!v || (v->type != JSON_STRING && v->type != JSON_NUMBER)) {
        snprintf(why, n, "'id' (a string or an integer) is required");
        return -1;
    }
    if (v->type == JSON_NUMBER) {
        if (!int_in(v, -REQ_SEED_MAX, REQ_SEED_MAX)) {
            snprintf(why, n, "a number 'id' must be an integer in [-2^53, 2^53]; use a string for other ids");
            return -1;
        }
        snprintf(r->id, sizeof r->id, "%.0f", v->num);
        return 0;
    }
    size_t len = strlen(v->str);
    if (len == 0 || len > REQ_ID_MAX) {
        snprintf(why, n, "'id' must be 1 to %d bytes, got %zu", REQ_ID_MAX, len);
        return -1;
    }
    memcpy(r->id, v->str, len + 1);
    return 0;
}

// The prompt as token ids, from "prompt" (UTF-8 text, encoded) or "tokens" (ids < V).
static int parse_prompt(Gen *g, const JsonObject *o, Req *r, char *why, size_t n) {
    const JsonValue *pt = json_get(o, "prompt"), *tk = json_get(o, "tokens");
    if ((pt != NULL) == (tk != NULL)) { snprintf(why, n, "give exactly one of 'prompt' (text) or 'tokens' (ids)"); return -1; }
    if (pt) {
        if (pt->type != JSON_STRING || !pt->str[0]) { snprintf(why, n, "'prompt' must be a non-empty string"); return -1; }
        size_t len = strlen(pt->str);
        r->prompt = xmalloc(len * sizeof(int32_t), "prompt");
        r->plen = (int)tokenizer_encode(&g->tk, (const uint8_t *)pt->str, len, (uint32_t *)r->prompt);
        for (int i = 0; i < r->plen; i++)
            if (r->prompt[i] < 0 || r->prompt[i] >= g->m.s.V) { snprintf(why, n, "the prompt encodes to token %d at index %d, outside the model's vocabulary of %d", r->prompt[i], i, g->m.s.V); return -1; }
        return 0;
    }
    if (tk->type != JSON_ARRAY || tk->of_strings || tk->n == 0) { snprintf(why, n, "'tokens' must be a non-empty array of token ids"); return -1; }
    r->prompt = xmalloc((size_t)tk->n * sizeof(int32_t), "prompt");
    for (int i = 0; i < tk->n; i++) {
        double t = tk->nums[i];
        if (t != floor(t) || t < 0 || t >= g->m.s.V) { snprintf(why, n, "token %.17g at index %d is not an integer in [0, %d)", t, i, g->m.s.V); return -1; }
        r->prompt[i] = (int32_t)t;
    }
    r->plen = tk->n;
    return 0;
}

// Sampling settings and max_tokens, each bounded.
static int parse_sampling(Gen *g, const JsonObject *o, Req *r, char *why, size_t n) {
    const JsonValue *v;
    r->max_tokens = (int)g->cfg->generate.max_new_tokens;
    if ((v = json_get(o, "max_tokens"))) {
        if (!int_in(v, 1, (double)DECK_MAX_SEQ)) { snprintf(why, n, "'max_tokens' must be an integer in [1, %lld]", (long long)DECK_MAX_SEQ); return -1; }
        r->max_tokens = (int)v->num;
    }
    r->sp = (SamplerParams){.temperature = 0.0, .top_k = 0, .top_p = 1.0, .seed = 0};
    if ((v = json_get(o, "temperature"))) {
        if (v->type != JSON_NUMBER || v->num < 0 || v->num > REQ_TEMPERATURE_MAX) { snprintf(why, n, "'temperature' must be a number in [0, %g]", REQ_TEMPERATURE_MAX); return -1; }
        r->sp.temperature = v->num;
    }
    if ((v = json_get(o, "top_k"))) {
        if (!int_in(v, 0, INT32_MAX)) { snprintf(why, n, "'top_k' must be an integer in [0, %d] (0 = off)", INT32_MAX); return -1; }
        r->sp.top_k = (int)v->num;
    }
    if ((v = json_get(o, "top_p"))) {
        if (v->type != JSON_NUMBER || v->num <= 0 || v->num > 1) { snprintf(why, n, "'top_p' must be a number in (0, 1]"); return -1; }
        r->sp.top_p = v->num;
    }
    if ((v = json_get(o, "seed"))) {
        if (!int_in(v, 0, REQ_SEED_MAX)) { snprintf(why, n, "'seed' must be an integer in [0, 2^53]"); return -1; }
        r->sp.seed = (uint64_t)v->num;
    }
    if ((v = json_get(o, "stop"))) {
        if (v->type == JSON_STRING && v->str[0]) {
            r->stops[r->nstop++] = strdup(v->str);
        } else if (v->type == JSON_ARRAY && (v->of_strings || v->n == 0) && v->n <= MAX_STOPS) {
            for (int i = 0; i < v->n; i++) if (v->strs[i][0]) r->stops[r->nstop++] = strdup(v->strs[i]);
        } else { snprintf(why, n, "'stop' must be a string or up to %d strings", MAX_STOPS); return -1; }
        for (int k = 0; k < r->nstop; k++) SYS_CHECK(r->stops[k], "out of memory for stop strings");
    }
    return 0;
}

// Fills r from one parsed line; on a problem returns -1 with the reason in why.
static int parse_request(Gen *g, const JsonObject *o, Req *r, char *why, size_t n) {
    static const char *known[] = {"id", "prompt", "tokens", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop"};
    for (int i = 0; i < o->n; i++) {
        int ok = 0;
        for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) ok |= strcmp(o->keys[i], known[k]) == 0;
        if (!ok) { snprintf(why, n, "unknown key '%.64s' (known: id, prompt, tokens, max_tokens, temperature, top_k, top_p, seed, stop)", o->keys[i]); return -1; }
    }
    if (parse_id(json_get(o, "id"), r, why, n)) return -1;
    if (find_id(g, r->id) >= 0) {
        char q[160];
        json_quote(q, sizeof q, 0, r->id);
        snprintf(why, n, "duplicate id %s", q);
        return -1;
    }
    if (parse_prompt(g, o, r, why, n)) return -1;
    return parse_sampling(g, o, r, why, n);
}

static void add_request(Gen *g, const Req *r) {
    g->reqs = realloc(g->reqs, sizeof(Req) * (size_t)(g->nreq + 1));
    SYS_CHECK(g->reqs, "out of memory for requests");
    g->reqs[g->nreq++] = *r;
}

// An int32 array of token ids from a mirror line's array, or NULL if v is not one.
static int32_t *token_array(const JsonValue *v, const char *what) {
    if (!v || v->type != JSON_ARRAY || (v->n > 0 && v->of_strings)) return NULL;
    int32_t *t = xmalloc(sizeof(int32_t) * (size_t)(v->n + 1), what);
    for (int i = 0; i < v->n; i++) {
        if (v->nums[i] != floor(v->nums[i]) || v->nums[i] < 0 || v->nums[i] > INT32_MAX) {
            free(t);
            return NULL;
        }
        t[i] = (int32_t)v->nums[i];
    }
    return t;
}

static double time_or_nan(const JsonValue *v) { return v && v->type == JSON_NUMBER ? v->num : NAN; }

// One line of an earlier run's mirror as a done request; -1 with why when it is not one.
static int mirror_request(Gen *g, const JsonObject *o, Req *r, char *why, size_t n) {
    const JsonValue *id = json_get(o, "id"), *st = json_get(o, "status"), *tx = json_get(o, "text");
    if (!st || st->type != JSON_STRING || strcmp(st->str, "done") != 0) { snprintf(why, n, "no \"status\": \"done\""); return -1; }
    if (!id || id->type != JSON_STRING || parse_id(id, r, why, n)) { snprintf(why, n, "no string 'id' of 1 to %d bytes", REQ_ID_MAX); return -1; }
    if (find_id(g, r->id) >= 0) { snprintf(why, n, "id already read from an earlier line"); return -1; }
    if (tx && tx->type != JSON_STRING) { snprintf(why, n, "'text' is not a string"); return -1; }
    r->prompt = token_array(json_get(o, "prompt_tokens"), "prior prompt");
    r->out = token_array(json_get(o, "tokens"), "prior output");
    if (!r->prompt || !r->out) {
        free(r->prompt);
        free(r->out);
        snprintf(why, n, "'tokens' and 'prompt_tokens' must be arrays of token ids");
        return -1;
    }
    r->plen = json_get(o, "prompt_tokens")->n;
    r->nout = json_get(o, "tokens")->n;
    r->text = strdup(tx ? tx->str : "");
    SYS_CHECK(r->text, "out of memory for earlier outputs");
    r->prior = 1;
    r->state = R_DONE;
    r->arrival = time_or_nan(json_get(o, "arrival"));
    r->first = time_or_nan(json_get(o, "first_token"));
    r->finish = time_or_nan(json_get(o, "finish"));
    snprintf(r->note, sizeof r->note, "done by an earlier run");
    return 0;
}

// Outputs of earlier runs into the same mirror: their ids are done already. A line
// that is not a whole output (a run killed mid-write, an edited file) is reported
// with its line number and ignored: its request runs again.
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
    char *line = NULL, why[256];
    size_t cap = 0, len;
    int found = 0, lineno = 0, rc;
    while ((rc = jsonl_read_line(f, &line, &cap, REQ_LINE_MAX, &len)) > 0) {
        lineno++;
        if (rc == 1 && line[strspn(line, " \t\r")] == 0) continue;
        JsonObject o;
        Req r;
        memset(&r, 0, sizeof r);
        if (rc == 2) snprintf(why, sizeof why, "a NUL byte in the line");
        else if (rc == 3) snprintf(why, sizeof why, "a line longer than %zu bytes", REQ_LINE_MAX);
        if (rc != 1 || json_parse_object(line, &o, why, sizeof why)) {
            log_warn("%s:%d: not an earlier output, ignored (its request, if any, runs again): %s", path, lineno, why);
            continue;
        }
        int bad = mirror_request(g, &o, &r, why, sizeof why);
        json_free(&o);
        if (bad) {
            log_warn("%s:%d: not an earlier output, ignored (its request, if any, runs again): %s", path, lineno, why);
            continue;
        }
        add_request(g, &r);
        found++;
    }
    if (rc < 0) log_warn("generate: reading '%s' stopped at line %d: %s", path, lineno, strerror(errno));
    free(line);
    fclose(f);
    if (found) log_info("generate: %d requests already done in %s are skipped\n", found, path);
}

static void read_requests(Gen *g) {
    const char *path = g->cfg->generate.requests;
    FILE *f = fopen(path, "r");
    if (!f) FATAL("set [generate] requests to a JSONL file", "cannot read requests '%s': %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0, len;
    int lineno = 0, bad = 0, skipped = 0, rc;
    while ((rc = jsonl_read_line(f, &line, &cap, REQ_LINE_MAX, &len)) > 0) {
        lineno++;
        if (rc == 1 && line[strspn(line, " \t\r")] == 0) continue;
        JsonObject o;
        char why[256];
        Req r;
        memset(&r, 0, sizeof r);
        r.line = lineno;
        if (rc == 2 || rc == 3) {
            if (rc == 2) snprintf(why, sizeof why, "a NUL byte in the line");
            else snprintf(why, sizeof why, "a line longer than %zu bytes", REQ_LINE_MAX);
            bad += req_error(path, lineno, why) != 0;
            continue;
        }
        if (json_parse_object(line, &o, why, sizeof why)) {
            bad += req_error(path, lineno, why) != 0;
            continue;
        }
        int prc = parse_request(g, &o, &r, why, sizeof why);
        json_free(&o);
        if (prc) {
            if (strncmp(why, "duplicate id", 12) == 0 && g->reqs[find_id(g, r.id)].prior) {
                skipped++;   // done by an earlier run into this mirror
            } else {
                bad += req_error(path, lineno, why) != 0;
            }
            free(r.prompt);
            for (int k = 0; k < r.nstop; k++) free(r.stops[k]);
            continue;
        }
        add_request(g, &r);
    }
    if (rc < 0) FATAL("check the file", "cannot read requests '%s' at line %d: %s", path, lineno + 1, strerror(errno));
    free(line);
    fclose(f);
    int fresh = 0;
    for (int i = 0; i < g->nreq; i++) fresh += !g->reqs[i].prior;
    log_info("generate: %d requests from %s (%d bad lines skipped, %d already done)\n",
             fresh, path, bad, skipped);
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
        g->reqs[i].arrival = t;
    }
}

// ---------------------------------------------------------------------------
// Admission: blocks for prompt + max_tokens, reserved up front.

static int blocks_for(const Gen *g, const Req *r) {
    int bs = (int)g->cfg->generate.kv_block;
    return (r->plen + r->max_tokens + bs - 1) / bs;
}

static void refuse(Gen *g, Req *r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void refuse(Gen *g, Req *r, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
    r->state = R_REFUSED;
    (void)g;
    char id[2 * REQ_ID_MAX + 8];
    json_quote(id, sizeof id, 0, r->id);
    fprintf(stderr, "%s:%d: request %s refused: %s\n", g->cfg->generate.requests, r->line, id, r->note);
}

static void check_fits(Gen *g) {
    for (int i = 0; i < g->nreq; i++) {
        Req *r = &g->reqs[i];
        if (r->prior) continue;
        int need = blocks_for(g, r);
        if (r->plen + r->max_tokens > g->m.s.maxT)
            refuse(g, r, "prompt of %d tokens + max_tokens %d exceeds the model's %d positions", r->plen,
                   r->max_tokens, g->m.s.maxT);
        else if (need > g->cfg->generate.kv_blocks)
            refuse(g, r, "needs %d KV blocks (prompt %d + max_tokens %d at %lld per block) but the pool has %lld",
                   need, r->plen, r->max_tokens, (long long)g->cfg->generate.kv_block,
                   (long long)g->cfg->generate.kv_blocks);
    }
}

static int admit(Gen *g, Req *r, double now) {
    int need = blocks_for(g, r);
    if (need > g->nfree) return 0;
    r->table = xmalloc(sizeof(int32_t) * (size_t)g->max_blocks, "block table");
    for (int k = 0; k < g->max_blocks; k++) r->table[k] = 0;
    for (int k = 0; k < need; k++) r->table[k] = g->free_blocks[--g->nfree];
    r->nblocks = need;
    req_buffers(g, r);
    r->state = R_RUNNING;
    (void)now;
    return 1;
}

// The JSONL line under construction: g->line grows to fit, so no id or text can overflow it.
static void line_reserve(Gen *g, size_t len, size_t more) {
    if (len + more + 1 <= g->line_cap) return;
    size_t cap = 2 * (len + more + 1);
    char *p = realloc(g->line, cap);
    SYS_CHECK(p, "out of memory for a JSONL line of %zu bytes", cap);
    g->line = p;
    g->line_cap = cap;
}

__attribute__((format(printf, 3, 4))) static size_t line_printf(Gen *g, size_t len, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    SYS_CHECK(w >= 0, "cannot format a JSONL line");
    line_reserve(g, len, (size_t)w);
    va_start(ap, fmt);
    vsnprintf(g->line + len, g->line_cap - len, fmt, ap);
    va_end(ap);
    return len + (size_t)w;
}

static size_t line_quote(Gen *g, size_t len, const char *s) {
    size_t need = json_quote(NULL, 0, 0, s);
    line_reserve(g, len, need);
    return json_quote(g->line, g->line_cap, len, s);
}

static void mirror_failed(const Gen *g, const char *what) {
    FATAL("check the disk (space, quota, permissions); the requests written so far are kept and skipped on a rerun",
          "cannot %s '%s': %s", what, g->mirror_path, strerror(errno));
}

// One finished request as a line of the JSONL mirror, flushed so a killed job loses no
// finished request (a rerun skips the ids found there).
static void write_mirror_line(Gen *g, const Req *r) {
    size_t len = line_printf(g, 0, "{\"id\": ");
    len = line_quote(g, len, r->id);
    len = line_printf(g, len, ", \"status\": \"done\", \"text\": ");
    len = line_quote(g, len, r->text);
    len = line_printf(g, len, ", \"tokens\": [");
    for (int i = 0; i < r->nout; i++) len = line_printf(g, len, i ? ", %d" : "%d", r->out[i]);
    len = line_printf(g, len, "], \"prompt_tokens\": [");
    for (int i = 0; i < r->plen; i++) len = line_printf(g, len, i ? ", %d" : "%d", r->prompt[i]);
    len = line_printf(g, len, "], \"arrival\": %.6f, \"first_token\": %.6f, \"finish\": %.6f}\n", r->arrival,
                      r->first, r->finish);
    errno = 0;
    if (fwrite(g->line, 1, len, g->mirror) != len || fflush(g->mirror) != 0) mirror_failed(g, "write to");
}

static void finish_request(Gen *g, Req *r, double now, int stopped) {
    r->finish = now;
    r->state = R_DONE;
    finish_text(r, stopped);
    for (int k = 0; k < r->nblocks; k++) g->free_blocks[g->nfree++] = r->table[k];
    r->nblocks = 0;
    write_mirror_line(g, r);
}

// A sampled token for r: record it, and finish r when done.
static void take_token(Gen *g, Req *r, int32_t tok, double now) {
    if (r->nout == 0) r->first = now;
    r->tok_time[r->nout] = now;
    r->out[r->nout++] = tok;
    int stopped = decode_step(g, r);
    if (stopped || r->nout >= r->max_tokens) finish_request(g, r, now, stopped);
}

// ---------------------------------------------------------------------------
// Passes

typedef struct Pass {
    int N, nsample;
    int32_t *tok, *pos, *tables, *sample;
} Pass;

static Pass pass_view(Gen *g) {
    int Nmax = g->e.Nmax;
    Pass p = {g->msg[0], g->msg[1], g->msg + 3, g->msg + 3 + Nmax, g->msg + 3 + 2 * (size_t)Nmax,
              g->msg + 3 + (size_t)Nmax * (2 + (size_t)g->max_blocks)};
    return p;
}

// Adds k tokens of r (from cache position r->fed) to the pass; the last is
// sampled when it completes the prompt or is a decode token.
static void add_rows(Gen *g, Pass *p, int ri, int k) {
    Req *r = &g->reqs[ri];
    for (int j = 0; j < k; j++) {
        int at = r->fed + j;
        p->tok[p->N] = at < r->plen ? r->prompt[at] : r->out[at - r->plen];
        p->pos[p->N] = at;
        memcpy(p->tables + (size_t)p->N * g->max_blocks, r->table, sizeof(int32_t) * (size_t)g->max_blocks);
        p->N++;
    }
    r->fed += k;
    if (r->fed >= r->plen) {
        g->sample_req[p->nsample] = ri;
        p->sample[p->nsample++] = p->N - 1;
    }
}

// Composes the next pass. splitfuse: running decodes first, then prompt chunks
// fill the token budget; static: the admitted batch's prompts, then its decodes.
// When the running decodes alone fill the budget (or the sampled rows of a
// pass) and leave no room for a waiting prompt, or exceed it, rows go round-robin over every running request from where the last
// pass stopped, one decode row or one prompt chunk each: no request starves
// behind the ones before it in the file.
static void compose(Gen *g, Pass *p, int splitfuse) {
    int budget = g->e.Nmax;
    p->N = p->nsample = 0;
    int prefilling = 0, decoding = 0;
    for (int i = 0; i < g->nreq; i++) {
        const Req *r = &g->reqs[i];
        if (r->state != R_RUNNING) continue;
        if (r->fed < r->plen) prefilling = 1;
        else decoding++;
    }
    const int full = decoding > budget || decoding > g->e.Smax ||
                     (splitfuse && prefilling && (decoding >= budget || decoding >= g->e.Smax));
    if ((splitfuse || !prefilling) && full) {
        int last = -1;
        for (int k = 0; k < g->nreq && p->N < budget && p->nsample < g->e.Smax; k++) {
            int i = (g->next_decode + k) % g->nreq;
            Req *r = &g->reqs[i];
            if (r->state != R_RUNNING || (!splitfuse && r->fed < r->plen)) continue;
            int left = r->plen - r->fed;
            add_rows(g, p, i, left > 0 ? (left < budget - p->N ? left : budget - p->N) : 1);
            last = i;
        }
        if (last >= 0) g->next_decode = (last + 1) % g->nreq;
        return;
    }
    if (splitfuse || !prefilling) {
        for (int i = 0; i < g->nreq && p->N < budget && p->nsample < g->e.Smax; i++) {
            Req *r = &g->reqs[i];
            if (r->state == R_RUNNING && r->fed >= r->plen) add_rows(g, p, i, 1);
        }
    }
    for (int i = 0; i < g->nreq && p->N < budget && p->nsample < g->e.Smax; i++) {
        Req *r = &g->reqs[i];
        if (r->state != R_RUNNING || r->fed >= r->plen) continue;
        int k = r->plen - r->fed < budget - p->N ? r->plen - r->fed : budget - p->N;
        add_rows(g, p, i, k);
    }
}

static int any_running(const Gen *g) {
    for (int i = 0; i < g->nreq; i++) if (g->reqs[i].state == R_RUNNING) return 1;
    return 0;
}

// Admits arrived requests in order while blocks and batch slots last. Static
// batching admits only into an empty batch.
static void admit_arrived(Gen *g, double now, int splitfuse) {
    if (!splitfuse && any_running(g)) return;
    int running = 0;
    for (int i = 0; i < g->nreq; i++) running += g->reqs[i].state == R_RUNNING;
    for (int i = 0; i < g->nreq; i++) {
        Req *r = &g->reqs[i];
        if (r->state != R_WAITING) continue;
        if (r->arrival > now || running >= g->cfg->generate.max_batch) break;
        if (!admit(g, r, now)) break;   // first come, first served: wait for blocks
        running++;
    }
}

static double next_arrival(const Gen *g) {
    for (int i = 0; i < g->nreq; i++) if (g->reqs[i].state == R_WAITING) return g->reqs[i].arrival;
    return -1.0;
}

static void run_pass(Gen *g) {
    Pass p = pass_view(g);
    RaggedBatch b = {.N = p.N, .nsample = p.nsample, .max_blocks = g->max_blocks, .tok = p.tok, .pos = p.pos,
                     .tables = p.tables, .sample = p.sample};
    engine_forward(&g->e, &b, g->logits);
}

static void broadcast_pass(Gen *g) {
    comm_bcast(&g->comm, g->msg, g->msg_len * sizeof(int32_t), 0, "pass");
}

// Rank 0's loop: admit, compose, broadcast, compute, sample, until all are done.
static void serve(Gen *g) {
    int splitfuse = g->cfg->generate.mode == GEN_SPLITFUSE;
    for (;;) {
        double now = wall_seconds() - g->t0;
        admit_arrived(g, now, splitfuse);
        Pass p = pass_view(g);
        compose(g, &p, splitfuse);
        g->msg[0] = p.N;
        g->msg[1] = p.nsample;
        g->msg[2] = 0;
        if (p.N == 0) {
            double t = next_arrival(g);
            if (t < 0 && !any_running(g)) break;
            SYS_CHECK(t >= 0 || any_running(g), "scheduler stalled");
            if (t > now) {
                // The other tp ranks wait in a broadcast bounded by [comm] timeout_s: wake them
                // with an empty pass at least every half timeout while no request has arrived.
                double dt = t - now, tmo = g->cfg->comm.timeout_s;
                if (g->comm.size > 1 && tmo > 0 && dt > tmo / 2) dt = tmo / 2;
                struct timespec ts = {(time_t)dt, (long)((dt - floor(dt)) * 1e9)};
                nanosleep(&ts, NULL);
                if (g->comm.size > 1) broadcast_pass(g);   // N = 0: an idle pass
            }
            continue;
        }
        broadcast_pass(g);
        run_pass(g);
        g->passes++;
        g->pass_tokens += p.N;
        now = wall_seconds() - g->t0;
        for (int k = 0; k < p.nsample; k++) {
            Req *r = &g->reqs[g->sample_req[k]];
            take_token(g, r, sampler_next(&g->smp, g->logits + (size_t)k * g->m.s.Vp, &r->sp, r->nout), now);
        }
    }
    g->msg[2] = 1;   // quit
    broadcast_pass(g);
}

// The other tensor-parallel ranks: compute whatever pass rank 0 sends.
static void follow(Gen *g) {
    for (;;) {
        broadcast_pass(g);
        if (g->msg[2]) return;
        if (g->msg[0] > 0) run_pass(g);     // N = 0: rank 0 is waiting for arrivals
    }
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
        req_buffers(g, r);
        r->state = R_RUNNING;
        memcpy(seq, r->prompt, sizeof(int32_t) * (size_t)r->plen);
        while (r->state == R_RUNNING) {
            int len = r->plen + r->nout;
            model_forward(m, &ps, seq, NULL, 1, len, 0);
            const float *logits = model_logits(m) + (size_t)(len - 1) * m->s.Vp;
            int32_t t = sampler_next(&g->smp, logits, &r->sp, r->nout);
            seq[len] = t;
            take_token(g, r, t, wall_seconds() - g->t0);
        }
    }
    free(seq);
}

// ---------------------------------------------------------------------------
// Outputs and the summary

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct Stat { double mean, p50, p90, p99; int n; } Stat;

static Stat stat_of(double *v, int n) {
    Stat s = {NAN, NAN, NAN, NAN, n};
    if (n == 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    s.p50 = v[(int)(0.50 * (n - 1) + 0.5)];
    s.p90 = v[(int)(0.90 * (n - 1) + 0.5)];
    s.p99 = v[(int)(0.99 * (n - 1) + 0.5)];
    return s;
}

static void put_stat(hid_t f, const char *name, Stat s) {
    const char *suf[4] = {"mean", "p50", "p90", "p99"};
    double v[4] = {s.mean, s.p50, s.p90, s.p99};
    for (int k = 0; k < 4; k++) {
        char key[64];
        snprintf(key, sizeof key, "%s_%s", name, suf[k]);
        h5_attr_f64(f, key, v[k]);
    }
    log_info("  %-28s %10.4f %10.4f %10.4f %10.4f   (%d)\n", name, s.mean, s.p50, s.p90, s.p99, s.n);
}

static void summarize(Gen *g, hid_t f, double makespan) {
    int n = 0, gaps = 0, tokens = 0;
    for (int i = 0; i < g->nreq; i++) {
        const Req *r = &g->reqs[i];
        if (r->prior || r->state != R_DONE) continue;
        n++;
        tokens += r->nout;
        gaps += r->nout > 1 ? r->nout - 1 : 0;
    }
    double *ttft = xmalloc(sizeof(double) * (size_t)(n + 1), "stats"), *e2e = xmalloc(sizeof(double) * (size_t)(n + 1), "stats");
    double *itl = xmalloc(sizeof(double) * (size_t)(gaps + 1), "stats");
    int k = 0, j = 0, sla[3] = {0, 0, 0};
    const double rates[3] = {2, 4, 6};
    for (int i = 0; i < g->nreq; i++) {
        const Req *r = &g->reqs[i];
        if (r->prior || r->state != R_DONE) continue;
        ttft[k] = r->first - r->arrival;
        e2e[k] = r->finish - r->arrival;
        for (int t = 1; t < r->nout; t++) itl[j++] = r->tok_time[t] - r->tok_time[t - 1];
        // FastGen's SLA: first token within prompt_len/512 s, then a steady rate.
        double gen_rate = r->nout > 1 ? (r->nout - 1) / (r->finish - r->first) : INFINITY;
        for (int q = 0; q < 3; q++) sla[q] += ttft[k] <= r->plen / 512.0 && gen_rate >= rates[q];
        k++;
    }
    log_info("generate: %d requests, %d output tokens in %.2f s; %d passes, %.1f tokens per pass\n", n, tokens,
             makespan, g->passes, g->passes ? g->pass_tokens / g->passes : 0.0);
    log_info("  %-28s %10s %10s %10s %10s\n", "seconds", "mean", "p50", "p90", "p99");
    put_stat(f, "ttft", stat_of(ttft, n));
    put_stat(f, "inter_token_latency", stat_of(itl, gaps));
    put_stat(f, "e2e_latency", stat_of(e2e, n));
    double rps = makespan > 0 ? n / makespan : 0, tps = makespan > 0 ? tokens / makespan : 0;
    log_info("  throughput: %.3f requests/s, %.1f output tokens/s\n", rps, tps);
    h5_attr_f64(f, "requests_per_s", rps);
    h5_attr_f64(f, "output_tokens_per_s", tps);
    h5_attr_f64(f, "makespan_s", makespan);
    h5_attr_i64(f, "passes", g->passes);
    if (g->e.stream) stream_report(g->e.stream, f);
    for (int q = 0; q < 3; q++) {
        char key[64];
        snprintf(key, sizeof key, "effective_rps_sla_%.0f_tok_s", rates[q]);
        double eff = makespan > 0 ? sla[q] / makespan : 0;
        h5_attr_f64(f, key, eff);
        log_info("  effective throughput (TTFT <= prompt/512 s, >= %.0f tokens/s): %.3f requests/s (%d of %d)\n",
                 rates[q], eff, sla[q], n);
    }
    free(ttft);
    free(e2e);
    free(itl);
}

static void write_gen_h5(Gen *g, const char *path, const char *deck_text, double makespan) {
    hid_t f = h5_create(path);
    h5_attr_str(f, "deck", deck_text);
    h5_attr_str(f, "mode", g->cfg->generate.naive ? "naive" : g->cfg->generate.mode == GEN_STATIC ? "static" : "splitfuse");
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
        ids[i] = r->id;
        snprintf(notes[i], sizeof notes[i], "%s%s%s", r->state == R_DONE ? "done" : "refused", r->note[0] ? ": " : "", r->note);
        status[i] = notes[i];
        texts[i] = r->text ? r->text : "";
        po[i + 1] = po[i] + r->plen;
        oo[i + 1] = oo[i] + (r->state == R_DONE ? r->nout : 0);
        arr[i] = r->arrival;
        fst[i] = r->state == R_DONE ? r->first : NAN;
        fin[i] = r->state == R_DONE ? r->finish : NAN;
    }
    int32_t *pt = xmalloc(sizeof(int32_t) * (size_t)(po[n] + 1), "prompt tokens");
    int32_t *ot = xmalloc(sizeof(int32_t) * (size_t)(oo[n] + 1), "output tokens");
    for (int i = 0; i < n; i++) {
        const Req *r = &g->reqs[i];
        memcpy(pt + po[i], r->prompt, sizeof(int32_t) * (size_t)r->plen);
        if (r->state == R_DONE) memcpy(ot + oo[i], r->out, sizeof(int32_t) * (size_t)r->nout);
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

int generate_run(const Deck *d) {
    Gen g;
    memset(&g, 0, sizeof g);
    g.deck = d;
    g.cfg = &d->cfg;
    const Config *c = g.cfg;
    int local_rank = engine_start_ranks(&g.comm, "tp", c->run.threads, c->comm.debug, c->comm.timeout_s);
    int rank = g.comm.rank;
    char *deck_text = xmalloc(1 << 16, "deck text");
    deck_format(d, deck_text, 1 << 16);
    char why[600];
    if (tokenizer_open(&g.tk, c->data.tokenizer, c->data.tokenizer_dir, why, sizeof why) != 0)
        FATAL_ALL("run `make deps`, or set [data] tokenizer_dir", "generate: %s", why);
    engine_whole_model(&g.m, c, 1, c->generate.naive ? (int)c->model.seq_len : 1);
    const int streamed = c->generate.weights_from != GEN_FROM_MEMORY;   // ZeRO-Inference (stream.h)
    if (!streamed) {
        g.full = xmalloc(g.m.nparams * sizeof(float), "weights");
        weights_read(&g.m, c->generate.weights, g.full);
    }
    sampler_create(&g.smp, g.m.s.V);
    int bs = (int)c->generate.kv_block;
    g.max_blocks = (g.m.s.maxT + bs - 1) / bs;
    int Nmax = (int)c->generate.token_budget;
    if (streamed && Nmax < c->generate.max_batch) Nmax = (int)c->generate.max_batch;   // a pass reads every layer: decode all at once
    int Smax = c->generate.max_batch < Nmax ? (int)c->generate.max_batch : Nmax;   // a pass samples at most its rows
    DeviceInfo dev;
    memset(&dev, 0, sizeof dev);
    if (!c->generate.naive) {
        // The cuda backend where the deck asks for it (or auto finds a device) at tp = 1; naive stays on cpu.
        char err[2048];
        if (device_select(d, g.comm.size == 1, &dev, err, sizeof err) != 0) FATAL_ALL(NULL, "%s", err);
        size_t arena = engine_arena_bytes(&g.m, g.comm.size, (int)c->generate.kv_blocks, bs, Nmax, Smax, g.max_blocks);
        if (streamed)   // the device holds the window's layers, not all of them
            arena = stream_arena_bytes(&g.m, g.comm.size, (int)c->generate.window, c->generate.weights_dtype, arena);
        const Backend *bk = device_start(&dev, local_rank, arena);
        if (streamed)   // dense models at tp = the job's ranks (main.c refuses MoE and ep > 1 with streaming)
            engine_create_streamed(&g.e, &g.m, stream_open(d, &g.m, bk, &g.comm), &c->model, bk, &g.comm,
                                   (int)c->generate.kv_blocks, bs, Nmax, Smax, g.max_blocks);
        else
            engine_create_ep(&g.e, &g.m, g.full, &c->model, bk, &g.comm, (int)c->parallel.tp, (int)c->parallel.ep,
                             c->generate.weights_dtype, (int)c->generate.kv_blocks, bs, Nmax, Smax, g.max_blocks);
        g.msg_len = 3 + (size_t)Nmax * (2 + (size_t)g.max_blocks) + (size_t)Smax;
        g.msg = xcalloc(g.msg_len * sizeof(int32_t), "pass message");
        g.sample_req = xcalloc(sizeof(int32_t) * (size_t)Smax, "sampled requests");
        g.logits = xmalloc(sizeof(float) * (size_t)Smax * g.m.s.Vp, "logits");
    }
    char out[DECK_STR + 16], *mirror = g.mirror_path;
    derive_path(out, sizeof out, c->generate.out, c->run.out_dir, "gen.h5");
    derive_path(mirror, sizeof g.mirror_path, c->generate.jsonl, c->run.out_dir, "gen.jsonl");
    int rc = 0;
    if (rank == 0) {
        make_dirs(c->run.out_dir, "set [run] out_dir to a directory you can write");
        make_parent_dirs(out, "set [generate] out to a path you can write");
        make_parent_dirs(mirror, "set [generate] jsonl to a path you can write");
        log_info("generate: %s backend\n", g.e.bk ? g.e.bk->name : "cpu");
        log_info("generate: %s, %zu parameters, tp = %d, %d threads per rank, mode %s, token budget %d, KV cache %lld blocks of %d tokens (%.1f MiB per rank)\n",
                 c->generate.weights, g.m.nparams, g.comm.size, kernels_get_threads(),
                 c->generate.naive ? "naive" : c->generate.mode == GEN_STATIC ? "static" : "splitfuse", Nmax,
                 (long long)c->generate.kv_blocks, bs,
                 (double)engine_kv_bytes_per_block(&g.m, g.comm.size, bs) * (double)c->generate.kv_blocks / 1048576.0);
        if (!c->generate.naive) {
            static const char *dtypes[] = {"fp32", "bf16", "int8"};
            log_info("generate: matrices held as %s: %.1f MiB per rank streamed by each decode pass (held_bytes %zu)\n",
                     dtypes[c->generate.weights_dtype], (double)g.e.held_bytes / 1048576.0, g.e.held_bytes);
        }
        read_mirror(&g, mirror);
        read_requests(&g);
        set_arrivals(&g);
        check_fits(&g);
        g.free_blocks = xmalloc(sizeof(int32_t) * (size_t)c->generate.kv_blocks, "free blocks");
        for (int b = (int)c->generate.kv_blocks - 1; b >= 0; b--) g.free_blocks[g.nfree++] = b;
        g.mirror = fopen(mirror, "a");
        if (!g.mirror) mirror_failed(&g, "append to");
        g.t0 = wall_seconds();
        if (c->generate.naive) serve_naive(&g);
        else serve(&g);
        double makespan = wall_seconds() - g.t0;
        errno = 0;
        if (fsync(fileno(g.mirror)) != 0 && errno != EINVAL) mirror_failed(&g, "sync");
        if (fclose(g.mirror) != 0) mirror_failed(&g, "close");
        g.mirror = NULL;
        free(g.line);
        write_gen_h5(&g, out, deck_text, makespan);
        log_info("generate: wrote %s and %s\n", out, mirror);
    } else if (!c->generate.naive) {
        follow(&g);
    }
    for (int i = 0; i < g.nreq; i++) {
        Req *r = &g.reqs[i];
        free(r->prompt); free(r->out); free(r->tok_time); free(r->table); free(r->raw); free(r->text);
        for (int k = 0; k < r->nstop; k++) free(r->stops[k]);
    }
    free(g.reqs);
    free(g.free_blocks);
    if (!c->generate.naive) {
        engine_free(&g.e);
        device_stop(&dev);
        free(g.msg);
        free(g.sample_req);
        free(g.logits);
    }
    sampler_free(&g.smp);
    tokenizer_free(&g.tk);
    free(g.full);
    model_free(&g.m);
    comm_free(&g.comm);
    free(deck_text);
    return rc;
}
