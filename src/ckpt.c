// ckpt.c: collective HDF5 checkpoints by hyperslab, atomic by rename.
#include "ckpt.h"
#include "h5io.h"
#include "log.h"
#include "sysutil.h"
#include "weights.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { DS_PARAMS, DS_EXP_AVG, DS_EXP_AVG_SQ, DS_KINDS };
static const char *groups[DS_KINDS] = {"params", "optim/exp_avg", "optim/exp_avg_sq"};

static uint64_t mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t ckpt_checksum(const float *x, size_t n, uint64_t first) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], sizeof b);
        sum += mix64(((first + i) << 32) ^ b);
    }
    return sum;
}

// ---------------------------------------------------------------------------
// Selecting a flat range of a tensor: a partial first row, whole rows, a
// partial last row.

static void select_range(hid_t space, const ParamTensor *t, size_t a, size_t b) {
    H5_CHECK(H5Sselect_none(space));
    if (a >= b) return;
    if (t->ndim == 1) {
        hsize_t start = a, count = b - a;
        H5_CHECK(H5Sselect_hyperslab(space, H5S_SELECT_SET, &start, NULL, &count, NULL));
        return;
    }
    size_t C = (size_t)t->shape[1], r0 = a / C, c0 = a % C, r1 = b / C, c1 = b % C;
    H5S_seloper_t op = H5S_SELECT_SET;
#define ADD(r, c, nr, nc) do { hsize_t st_[2] = {(r), (c)}, ct_[2] = {(nr), (nc)}; \
        H5_CHECK(H5Sselect_hyperslab(space, op, st_, NULL, ct_, NULL)); op = H5S_SELECT_OR; } while (0)
    if (r0 == r1) {
        ADD(r0, c0, 1, c1 - c0);
        return;
    }
    if (c0 > 0) {
        ADD(r0, c0, 1, C - c0);
        r0++;
    }
    if (r1 > r0) ADD(r0, 0, r1 - r0, C);
    if (c1 > 0) ADD(r1, 0, 1, c1);
#undef ADD
}

// Moves the flat elements [lo, hi) of every tensor between buf (which holds
// elements from buf_begin on) and the datasets of one group. Collective: every
// rank calls it for every tensor, with an empty selection where it has nothing.
// Adds each tensor's checksum of the elements [clo, chi) to sums[tensor].
static void io_group(hid_t f, hid_t dxpl, const Model *m, const char *group, float *buf, size_t buf_begin,
                     size_t lo, size_t hi, size_t clo, size_t chi, uint64_t *sums, int writing) {
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        char name[128];
        snprintf(name, sizeof name, "%s/%s", group, t->name);
        hid_t ds;
        if (writing) {
            hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
            hid_t sp = H5Screate_simple(t->ndim, dims, NULL);
            H5_CHECK(sp);
            ds = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
            H5_CHECK(H5Sclose(sp));
        } else {
            ds = H5Dopen2(f, name, H5P_DEFAULT);
        }
        H5_CHECK(ds);
        size_t a = t->offset > lo ? t->offset : lo, b = t->offset + t->numel < hi ? t->offset + t->numel : hi;
        if (b < a) b = a;
        hid_t fs = H5Dget_space(ds);
        H5_CHECK(fs);
        select_range(fs, t, a - t->offset, b - t->offset);
        hsize_t n = b - a;
        hid_t ms = H5Screate_simple(1, n ? &n : (hsize_t[]){1}, NULL);
        H5_CHECK(ms);
        if (!n) H5_CHECK(H5Sselect_none(ms));
        float *p = buf + (a - buf_begin);
        if (writing) H5_CHECK(H5Dwrite(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, n ? p : buf));
        else H5_CHECK(H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, dxpl, n ? p : buf));
        size_t ca = t->offset > clo ? t->offset : clo, cb = t->offset + t->numel < chi ? t->offset + t->numel : chi;
        if (cb > ca) sums[i] += ckpt_checksum(buf + (ca - buf_begin), cb - ca, ca - t->offset);
        H5_CHECK(H5Sclose(ms));
        H5_CHECK(H5Sclose(fs));
        H5_CHECK(H5Dclose(ds));
    }
}

// Collective two-phase I/O pays off on a parallel file system with many
// ranks per file; on one node (and above all with ranks sharing cores) every
// collective dataset write is a barrier, and independent writes of each
// rank's hyperslabs are several times faster. PARTITA_CKPT_COLLECTIVE=1 forces
// collective transfers.
static H5FD_mpio_xfer_t ckpt_io_mode(void) {
    const char *e = getenv("PARTITA_CKPT_COLLECTIVE");
    return e && e[0] == '1' ? H5FD_MPIO_COLLECTIVE : H5FD_MPIO_INDEPENDENT;
}

// Where each kind lives on this rank, and which part of it the rank writes.
typedef struct Holding {
    float *buf;
    size_t begin, end;      // elements held
} Holding;

static void holdings(const Zero *z, Holding h[DS_KINDS]) {
    h[DS_PARAMS] = (Holding){z->host_params, z->stage == 3 ? z->own_begin : 0, z->stage == 3 ? z->own_end : z->N};
    h[DS_EXP_AVG] = (Holding){z->host_m, z->optim.begin, z->optim.end};
    h[DS_EXP_AVG_SQ] = (Holding){z->host_v, z->optim.begin, z->optim.end};
}

static hid_t open_parallel(const char *path, MPI_Comm comm, int create) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(fapl);
    H5_CHECK(H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL));
    hid_t f;
    H5E_BEGIN_TRY {
        f = create ? H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : H5Fopen(path, H5F_ACC_RDONLY, fapl);
    } H5E_END_TRY;
    H5_CHECK(H5Pclose(fapl));
    return f;
}

static void sync_path(const char *path, int directory) {
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    SYS_CHECK(fd >= 0, "cannot open '%s' to sync it: %s", path, strerror(errno));
    SYS_CHECK(fsync(fd) == 0, "fsync of '%s' failed: %s", path, strerror(errno));
    close(fd);
}

static int parse_step(const char *name, int64_t *step) {
    int n = 0;
    long long s;
    if (sscanf(name, "step-%lld.h5%n", &s, &n) == 1 && name[n] == 0) {
        *step = s;
        return 1;
    }
    return 0;
}

// Removes leftovers of crashed writes, then the oldest checkpoints beyond `keep`.
static void prune(const char *dir, int64_t keep, int64_t newest) {
    DIR *dd = opendir(dir);
    if (!dd) return;
    for (struct dirent *e; (e = readdir(dd)); ) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "step-", 5) != 0 || len < 4 || strcmp(e->d_name + len - 4, ".tmp") != 0) continue;
        char path[1200];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        unlink(path);
    }
    closedir(dd);
    while (keep > 0) {
        if (!(dd = opendir(dir))) return;
        int count = 0;
        int64_t oldest = INT64_MAX, s;
        for (struct dirent *e; (e = readdir(dd)); )
            if (parse_step(e->d_name, &s)) {
                count++;
                if (s < oldest) oldest = s;
            }
        closedir(dd);
        if (count <= keep || oldest == newest) return;
        char path[1200];
        snprintf(path, sizeof path, "%s/step-%06lld.h5", dir, (long long)oldest);
        if (unlink(path) != 0) return;
    }
}

void ckpt_write(const Zero *z, const Deck *d, const char *deck_text, const char *dir, const CkptState *st) {
    const Model *m = z->m;
    const Config *c = &d->cfg;
    char path[1100], tmp[1200];
    if (z->r == 0) make_dirs(dir, "set [checkpoint] dir to a writable directory");
    MPI_CHECK(MPI_Barrier(z->comm->comm));
    snprintf(path, sizeof path, "%s/step-%06lld.h5", dir, (long long)st->step);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    hid_t f = open_parallel(tmp, z->comm->comm, 1);
    if (f < 0) FATAL_ALL("check [checkpoint] dir", "cannot create checkpoint '%s'", tmp);
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5_CHECK(dxpl);
    H5_CHECK(H5Pset_dxpl_mpio(dxpl, ckpt_io_mode()));

    Holding h[DS_KINDS];
    holdings(z, h);
    size_t lo, hi;
    zero_part(z, z->r, 0, z->N, &lo, &hi);      // this rank writes its dp shard of everything
    uint64_t *sums = xcalloc(sizeof(uint64_t) * (size_t)m->ntensors * DS_KINDS, "checksums");
    for (int k = 0; k < DS_KINDS; k++) {
        H5_CHECK(H5Gclose(h5_group(f, groups[k])));
        io_group(f, dxpl, m, groups[k], h[k].buf, h[k].begin, lo, hi, lo, hi, sums + k * m->ntensors, 1);
        // Test-only: stop half-way through, so a test can kill the job mid-write.
        if (k == 0 && c->checkpoint.test_pause_step == st->step && c->checkpoint.test_pause_s > 0) {
            log_info("checkpoint: test pause %.0f s while writing %s\n", c->checkpoint.test_pause_s, tmp);
            usleep((useconds_t)(c->checkpoint.test_pause_s * 1e6));
        }
    }
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, m->ntensors * DS_KINDS, MPI_UINT64_T, MPI_SUM, z->comm->comm));

    hid_t meta = h5_group(f, "meta");
    h5_attr_i64(meta, "step", st->step);
    h5_attr_f64(meta, "tokens_seen", st->tokens_seen);
    h5_attr_i64(meta, "data_cursor", st->data_cursor);
    h5_attr_i64(meta, "data_rows", st->data_rows);
    h5_attr_i64(meta, "seed", c->run.seed);
    h5_attr_i64(meta, "optim_t", z->optim.t);
    weights_write_shape(meta, m);
    h5_attr_str(meta, "deck", deck_text);
    char layout[128];
    snprintf(layout, sizeof layout, "ranks=%d dp=%d zero_stage=%d", z->p, z->p, z->stage);
    h5_attr_str(meta, "layout", layout);
    for (int k = 0; k < DS_KINDS; k++)
        for (int i = 0; i < m->ntensors; i++) {
            char key[160];
            snprintf(key, sizeof key, "checksum:/%s/%s", groups[k], m->tensors[i].name);
            hid_t sp = H5Screate(H5S_SCALAR);
            hid_t a = H5Acreate2(meta, key, H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
            H5_CHECK(a);
            H5_CHECK(H5Awrite(a, H5T_NATIVE_UINT64, &sums[k * m->ntensors + i]));
            H5_CHECK(H5Aclose(a));
            H5_CHECK(H5Sclose(sp));
        }
    H5_CHECK(H5Gclose(meta));
    free(sums);
    H5_CHECK(H5Pclose(dxpl));
    H5_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL));
    H5_CHECK(H5Fclose(f));

    // Only a whole, synced file gets the real name, and only then is it `latest`.
    if (z->r == 0) {
        sync_path(tmp, 0);
        SYS_CHECK(rename(tmp, path) == 0, "cannot rename '%s': %s", tmp, strerror(errno));
        sync_path(dir, 1);
        char latest[1100], ltmp[1200];
        snprintf(latest, sizeof latest, "%s/latest", dir);
        snprintf(ltmp, sizeof ltmp, "%s.tmp", latest);
        FILE *lf = fopen(ltmp, "w");
        SYS_CHECK(lf, "cannot write '%s': %s", ltmp, strerror(errno));
        fprintf(lf, "step-%06lld.h5\n", (long long)st->step);
        SYS_CHECK(fflush(lf) == 0 && fsync(fileno(lf)) == 0, "cannot sync '%s'", ltmp);
        fclose(lf);
        SYS_CHECK(rename(ltmp, latest) == 0, "cannot rename '%s': %s", ltmp, strerror(errno));
        sync_path(dir, 1);
        prune(dir, c->checkpoint.keep, st->step);
    }
    MPI_CHECK(MPI_Barrier(z->comm->comm));
}

// ---------------------------------------------------------------------------
// Reading

// Checks the shape the file was written for against the deck's; returns a
// message or "" (identical on every rank: they read the same metadata).
static void check_shape(hid_t meta, const Model *m, const Deck *d, const char *path, char *err, size_t n) {
    const GPTShape *s = &m->s;
    struct { const char *attr, *key; int64_t want; } want[] = {
        {"n_layer", "model.layers", s->L}, {"n_embd", "model.d_model", s->C}, {"n_head", "model.heads", s->NH},
        {"vocab_size", "model.vocab", s->V}, {"padded_vocab_size", "model.vocab_pad", s->Vp},
        {"n_positions", "model.seq_len", s->maxT}, {"mlp_hidden", "model.mlp_ratio", s->H}};
    err[0] = 0;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int64_t v;
        char where[600];
        if (h5_read_attr_i64(meta, want[i].attr, &v) < 0) {
            snprintf(err, n, "checkpoint '%s': /meta lacks the attribute %s", path, want[i].attr);
            return;
        }
        if (v != want[i].want) {
            snprintf(err, n, "checkpoint '%s' was written for %s = %lld, but the deck's %s gives %lld (%s)", path,
                     want[i].attr, (long long)v, want[i].key, (long long)want[i].want,
                     deck_where(d, want[i].key, where, sizeof where));
            return;
        }
    }
}

void ckpt_read(Zero *z, const Deck *d, const char *path, CkptState *st) {
    const Model *m = z->m;
    hid_t f = open_parallel(path, z->comm->comm, 0);
    if (f < 0)
        FATAL_ALL("the file is truncated, not HDF5 or unreadable; resume from an older one or none",
                  "cannot open checkpoint '%s'", path);
    char err[1200];
    if (H5Lexists(f, "meta", H5P_DEFAULT) <= 0)
        FATAL_ALL("this is not a Partita checkpoint", "checkpoint '%s' has no /meta group", path);
    hid_t meta = H5Gopen2(f, "meta", H5P_DEFAULT);
    H5_CHECK(meta);
    check_shape(meta, m, d, path, err, sizeof err);
    if (err[0]) FATAL_ALL("resume with the deck that wrote it, or set [checkpoint] resume = none", "%s", err);
    int64_t v = 0;
    if (h5_read_attr_i64(meta, "step", &st->step) < 0 || h5_read_attr_i64(meta, "data_cursor", &st->data_cursor) < 0 ||
        h5_read_attr_i64(meta, "optim_t", &v) < 0)
        FATAL_ALL(NULL, "checkpoint '%s': /meta lacks step, data_cursor or optim_t", path);
    z->optim.t = (int)v;
    if (h5_read_attr_i64(meta, "data_rows", &st->data_rows) < 0) st->data_rows = -1;
    double tokens = 0;
    if (H5Aexists(meta, "tokens_seen") > 0) {
        hid_t a = H5Aopen(meta, "tokens_seen", H5P_DEFAULT);
        H5_CHECK(a);
        H5_CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, &tokens));
        H5_CHECK(H5Aclose(a));
    }
    st->tokens_seen = tokens;
    // Every dataset must be there with the model's shape before any is read.
    for (int k = 0; k < DS_KINDS; k++)
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            char name[160];
            snprintf(name, sizeof name, "%s/%s", groups[k], t->name);
            htri_t ok;
            H5E_BEGIN_TRY { ok = H5Lexists(f, name, H5P_DEFAULT); } H5E_END_TRY;
            if (ok <= 0) FATAL_ALL("the checkpoint is incomplete or from another model", "checkpoint '%s' lacks the dataset /%s", path, name);
            hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
            hid_t sp = H5Dget_space(ds);
            hsize_t dims[2] = {0, 0};
            int nd = H5Sget_simple_extent_ndims(sp);
            H5_CHECK(H5Sget_simple_extent_dims(sp, dims, NULL));
            if (nd != t->ndim || dims[0] != (hsize_t)t->shape[0] || (nd == 2 && dims[1] != (hsize_t)t->shape[1]))
                FATAL_ALL("the checkpoint is from another model", "checkpoint '%s': /%s has shape (%llu, %llu), the model expects (%d, %d)",
                          path, name, (unsigned long long)dims[0], (unsigned long long)(nd == 2 ? dims[1] : 0),
                          t->shape[0], t->ndim == 2 ? t->shape[1] : 0);
            H5_CHECK(H5Sclose(sp));
            H5_CHECK(H5Dclose(ds));
        }
    hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
    H5_CHECK(dxpl);
    H5_CHECK(H5Pset_dxpl_mpio(dxpl, ckpt_io_mode()));
    Holding h[DS_KINDS];
    holdings(z, h);
    size_t lo, hi;
    zero_part(z, z->r, 0, z->N, &lo, &hi);  // the part this rank vouches for in the checksums
    uint64_t *sums = xcalloc(sizeof(uint64_t) * (size_t)m->ntensors * DS_KINDS, "checksums");
    for (int k = 0; k < DS_KINDS; k++)
        io_group(f, dxpl, m, groups[k], h[k].buf, h[k].begin, h[k].begin, h[k].end, lo, hi, sums + k * m->ntensors, 0);
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, sums, m->ntensors * DS_KINDS, MPI_UINT64_T, MPI_SUM, z->comm->comm));
    for (int k = 0; k < DS_KINDS; k++)
        for (int i = 0; i < m->ntensors; i++) {
            char key[160];
            uint64_t want = 0;
            snprintf(key, sizeof key, "checksum:/%s/%s", groups[k], m->tensors[i].name);
            hid_t at = -1;
            H5E_BEGIN_TRY { at = H5Aopen(meta, key, H5P_DEFAULT); } H5E_END_TRY;
            if (at < 0) FATAL_ALL("the checkpoint is incomplete", "checkpoint '%s': /meta lacks %s", path, key);
            H5_CHECK(H5Aread(at, H5T_NATIVE_UINT64, &want));
            H5_CHECK(H5Aclose(at));
            if (want != sums[k * m->ntensors + i])
                FATAL_ALL("the file is corrupt: resume from an older checkpoint",
                          "checkpoint '%s': dataset /%s/%s fails its checksum (stored %016llx, read %016llx)", path,
                          groups[k], m->tensors[i].name, (unsigned long long)want,
                          (unsigned long long)sums[k * m->ntensors + i]);
        }
    zero_push_states(z);    // read into the host copies; on cuda they go to the device now
    free(sums);
    H5_CHECK(H5Pclose(dxpl));
    H5_CHECK(H5Gclose(meta));
    H5_CHECK(H5Fclose(f));
}

int ckpt_find_resume(const Deck *d, const char *dir, char *path, size_t n, int rank) {
    const char *r = d->cfg.checkpoint.resume;
    if (strcmp(r, "none") == 0) return 0;
    if (strcmp(r, "auto") != 0) {
        snprintf(path, n, "%s", r);
        return 1;
    }
    char latest[1100], name[256] = "";
    snprintf(latest, sizeof latest, "%s/latest", dir);
    FILE *lf = fopen(latest, "r");
    if (!lf) return 0;
    if (!fgets(name, sizeof name, lf)) name[0] = 0;
    fclose(lf);
    name[strcspn(name, "\n")] = 0;
    if (!name[0]) return 0;
    snprintf(path, n, "%s/%s", dir, name);
    if (access(path, R_OK) != 0) {
        if (rank == 0) log_warn("%s names '%s', which is missing; starting afresh", latest, path);
        return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------
// `partita ckpt info|export`: one process, serial HDF5.

static void model_from_meta(hid_t meta, const char *path, Model *m) {
    int64_t L, C, NH, V, Vp, T, H;
    if (h5_read_attr_i64(meta, "n_layer", &L) < 0 || h5_read_attr_i64(meta, "n_embd", &C) < 0 ||
        h5_read_attr_i64(meta, "n_head", &NH) < 0 || h5_read_attr_i64(meta, "vocab_size", &V) < 0 ||
        h5_read_attr_i64(meta, "padded_vocab_size", &Vp) < 0 || h5_read_attr_i64(meta, "n_positions", &T) < 0 ||
        h5_read_attr_i64(meta, "mlp_hidden", &H) < 0)
        FATAL("this is not a Partita checkpoint", "'%s': /meta lacks the model shape", path);
    ModelConfig mc = {.vocab = V, .vocab_pad = Vp, .layers = L, .d_model = C, .heads = NH, .seq_len = T,
                      .mlp_ratio = H / C, .init_std = 0.02};
    model_table(m, &mc);
}

// Reads one whole dataset; returns its checksum, or reports why it cannot.
static int read_whole(hid_t f, const char *name, const ParamTensor *t, float *buf, uint64_t *sum, char *why, size_t n) {
    htri_t ok;
    H5E_BEGIN_TRY { ok = H5Lexists(f, name, H5P_DEFAULT); } H5E_END_TRY;
    if (ok <= 0) {
        snprintf(why, n, "missing");
        return -1;
    }
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t sp = H5Dget_space(ds);
    hsize_t dims[2] = {0, 0};
    int nd = H5Sget_simple_extent_ndims(sp);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    if (nd != t->ndim || dims[0] != (hsize_t)t->shape[0] || (nd == 2 && dims[1] != (hsize_t)t->shape[1])) {
        snprintf(why, n, "shape (%llu, %llu) instead of (%d, %d)", (unsigned long long)dims[0],
                 (unsigned long long)dims[1], t->shape[0], t->ndim == 2 ? t->shape[1] : 0);
        H5Dclose(ds);
        return -1;
    }
    herr_t rc;
    H5E_BEGIN_TRY { rc = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf); } H5E_END_TRY;
    H5Dclose(ds);
    if (rc < 0) {
        snprintf(why, n, "unreadable (truncated?)");
        return -1;
    }
    *sum = ckpt_checksum(buf, t->numel, 0);
    return 0;
}

int ckpt_main(int argc, char **argv) {
    if (argc < 2 || (strcmp(argv[0], "info") != 0 && strcmp(argv[0], "export") != 0) ||
        (strcmp(argv[0], "export") == 0 && argc != 3)) {
        fprintf(stderr, "usage: partita ckpt info FILE | partita ckpt export FILE OUT.h5\n");
        return 2;
    }
    const char *path = argv[1];
    hid_t f;
    H5E_BEGIN_TRY { f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); } H5E_END_TRY;
    if (f < 0) {
        fprintf(stderr, "error: cannot open checkpoint '%s' (missing, truncated or not HDF5)\n", path);
        return 1;
    }
    hid_t meta;
    H5E_BEGIN_TRY { meta = H5Gopen2(f, "meta", H5P_DEFAULT); } H5E_END_TRY;
    if (meta < 0) {
        fprintf(stderr, "error: '%s' has no /meta group: not a Partita checkpoint\n", path);
        return 1;
    }
    Model m;
    model_from_meta(meta, path, &m);
    int64_t step = 0, t = 0;
    char layout[128] = "?";
    h5_read_attr_i64(meta, "step", &step);
    h5_read_attr_i64(meta, "optim_t", &t);
    h5_read_attr_str(meta, "layout", layout, sizeof layout);
    float *buf = xmalloc(m.nparams * sizeof(float), "checkpoint tensor");
    int bad = 0, is_info = strcmp(argv[0], "info") == 0;
    if (is_info) {
        printf("checkpoint %s\n  step %lld, written by %s, %zu parameters (L=%d C=%d NH=%d V=%d Vp=%d)\n", path,
               (long long)step, layout, m.nparams, m.s.L, m.s.C, m.s.NH, m.s.V, m.s.Vp);
        printf("  %-44s %-14s %12s  %s\n", "dataset", "shape", "bytes", "checksum");
    }
    for (int k = 0; k < (is_info ? DS_KINDS : 1); k++)
        for (int i = 0; i < m.ntensors; i++) {
            const ParamTensor *pt = &m.tensors[i];
            char name[160], key[180], why[128] = "", shape[32];
            snprintf(name, sizeof name, "%s/%s", groups[k], pt->name);
            snprintf(key, sizeof key, "checksum:/%s", name);
            uint64_t sum = 0, want = 0;
            int rc = read_whole(f, name, pt, buf + pt->offset, &sum, why, sizeof why);
            if (rc == 0) {
                hid_t a;
                H5E_BEGIN_TRY { a = H5Aopen(meta, key, H5P_DEFAULT); } H5E_END_TRY;
                if (a < 0) {
                    snprintf(why, sizeof why, "no stored checksum");
                    rc = -1;
                } else {
                    H5Aread(a, H5T_NATIVE_UINT64, &want);
                    H5Aclose(a);
                    if (want != sum) {
                        snprintf(why, sizeof why, "checksum MISMATCH (stored %016llx, read %016llx)",
                                 (unsigned long long)want, (unsigned long long)sum);
                        rc = -1;
                    }
                }
            }
            bad += rc != 0;
            if (pt->ndim == 2) snprintf(shape, sizeof shape, "(%d, %d)", pt->shape[0], pt->shape[1]);
            else snprintf(shape, sizeof shape, "(%d)", pt->shape[0]);
            if (is_info) printf("  /%-43s %-14s %12zu  %s\n", name, shape, pt->numel * sizeof(float), rc ? why : "ok");
            else if (rc) fprintf(stderr, "error: checkpoint '%s': /%s: %s\n", path, name, why);
        }
    if (is_info) printf("%s: %d of %d datasets bad\n", bad ? "FAILED" : "ok", bad, m.ntensors * DS_KINDS);
    if (!is_info && !bad) {
        // A weights file: the layout weights_write uses, from the whole buffer.
        hid_t out = h5_create(argv[2]);
        weights_write_shape(out, &m);
        h5_attr_i64(out, "step", step);
        char deck[65536] = "";
        h5_read_attr_str(meta, "deck", deck, sizeof deck);
        h5_attr_str(out, "deck", deck);
        h5_attr_str(out, "layout", "GPT-2 names; linear weights (in, out) as HF Conv1D; wte tied to the LM head");
        weights_write_group(&m, out, "params", buf);
        h5_close(out);
        printf("export: %s (step %lld) -> %s\n", path, (long long)step, argv[2]);
    }
    free(buf);
    model_free(&m);
    H5Gclose(meta);
    H5Fclose(f);
    return bad ? 1 : 0;
}
