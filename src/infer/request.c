// request.c: request fields from JSON, streamed text with stop strings, result lines.
#include "request.h"
#include "log.h"
#include "sysutil.h"
#include "utf8.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---------------------------------------------------------------------------
// Fields

__attribute__((format(printf, 5, 6)))
static int bad(const char **param, const char *name, char *why, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    *param = name;
    return -1;
}

// v is an integer number in [lo, hi] (doubles: exact for every bound used here).
static int int_in(const json_t *v, double lo, double hi, double *x) {
    return json_number(v, x) == 0 && *x == floor(*x) && *x >= lo && *x <= hi;
}

// r->id from "id" (JSONL) or "custom_id" (OpenAI batch input): a non-empty
// string of at most REQ_ID_MAX bytes, or an integer of at most 2^53 in magnitude.
static int parse_id(Request *r, const json_t *o, const char **param, char *why, size_t n) {
    const char *key = json_object_get(o, "id") ? "id" : "custom_id";
    const json_t *v = json_object_get(o, key);
    double x;
    if (json_is_number(v)) {
        if (!int_in(v, -REQ_SEED_MAX, REQ_SEED_MAX, &x))
            return bad(param, key, why, n, "a number '%s' must be an integer in [-2^53, 2^53]; use a string for other ids", key);
        snprintf(r->id, sizeof r->id, "%.0f", x);
        return 0;
    }
    if (!json_is_string(v)) return bad(param, "id", why, n, "'id' (a string or an integer) or 'custom_id' is required");
    size_t len = json_string_length(v);
    if (len == 0 || len > REQ_ID_MAX) return bad(param, key, why, n, "'%s' must be 1 to %d bytes, got %zu", key, REQ_ID_MAX, len);
    memcpy(r->id, json_string_value(v), len + 1);
    return 0;
}

static int parse_ids(Request *r, const json_t *a, const char *key, int V, const char **param, char *why, size_t n) {
    size_t len = json_array_size(a);
    if (len == 0) return bad(param, key, why, n, "'%s' must not be empty", key);
    r->prompt = xmalloc(len * sizeof(int32_t), "prompt");
    for (size_t i = 0; i < len; i++) {
        double t;
        const json_t *e = json_array_get(a, i);
        if (!int_in(e, 0, V - 1, &t)) {
            if (json_number(e, &t) == 0)
                return bad(param, key, why, n, "token %.17g at index %zu is not an integer in [0, %d)", t, i, V);
            return bad(param, key, why, n, "'%s' holds a %s at index %zu: token ids are integers", key,
                       json_is_string(e) ? "string" : json_is_array(e) ? "nested array" : "non-number", i);
        }
        r->prompt[i] = (int32_t)t;
    }
    r->plen = (int)len;
    return 0;
}

static int parse_text(Request *r, const json_t *s, const char *key, const ReqDefaults *d, const char **param, char *why, size_t n) {
    size_t len = json_string_length(s);
    if (len == 0) return bad(param, key, why, n, "'%s' must be a non-empty string", key);
    r->prompt = xmalloc(len * sizeof(int32_t), "prompt");
    r->plen = (int)tokenizer_encode(d->tk, (const uint8_t *)json_string_value(s), len, (uint32_t *)r->prompt);
    for (int i = 0; i < r->plen; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= d->V)
            return bad(param, key, why, n, "the prompt encodes to token %d at index %d, outside the model's vocabulary of %d",
                       r->prompt[i], i, d->V);
    if (r->plen == 0) return bad(param, key, why, n, "'%s' encodes to no tokens", key);
    return 0;
}

// The prompt as token ids: JSONL "prompt" (text) or "tokens" (ids); OpenAI
// "prompt" as text, ids, or a list of one of either.
static int parse_prompt(Request *r, const json_t *o, const ReqDefaults *d, int api, const char **param, char *why, size_t n) {
    const json_t *pt = json_object_get(o, "prompt"), *tk = api == REQ_API_JSONL ? json_object_get(o, "tokens") : NULL;
    if (api == REQ_API_JSONL && (pt != NULL) == (tk != NULL))
        return bad(param, "prompt", why, n, "give exactly one of 'prompt' (text) or 'tokens' (ids)");
    if (tk) {
        if (!json_is_array(tk)) return bad(param, "tokens", why, n, "'tokens' must be a non-empty array of token ids");
        return parse_ids(r, tk, "tokens", d->V, param, why, n);
    }
    if (!pt) return bad(param, "prompt", why, n, "'prompt' is required");
    if (json_is_array(pt) && json_array_size(pt) == 1 &&
        (json_is_string(json_array_get(pt, 0)) || json_is_array(json_array_get(pt, 0))))
        pt = json_array_get(pt, 0);   // a batch of one prompt
    else if (json_is_array(pt) && json_array_size(pt) > 1 && !json_is_number(json_array_get(pt, 0)))
        return bad(param, "prompt", why, n, "one prompt per request: got a list of %zu", json_array_size(pt));
    if (json_is_string(pt)) return parse_text(r, pt, "prompt", d, param, why, n);
    if (json_is_array(pt)) return parse_ids(r, pt, "prompt", d->V, param, why, n);
    return bad(param, "prompt", why, n, "'prompt' must be a non-empty string or an array of token ids");
}

static int parse_stop(Request *r, const json_t *v, const char **param, char *why, size_t n) {
    if (!v || json_is_null(v)) return 0;
    const json_t *one[1] = {v};
    size_t k = 1;
    if (json_is_array(v)) k = json_array_size(v);
    else if (!json_is_string(v)) k = REQ_MAX_STOPS + 1;
    if (k > REQ_MAX_STOPS) return bad(param, "stop", why, n, "'stop' must be a string or up to %d strings", REQ_MAX_STOPS);
    for (size_t i = 0; i < k; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : one[0];
        if (!json_is_string(s)) return bad(param, "stop", why, n, "'stop' must be a string or up to %d strings", REQ_MAX_STOPS);
        if (json_string_length(s) > REQ_STOP_MAX) return bad(param, "stop", why, n, "a stop string is longer than %d bytes", REQ_STOP_MAX);
        if (json_string_length(s) == 0) continue;
        r->stops[r->nstop] = strdup(json_string_value(s));
        SYS_CHECK(r->stops[r->nstop], "out of memory for stop strings");
        r->nstop++;
    }
    return 0;
}

// Sampling settings and max_tokens, each bounded.
static int parse_sampling(Request *r, const json_t *o, const ReqDefaults *d, const char **param, char *why, size_t n) {
    const json_t *v;
    double x;
    r->max_tokens = d->max_tokens;
    r->sp = (SamplerParams){.temperature = d->temperature, .top_k = 0, .top_p = 1.0, .seed = d->seed};
    if ((v = json_object_get(o, "max_tokens")) && !json_is_null(v)) {
        if (!int_in(v, 1, (double)(1 << 24), &x)) return bad(param, "max_tokens", why, n, "'max_tokens' must be an integer in [1, %d]", 1 << 24);
        r->max_tokens = (int)x;
    }
    if ((v = json_object_get(o, "temperature")) && !json_is_null(v)) {
        if (json_number(v, &x) || x < 0 || x > REQ_TEMPERATURE_MAX)
            return bad(param, "temperature", why, n, "'temperature' must be a number in [0, %g]", REQ_TEMPERATURE_MAX);
        r->sp.temperature = x;
    }
    if ((v = json_object_get(o, "top_k")) && !json_is_null(v)) {
        if (!int_in(v, -1, INT32_MAX, &x)) return bad(param, "top_k", why, n, "'top_k' must be an integer in [0, %d] (0 or -1 = off)", INT32_MAX);
        r->sp.top_k = x < 0 ? 0 : (int)x;
    }
    if ((v = json_object_get(o, "top_p")) && !json_is_null(v)) {
        if (json_number(v, &x) || x <= 0 || x > 1) return bad(param, "top_p", why, n, "'top_p' must be a number in (0, 1]");
        r->sp.top_p = x;
    }
    if ((v = json_object_get(o, "seed")) && !json_is_null(v)) {
        if (!int_in(v, 0, REQ_SEED_MAX, &x)) return bad(param, "seed", why, n, "'seed' must be an integer in [0, 2^53]");
        r->sp.seed = (uint64_t)x;
    }
    return parse_stop(r, json_object_get(o, "stop"), param, why, n);
}

// OpenAI fields Partita does not implement: refused unless at their default.
static int parse_openai_rest(Request *r, const json_t *o, const ReqDefaults *d, const char **param, char *why, size_t n) {
    const json_t *v;
    double x;
    if ((v = json_object_get(o, "model")) && !json_is_null(v) && d->model &&
        (!json_is_string(v) || strcmp(json_string_value(v), d->model) != 0)) {
        bad(param, "model", why, n, "the model '%.64s' does not exist; this server serves '%s'",
            json_is_string(v) ? json_string_value(v) : "?", d->model);
        return 404;
    }
    if ((v = json_object_get(o, "stream")) && !json_is_null(v)) {
        if (!json_is_boolean(v)) return bad(param, "stream", why, n, "'stream' must be true or false");
        r->stream = json_is_true(v);
    }
    if ((v = json_object_get(o, "stream_options")) && !json_is_null(v)) {
        const json_t *u = json_is_object(v) ? json_object_get(v, "include_usage") : NULL;
        if (!json_is_object(v) || (u && !json_is_boolean(u)))
            return bad(param, "stream_options", why, n, "'stream_options' must be an object {\"include_usage\": true|false}");
        r->include_usage = u && json_is_true(u);
    }
    if ((v = json_object_get(o, "n")) && !json_is_null(v) && !int_in(v, 1, 1, &x))
        return bad(param, "n", why, n, "'n' must be 1 (one completion per request)");
    if ((v = json_object_get(o, "best_of")) && !json_is_null(v) && !int_in(v, 1, 1, &x))
        return bad(param, "best_of", why, n, "'best_of' must be 1");
    if ((v = json_object_get(o, "echo")) && !json_is_null(v) && !json_is_false(v))
        return bad(param, "echo", why, n, "'echo' is not supported");
    if ((v = json_object_get(o, "logprobs")) && !json_is_null(v))
        return bad(param, "logprobs", why, n, "'logprobs' is not supported");
    if ((v = json_object_get(o, "suffix")) && !json_is_null(v))
        return bad(param, "suffix", why, n, "'suffix' is not supported");
    if ((v = json_object_get(o, "logit_bias")) && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0))
        return bad(param, "logit_bias", why, n, "'logit_bias' is not supported");
    const char *pen[2] = {"presence_penalty", "frequency_penalty"};
    for (int k = 0; k < 2; k++)
        if ((v = json_object_get(o, pen[k])) && !json_is_null(v) && (json_number(v, &x) || x != 0))
            return bad(param, pen[k], why, n, "'%s' is not supported (0 only)", pen[k]);
    return 0;
}

static void note_unknown(Request *r, const json_t *o, const char *const *known, size_t nknown) {
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v) {
        int ok = 0;
        for (size_t i = 0; i < nknown; i++) ok |= strcmp(k, known[i]) == 0;
        if (!ok && !r->unknown[0]) snprintf(r->unknown, sizeof r->unknown, "%s", k);
    }
}

int request_parse(Request *r, const json_t *o, const ReqDefaults *d, int api, const char **param, char *why, size_t n) {
    static const char *const jsonl_keys[] = {"id", "custom_id", "prompt", "tokens", "max_tokens", "temperature", "top_k",
                                             "top_p", "seed", "stop", "metadata", "method", "url", "body"};
    static const char *const openai_keys[] = {"model", "prompt", "max_tokens", "temperature", "top_k", "top_p", "seed",
                                              "stop", "n", "stream", "stream_options", "best_of", "echo", "logprobs",
                                              "suffix", "logit_bias", "presence_penalty", "frequency_penalty", "user"};
    *param = NULL;
    const json_t *fields = o;
    if (api == REQ_API_JSONL) {
        if (parse_id(r, o, param, why, n)) return -1;
        const json_t *body = json_object_get(o, "body");   // an OpenAI batch-input line
        if (body) {
            if (!json_is_object(body)) return bad(param, "body", why, n, "'body' must be an object (an OpenAI batch-input line)");
            fields = body;
        }
        note_unknown(r, o, jsonl_keys, sizeof jsonl_keys / sizeof *jsonl_keys);
        if (body) note_unknown(r, body, openai_keys, sizeof openai_keys / sizeof *openai_keys);
    } else {
        note_unknown(r, o, openai_keys, sizeof openai_keys / sizeof *openai_keys);
        int rc = parse_openai_rest(r, o, d, param, why, n);
        if (rc) return rc;
    }
    if (parse_prompt(r, fields, d, fields == o ? api : REQ_API_OPENAI, param, why, n)) return -1;
    return parse_sampling(r, fields, d, param, why, n);
}

// ---------------------------------------------------------------------------
// Text

void request_buffers(Request *r, const Tokenizer *tk, int times) {
    size_t n = (size_t)r->max_tokens, bytes = n * (size_t)tk->max_token_bytes + 5;
    r->out = xmalloc(sizeof(int32_t) * n, "output tokens");
    r->tok_time = times ? xmalloc(sizeof(double) * n, "token times") : NULL;
    r->tok_end = xmalloc(sizeof(size_t) * n, "token ends");
    r->raw = xmalloc(bytes, "decoded output");
    r->text = xcalloc(3 * bytes + 1, "output text");
    r->nraw = r->clean = r->ntext = 0;
    r->stop_hit = -1;
    memset(&r->ts, 0, sizeof r->ts);
    r->seq.out = r->out;
}

// Cleans raw[clean..upto) into text, upto moved back off the inside of a
// UTF-8 sequence, so that the pieces clean to what the whole would.
static void clean_to(Request *r, size_t upto) {
    for (int k = 0; k < 3 && upto > r->clean && upto < r->nraw && ((unsigned char)r->raw[upto] & 0xC0) == 0x80; k++) upto--;
    if (upto <= r->clean) return;
    r->ntext += utf8_clean(r->raw + r->clean, upto - r->clean, r->text + r->ntext);
    r->clean = upto;
}

static size_t longest_stop(const Request *r) {
    size_t m = 0;
    for (int k = 0; k < r->nstop; k++) m = strlen(r->stops[k]) > m ? strlen(r->stops[k]) : m;
    return m;
}

// Only matches that end in the new bytes can be new, so only the last
// (longest stop - 1) old bytes are searched again; bytes are matched raw.
int request_token(Request *r, const Tokenizer *tk, double now) {
    const int i = r->seq.nout - 1;
    const size_t old = r->nraw;
    if (i == 0) r->first = now;
    if (r->tok_time) r->tok_time[i] = now;
    r->nraw += tokenizer_decode_step(tk, &r->ts, (uint32_t)r->out[i], r->raw + old);
    r->tok_end[i] = r->nraw;
    r->ntok = i + 1;
    size_t cut = r->nraw + 1;
    for (int k = 0; k < r->nstop; k++) {
        size_t len = strlen(r->stops[k]), from = old + 1 > len ? old + 1 - len : 0;
        const char *hit = memmem(r->raw + from, r->nraw - from, r->stops[k], len);
        if (hit && (size_t)(hit - r->raw) < cut) {
            cut = (size_t)(hit - r->raw);
            r->stop_hit = k;
        }
    }
    if (cut <= r->nraw) {
        r->nraw = cut;
        // the tokens that agree with the text: those that start before the stop string
        int t = 0;
        while (t < r->seq.nout && (t == 0 ? 0 : r->tok_end[t - 1]) < cut) t++;
        r->ntok = t;
        return 1;
    }
    size_t hold = longest_stop(r), keep = hold ? hold - 1 : 0;   // a stop string may still start there
    clean_to(r, r->nraw > keep ? r->nraw - keep : 0);
    return 0;
}

void request_finish(Request *r, int reason, double now) {
    r->reason = reason;
    r->finish = now;
    if (reason != FINISH_STOP && r->raw) r->nraw += tokenizer_decode_flush(&r->ts, r->raw + r->nraw);
    if (r->raw) clean_to(r, r->nraw);
    if (r->text) r->text[r->ntext] = 0;
}

void request_free(Request *r) {
    free(r->prompt);
    free(r->out);
    free(r->tok_time);
    free(r->tok_end);
    free(r->raw);
    free(r->text);
    for (int k = 0; k < r->nstop; k++) free(r->stops[k]);
    memset(r, 0, sizeof *r);
}

const char *request_reason_name(int reason) {
    return reason == FINISH_STOP ? "stop" : reason == FINISH_LENGTH ? "length" : "cancelled";
}

// ---------------------------------------------------------------------------
// Results

static json_t *ids_array(const int32_t *t, int n) {
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_integer(t[i]));
    return a;
}

static json_t *num_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static char *line_of(json_t *o) {
    char *s = json_line(o);
    json_decref(o);
    size_t n = strlen(s);
    char *l = realloc(s, n + 2);
    SYS_CHECK(l, "out of memory for a result line");
    l[n] = '\n';
    l[n + 1] = 0;
    return l;
}

char *request_result_line(const Request *r, int format, const char *refused, const char *model) {
    const char *text = r->text ? r->text : "";
    json_t *times = json_pack("{s:o, s:o, s:o}", "arrival", num_or_null(r->arrival), "first_token",
                              refused ? json_null() : num_or_null(r->first), "finish", refused ? json_null() : num_or_null(r->finish));
    if (format == REQ_FORMAT_FLAT) {
        json_t *o = json_pack("{s:s, s:s}", "id", r->id, "status", refused ? "refused" : "done");
        if (refused) {
            json_object_set_new(o, "reason", json_string(refused));
        } else {
            json_object_set_new(o, "text", json_string(text));
            json_object_set_new(o, "finish_reason", json_string(request_reason_name(r->reason)));
            json_object_set_new(o, "tokens", ids_array(r->out, r->ntok));
        }
        json_object_set_new(o, "prompt_tokens", ids_array(r->prompt, r->prompt ? r->plen : 0));
        json_object_update(o, times);
        json_decref(times);
        return line_of(o);
    }
    char rid[REQ_ID_MAX + 16];
    snprintf(rid, sizeof rid, "partita-%s", r->id);
    json_t *resp, *err;
    if (refused) {
        resp = json_pack("{s:i, s:s, s:n}", "status_code", 400, "request_id", rid, "body");
        err = json_string(refused);
    } else {
        const char *stop = r->reason == FINISH_STOP && r->stop_hit >= 0 ? r->stops[r->stop_hit] : NULL;
        json_t *choice = json_pack("{s:i, s:s, s:n, s:s, s:o, s:o}", "index", 0, "text", text, "logprobs",
                                   "finish_reason", r->reason == FINISH_STOP ? "stop" : "length", "stop_reason",
                                   stop ? json_string(stop) : json_null(), "token_ids", ids_array(r->out, r->ntok));
        json_t *usage = json_pack("{s:i, s:i, s:i}", "prompt_tokens", r->plen, "completion_tokens", r->ntok,
                                  "total_tokens", r->plen + r->ntok);
        json_t *body = json_pack("{s:s, s:s, s:I, s:s, s:[o], s:o, s:o, s:o}", "id", rid, "object", "text_completion",
                                 "created", (json_int_t)time(NULL), "model", model ? model : "partita", "choices", choice,
                                 "usage", usage, "prompt_token_ids", ids_array(r->prompt, r->plen), "partita", times);
        times = NULL;
        resp = json_pack("{s:i, s:s, s:o}", "status_code", 200, "request_id", rid, "body", body);
        err = json_null();
    }
    if (times) json_decref(times);
    json_t *o = json_pack("{s:s, s:s, s:o, s:o}", "id", rid, "custom_id", r->id, "response", resp, "error", err);
    return line_of(o);
}

// ---------------------------------------------------------------------------
// Statistics

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

LatStat latency_stat(double *v, int n) {
    LatStat s = {NAN, NAN, NAN, NAN, NAN, n};
    if (n <= 0) return s;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    double sum = 0;
    for (int i = 0; i < n; i++) sum += v[i];
    s.mean = sum / n;
    s.p50 = v[(int)(0.50 * (n - 1) + 0.5)];
    s.p90 = v[(int)(0.90 * (n - 1) + 0.5)];
    s.p95 = v[(int)(0.95 * (n - 1) + 0.5)];
    s.p99 = v[(int)(0.99 * (n - 1) + 0.5)];
    return s;
}

int request_meets_sla(double arrival, double first, const double *tok_time, int n, int plen, double prompt_tok_s, double rate) {
    if (!(first - arrival <= plen / prompt_tok_s)) return 0;
    const double alpha = 2.0 / (16 + 1);
    double ema = -1;
    for (int i = 1; i < n; i++) {
        double gap = tok_time[i] - tok_time[i - 1];
        ema = ema < 0 ? gap : alpha * gap + (1 - alpha) * ema;
        if (ema * rate > 1.0) return 0;
    }
    return 1;
}

Seq *request_start(Request *r, const Tokenizer *tk, void *user) {
    request_buffers(r, tk, 1);
    Seq *s = &r->seq;
    s->prompt = r->prompt;
    s->plen = r->plen;
    s->max_tokens = r->max_tokens;
    s->sp = r->sp;
    s->user = user;
    return s;
}
