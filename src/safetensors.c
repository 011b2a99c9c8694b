// safetensors.c: a strict reader of the safetensors header, GPT-2 import into
// a Partita weights file, and an fp32 writer (see safetensors.h).
//
// The header is parsed here by a small bounded JSON parser of exactly the
// shape the format has (an object of tensor objects and one flat string map),
// since src/infer/json.c reads flat objects only.
#include "safetensors.h"
#include "deck.h"
#include "h5io.h"
#include "log.h"
#include "utf8.h"
#include "weights.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ---------------------------------------------------------------------------
// Header parsing

typedef struct P {
    const char *s;
    size_t n, i;
    char *why;
    size_t whylen;
    const char *path;
} P;

static int fail(P *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(P *p, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(p->why, p->whylen, "'%s': header byte %zu: %s", p->path, p->i, msg);
    return -1;
}

static void ws(P *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' || p->s[p->i] == '\r')) p->i++;
}

static int expect(P *p, char c) {
    ws(p);
    if (p->i >= p->n || p->s[p->i] != c) return fail(p, p->i >= p->n ? "the header ends early (expected '%c')" : "expected '%c'", c);
    p->i++;
    return 0;
}

static int peek(P *p, char c) {
    ws(p);
    return p->i < p->n && p->s[p->i] == c;
}

// A string (escapes \" \\ \/ \b \f \n \r \t \uXXXX below U+0080 only: names
// and dtypes are ASCII in practice; other text passes as raw UTF-8) into out.
static int str(P *p, char *out, size_t cap) {
    if (expect(p, '"')) return -1;
    size_t k = 0;
    for (;;) {
        if (p->i >= p->n) return fail(p, "the header ends inside a string");
        unsigned char c = (unsigned char)p->s[p->i];
        if (c == '"') { p->i++; break; }
        if (c < 0x20) return fail(p, "a control byte inside a string");
        if (c == '\\') {
            if (p->i + 1 >= p->n) return fail(p, "the header ends inside an escape");
            char e = p->s[p->i + 1];
            const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
            const char *hit = e ? strchr(from, e) : NULL;
            if (hit) { c = (unsigned char)to[hit - from]; p->i += 2; }
            else if (e == 'u' && p->i + 5 < p->n) {
                unsigned v = 0;
                for (int j = 2; j < 6; j++) {
                    char h = p->s[p->i + j];
                    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (d < 0) return fail(p, "a bad \\u escape");
                    v = v * 16 + (unsigned)d;
                }
                if (v == 0 || v >= 0x80) return fail(p, "a \\u escape outside printable ASCII");
                c = (unsigned char)v;
                p->i += 6;
            } else return fail(p, "a bad escape");
            if (k + 1 >= cap) return fail(p, "a string longer than %zu bytes", cap - 1);
            out[k++] = (char)c;
            continue;
        }
        size_t len = utf8_seq_len(p->s + p->i, p->n - p->i);
        if (len == 0) return fail(p, "invalid UTF-8 in a string");
        if (k + len >= cap) return fail(p, "a string longer than %zu bytes", cap - 1);
        memcpy(out + k, p->s + p->i, len);
        k += len;
        p->i += len;
    }
    out[k] = 0;
    return 0;
}

static int read_uint(P *p, uint64_t *v) {
    ws(p);
    size_t start = p->i;
    *v = 0;
    while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
        if (*v > ((uint64_t)1 << 56)) return fail(p, "an integer above 2^56");
        *v = *v * 10 + (uint64_t)(p->s[p->i++] - '0');
    }
    if (p->i == start) return fail(p, "expected a non-negative integer");
    if (p->i < p->n && (p->s[p->i] == '.' || p->s[p->i] == 'e' || p->s[p->i] == 'E' || p->s[p->i] == '-'))
        return fail(p, "expected a non-negative integer");
    return 0;
}

// [u, u, ...] with at most max elements.
static int uint_array(P *p, uint64_t *v, int max, int *count) {
    if (expect(p, '[')) return -1;
    *count = 0;
    if (peek(p, ']')) { p->i++; return 0; }
    for (;;) {
        if (*count == max) return fail(p, "an array of more than %d integers", max);
        if (read_uint(p, &v[(*count)++])) return -1;
        if (peek(p, ']')) { p->i++; return 0; }
        if (expect(p, ',')) return -1;
    }
}

static const struct { const char *name; int code; int size; } dtypes[] = {
    {"F32", ST_F32, 4}, {"F16", ST_F16, 2}, {"BF16", ST_BF16, 2}, {"F64", ST_OTHER, 8}, {"I64", ST_OTHER, 8},
    {"U64", ST_OTHER, 8}, {"I32", ST_OTHER, 4}, {"U32", ST_OTHER, 4}, {"I16", ST_OTHER, 2}, {"U16", ST_OTHER, 2},
    {"I8", ST_OTHER, 1}, {"U8", ST_OTHER, 1}, {"BOOL", ST_OTHER, 1}, {"F8_E4M3", ST_OTHER, 1}, {"F8_E5M2", ST_OTHER, 1}};

static int dtype_size(const char *name, int *code) {
    for (size_t k = 0; k < sizeof dtypes / sizeof dtypes[0]; k++)
        if (strcmp(name, dtypes[k].name) == 0) { *code = dtypes[k].code; return dtypes[k].size; }
    return 0;
}

static int tensor(P *p, StTensor *t) {
    if (expect(p, '{')) return -1;
    int seen = 0;   // bits: 1 dtype, 2 shape, 4 data_offsets
    int esize = 0;
    for (;;) {
        char key[32], val[32];
        if (str(p, key, sizeof key) || expect(p, ':')) return -1;
        if (strcmp(key, "dtype") == 0 && !(seen & 1)) {
            if (str(p, val, sizeof val)) return -1;
            esize = dtype_size(val, &t->dtype);
            if (!esize) return fail(p, "tensor '%s': unknown dtype \"%s\"", t->name, val);
            seen |= 1;
        } else if (strcmp(key, "shape") == 0 && !(seen & 2)) {
            if (uint_array(p, t->shape, ST_MAX_DIMS, &t->ndim)) return -1;
            seen |= 2;
        } else if (strcmp(key, "data_offsets") == 0 && !(seen & 4)) {
            uint64_t o[2];
            int c;
            if (uint_array(p, o, 2, &c)) return -1;
            if (c != 2) return fail(p, "tensor '%s': data_offsets must be [begin, end]", t->name);
            t->begin = o[0];
            t->end = o[1];
            seen |= 4;
        } else {
            return fail(p, "tensor '%s': unexpected or repeated member \"%s\"", t->name, key);
        }
        if (peek(p, '}')) { p->i++; break; }
        if (expect(p, ',')) return -1;
    }
    if (seen != 7) return fail(p, "tensor '%s' lacks %s", t->name, !(seen & 1) ? "dtype" : !(seen & 2) ? "shape" : "data_offsets");
    uint64_t bytes = (uint64_t)esize;
    for (int d = 0; d < t->ndim; d++)
        if (__builtin_mul_overflow(bytes, t->shape[d], &bytes)) return fail(p, "tensor '%s': the shape overflows", t->name);
    if (t->end < t->begin || t->end - t->begin != bytes)
        return fail(p, "tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, its dtype and shape need %llu", t->name,
                    (unsigned long long)t->begin, (unsigned long long)t->end,
                    (unsigned long long)(t->end >= t->begin ? t->end - t->begin : 0), (unsigned long long)bytes);
    return 0;
}

static int metadata(P *p) {
    if (expect(p, '{')) return -1;
    if (peek(p, '}')) { p->i++; return 0; }
    char buf[4096];
    for (;;) {
        if (str(p, buf, sizeof buf) || expect(p, ':') || str(p, buf, sizeof buf)) return -1;
        if (peek(p, '}')) { p->i++; return 0; }
        if (expect(p, ',')) return -1;
    }
}

static int cmp_begin(const void *a, const void *b) {
    const StTensor *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static int cmp_tname(const void *a, const void *b) { return strcmp(((const StTensor *)a)->name, ((const StTensor *)b)->name); }

static int parse(P *p, StFile *sf) {
    if (expect(p, '{')) return -1;
    int cap = 0, meta = 0;
    if (peek(p, '}')) return fail(p, "no tensors");
    for (;;) {
        char name[ST_MAX_NAME];
        if (str(p, name, sizeof name) || expect(p, ':')) return -1;
        if (strcmp(name, "__metadata__") == 0) {
            if (meta++) return fail(p, "__metadata__ given twice");
            if (metadata(p)) return -1;
        } else {
            if (sf->n == ST_MAX_TENSORS) return fail(p, "more than %d tensors", ST_MAX_TENSORS);
            if (sf->n == cap) {
                cap = cap ? 2 * cap : 64;
                StTensor *t = realloc(sf->t, (size_t)cap * sizeof *t);
                if (!t) return fail(p, "out of memory");
                sf->t = t;
            }
            StTensor *t = &sf->t[sf->n++];
            memset(t, 0, sizeof *t);
            memcpy(t->name, name, sizeof name);
            if (tensor(p, t)) return -1;
        }
        if (peek(p, '}')) { p->i++; break; }
        if (expect(p, ',')) return -1;
    }
    ws(p);
    if (p->i != p->n) return fail(p, "text after the header object");
    return 0;
}

// Names unique; offsets inside the data, covering it exactly.
static int layout(StFile *sf, char *why, size_t n, const char *path) {
    if (sf->n == 0) { snprintf(why, n, "'%s': no tensors", path); return -1; }
    qsort(sf->t, (size_t)sf->n, sizeof *sf->t, cmp_tname);
    for (int k = 1; k < sf->n; k++)
        if (strcmp(sf->t[k].name, sf->t[k - 1].name) == 0) { snprintf(why, n, "'%s': tensor '%s' is given twice", path, sf->t[k].name); return -1; }
    StTensor *by = malloc((size_t)sf->n * sizeof *by);
    if (!by) { snprintf(why, n, "out of memory"); return -1; }
    memcpy(by, sf->t, (size_t)sf->n * sizeof *by);
    qsort(by, (size_t)sf->n, sizeof *by, cmp_begin);
    int rc = 0;
    // Out of range first, then overlaps, then holes: the most telling reason wins.
    for (int k = 0; k < sf->n && !rc; k++)
        if (by[k].end > sf->data_size) {
            snprintf(why, n, "'%s': tensor '%s': data_offsets [%llu, %llu] reach past the %llu bytes of data (truncated file?)", path,
                     by[k].name, (unsigned long long)by[k].begin, (unsigned long long)by[k].end, (unsigned long long)sf->data_size);
            rc = -1;
        }
    for (int k = 1; k < sf->n && !rc; k++)
        if (by[k].begin < by[k - 1].end) {
            snprintf(why, n, "'%s': tensor '%s' at [%llu, %llu] overlaps '%s'", path, by[k].name, (unsigned long long)by[k].begin,
                     (unsigned long long)by[k].end, by[k - 1].name);
            rc = -1;
        }
    uint64_t at = 0;
    for (int k = 0; k < sf->n && !rc; k++) {
        if (by[k].begin > at) {
            snprintf(why, n, "'%s': bytes [%llu, %llu) of the data belong to no tensor (the format allows no holes)", path,
                     (unsigned long long)at, (unsigned long long)by[k].begin);
            rc = -1;
        }
        at = by[k].end;
    }
    if (!rc && at != sf->data_size) {
        snprintf(why, n, "'%s': the last %llu bytes of the data belong to no tensor", path, (unsigned long long)(sf->data_size - at));
        rc = -1;
    }
    free(by);
    return rc;
}

void st_free(StFile *sf) {
    free(sf->t);
    sf->t = NULL;
    sf->n = 0;
}

int st_read_header(const char *path, StFile *sf, char *why, size_t n) {
    memset(sf, 0, sizeof *sf);
    FILE *f = fopen(path, "rb");
    if (!f) { snprintf(why, n, "cannot read '%s': %s", path, strerror(errno)); return -1; }
    struct stat st;
    unsigned char len8[8];
    if (fstat(fileno(f), &st) != 0 || fread(len8, 1, 8, f) != 8) {
        snprintf(why, n, "'%s': shorter than the 8-byte header length", path);
        fclose(f);
        return -1;
    }
    uint64_t hl = 0;
    for (int k = 7; k >= 0; k--) hl = hl << 8 | len8[k];
    uint64_t fsize = (uint64_t)st.st_size;
    if (hl > ST_MAX_HEADER || hl + 8 > fsize || hl < 2) {
        snprintf(why, n, "'%s': a header length of %llu bytes %s", path, (unsigned long long)hl,
                 hl > ST_MAX_HEADER ? "is above the format's 100 MB limit" : hl < 2 ? "is too short for a JSON object"
                                                                            : "is more than the file holds (not safetensors, or truncated)");
        fclose(f);
        return -1;
    }
    char *h = malloc(hl + 1);
    if (!h || fread(h, 1, hl, f) != hl) {
        snprintf(why, n, "'%s': cannot read its %llu-byte header", path, (unsigned long long)hl);
        free(h);
        fclose(f);
        return -1;
    }
    fclose(f);
    h[hl] = 0;
    sf->data_start = 8 + hl;
    sf->data_size = fsize - sf->data_start;
    P p = {.s = h, .n = hl, .why = why, .whylen = n, .path = path};
    int rc = parse(&p, sf);
    if (!rc) rc = layout(sf, why, n, path);
    free(h);
    if (rc) st_free(sf);
    return rc;
}

// ---------------------------------------------------------------------------
// Import

static const StTensor *find(const StFile *sf, const char *name) {
    StTensor key;
    snprintf(key.name, sizeof key.name, "%s", name);
    const StTensor *t = bsearch(&key, sf->t, (size_t)sf->n, sizeof *sf->t, cmp_tname);
    if (t) return t;
    snprintf(key.name, sizeof key.name, "transformer.%s", name);
    return bsearch(&key, sf->t, (size_t)sf->n, sizeof *sf->t, cmp_tname);
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF, bits;
    if (e == 0) {
        if (m == 0) bits = sign;
        else {   // subnormal: normalise
            int s = -1;
            do { s++; m <<= 1; } while (!(m & 0x400));
            bits = sign | (uint32_t)(127 - 15 - s) << 23 | (m & 0x3FF) << 13;
        }
    } else if (e == 31) bits = sign | 0x7F800000u | m << 13;
    else bits = sign | (e - 15 + 127) << 23 | m << 13;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Reads count elements of t starting at element first into out as floats.
static int read_elems(FILE *f, const StFile *sf, const StTensor *t, uint64_t first, size_t count, float *out) {
    int es = t->dtype == ST_F32 ? 4 : 2;
    if (fseeko(f, (off_t)(sf->data_start + t->begin + first * (uint64_t)es), SEEK_SET) != 0) return -1;
    unsigned char buf[4096];
    for (size_t done = 0; done < count;) {
        size_t k = count - done < sizeof buf / (size_t)es ? count - done : sizeof buf / (size_t)es;
        if (fread(buf, (size_t)es, k, f) != k) return -1;
        for (size_t j = 0; j < k; j++) {
            const unsigned char *b = buf + j * (size_t)es;
            uint32_t bits;
            if (t->dtype == ST_F32) bits = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
            else if (t->dtype == ST_BF16) bits = ((uint32_t)b[0] | (uint32_t)b[1] << 8) << 16;
            else { out[done + j] = half_to_float((uint16_t)(b[0] | b[1] << 8)); continue; }
            memcpy(&out[done + j], &bits, 4);
        }
        done += k;
    }
    return 0;
}

static int ignored(const char *name) {
    const char *s = strncmp(name, "transformer.", 12) == 0 ? name + 12 : name;
    size_t n = strlen(s);
    if (strcmp(s, "lm_head.weight") == 0 || strcmp(name, "lm_head.weight") == 0) return 1;
    return strncmp(s, "h.", 2) == 0 && ((n > 10 && strcmp(s + n - 10, ".attn.bias") == 0) ||
                                        (n > 17 && strcmp(s + n - 17, ".attn.masked_bias") == 0));
}

static int shape_is(const StTensor *t, int ndim, uint64_t a, uint64_t b) {
    return t->ndim == ndim && t->shape[0] == a && (ndim == 1 || t->shape[1] == b);
}

// The model shape from the tensors; heads from the caller (0: C / 64).
static int infer_shape(const StFile *sf, int heads, ModelConfig *mc, char *why, size_t n, const char *path) {
    const StTensor *wte = find(sf, "wte.weight"), *wpe = find(sf, "wpe.weight"), *fc = find(sf, "h.0.mlp.c_fc.weight");
    if (!wte || !wpe || !fc) {
        snprintf(why, n, "'%s': no %s tensor: not a GPT-2 model (names wte.weight, wpe.weight, h.0.*, ln_f.*, with or without "
                 "'transformer.')", path, !wte ? "wte.weight" : !wpe ? "wpe.weight" : "h.0.mlp.c_fc.weight");
        return -1;
    }
    if (wte->ndim != 2 || wpe->ndim != 2 || fc->ndim != 2 || wpe->shape[1] != wte->shape[1] || fc->shape[0] != wte->shape[1]) {
        snprintf(why, n, "'%s': wte.weight, wpe.weight and h.0.mlp.c_fc.weight are not 2-D with one width C", path);
        return -1;
    }
    int L = 0;
    char name[96];
    for (; L < (1 << 16); L++) {
        snprintf(name, sizeof name, "h.%d.ln_1.weight", L);
        if (!find(sf, name)) break;
    }
    uint64_t V = wte->shape[0], C = wte->shape[1], T = wpe->shape[0], H = fc->shape[1];
    if (heads == 0) heads = C % 64 == 0 ? (int)(C / 64) : 0;
    if (heads == 0) { snprintf(why, n, "'%s': d_model = %llu is not a multiple of 64: give --heads N", path, (unsigned long long)C); return -1; }
    if (L < 1 || V < 2 || V > DECK_MAX_VOCAB || C > 65536 || T > DECK_MAX_SEQ || T < 1 || H % C || H / C > 64 ||
        (uint64_t)heads > C || C % (uint64_t)heads) {
        snprintf(why, n, "'%s': a shape Partita cannot hold: L=%d V=%llu C=%llu T=%llu mlp=%llu heads=%d", path, L,
                 (unsigned long long)V, (unsigned long long)C, (unsigned long long)T, (unsigned long long)H, heads);
        return -1;
    }
    *mc = (ModelConfig){.vocab = (int64_t)V, .vocab_pad = 64, .layers = L, .d_model = (int64_t)C, .heads = heads,
                        .seq_len = (int64_t)T, .mlp_ratio = (int64_t)(H / C), .init_std = 0.02};
    return 0;
}

static int import_file(const char *src, const char *out, int heads, char *why, size_t n) {
    StFile sf;
    if (st_read_header(src, &sf, why, n)) return -1;
    ModelConfig mc;
    Model m;
    if (infer_shape(&sf, heads, &mc, why, n, src)) { st_free(&sf); return -1; }
    model_table(&m, &mc);
    int rc = 0;
    // Every tensor of the file is a model tensor or one of the ignored ones.
    for (int k = 0; k < sf.n && !rc; k++) {
        const char *nm = sf.t[k].name, *bare = strncmp(nm, "transformer.", 12) == 0 ? nm + 12 : nm;
        if (!ignored(nm) && !model_find(&m, bare)) {
            snprintf(why, n, "'%s': tensor '%s' is not part of a GPT-2 of %d layers", src, nm, m.s.L);
            rc = -1;
        }
        if (sf.t[k].dtype == ST_OTHER && !ignored(nm)) {
            snprintf(why, n, "'%s': tensor '%s' is not F32, F16 or BF16", src, nm);
            rc = -1;
        }
    }
    float *buf = rc ? NULL : calloc(m.nparams, sizeof(float));   // wte's padding rows stay 0
    FILE *f = rc ? NULL : fopen(src, "rb");
    if (!rc && (!buf || !f)) { snprintf(why, n, "cannot read '%s': %s", src, buf ? strerror(errno) : "out of memory"); rc = -1; }
    for (int i = 0; i < m.ntensors && !rc; i++) {
        const ParamTensor *pt = &m.tensors[i];
        const StTensor *t = find(&sf, pt->name);
        uint64_t rows = i == 0 ? (uint64_t)m.s.V : (uint64_t)pt->shape[0];   // wte: V rows in the file, Vp here
        if (!t) { snprintf(why, n, "'%s': no tensor '%s' (nor 'transformer.%s')", src, pt->name, pt->name); rc = -1; break; }
        if (!shape_is(t, pt->ndim, rows, (uint64_t)pt->shape[1])) {
            char got[160] = "(";
            for (int d = 0; d < t->ndim; d++)
                snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", d ? ", " : "", (unsigned long long)t->shape[d]);
            char need[64];
            if (pt->ndim == 2) snprintf(need, sizeof need, "(%llu, %d)", (unsigned long long)rows, pt->shape[1]);
            else snprintf(need, sizeof need, "(%llu)", (unsigned long long)rows);
            snprintf(why, n, "'%s': tensor '%s' has shape %s), the model (from wte, wpe, h.0.mlp) needs %s", src,
                     t->name, got, need);
            rc = -1;
            break;
        }
        size_t count = (size_t)rows * (size_t)(pt->ndim == 2 ? pt->shape[1] : 1);
        if (read_elems(f, &sf, t, 0, count, buf + pt->offset)) {
            snprintf(why, n, "'%s': cannot read tensor '%s' (truncated?)", src, t->name);
            rc = -1;
        }
    }
    if (f) fclose(f);
    if (!rc) {
        hid_t h = h5_create(out);
        weights_write_shape(h, &m);
        h5_attr_i64(h, "step", 0);
        h5_attr_str(h, "deck", "");
        h5_attr_str(h, "layout", "GPT-2 names; linear weights (in, out) as HF Conv1D; wte tied to the LM head");
        h5_attr_str(h, "imported_from", src);
        weights_write_group(&m, h, "params", buf);
        h5_close(h);
        printf("import: %s (%d tensors, L=%d C=%d NH=%d V=%d T=%d) -> %s\n", src, sf.n, m.s.L, m.s.C, m.s.NH, m.s.V,
               m.s.maxT, out);
    }
    free(buf);
    model_free(&m);
    st_free(&sf);
    return rc;
}

int st_import_main(int argc, char **argv) {
    int heads = 0;
    const char *pos[2];
    int np = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--heads") == 0 && i + 1 < argc) {
            char *end;
            long h = strtol(argv[++i], &end, 10);
            if (*end || h < 1 || h > 65536) { fprintf(stderr, "error: --heads wants an integer in [1, 65536]\n"); return 2; }
            heads = (int)h;
        } else if (np < 2 && argv[i][0] != '-') {
            pos[np++] = argv[i];
        } else {
            np = 3;
        }
    }
    if (np != 2) {
        fprintf(stderr, "usage: partita import FILE.safetensors OUT.h5 [--heads N]\n");
        return 2;
    }
    char why[2048];
    h5_quiet();
    if (import_file(pos[0], pos[1], heads, why, sizeof why)) {
        fprintf(stderr, "error: %s\n  hint: import reads Hugging Face GPT-2 safetensors files (F32, F16 or BF16)\n", why);
        return 1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// Writing

static int put(char **h, size_t *len, size_t *cap, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int put(char **h, size_t *len, size_t *cap, const char *fmt, ...) {
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int k = vsnprintf(*h + *len, *cap - *len, fmt, ap);
        va_end(ap);
        if (k < 0) return -1;
        if (*len + (size_t)k < *cap) { *len += (size_t)k; return 0; }
        char *g = realloc(*h, *cap * 2);
        if (!g) return -1;
        *h = g;
        *cap *= 2;
    }
}

int st_write(const char *path, const Model *m, const float *buf, const char *config_path, char *why, size_t n) {
    size_t len = 0, cap = 1 << 16;
    char *h = malloc(cap);
    if (!h) { snprintf(why, n, "out of memory"); return -1; }
    uint64_t at = 0;
    int bad = put(&h, &len, &cap, "{\"__metadata__\":{\"format\":\"pt\",\"producer\":\"partita\"}");
    for (int i = 0; i < m->ntensors && !bad; i++) {
        const ParamTensor *pt = &m->tensors[i];
        uint64_t rows = i == 0 ? (uint64_t)m->s.V : (uint64_t)pt->shape[0];
        uint64_t bytes = 4 * rows * (uint64_t)(pt->ndim == 2 ? pt->shape[1] : 1);
        if (pt->ndim == 2)
            bad = put(&h, &len, &cap, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%llu,%d],\"data_offsets\":[%llu,%llu]}", pt->name,
                      (unsigned long long)rows, pt->shape[1], (unsigned long long)at, (unsigned long long)(at + bytes));
        else
            bad = put(&h, &len, &cap, ",\"%s\":{\"dtype\":\"F32\",\"shape\":[%llu],\"data_offsets\":[%llu,%llu]}", pt->name,
                      (unsigned long long)rows, (unsigned long long)at, (unsigned long long)(at + bytes));
        at += bytes;
    }
    bad = bad || put(&h, &len, &cap, "}");
    while (!bad && len % 8) bad = put(&h, &len, &cap, " ");   // the data starts 8-aligned
    FILE *f = bad ? NULL : fopen(path, "wb");
    if (!f) {
        snprintf(why, n, bad ? "out of memory" : "cannot write '%s': %s", path, strerror(errno));
        free(h);
        return -1;
    }
    unsigned char len8[8];
    for (int k = 0; k < 8; k++) len8[k] = (unsigned char)((uint64_t)len >> (8 * k));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(h, 1, len, f) == len;
    for (int i = 0; i < m->ntensors && ok; i++) {   // little-endian fp32 (the host's order on x86-64 and arm64)
        const ParamTensor *pt = &m->tensors[i];
        size_t count = (size_t)(i == 0 ? m->s.V : pt->shape[0]) * (size_t)(pt->ndim == 2 ? pt->shape[1] : 1);
        ok = fwrite(buf + pt->offset, sizeof(float), count, f) == count;
    }
    int cerr = fclose(f);
    free(h);
    if (!ok || cerr) { snprintf(why, n, "cannot write '%s': %s", path, strerror(errno)); return -1; }
    if (!config_path) return 0;
    f = fopen(config_path, "w");
    if (!f) { snprintf(why, n, "cannot write '%s': %s", config_path, strerror(errno)); return -1; }
    fprintf(f, "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n  \"vocab_size\": %d,\n"
               "  \"n_positions\": %d,\n  \"n_ctx\": %d,\n  \"n_embd\": %d,\n  \"n_layer\": %d,\n  \"n_head\": %d,\n"
               "  \"n_inner\": %d,\n  \"activation_function\": \"gelu_new\",\n  \"layer_norm_epsilon\": 1e-05,\n"
               "  \"resid_pdrop\": 0.0,\n  \"embd_pdrop\": 0.0,\n  \"attn_pdrop\": 0.0,\n  \"tie_word_embeddings\": true,\n"
               "  \"bos_token_id\": %d,\n  \"eos_token_id\": %d\n}\n",
            m->s.V, m->s.maxT, m->s.maxT, m->s.C, m->s.L, m->s.NH, m->s.H, m->s.V - 1, m->s.V - 1);
    if (fclose(f) != 0) { snprintf(why, n, "cannot write '%s': %s", config_path, strerror(errno)); return -1; }
    return 0;
}
