// test_bpe.c: drives src/tokenizer.c for tests/test_bpe.py.
//   test_bpe KIND DIR load            load only; prints "loaded V eot hash" or the error (exit 1)
//   test_bpe KIND DIR encode FILE...  per file: a line "ids: 1 2 3"; exits 1 unless
//                                     decode(encode(x)) == x and the streaming decode
//                                     (token by token, then flush) gives the same bytes
//   test_bpe KIND DIR bench FILE      encode MB/s of one pass over FILE (from an empty cache)
// KIND: byte or gpt2.
#include "deck.h"
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint8_t *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(2); }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    rewind(f);
    uint8_t *buf = malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) { fprintf(stderr, "cannot read %s\n", path); exit(2); }
    fclose(f);
    *n = (size_t)len;
    return buf;
}

static int check_file(Tokenizer *tk, const char *path) {
    size_t n;
    uint8_t *text = slurp(path, &n);
    uint32_t *tok = malloc((n + 1) * sizeof *tok);
    size_t m = tokenizer_encode(tk, text, n, tok);
    printf("ids:");
    for (size_t i = 0; i < m; i++) printf(" %u", tok[i]);
    printf("\n");
    char *back = malloc(m * (size_t)tk->max_token_bytes + 1), *streamed = malloc(m * (size_t)tk->max_token_bytes + 8);
    char *piece = malloc((size_t)tk->max_token_bytes + 4);
    size_t k = tokenizer_decode(tk, tok, m, back), s = 0;
    TokStream st = {0};
    int whole = 1;
    for (size_t i = 0; i < m; i++) {
        size_t p = tokenizer_decode_step(tk, &st, tok[i], piece);
        // Each piece ends on a character boundary unless it is invalid UTF-8 anyway.
        memcpy(streamed + s, piece, p);
        s += p;
    }
    s += tokenizer_decode_flush(&st, streamed + s);
    int ok = k == n && memcmp(back, text, n) == 0 && s == n && memcmp(streamed, text, n) == 0 && whole;
    fprintf(stderr, "%s: %zu bytes -> %zu tokens; decode %s, streaming decode %s\n", path, n, m,
            k == n && memcmp(back, text, n) == 0 ? "identical" : "DIFFERS",
            s == n && memcmp(streamed, text, n) == 0 ? "identical" : "DIFFERS");
    free(text); free(tok); free(back); free(streamed); free(piece);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: test_bpe byte|gpt2 DIR load|encode|bench ...\n"); return 2; }
    int kind = strcmp(argv[1], "gpt2") == 0 ? TOKENIZER_GPT2 : TOKENIZER_BYTE;
    Tokenizer tk;
    char why[1024];
    if (tokenizer_open(&tk, kind, argv[2], why, sizeof why)) {
        printf("error: %s\n", why);
        return 1;
    }
    int rc = 0;
    if (strcmp(argv[3], "load") == 0) {
        printf("loaded %d %d %s %d\n", tk.vocab_size, tk.eot, tk.hash, tk.max_token_bytes);
    } else if (strcmp(argv[3], "encode") == 0) {
        for (int i = 4; i < argc; i++) rc |= !check_file(&tk, argv[i]);
    } else if (strcmp(argv[3], "bench") == 0 && argc >= 5) {
        size_t n;
        uint8_t *text = slurp(argv[4], &n);
        uint32_t *tok = malloc((n + 1) * sizeof *tok);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        size_t m = tokenizer_encode(&tk, text, n, tok);
        clock_gettime(CLOCK_MONOTONIC, &b);
        double s = (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
        printf("bench: %zu bytes -> %zu tokens, %.1f MB/s\n", n, m, (double)n / 1e6 / s);
        free(text); free(tok);
    }
    tokenizer_free(&tk);
    return rc;
}
