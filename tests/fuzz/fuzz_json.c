// fuzz_json.c: libFuzzer harness for the request reader (src/infer/json.c),
// built by `make fuzz-build` with clang -fsanitize=fuzzer,address,undefined.
//
// Input: one request line. Asserts, beyond "no sanitizer report, no hang":
//   - json_parse_object returns 0 or -1; on -1 the message is non-empty;
//   - on 0 the object has at most JSON_MAX_KEYS members, each with a key;
//   - every string it returned survives json_quote and a parse back unchanged,
//     and json_quote into a short buffer stays inside it (the gen.jsonl writer's use).
#include "json.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_json: %s\n%s\n", what, detail ? detail : "");
    abort();
}

static void round_trip(const char *s) {
    char small[16];
    size_t need = json_quote(small, sizeof small, 0, s);
    if (strlen(small) >= sizeof small) die("json_quote wrote past a short buffer", s);
    size_t cap = need + 16;
    char *line = malloc(cap + 8);
    memcpy(line, "{\"k\":", 5);
    size_t len = json_quote(line, cap, 5, s);
    if (len != need + 5) die("json_quote's length depends on the buffer", s);
    memcpy(line + len, "}", 2);
    JsonObject o;
    char err[256];
    if (json_parse_object(line, &o, err, sizeof err) != 0) die("a quoted string does not parse back", line);
    const JsonValue *v = json_get(&o, "k");
    if (!v || v->type != JSON_STRING || strcmp(v->str, s) != 0) die("a quoted string parses back different", line);
    json_free(&o);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    JsonObject o;
    char err[512];
    err[0] = '\0';
    int rc = json_parse_object(text, &o, err, sizeof err);
    if (rc != 0 && rc != -1) die("json_parse_object returned neither 0 nor -1", text);
    if (rc == -1 && !err[0]) die("an error without a message", text);
    if (rc == 0) {
        if (o.n < 0 || o.n > JSON_MAX_KEYS) die("member count out of range", text);
        for (int i = 0; i < o.n; i++) {
            if (!o.keys[i]) die("a member without a key", text);
            round_trip(o.keys[i]);
            const JsonValue *v = &o.vals[i];
            if (v->type == JSON_STRING) round_trip(v->str);
            if (v->type == JSON_ARRAY && v->of_strings)
                for (int j = 0; j < v->n; j++) round_trip(v->strs[j]);
        }
        json_free(&o);
    }
    free(text);
    return 0;
}
