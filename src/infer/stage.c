// stage.c: `partita stage`: writes the staged weight file (stage.h) from a
// weights file or checkpoint (read a layer at a time), or random weights drawn
// by a counter-based generator (a model larger than memory), a layer at a time
// either way: each shard's segment filled by all threads while the previous one
// is written (O_DIRECT, through the I/O engine), the resident segment built as
// the layers pass and written last, then the header.
#include "stage.h"
#include "aio.h"
#include "deck.h"
#include "engine.h"
#include "log.h"
#include "model.h"
#include "sysutil.h"
#include "weights.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct Stager {
    const char *out;
    char tmp[DECK_STR + 16];
    AioFile f;                // the output, O_DIRECT where the file system takes it
    Aio aio;
    Model m;                  // the whole model's (training) table
    StageHeader h;
    StageLayer ly;
    const char *from;         // a weights file or checkpoint, read a layer at a time; NULL: random
    float *layer;             // --from: one layer's tensors as the file holds them (Conv1D (in, out))
    uint64_t seed;
    double std;
    float *resident;          // segment 0, built as the layers pass
    size_t *res_at;           // (ntensors) float offset of each non-matrix tensor in it
    uint8_t *seg[2];          // two layer segments: one filled while the other is written
    uint64_t ticket[2];
    double gen_s, wait_s;     // filling segments, waiting for writes
} Stager;

static void write_wait(Stager *s, uint64_t *ticket) {
    if (!*ticket) return;
    char why[700];
    double t0 = wall_seconds();
    if (aio_wait(&s->aio, *ticket, why, sizeof why) != 0)
        FATAL("check the disk has room for the staged file", "stage: %s", why);
    s->wait_s += wall_seconds() - t0;
    *ticket = 0;
}

int stage_matrix_of(int kind) {
    return kind == K_QKVW ? STAGE_QKV : kind == K_ATTPW ? STAGE_ATTP : kind == K_FCW ? STAGE_FC : kind == K_FCPW ? STAGE_FCP : -1;
}

static int is_matrix(const Stager *s, int t) { return stage_matrix_of(s->m.tensors[t].kind) >= 0; }

// Layer l's tensors: [*first, *end) of the table (consecutive, as the flat layout has them).
static void layer_range(const Model *m, int l, int *first, int *end) {
    *first = -1;
    *end = -1;
    for (int t = 0; t < m->ntensors; t++)
        if (m->tensors[t].layer == l) {
            if (*first < 0) *first = t;
            SYS_CHECK(*end < 0 || *end == t, "layer %d's tensors are not consecutive in the table", l);
            *end = t + 1;
        }
    SYS_CHECK(*first >= 0, "layer %d has no tensors", l);
}

// --random: a counter-based generator (a splitmix64 finalizer of the seed, the
// tensor and the element's index in the whole tensor), so any element is drawn
// alone, in any order, on any thread, and every --shards cut holds the same
// model. Normal-like values: the sum of four 16-bit uniforms, centred and
// scaled to unit variance (Irwin-Hall, within +-3.5 sd). Not the deck's
// training init (model_init_range): a staged random model is for benchmarks.
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static uint64_t tensor_key(const Stager *s, int t) { return mix64(s->seed * 0x9E3779B97F4A7C15ull + (uint64_t)t + 1); }
static inline float random_normal(uint64_t key, uint64_t e) {
    const uint64_t z = mix64(key + e * 0x9E3779B97F4A7C15ull);
    const double sum = (double)(z & 0xffff) + (double)(z >> 16 & 0xffff) + (double)(z >> 32 & 0xffff) + (double)(z >> 48);
    return (float)((sum - 131070.0) * (1.0 / 37837.23));   // mean 4 x 32767.5, sd 65536 / sqrt(3)
}
// A random tensor's std (0: all zero, -1: all one), as the deck's init has them.
static double random_std(const Stager *s, int t) {
    const char *name = s->m.tensors[t].name, *dot = strrchr(name, '.');
    if (dot && strcmp(dot, ".bias") == 0) return 0.0;
    if (strstr(name, "ln_")) return -1.0;
    return strstr(name, "c_proj.weight") ? s->std / sqrt(2.0 * s->m.s.L) : s->std;
}

// A non-matrix tensor into the resident segment: from the layer just read, the
// file, or the generator.
static void put_resident(Stager *s, int t, const float *src) {
    const ParamTensor *pt = &s->m.tensors[t];
    float *dst = s->resident + s->res_at[t];
    if (src) {
        memcpy(dst, src, pt->numel * sizeof(float));
        return;
    }
    if (s->from) {
        weights_read_tensors(&s->m, s->from, t, t + 1, dst);
        return;
    }
    const double sd = random_std(s, t);
    const uint64_t key = tensor_key(s, t);
    const size_t live = t == 0 ? (size_t)s->m.s.V * (size_t)s->m.s.C : pt->numel;   // wte rows past the vocabulary: 0
#pragma omp parallel for schedule(static)
    for (size_t e = 0; e < pt->numel; e++)
        dst[e] = sd == 0.0 || e >= live ? 0.0f : sd < 0.0 ? 1.0f : (float)sd * random_normal(key, e);
}

static void write_resident(Stager *s) {
    const StageSeg *sg = &s->h.seg[0];
    s->h.seg[0].checksum = stage_checksum(s->resident, sg->bytes);
    uint64_t t = aio_write(&s->aio, &s->f, s->resident, aio_align_up(sg->bytes, STAGE_ALIGN), sg->offset);
    write_wait(s, &t);
}

// Held output j of a column-split matrix of rank r (engine.c's src_col).
static int src_col(int j, int mat, int r, int Ct, int Ht, int C) {
    if (mat == STAGE_QKV) return (j / Ct) * C + r * Ct + j % Ct;
    return r * Ht + j;
}

enum { ROW_BLOCK = 16 };   // held rows a thread gathers at once (the whole matrix is read along its rows)

// Rank r's held (out, in) rows of matrix `mat` (tensor t) into segment buffer
// seg: from the whole Conv1D (in, out) G, or drawn. Blocks of rows in parallel.
static void put_matrix(Stager *s, int mat, int r, int t, const float *G, uint8_t *seg) {
    const int C = s->m.s.C, Ct = C / s->h.shards, Ht = s->m.s.H / s->h.shards;
    const int OC = s->ly.rows[mat], IC = s->ly.cols[mat];
    const int Cg = mat == STAGE_QKV ? 3 * C : mat == STAGE_FC ? s->m.s.H : C;   // whole (in, out) row length
    const int row0 = mat == STAGE_ATTP ? r * Ct : mat == STAGE_FCP ? r * Ht : 0;
    const int rowsplit = mat == STAGE_ATTP || mat == STAGE_FCP;
    const uint64_t key = tensor_key(s, t);
    const float sd = (float)random_std(s, t);
    uint8_t *dst = seg + s->ly.mat[mat];
    float *scales = (float *)(seg + s->ly.scale[mat]);
    const int nblocks = (OC + ROW_BLOCK - 1) / ROW_BLOCK;
#pragma omp parallel
    {
        float *rows = xmalloc(sizeof(float) * (size_t)ROW_BLOCK * (size_t)IC, "rows");
#pragma omp for schedule(dynamic, 4)
        for (int b = 0; b < nblocks; b++) {
            const int j0 = b * ROW_BLOCK, nj = OC - j0 < ROW_BLOCK ? OC - j0 : ROW_BLOCK;
            int col[ROW_BLOCK];
            for (int jj = 0; jj < nj; jj++) col[jj] = rowsplit ? j0 + jj : src_col(j0 + jj, mat, r, Ct, Ht, C);
            for (int i = 0; i < IC; i++) {
                const size_t base = (size_t)(row0 + i) * (size_t)Cg;
                for (int jj = 0; jj < nj; jj++)
                    rows[(size_t)jj * IC + i] = G ? G[base + (size_t)col[jj]] : sd * random_normal(key, base + (size_t)col[jj]);
            }
            for (int jj = 0; jj < nj; jj++) {
                const float *row = rows + (size_t)jj * IC;
                const size_t at = (size_t)(j0 + jj) * IC;
                if (s->h.dtype == STAGE_F32) {
                    memcpy(dst + 4 * at, row, 4 * (size_t)IC);
                } else if (s->h.dtype == STAGE_BF16) {
                    for (int i = 0; i < IC; i++) {
                        uint16_t v = engine_bf16(row[i]);
                        memcpy(dst + 2 * (at + (size_t)i), &v, 2);
                    }
                } else {
                    scales[j0 + jj] = stage_quantize_row(row, IC, (int8_t *)dst + at);
                }
            }
        }
        free(rows);
    }
}

// Layer by layer: its tensors read (--from) or drawn, its vectors into the
// resident segment, each shard's segment filled while the previous one is
// being written (two buffers, O_DIRECT writes through the I/O engine).
static void write_layers(Stager *s) {
    const int L = s->m.s.L;
    const int kinds[STAGE_NMAT] = {K_QKVW, K_ATTPW, K_FCW, K_FCPW};
    const size_t seg_len = aio_align_up(s->ly.bytes, STAGE_ALIGN);
    double t0 = wall_seconds();
    int cur = 0;
    for (int l = 0; l < L; l++) {
        int first, end;
        layer_range(&s->m, l, &first, &end);
        const float *base = NULL;
        if (s->from) {
            weights_read_tensors(&s->m, s->from, first, end, s->layer);
            base = s->layer;
        }
        for (int t = first; t < end; t++)
            if (!is_matrix(s, t))
                put_resident(s, t, base ? base + (s->m.tensors[t].offset - s->m.tensors[first].offset) : NULL);
        for (int r = 0; r < s->h.shards; r++) {
            write_wait(s, &s->ticket[cur]);
            double g0 = wall_seconds();
            uint8_t *seg = s->seg[cur];
            memset(seg, 0, seg_len);
            for (int k = 0; k < STAGE_NMAT; k++) {
                const int t = model_tensor(&s->m, l, kinds[k], -1);
                put_matrix(s, k, r, t, base ? base + (s->m.tensors[t].offset - s->m.tensors[first].offset) : NULL, seg);
            }
            StageSeg *sg = &s->h.seg[1 + (size_t)l * s->h.shards + r];
            sg->checksum = stage_checksum(seg, s->ly.bytes);
            s->gen_s += wall_seconds() - g0;
            s->ticket[cur] = aio_write(&s->aio, &s->f, seg, seg_len, sg->offset);
            cur ^= 1;
        }
        if (L >= 8 && (l + 1) % (L / 8) == 0)
            log_info("stage: layer %d of %d (%.0f s)\n", l + 1, L, wall_seconds() - t0);
    }
    write_wait(s, &s->ticket[0]);
    write_wait(s, &s->ticket[1]);
}

static int usage(void) {
    fprintf(stderr, "usage: partita stage DECK --out FILE [--from WEIGHTS.h5 | --random SEED] [--dtype fp32|bf16|int8]\n"
                    "                     [--shards N] [--set section.key=value]...\n"
                    "  writes the per-layer, aligned weight file that [generate] weights_from = host|nvme streams;\n"
                    "  --from defaults to [generate] weights, --dtype to [generate] weights_dtype, --shards to [parallel] tp\n");
    return 2;
}

static int parse_dtype(const char *v) {
    return strcmp(v, "fp32") == 0 ? STAGE_F32 : strcmp(v, "bf16") == 0 ? STAGE_BF16 : strcmp(v, "int8") == 0 ? STAGE_INT8 : -1;
}

int stage_main(int argc, char **argv) {
    const char *deck = NULL, *out = NULL, *from = NULL;
    char **sets = xmalloc(sizeof(char *) * (size_t)(argc + 1), "arguments");
    int nsets = 0, dtype = -2, shards = 0, random = 0;
    long long seed = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        char *end = NULL;
        if (strcmp(a, "--out") == 0 && v) out = argv[++i];
        else if (strcmp(a, "--from") == 0 && v) from = argv[++i];
        else if (strcmp(a, "--set") == 0 && v) sets[nsets++] = argv[++i];
        else if (strcmp(a, "--dtype") == 0 && v && (dtype = parse_dtype(v)) >= 0) i++;
        else if (strcmp(a, "--shards") == 0 && v && (shards = (int)strtol(v, &end, 10)) >= 1 && !*end &&
                 shards <= STAGE_MAX_SHARDS) i++;
        else if (strcmp(a, "--random") == 0 && v && ((seed = strtoll(v, &end, 10)), !*end)) { random = 1; i++; }
        else if (a[0] != '-' && !deck) deck = a;
        else {
            fprintf(stderr, "error: stage: bad argument '%s'%s\n", a, v ? "" : " (a value is missing)");
            free(sets);
            return usage();
        }
    }
    if (!deck || !out || (random && from)) {
        free(sets);
        return usage();
    }
    Deck *d = xmalloc(sizeof *d, "deck");
    char err[4096];
    int rc = deck_load(d, deck, nsets, sets, 1, err, sizeof err);
    free(sets);
    if (rc != 0) {
        fprintf(stderr, "%s\n", err);
        free(d);
        return 2;
    }
    const Config *c = &d->cfg;
    Stager s;
    memset(&s, 0, sizeof s);
    s.out = out;
    model_table(&s.m, &c->model);
    if (shards == 0) shards = (int)c->parallel.tp;
    if (dtype < 0) dtype = c->generate.weights_dtype;
    if (s.m.s.NH % shards || s.m.s.H % shards) {
        fprintf(stderr, "error: stage: --shards %d does not divide [model] heads = %d and the MLP width %d\n"
                        "  hint: use the tp the generate job will run at\n", shards, s.m.s.NH, s.m.s.H);
        free(d);
        return 2;
    }
    s.h = (StageHeader){.version = STAGE_VERSION, .dtype = (uint32_t)dtype, .L = s.m.s.L, .C = s.m.s.C, .NH = s.m.s.NH,
                        .V = s.m.s.V, .Vp = s.m.s.Vp, .maxT = s.m.s.maxT, .H = s.m.s.H, .shards = shards,
                        .align = STAGE_ALIGN};
    s.h.seg = xcalloc(sizeof(StageSeg) * (1 + (size_t)s.h.L * (size_t)shards), "segment table");
    char why[600];
    if (stage_plan(&s.h, why, sizeof why) != 0 || stage_layer_layout(&s.h, &s.ly, why, sizeof why) != 0)
        FATAL("use a smaller [model]", "stage: %s", why);
    if (random) {
        s.seed = (uint64_t)seed;
        s.std = c->model.init_std;
    } else {
        if (!from) from = c->generate.weights;
        if (!from[0] || access(from, R_OK) != 0) {
            fprintf(stderr, "error: stage: weights '%s': %s\n  hint: --from WEIGHTS.h5 (a weights file or a checkpoint), "
                            "or --random SEED\n", from, from[0] ? strerror(errno) : "none given");
            free(d);
            return 2;
        }
        s.from = from;
        int first, end;
        layer_range(&s.m, 0, &first, &end);
        const ParamTensor *t0 = &s.m.tensors[first], *t1 = &s.m.tensors[end - 1];
        s.layer = xmalloc((t1->offset + t1->numel - t0->offset) * sizeof(float), "one layer");
    }
    uint64_t floats;
    SYS_CHECK(stage_resident_floats(&s.h, &floats, why, sizeof why) == 0, "%s", why);
    s.resident = aio_buffer(aio_align_up(floats * sizeof(float), STAGE_ALIGN), STAGE_ALIGN);
    s.res_at = xcalloc(sizeof(size_t) * (size_t)s.m.ntensors, "resident index");
    size_t at = 0;
    for (int t = 0; t < s.m.ntensors; t++) {
        if (is_matrix(&s, t)) continue;
        s.res_at[t] = at;
        at += s.m.tensors[t].numel;
    }
    SYS_CHECK(s.resident && at == floats, "resident segment of %zu floats, planned %llu", at, (unsigned long long)floats);
    for (int k = 0; k < 2; k++) {
        s.seg[k] = aio_buffer(aio_align_up(s.ly.bytes, STAGE_ALIGN), STAGE_ALIGN);
        SYS_CHECK(s.seg[k], "no memory for a %llu-byte layer segment", (unsigned long long)s.ly.bytes);
    }
    snprintf(s.tmp, sizeof s.tmp, "%s.tmp", out);
    make_parent_dirs(out, "use an --out path you can write");
    if (aio_init(&s.aio, 64, why, sizeof why) != 0) FATAL(NULL, "stage: I/O engine: %s", why);
    if (aio_open(&s.f, s.tmp, AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, sizeof why) != 0)
        FATAL("use an --out path you can write", "stage: %s", why);
    if (ftruncate(s.f.fd, (off_t)s.h.file_size) != 0)
        FATAL("check the disk has room", "stage: cannot size '%s' to %llu bytes: %s", s.tmp,
              (unsigned long long)s.h.file_size, strerror(errno));
    static const char *dn[] = {"fp32", "bf16", "int8"};
    log_info("stage: %s from %s: %d layers, %s, %d shard(s), %.1f MiB per layer segment, %.2f GiB in all\n", out,
             random ? "random init" : from, s.h.L, dn[dtype], shards, (double)s.ly.bytes / 1048576.0,
             (double)s.h.file_size / 1073741824.0);
    const double t0 = wall_seconds();
    for (int t = 0; t < s.m.ntensors; t++)      // wte, wpe and ln_f; the layers' vectors come with them
        if (s.m.tensors[t].layer < 0) put_resident(&s, t, NULL);
    write_layers(&s);
    write_resident(&s);
    uint8_t *hb = aio_buffer(s.h.header_bytes, STAGE_ALIGN);
    SYS_CHECK(hb, "no memory for the header");
    stage_header_encode(&s.h, hb);
    uint64_t ht = aio_write(&s.aio, &s.f, hb, s.h.header_bytes, 0);
    write_wait(&s, &ht);
    aio_buffer_free(hb);
    if (fsync(s.f.fd) != 0) FATAL("check the disk", "stage: cannot sync '%s': %s", s.tmp, strerror(errno));
    const int direct = s.f.direct;
    aio_close(&s.f);
    if (rename(s.tmp, out) != 0) FATAL("use an --out path you can write", "stage: cannot rename '%s' to '%s': %s", s.tmp,
                                       out, strerror(errno));
    const double secs = wall_seconds() - t0;
    struct rusage ru;
    const double peak = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss / 1024.0 : 0.0;   // Linux: KiB
    log_info("stage: wrote %s (%llu bytes) in %.1f s (%.2f GB/s): %.1f s filling segments, %.1f s waiting for writes (%s); "
             "peak RSS %.1f MiB\n", out, (unsigned long long)s.h.file_size, secs,
             (double)s.h.file_size / 1e9 / (secs > 0 ? secs : 1e-9), s.gen_s, s.wait_s, direct ? "O_DIRECT" : "buffered", peak);
    for (int k = 0; k < 2; k++) aio_buffer_free(s.seg[k]);
    aio_buffer_free(s.resident);
    aio_free(&s.aio);
    free(s.layer);
    free(s.res_at);
    stage_header_free(&s.h);
    model_free(&s.m);
    free(d);
    return 0;
}
