// data.c: HDF5 token files and the deterministic row loader.
#include "data.h"
#include "h5io.h"
#include "log.h"
#include "rng.h"
#include "deck.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// "a float32 dataset", "a signed 8-bit integer dataset", ...
static void describe_type(hid_t t, char *buf, size_t n) {
    H5T_class_t c = H5Tget_class(t);
    size_t bits = 8 * H5Tget_size(t);
    if (c == H5T_INTEGER)
        snprintf(buf, n, "%s %zu-bit integers", H5Tget_sign(t) == H5T_SGN_NONE ? "unsigned" : "signed", bits);
    else if (c == H5T_FLOAT) snprintf(buf, n, "%zu-bit floats", bits);
    else if (c == H5T_STRING) snprintf(buf, n, "strings");
    else snprintf(buf, n, "values of HDF5 type class %d", (int)c);
}

// One integer attribute of /tokens in [lo, hi], or fatal naming it.
static int64_t token_attr(const TokenFile *f, const char *name, int64_t lo, int64_t hi) {
    int64_t v = 0;
    int rc = h5_read_attr_i64(f->dset, name, &v);
    if (rc != H5A_OK) {
        char what[128];
        h5_attr_describe(f->dset, name, what, sizeof what);
        FATAL_ALL("remake the file with `partita prep`", "'%s': the attribute %s of /tokens is %s, not one integer",
                  f->path, name, what);
    }
    if (v < lo || v > hi)
        FATAL_ALL("remake the file with `partita prep`", "'%s': the attribute %s = %lld of /tokens is outside [%lld, %lld]",
                  f->path, name, (long long)v, (long long)lo, (long long)hi);
    return v;
}

void tokenfile_open(TokenFile *f, const char *path) {
    const char *remake = "token files are made by `partita prep OUT.h5 TEXT...`: /tokens is a 1-D dataset of "
                         "unsigned 16- or 32-bit integers";
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    f->file = h5_open_read(path);
    htri_t there;
    H5E_BEGIN_TRY { there = H5Lexists(f->file, "tokens", H5P_DEFAULT); } H5E_END_TRY;
    if (there > 0) H5E_BEGIN_TRY { f->dset = H5Dopen2(f->file, "tokens", H5P_DEFAULT); } H5E_END_TRY;
    if (there <= 0 || f->dset < 0) FATAL_ALL(remake, "'%s' has no /tokens dataset", path);
    // The type first: a float or signed file would be converted without a word.
    hid_t t = H5Dget_type(f->dset);
    H5_CHECK(t);
    size_t size = H5Tget_size(t);
    if (H5Tget_class(t) != H5T_INTEGER || H5Tget_sign(t) != H5T_SGN_NONE || (size != 2 && size != 4)) {
        char what[96];
        describe_type(t, what, sizeof what);
        FATAL_ALL(remake, "'%s': /tokens holds %s", path, what);
    }
    H5_CHECK(H5Tclose(t));
    hid_t sp = H5Dget_space(f->dset);
    H5_CHECK(sp);
    int nd = H5Sget_simple_extent_ndims(sp);
    if (nd != 1) FATAL_ALL(remake, "'%s': /tokens has %d dimensions, not 1", path, nd);
    hsize_t n = 0;
    H5_CHECK(H5Sget_simple_extent_dims(sp, &n, NULL));
    H5_CHECK(H5Sclose(sp));
    f->ntok = n;
    // A token is below vocab_size, which a uint16 file cannot exceed 2^16 for.
    f->vocab_size = token_attr(f, "vocab_size", 1, size == 2 ? (int64_t)1 << 16 : (int64_t)1 << 32);
    f->eot = token_attr(f, "eot", 0, f->vocab_size - 1);
    if (h5_read_attr_str(f->dset, "tokenizer", f->tokenizer, sizeof f->tokenizer) != H5A_OK)
        snprintf(f->tokenizer, sizeof f->tokenizer, "unknown");
}

void tokenfile_close(TokenFile *f) {
    if (f->dset > 0) H5_CHECK(H5Dclose(f->dset));
    if (f->file > 0) H5_CHECK(H5Fclose(f->file));
    f->dset = f->file = 0;
}

void loader_create(Loader *ld, const TokenFile *f, uint64_t begin, uint64_t end, int B, int T,
                   int order, uint64_t seed, int64_t vocab) {
    memset(ld, 0, sizeof *ld);
    ld->f = f;
    ld->begin = begin;
    ld->rows = (end - begin) / (uint64_t)(T + 1);
    ld->B = B;
    ld->T = T;
    ld->order = order;
    ld->seed = seed;
    ld->vocab = vocab;
    if (ld->rows == 0)
        FATAL_ALL("use more text, a shorter train.seq_len, or a smaller data.val_fraction",
              "'%s': tokens %llu..%llu hold no row of seq_len+1 = %d tokens", f->path,
              (unsigned long long)begin, (unsigned long long)end, T + 1);
    ld->row = xmalloc((size_t)(T + 1) * sizeof(uint32_t), "loader row");
    ld->slice_len = T;
    ld->perm_epoch = -1;
    if (order == ORDER_SHUFFLED) {
        SYS_CHECK(ld->rows < UINT32_MAX, "too many rows to shuffle: %llu", (unsigned long long)ld->rows);
        ld->perm = xmalloc(ld->rows * sizeof(uint32_t), "shuffle permutation");
    }
}

void loader_set_slice(Loader *ld, int off, int len) {
    SYS_CHECK(off >= 0 && len >= 1 && off + len <= ld->T, "loader slice %d+%d outside a row of %d", off, len, ld->T);
    ld->slice_off = off;
    ld->slice_len = len;
    for (int s = 0; ld->mix && s < ld->mix->n; s++) loader_set_slice(&ld->mix->src[s], off, len);
}

void loader_free(Loader *ld) {
    free(ld->perm);
    free(ld->row);
    ld->perm = ld->row = NULL;
    if (ld->mix) {
        DataMix *m = ld->mix;
        for (int s = 0; s < m->n; s++) loader_free(&m->src[s]);
        free(m->src);
        if (ld->mix_owns_files)
            for (int s = 0; s < m->n; s++) tokenfile_close(&m->files[s]);
        free(m);
        ld->mix = NULL;
    }
}

// Fisher-Yates from a stream named by (seed, epoch): the same for every rank.
static void shuffle_epoch(Loader *ld, int64_t epoch) {
    Rng r = rng_stream(ld->seed, RNG_DATA, (uint64_t)epoch);
    for (uint64_t i = 0; i < ld->rows; i++) ld->perm[i] = (uint32_t)i;
    for (uint64_t i = ld->rows - 1; i > 0; i--) {
        uint64_t j = rng_below(&r, i + 1);
        uint32_t t = ld->perm[i];
        ld->perm[i] = ld->perm[j];
        ld->perm[j] = t;
    }
    ld->perm_epoch = epoch;
}

static uint64_t physical_row(Loader *ld, uint64_t g) {
    uint64_t r = g % ld->rows;
    if (ld->order != ORDER_SHUFFLED) return r;
    int64_t epoch = (int64_t)(g / ld->rows);
    if (epoch != ld->perm_epoch) shuffle_epoch(ld, epoch);
    return ld->perm[r];
}

static void read_row(Loader *ld, uint64_t row) {
    hsize_t start = ld->begin + row * (uint64_t)(ld->T + 1) + (uint64_t)ld->slice_off;
    hsize_t count = (hsize_t)ld->slice_len + 1;
    hid_t fs = H5Dget_space(ld->f->dset);
    H5_CHECK(fs);
    H5_CHECK(H5Sselect_hyperslab(fs, H5S_SELECT_SET, &start, NULL, &count, NULL));
    hid_t ms = H5Screate_simple(1, &count, NULL);
    H5_CHECK(ms);
    errno = 0;
    herr_t rc;
    H5E_BEGIN_TRY { rc = H5Dread(ld->f->dset, H5T_NATIVE_UINT32, ms, fs, H5P_DEFAULT, ld->row); } H5E_END_TRY;
    if (rc < 0) {
        char why[600];
        h5_reason(errno, why, sizeof why);
        FATAL("the token file is truncated or damaged: remake it with `partita prep`",
              "'%s': cannot read tokens %llu..%llu: %s", ld->f->path, (unsigned long long)start,
              (unsigned long long)(start + count), why);
    }
    H5_CHECK(H5Sclose(ms));
    H5_CHECK(H5Sclose(fs));
    // Only this rank reads these rows: the error is its own to report (FATAL,
    // not FATAL_ALL, which would leave it to a rank 0 that never sees it).
    for (int t = 0; t <= ld->slice_len; t++)
        if ((int64_t)ld->row[t] >= ld->vocab)
            FATAL("every token must be below model.vocab: remake the file with `partita prep`, or raise model.vocab",
                  "'%s': token %u at position %llu is outside the model vocabulary (%lld)",
                  ld->f->path, ld->row[t], (unsigned long long)(start + (hsize_t)t), (long long)ld->vocab);
}

// The loader and its row that serve row g of the stream (a source's, when mixing).
static Loader *source_of(Loader *ld, uint64_t g, uint64_t *row) {
    if (!ld->mix) {
        *row = physical_row(ld, g);
        return ld;
    }
    const DataMix *m = ld->mix;
    uint64_t o = g % DATA_MIX_PERIOD;
    int s = m->sched[o];
    uint64_t k = g / DATA_MIX_PERIOD * m->count[s] + m->nth[o];
    *row = physical_row(&m->src[s], k);
    return &m->src[s];
}

void loader_batch(Loader *ld, uint64_t g0, int32_t *inputs, int32_t *targets) {
    const int T = ld->slice_len;
    for (int b = 0; b < ld->B; b++) {
        uint64_t row;
        Loader *from = source_of(ld, g0 + (uint64_t)b, &row);
        read_row(from, row);
        if (from != ld) memcpy(ld->row, from->row, sizeof(uint32_t) * (size_t)(T + 1));
        for (int t = 0; t < T; t++) {
            inputs[(size_t)b * T + t] = (int32_t)ld->row[t];
            targets[(size_t)b * T + t] = (int32_t)ld->row[t + 1];
        }
    }
}

// ---------------------------------------------------------------------------
// Data mixing

int data_split_list(const char *list, char buf[][512], int max) {
    int n = 0;
    const char *p = list;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        if (!len || len >= 512 || n == max) return -1;
        memcpy(buf[n], p, len);
        buf[n++][len] = 0;
        if (!e) break;
        p = e + 1;
    }
    return n;
}

// Weights: "" = equal; else n numbers >= 0, finite, not all 0.
static int parse_weights(const char *text, int n, double *w, char *err, size_t en) {
    char items[DATA_MAX_SOURCES][512];
    if (!text[0]) {
        for (int s = 0; s < n; s++) w[s] = 1.0 / n;
        return 0;
    }
    int k = data_split_list(text, items, DATA_MAX_SOURCES);
    if (k != n) {
        snprintf(err, en, "[data] weights = \"%s\" has %d entries for %d train files; hint: one weight per file "
                 "of [data] train, in the same order, e.g. weights = 0.7, 0.3", text, k < 0 ? 0 : k, n);
        return -1;
    }
    double sum = 0;
    for (int s = 0; s < n; s++) {
        char *end;
        w[s] = strtod(items[s], &end);
        if (*end || !isfinite(w[s]) || w[s] < 0 || w[s] > 1e9) {
            snprintf(err, en, "[data] weights: '%s' is not a number in [0, 1e9]; hint: e.g. weights = 0.7, 0.3",
                     items[s]);
            return -1;
        }
        sum += w[s];
    }
    if (!(sum > 0)) {
        snprintf(err, en, "[data] weights are all 0; hint: give at least one file a positive weight");
        return -1;
    }
    for (int s = 0; s < n; s++) w[s] /= sum;
    return 0;
}

// Rows per period by largest remainder (at least one for a positive weight),
// then the order within the period by smooth weighted round-robin.
static void build_schedule(DataMix *m) {
    const int P = DATA_MIX_PERIOD, n = m->n;
    uint32_t total = 0;
    double rem[DATA_MAX_SOURCES];
    for (int s = 0; s < n; s++) {
        double x = m->weight[s] * P;
        m->count[s] = (uint32_t)x;
        if (m->weight[s] > 0 && m->count[s] == 0) m->count[s] = 1;
        rem[s] = x - (double)m->count[s];
        total += m->count[s];
    }
    while (total < (uint32_t)P) {   // the largest remainders (lowest index on ties) get one more
        int best = -1;
        for (int s = 0; s < n; s++)
            if (m->weight[s] > 0 && (best < 0 || rem[s] > rem[best])) best = s;
        m->count[best]++;
        rem[best] -= 1.0;
        total++;
    }
    while (total > (uint32_t)P) {   // minimum-one rows pushed it over: take from the largest
        int best = 0;
        for (int s = 1; s < n; s++) if (m->count[s] > m->count[best]) best = s;
        m->count[best]--;
        total--;
    }
    int64_t cur[DATA_MAX_SOURCES] = {0};
    uint32_t seen[DATA_MAX_SOURCES] = {0};
    for (int o = 0; o < P; o++) {
        int best = -1;
        for (int s = 0; s < n; s++) {
            cur[s] += m->count[s];
            if (m->count[s] && (best < 0 || cur[s] > cur[best])) best = s;
        }
        cur[best] -= P;
        m->sched[o] = (uint8_t)best;
        m->nth[o] = seen[best]++;
    }
}

static DataMix *mix_new(int n, const double *w) {
    DataMix *m = xcalloc(sizeof *m, "data mix");
    m->n = n;
    m->src = xcalloc(sizeof(Loader) * (size_t)n, "data mix loaders");
    for (int s = 0; s < n; s++) m->weight[s] = w[s];
    build_schedule(m);
    return m;
}

int data_open_mix(Loader *train, Loader *val, const char *list, const char *weights, double val_fraction, int B,
                  int T, int order, uint64_t seed, int64_t vocab, char *err, size_t en) {
    char paths[DATA_MAX_SOURCES][512];
    int n = data_split_list(list, paths, DATA_MAX_SOURCES);
    if (n < 1) {
        snprintf(err, en, "[data] train = \"%s\": a list of 1 to %d token files, comma-separated; hint: e.g. train = "
                 "data/a.h5, data/b.h5", list, DATA_MAX_SOURCES);
        return -1;
    }
    double w[DATA_MAX_SOURCES];
    if (parse_weights(weights, n, w, err, en) != 0) return -1;
    DataMix *tm = mix_new(n, w), *vm = val && val_fraction > 0 ? mix_new(n, w) : NULL;
    for (int s = 0; s < n; s++) {
        tokenfile_open(&tm->files[s], paths[s]);
        uint64_t ntok = tm->files[s].ntok, te = (uint64_t)((double)ntok * (1.0 - val_fraction));
        // Each source its own shuffle: seed and source index through one stream.
        uint64_t sseed = seed + 0x9E3779B97F4A7C15ull * (uint64_t)s;
        loader_create(&tm->src[s], &tm->files[s], 0, te, B, T, order, sseed, vocab);
        if (vm) loader_create(&vm->src[s], &tm->files[s], te, ntok, B, T, ORDER_SEQUENTIAL, 0, vocab);
    }
    memset(train, 0, sizeof *train);
    train->f = &tm->files[0];
    train->B = B;
    train->T = T;
    train->slice_len = T;
    train->vocab = vocab;
    train->row = xmalloc((size_t)(T + 1) * sizeof(uint32_t), "loader row");
    train->mix = tm;
    train->mix_owns_files = 1;
    for (int s = 0; s < n; s++) train->rows += tm->src[s].rows;
    if (val) {
        memset(val, 0, sizeof *val);
        if (vm) {
            val->f = &tm->files[0];
            val->B = B;
            val->T = T;
            val->slice_len = T;
            val->vocab = vocab;
            val->row = xmalloc((size_t)(T + 1) * sizeof(uint32_t), "loader row");
            val->mix = vm;
            for (int s = 0; s < n; s++) val->rows += vm->src[s].rows;
        }
    }
    return 0;
}
