// stage.c: `partita stage`: writes the staged weight file (stage.h) from a
// weights file or checkpoint, or from the deck's random init (a model larger
// than memory, written a layer at a time).
#include "stage.h"
#include "deck.h"
#include "engine.h"
#include "log.h"
#include "model.h"
#include "sysutil.h"
#include "weights.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct Stager {
    const char *out;
    char tmp[DECK_STR + 16];
    int fd;
    Model m;                  // the whole model's (training) table
    StageHeader h;
    StageLayer ly;
    const float *full;        // --from: the whole model; NULL: random
    uint64_t seed;
    double std;
    float *mats[STAGE_NMAT];  // random: one layer's matrices, HF Conv1D (in, out)
    uint8_t *seg;             // one layer segment (aligned size)
} Stager;

static void pwrite_all(Stager *s, const void *buf, uint64_t bytes, uint64_t off) {
    const uint8_t *p = buf;
    while (bytes > 0) {
        size_t chunk = bytes > ((size_t)1 << 30) ? ((size_t)1 << 30) : (size_t)bytes;
        ssize_t w = pwrite(s->fd, p, chunk, (off_t)off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) FATAL("check the disk has room for the staged file", "stage: cannot write '%s' at %llu: %s",
                          s->tmp, (unsigned long long)off, w < 0 ? strerror(errno) : "no progress");
        p += w;
        off += (uint64_t)w;
        bytes -= (uint64_t)w;
    }
}

// Tensor t's values: from the whole model, or the deck's init (seeded, any range alone).
static const float *tensor_values(Stager *s, int t, float *buf) {
    const ParamTensor *pt = &s->m.tensors[t];
    if (s->full) return s->full + pt->offset;
    const size_t n = pt->numel, chunk = (size_t)1 << 20, nchunks = (n + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1)
    for (size_t c = 0; c < nchunks; c++) {
        size_t b = c * chunk, e = b + chunk < n ? b + chunk : n;
        model_init_range(&s->m, buf + b, pt->offset + b, pt->offset + e, s->seed, s->std);
    }
    return buf;
}

static int is_matrix(int t, int L) {
    if (t < 2 || t >= 2 + P_PER_LAYER * L) return 0;
    int j = (t - 2) % P_PER_LAYER;
    return j == P_QKVW || j == P_ATTPW || j == P_FCW || j == P_FCPW;
}

static void write_resident(Stager *s) {
    uint64_t floats;
    char why[300];
    SYS_CHECK(stage_resident_floats(&s->h, &floats, why, sizeof why) == 0, "%s", why);
    float *res = xcalloc(floats * sizeof(float) + 1, "resident segment");
    size_t at = 0;
    for (int t = 0; t < s->m.ntensors; t++) {
        if (is_matrix(t, s->m.s.L)) continue;
        const float *v = tensor_values(s, t, res + at);
        if (v != res + at) memcpy(res + at, v, s->m.tensors[t].numel * sizeof(float));
        at += s->m.tensors[t].numel;
    }
    SYS_CHECK(at == floats, "resident segment of %zu floats, planned %llu", at, (unsigned long long)floats);
    s->h.seg[0].checksum = stage_checksum(res, floats * sizeof(float));
    pwrite_all(s, res, floats * sizeof(float), s->h.seg[0].offset);
    free(res);
}

// Held output j of a column-split matrix of rank r (engine.c's src_col).
static int src_col(int j, int mat, int r, int Ct, int Ht, int C) {
    if (mat == STAGE_QKV) return (j / Ct) * C + r * Ct + j % Ct;
    return r * Ht + j;
}

// Rank r's held (out, in) rows of matrix `mat` from the whole Conv1D (in, out) G, into the segment.
static void put_matrix(Stager *s, int mat, int r, const float *G, float *row) {
    const int C = s->m.s.C, Ct = C / s->h.shards, Ht = s->m.s.H / s->h.shards;
    const int OC = s->ly.rows[mat], IC = s->ly.cols[mat];
    const int Cg = mat == STAGE_QKV ? 3 * C : mat == STAGE_FC ? s->m.s.H : C;   // whole (in, out) row length
    const int row0 = mat == STAGE_ATTP ? r * Ct : mat == STAGE_FCP ? r * Ht : 0;
    const int rowsplit = mat == STAGE_ATTP || mat == STAGE_FCP;
    uint8_t *dst = s->seg + s->ly.mat[mat];
    float *scales = (float *)(s->seg + s->ly.scale[mat]);
    for (int j = 0; j < OC; j++) {
        const int c = rowsplit ? j : src_col(j, mat, r, Ct, Ht, C);
        for (int i = 0; i < IC; i++) row[i] = G[(size_t)(row0 + i) * Cg + c];
        const size_t at = (size_t)j * IC;
        if (s->h.dtype == STAGE_F32) {
            memcpy(dst + 4 * at, row, 4 * (size_t)IC);
        } else if (s->h.dtype == STAGE_BF16) {
            for (int i = 0; i < IC; i++) {
                uint16_t b = engine_bf16(row[i]);
                memcpy(dst + 2 * (at + (size_t)i), &b, 2);
            }
        } else {
            scales[j] = stage_quantize_row(row, IC, (int8_t *)dst + at);
        }
    }
}

static void write_layers(Stager *s) {
    const int L = s->m.s.L;
    float *row = xmalloc(sizeof(float) * (size_t)(s->m.s.H > s->m.s.C ? s->m.s.H : s->m.s.C), "row");
    const int js[STAGE_NMAT] = {P_QKVW, P_ATTPW, P_FCW, P_FCPW};
    double t0 = wall_seconds();
    for (int l = 0; l < L; l++) {
        const float *G[STAGE_NMAT];
        for (int k = 0; k < STAGE_NMAT; k++) G[k] = tensor_values(s, 2 + P_PER_LAYER * l + js[k], s->mats[k]);
        for (int r = 0; r < s->h.shards; r++) {
            memset(s->seg, 0, s->ly.bytes);
            for (int k = 0; k < STAGE_NMAT; k++) put_matrix(s, k, r, G[k], row);
            StageSeg *sg = &s->h.seg[1 + (size_t)l * s->h.shards + r];
            sg->checksum = stage_checksum(s->seg, s->ly.bytes);
            pwrite_all(s, s->seg, s->ly.bytes, sg->offset);
        }
        if (L >= 8 && (l + 1) % (L / 8) == 0)
            log_info("stage: layer %d of %d (%.0f s)\n", l + 1, L, wall_seconds() - t0);
    }
    free(row);
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
    float *full = NULL;
    if (random) {
        s.seed = (uint64_t)seed;
        s.std = c->model.init_std;
        const int js[STAGE_NMAT] = {P_QKVW, P_ATTPW, P_FCW, P_FCPW};
        for (int k = 0; k < STAGE_NMAT; k++) s.mats[k] = xmalloc(s.m.tensors[2 + js[k]].numel * sizeof(float), "layer matrix");
    } else {
        if (!from) from = c->generate.weights;
        if (!from[0] || access(from, R_OK) != 0) {
            fprintf(stderr, "error: stage: weights '%s': %s\n  hint: --from WEIGHTS.h5 (a weights file or a checkpoint), "
                            "or --random SEED\n", from, from[0] ? strerror(errno) : "none given");
            free(d);
            return 2;
        }
        full = xmalloc(s.m.nparams * sizeof(float), "weights");
        weights_read(&s.m, from, full);
        s.full = full;
    }
    s.seg = xcalloc(s.ly.bytes + 1, "layer segment");
    snprintf(s.tmp, sizeof s.tmp, "%s.tmp", out);
    make_parent_dirs(out, "use an --out path you can write");
    s.fd = open(s.tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (s.fd < 0) FATAL("use an --out path you can write", "stage: cannot create '%s': %s", s.tmp, strerror(errno));
    if (ftruncate(s.fd, (off_t)s.h.file_size) != 0)
        FATAL("check the disk has room", "stage: cannot size '%s' to %llu bytes: %s", s.tmp,
              (unsigned long long)s.h.file_size, strerror(errno));
    static const char *dn[] = {"fp32", "bf16", "int8"};
    log_info("stage: %s from %s: %d layers, %s, %d shard(s), %.1f MiB per layer segment, %.2f GiB in all\n", out,
             random ? "random init" : from, s.h.L, dn[dtype], shards, (double)s.ly.bytes / 1048576.0,
             (double)s.h.file_size / 1073741824.0);
    write_resident(&s);
    write_layers(&s);
    uint8_t *hb = xcalloc(s.h.header_bytes, "header");
    stage_header_encode(&s.h, hb);
    pwrite_all(&s, hb, s.h.header_bytes, 0);
    free(hb);
    if (fsync(s.fd) != 0) FATAL("check the disk", "stage: cannot sync '%s': %s", s.tmp, strerror(errno));
    if (close(s.fd) != 0) FATAL("check the disk", "stage: cannot close '%s': %s", s.tmp, strerror(errno));
    if (rename(s.tmp, out) != 0) FATAL("use an --out path you can write", "stage: cannot rename '%s' to '%s': %s", s.tmp,
                                       out, strerror(errno));
    log_info("stage: wrote %s (%llu bytes)\n", out, (unsigned long long)s.h.file_size);
    for (int k = 0; k < STAGE_NMAT; k++) free(s.mats[k]);
    free(s.seg);
    free(full);
    stage_header_free(&s.h);
    model_free(&s.m);
    free(d);
    return 0;
}
