// ckpt.c: collective HDF5 checkpoints by hyperslab, atomic by rename.
#include "ckpt.h"
#include "aio.h"
#include "ckpt_io.h"
#include "h5io.h"
#include "safetensors.h"
#include "log.h"
#include "sysutil.h"
#include "watchdog.h"
#include "weights.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

// Format 2: /meta carries format_version and meta_checksum; format 3 adds /meta index and
// lays the datasets out contiguous and aligned (see ckpt.h).
#define CKPT_FORMAT 3
#define META_CHECKSUM "meta_checksum"
// Bounds on what /meta may hold (a damaged or hostile file must not make us
// loop or allocate without end).
#define META_MAX_ATTRS (1 << 20)
#define META_MAX_STRING ((size_t)1 << 24)
#define CKPT_MAX_STEP ((int64_t)1 << 50)

enum { DS_PARAMS, DS_EXP_AVG, DS_EXP_AVG_SQ, DS_KINDS };
static const char *groups[DS_KINDS] = {"params", "optim/exp_avg", "optim/exp_avg_sq"};

static uint64_t mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// A sum mod 2^64 is exact in any order: the threads' partial sums, and the
// SIMD lanes', add up to the same bits. It is what a load's reads race: on the
// AVX-512 test machine one core summed 1.47 GB/s scalar, 1.62 with 256-bit
// lanes, 2.28 with 512-bit ones (vpmullq), about the disk's read speed. By
// blocks of 64 KiB with the next but one prefetched, because a load sums bytes
// that O_DIRECT has just put in memory, not in cache, and the multiplies left
// the loads unhidden: 2.6 -> 4.5 GB/s a core on 400 MB there (in cache: 9.6
// either way). The inner loop is always vectorised (an `if` on the combined
// construct had made parts of 1 MB and less run scalar).
#define SUM_BLOCK ((size_t)16384)
__attribute__((target("prefer-vector-width=512")))
uint64_t ckpt_checksum(const float *x, size_t n, uint64_t first) {
    uint64_t sum = 0;
    size_t nb = (n + SUM_BLOCK - 1) / SUM_BLOCK;
    #pragma omp parallel for schedule(static) reduction(+ : sum) if (n > ((size_t)1 << 18))
    for (size_t k = 0; k < nb; k++) {
        size_t a = k * SUM_BLOCK, b = a + SUM_BLOCK < n ? a + SUM_BLOCK : n;
        for (size_t p = a + 2 * SUM_BLOCK; p < b + 2 * SUM_BLOCK && p < n; p += 16) __builtin_prefetch(x + p);
        uint64_t part = 0;
        #pragma omp simd reduction(+ : part)
        for (size_t i = a; i < b; i++) {
            uint32_t bits;
            memcpy(&bits, &x[i], sizeof bits);
            part += mix64(((first + i) << 32) ^ bits);
        }
        sum += part;
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

// ---------------------------------------------------------------------------
// What a rank holds, as pieces: a local buffer and the global flat range it
// holds. THE one mapping between rank-local buffers and the global layout:
// every read, write and checksum below goes through these two functions
// (a rank may hold several pieces per kind: one per ZeRO parameter group).
// Flat ranges are in the rank's own layout (model.h: with expert parallelism
// the held experts follow the dense tensors, the others are held nowhere
// here); a tensor's part of a piece maps to its global dataset by name.

enum { CKPT_MAX_PIECES = 16 };

typedef struct Piece {
    float *buf;             // element `begin` of the flat layout is buf[0]
    size_t begin, end;
} Piece;

// The pieces of state `kind` this rank holds (at stages 1-2 a load reads only
// the owned part of the parameters and all-gathers them after).
static int held_pieces(const Zero *z, int kind, Piece *out) {
    if (kind == DS_PARAMS && z->stage < 3) {
        out[0] = (Piece){z->host_params, 0, z->N};
        return 1;
    }
    for (int k = 0; k < z->ngroups; k++) {
        const ZeroGroup *g = &z->g[k];
        float *buf = kind == DS_PARAMS ? z->host_params + g->at : kind == DS_EXP_AVG ? g->host_m : g->host_v;
        out[k] = (Piece){buf, g->own_begin, g->own_end};
    }
    return z->ngroups;
}

// The pieces this rank writes and vouches for in the checksums: what it holds
// within its shard of each group, so that every element is written by exactly
// one rank (a dense one by one of all ranks, an expert's by one of the ranks
// holding it).
static int owned_pieces(const Zero *z, int kind, Piece *out) {
    Piece held[CKPT_MAX_PIECES];
    int nh = held_pieces(z, kind, held), n = 0;
    for (int i = 0; i < nh; i++)
        for (int k = 0; k < z->ngroups; k++) {
            size_t lo, hi;
            zero_group_part(&z->g[k], z->g[k].r, held[i].begin, held[i].end, &lo, &hi);
            if (hi > lo) out[n++] = (Piece){held[i].buf + (lo - held[i].begin), lo, hi};
        }
    return n;
}

// Tensor i's part of piece p: elements [*a, *b) of the flat layout; 0 if none.
static int tensor_part(const ParamTensor *t, const Piece *p, size_t *a, size_t *b) {
    *a = t->offset > p->begin ? t->offset : p->begin;
    *b = t->offset + t->numel < p->end ? t->offset + t->numel : p->end;
    return *b > *a;
}

// ---------------------------------------------------------------------------
// The bytes of contiguous float32 datasets move at the datasets' offsets in
// the file, not through HDF5's per-hyperslab MPI-IO path (which ran at 16% of
// the disk): each rank's part of each tensor is one segment (ckpt_io.h), its
// aligned interior by O_DIRECT.

// The file offset of ds's raw data when it is contiguous little-endian
// float32 with its space allocated; HADDR_UNDEF otherwise (then H5Dread).
static haddr_t raw_offset(hid_t ds) {
    // H5Dget_offset is HADDR_UNDEF unless the layout is contiguous, allocated
    // and in this file (not chunked, compact or external).
    haddr_t off = HADDR_UNDEF;
    hid_t type = H5Dget_type(ds);
    if (type >= 0 && H5Tequal(type, H5T_IEEE_F32LE) > 0) H5E_BEGIN_TRY { off = H5Dget_offset(ds); } H5E_END_TRY;
    if (type >= 0) H5Tclose(type);
    H5Eclear2(H5E_DEFAULT);
    return off;
}

// ---------------------------------------------------------------------------
// The writer: this rank's segments into the datasets' raw data, the checksums
// of what it wrote, fsync. Touches no MPI and no HDF5, so that it may run on a
// thread beside training ([checkpoint] async) or beside the checksums.

typedef struct Part {       // what a segment is: a part of tensor i of state kind k
    int k, i;
    size_t first;           // its first element within the tensor
} Part;

typedef struct Writer {
    const Model *m;
    char path[1200];
    haddr_t *offs;          // (DS_KINDS, ntensors) file offsets of the datasets' raw data
    CkptSeg *segs;          // (cap) this rank's tensor parts: file offset, memory, bytes ...
    Part *parts;            //   ... and what each one is
    int nsegs, nsegs_params, cap;   // nsegs_params: the first ones, of /params
    uint64_t *sums;         // (DS_KINDS, ntensors): this rank's checksums
    int sums_here;          // the writer computes the checksums too
    double pause_s;         // test only: after /params
    double stall_s;         //   ... or this rank stalls (a stuck rank)
    int err;                // nonzero: the write failed ...
    char why[700];          //   ... for this reason
    CkptIoStats io;
    pthread_t thread;
    int running;
    atomic_int done;
} Writer;

static void sum_segs(const Writer *w, uint64_t *sums) {
    for (int s = 0; s < w->nsegs; s++) {
        const Part *p = &w->parts[s];
        sums[p->k * w->m->ntensors + p->i] += ckpt_checksum((const float *)w->segs[s].mem,
                                                            w->segs[s].bytes / sizeof(float), p->first);
    }
}

#define CKPT_READ_BATCH ((size_t)32 << 20)      // bytes: the last batch's checksums are all that trail the reads

// A load reads tensor parts in batches; the checksums of one batch (over the
// parts' owned elements) run on a thread while the next batch is read.
typedef struct ReadPart {
    int k, i;               // state kind, tensor
    size_t a, b;            // elements [a, b) of the flat layout ...
    float *dst;             //   ... land here (element a at dst[0])
} ReadPart;

typedef struct SumBatch {
    const Model *m;
    const ReadPart *parts;
    int n;
    Piece (*owned)[CKPT_MAX_PIECES];    // (DS_KINDS) this rank's owned pieces per kind ...
    const int *nowned;                  //   ... and how many
    uint64_t *sums;
    pthread_t thread;
    int running;
} SumBatch;

static void *sum_batch(void *arg) {
    const SumBatch *s = arg;
    for (int j = 0; j < s->n; j++) {
        const ReadPart *p = &s->parts[j];
        const ParamTensor *t = &s->m->tensors[p->i];
        for (int o = 0; o < s->nowned[p->k]; o++) {
            const Piece *w = &s->owned[p->k][o];
            size_t lo = p->a > w->begin ? p->a : w->begin, hi = p->b < w->end ? p->b : w->end;
            if (hi <= lo || w->buf + (lo - w->begin) != p->dst + (lo - p->a)) continue;     // another buffer's range
            s->sums[p->k * s->m->ntensors + p->i] += ckpt_checksum(p->dst + (lo - p->a), hi - lo, lo - t->offset);
        }
    }
    return NULL;
}

static void join_batch(SumBatch *s) {
    if (s->running) pthread_join(s->thread, NULL);
    s->running = 0;
}

static int write_segs(Writer *w, int from, int to) {
    CkptIoStats st;
    if (ckpt_io_write(w->path, w->segs + from, to - from, &st, w->why, sizeof w->why) != 0) return -1;
    w->io.direct_bytes += st.direct_bytes;
    w->io.bounced_bytes += st.bounced_bytes;
    w->io.buffered_bytes += st.buffered_bytes;
    return 0;
}

static void *writer_main(void *arg) {
    Writer *w = arg;
    // In the background the writer yields the cores to training (Linux: nice is per thread);
    // a failure only leaves it at the caller's priority.
    if (w->sums_here) {
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 10);
        omp_set_num_threads(1);     // its checksums on this thread alone (the setting is per thread)
    }
    memset(&w->io, 0, sizeof w->io);
    int split = w->pause_s > 0 || w->stall_s > 0 ? w->nsegs_params : w->nsegs;
    w->err = write_segs(w, 0, split) != 0;
    if (!w->err && w->pause_s > 0) {
        log_info("checkpoint: test pause %.0f s while writing %s\n", w->pause_s, w->path);
        usleep((useconds_t)(w->pause_s * 1e6));
    }
    if (!w->err && w->stall_s > 0) {
        log_warn("test fault: stalling %.0f s while writing %s", w->stall_s, w->path);
        struct timespec ts = {(time_t)w->stall_s, 0};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
    }
    if (!w->err && split < w->nsegs) w->err = write_segs(w, split, w->nsegs) != 0;
    if (!w->err && w->sums_here) sum_segs(w, w->sums);
    atomic_store(&w->done, 1);
    return NULL;
}

// A load's file, opened by each rank on its own, read only, through the POSIX
// driver: the metadata a rank reads and the datasets HDF5 converts are
// independent reads, and the states go by ckpt_io, so MPI-IO brought nothing
// but its collective open (0.06-0.13 s at 4 ranks on 2 cores; this: 0.01 s).
static hid_t open_read(const char *path, char *why, size_t n) {
    h5_quiet();
    errno = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    int err = errno;
    if (f < 0) h5_reason(err, why, n);
    return f;
}

static void sync_path(const char *path, int directory) {
    int fd = open(path, directory ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    SYS_CHECK(fd >= 0, "cannot open '%s' to sync it: %s", path, strerror(errno));
    SYS_CHECK(fsync(fd) == 0, "fsync of '%s' failed: %s", path, strerror(errno));
    close(fd);
}

// "step-NNNNNN.h5" (digits only) -> NNNNNN.
static int parse_step(const char *name, int64_t *step) {
    if (strncmp(name, "step-", 5) != 0) return 0;
    const char *p = name + 5;
    int64_t s = 0;
    int digits = 0;
    for (; *p >= '0' && *p <= '9'; p++, digits++) {
        if (s > (INT64_MAX - 9) / 10) return 0;
        s = s * 10 + (*p - '0');
    }
    if (!digits || strcmp(p, ".h5") != 0) return 0;
    *step = s;
    return 1;
}

// ---------------------------------------------------------------------------
// What this job wrote, and pruning it.

static void pending_free(struct CkptPending *p);

void ckpt_job_free(CkptJob *j) {
    pending_free(j->pending);
    free(j->steps);
    memset(j, 0, sizeof *j);
}

static void job_add(CkptJob *j, int64_t step) {
    size_t k = 0;
    while (k < j->n && j->steps[k] != step) k++;
    if (k < j->n) {             // written again: it is now the newest
        memmove(j->steps + k, j->steps + k + 1, (j->n - k - 1) * sizeof *j->steps);
        j->n--;
    }
    if (j->n == j->cap) {
        size_t cap = j->cap ? 2 * j->cap : 16;
        int64_t *p = realloc(j->steps, cap * sizeof *p);
        SYS_CHECK(p, "out of memory tracking checkpoints");
        j->steps = p;
        j->cap = cap;
    }
    j->steps[j->n++] = step;
}

// Removes leftovers of crashed writes (step-*.h5.tmp: never a checkpoint),
// then the oldest checkpoints this job wrote beyond `keep`. Checkpoints of
// earlier jobs in the same directory are never touched.
static void prune(const char *dir, CkptJob *j, int64_t keep) {
    DIR *dd = opendir(dir);
    if (dd) {
        for (struct dirent *e; (e = readdir(dd)); ) {
            size_t len = strlen(e->d_name);
            if (strncmp(e->d_name, "step-", 5) != 0 || len < 7 || strcmp(e->d_name + len - 7, ".h5.tmp") != 0) continue;
            char path[1200];
            if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= (int)sizeof path) continue;   // not ours
            unlink(path);
        }
        closedir(dd);
    }
    while (keep > 0 && j->n > (size_t)keep) {
        char path[1200];
        snprintf(path, sizeof path, "%s/step-%06lld.h5", dir, (long long)j->steps[0]);
        if (unlink(path) != 0 && errno != ENOENT) log_warn("cannot delete old checkpoint '%s': %s", path, strerror(errno));
        memmove(j->steps, j->steps + 1, (j->n - 1) * sizeof *j->steps);
        j->n--;
    }
}

// ---------------------------------------------------------------------------
// /meta: its checksum (see ckpt.h) and its attributes, each checked.

typedef struct Names {
    char **v;
    size_t n, cap;
    int overflow;
} Names;

static herr_t collect_name(hid_t loc, const char *name, const H5A_info_t *info, void *data) {
    (void)loc, (void)info;
    Names *nm = data;
    if (nm->n >= META_MAX_ATTRS) {
        nm->overflow = 1;
        return 1;
    }
    if (nm->n == nm->cap) {
        size_t cap = nm->cap ? 2 * nm->cap : 64;
        char **p = realloc(nm->v, cap * sizeof *p);
        if (!p) return -1;
        nm->v = p;
        nm->cap = cap;
    }
    if (!(nm->v[nm->n] = strdup(name))) return -1;
    nm->n++;
    return 0;
}

static int cmp_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t fnv_u64(uint64_t h, uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)(v >> (8 * i));
    return fnv(h, b, 8);
}

// Folds attribute `name` into h; -1 with why if it is not one number or string.
static int digest_attr(hid_t meta, const char *name, uint64_t *h, char *why, size_t n) {
    int kind = h5_attr_kind(meta, name), rc = H5A_BAD;
    unsigned char tag = (unsigned char)kind;
    uint64_t x = 0;
    char *str = NULL;
    if (kind == 'i') {
        int64_t v;
        rc = h5_read_attr_i64(meta, name, &v);
        x = (uint64_t)v;
    } else if (kind == 'u') {
        rc = h5_read_attr_u64(meta, name, &x);
    } else if (kind == 'f') {
        double v;
        rc = h5_read_attr_f64(meta, name, &v);
        memcpy(&x, &v, sizeof x);
    } else if (kind == 's') {
        rc = h5_read_attr_strdup(meta, name, META_MAX_STRING, &str);
    }
    if (rc != H5A_OK) {
        char what[128];
        h5_attr_describe(meta, name, what, sizeof what);
        snprintf(why, n, "/meta attribute '%.100s' is %s, not one number or string", name, what);
        return -1;
    }
    size_t len = strlen(name);
    *h = fnv_u64(*h, len);
    *h = fnv(*h, name, len);
    *h = fnv(*h, &tag, 1);
    if (str) {
        *h = fnv_u64(*h, strlen(str));
        *h = fnv(*h, str, strlen(str));
        free(str);
    } else {
        *h = fnv_u64(*h, 8);
        *h = fnv_u64(*h, x);
    }
    return 0;
}

// The checksum of every attribute of /meta but meta_checksum itself.
static int meta_digest(hid_t meta, uint64_t *sum, char *why, size_t n) {
    Names nm = {0};
    hsize_t idx = 0;
    herr_t r;
    H5E_BEGIN_TRY { r = H5Aiterate2(meta, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_name, &nm); } H5E_END_TRY;
    int rc = 0;
    if (r < 0 || nm.overflow) {
        if (nm.overflow) snprintf(why, n, "/meta holds more than %d attributes", META_MAX_ATTRS);
        else snprintf(why, n, "/meta's attributes cannot be listed");
        rc = -1;
    }
    if (rc == 0) {
        qsort(nm.v, nm.n, sizeof *nm.v, cmp_name);
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < nm.n && rc == 0; i++)
            if (strcmp(nm.v[i], META_CHECKSUM) != 0) rc = digest_attr(meta, nm.v[i], &h, why, n);
        *sum = h;
    }
    for (size_t i = 0; i < nm.n; i++) free(nm.v[i]);
    free(nm.v);
    return rc;
}

typedef struct MetaInfo {
    int64_t version;        // 1: before meta_checksum
    GPTShape s;
    int64_t step, data_cursor, optim_t, seed;
    int64_t data_rows;      // -1: written before the cursor was kept in rows
    double tokens_seen;
    char layout[128];
} MetaInfo;

static int bad_int(hid_t meta, const char *name, char *why, size_t n) {
    char what[128];
    h5_attr_describe(meta, name, what, sizeof what);
    snprintf(why, n, "/meta attribute %s is %s, not one integer", name, what);
    return -1;
}

// Reads and range-checks every attribute the reader uses. -1 with why naming it.
static int meta_read(hid_t meta, MetaInfo *mi, char *why, size_t n) {
    memset(mi, 0, sizeof *mi);
    int rc = h5_read_attr_i64(meta, "format_version", &mi->version);
    if (rc == H5A_MISSING) mi->version = 1;
    else if (rc != H5A_OK) return bad_int(meta, "format_version", why, n);
    if (mi->version < 1 || mi->version > CKPT_FORMAT) {
        snprintf(why, n, "/meta format_version = %lld; this Partita reads formats 1 to %d", (long long)mi->version,
                 CKPT_FORMAT);
        return -1;
    }
    char w[300];
    if (weights_read_shape(meta, &mi->s, w, sizeof w) != 0) {
        snprintf(why, n, "/meta: %s", w);
        return -1;
    }
    struct { const char *attr; int64_t *dst, lo, hi; } ints[] = {
        {"step", &mi->step, 0, CKPT_MAX_STEP}, {"data_cursor", &mi->data_cursor, 0, INT64_MAX},
        {"optim_t", &mi->optim_t, 0, INT32_MAX}, {"seed", &mi->seed, INT64_MIN, INT64_MAX}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        if (h5_read_attr_i64(meta, ints[i].attr, ints[i].dst) != H5A_OK) return bad_int(meta, ints[i].attr, why, n);
        if (*ints[i].dst < ints[i].lo || *ints[i].dst > ints[i].hi) {
            snprintf(why, n, "/meta attribute %s = %lld is outside [%lld, %lld]", ints[i].attr,
                     (long long)*ints[i].dst, (long long)ints[i].lo, (long long)ints[i].hi);
            return -1;
        }
    }
    rc = h5_read_attr_i64(meta, "data_rows", &mi->data_rows);
    if (rc == H5A_MISSING) mi->data_rows = -1;
    else if (rc != H5A_OK) return bad_int(meta, "data_rows", why, n);
    else if (mi->data_rows < -1) {
        snprintf(why, n, "/meta attribute data_rows = %lld is negative", (long long)mi->data_rows);
        return -1;
    }
    rc = h5_read_attr_f64(meta, "tokens_seen", &mi->tokens_seen);
    if (rc == H5A_MISSING) mi->tokens_seen = 0;
    else if (rc != H5A_OK || !isfinite(mi->tokens_seen) || mi->tokens_seen < 0) {
        char what[128];
        h5_attr_describe(meta, "tokens_seen", what, sizeof what);
        snprintf(why, n, "/meta attribute tokens_seen is %s%s", rc == H5A_OK ? "negative or not finite: " : what,
                 rc == H5A_OK ? "" : ", not one number");
        return -1;
    }
    rc = h5_read_attr_str(meta, "layout", mi->layout, sizeof mi->layout);
    if (rc == H5A_MISSING) snprintf(mi->layout, sizeof mi->layout, "?");
    else if (rc != H5A_OK) {
        char what[128];
        h5_attr_describe(meta, "layout", what, sizeof what);
        snprintf(why, n, "/meta attribute layout is %s, not a string of at most %zu bytes", what, sizeof mi->layout - 1);
        return -1;
    }
    return 0;
}

// Verifies meta_checksum (format 2). 0 ok, 1 none stored (format 1), -1 with why.
static int meta_verify(hid_t meta, int64_t version, char *why, size_t n) {
    uint64_t stored = 0, sum = 0;
    int rc = h5_read_attr_u64(meta, META_CHECKSUM, &stored);
    if (rc == H5A_MISSING && version < 2) return 1;
    if (rc == H5A_MISSING) {
        snprintf(why, n, "/meta lacks %s (format_version %lld has one)", META_CHECKSUM, (long long)version);
        return -1;
    }
    if (rc != H5A_OK) return bad_int(meta, META_CHECKSUM, why, n);
    if (meta_digest(meta, &sum, why, n) != 0) return -1;
    if (sum != stored) {
        snprintf(why, n, "meta checksum mismatch: an attribute of /meta (step, optim_t, the deck, a dataset checksum...) "
                 "was changed, added or removed after the write (stored %016llx, computed %016llx)",
                 (unsigned long long)stored, (unsigned long long)sum);
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// /meta and publishing

// Format 3: /meta index, one line per tensor: "name offset numel", the offset
// with every tensor of the global (ep = 1) table packed in table order: the
// tensors' order in the file, not the memory layout, which starts the large
// ones on pages (model.h) and is what ZeRO shards.
static void write_index(hid_t meta, const Model *m) {
    size_t cap = 64 * (size_t)m->ntensors + 1, len = 0;
    char *text = xmalloc(cap, "checkpoint index");
    text[0] = 0;
    size_t at = 0;      // the global layout: every tensor in table order (a rank's own may skip experts)
    for (int i = 0; i < m->ntensors && len < cap; i++) {
        len += (size_t)snprintf(text + len, cap - len, "%s %zu %zu\n", m->tensors[i].name, at, m->tensors[i].numel);
        at += m->tensors[i].numel;
    }
    h5_attr_str(meta, "index", text);
    free(text);
}

static void write_meta(hid_t f, const Zero *z, int64_t optim_t, const Deck *d, const char *deck_text, const CkptState *st,
                       const uint64_t *sums) {
    const Model *m = z->m;
    const Config *c = &d->cfg;
    hid_t meta = h5_group(f, "meta");
    h5_attr_i64(meta, "format_version", CKPT_FORMAT);
    h5_attr_i64(meta, "step", st->step);
    h5_attr_f64(meta, "tokens_seen", st->tokens_seen);
    h5_attr_i64(meta, "data_cursor", st->data_cursor);
    h5_attr_i64(meta, "data_rows", st->data_rows);
    h5_attr_i64(meta, "seed", c->run.seed);
    h5_attr_i64(meta, "optim_t", optim_t);
    weights_write_shape(meta, m);
    h5_attr_str(meta, "deck", deck_text);
    char layout[128];
    if (m->ep_size > 1)
        snprintf(layout, sizeof layout, "ranks=%d dp=%d ep=%d zero_stage=%d", z->p, z->p, m->ep_size, z->stage);
    else
        snprintf(layout, sizeof layout, "ranks=%d dp=%d zero_stage=%d", z->p, z->p, z->stage);
    h5_attr_str(meta, "layout", layout);
    write_index(meta, m);
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
    // Last: the checksum of all of the above, the same on every rank.
    uint64_t digest = 0;
    char why[400];
    if (meta_digest(meta, &digest, why, sizeof why) != 0) FATAL(NULL, "checkpoint /meta: %s", why);
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(meta, META_CHECKSUM, H5T_STD_U64LE, sp, H5P_DEFAULT, H5P_DEFAULT);
    H5_CHECK(a);
    H5_CHECK(H5Awrite(a, H5T_NATIVE_UINT64, &digest));
    H5_CHECK(H5Aclose(a));
    H5_CHECK(H5Sclose(sp));
    H5_CHECK(H5Gclose(meta));
}

// Rank 0: the synced file gets its real name, then `latest` names it.
static void publish(const char *dir, const char *tmp, const char *path, int64_t step) {
    const char *hint = "check the checkpoint directory's space and permissions";
    sync_path(tmp, 0);
    if (rename(tmp, path) != 0) FATAL(hint, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    sync_path(dir, 1);
    char latest[1100], ltmp[1200];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    snprintf(ltmp, sizeof ltmp, "%s.tmp", latest);
    FILE *lf = fopen(ltmp, "w");
    if (!lf) FATAL(hint, "cannot write '%s': %s", ltmp, strerror(errno));
    fprintf(lf, "step-%06lld.h5\n", (long long)step);
    if (fflush(lf) != 0 || fsync(fileno(lf)) != 0) FATAL(hint, "cannot write '%s': %s", ltmp, strerror(errno));
    if (fclose(lf) != 0) FATAL(hint, "cannot write '%s': %s", ltmp, strerror(errno));
    if (rename(ltmp, latest) != 0) FATAL(hint, "cannot rename '%s' to '%s': %s", ltmp, latest, strerror(errno));
    sync_path(dir, 1);
}

// ---------------------------------------------------------------------------
// Writing: the layout (collective), the writer (this rank's bytes), then
// /meta and publishing (collective). [checkpoint] async runs the writer on a
// thread from a host copy of the states and finishes at a later step boundary.

#define CKPT_TIMEOUT_HINT "a rank is stopped or the file system hangs; the previous checkpoint is whole and " \
    "<dir>/latest names it; raise [comm] timeout_s if checkpoints take this long"

// One checkpoint being written.
typedef struct CkptPending {
    Writer w;
    const Zero *z;
    const Deck *d;
    const char *deck_text;
    char dir[1024], path[1100], tmp[1200];
    CkptState st;
    int64_t optim_t;        // at the step boundary (training moves on while an async write runs)
    int active;             // started, not yet published
    char *snap;             // async: the host copy of this rank's segments, each placed at its
                            // file offset's position within a block (ckpt_io_place: no bounce)
    size_t snap_cap;        //   its capacity in bytes (kept across checkpoints)
} CkptPending;

// The file system block of dir (the alignment of the datasets' raw data).
static hsize_t fs_block(const char *dir) {
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0 || sv.f_bsize < 512 || sv.f_bsize > ((unsigned long)1 << 24)) return 4096;
    return (hsize_t)sv.f_bsize;
}

// Collective: creates tmp with every dataset allocated (contiguous, aligned,
// no fill) and returns the file offset of each one's raw data in offs.
static void create_layout(CkptPending *p, Watchdog *wd) {
    const Zero *z = p->z;
    const Model *m = z->m;
    char why[600];
    h5_quiet();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(fapl);
    H5_CHECK(H5Pset_fapl_mpio(fapl, z->comm->comm, MPI_INFO_NULL));
    h5_checksummed_format(fapl);
    H5_CHECK(H5Pset_alignment(fapl, MODEL_ALIGN_BYTES, fs_block(p->dir)));   // as the layout aligns them (model.h)
    H5_CHECK(H5Pset_meta_block_size(fapl, 1 << 20));               // object headers together, before the data
    errno = 0;
    hid_t f = H5Fcreate(p->tmp, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    int err = errno;
    H5_CHECK(H5Pclose(fapl));
    if (f < 0) {
        h5_reason(err, why, sizeof why);
        FATAL_ALL("check [checkpoint] dir: it must be a writable directory with space", "cannot create checkpoint '%s': %s",
                  p->tmp, why);
    }
    watchdog_phase(wd, "laying out the datasets");
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5_CHECK(dcpl);
    H5_CHECK(H5Pset_layout(dcpl, H5D_CONTIGUOUS));
    H5_CHECK(H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY));
    H5_CHECK(H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER));
    for (int k = 0; k < DS_KINDS; k++) {
        H5_CHECK(H5Gclose(h5_group(f, groups[k])));
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            char name[160];
            snprintf(name, sizeof name, "%s/%s", groups[k], t->name);
            hsize_t dims[2] = {(hsize_t)t->shape[0], (hsize_t)t->shape[1]};
            hid_t sp = H5Screate_simple(t->ndim, dims, NULL);
            H5_CHECK(sp);
            errno = 0;
            hid_t ds = H5Dcreate2(f, name, H5T_IEEE_F32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
            if (ds < 0) {
                h5_reason(errno, why, sizeof why);
                FATAL("check the file system's space (df) and health", "checkpoint '%s': cannot create /%s: %s",
                      p->tmp, name, why);
            }
            haddr_t off = H5Dget_offset(ds);
            if (off == HADDR_UNDEF) FATAL(NULL, "checkpoint '%s': /%s has no storage after creation", p->tmp, name);
            p->w.offs[k * m->ntensors + i] = off;
            H5_CHECK(H5Sclose(sp));
            H5_CHECK(H5Dclose(ds));
        }
    }
    H5_CHECK(H5Pclose(dcpl));
    watchdog_phase(wd, "closing the laid-out file");
    errno = 0;
    if (H5Fclose(f) < 0) {
        h5_reason(errno, why, sizeof why);
        FATAL("check the file system's space (df) and health; the previous checkpoint is untouched",
              "checkpoint write of '%s' failed when laying it out: %s", p->tmp, why);
    }
}

// The writer's segments: this rank's part of each tensor of its owned pieces,
// kind by kind in file order, from the live buffers or (async) from copies in
// the snapshot buffer, taken now.
static void take_segments(CkptPending *p, int copy) {
    Writer *w = &p->w;
    const Model *m = p->z->m;
    w->nsegs = 0;
    for (int k = 0; k < DS_KINDS; k++) {
        Piece pieces[CKPT_MAX_PIECES];
        int np = owned_pieces(p->z, k, pieces);
        for (int j = 0; j < np; j++)
            for (int i = 0; i < m->ntensors; i++) {
                const ParamTensor *t = &m->tensors[i];
                size_t a, b;
                if (!tensor_part(t, &pieces[j], &a, &b)) continue;
                if (w->nsegs >= w->cap) FATAL(NULL, "checkpoint: more than %d tensor parts on one rank", w->cap);
                w->segs[w->nsegs] = (CkptSeg){w->offs[k * m->ntensors + i] + (a - t->offset) * sizeof(float),
                                              (char *)(pieces[j].buf + (a - pieces[j].begin)), (b - a) * sizeof(float)};
                w->parts[w->nsegs++] = (Part){k, i, a - t->offset};
            }
        if (k == DS_PARAMS) w->nsegs_params = w->nsegs;
    }
    if (!copy) return;
    size_t at = 0;
    for (int s = 0; s < w->nsegs; s++) at = ckpt_io_place(at, w->segs[s].off) + w->segs[s].bytes;
    if (at > p->snap_cap) {
        aio_buffer_free(p->snap);
        p->snap = aio_buffer(at ? at : 1, CKPT_IO_ALIGN);
        if (!p->snap) FATAL("lower the model size or set [checkpoint] async = false",
                            "out of memory for the asynchronous checkpoint buffer (%.2f GB)", (double)at / 1e9);
        p->snap_cap = at;
    }
    at = 0;
    for (int s = 0; s < w->nsegs; s++) {
        CkptSeg *g = &w->segs[s];
        at = ckpt_io_place(at, g->off);
        memcpy(p->snap + at, g->mem, g->bytes);
        g->mem = p->snap + at;
        at += g->bytes;
    }
}

static void start_writer(CkptPending *p, int async) {
    Writer *w = &p->w;
    const Config *c = &p->d->cfg;
    snprintf(w->path, sizeof w->path, "%s", p->tmp);
    w->m = p->z->m;
    w->err = 0;
    w->why[0] = 0;
    w->sums_here = async;
    memset(w->sums, 0, sizeof(uint64_t) * (size_t)w->m->ntensors * DS_KINDS);
    w->pause_s = c->checkpoint.test_pause_step == p->st.step ? c->checkpoint.test_pause_s : 0;
    w->stall_s = c->checkpoint.fault_stall_rank == p->z->r && c->checkpoint.fault_stall_step == p->st.step
                 ? c->checkpoint.fault_stall_s : 0;
    atomic_store(&w->done, 0);
    int rc = pthread_create(&w->thread, NULL, writer_main, w);
    SYS_CHECK(rc == 0, "cannot start the checkpoint writer thread: %s", strerror(rc));
    w->running = 1;
}

static void join_writer(CkptPending *p) {
    if (!p->w.running) return;
    pthread_join(p->w.thread, NULL);
    p->w.running = 0;
    if (p->w.err)
        FATAL("check the file system's space (df) and health; the previous checkpoint is untouched",
              "checkpoint write of '%s' failed writing the states: %s", p->tmp, p->w.why);
}

// Rank 0: /meta into the closed, fully written file (serial HDF5).
static void meta_into(CkptPending *p, const uint64_t *sums) {
    char why[600];
    h5_quiet();
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    H5_CHECK(fapl);
    h5_checksummed_format(fapl);
    errno = 0;
    hid_t f = H5Fopen(p->tmp, H5F_ACC_RDWR, fapl);
    int err = errno;
    H5_CHECK(H5Pclose(fapl));
    if (f < 0) {
        h5_reason(err, why, sizeof why);
        FATAL("check the file system's space (df) and health; the previous checkpoint is untouched",
              "checkpoint write of '%s' failed reopening it for /meta: %s", p->tmp, why);
    }
    write_meta(f, p->z, p->optim_t, p->d, p->deck_text, &p->st, sums);
    errno = 0;
    if (H5Fclose(f) < 0) {
        h5_reason(errno, why, sizeof why);
        FATAL("check the file system's space (df) and health; the previous checkpoint is untouched",
              "checkpoint write of '%s' failed when writing /meta: %s", p->tmp, why);
    }
}

// Collective: every rank's writer is done; /meta, sync, rename, latest, prune.
static void finish(CkptJob *job, Watchdog *wd) {
    CkptPending *p = job->pending;
    const Model *m = p->z->m;
    watchdog_phase(wd, "waiting for this rank's writes");
    join_writer(p);
    job->direct_bytes = p->w.io.direct_bytes;
    job->buffered_bytes = p->w.io.buffered_bytes;
    watchdog_phase(wd, "summing checksums: waiting for the other ranks");
    int ns = m->ntensors * DS_KINDS;
    MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, p->w.sums, ns, MPI_UINT64_T, MPI_SUM, p->z->comm->comm));
    if (p->z->r == 0) {
        watchdog_phase(wd, "writing /meta");
        meta_into(p, p->w.sums);
        watchdog_phase(wd, "syncing, renaming and updating latest");
        publish(p->dir, p->tmp, p->path, p->st.step);
        job_add(job, p->st.step);
        prune(p->dir, job, p->d->cfg.checkpoint.keep);
    }
    watchdog_phase(wd, "waiting for rank 0 to publish the checkpoint");
    MPI_CHECK(MPI_Barrier(p->z->comm->comm));
    p->active = 0;
}

static void pending_free(CkptPending *p) {
    if (!p) return;
    if (p->w.running) pthread_join(p->w.thread, NULL);     // an error path: the file stays a .tmp
    free(p->w.offs);
    free(p->w.sums);
    free(p->w.segs);
    free(p->w.parts);
    aio_buffer_free(p->snap);
    free(p);
}

static CkptPending *pending_for(CkptJob *job, const Zero *z) {
    if (!job->pending) {
        job->pending = xcalloc(sizeof *job->pending, "checkpoint state");
    }
    CkptPending *p = job->pending;
    if (!p->w.offs) {
        size_t n = (size_t)z->m->ntensors * DS_KINDS;
        p->w.offs = xcalloc(sizeof(haddr_t) * n, "dataset offsets");
        p->w.sums = xcalloc(sizeof(uint64_t) * n, "checksums");
        p->w.cap = (int)n * CKPT_MAX_PIECES;
        p->w.segs = xcalloc(sizeof(CkptSeg) * (size_t)p->w.cap, "checkpoint segments");
        p->w.parts = xcalloc(sizeof(Part) * (size_t)p->w.cap, "checkpoint segments");
    }
    return p;
}

void ckpt_write(CkptJob *job, const Zero *z, const Deck *d, const char *deck_text, const char *dir,
                const CkptState *st) {
    const Config *c = &d->cfg;
    ckpt_flush(job);        // the previous asynchronous checkpoint first
    CkptPending *p = pending_for(job, z);
    p->z = z;
    p->d = d;
    p->deck_text = deck_text;
    p->st = *st;
    p->optim_t = z->optim.t;
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    snprintf(p->path, sizeof p->path, "%s/step-%06lld.h5", dir, (long long)st->step);
    snprintf(p->tmp, sizeof p->tmp, "%s.tmp", p->path);
    int async = c->checkpoint.async;
    Watchdog wd;
    watchdog_start(&wd, c->comm.timeout_s, CKPT_TIMEOUT_HINT, "checkpoint write of '%s'", p->tmp);
    watchdog_phase(&wd, "waiting for every rank to reach the checkpoint");
    if (z->r == 0) make_dirs(dir, "set [checkpoint] dir to a writable directory");
    MPI_CHECK(MPI_Barrier(z->comm->comm));
    watchdog_phase(&wd, "creating the file");
    double t0 = MPI_Wtime();
    create_layout(p, &wd);
    double t1 = MPI_Wtime();
    watchdog_phase(&wd, async ? "copying the states to the host buffer" : "writing the states");
    take_segments(p, async);
    start_writer(p, async);
    p->active = 1;
    job->layout_s = t1 - t0;
    job->data_s = MPI_Wtime() - t1;
    job->publish_s = 0;
    if (!async) {
        // The checksums here while the writer thread writes the same bytes.
        sum_segs(&p->w, p->w.sums);
        join_writer(p);
        double t2 = MPI_Wtime();
        job->data_s = t2 - t1;
        finish(job, &wd);
        job->publish_s = MPI_Wtime() - t2;
    }
    watchdog_stop(&wd);
}

double ckpt_direct_share(const CkptJob *job) {
    uint64_t all = job->direct_bytes + job->buffered_bytes;
    return all ? (double)job->direct_bytes / (double)all : 0.0;
}

void ckpt_poll(CkptJob *job) {
    CkptPending *p = job->pending;
    if (!p || !p->active) return;
    int mine = atomic_load(&p->w.done), all = 0;
    MPI_CHECK(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, p->z->comm->comm));
    if (!all) return;
    Watchdog wd;
    watchdog_start(&wd, p->d->cfg.comm.timeout_s, CKPT_TIMEOUT_HINT, "checkpoint write of '%s'", p->tmp);
    finish(job, &wd);
    watchdog_stop(&wd);
    log_info("checkpoint: %s written in the background (%.0f%% by O_DIRECT)\n", p->path, 100 * ckpt_direct_share(job));
}

void ckpt_flush(CkptJob *job) {
    CkptPending *p = job->pending;
    if (!p || !p->active) return;
    Watchdog wd;
    watchdog_start(&wd, p->d->cfg.comm.timeout_s, CKPT_TIMEOUT_HINT, "checkpoint write of '%s'", p->tmp);
    finish(job, &wd);
    watchdog_stop(&wd);
    log_info("checkpoint: %s written in the background (%.0f%% by O_DIRECT)\n", p->path, 100 * ckpt_direct_share(job));
}

// ---------------------------------------------------------------------------
// Reading

// Checks the shape the file was written for against the deck's (fatal: the
// file is whole, the deck is wrong).
static void check_shape(const GPTShape *f, const Model *m, const Deck *d, const char *path) {
    const GPTShape *s = &m->s;
    struct { const char *attr, *key; int64_t file, want; } want[] = {
        {"n_layer", "model.layers", f->L, s->L}, {"n_embd", "model.d_model", f->C, s->C},
        {"n_head", "model.heads", f->NH, s->NH}, {"vocab_size", "model.vocab", f->V, s->V},
        {"padded_vocab_size", "model.vocab_pad", f->Vp, s->Vp}, {"n_positions", "model.seq_len", f->maxT, s->maxT},
        {"mlp_hidden", "model.mlp_ratio", f->H, s->H}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        if (want[i].file == want[i].want) continue;
        char where[600];
        FATAL_ALL("resume with the deck that wrote it, or set [checkpoint] resume = none",
                  "checkpoint '%s' was written for %s = %lld, but the deck's %s gives %lld (%s)", path, want[i].attr,
                  (long long)want[i].file, want[i].key, (long long)want[i].want,
                  deck_where(d, want[i].key, where, sizeof where));
    }
}

// Makes a verdict collective: -1 and the lowest failing rank's why if any
// rank failed, else 0.
static int agree(MPI_Comm comm, int rc, char *why, size_t n) {
    int me, size, first;
    MPI_CHECK(MPI_Comm_rank(comm, &me));
    MPI_CHECK(MPI_Comm_size(comm, &size));
    int mine = rc != 0 ? me : size;
    first = mine;
    comm_allreduce_napping(comm, &first, 1, MPI_INT, MPI_MIN);
    if (first == size) return 0;
    if (n > (size_t)INT32_MAX) n = INT32_MAX;
    MPI_CHECK(MPI_Bcast(why, (int)n, MPI_CHAR, first, comm));
    why[n - 1] = 0;
    return -1;
}

// Every dataset there, float, with the model's shape, and its checksum stored.
static int check_datasets(hid_t f, hid_t meta, const Model *m, char *why, size_t n) {
    for (int k = 0; k < DS_KINDS; k++)
        for (int i = 0; i < m->ntensors; i++) {
            const ParamTensor *t = &m->tensors[i];
            char name[160], key[180];
            snprintf(name, sizeof name, "%s/%s", groups[k], t->name);
            snprintf(key, sizeof key, "checksum:/%s", name);
            char got[160], want[160];
            hid_t ds;
            int rc = weights_open_tensor(f, name, t, &ds, got, want, sizeof got);
            if (ds >= 0) H5Dclose(ds);
            uint64_t sum;
            if (rc == WEIGHTS_TENSOR_MISSING)
                snprintf(why, n, "it lacks the dataset /%s", name);
            else if (rc == WEIGHTS_TENSOR_NOT_DATASET)
                snprintf(why, n, "/%s is not a dataset", name);
            else if (rc == WEIGHTS_TENSOR_NOT_FLOAT)
                snprintf(why, n, "/%s is not a float dataset", name);
            else if (rc == WEIGHTS_TENSOR_BAD_SHAPE)
                snprintf(why, n, "/%s has shape %s, the model expects %s", name, got, want);
            else if (h5_read_attr_u64(meta, key, &sum) != H5A_OK)
                snprintf(why, n, "/meta lacks a valid %s", key);
            else
                continue;
            return -1;
        }
    return 0;
}

// Tensor t's part [a, b) of the flat layout from dataset `name` into dst: a
// segment to read by position (into segs[*nsegs]) when the dataset is raw
// float32 (every format Partita wrote), else read now through HDF5
// (converting). -1 on failure.
static int read_part(hid_t f, const char *name, const ParamTensor *t, size_t a, size_t b, float *dst,
                     CkptSeg *segs, int *nsegs) {
    hid_t ds;
    H5E_BEGIN_TRY { ds = H5Dopen2(f, name, H5P_DEFAULT); } H5E_END_TRY;
    if (ds < 0) return -1;
    haddr_t off = raw_offset(ds);
    int rc = -1;
    if (off != HADDR_UNDEF) {
        segs[(*nsegs)++] = (CkptSeg){off + (a - t->offset) * sizeof(float), (char *)dst, (b - a) * sizeof(float)};
        rc = 0;
    } else {
        hid_t fs = H5Dget_space(ds);
        hsize_t n = b - a;
        hid_t ms = H5Screate_simple(1, &n, NULL);
        if (fs >= 0 && ms >= 0) {
            select_range(fs, t, a - t->offset, b - t->offset);
            herr_t r;
            H5E_BEGIN_TRY { r = H5Dread(ds, H5T_NATIVE_FLOAT, ms, fs, H5P_DEFAULT, dst); } H5E_END_TRY;
            rc = r < 0 ? -1 : 0;
        }
        if (ms >= 0) H5Sclose(ms);
        if (fs >= 0) H5Sclose(fs);
    }
    H5Dclose(ds);
    H5Eclear2(H5E_DEFAULT);
    return rc;
}

// Cuts the last part (read by position: its segment is the last one) into
// pieces of CKPT_READ_BATCH bytes, so that a tensor larger than a batch (wte)
// is checksummed piece by piece while the next piece arrives, not all at once
// after it. The cuts are a whole number of blocks into the part: a piece's
// file offset sits in a block where its memory sits in a page, as the part's did.
static void split_part(ReadPart *parts, CkptSeg *segs, int *seg_of, int *nparts, int *nsegs) {
    const size_t step = CKPT_READ_BATCH / sizeof(float);
    for (ReadPart *p = &parts[*nparts - 1]; p->b - p->a > step; p = &parts[*nparts - 1]) {
        CkptSeg *g = &segs[*nsegs - 1];
        parts[*nparts] = (ReadPart){p->k, p->i, p->a + step, p->b, p->dst + step};
        segs[*nsegs] = (CkptSeg){g->off + CKPT_READ_BATCH, g->mem + CKPT_READ_BATCH, g->bytes - CKPT_READ_BATCH};
        p->b = p->a + step;
        g->bytes = CKPT_READ_BATCH;
        seg_of[(*nparts)++] = (*nsegs)++;
    }
}

// Queues the segments of parts [p0, p1) (those HDF5 does not read itself).
static int queue_batch(CkptIo *io, const CkptSeg *segs, const int *seg_of, int p0, int p1, uint64_t *mark) {
    int s0 = -1, s1 = -1;
    for (int p = p0; p < p1; p++)
        if (seg_of[p] >= 0) {
            if (s0 < 0) s0 = seg_of[p];
            s1 = seg_of[p] + 1;
        }
    *mark = 0;
    if (s0 < 0) return 0;
    return ckpt_io_queue(io, segs + s0, s1 - s0, mark);
}

// Reads the pieces this rank holds, and nothing else; checks, collectively,
// that every read succeeded and every dataset matches its stored checksum
// (each rank sums its owned pieces: every element counted once).
static int read_verified(Zero *z, hid_t f, hid_t meta, const char *path, Watchdog *wd, CkptState *st, char *why,
                         size_t n) {
    const Model *m = z->m;
    watchdog_phase(wd, "reading the datasets");
    size_t ns = (size_t)m->ntensors * DS_KINDS;
    uint64_t *sums = xcalloc(sizeof(uint64_t) * (ns + 1), "checksums");
    // Every tensor part, some cut in batch-sized pieces (at most one more per batch of the states).
    size_t pieces = ns * CKPT_MAX_PIECES + DS_KINDS * (z->N * sizeof(float) / CKPT_READ_BATCH + 1);
    SYS_CHECK(pieces < INT32_MAX, "checkpoint: %zu tensor parts to read", pieces);
    int errors = 0, cap = (int)pieces, nparts = 0;
    CkptSeg *segs = xcalloc(sizeof(CkptSeg) * (size_t)cap, "checkpoint segments");
    ReadPart *parts = xcalloc(sizeof(ReadPart) * (size_t)cap, "checkpoint segments");
    int *seg_of = xcalloc(sizeof(int) * (size_t)cap, "checkpoint segments");  // a part's segment; -1: read by HDF5
    Piece mine[CKPT_MAX_PIECES], owned[DS_KINDS][CKPT_MAX_PIECES];
    int nowned[DS_KINDS], nsegs = 0;
    int sharded = z->stage == 1 || z->stage == 2;   // parameters held whole, read as shards, then gathered
    int partition = zero_reads_partition(z);        // stage 0: every state so (zero_share_loaded)
    for (int k = 0; k < DS_KINDS && !errors; k++) {
        // What a rank holds, except at stages 1-2, where it reads only its shard of the parameters
        // too, and at stage 0 on the cpu backend, where it reads only its partition of every state
        // (zero_share_loaded shares them after).
        int np = partition || (sharded && k == DS_PARAMS) ? owned_pieces(z, k, mine) : held_pieces(z, k, mine);
        nowned[k] = owned_pieces(z, k, owned[k]);
        for (int j = 0; j < np; j++)
            for (int i = 0; i < m->ntensors; i++) {
                const ParamTensor *t = &m->tensors[i];
                size_t a, b;
                if (!tensor_part(t, &mine[j], &a, &b)) continue;
                char name[160];
                snprintf(name, sizeof name, "%s/%s", groups[k], t->name);
                int before = nsegs;
                parts[nparts] = (ReadPart){k, i, a, b, mine[j].buf + (a - mine[j].begin)};
                errors += read_part(f, name, t, a, b, parts[nparts].dst, segs, &nsegs) != 0;
                seg_of[nparts++] = nsegs > before ? before : -1;
                if (nsegs > before) split_part(parts, segs, seg_of, &nparts, &nsegs);
            }
    }
    // Batches of ~CKPT_READ_BATCH bytes, read through one open transfer: batch
    // k + 1 is queued before batch k is waited for (the disk never idles at a
    // batch boundary), and batch k's checksums run on a thread meanwhile.
    SumBatch run[2] = {{0}};
    char ioerr[700] = "";
    int nb = 0, *first = xcalloc(sizeof(int) * (size_t)(nparts + 1), "checkpoint batches");
    st->read_bytes = 0;
    for (int p = 0; p < nparts; nb++) {
        first[nb] = p;
        for (size_t bytes = 0; p < nparts && (p == first[nb] || bytes < CKPT_READ_BATCH); p++) {
            bytes += (parts[p].b - parts[p].a) * sizeof(float);
            st->read_bytes += (parts[p].b - parts[p].a) * sizeof(float);
        }
    }
    first[nb] = nparts;
    CkptIo *io = nsegs && !errors ? ckpt_io_open(path, 0, ioerr, sizeof ioerr) : NULL;
    if (nsegs && !io) errors++;
    uint64_t mark[2] = {0, 0};
    if (!errors && nb > 0) errors += queue_batch(io, segs, seg_of, first[0], first[1], &mark[0]) != 0;
    for (int k = 0; k < nb && !errors; k++) {
        if (k + 1 < nb) errors += queue_batch(io, segs, seg_of, first[k + 1], first[k + 2], &mark[(k + 1) & 1]) != 0;
        if (!errors && io) errors += ckpt_io_wait(io, mark[k & 1]) != 0;
        join_batch(&run[(k + 1) & 1]);
        if (errors) break;
        SumBatch *sb = &run[k & 1];
        *sb = (SumBatch){.m = m, .parts = parts + first[k], .n = first[k + 1] - first[k], .owned = owned,
                         .nowned = nowned, .sums = sums};
        int rc = pthread_create(&sb->thread, NULL, sum_batch, sb);
        SYS_CHECK(rc == 0, "cannot start a checksum thread: %s", strerror(rc));
        sb->running = 1;
    }
    CkptIoStats ios = {0};
    if (io && ckpt_io_close(io, errors ? -1 : 0, &ios) != 0 && !errors) errors++;
    st->inplace_bytes = ios.direct_bytes - ios.bounced_bytes;
    free(first);
    join_batch(&run[0]);
    join_batch(&run[1]);
    free(segs);
    free(parts);
    free(seg_of);
    sums[ns] = (uint64_t)errors;     // reduced with the checksums
    watchdog_phase(wd, "summing checksums: waiting for the other ranks");
    comm_allreduce_napping(z->comm->comm, sums, (int)ns + 1, MPI_UINT64_T, MPI_SUM);
    int rc = 0;
    if (sums[ns]) {
        snprintf(why, n, "%llu dataset reads failed (truncated or damaged file)%s%s", (unsigned long long)sums[ns],
                 ioerr[0] ? "; here: " : "", ioerr);
        rc = -1;
    }
    for (int k = 0; k < DS_KINDS && !rc; k++)
        for (int i = 0; i < m->ntensors && !rc; i++) {
            char key[160];
            uint64_t want = 0, got = sums[k * m->ntensors + i];
            snprintf(key, sizeof key, "checksum:/%s/%s", groups[k], m->tensors[i].name);
            h5_read_attr_u64(meta, key, &want);     // checked in check_datasets
            if (want != got) {
                snprintf(why, n, "dataset /%s/%s fails its checksum (stored %016llx, read %016llx)", groups[k],
                         m->tensors[i].name, (unsigned long long)want, (unsigned long long)got);
                rc = -1;
            }
        }
    free(sums);
    return rc;
}

// Reading /meta (attributes and the small index) takes milliseconds. libhdf5
// can loop forever on some damaged metadata (seen: a flipped bit in the global
// heap that holds the string attributes, H5HG_read spinning), where no error
// comes back to refuse the file with: so those reads are bounded.
#define CKPT_META_LIMIT_S 20.0
#define CKPT_META_HINT "its HDF5 metadata is likely damaged (libhdf5 loops on some damage): use an older checkpoint"

// Starts the bound on reading path's /meta (stop it with watchdog_stop).
static void meta_watch(Watchdog *w, const char *path) {
    watchdog_start(w, CKPT_META_LIMIT_S, CKPT_META_HINT, "reading the metadata (/meta) of '%s'", path);
    watchdog_fixed_limit(w);
    watchdog_phase(w, "reading /meta");
}

static int load(Zero *z, const Deck *d, const char *path, CkptState *st, Watchdog *wd, char *why, size_t n) {
    const Model *m = z->m;
    MPI_Comm comm = z->comm->comm;
    char w[600] = "";
    watchdog_phase(wd, "opening the file");
    double t0 = MPI_Wtime();
    hid_t f = open_read(path, w, sizeof w);
    if (f < 0) snprintf(why, n, "cannot open it (missing, truncated or not HDF5): %s", w);
    if (agree(comm, f < 0, why, n) != 0) {
        if (f >= 0) H5Fclose(f);
        return -1;
    }
    watchdog_phase(wd, "checking /meta");
    hid_t meta = -1;
    H5E_BEGIN_TRY { meta = H5Gopen2(f, "meta", H5P_DEFAULT); } H5E_END_TRY;
    MetaInfo mi;
    int rc = 0, verified = 1;
    Watchdog mw;
    meta_watch(&mw, path);
    if (meta < 0) {
        snprintf(why, n, "it has no /meta group: not a Partita checkpoint");
        rc = -1;
    } else if (meta_read(meta, &mi, why, n) != 0 || (verified = meta_verify(meta, mi.version, why, n)) < 0) {
        rc = -1;    // an attribute out of range is named; an edit in range fails the meta checksum
    }
    watchdog_stop(&mw);
    if (agree(comm, rc, why, n) != 0) goto fail;
    if (verified == 1 && log_rank() == 0)
        log_warn("checkpoint '%s' is of format 1 (written before /meta had a checksum): its attributes are range-checked "
                 "but not verified", path);
    check_shape(&mi.s, m, d, path);
    rc = check_datasets(f, meta, m, why, n);
    if (agree(comm, rc, why, n) != 0) goto fail;

    double t1 = MPI_Wtime();
    if (read_verified(z, f, meta, path, wd, st, why, n) != 0) goto fail;
    double t2 = MPI_Wtime();
    st->step = mi.step;
    st->data_cursor = mi.data_cursor;
    st->data_rows = mi.data_rows;
    st->tokens_seen = mi.tokens_seen;
    z->optim.t = (int)mi.optim_t;
    zero_push_states(z);    // read into the host copies; on cuda they go to the device now
    watchdog_phase(wd, "sharing what each rank read with the others");
    zero_share_loaded(z);   // each rank read only its part of what it holds
    H5_CHECK(H5Gclose(meta));
    watchdog_phase(wd, "closing the file");
    H5_CHECK(H5Fclose(f));
    st->open_s = t1 - t0;
    st->read_s = t2 - t1;
    st->rest_s = MPI_Wtime() - t2;
    return 0;
fail:
    if (meta >= 0) H5Gclose(meta);
    H5Fclose(f);
    return -1;
}

int ckpt_load(Zero *z, const Deck *d, const char *path, CkptState *st, char *why, size_t n) {
    Watchdog wd;
    watchdog_start(&wd, d->cfg.comm.timeout_s, "a rank is stopped or the file system hangs; raise [comm] timeout_s "
                   "if reading a checkpoint takes this long", "checkpoint read of '%s'", path);
    int rc = load(z, d, path, st, &wd, why, n);
    watchdog_stop(&wd);
    return rc;
}

// ---------------------------------------------------------------------------
// Resuming: rank 0 names the candidates one by one, every rank tries each.

typedef struct Candidate {
    int64_t step;
    char name[64];
} Candidate;

static int cmp_newest(const void *a, const void *b) {
    int64_t x = ((const Candidate *)a)->step, y = ((const Candidate *)b)->step;
    return x < y ? 1 : x > y ? -1 : 0;
}

// Rank 0: the file `latest` names first (when it is there), then every other
// step-*.h5 of dir, newest first. Returns how many; *latest_state: 0 no
// `latest`, 1 names a file that is there, -1 names a missing or odd one.
static size_t list_candidates(const char *dir, Candidate **out, int *latest_state) {
    char lpath[1100], name[256] = "";
    snprintf(lpath, sizeof lpath, "%s/latest", dir);
    *latest_state = 0;
    FILE *lf = fopen(lpath, "r");
    if (lf) {
        if (!fgets(name, sizeof name, lf)) name[0] = 0;
        fclose(lf);
        name[strcspn(name, "\r\n")] = 0;
        *latest_state = -1;
    }
    int64_t lstep = -1;
    if (lf && !parse_step(name, &lstep)) {
        log_warn("'%s' holds '%.200s', not a checkpoint name (step-NNNNNN.h5); looking for the newest whole checkpoint in '%s'",
                 lpath, name, dir);
        lstep = -1;
    }
    Candidate *c = NULL;
    size_t n = 0, cap = 0;
    DIR *dd = opendir(dir);
    for (struct dirent *e; dd && (e = readdir(dd)); ) {
        int64_t s;
        size_t len = strlen(e->d_name);
        if (!parse_step(e->d_name, &s) || len >= sizeof c->name) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            c = realloc(c, cap * sizeof *c);
            SYS_CHECK(c, "out of memory listing checkpoints");
        }
        c[n].step = s;
        memcpy(c[n].name, e->d_name, len + 1);
        if (lstep >= 0 && strcmp(e->d_name, name) == 0) *latest_state = 1;
        n++;
    }
    if (dd) closedir(dd);
    if (n > 1) qsort(c, n, sizeof *c, cmp_newest);
    // The file latest names goes first.
    for (size_t i = 0; i < n && *latest_state == 1; i++)
        if (strcmp(c[i].name, name) == 0) {
            Candidate t = c[i];
            memmove(c + 1, c, i * sizeof *c);
            c[0] = t;
            break;
        }
    if (*latest_state == -1 && lstep >= 0)
        log_warn("'%s' names '%s', which is missing; looking for the newest whole checkpoint in '%s'", lpath, name, dir);
    if (*latest_state == 0 && n > 0)
        log_warn("'%s' is missing but '%s' holds checkpoints; trying the newest", lpath, dir);
    *out = c;
    return n;
}

int ckpt_resume(Zero *z, const Deck *d, const char *dir, CkptState *st, char *path, size_t n) {
    const char *r = d->cfg.checkpoint.resume;
    MPI_Comm comm = z->comm->comm;
    char why[1200];
    if (strcmp(r, "none") == 0) return 0;
    if (strcmp(r, "auto") != 0) {
        snprintf(path, n, "%s", r);
        if (ckpt_load(z, d, path, st, why, sizeof why) != 0)
            FATAL_ALL("resume from another checkpoint, or set [checkpoint] resume = auto or none",
                      "cannot resume from checkpoint '%s': %s", path, why);
        return 1;
    }
    int me;
    MPI_CHECK(MPI_Comm_rank(comm, &me));
    Candidate *c = NULL;
    int latest_state = 0;
    size_t nc = me == 0 ? list_candidates(dir, &c, &latest_state) : 0, tried = 0;
    int code;
    for (;;) {
        // 1: try path; 0: none left, start afresh; -1: none left and some were damaged.
        code = tried < nc ? 1 : tried ? -1 : 0;
        if (code == 1) snprintf(path, n, "%s/%s", dir, c[tried].name);
        MPI_CHECK(MPI_Bcast(&code, 1, MPI_INT, 0, comm));
        if (code != 1) break;
        if (n > (size_t)INT32_MAX) n = INT32_MAX;
        MPI_CHECK(MPI_Bcast(path, (int)n, MPI_CHAR, 0, comm));
        if (ckpt_load(z, d, path, st, why, sizeof why) == 0) {
            if (me == 0 && (tried > 0 || latest_state != 1))
                log_warn("resuming from '%s', the newest checkpoint in '%s' that loads whole", path, dir);
            free(c);
            return 1;
        }
        if (me == 0) log_warn("checkpoint '%s' is damaged: %s; trying an older one", path, why);
        tried++;
    }
    free(c);
    if (code == -1)
        FATAL_ALL("set [checkpoint] resume = none to start afresh (the damaged files stay), or resume = a checkpoint file",
                  "no checkpoint in '%s' loads whole (the warnings above say why each was refused)", dir);
    if (me == 0 && latest_state == -1) log_warn("no checkpoint to resume from in '%s'; starting afresh", dir);
    return 0;
}

// ---------------------------------------------------------------------------
// `partita ckpt info|export`: one process, serial HDF5. Every problem is a
// message and status 1, never a crash: the file is outside input.

// Reads one whole dataset; returns its checksum, or reports why it cannot.
static int read_whole(hid_t f, const char *name, const ParamTensor *t, float *buf, uint64_t *sum, char *why, size_t n) {
    char got[160], want[160];
    hid_t ds;
    int st = weights_open_tensor(f, name, t, &ds, got, want, sizeof got);
    if (st == WEIGHTS_TENSOR_MISSING || st == WEIGHTS_TENSOR_NOT_DATASET) {
        snprintf(why, n, st == WEIGHTS_TENSOR_MISSING ? "missing" : "not a dataset");
        return -1;
    }
    int rc = -1;
    if (st == WEIGHTS_TENSOR_NOT_FLOAT) {
        snprintf(why, n, "not a float dataset");
    } else if (st == WEIGHTS_TENSOR_BAD_SHAPE) {
        snprintf(why, n, "shape %.60s instead of %.60s", got, want);
    } else {
        herr_t r;
        errno = 0;
        H5E_BEGIN_TRY { r = H5Dread(ds, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf); } H5E_END_TRY;
        if (r < 0) {
            char reason[300];
            h5_reason(errno, reason, sizeof reason);
            snprintf(why, n, "unreadable (truncated?): %.200s", reason);
        } else {
            *sum = ckpt_checksum(buf, t->numel, 0);
            rc = 0;
        }
    }
    if (ds >= 0) H5Dclose(ds);
    return rc;
}

// A Mixture-of-Experts checkpoint's layers (issue 13): layer l's experts from
// the shape (C, E) of /params/h.<l>.mlp.gate.weight, PR-MoE from a residual
// MLP; nmoe = 0 for a dense one. The table needs nothing else of the [moe] section.
static void moe_from_file(hid_t f, const GPTShape *s, MoeSpec *moe) {
    memset(moe, 0, sizeof *moe);
    moe->L = s->L;
    moe->top_k = 1;
    moe->experts = xcalloc(sizeof(int) * (size_t)s->L, "moe layers");
    for (int l = 0; l < s->L; l++) {
        char name[96];
        snprintf(name, sizeof name, "params/h.%d.mlp.gate.weight", l);
        hid_t ds = -1;
        H5E_BEGIN_TRY {
            if (H5Lexists(f, "params", H5P_DEFAULT) > 0 && H5Lexists(f, name, H5P_DEFAULT) > 0)
                ds = H5Dopen2(f, name, H5P_DEFAULT);
        } H5E_END_TRY;
        if (ds < 0) continue;
        hid_t sp = H5Dget_space(ds);
        hsize_t dims[2] = {0, 0};
        if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2 && H5Sget_simple_extent_dims(sp, dims, NULL) == 2 &&
            dims[0] == (hsize_t)s->C && dims[1] >= 1 && dims[1] <= 4096) {
            moe->experts[l] = (int)dims[1];
            moe->nmoe++;
            snprintf(name, sizeof name, "params/h.%d.mlp.residual.c_fc.weight", l);
            htri_t r;
            H5E_BEGIN_TRY { r = H5Lexists(f, name, H5P_DEFAULT); } H5E_END_TRY;
            if (r > 0) moe->residual = 1;
        }
        if (sp >= 0) H5Sclose(sp);
        H5Dclose(ds);
    }
    H5Eclear2(H5E_DEFAULT);
}

// The model table of the shape in /meta (and, for MoE, of f's gates); -1 if
// the tensors it describes cannot fit in a file of fsize bytes (a damaged
// shape attribute).
static int model_from_meta(hid_t f, const MetaInfo *mi, long long fsize, int kinds, Model *m, char *why, size_t n) {
    ModelConfig mc = {.vocab = mi->s.V, .vocab_pad = mi->s.Vp, .layers = mi->s.L, .d_model = mi->s.C,
                      .heads = mi->s.NH, .seq_len = mi->s.maxT, .mlp_ratio = mi->s.H / mi->s.C, .init_std = 0.02};
    MoeSpec moe;
    moe_from_file(f, &mi->s, &moe);
    model_table_moe(m, &mc, &moe, 1, 0);
    moe_spec_free(&moe);
    size_t bytes;
    if (__builtin_mul_overflow(model_count_params(m), sizeof(float) * (size_t)kinds, &bytes) || bytes > (size_t)fsize) {
        snprintf(why, n, "the shape attributes (L=%d C=%d NH=%d V=%d Vp=%d T=%d H=%d) describe %zu parameters, "
                 "more than the file's %lld bytes can hold", mi->s.L, mi->s.C, mi->s.NH, mi->s.V, mi->s.Vp,
                 mi->s.maxT, mi->s.H, model_count_params(m), fsize);
        model_free(m);
        return -1;
    }
    return 0;
}

static int info_fail(const char *path, const char *what, const char *hint) {
    fprintf(stderr, "error: checkpoint '%s': %s\n", path, what);
    if (hint) fprintf(stderr, "  hint: %s\n", hint);
    return 1;
}

// --format safetensors: fp32 with Hugging Face GPT-2 names, and config.json in the same directory.
static int export_safetensors(const Model *m, const MetaInfo *mi, const float *buf, const char *src, const char *out) {
    char config[4200], why[1200];
    const char *slash = strrchr(out, '/');
    snprintf(config, sizeof config, "%.*sconfig.json", slash ? (int)(slash - out + 1) : 0, out);
    if (st_write(out, m, buf, config, why, sizeof why) != 0) {
        fprintf(stderr, "error: %s\n", why);
        return 1;
    }
    printf("export: %s (step %lld) -> %s (safetensors, fp32) and %s\n", src, (long long)mi->step, out, config);
    return 0;
}

static int export_weights(hid_t meta, const Model *m, const MetaInfo *mi, const float *buf, const char *src,
                          const char *out, int safetensors) {
    if (safetensors) return export_safetensors(m, mi, buf, src, out);
    char *deck = NULL;
    if (h5_read_attr_strdup(meta, "deck", META_MAX_STRING, &deck) != H5A_OK) deck = NULL;
    hid_t f = h5_create(out);
    weights_write_shape(f, m);
    h5_attr_i64(f, "step", mi->step);
    h5_attr_str(f, "deck", deck ? deck : "");
    h5_attr_str(f, "layout", "GPT-2 names; linear weights (in, out) as HF Conv1D; wte tied to the LM head");
    weights_write_group(m, f, "params", buf);
    h5_close(f);
    free(deck);
    printf("export: %s (step %lld) -> %s\n", src, (long long)mi->step, out);
    return 0;
}

static int inspect(hid_t f, const char *path, int is_info, const char *out, int safetensors) {
    const char *damaged = "the file is damaged: use an older checkpoint";
    Watchdog wd;
    meta_watch(&wd, path);
    hid_t meta;
    H5E_BEGIN_TRY { meta = H5Gopen2(f, "meta", H5P_DEFAULT); } H5E_END_TRY;
    if (meta < 0) {
        watchdog_stop(&wd);
        return info_fail(path, "no /meta group: not a Partita checkpoint", NULL);
    }
    MetaInfo mi;
    char why[1200], mwhy[600] = "";
    if (meta_read(meta, &mi, why, sizeof why) != 0) {
        watchdog_stop(&wd);
        H5Gclose(meta);
        return info_fail(path, why, damaged);
    }
    int mrc = meta_verify(meta, mi.version, mwhy, sizeof mwhy);
    struct stat sb;
    long long fsize = stat(path, &sb) == 0 ? (long long)sb.st_size : 0;
    Model m;
    int mfm = model_from_meta(f, &mi, fsize, is_info ? DS_KINDS : 1, &m, why, sizeof why);
    watchdog_stop(&wd);
    if (mfm != 0) {
        H5Gclose(meta);
        return info_fail(path, why, damaged);
    }
    float *buf = malloc(m.nparams * sizeof(float));
    if (!buf) {
        model_free(&m);
        H5Gclose(meta);
        return info_fail(path, "out of memory for its tensors", NULL);
    }
    int bad = 0;
    if (is_info) {
        printf("checkpoint %s\n  step %lld, written by %s, %zu parameters (L=%d C=%d NH=%d V=%d Vp=%d)\n", path,
               (long long)mi.step, mi.layout, model_count_params(&m), m.s.L, m.s.C, m.s.NH, m.s.V, m.s.Vp);
        printf("  /meta: format %lld, %s\n", (long long)mi.version,
               mrc == 0 ? "meta checksum ok" : mrc > 0 ? "no meta checksum (format 1: attributes range-checked only)" : mwhy);
        printf("  %-44s %-14s %12s  %s\n", "dataset", "shape", "bytes", "checksum");
    } else if (mrc < 0) {
        fprintf(stderr, "error: checkpoint '%s': %s\n", path, mwhy);
    }
    for (int k = 0; k < (is_info ? DS_KINDS : 1); k++)
        for (int i = 0; i < m.ntensors; i++) {
            const ParamTensor *pt = &m.tensors[i];
            char name[160], key[180], dwhy[300] = "", shape[32];
            snprintf(name, sizeof name, "%s/%s", groups[k], pt->name);
            snprintf(key, sizeof key, "checksum:/%s", name);
            uint64_t sum = 0, want = 0;
            int rc = read_whole(f, name, pt, buf + pt->offset, &sum, dwhy, sizeof dwhy);
            if (rc == 0 && h5_read_attr_u64(meta, key, &want) != H5A_OK) {
                snprintf(dwhy, sizeof dwhy, "no valid stored checksum");
                rc = -1;
            } else if (rc == 0 && want != sum) {
                snprintf(dwhy, sizeof dwhy, "checksum MISMATCH (stored %016llx, read %016llx)", (unsigned long long)want,
                         (unsigned long long)sum);
                rc = -1;
            }
            bad += rc != 0;
            if (pt->ndim == 2) snprintf(shape, sizeof shape, "(%d, %d)", pt->shape[0], pt->shape[1]);
            else snprintf(shape, sizeof shape, "(%d)", pt->shape[0]);
            if (is_info) printf("  /%-43s %-14s %12zu  %s\n", name, shape, pt->numel * sizeof(float), rc ? dwhy : "ok");
            else if (rc) fprintf(stderr, "error: checkpoint '%s': /%s: %s\n", path, name, dwhy);
        }
    if (is_info)
        printf("%s: %s%d of %d datasets bad\n", bad || mrc < 0 ? "FAILED" : "ok", mrc < 0 ? "meta checksum MISMATCH; " : "",
               bad, m.ntensors * DS_KINDS);
    int rc = bad || mrc < 0 ? 1 : 0;
    if (!is_info && !rc) rc = export_weights(meta, &m, &mi, buf, path, out, safetensors);
    free(buf);
    model_free(&m);
    H5Gclose(meta);
    return rc;
}

int ckpt_main(int argc, char **argv) {
    int safetensors = 0;
    if (argc == 5 && strcmp(argv[0], "export") == 0 && strcmp(argv[3], "--format") == 0) {
        if (strcmp(argv[4], "safetensors") != 0 && strcmp(argv[4], "h5") != 0) {
            fprintf(stderr, "error: --format %s: unknown format\n  hint: h5 or safetensors\n", argv[4]);
            return 2;
        }
        safetensors = strcmp(argv[4], "safetensors") == 0;
        argc = 3;
    }
    if (argc < 2 || (strcmp(argv[0], "info") != 0 && strcmp(argv[0], "export") != 0) ||
        (strcmp(argv[0], "export") == 0 && argc != 3) || (strcmp(argv[0], "info") == 0 && argc != 2)) {
        fprintf(stderr, "usage: partita ckpt info FILE | partita ckpt export FILE OUT [--format h5|safetensors]\n");
        return 2;
    }
    const char *path = argv[1];
    h5_quiet();
    errno = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char why[600], what[800];
        h5_reason(errno, why, sizeof why);
        snprintf(what, sizeof what, "cannot open it (missing, truncated or not HDF5): %s", why);
        return info_fail(path, what, NULL);
    }
    int rc = inspect(f, path, strcmp(argv[0], "info") == 0, argc == 3 ? argv[2] : NULL, safetensors);
    H5Fclose(f);
    return rc;
}
