// stage_format.c: the staged weight file's header and layout (stage.h). Pure
// C, no MPI or HDF5, so that the fuzz harness links it alone.
#include "stage.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The largest shape a file may declare (weights.h's WEIGHTS_MAX_*), and the
// most segments (bounds the header's allocation).
enum { MAX_LAYERS = 1 << 16, MAX_EMBD = 1 << 20, MAX_VOCAB = 1 << 30, MAX_POSITIONS = 1 << 24,
       MAX_HIDDEN = 1 << 24, MAX_SEGS = 1 << 22 };

static uint64_t rd64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void wr32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

// Checked arithmetic: a product or sum past 2^62 marks *bad.
static uint64_t mul(uint64_t a, uint64_t b, int *bad) {
    if (a && b > ((uint64_t)1 << 62) / a) { *bad = 1; return 0; }
    return a * b;
}
static uint64_t add(uint64_t a, uint64_t b, int *bad) {
    if (a > ((uint64_t)1 << 62) || b > ((uint64_t)1 << 62) - a) { *bad = 1; return 0; }
    return a + b;
}
static uint64_t round_up(uint64_t x, uint64_t a, int *bad) { return mul((add(x, a - 1, bad)) / a, a, bad); }

static size_t elem_bytes(uint32_t dtype) { return dtype == STAGE_F32 ? 4 : dtype == STAGE_BF16 ? 2 : 1; }

int stage_layer_layout(const StageHeader *h, StageLayer *ly, char *why, size_t n) {
    memset(ly, 0, sizeof *ly);
    const int Ct = h->C / h->shards, Ht = h->H / h->shards;
    const int rows[STAGE_NMAT] = {3 * Ct, h->C, Ht, h->C}, cols[STAGE_NMAT] = {h->C, Ct, h->C, Ht};
    int bad = 0;
    uint64_t off = 0;
    for (int i = 0; i < STAGE_NMAT; i++) {
        ly->rows[i] = rows[i];
        ly->cols[i] = cols[i];
        ly->mat[i] = off;
        off = round_up(add(off, mul(mul((uint64_t)rows[i], (uint64_t)cols[i], &bad), elem_bytes(h->dtype), &bad), &bad),
                       STAGE_PIECE_ALIGN, &bad);
        if (h->dtype == STAGE_INT8) {
            ly->scale[i] = off;
            off = round_up(add(off, mul((uint64_t)rows[i], 4, &bad), &bad), STAGE_PIECE_ALIGN, &bad);
        }
    }
    ly->bytes = off;
    if (bad) snprintf(why, n, "a layer of this shape overflows 64-bit sizes");
    return bad ? -1 : 0;
}

int stage_resident_floats(const StageHeader *h, uint64_t *floats, char *why, size_t n) {
    int bad = 0;
    const uint64_t C = (uint64_t)h->C;
    uint64_t f = add(mul((uint64_t)h->Vp, C, &bad), mul((uint64_t)h->maxT, C, &bad), &bad);
    f = add(f, mul((uint64_t)h->L, add(9 * C, (uint64_t)h->H, &bad), &bad), &bad);
    *floats = add(f, 2 * C, &bad);
    if (bad || *floats > ((uint64_t)1 << 60)) {
        snprintf(why, n, "the resident tensors of this shape overflow 64-bit sizes");
        return -1;
    }
    return 0;
}

uint64_t stage_header_size(uint32_t nseg) { return STAGE_FIXED_BYTES + (uint64_t)STAGE_SEG_BYTES * nseg; }

int stage_plan(StageHeader *h, char *why, size_t n) {
    StageLayer ly;
    uint64_t rf;
    if (stage_layer_layout(h, &ly, why, n) != 0 || stage_resident_floats(h, &rf, why, n) != 0) return -1;
    int bad = 0;
    const uint64_t a = h->align;
    h->nseg = (uint32_t)(1 + (uint64_t)h->L * (uint64_t)h->shards);
    h->header_bytes = round_up(stage_header_size(h->nseg), a, &bad);
    uint64_t off = h->header_bytes;
    for (uint32_t s = 0; s < h->nseg && !bad; s++) {
        h->seg[s].offset = off;
        h->seg[s].bytes = s == 0 ? mul(rf, 4, &bad) : ly.bytes;
        off = round_up(add(off, h->seg[s].bytes, &bad), a, &bad);
    }
    h->file_size = off;
    if (bad) snprintf(why, n, "the file of this shape overflows 64-bit sizes");
    return bad ? -1 : 0;
}

void stage_header_encode(const StageHeader *h, uint8_t *buf) {
    memset(buf, 0, h->header_bytes);
    memcpy(buf, STAGE_MAGIC, 8);
    wr32(buf + 8, h->version);
    wr32(buf + 12, h->dtype);
    const int shape[7] = {h->L, h->C, h->NH, h->V, h->Vp, h->maxT, h->H};
    for (int i = 0; i < 7; i++) wr32(buf + 16 + 4 * i, (uint32_t)shape[i]);
    wr32(buf + 44, (uint32_t)h->shards);
    wr32(buf + 48, h->align);
    wr32(buf + 52, h->nseg);
    wr64(buf + 56, h->file_size);
    wr64(buf + 64, h->header_bytes);
    for (uint32_t s = 0; s < h->nseg; s++) {
        uint8_t *p = buf + STAGE_FIXED_BYTES + (size_t)STAGE_SEG_BYTES * s;
        wr64(p, h->seg[s].offset);
        wr64(p + 8, h->seg[s].bytes);
        wr64(p + 16, h->seg[s].checksum);
    }
    wr64(buf + 120, stage_checksum(buf, stage_header_size(h->nseg)));   // computed with the field zero
}

void stage_header_free(StageHeader *h) {
    free(h->seg);
    h->seg = NULL;
}

// The fixed fields: magic, version, dtype, shape ranges, align, nseg.
static int parse_fixed(StageHeader *h, const uint8_t *b, char *why, size_t n) {
    if (memcmp(b, STAGE_MAGIC, 8) != 0) {
        snprintf(why, n, "not a staged weight file (its first bytes are not \"%s\")", STAGE_MAGIC);
        return -1;
    }
    h->version = rd32(b + 8);
    h->dtype = rd32(b + 12);
    if (h->version != STAGE_VERSION) {
        snprintf(why, n, "format version %u; this build reads version %d", h->version, STAGE_VERSION);
        return -1;
    }
    if (h->dtype > STAGE_INT8) {
        snprintf(why, n, "dtype %u is none of 0 (fp32), 1 (bf16), 2 (int8)", h->dtype);
        return -1;
    }
    static const char *names[7] = {"n_layer", "n_embd", "n_head", "vocab_size", "padded_vocab_size", "n_positions", "mlp_hidden"};
    static const uint32_t hi[7] = {MAX_LAYERS, MAX_EMBD, MAX_EMBD, MAX_VOCAB, MAX_VOCAB, MAX_POSITIONS, MAX_HIDDEN};
    int *dst[7] = {&h->L, &h->C, &h->NH, &h->V, &h->Vp, &h->maxT, &h->H};
    for (int i = 0; i < 7; i++) {
        uint32_t v = rd32(b + 16 + 4 * i);
        if (v < 1 || v > hi[i]) {
            snprintf(why, n, "%s = %u is outside [1, %u]", names[i], v, hi[i]);
            return -1;
        }
        *dst[i] = (int)v;
    }
    uint32_t shards = rd32(b + 44);
    h->align = rd32(b + 48);
    h->nseg = rd32(b + 52);
    if (h->C % h->NH != 0) snprintf(why, n, "n_head = %d does not divide n_embd = %d", h->NH, h->C);
    else if (h->V > h->Vp) snprintf(why, n, "vocab_size = %d exceeds padded_vocab_size = %d", h->V, h->Vp);
    else if (h->H % h->C != 0) snprintf(why, n, "n_embd = %d does not divide mlp_hidden = %d", h->C, h->H);
    else if (shards < 1 || shards > STAGE_MAX_SHARDS) snprintf(why, n, "shards = %u is outside [1, %d]", shards, STAGE_MAX_SHARDS);
    else if (h->NH % (int)shards != 0 || h->H % (int)shards != 0)
        snprintf(why, n, "shards = %u does not divide n_head = %d and mlp_hidden = %d", shards, h->NH, h->H);
    else if (h->align != STAGE_ALIGN) snprintf(why, n, "align = %u; this build writes and reads %d", h->align, STAGE_ALIGN);
    else if ((uint64_t)h->nseg != 1 + (uint64_t)h->L * shards || h->nseg > MAX_SEGS)
        snprintf(why, n, "%u segments; n_layer = %d and shards = %u make %llu (at most %d)", h->nseg, h->L, shards,
                 (unsigned long long)(1 + (uint64_t)h->L * shards), MAX_SEGS);
    else {
        h->shards = (int)shards;
        return 0;
    }
    return -1;
}

int stage_header_parse(StageHeader *h, const uint8_t *b, size_t len, uint64_t file_size, uint64_t *need,
                       char *why, size_t n) {
    memset(h, 0, sizeof *h);
    *need = 0;
    if (len < STAGE_FIXED_BYTES) {
        if (file_size < STAGE_FIXED_BYTES) {
            snprintf(why, n, "truncated: %llu bytes, shorter than the %d-byte header", (unsigned long long)file_size,
                     STAGE_FIXED_BYTES);
            return -1;
        }
        *need = STAGE_FIXED_BYTES;
        snprintf(why, n, "the header needs %d bytes", STAGE_FIXED_BYTES);
        return -1;
    }
    if (memcmp(b, STAGE_MAGIC, 8) != 0) {
        snprintf(why, n, "not a staged weight file (its first bytes are not \"%s\")", STAGE_MAGIC);
        return -1;
    }
    const uint32_t nseg = rd32(b + 52);
    if (nseg < 2 || nseg > MAX_SEGS) {
        snprintf(why, n, "%u segments, outside [2, %d]", nseg, MAX_SEGS);
        return -1;
    }
    const uint64_t hs = stage_header_size(nseg);
    if (len < hs) {
        if (file_size < hs) {
            snprintf(why, n, "truncated: %llu bytes, shorter than its %llu-byte header", (unsigned long long)file_size,
                     (unsigned long long)hs);
            return -1;
        }
        *need = hs;
        snprintf(why, n, "the header needs %llu bytes", (unsigned long long)hs);
        return -1;
    }
    uint8_t *copy = malloc(hs);
    if (!copy) {
        snprintf(why, n, "no memory for a %llu-byte header", (unsigned long long)hs);
        return -1;
    }
    memcpy(copy, b, hs);
    memset(copy + 120, 0, 8);
    uint64_t stored = rd64(b + 120), sum = stage_checksum(copy, hs);
    free(copy);
    if (stored != sum) {
        snprintf(why, n, "the header fails its checksum (stored %016llx, computed %016llx): the file was altered",
                 (unsigned long long)stored, (unsigned long long)sum);
        return -1;
    }
    if (parse_fixed(h, b, why, n) != 0) return -1;
    // The layout the shape implies, against the table.
    StageHeader want = *h;
    want.seg = calloc(h->nseg, sizeof(StageSeg));
    h->seg = calloc(h->nseg, sizeof(StageSeg));
    if (!want.seg || !h->seg) {
        free(want.seg);
        stage_header_free(h);
        snprintf(why, n, "no memory for %u segments", h->nseg);
        return -1;
    }
    int rc = stage_plan(&want, why, n);
    h->file_size = rd64(b + 56);
    h->header_bytes = rd64(b + 64);
    for (uint32_t s = 0; s < h->nseg && rc == 0; s++) {
        const uint8_t *p = b + STAGE_FIXED_BYTES + (size_t)STAGE_SEG_BYTES * s;
        h->seg[s] = (StageSeg){rd64(p), rd64(p + 8), rd64(p + 16)};
        if (h->seg[s].offset != want.seg[s].offset || h->seg[s].bytes != want.seg[s].bytes) {
            snprintf(why, n, "segment %u at %llu (%llu bytes), where the shape puts it at %llu (%llu bytes)", s,
                     (unsigned long long)h->seg[s].offset, (unsigned long long)h->seg[s].bytes,
                     (unsigned long long)want.seg[s].offset, (unsigned long long)want.seg[s].bytes);
            rc = -1;
        }
    }
    if (rc == 0 && (h->header_bytes != want.header_bytes || h->file_size != want.file_size)) {
        snprintf(why, n, "header of %llu bytes and file of %llu, where the shape makes %llu and %llu",
                 (unsigned long long)h->header_bytes, (unsigned long long)h->file_size,
                 (unsigned long long)want.header_bytes, (unsigned long long)want.file_size);
        rc = -1;
    }
    if (rc == 0 && file_size != h->file_size) {
        snprintf(why, n, "%s: %llu bytes, the header says %llu", file_size < h->file_size ? "truncated" : "too long",
                 (unsigned long long)file_size, (unsigned long long)h->file_size);
        rc = -1;
    }
    free(want.seg);
    if (rc != 0) stage_header_free(h);
    return rc;
}

// ---------------------------------------------------------------------------

static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static const uint64_t K1 = 0x9e3779b185ebca87ull, K2 = 0xc2b2ae3d27d4eb4full;
static uint64_t lane(uint64_t acc, uint64_t w) { return rotl(acc + w * K2, 31) * K1; }

uint64_t stage_checksum(const void *p, size_t bytes) {
    const uint8_t *b = p;
    uint64_t a[4] = {K1, K2, ~K1, ~K2};
    size_t i = 0;
    for (; i + 32 <= bytes; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, b + i + 8 * k, 8);
            a[k] = lane(a[k], w);
        }
    uint64_t h = rotl(a[0], 1) + rotl(a[1], 7) + rotl(a[2], 12) + rotl(a[3], 18) + (uint64_t)bytes;
    for (; i < bytes; i++) h = lane(h, b[i]);
    h ^= h >> 33;
    h *= K2;
    h ^= h >> 29;
    return h;
}

float stage_quantize_row(const float *x, int cols, int8_t *q) {
    float mx = 0.0f;
    for (int i = 0; i < cols; i++) mx = fabsf(x[i]) > mx ? fabsf(x[i]) : mx;
    float sc = mx > 0 ? mx / 127.0f : 1.0f;
    for (int i = 0; i < cols; i++) q[i] = (int8_t)lrintf(x[i] / sc);
    return sc;
}
