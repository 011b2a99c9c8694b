// tokenizer.c: the byte tokenizer and GPT-2's byte-level BPE.
//
// BPE in four parts: loading (encoder.json as a flat JSON object of token ->
// id, vocab.bpe as one merge per line; every size bounded, every token checked
// against GPT-2's byte alphabet), pre-tokenisation (GPT-2's pattern written out
// by hand over code points, the classes from src/uniclass.c), merging one
// pre-token (a heap of adjacent pairs by (rank, position): all occurrences of
// the lowest-ranked pair are merged left to right before any new pair is
// considered, which is exactly the reference algorithm, in O(n log n)), and a
// direct-mapped cache of short words (bounded: a collision overwrites).
#include "tokenizer.h"
#include "deck.h"
#include "log.h"
#include "uniclass.h"
#include "utf8.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { CACHE_SLOTS = 1 << 16, CACHE_WORD = 15, NO_TOKEN = 0xFFFFFFFFu, DEAD = 0xFFFFFFFFu };

typedef struct CacheSlot {
    uint8_t wlen, ntok;
    uint8_t word[CACHE_WORD];
    uint32_t tok[CACHE_WORD];
} CacheSlot;

typedef struct HeapEntry {
    uint32_t rank, pos, l, r;
} HeapEntry;

struct Bpe {
    int V;
    uint8_t *pool;          // token bytes, back to back
    uint32_t *off, *len;    // (V): token id -> pool[off .. off+len)
    uint32_t *tok_map;      // open addressing: token bytes -> id (NO_TOKEN = empty)
    size_t tok_cap;
    uint64_t *pair_key;     // open addressing: (l << 32 | r) + 1 -> rank, merged (0 = empty)
    uint32_t *pair_rank, *pair_tok;
    size_t pair_cap;
    uint32_t byte_tok[256]; // the token of each single byte
    CacheSlot *cache;       // (CACHE_SLOTS)
    // Scratch for one word, grown as needed.
    uint32_t *id;
    int32_t *nxt, *prv;
    HeapEntry *heap;
    uint32_t *touched;
    size_t scratch_cap;
};

// ---------------------------------------------------------------------------
// GPT-2's byte alphabet: printable bytes stand for themselves (as code points),
// the others for U+0100 + their index among them.

static void byte_alphabet(uint32_t to_cp[256]) {
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        to_cp[b] = printable ? (uint32_t)b : (uint32_t)(256 + n++);
    }
}

// Code point -> byte, or -1 outside the alphabet (code points below 256 + 68).
static int cp_to_byte(const int16_t *inv, uint32_t cp) {
    return cp < 256 + 68 ? inv[cp] : -1;
}

static void byte_inverse(int16_t inv[256 + 68]) {
    uint32_t t[256];
    byte_alphabet(t);
    for (int i = 0; i < 256 + 68; i++) inv[i] = -1;
    for (int b = 0; b < 256; b++) inv[t[b]] = (int16_t)b;
}

// ---------------------------------------------------------------------------
// Hashing

static uint64_t fnv1a(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV_INIT 0xcbf29ce484222325ULL

static size_t round_pow2(size_t n) {
    size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
}

static uint32_t tok_find(const Bpe *b, const uint8_t *s, size_t n) {
    size_t mask = b->tok_cap - 1;
    for (size_t i = fnv1a(FNV_INIT, s, n) & mask;; i = (i + 1) & mask) {
        uint32_t t = b->tok_map[i];
        if (t == NO_TOKEN) return NO_TOKEN;
        if (b->len[t] == n && memcmp(b->pool + b->off[t], s, n) == 0) return t;
    }
}

static void tok_insert(Bpe *b, uint32_t t) {
    size_t mask = b->tok_cap - 1;
    size_t i = fnv1a(FNV_INIT, b->pool + b->off[t], b->len[t]) & mask;
    while (b->tok_map[i] != NO_TOKEN) i = (i + 1) & mask;
    b->tok_map[i] = t;
}

static size_t pair_slot(const Bpe *b, uint64_t key) {
    size_t mask = b->pair_cap - 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 20) & mask;
    while (b->pair_key[i] != 0 && b->pair_key[i] != key) i = (i + 1) & mask;
    return i;
}

static uint64_t pair_of(uint32_t l, uint32_t r) { return (((uint64_t)l << 32) | r) + 1; }

// ---------------------------------------------------------------------------
// Loading

typedef struct Src {
    const char *path;
    const uint8_t *s;
    size_t n, i;
    char *why;
    size_t whylen;
    int16_t inv[256 + 68];  // code point -> byte of GPT-2's alphabet
} Src;

static int src_fail(Src *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int src_fail(Src *s, const char *fmt, ...) {
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(s->why, s->whylen, "'%s': byte %zu: %s", s->path, s->i, msg);
    return -1;
}

static int read_file(const char *path, uint8_t **out, size_t *n, char *why, size_t whylen) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, whylen, "cannot read '%s': %s", path, strerror(errno));
        return -1;
    }
    uint8_t *buf = malloc((size_t)TOK_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        snprintf(why, whylen, "out of memory reading '%s'", path);
        return -1;
    }
    size_t got = fread(buf, 1, (size_t)TOK_MAX_FILE + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err || got > (size_t)TOK_MAX_FILE) {
        snprintf(why, whylen, err ? "cannot read '%s': read error" : "'%s' is larger than %d bytes", path,
                 TOK_MAX_FILE);
        free(buf);
        return -1;
    }
    *out = buf;
    *n = got;
    return 0;
}

static void skip_ws(Src *s) {
    while (s->i < s->n && (s->s[s->i] == ' ' || s->s[s->i] == '\t' || s->s[s->i] == '\n' || s->s[s->i] == '\r'))
        s->i++;
}

static int hexval(uint8_t c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int read_u4(Src *s, uint32_t *v) {
    if (s->n - s->i < 4) return src_fail(s, "a \\u escape needs 4 hex digits");
    *v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(s->s[s->i++]);
        if (h < 0) return src_fail(s, "a \\u escape needs 4 hex digits");
        *v = *v * 16 + (uint32_t)h;
    }
    return 0;
}

// One code point of a JSON string body (after the opening quote); 1 at the closing quote.
static int json_cp(Src *s, uint32_t *cp) {
    if (s->i >= s->n) return src_fail(s, "the file ends inside a string");
    uint8_t c = s->s[s->i];
    if (c == '"') { s->i++; return 1; }
    if (c < 0x20) return src_fail(s, "a control byte 0x%02X inside a string", c);
    if (c != '\\') {
        size_t k = utf8_seq_len((const char *)s->s + s->i, s->n - s->i);
        if (k == 0) return src_fail(s, "invalid UTF-8");
        const uint8_t *p = s->s + s->i;
        *cp = k == 1 ? p[0] : k == 2 ? (uint32_t)(p[0] & 0x1F) << 6 | (p[1] & 0x3F)
            : k == 3 ? (uint32_t)(p[0] & 0x0F) << 12 | (uint32_t)(p[1] & 0x3F) << 6 | (p[2] & 0x3F)
            : (uint32_t)(p[0] & 0x07) << 18 | (uint32_t)(p[1] & 0x3F) << 12 | (uint32_t)(p[2] & 0x3F) << 6 | (p[3] & 0x3F);
        s->i += k;
        return 0;
    }
    if (++s->i >= s->n) return src_fail(s, "the file ends inside an escape");
    c = s->s[s->i++];
    const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
    const char *hit = c ? strchr(from, c) : NULL;
    if (hit) { *cp = (uint8_t)to[hit - from]; return 0; }
    if (c != 'u') return src_fail(s, "unknown escape \\%c", c);
    if (read_u4(s, cp)) return -1;
    if (*cp >= 0xDC00 && *cp <= 0xDFFF) return src_fail(s, "a lone low surrogate \\u%04X", *cp);
    if (*cp >= 0xD800 && *cp <= 0xDBFF) {
        uint32_t lo;
        if (s->n - s->i < 2 || s->s[s->i] != '\\' || s->s[s->i + 1] != 'u')
            return src_fail(s, "a high surrogate without its low half");
        s->i += 2;
        if (read_u4(s, &lo)) return -1;
        if (lo < 0xDC00 || lo > 0xDFFF) return src_fail(s, "a high surrogate without its low half");
        *cp = 0x10000 + ((*cp - 0xD800) << 10) + (lo - 0xDC00);
    }
    return 0;
}

// A JSON string of alphabet characters -> token bytes in out (up to TOK_MAX_TOKEN_BYTES).
static int json_token(Src *s, uint8_t *out, size_t *len) {
    if (s->i >= s->n || s->s[s->i] != '"') return src_fail(s, "expected a string (a token)");
    s->i++;
    *len = 0;
    for (;;) {
        uint32_t cp = 0;
        int rc = json_cp(s, &cp);
        if (rc < 0) return -1;
        if (rc == 1) break;
        int b = cp_to_byte(s->inv, cp);
        if (b < 0) return src_fail(s, "U+%04X is not in GPT-2's byte alphabet", cp);
        if (*len >= TOK_MAX_TOKEN_BYTES) return src_fail(s, "a token longer than %d bytes", TOK_MAX_TOKEN_BYTES);
        out[(*len)++] = (uint8_t)b;
    }
    if (*len == 0) return src_fail(s, "an empty token");
    return 0;
}

static int json_id(Src *s, uint32_t *id) {
    uint64_t v = 0;
    size_t start = s->i;
    while (s->i < s->n && s->s[s->i] >= '0' && s->s[s->i] <= '9') {
        v = v * 10 + (uint64_t)(s->s[s->i++] - '0');
        if (v >= TOK_MAX_VOCAB) return src_fail(s, "a token id at or above %d", TOK_MAX_VOCAB);
    }
    if (s->i == start) return src_fail(s, "expected a token id (a non-negative integer)");
    if (s->i < s->n && (s->s[s->i] == '.' || s->s[s->i] == 'e' || s->s[s->i] == 'E'))
        return src_fail(s, "a token id must be an integer");
    if (s->s[start] == '0' && s->i - start > 1) return src_fail(s, "a token id with a leading zero");
    *id = (uint32_t)v;
    return 0;
}

typedef struct Entry {
    uint32_t id, off, len;
} Entry;

// encoder.json: {"token": id, ...}, ids exactly 0 .. V-1 each once.
static int load_vocab(Bpe *b, const char *path, char *why, size_t whylen) {
    uint8_t *text;
    size_t n;
    if (read_file(path, &text, &n, why, whylen)) return -1;
    Src s = {.path = path, .s = text, .n = n, .why = why, .whylen = whylen};
    byte_inverse(s.inv);
    Entry *ent = NULL;
    size_t ne = 0, cap = 0, pool_len = 0;
    uint8_t tokbuf[TOK_MAX_TOKEN_BYTES];
    b->pool = malloc(n + 1);   // token bytes are never longer than their JSON text
    int rc = -1;
    if (!b->pool) { snprintf(why, whylen, "out of memory for '%s'", path); goto done; }
    skip_ws(&s);
    if (s.i >= n || text[s.i] != '{') { src_fail(&s, "expected '{' (a JSON object of token: id)"); goto done; }
    s.i++;
    skip_ws(&s);
    int first = 1;
    while (!(s.i < n && text[s.i] == '}')) {
        if (!first) {
            if (s.i >= n || text[s.i] != ',') { src_fail(&s, s.i >= n ? "the file ends inside the object" : "expected ',' or '}'"); goto done; }
            s.i++;
            skip_ws(&s);
        }
        first = 0;
        size_t len = 0;
        if (json_token(&s, tokbuf, &len)) goto done;
        skip_ws(&s);
        if (s.i >= n || text[s.i] != ':') { src_fail(&s, "expected ':' after a token"); goto done; }
        s.i++;
        skip_ws(&s);
        uint32_t id = 0;
        if (json_id(&s, &id)) goto done;
        skip_ws(&s);
        if (ne == TOK_MAX_VOCAB) { src_fail(&s, "more than %d tokens", TOK_MAX_VOCAB); goto done; }
        if (ne == cap) {
            cap = cap ? 2 * cap : 1024;
            Entry *e2 = realloc(ent, cap * sizeof *ent);
            if (!e2) { src_fail(&s, "out of memory"); goto done; }
            ent = e2;
        }
        memcpy(b->pool + pool_len, tokbuf, len);
        ent[ne++] = (Entry){id, (uint32_t)pool_len, (uint32_t)len};
        pool_len += len;
    }
    s.i++;
    skip_ws(&s);
    if (s.i != n) { src_fail(&s, "text after the object"); goto done; }
    if (ne < 257) { snprintf(why, whylen, "'%s': %zu tokens; GPT-2 byte-level BPE needs at least the 256 bytes and <|endoftext|>", path, ne); goto done; }
    b->V = (int)ne;
    b->off = malloc(ne * sizeof *b->off);
    b->len = calloc(ne, sizeof *b->len);
    b->tok_cap = round_pow2(ne);
    b->tok_map = malloc(b->tok_cap * sizeof *b->tok_map);
    if (!b->off || !b->len || !b->tok_map) { snprintf(why, whylen, "out of memory for '%s'", path); goto done; }
    memset(b->tok_map, 0xFF, b->tok_cap * sizeof *b->tok_map);
    for (size_t k = 0; k < ne; k++) {
        if (ent[k].id >= ne) { snprintf(why, whylen, "'%s': token id %u is outside [0, %zu): ids must be 0 .. V-1 for V = %zu tokens", path, ent[k].id, ne, ne); goto done; }
        if (b->len[ent[k].id]) { snprintf(why, whylen, "'%s': token id %u is given twice", path, ent[k].id); goto done; }
        b->off[ent[k].id] = ent[k].off;
        b->len[ent[k].id] = ent[k].len;
        uint32_t dup = tok_find(b, b->pool + ent[k].off, ent[k].len);
        if (dup != NO_TOKEN) { snprintf(why, whylen, "'%s': the token of id %u is given again as id %u", path, dup, ent[k].id); goto done; }
        tok_insert(b, ent[k].id);
    }
    for (int c = 0; c < 256; c++) {
        uint8_t byte = (uint8_t)c;
        b->byte_tok[c] = tok_find(b, &byte, 1);
        if (b->byte_tok[c] == NO_TOKEN) { snprintf(why, whylen, "'%s': no token for the single byte 0x%02X; a byte-level BPE vocabulary holds all 256", path, c); goto done; }
    }
    rc = 0;
done:
    free(ent);
    free(text);
    return rc;
}

// One side of a merge line: alphabet characters up to a space or the line's end.
static int merge_side(Src *s, size_t end, uint8_t *out, size_t *len) {
    *len = 0;
    while (s->i < end && s->s[s->i] != ' ') {
        size_t k = utf8_seq_len((const char *)s->s + s->i, end - s->i);
        if (k == 0) return src_fail(s, "invalid UTF-8");
        uint32_t cp = k == 1 ? s->s[s->i] : (uint32_t)(s->s[s->i] & 0x1F) << 6 | (s->s[s->i + 1] & 0x3F);
        int b = k <= 2 ? cp_to_byte(s->inv, cp) : -1;
        if (b < 0) return src_fail(s, "a character outside GPT-2's byte alphabet");
        if (*len >= TOK_MAX_TOKEN_BYTES) return src_fail(s, "a token longer than %d bytes", TOK_MAX_TOKEN_BYTES);
        out[(*len)++] = (uint8_t)b;
        s->i += k;
    }
    return *len ? 0 : src_fail(s, "a merge line is two tokens separated by one space");
}

// vocab.bpe: an optional "#version" line, then "LEFT RIGHT" per line, rank = line order.
static int load_merges(Bpe *b, const char *path, char *why, size_t whylen) {
    uint8_t *text;
    size_t n;
    if (read_file(path, &text, &n, why, whylen)) return -1;
    Src s = {.path = path, .s = text, .n = n, .why = why, .whylen = whylen};
    byte_inverse(s.inv);
    int rc = -1;
    b->pair_cap = round_pow2((size_t)b->V);
    b->pair_key = calloc(b->pair_cap, sizeof *b->pair_key);
    b->pair_rank = malloc(b->pair_cap * sizeof *b->pair_rank);
    b->pair_tok = malloc(b->pair_cap * sizeof *b->pair_tok);
    if (!b->pair_key || !b->pair_rank || !b->pair_tok) { snprintf(why, whylen, "out of memory for '%s'", path); goto done; }
    uint32_t rank = 0;
    size_t line = 0;
    uint8_t l[TOK_MAX_TOKEN_BYTES], r[TOK_MAX_TOKEN_BYTES], both[2 * TOK_MAX_TOKEN_BYTES];
    while (s.i < n) {
        line++;
        const uint8_t *nl = memchr(text + s.i, '\n', n - s.i);
        size_t end = nl ? (size_t)(nl - text) : n, next = nl ? end + 1 : n;
        if (end > s.i && text[end - 1] == '\r') end--;
        if (end == s.i || (line == 1 && end - s.i >= 8 && memcmp(text + s.i, "#version", 8) == 0)) {
            s.i = next;
            continue;
        }
        size_t ll, rl;
        if (merge_side(&s, end, l, &ll)) goto line_err;
        if (s.i >= end) { src_fail(&s, "a merge line is two tokens separated by one space"); goto line_err; }
        s.i++;
        if (merge_side(&s, end, r, &rl)) goto line_err;
        if (s.i != end) { src_fail(&s, "more than two tokens on a merge line"); goto line_err; }
        uint32_t lt = tok_find(b, l, ll), rt = tok_find(b, r, rl);
        memcpy(both, l, ll);
        memcpy(both + ll, r, rl);
        uint32_t mt = ll + rl <= TOK_MAX_TOKEN_BYTES ? tok_find(b, both, ll + rl) : NO_TOKEN;
        if (lt == NO_TOKEN || rt == NO_TOKEN || mt == NO_TOKEN) {
            snprintf(why, whylen, "'%s': line %zu: the merge's %s is not a token of the vocabulary", path, line,
                     lt == NO_TOKEN ? "left side" : rt == NO_TOKEN ? "right side" : "result");
            goto done;
        }
        if (rank >= (uint32_t)b->V) { snprintf(why, whylen, "'%s': line %zu: more merges than the %d tokens", path, line, b->V); goto done; }
        size_t slot = pair_slot(b, pair_of(lt, rt));
        if (b->pair_key[slot]) { snprintf(why, whylen, "'%s': line %zu: the merge is given twice (first as rank %u)", path, line, b->pair_rank[slot]); goto done; }
        b->pair_key[slot] = pair_of(lt, rt);
        b->pair_rank[slot] = rank++;
        b->pair_tok[slot] = mt;
        s.i = next;
    }
    rc = 0;
    goto done;
line_err: {
        char inner[512];
        snprintf(inner, sizeof inner, "%s", why);
        snprintf(why, whylen, "%s (line %zu)", inner, line);
    }
done:
    free(text);
    return rc;
}

static uint64_t vocab_hash(const Bpe *b) {
    uint64_t h = FNV_INIT;
    for (int t = 0; t < b->V; t++) {
        uint8_t l2[2] = {(uint8_t)(b->len[t] & 0xFF), (uint8_t)(b->len[t] >> 8)};
        h = fnv1a(h, l2, 2);
        h = fnv1a(h, b->pool + b->off[t], b->len[t]);
    }
    // Merges in rank order: gather them from the table.
    size_t nm = 0;
    for (size_t i = 0; i < b->pair_cap; i++) nm += b->pair_key[i] != 0;
    uint64_t *by_rank = calloc(nm ? nm : 1, sizeof *by_rank);
    SYS_CHECK(by_rank, "out of memory hashing the vocabulary");
    for (size_t i = 0; i < b->pair_cap; i++)
        if (b->pair_key[i] && b->pair_rank[i] < nm) by_rank[b->pair_rank[i]] = b->pair_key[i];
    for (size_t i = 0; i < nm; i++) {
        uint8_t k[8];
        for (int j = 0; j < 8; j++) k[j] = (uint8_t)(by_rank[i] >> (8 * j));
        h = fnv1a(h, k, 8);
    }
    free(by_rank);
    return h;
}

static void bpe_free(Bpe *b) {
    if (!b) return;
    free(b->pool); free(b->off); free(b->len); free(b->tok_map);
    free(b->pair_key); free(b->pair_rank); free(b->pair_tok); free(b->cache);
    free(b->id); free(b->nxt); free(b->prv); free(b->heap); free(b->touched);
    free(b);
}

static int exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static int bpe_load(Tokenizer *tk, const char *dir, char *why, size_t whylen) {
    char vpath[4200], mpath[4200];
    snprintf(vpath, sizeof vpath, "%s/encoder.json", dir);
    snprintf(mpath, sizeof mpath, "%s/vocab.bpe", dir);
    if (!exists(vpath) && !exists(mpath)) {   // the Hugging Face names
        snprintf(vpath, sizeof vpath, "%s/vocab.json", dir);
        snprintf(mpath, sizeof mpath, "%s/merges.txt", dir);
        if (!exists(vpath) && !exists(mpath)) {
            snprintf(why, whylen, "'%s' holds neither encoder.json + vocab.bpe nor vocab.json + merges.txt; "
                     "hint: `make deps` fetches GPT-2's into data/gpt2, or set [data] tokenizer_dir", dir);
            return -1;
        }
    }
    Bpe *b = calloc(1, sizeof *b);
    if (!b) { snprintf(why, whylen, "out of memory"); return -1; }
    if (load_vocab(b, vpath, why, whylen) || load_merges(b, mpath, why, whylen)) {
        bpe_free(b);
        return -1;
    }
    b->cache = calloc(CACHE_SLOTS, sizeof *b->cache);
    if (!b->cache) { bpe_free(b); snprintf(why, whylen, "out of memory"); return -1; }
    const uint8_t eot[] = "<|endoftext|>";
    uint32_t e = tok_find(b, eot, sizeof eot - 1);
    if (e == NO_TOKEN) { bpe_free(b); snprintf(why, whylen, "'%s' has no <|endoftext|> token", vpath); return -1; }
    int maxb = 1;
    for (int t = 0; t < b->V; t++)
        if ((int)b->len[t] > maxb) maxb = (int)b->len[t];
    *tk = (Tokenizer){.kind = TOKENIZER_GPT2, .vocab_size = b->V, .eot = (int)e, .name = "gpt2",
                      .max_token_bytes = maxb, .bpe = b};
    snprintf(tk->hash, sizeof tk->hash, "fnv1a64:%016llx", (unsigned long long)vocab_hash(b));
    return 0;
}

void tokenizer_init(Tokenizer *tk, int kind) {
    if (kind != TOKENIZER_BYTE)
        FATAL("load it with tokenizer_open and the deck's [data] tokenizer_dir", "tokenizer_init: kind %d is not the byte tokenizer", kind);
    *tk = (Tokenizer){.kind = TOKENIZER_BYTE, .vocab_size = 257, .eot = 256, .name = "byte", .hash = "byte",
                      .max_token_bytes = 1};
}

int tokenizer_open(Tokenizer *tk, int kind, const char *dir, char *why, size_t n) {
    memset(tk, 0, sizeof *tk);
    if (kind == TOKENIZER_BYTE) {
        tokenizer_init(tk, kind);
        return 0;
    }
    if (kind != TOKENIZER_GPT2) {
        snprintf(why, n, "unknown tokenizer kind %d", kind);
        return -1;
    }
    return bpe_load(tk, dir, why, n);
}

void tokenizer_free(Tokenizer *tk) {
    bpe_free(tk->bpe);
    tk->bpe = NULL;
}

// ---------------------------------------------------------------------------
// Pre-tokenisation: GPT-2's pattern
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// over code points; a byte that starts no valid UTF-8 sequence is one "other".

enum { C_OTHER, C_LETTER, C_NUMBER, C_SPACE };

static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid][0]) hi = mid;
        else if (cp > r[mid][1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

// JavaScript's \s (the reference is gpt-3-encoder's JavaScript regex).
static int is_space(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
           cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000 || cp == 0xFEFF;
}

// Class and byte length of the character at s[0] (n > 0).
static int char_class(const uint8_t *s, size_t n, size_t *len) {
    uint8_t c = s[0];
    if (c < 0x80) {
        *len = 1;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return C_LETTER;
        if (c >= '0' && c <= '9') return C_NUMBER;
        return is_space(c) ? C_SPACE : C_OTHER;
    }
    size_t k = utf8_seq_len((const char *)s, n);
    if (k == 0) { *len = 1; return C_OTHER; }
    *len = k;
    uint32_t cp = k == 2 ? (uint32_t)(s[0] & 0x1F) << 6 | (s[1] & 0x3F)
                : k == 3 ? (uint32_t)(s[0] & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F)
                : (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 | (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    if (is_space(cp)) return C_SPACE;
    if (in_ranges(uniclass_letter, uniclass_letter_n, cp)) return C_LETTER;
    if (in_ranges(uniclass_number, uniclass_number_n, cp)) return C_NUMBER;
    return C_OTHER;
}

// End of the run of characters of class cls starting at i.
static size_t run_end(const uint8_t *s, size_t n, size_t i, int cls) {
    while (i < n) {
        size_t k;
        if (char_class(s + i, n - i, &k) != cls) break;
        i += k;
    }
    return i;
}

// Length in bytes of the pre-token starting at s[i] (i < n).
static size_t pretoken(const uint8_t *s, size_t n, size_t i) {
    if (s[i] == '\'' && i + 1 < n) {
        uint8_t a = s[i + 1], b = i + 2 < n ? s[i + 2] : 0;
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
        if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    }
    size_t k, k2;
    int cls = char_class(s + i, n - i, &k);
    if (s[i] == ' ' && i + 1 < n) {
        int next = char_class(s + i + 1, n - i - 1, &k2);
        if (next != C_SPACE) return run_end(s, n, i + 1 + k2, next) - i;
    }
    if (cls != C_SPACE) return run_end(s, n, i + k, cls) - i;
    // Whitespace: the whole run if it ends the text or holds one character,
    // else all but its last character (\s+(?!\S) backs off by one).
    size_t end = i, last = i;
    while (end < n) {
        if (char_class(s + end, n - end, &k2) != C_SPACE) break;
        last = end;
        end += k2;
    }
    if (end == n || last == i) return end - i;
    return last - i;
}

// ---------------------------------------------------------------------------
// Merging one pre-token

static void scratch(Bpe *b, size_t n) {
    if (n <= b->scratch_cap) return;
    size_t c = n < 64 ? 64 : n;
    free(b->id); free(b->nxt); free(b->prv); free(b->heap); free(b->touched);
    b->id = malloc(c * sizeof *b->id);
    b->nxt = malloc(c * sizeof *b->nxt);
    b->prv = malloc(c * sizeof *b->prv);
    b->heap = malloc(3 * c * sizeof *b->heap);
    b->touched = malloc(c * sizeof *b->touched);
    SYS_CHECK(b->id && b->nxt && b->prv && b->heap && b->touched, "out of memory for a word of %zu bytes", n);
    b->scratch_cap = c;
}

static int heap_less(const HeapEntry *a, const HeapEntry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(HeapEntry *h, size_t *n, HeapEntry e) {
    size_t i = (*n)++;
    while (i > 0 && heap_less(&e, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = e;
}

static HeapEntry heap_pop(HeapEntry *h, size_t *n) {
    HeapEntry top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && heap_less(&h[c + 1], &h[c])) c++;
        if (!heap_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n) h[i] = last;
    return top;
}

// Pushes the pair starting at symbol p, if it is a merge.
static void push_pair(Bpe *b, size_t *hn, int32_t p) {
    if (p < 0 || b->nxt[p] < 0) return;
    uint32_t l = b->id[p], r = b->id[b->nxt[p]];
    size_t slot = pair_slot(b, pair_of(l, r));
    if (b->pair_key[slot]) heap_push(b->heap, hn, (HeapEntry){b->pair_rank[slot], (uint32_t)p, l, r});
}

static int entry_valid(const Bpe *b, const HeapEntry *e) {
    int32_t p = (int32_t)e->pos;
    return b->id[p] == e->l && b->nxt[p] >= 0 && b->id[b->nxt[p]] == e->r;
}

static size_t bpe_merge(Bpe *b, const uint8_t *w, size_t n, uint32_t *out) {
    scratch(b, n);
    for (size_t i = 0; i < n; i++) {
        b->id[i] = b->byte_tok[w[i]];
        b->nxt[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        b->prv[i] = (int32_t)i - 1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) push_pair(b, &hn, (int32_t)i);
    while (hn) {
        HeapEntry e = heap_pop(b->heap, &hn);
        if (!entry_valid(b, &e)) continue;
        // Every occurrence of this rank, left to right, before any pair it creates.
        uint32_t rank = e.rank;
        size_t nt = 0;
        for (;;) {
            if (entry_valid(b, &e)) {
                int32_t p = (int32_t)e.pos, q = b->nxt[p];
                size_t slot = pair_slot(b, pair_of(e.l, e.r));
                b->id[p] = b->pair_tok[slot];
                b->nxt[p] = b->nxt[q];
                if (b->nxt[q] >= 0) b->prv[b->nxt[q]] = p;
                b->id[q] = DEAD;
                b->touched[nt++] = (uint32_t)p;
            }
            if (!hn || b->heap[0].rank != rank) break;
            e = heap_pop(b->heap, &hn);
        }
        for (size_t k = 0; k < nt; k++) {
            int32_t p = (int32_t)b->touched[k];
            push_pair(b, &hn, b->prv[p]);
            push_pair(b, &hn, p);
        }
    }
    size_t m = 0;
    for (int32_t p = 0; p >= 0; p = b->nxt[p]) out[m++] = b->id[p];
    return m;
}

static size_t bpe_word(Bpe *b, const uint8_t *w, size_t n, uint32_t *out) {
    if (n == 1) {
        out[0] = b->byte_tok[w[0]];
        return 1;
    }
    if (n > CACHE_WORD) return bpe_merge(b, w, n, out);
    CacheSlot *c = &b->cache[fnv1a(FNV_INIT, w, n) & (CACHE_SLOTS - 1)];
    if (c->wlen == n && memcmp(c->word, w, n) == 0) {
        memcpy(out, c->tok, c->ntok * sizeof *out);
        return c->ntok;
    }
    size_t m = bpe_merge(b, w, n, out);
    c->wlen = (uint8_t)n;
    c->ntok = (uint8_t)m;
    memcpy(c->word, w, n);
    memcpy(c->tok, out, m * sizeof *out);
    return m;
}

// ---------------------------------------------------------------------------
// Encode and decode

size_t tokenizer_encode(const Tokenizer *tk, const uint8_t *text, size_t n, uint32_t *out) {
    if (tk->kind == TOKENIZER_BYTE) {
        for (size_t i = 0; i < n; i++) out[i] = text[i];
        return n;
    }
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        size_t k = pretoken(text, n, i);
        m += bpe_word(tk->bpe, text + i, k, out + m);
        i += k;
    }
    return m;
}

// The bytes of one token (0 for EOT and ids outside the vocabulary).
static size_t token_bytes(const Tokenizer *tk, uint32_t t, char *out) {
    if ((int)t == tk->eot || t >= (uint32_t)tk->vocab_size) return 0;
    if (tk->kind == TOKENIZER_BYTE) {
        out[0] = (char)t;
        return 1;
    }
    const Bpe *b = tk->bpe;
    memcpy(out, b->pool + b->off[t], b->len[t]);
    return b->len[t];
}

size_t tokenizer_decode(const Tokenizer *tk, const uint32_t *tok, size_t n, char *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += token_bytes(tk, tok[i], out + k);
    return k;
}

// Bytes a UTF-8 sequence starting with lead needs (0: not a lead byte).
static size_t lead_len(uint8_t c) {
    return c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
}

size_t tokenizer_decode_step(const Tokenizer *tk, TokStream *st, uint32_t tok, char *out) {
    memcpy(out, st->held, (size_t)st->nheld);
    size_t n = (size_t)st->nheld + token_bytes(tk, tok, out + st->nheld);
    st->nheld = 0;
    // Hold back the tail if it is the start of a sequence still missing bytes.
    for (size_t j = n, back = 0; j > 0 && back < 4; j--, back++) {
        uint8_t c = (uint8_t)out[j - 1];
        if ((c & 0xC0) == 0x80) continue;
        size_t need = lead_len(c);
        if (need > n - (j - 1)) {
            st->nheld = (int)(n - (j - 1));
            memcpy(st->held, out + j - 1, (size_t)st->nheld);
            n = j - 1;
        }
        break;
    }
    return n;
}

size_t tokenizer_decode_flush(TokStream *st, char *out) {
    size_t n = (size_t)st->nheld;
    memcpy(out, st->held, n);
    st->nheld = 0;
    return n;
}
