// request.h: one generation request as `generate` and `serve` see it: its
// fields read from JSON (a JSONL line, an OpenAI batch-input line, or a
// /v1/completions body), its output decoded token by token with stop strings,
// and its result as a JSON line (flat, or OpenAI's batch output as vLLM writes it).
#ifndef PARTITA_REQUEST_H
#define PARTITA_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "json.h"
#include "scheduler.h"
#include "tokenizer.h"

#define REQ_ID_MAX 127                  // bytes of a request id
#define REQ_MAX_STOPS 4
#define REQ_STOP_MAX 256                // bytes of a stop string
#define REQ_TEMPERATURE_MAX 100.0
#define REQ_SEED_MAX 9007199254740992.0 // 2^53: every integer up to it is exact in JSON's doubles

enum { REQ_API_JSONL = 0, REQ_API_OPENAI };
enum { REQ_FORMAT_FLAT = 0, REQ_FORMAT_OPENAI };

typedef struct ReqDefaults {
    const Tokenizer *tk;
    int V;                      // token ids are < V
    int max_tokens;             // when the request does not say
    double temperature;         // when the request does not say (JSONL 0, OpenAI 1)
    uint64_t seed;              // when the request does not say
    const char *model;          // OpenAI: the served model's name (another is a 404)
} ReqDefaults;

typedef struct Request {
    char id[REQ_ID_MAX + 1];
    int32_t *prompt;            // (plen)
    int plen, max_tokens;
    SamplerParams sp;
    char *stops[REQ_MAX_STOPS];
    int nstop;
    int stream;                 // OpenAI: server-sent events
    int include_usage;          // OpenAI: stream_options.include_usage
    char unknown[65];           // the first key that was not understood (ignored), or ""
    Seq seq;
    // Outputs, sized by request_buffers.
    int32_t *out;               // (max_tokens)
    double *tok_time;           // (max_tokens) when each was sampled
    size_t *tok_end;            // (max_tokens) bytes of raw after each token
    char *raw;                  // decoded bytes, appended per token
    size_t nraw, clean;         // raw[0..clean) is in text
    TokStream ts;
    char *text;                 // clean UTF-8 (U+FFFD for bad bytes and NUL)
    size_t ntext;
    int ntok;                   // output tokens that agree with text (a stop string cuts both)
    int reason;                 // FINISH_* once done
    int stop_hit;               // the stop string that ended it, -1 if none
    double arrival, first, finish;
} Request;

// Fills r from o. On a bad field returns -1 with the reason in why and the
// field's name in *param (NULL when it is not one field's); 404 when OpenAI's
// "model" names another model.
int request_parse(Request *r, const json_t *o, const ReqDefaults *d, int api, const char **param, char *why, size_t n);
// Output buffers for max_tokens (no allocation per token); times: tok_time too.
void request_buffers(Request *r, const Tokenizer *tk, int times);
// request_buffers, then r's scheduler sequence pointed at its prompt and limits,
// with user as the callbacks' handle: ready for sched_submit.
Seq *request_start(Request *r, const Tokenizer *tk, void *user);
// r->seq's newest token, sampled at now: decoded, stop strings checked.
// Returns 1 when a stop string ended the output.
int request_token(Request *r, const Tokenizer *tk, double now);
// The end of r (FINISH_*): the rest of the text is cleaned.
void request_finish(Request *r, int reason, double now);
void request_free(Request *r);
// The result as one JSON line ("\n"-ended, malloc'd). status: NULL for a done
// request, or the reason it was refused. model: OpenAI's "model" field.
char *request_result_line(const Request *r, int format, const char *refused, const char *model);
const char *request_reason_name(int reason);

#endif

// ---------------------------------------------------------------------------
// Latency statistics and FastGen's SLA (generate's summary, serve's metrics)

typedef struct LatStat { double mean, p50, p90, p95, p99; int n; } LatStat;
// Sorts v[0..n) in place; NaN figures when n = 0.
LatStat latency_stat(double *v, int n);
// FastGen's effective-throughput SLA: the first token within plen / prompt_tok_s
// of the arrival, and at every later token the rate of an exponential moving
// average (span 16) of the inter-token gaps at least `rate` tokens/s.
int request_meets_sla(double arrival, double first, const double *tok_time, int n, int plen, double prompt_tok_s, double rate);
