// serve.c: `partita serve`: HTTP (libmicrohttpd, one thread per connection)
// in front of the scheduler, which runs on rank 0's main thread.
//
// Threads: each connection's thread parses its body, queues a ServeReq in the
// inbox and then waits (in the response's content reader) for the text the
// scheduler produces; the main thread moves the inbox into the scheduler,
// steps it, and publishes tokens under one mutex, waking the readers. A
// ServeReq has two owners, its connection and the scheduler; the last to let
// go frees it, so a client that disconnects frees its KV blocks (the main
// thread cancels it) and nothing is kept once a request is answered.
#include "serve.h"
#include "comm.h"
#include "device.h"
#include "engine.h"
#include "json.h"
#include "kernels.h"
#include "log.h"
#include "model.h"
#include "request.h"
#include "sampler.h"
#include "scheduler.h"
#include "stream.h"
#include "sysutil.h"
#include "tokenizer.h"
#include "weights.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <microhttpd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// The one piece of global state: set by the SIGTERM/SIGINT handler, read by
// rank 0's loop (a handler can reach nothing else).
static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

#define N_TTFT_BUCKETS 12
#define N_ITL_BUCKETS 11
static const double ttft_buckets[N_TTFT_BUCKETS] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
static const double itl_buckets[N_ITL_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
#define RING 4096               // recent requests kept for the quantiles
#define ITL_RING 65536          // recent inter-token gaps kept for the quantiles
#define RATE_WINDOW 16          // seconds of the tokens/s gauge

typedef struct ServeReq {
    Request q;
    int refs;                   // the connection and the scheduler
    int submitted, done;        // in the scheduler; retired by it
    int cancel;                 // the client went away: the main thread cancels it
    int http_status;            // for the log: 200, or 408/499 for a client that stopped reading or left
    int fd;                     // the client's socket (to notice a hang-up while waiting)
    size_t sent;                // text bytes sent (streaming)
    int sent_tok;               // tokens whose chunk was sent (one chunk per step, as vLLM: its text may be "")
    int phase;                  // what the reader sends next: 0 text, 1 final event(s), 2 [DONE], 3 end
    char *pend;                 // bytes formatted but not yet sent
    size_t npend, pend_off;
    char cid[48];               // "cmpl-N"
    double created;             // unix time
    struct ServeReq *next;      // inbox / cancel list
} ServeReq;

typedef struct Hist { double sum; long count; long b[16]; } Hist;

struct Conn;

typedef struct Server {
    const Config *cfg;
    Comm comm;
    Model m;
    Tokenizer tk;
    Engine e;
    Sampler smp;
    Sched sch;
    float *full;
    int max_blocks;
    const char *model_name;
    struct MHD_Daemon *d;
    pthread_mutex_t mu;
    pthread_cond_t progress;    // tokens or ends published (readers wait on it)
    pthread_cond_t work;        // the inbox or a cancel (the main thread waits on it when idle)
    ServeReq *inbox, *inbox_tail;
    struct Conn *watch;         // connections whose body has not begun (the main thread answers 408 past the deadline)
    int ninbox, nwaiting, nrunning, blocks_used;
    int draining;
    long next_id;
    FILE *log;
    char log_path[DECK_STR + 16];
    double t0;
    // metrics
    long status_count[600];
    long prompt_tokens, gen_tokens, done_count, sla_met[3], preemptions;
    Hist ttft, itl;
    double rate_t[RATE_WINDOW];
    long rate_n[RATE_WINDOW];
    double ring_ttft[RING], ring_e2e[RING], *ring_itl;
    long n_ring, n_itl;
} Server;

static double now_s(const Server *s) { return wall_seconds() - s->t0; }

static void hist_add(Hist *h, const double *edges, int n, double x) {
    h->sum += x;
    h->count++;
    for (int i = 0; i < n; i++) if (x <= edges[i]) h->b[i]++;
}

// ---------------------------------------------------------------------------
// Owners

static void release(Server *s, ServeReq *r) {   // with mu held
    (void)s;
    if (--r->refs > 0) return;
    request_free(&r->q);
    free(r->pend);
    free(r);
}

// ---------------------------------------------------------------------------
// The scheduler's hooks (main thread)

static int on_token(void *ctx, Seq *q, double now) {
    Server *s = ctx;
    ServeReq *r = q->user;
    pthread_mutex_lock(&s->mu);
    int stop = request_token(&r->q, &s->tk, now);
    int i = q->nout - 1;
    if (i == 0) hist_add(&s->ttft, ttft_buckets, N_TTFT_BUCKETS, now - r->q.arrival);
    else {
        double gap = r->q.tok_time[i] - r->q.tok_time[i - 1];
        hist_add(&s->itl, itl_buckets, N_ITL_BUCKETS, gap);
        s->ring_itl[s->n_itl++ % ITL_RING] = gap;
    }
    s->gen_tokens++;
    int sec = (int)floor(now) % RATE_WINDOW;
    if (s->rate_t[sec] != floor(now)) { s->rate_t[sec] = floor(now); s->rate_n[sec] = 0; }
    s->rate_n[sec]++;
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static void log_request(Server *s, const ServeReq *r) {   // with mu held
    if (!s->log) return;
    char why[96];
    snprintf(why, sizeof why, "cancelled (HTTP %d: %s)", r->http_status,
             r->http_status == 408 ? "the client stopped reading" : r->http_status == 503 ? "drain_s ran out" : "the client left");
    char *line = request_result_line(&r->q, s->cfg->generate.jsonl_format, r->q.reason == FINISH_CANCELLED ? why : NULL,
                                     s->model_name);
    if (fputs(line, s->log) < 0 || fflush(s->log) != 0)
        log_warn("serve: cannot write to '%s': %s; the log is incomplete", s->log_path, strerror(errno));
    free(line);
}

static void on_done(void *ctx, Seq *q, int reason, double now) {
    Server *s = ctx;
    ServeReq *r = q->user;
    pthread_mutex_lock(&s->mu);
    request_finish(&r->q, reason, now);
    r->done = 1;
    if (reason != FINISH_CANCELLED) {
        s->done_count++;
        const double rates[3] = {2, 4, 6};
        for (int k = 0; k < 3; k++)
            s->sla_met[k] += request_meets_sla(r->q.arrival, r->q.first, r->q.tok_time, q->nout, r->q.plen,
                                               s->cfg->serve.sla_prompt_tok_s, rates[k]);
        s->ring_ttft[s->n_ring % RING] = r->q.first - r->q.arrival;
        s->ring_e2e[s->n_ring % RING] = r->q.finish - r->q.arrival;
        s->n_ring++;
    }
    log_request(s, r);
    release(s, r);
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->mu);
}

// ---------------------------------------------------------------------------
// HTTP responses

typedef struct Conn {
    char *body;
    size_t len;                 // body bytes kept
    size_t got;                 // body bytes received (kept or not)
    size_t expect;              // Content-Length; 0 when none or unknown (chunked)
    int too_big;
    int fd;                     // the client's socket
    int watched;                // on s->watch: the headers came, no body byte yet
    int expired;                // the main thread answered 408 on the socket itself
    double start;               // wall seconds when the request began
    ServeReq *sr;               // the request its response streams
    struct Conn *wprev, *wnext; // s->watch
} Conn;

static enum MHD_Result send_buf(struct MHD_Connection *c, int status, const char *type, const char *buf, size_t n) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, (void *)buf, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", type);
    if (status == 405) MHD_add_response_header(resp, "Allow", "POST");
    if (status == 408 || status == 413) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    enum MHD_Result rc = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return rc;
}

static enum MHD_Result send_json(Server *s, struct MHD_Connection *c, int status, json_t *o) {
    char *t = json_line(o);
    json_decref(o);
    pthread_mutex_lock(&s->mu);
    s->status_count[status]++;
    pthread_mutex_unlock(&s->mu);
    enum MHD_Result rc = send_buf(c, status, "application/json", t, strlen(t));
    free(t);
    return rc;
}

// OpenAI's error body: {"error": {"message", "type", "param", "code"}}.
static json_t *error_obj(int status, const char *param, const char *msg) {
    const char *type = status == 404 ? "NotFoundError" : status == 429 ? "RateLimitError" : status >= 500 ? "ServiceUnavailableError"
                     : status == 408 ? "TimeoutError" : "BadRequestError";
    json_t *e = json_pack("{s:s, s:s, s:o, s:i}", "message", msg, "type", type, "param", param ? json_string(param) : json_null(), "code", status);
    return json_pack("{s:o}", "error", e);
}

static enum MHD_Result send_error(Server *s, struct MHD_Connection *c, int status, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(Server *s, struct MHD_Connection *c, int status, const char *param, const char *fmt, ...) {
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(s, c, status, error_obj(status, param, msg));
}

// A 408 written on the socket itself, for a client whose body is late: libmicrohttpd
// cannot queue a response while a body is being received (it would only close the
// connection). Nothing else is being written to fd at that point (no response was
// queued). The write side is shut after it, so the client reads the 408 and then
// end of file. With linger, the body's remaining bytes are read and dropped (for at
// most linger seconds, until the client closes): closing a socket with unread bytes
// sends a reset, which can destroy the 408 before the client reads it.
static void answer_408(Server *s, int fd, double linger) {
    char msg[160];
    snprintf(msg, sizeof msg, "the request body did not arrive within [serve] client_timeout_s = %g s", s->cfg->serve.client_timeout_s);
    json_t *eo = error_obj(408, NULL, msg);
    char *body = json_line(eo);
    json_decref(eo);
    char head[256];
    int hn = snprintf(head, sizeof head, "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n\r\n", strlen(body));
    const char *parts[2] = {head, body};
    size_t lens[2] = {(size_t)hn, strlen(body)};
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < lens[i]) {   // a fresh socket's send buffer takes these few hundred bytes at once
            ssize_t n = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            off += (size_t)n;
        }
    }
    free(body);
    shutdown(fd, SHUT_WR);
    double end = wall_seconds() + linger;
    char sink[4096];
    while (linger > 0) {
        double left = end - wall_seconds();
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&p, 1, (int)(left * 1000) + 1) <= 0) break;
        ssize_t n = recv(fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
    }
}

static void usage_obj(json_t *o, const Request *q) {
    json_object_set_new(o, "usage", json_pack("{s:i, s:i, s:i}", "prompt_tokens", q->plen, "completion_tokens", q->ntok,
                                              "total_tokens", q->plen + q->ntok));
}

// A completion object (the whole response, or one SSE chunk of it).
static json_t *completion(const Server *s, const ServeReq *r, const char *text, const char *finish) {
    json_t *choice = json_pack("{s:i, s:s, s:n, s:o}", "index", 0, "text", text, "logprobs", "finish_reason",
                               finish ? json_string(finish) : json_null());
    if (finish && r->q.reason == FINISH_STOP && r->q.stop_hit >= 0)
        json_object_set_new(choice, "stop_reason", json_string(r->q.stops[r->q.stop_hit]));
    return json_pack("{s:s, s:s, s:I, s:s, s:[o]}", "id", r->cid, "object", "text_completion", "created",
                     (json_int_t)r->created, "model", s->model_name, "choices", choice);
}

static void set_pending(ServeReq *r, char *bytes) {
    free(r->pend);
    r->pend = bytes;
    r->npend = strlen(bytes);
    r->pend_off = 0;
}

static char *sse(json_t *o) {
    char *j = json_line(o);
    json_decref(o);
    size_t n = strlen(j);
    char *e = xmalloc(n + 9, "event");
    memcpy(e, "data: ", 6);
    memcpy(e + 6, j, n);
    memcpy(e + 6 + n, "\n\n", 3);
    free(j);
    return e;
}

static char *dup_str(const char *t) {
    char *p = strdup(t);
    SYS_CHECK(p, "out of memory");
    return p;
}

// The next bytes of r's response into r->pend; 0, 1 when there is nothing yet (wait), -1 at the end. mu held.
static int next_piece(Server *s, ServeReq *r) {
    const char *finish = r->q.reason == FINISH_STOP ? "stop" : r->q.reason == FINISH_LENGTH ? "length" : "abort";
    if (!r->q.stream) {
        if (r->phase == 3) return -1;
        if (!r->done) return 1;
        if (r->q.reason == FINISH_CANCELLED) return -1;
        json_t *o = completion(s, r, r->q.text, finish);
        usage_obj(o, &r->q);
        char *t = json_line(o);
        json_decref(o);
        set_pending(r, t);
        r->phase = 3;
        return 0;
    }
    if (r->phase == 0) {
        if (r->q.ntext > r->sent || (r->q.ntok > r->sent_tok && !r->done)) {
            r->sent_tok = r->q.ntok;
            char *delta = xmalloc(r->q.ntext - r->sent + 1, "delta");
            memcpy(delta, r->q.text + r->sent, r->q.ntext - r->sent);
            delta[r->q.ntext - r->sent] = 0;
            r->sent = r->q.ntext;
            set_pending(r, sse(completion(s, r, delta, NULL)));
            free(delta);
            return 0;
        }
        if (!r->done) return 1;
        r->phase = 1;
    }
    if (r->phase == 1) {
        json_t *o = completion(s, r, "", finish);
        if (r->q.include_usage) usage_obj(o, &r->q);
        set_pending(r, sse(o));
        r->phase = 2;
        return 0;
    }
    if (r->phase == 2) {
        set_pending(r, dup_str("data: [DONE]\n\n"));
        r->phase = 3;
        return 0;
    }
    return -1;
}

static int client_gone(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return fd >= 0 && poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

typedef struct Reader { Server *s; ServeReq *r; } Reader;

// libmicrohttpd's content reader (the connection's thread): waits for text.
static ssize_t read_response(void *cls, uint64_t pos, char *buf, size_t max) {
    Reader *rd = cls;
    Server *s = rd->s;
    ServeReq *r = rd->r;
    (void)pos;
    // libmicrohttpd drops a connection that moves no bytes for client_timeout_s, waiting
    // included: a heartbeat (an SSE comment, or JSON's leading whitespace) keeps it open.
    const double beat = s->cfg->serve.client_timeout_s / 3;
    double since = wall_seconds();
    pthread_mutex_lock(&s->mu);
    for (;;) {
        if (r->pend && r->pend_off < r->npend) {
            size_t n = r->npend - r->pend_off < max ? r->npend - r->pend_off : max;
            memcpy(buf, r->pend + r->pend_off, n);
            r->pend_off += n;
            pthread_mutex_unlock(&s->mu);
            return (ssize_t)n;
        }
        int rc = next_piece(s, r);
        if (rc < 0) {
            int err = r->done && r->q.reason == FINISH_CANCELLED && !r->q.stream;
            pthread_mutex_unlock(&s->mu);
            return err ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
        }
        if (rc == 0) continue;
        if (client_gone(r->fd)) {
            r->cancel = 1;
            r->http_status = 499;
            pthread_cond_signal(&s->work);
            pthread_mutex_unlock(&s->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (wall_seconds() - since > beat && max >= 16) {
            int n = r->q.stream ? snprintf(buf, max, ": keep-alive\n\n") : snprintf(buf, max, " ");
            pthread_mutex_unlock(&s->mu);
            return n;
        }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) { ts.tv_sec++; ts.tv_nsec -= 1000000000L; }
        pthread_cond_timedwait(&s->progress, &s->mu, &ts);
    }
}

// The response is done with (sent, or the connection closed): the connection lets r go.
static void free_reader(void *cls) {
    Reader *rd = cls;
    Server *s = rd->s;
    pthread_mutex_lock(&s->mu);
    if (!rd->r->done) {
        // Not finished and not read: a client that left (an end of file or a reset
        // on its socket), or one that stopped reading until libmicrohttpd's timeout.
        rd->r->cancel = 1;
        if (!rd->r->http_status || rd->r->http_status == 200) rd->r->http_status = client_gone(rd->r->fd) ? 499 : 408;
        pthread_cond_signal(&s->work);
    }
    release(s, rd->r);
    pthread_mutex_unlock(&s->mu);
    free(rd);
}

// ---------------------------------------------------------------------------
// Endpoints

static enum MHD_Result completions(Server *s, struct MHD_Connection *c, Conn *cn) {
    char why[600];
    json_t *o = json_parse_object(cn->body ? cn->body : "", cn->len, why, sizeof why);
    if (!o) return send_error(s, c, 400, NULL, "the body is not a JSON object: %s", why);
    ServeReq *r = xcalloc(sizeof *r, "request");
    ReqDefaults d = {.tk = &s->tk, .V = s->m.s.V, .max_tokens = (int)s->cfg->generate.max_new_tokens,
                     .temperature = 1.0, .model = s->model_name};
    const char *param;
    pthread_mutex_lock(&s->mu);   // the tokenizer's word cache is not thread-safe
    d.seed = (uint64_t)s->next_id * 0x9E3779B97F4A7C15ull ^ (uint64_t)(wall_seconds() * 1e6);
    int rc = request_parse(&r->q, o, &d, REQ_API_OPENAI, &param, why, sizeof why);
    long id = ++s->next_id;
    pthread_mutex_unlock(&s->mu);
    json_decref(o);
    if (rc == 0 && r->q.plen + r->q.max_tokens > s->m.s.maxT) {
        rc = -1;
        param = "max_tokens";
        snprintf(why, sizeof why, "prompt of %d tokens + max_tokens %d exceeds the model's %d positions", r->q.plen,
                 r->q.max_tokens, s->m.s.maxT);
    } else if (rc == 0 && sched_blocks(&s->sch, r->q.plen + r->q.max_tokens) > s->cfg->generate.kv_blocks) {
        rc = -1;
        param = "max_tokens";
        snprintf(why, sizeof why, "prompt %d + max_tokens %d needs more KV blocks than the pool's %lld", r->q.plen,
                 r->q.max_tokens, (long long)s->cfg->generate.kv_blocks);
    }
    if (rc) {
        request_free(&r->q);
        free(r);
        return send_error(s, c, rc == 404 ? 404 : 400, param, "%s", why);
    }
    snprintf(r->cid, sizeof r->cid, "cmpl-%ld", id);
    snprintf(r->q.id, sizeof r->q.id, "%s", r->cid);
    r->created = (double)time(NULL);
    r->refs = 2;
    r->http_status = 200;
    r->fd = cn->fd;
    if (s->cfg->serve.sndbuf_bytes > 0 && r->fd >= 0) {
        int sb = (int)s->cfg->serve.sndbuf_bytes;
        if (setsockopt(r->fd, SOL_SOCKET, SO_SNDBUF, &sb, sizeof sb) != 0)
            log_warn("serve: setsockopt(SO_SNDBUF, %d): %s; the kernel's default stays", sb, strerror(errno));
    }
    request_start(&r->q, &s->tk, r);
    pthread_mutex_lock(&s->mu);
    int full = s->ninbox + s->nwaiting >= s->cfg->serve.max_queue + (s->cfg->generate.max_batch - s->nrunning);
    int draining = s->draining;
    if (!full && !draining) {
        r->q.arrival = now_s(s);
        if (s->inbox_tail) s->inbox_tail->next = r;
        else s->inbox = r;
        s->inbox_tail = r;
        s->ninbox++;
        s->prompt_tokens += r->q.plen;
        s->status_count[200]++;
        pthread_cond_signal(&s->work);
    }
    pthread_mutex_unlock(&s->mu);
    if (full || draining) {
        request_free(&r->q);
        free(r);
        if (draining) return send_error(s, c, 503, NULL, "the server is shutting down");
        return send_error(s, c, 429, NULL, "the queue is full (%lld waiting); retry later", (long long)s->cfg->serve.max_queue);
    }
    cn->sr = r;
    Reader *rd = xmalloc(sizeof *rd, "reader");
    *rd = (Reader){s, r};
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, read_response, rd, free_reader);
    SYS_CHECK(resp, "cannot create a response");
    MHD_add_response_header(resp, "Content-Type", r->q.stream ? "text/event-stream" : "application/json");
    if (r->q.stream) MHD_add_response_header(resp, "Cache-Control", "no-cache");
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result models(Server *s, struct MHD_Connection *c) {
    json_t *m = json_pack("{s:s, s:s, s:I, s:s, s:I}", "id", s->model_name, "object", "model", "created",
                          (json_int_t)time(NULL), "owned_by", "partita", "max_model_len", (json_int_t)s->m.s.maxT);
    return send_json(s, c, 200, json_pack("{s:s, s:[o]}", "object", "list", "data", m));
}

static void put_hist(char **b, size_t *n, FILE *f, const char *name, const char *help, const Hist *h, const double *edges, int k) {
    (void)b; (void)n;
    fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < k; i++) fprintf(f, "%s_bucket{le=\"%g\"} %ld\n", name, edges[i], h->b[i]);
    fprintf(f, "%s_bucket{le=\"+Inf\"} %ld\n%s_sum %.9g\n%s_count %ld\n", name, h->count, name, h->sum, name, h->count);
}

static void put_quantiles(FILE *f, const char *name, const char *help, const double *ring, long n, long cap) {
    int m = (int)(n < cap ? n : cap);
    double *v = xmalloc(sizeof(double) * (size_t)(m + 1), "quantiles");
    memcpy(v, ring, sizeof(double) * (size_t)m);
    LatStat st = latency_stat(v, m);
    free(v);
    fprintf(f, "# HELP %s %s (the last %ld)\n# TYPE %s summary\n", name, help, cap, name);
    const char *q[4] = {"0.5", "0.9", "0.95", "0.99"};
    double x[4] = {st.p50, st.p90, st.p95, st.p99};
    for (int i = 0; i < 4; i++) fprintf(f, "%s{quantile=\"%s\"} %.9g\n", name, q[i], m ? x[i] : 0.0);
    fprintf(f, "%s_count %d\n", name, m);
}

// Prometheus text format (version 0.0.4).
static enum MHD_Result metrics(Server *s, struct MHD_Connection *c) {
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    SYS_CHECK(f, "open_memstream: %s", strerror(errno));
    pthread_mutex_lock(&s->mu);
    double now = now_s(s), tok = 0;
    for (int i = 0; i < RATE_WINDOW; i++) if (s->rate_t[i] > now - RATE_WINDOW && s->rate_t[i] < floor(now)) tok += s->rate_n[i];
    double span = now < RATE_WINDOW - 1 ? floor(now) : RATE_WINDOW - 1;
    fprintf(f, "# HELP partita_requests_running Requests in the running batch.\n# TYPE partita_requests_running gauge\npartita_requests_running %d\n", s->nrunning);
    fprintf(f, "# HELP partita_requests_waiting Requests queued for a batch slot.\n# TYPE partita_requests_waiting gauge\npartita_requests_waiting %d\n", s->nwaiting + s->ninbox);
    fprintf(f, "# HELP partita_kv_blocks_used KV-cache blocks held by requests.\n# TYPE partita_kv_blocks_used gauge\npartita_kv_blocks_used %d\n", s->blocks_used);
    fprintf(f, "# HELP partita_kv_blocks_total KV-cache blocks in the pool.\n# TYPE partita_kv_blocks_total gauge\npartita_kv_blocks_total %lld\n", (long long)s->cfg->generate.kv_blocks);
    fprintf(f, "# HELP partita_tokens_per_second Output tokens per second over the last %d s.\n# TYPE partita_tokens_per_second gauge\npartita_tokens_per_second %.6g\n", RATE_WINDOW - 1, span > 0 ? tok / span : 0.0);
    fprintf(f, "# HELP partita_generation_tokens_total Output tokens produced.\n# TYPE partita_generation_tokens_total counter\npartita_generation_tokens_total %ld\n", s->gen_tokens);
    fprintf(f, "# HELP partita_prompt_tokens_total Prompt tokens accepted.\n# TYPE partita_prompt_tokens_total counter\npartita_prompt_tokens_total %ld\n", s->prompt_tokens);
    fprintf(f, "# HELP partita_preemptions_total Running requests preempted (KV blocks freed, recomputed later).\n# TYPE partita_preemptions_total counter\npartita_preemptions_total %ld\n", s->preemptions);
    fprintf(f, "# HELP partita_requests_total HTTP requests answered, by status.\n# TYPE partita_requests_total counter\n");
    for (int k = 0; k < 600; k++) if (s->status_count[k]) fprintf(f, "partita_requests_total{status=\"%d\"} %ld\n", k, s->status_count[k]);
    fprintf(f, "# HELP partita_requests_sla_total Finished requests within FastGen's SLA (TTFT <= prompt/%g s, EMA rate >= R tokens/s).\n# TYPE partita_requests_sla_total counter\n", s->cfg->serve.sla_prompt_tok_s);
    for (int k = 0; k < 3; k++) fprintf(f, "partita_requests_sla_total{rate=\"%d\"} %ld\n", 2 * (k + 1), s->sla_met[k]);
    fprintf(f, "# HELP partita_requests_finished_total Requests finished (stop or length).\n# TYPE partita_requests_finished_total counter\npartita_requests_finished_total %ld\n", s->done_count);
    put_hist(NULL, NULL, f, "partita_time_to_first_token_seconds", "Time from arrival to the first output token.", &s->ttft, ttft_buckets, N_TTFT_BUCKETS);
    put_hist(NULL, NULL, f, "partita_inter_token_latency_seconds", "Time between consecutive output tokens.", &s->itl, itl_buckets, N_ITL_BUCKETS);
    put_quantiles(f, "partita_ttft_quantile_seconds", "TTFT quantiles", s->ring_ttft, s->n_ring, RING);
    put_quantiles(f, "partita_inter_token_latency_quantile_seconds", "inter-token latency quantiles", s->ring_itl, s->n_itl, ITL_RING);
    put_quantiles(f, "partita_e2e_latency_quantile_seconds", "end-to-end latency quantiles", s->ring_e2e, s->n_ring, RING);
    pthread_mutex_unlock(&s->mu);
    SYS_CHECK(fclose(f) == 0, "metrics: %s", strerror(errno));
    enum MHD_Result rc = send_buf(c, 200, "text/plain; version=0.0.4", buf, n);
    free(buf);
    return rc;
}

static enum MHD_Result route(Server *s, struct MHD_Connection *c, const char *url, const char *method, Conn *cn) {
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0, post = strcmp(method, "POST") == 0;
    static const char *const gets[] = {"/health", "/v1/models", "/metrics"};
    if (strcmp(url, "/v1/completions") == 0) {
        if (!post) return send_error(s, c, 405, NULL, "%s /v1/completions: use POST", method);
        if (cn->too_big)
            return send_error(s, c, 413, NULL, "the body is larger than [serve] max_body_bytes = %lld bytes",
                              (long long)s->cfg->serve.max_body_bytes);
        return completions(s, c, cn);
    }
    for (int i = 0; i < 3; i++) {
        if (strcmp(url, gets[i]) != 0) continue;
        if (!get) return send_error(s, c, 405, NULL, "%s %s: use GET", method, url);
        if (i == 0) {
            pthread_mutex_lock(&s->mu);
            int dr = s->draining;
            pthread_mutex_unlock(&s->mu);
            return send_json(s, c, dr ? 503 : 200, json_pack("{s:s}", "status", dr ? "draining" : "ok"));
        }
        return i == 1 ? models(s, c) : metrics(s, c);
    }
    return send_error(s, c, 404, NULL, "no endpoint %s (there are POST /v1/completions, GET /v1/models, /health, /metrics)", url);
}

static void watch_add(Server *s, Conn *cn) {   // with mu held
    cn->wprev = NULL;
    cn->wnext = s->watch;
    if (s->watch) s->watch->wprev = cn;
    s->watch = cn;
    cn->watched = 1;
}

static void unwatch(Server *s, Conn *cn) {   // with mu held
    if (!cn->watched) return;
    if (cn->wprev) cn->wprev->wnext = cn->wnext;
    else s->watch = cn->wnext;
    if (cn->wnext) cn->wnext->wprev = cn->wprev;
    cn->wprev = cn->wnext = NULL;
    cn->watched = 0;
}

// 1 when fd has bytes (or an end) to read within seconds; 0 when it stays silent.
static int readable_within(int fd, double seconds) {
    double end = wall_seconds() + seconds;
    for (;;) {
        double left = end - wall_seconds();
        if (left <= 0) return 0;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int n = poll(&p, 1, (int)(left * 1000) + 1);
        if (n > 0) return 1;
        if (n < 0 && errno != EINTR) return 1;   // let libmicrohttpd find out what is wrong
    }
}

// A piece of the body. The rest must come within client_timeout_s of the headers:
// everything libmicrohttpd had read is handed over here, so waiting for the socket
// to turn readable is waiting for the client; past the deadline the client gets a
// 408 (MHD_NO then closes the connection).
static enum MHD_Result body_piece(Server *s, Conn *cn, const char *upload, size_t *upload_size) {
    const double tmo = s->cfg->serve.client_timeout_s;
    const size_t max = (size_t)s->cfg->serve.max_body_bytes;
    pthread_mutex_lock(&s->mu);
    int expired = cn->expired;
    unwatch(s, cn);
    pthread_mutex_unlock(&s->mu);
    size_t n = *upload_size;
    *upload_size = 0;
    if (expired) return MHD_NO;   // the main thread answered 408 already
    cn->got += n;
    if (!cn->too_big && cn->len + n <= max) {
        if (!cn->body) cn->body = xmalloc(max + 1, "request body");
        memcpy(cn->body + cn->len, upload, n);
        cn->len += n;
    } else {
        cn->too_big = 1;
    }
    double left = cn->start + tmo - wall_seconds();
    int more = cn->expect == 0 || cn->got < cn->expect;   // chunked: unknown, checked at each piece
    if (more && (left <= 0 || (cn->expect > cn->got && cn->fd >= 0 && !readable_within(cn->fd, left)))) {
        pthread_mutex_lock(&s->mu);
        s->status_count[408]++;
        pthread_mutex_unlock(&s->mu);
        answer_408(s, cn->fd, tmo < 2 ? tmo : 2);
        return MHD_NO;
    }
    return MHD_YES;
}

// libmicrohttpd's access handler: called with the headers, then with each piece
// of the body, then once more when the body is complete.
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    Server *s = cls;
    (void)version;
    Conn *cn = *con_cls;
    if (!cn) {
        cn = xcalloc(sizeof *cn, "connection");
        cn->start = wall_seconds();
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        cn->fd = ci ? ci->connect_fd : -1;
        *con_cls = cn;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        if (cl) cn->expect = (size_t)strtoull(cl, NULL, 10);
        if (cn->expect > (size_t)s->cfg->serve.max_body_bytes) cn->too_big = 1;
        if ((cn->expect > 0 || (te && strcasestr(te, "chunked"))) && cn->fd >= 0) {
            pthread_mutex_lock(&s->mu);   // until its first byte, the main thread keeps the deadline
            watch_add(s, cn);
            pthread_mutex_unlock(&s->mu);
        }
        return MHD_YES;
    }
    if (*upload_size > 0) return body_piece(s, cn, upload, upload_size);
    pthread_mutex_lock(&s->mu);
    int expired = cn->expired;
    unwatch(s, cn);
    pthread_mutex_unlock(&s->mu);
    if (expired) return MHD_NO;
    return route(s, c, url, method, cn);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    Server *s = cls;
    Conn *cn = *con_cls;
    (void)c;
    if (!cn) return;
    pthread_mutex_lock(&s->mu);
    unwatch(s, cn);
    if (cn->sr && toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED) {
        cn->sr->http_status = 408;   // a client that stopped reading: cut off, its request cancelled
        s->status_count[408]++;
    }
    pthread_mutex_unlock(&s->mu);
    free(cn->body);
    free(cn);
    *con_cls = NULL;
}

// A client that sent its headers but no byte of its body within client_timeout_s
// (libmicrohttpd calls nobody then): the main thread answers 408 on the socket and
// shuts its read side, which wakes the connection's thread to close it.
static void expire_bodies(Server *s) {
    double now = wall_seconds(), tmo = s->cfg->serve.client_timeout_s;
    pthread_mutex_lock(&s->mu);
    for (Conn *cn = s->watch, *next; cn; cn = next) {
        next = cn->wnext;
        if (now - cn->start <= tmo) continue;
        unwatch(s, cn);
        cn->expired = 1;
        s->status_count[408]++;
        answer_408(s, cn->fd, 0);
        shutdown(cn->fd, SHUT_RD);
    }
    pthread_mutex_unlock(&s->mu);
}

// libmicrohttpd's messages, prefixed. Two notes are left out: the one it prints when
// the access handler answers MHD_NO (serve.c does that after answering a late body
// with a 408 itself; the one other case, a response that cannot be queued, is out of
// memory), and a client closing mid-request (so does a client that left, an ordinary
// event, and expire_bodies' shutdown after its 408).
static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\n")] = 0;
    if (strncmp(msg, "Application reported internal error", 35) == 0 ||
        strncmp(msg, "Connection was closed by remote side with incomplete request", 60) == 0)
        return;
    log_warn("serve: libmicrohttpd: %s", msg);
}

// ---------------------------------------------------------------------------
// Rank 0's loop

// Moves the inbox into the scheduler and cancels the requests whose clients left.
static void take_inbox(Server *s) {
    ServeReq *cancels[256];
    int nc = 0;
    pthread_mutex_lock(&s->mu);
    ServeReq *r = s->inbox;
    s->inbox = s->inbox_tail = NULL;
    s->ninbox = 0;
    pthread_mutex_unlock(&s->mu);
    while (r) {
        ServeReq *next = r->next;
        r->next = NULL;
        r->submitted = 1;
        sched_submit(&s->sch, &r->q.seq);
        r = next;
    }
    // the submitted requests whose clients left (running and waiting: walk both)
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->sch.nrunning && nc < 256; i++) {
        ServeReq *x = s->sch.running[i]->user;
        if (x->cancel) cancels[nc++] = x;
    }
    for (Seq *q = s->sch.wait_head; q && nc < 256; q = q->next)
        if (((ServeReq *)q->user)->cancel) cancels[nc++] = q->user;
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < nc; i++) sched_cancel(&s->sch, &cancels[i]->q.seq, now_s(s));
}

static void publish_counts(Server *s) {
    pthread_mutex_lock(&s->mu);
    s->nwaiting = s->sch.nwaiting;
    s->nrunning = s->sch.nrunning;
    s->blocks_used = sched_blocks_used(&s->sch);
    s->preemptions = s->sch.preemptions;
    pthread_mutex_unlock(&s->mu);
}

static void cancel_all(Server *s, int status) {
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < s->sch.nrunning; i++) ((ServeReq *)s->sch.running[i]->user)->http_status = status;
    for (Seq *q = s->sch.wait_head; q; q = q->next) ((ServeReq *)q->user)->http_status = status;
    pthread_mutex_unlock(&s->mu);
    while (s->sch.nrunning) sched_cancel(&s->sch, s->sch.running[0], now_s(s));
    while (s->sch.wait_head) sched_cancel(&s->sch, s->sch.wait_head, now_s(s));
}

static void idle_wait(Server *s, double seconds) {
    pthread_mutex_lock(&s->mu);
    if (!s->inbox) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        double t = ts.tv_sec + ts.tv_nsec * 1e-9 + seconds;
        ts.tv_sec = (time_t)t;
        ts.tv_nsec = (long)((t - floor(t)) * 1e9);
        pthread_cond_timedwait(&s->work, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
}

static void serve_loop(Server *s) {
    double drain_end = 0, last_pass = now_s(s), tmo = s->cfg->comm.timeout_s;
    for (;;) {
        if (stop_signal && !s->draining) {
            pthread_mutex_lock(&s->mu);
            s->draining = 1;
            pthread_mutex_unlock(&s->mu);
            MHD_socket ls = MHD_quiesce_daemon(s->d);   // no new connections
            if (ls != MHD_INVALID_SOCKET) close(ls);
            drain_end = now_s(s) + s->cfg->serve.drain_s;
            log_info("serve: %s: draining (%d running, %d waiting; at most %g s)\n", strsignal(stop_signal),
                     s->sch.nrunning, s->sch.nwaiting + s->ninbox, s->cfg->serve.drain_s);
        }
        take_inbox(s);
        if (s->draining && (!sched_busy(&s->sch) || now_s(s) >= drain_end)) {
            if (sched_busy(&s->sch)) {
                log_warn("serve: drain_s = %g s ran out: %d requests cancelled", s->cfg->serve.drain_s, s->sch.nrunning + s->sch.nwaiting);
                cancel_all(s, 503);
            }
            publish_counts(s);
            break;
        }
        int n = sched_step(&s->sch);
        publish_counts(s);
        if (n > 0) {
            expire_bodies(s);
            double dl = s->cfg->serve.test_pass_delay_s;
            if (dl > 0) nanosleep(&(struct timespec){(time_t)dl, (long)((dl - floor(dl)) * 1e9)}, NULL);
            last_pass = now_s(s);
            continue;
        }
        expire_bodies(s);
        idle_wait(s, 0.05);
        if (s->comm.size > 1 && tmo > 0 && now_s(s) - last_pass > tmo / 4) {
            sched_idle(&s->sch);   // the other ranks wait in a broadcast bounded by [comm] timeout_s
            last_pass = now_s(s);
        }
    }
    sched_quit(&s->sch);
}

// ---------------------------------------------------------------------------

static struct MHD_Daemon *start_http(Server *s) {
    const ServeConfig *sc = &s->cfg->serve;
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)sc->port);
    if (inet_pton(AF_INET, sc->host, &addr.sin_addr) != 1)
        FATAL("give an IPv4 address such as 127.0.0.1 or 0.0.0.0", "[serve] host = '%s' is not an IPv4 address", sc->host);
    // A body late past client_timeout_s gets a 408 from serve.c; libmicrohttpd's idle
    // timeout, twice that, cuts off a client that stops reading (or stalls in its headers).
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG, (uint16_t)sc->port,
        NULL, NULL, on_request, s, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)sc->max_connections, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)ceil(2 * sc->client_timeout_s),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_END);
    if (!d)
        FATAL("pick another [serve] port (or 0 for any free one), or stop what holds it",
              "cannot listen on %s:%lld: %s", sc->host, (long long)sc->port, strerror(errno));
    return d;
}

static void summary(Server *s, double span) {
    int m = (int)(s->n_ring < RING ? s->n_ring : RING), k = (int)(s->n_itl < ITL_RING ? s->n_itl : ITL_RING);
    LatStat t = latency_stat(s->ring_ttft, m), e = latency_stat(s->ring_e2e, m), g = latency_stat(s->ring_itl, k);
    log_info("serve: %ld requests finished, %ld output tokens in %.1f s (%.1f tokens/s); %ld passes, %ld preemptions\n",
             s->done_count, s->gen_tokens, span, span > 0 ? s->gen_tokens / span : 0.0, s->sch.passes, s->sch.preemptions);
    if (s->e.stream) {   // ZeRO-Inference: what rank 0 read
        StreamStats st;
        stream_stats(s->e.stream, &st);
        log_info("serve: streamed weights: %.2f MiB read per pass, %llu passes, %.2f MiB read in all (window %d)\n",
                 (double)st.bytes_per_pass / 1048576.0, (unsigned long long)st.passes, (double)st.bytes_read / 1048576.0, st.window);
    }
    if (m > 0) {
        log_info("  %-22s %10s %10s %10s %10s %10s\n", "seconds (last requests)", "mean", "p50", "p90", "p95", "p99");
        log_info("  %-22s %10.4f %10.4f %10.4f %10.4f %10.4f\n", "ttft", t.mean, t.p50, t.p90, t.p95, t.p99);
        log_info("  %-22s %10.4f %10.4f %10.4f %10.4f %10.4f\n", "inter_token_latency", g.mean, g.p50, g.p90, g.p95, g.p99);
        log_info("  %-22s %10.4f %10.4f %10.4f %10.4f %10.4f\n", "e2e_latency", e.mean, e.p50, e.p90, e.p95, e.p99);
        for (int x = 0; x < 3; x++)
            log_info("  effective throughput (TTFT <= prompt/%g s, EMA >= %d tokens/s): %.3f requests/s (%ld of %ld)\n",
                     s->cfg->serve.sla_prompt_tok_s, 2 * (x + 1), span > 0 ? s->sla_met[x] / span : 0.0, s->sla_met[x], s->done_count);
    }
}

int serve_run(const Deck *d) {
    Server *s = xcalloc(sizeof *s, "server");
    s->cfg = &d->cfg;
    const Config *c = s->cfg;
    s->model_name = c->serve.model[0] ? c->serve.model : c->run.name;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    SYS_CHECK(sigaction(SIGTERM, &sa, NULL) == 0 && sigaction(SIGINT, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
    signal(SIGPIPE, SIG_IGN);
    int local_rank = engine_start_ranks(&s->comm, "tp", c->run.threads, c->comm.debug, c->comm.timeout_s);
    char why[600];
    if (c->generate.naive) FATAL_ALL("set [generate] naive = false", "serve: naive generation is a test reference, not served");
    if (tokenizer_open(&s->tk, c->data.tokenizer, c->data.tokenizer_dir, why, sizeof why) != 0)
        FATAL_ALL("run `make deps`, or set [data] tokenizer_dir", "serve: %s", why);
    EngineSetup es;
    engine_open(&s->e, &s->m, &es, d, &s->comm, local_rank);   // the same engine as generate's (tp x ep, streaming)
    s->full = es.full;
    s->max_blocks = es.max_blocks;
    const int bs = es.bs, Nmax = es.Nmax;
    sampler_create(&s->smp, s->m.s.V);
    if (s->comm.rank == 0) {
        static const char *modes[] = {"splitfuse", "static", "continuous"};
        snprintf(s->log_path, sizeof s->log_path, "%s", c->serve.log);
        if (!c->serve.log[0]) snprintf(s->log_path, sizeof s->log_path, "%s/served.jsonl", c->run.out_dir);
        make_parent_dirs(s->log_path, "set [serve] log to a path you can write");
        s->log = fopen(s->log_path, "a");
        if (!s->log) FATAL("set [serve] log to a path you can write", "cannot append to '%s': %s", s->log_path, strerror(errno));
        s->ring_itl = xcalloc(sizeof(double) * ITL_RING, "latency ring");
        SYS_CHECK(pthread_mutex_init(&s->mu, NULL) == 0 && pthread_cond_init(&s->progress, NULL) == 0 &&
                  pthread_cond_init(&s->work, NULL) == 0, "pthread init");
        SchedOptions so = {.mode = c->generate.mode, .reserve = c->generate.kv_alloc == GEN_KV_RESERVE,
                           .max_batch = (int)c->generate.max_batch, .kv_block = bs, .kv_blocks = (int)c->generate.kv_blocks,
                           .max_blocks = s->max_blocks};
        SchedHooks hk = {.ctx = s, .on_token = on_token, .on_done = on_done};
        sched_create(&s->sch, &so, &hk, &s->comm, &s->e, &s->smp);
        s->t0 = wall_seconds();
        s->sch.o.t0 = s->t0;
        s->d = start_http(s);
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
        char src[DECK_STR + 64];
        if (s->e.stream)
            snprintf(src, sizeof src, "%s streamed from %s (window %lld)", c->generate.stage,
                     c->generate.weights_from == GEN_FROM_NVME ? "nvme" : "host", (long long)c->generate.window);
        else
            snprintf(src, sizeof src, "%s", c->generate.weights);
        log_info("serve: %s as '%s', tp = %lld x ep = %lld, %s backend, mode %s, token budget %d, KV %lld blocks of %d (%s), max_batch %lld, max_queue %lld\n",
                 src, s->model_name, (long long)c->parallel.tp, (long long)c->parallel.ep, s->e.bk->name, modes[c->generate.mode], Nmax,
                 (long long)c->generate.kv_blocks, bs, c->generate.kv_alloc == GEN_KV_RESERVE ? "reserved" : "lazy",
                 (long long)c->generate.max_batch, (long long)c->serve.max_queue);
        log_info("serve: listening on http://%s:%u (pid %ld); SIGTERM drains and stops\n", c->serve.host,
                 di ? (unsigned)di->port : (unsigned)c->serve.port, (long)getpid());
        serve_loop(s);
        double span = now_s(s);
        MHD_stop_daemon(s->d);   // waits for the connection threads (each sees its request done)
        summary(s, span);
        if (fclose(s->log) != 0) log_warn("serve: closing '%s': %s", s->log_path, strerror(errno));
        log_info("serve: stopped; served requests are in %s\n", s->log_path);
        sched_free(&s->sch);
        free(s->ring_itl);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->progress);
        pthread_cond_destroy(&s->work);
    } else {
        sched_follow(&s->comm, &s->e, s->max_blocks);
    }
    engine_free(&s->e);
    device_stop(&es.dev);
    sampler_free(&s->smp);
    tokenizer_free(&s->tk);
    free(s->full);
    model_free(&s->m);
    comm_free(&s->comm);
    free(s);
    return 0;
}

int serve_main(int argc, char **argv, int rank, int size) {
    const char *path = NULL;
    char **sets = xmalloc(sizeof(char *) * (size_t)(argc + 1), "arguments");
    int nsets = 0, bad = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) sets[nsets++] = argv[++i];
        else if (strncmp(argv[i], "--set=", 6) == 0) sets[nsets++] = argv[i] + 6;
        else if (argv[i][0] != '-' && !path) path = argv[i];
        else bad = 1;
    }
    if (bad || !path) {
        if (rank == 0) fprintf(stderr, "usage: partita serve DECK [--set section.key=value ...]\n");
        free(sets);
        return 2;
    }
    Deck *d = xmalloc(sizeof *d, "deck");
    char err[4096], where[600];
    int rc = deck_load(d, path, nsets, sets, size, err, sizeof err);
    free(sets);
    if (rc == 0 && d->cfg.generate.naive) {
        snprintf(err, sizeof err, "error: %s: serve: naive generation is a test reference, not served\n"
                 "  hint: set [generate] naive = false", deck_where(d, "generate.naive", where, sizeof where));
        rc = 2;
    } else if (rc == 0 && engine_check_deck(d, size, err, sizeof err) != 0) {   // generate's checks: one engine
        rc = 2;
    }
    if (rc != 0) {
        if (rank == 0) fprintf(stderr, "%s\n", err);
        free(d);
        return 2;
    }
    rc = serve_run(d);
    free(d);
    return rc;
}
