// fuzz_deck.c: libFuzzer harness for the deck parser (src/deck.c), built by
// `make fuzz-build` with clang -fsanitize=fuzzer,address,undefined.
//
// Input: deck text; an optional line "%%SETS%%" ends it, and each line after
// it is one `--set section.key=value` override. The first byte picks the
// world size (1..8) the keys derive against. Asserts, beyond "no sanitizer
// report, no hang":
//   - deck_load returns 0 or -1; on -1 the message starts "error: " and has a "hint:";
//   - on 0 the sizes the later stages take as int are in [1, INT_MAX], heads
//     divide d_model, and the activation and embedding sizes (B*T*C, B*T*Vp,
//     Vp*C, 4 bytes each) do not overflow (issue 10: 2^32 keys cast to int);
//   - a NUL byte in a line before any '#' (in a key or a value) is refused,
//     not silently cut (issue 10);
//   - on 0 the resolved echo (deck_format) loads again to the same echo, up to
//     its "# default"/"# derived"/"# --set" marks (README: the echo "is itself a valid deck").
#include "deck.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_SETS 16
#define ECHO_MAX (1 << 16)

static void die(const char *what, const char *detail) {
    fprintf(stderr, "fuzz_deck: %s\n%s\n", what, detail ? detail : "");
    abort();
}

static void write_file(const char *path, const char *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) die("cannot write the temporary deck", path);
}

// Loads path with the overrides; checks the error contract; returns deck_load's rc.
static int load(Deck *d, const char *path, int nsets, char *const *sets, int world, char *err, size_t n) {
    int rc = deck_load(d, path, nsets, sets, world, err, n);
    if (rc != 0 && rc != -1) die("deck_load returned neither 0 nor -1", err);
    if (rc == -1 && strncmp(err, "error: ", 7) != 0) die("an error message that does not start with 'error: '", err);
    if (rc == -1 && !strstr(err, "hint:")) die("an error message without a hint", err);
    return rc;
}

// Drops the "  # default", "  # derived" and "  # --set" marks that end echo lines: after a
// reload every key comes from the file, so only the values must agree.
static void strip_marks(char *s) {
    static const char *marks[] = {"  # default\n", "  # derived\n", "  # --set\n"};
    for (int m = 0; m < 3; m++) {
        size_t n = strlen(marks[m]) - 1;  // keep the newline
        for (char *p; (p = strstr(s, marks[m]));) memmove(p, p + n, strlen(p + n) + 1);
    }
}

static void need_int(int64_t v, const char *key) {
    if (v < 1 || v > INT_MAX) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s = %lld", key, (long long)v);
        die("a deck loads with a size outside [1, INT_MAX]", msg);
    }
}

static void need_product(int64_t a, int64_t b, int64_t c, const char *what) {
    int64_t ab, abc, bytes;
    if (__builtin_mul_overflow(a, b, &ab) || __builtin_mul_overflow(ab, c, &abc) ||
        __builtin_mul_overflow(abc, (int64_t)4, &bytes)) {
        char msg[160];
        snprintf(msg, sizeof msg, "%s = %lld x %lld x %lld floats", what, (long long)a, (long long)b, (long long)c);
        die("a deck loads whose buffer sizes overflow", msg);
    }
}

// The limits every later stage relies on, once a deck has loaded.
static void check_resolved(const Config *c) {
    const ModelConfig *m = &c->model;
    need_int(m->vocab, "model.vocab");
    need_int(m->vocab_pad, "model.vocab_pad");
    need_int(m->layers, "model.layers");
    need_int(m->d_model, "model.d_model");
    need_int(m->heads, "model.heads");
    need_int(m->seq_len, "model.seq_len");
    need_int(m->mlp_ratio, "model.mlp_ratio");
    need_int(c->train.seq_len, "train.seq_len");
    need_int(c->train.micro_batch, "train.micro_batch");
    need_int(c->generate.token_budget, "generate.token_budget");
    need_int(c->generate.kv_block, "generate.kv_block");
    need_int(c->generate.kv_blocks, "generate.kv_blocks");
    need_int(c->generate.max_batch, "generate.max_batch");
    if (m->d_model % m->heads) die("a deck loads whose heads do not divide d_model", NULL);
    int64_t vp = (m->vocab + m->vocab_pad - 1) / m->vocab_pad * m->vocab_pad;
    int64_t hidden;
    if (__builtin_mul_overflow(m->mlp_ratio, m->d_model, &hidden)) die("a deck loads whose MLP width overflows", NULL);
    need_product(c->train.micro_batch, c->train.seq_len, hidden, "B*T*mlp_ratio*C");
    need_product(c->train.micro_batch, c->train.seq_len, vp, "B*T*Vp");
    need_product(vp, m->d_model, m->layers, "Vp*C*L");
    need_product(m->d_model, m->d_model, 12 * m->layers, "12*L*C*C");
}

// 1 if a NUL byte sits in a line before any '#' there: inside a key or a value.
static int nul_outside_comment(const char *p, size_t n) {
    int comment = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') comment = 0;
        else if (p[i] == '#') comment = 1;
        else if (p[i] == '\0' && !comment) return 1;
    }
    return 0;
}

// Names the first line where the echo and the echo of the echo differ, and aborts.
static void first_difference(const char *a, const char *b) {
    while (*a && *a == *b) a++, b++;
    char msg[1024];
    snprintf(msg, sizeof msg, "first: ...%.80s\nagain: ...%.80s", a, b);
    die("the resolved echo changes when loaded again", msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    static char path[64];
    if (!path[0]) snprintf(path, sizeof path, "/tmp/fuzz_deck.%d.deck", (int)getpid());
    int world = 1 + data[0] % 8;
    const char *text = (const char *)data + 1;
    size_t n = size - 1, deck_len = n;
    const char *mark = memmem(text, n, "%%SETS%%\n", 9);
    char *sets[MAX_SETS], *setbuf = NULL;
    int nsets = 0;
    if (mark) {
        deck_len = (size_t)(mark - text);
        size_t rest = n - deck_len - 9;
        setbuf = malloc(rest + 1);
        memcpy(setbuf, mark + 9, rest);
        setbuf[rest] = '\0';
        for (char *s = setbuf, *e; *s && nsets < MAX_SETS; s = e + 1) {
            e = strchr(s, '\n');
            sets[nsets++] = s;
            if (!e) break;
            *e = '\0';
        }
    }
    write_file(path, text, deck_len);
    Deck *d = malloc(sizeof *d), *d2 = malloc(sizeof *d2);
    char err[4096], *echo = malloc(ECHO_MAX), *echo2 = malloc(ECHO_MAX);
    if (load(d, path, nsets, sets, world, err, sizeof err) == 0) {
        if (nul_outside_comment(text, deck_len)) die("a deck with a NUL byte in a key or value loads", NULL);
        check_resolved(&d->cfg);
        size_t len = deck_format(d, echo, ECHO_MAX);
        if (len >= ECHO_MAX - 1) die("the resolved echo does not fit 64 KiB", NULL);
        write_file(path, echo, len);
        if (load(d2, path, 0, NULL, world, err, sizeof err) != 0) die("the resolved echo does not load again", err);
        deck_format(d2, echo2, ECHO_MAX);
        strip_marks(echo);
        strip_marks(echo2);
        if (strcmp(echo, echo2) != 0) first_difference(echo, echo2);
    }
    free(echo); free(echo2); free(d); free(d2); free(setbuf);
    return 0;
}
