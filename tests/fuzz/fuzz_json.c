// fuzz_json.c: libFuzzer harness for the request readers: json_parse_object
// (src/infer/json.c, jansson with Partita's bounds: generate's JSONL lines and
// serve's HTTP bodies) and request_parse (src/infer/request.c) in both shapes,
// built by `make fuzz-build` with clang -fsanitize=fuzzer,address,undefined.
//
// Input: one request line or body. Asserts, beyond "no sanitizer report, no hang":
//   - json_parse_object returns an object or NULL with a non-empty message;
//   - the object respects the bounds (members, depth) and survives a dump and a parse back;
//   - request_parse returns 0, -1 or 404; on 0 the prompt is non-empty ids below V,
//     max_tokens >= 1, at most REQ_MAX_STOPS stop strings; on -1 the message is non-empty;
//   - a parsed request's result lines (flat and OpenAI batch output) parse back as objects.
#include "json.h"
#include "request.h"
#include "tokenizer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_json: %s\n%s\n", what, detail ? detail : "");
    abort();
}

static Tokenizer tk;
static int tk_ready;

static void check_request(const json_t *o, int api, const char *text) {
    Request r;
    memset(&r, 0, sizeof r);
    ReqDefaults d = {.tk = &tk, .V = 257, .max_tokens = 4, .temperature = 0, .seed = 1, .model = "m"};
    const char *param = NULL;
    char why[600] = "";
    int rc = request_parse(&r, o, &d, api, &param, why, sizeof why);
    if (rc != 0 && rc != -1 && rc != 404) die("request_parse returned an unknown code", text);
    if (rc != 0 && !why[0]) die("a refused request without a message", text);
    if (rc == 0) {
        if (r.plen <= 0 || !r.prompt) die("an accepted request without a prompt", text);
        for (int i = 0; i < r.plen; i++) if (r.prompt[i] < 0 || r.prompt[i] >= 257) die("a prompt token outside V", text);
        if (r.max_tokens < 1 || r.nstop > REQ_MAX_STOPS) die("max_tokens or stops out of range", text);
        for (int f = 0; f < 2; f++) {
            char *line = request_result_line(&r, f, f ? "refused" : NULL, "m"), err[256];
            json_t *back = json_parse_object(line, strlen(line), err, sizeof err);
            if (!back) die("a result line does not parse back", line);
            json_decref(back);
            free(line);
        }
    }
    request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tk_ready) {
        char why[256];
        if (tokenizer_open(&tk, TOKENIZER_BYTE, "", why, sizeof why) != 0) die("no byte tokenizer", why);
        tk_ready = 1;
    }
    char err[512];
    err[0] = '\0';
    json_t *o = json_parse_object((const char *)data, size, err, sizeof err);
    if (!o) {
        if (!err[0]) die("an error without a message", NULL);
        return 0;
    }
    if (!json_is_object(o) || json_object_size(o) > JSON_MAX_KEYS) die("not an object within the bounds", err);
    char *line = json_line(o);
    json_t *back = json_parse_object(line, strlen(line), err, sizeof err);
    if (!back || !json_equal(o, back)) die("an object does not survive a dump and a parse back", line);
    json_decref(back);
    check_request(o, REQ_API_JSONL, line);
    check_request(o, REQ_API_OPENAI, line);
    free(line);
    json_decref(o);
    return 0;
}
