// offload.c: optimizer states and parameter shards on NVMe (see offload.h).
#include "offload.h"
#include "log.h"
#include "sysutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const IO_HINT =
    "the run stopped before applying this step; the checkpoints were not touched: free space in (or repair) "
    "[offload] nvme_dir, or point it at another disk, and resume from the last checkpoint";

static _Noreturn void io_fatal(const char *why) { FATAL(IO_HINT, "offload: %s", why); }

static void io_wait(Offload *o, uint64_t *ticket) {
    if (!*ticket) return;
    char why[800];
    if (aio_wait(&o->aio, *ticket, why, sizeof why) != 0) io_fatal(why);
    *ticket = 0;
}

// Byte offset of region `which` (OFF_*) in the file.
static uint64_t region_off(const Offload *o, int which) {
    return (uint64_t)(o->params_nvme ? which : which - 1) * o->region;
}

static size_t sub_count(const Offload *o, int i) {
    size_t lo = (size_t)i * o->G;
    return o->n - lo < o->G ? o->n - lo : o->G;
}

static size_t sub_bytes(const Offload *o, int i) {   // padded to the alignment
    return (size_t)aio_align_up(sub_count(o, i) * sizeof(float), o->file.align);
}

static int first_arr(const Offload *o) { return o->params_nvme ? OFF_P : OFF_M; }

// ---------------------------------------------------------------------------
// Life cycle

// Subgroup floats: subgroup_mb, a multiple of the alignment, shrunk so that the
// staging buffers fit host_cap_mb.
static size_t pick_group(const OffloadConfig *c, size_t n, size_t align, int arrays, int nbuf) {
    size_t unit = align / sizeof(float);
    size_t g = (size_t)(c->subgroup_mb * 1048576.0) / sizeof(float) / unit * unit;
    if (g < unit) g = unit;
    size_t whole = (size_t)aio_align_up(n ? n : 1, unit);
    if (g > whole) g = whole;
    if (c->host_cap_mb > 0) {
        double cap = c->host_cap_mb * 1048576.0;
        size_t fit = (size_t)(cap / ((double)nbuf * arrays * sizeof(float))) / unit * unit;
        if (fit < unit)
            FATAL("raise [offload] host_cap_mb or lower [offload] buffers",
                  "[offload] host_cap_mb = %g cannot hold %d staging buffers of %d arrays of even one aligned "
                  "block (%zu bytes)", c->host_cap_mb, nbuf, arrays, align);
        if (fit < g) {
            log_info("offload: subgroups of %.3f MiB shrunk to %.3f MiB to fit host_cap_mb = %g (%d buffers x %d arrays)\n",
                     (double)g * 4 / 1048576.0, (double)fit * 4 / 1048576.0, c->host_cap_mb, nbuf, arrays);
            g = fit;
        }
    }
    return g;
}

static void reserve(Offload *o, uint64_t total) {
    int rc = posix_fallocate(o->file.fd, 0, (off_t)total);
    if (rc == 0) return;
    if (rc == EOPNOTSUPP || rc == EINVAL) {     // the file system cannot reserve: a sparse file
        if (ftruncate(o->file.fd, (off_t)total) == 0) return;
        rc = errno;
    }
    char why[900];
    snprintf(why, sizeof why, "%s: cannot reserve %.1f MiB for this rank's offloaded states: %s%s", o->file.path,
             (double)total / 1048576.0, strerror(rc), rc == ENOSPC ? " (disk full)" : "");
    unlink(o->file.path);
    io_fatal(why);
}

void offload_create(Offload *o, const OffloadConfig *c, const char *run_name, int rank, int group, size_t begin,
                    size_t n, int params_nvme) {
    memset(o, 0, sizeof *o);
    o->params_nvme = params_nvme;
    o->prefetch = c->prefetch;
    o->begin = begin;
    o->n = n;
    o->nbuf = (int)c->buffers;
    o->last_unit = -1;
    o->bounce_unit[0] = o->bounce_unit[1] = -1;
    make_dirs(c->nvme_dir, "set [offload] nvme_dir to a writable directory");
    char path[DECK_STR * 2 + 64], why[1200];
    snprintf(path, sizeof path, "%s/%s.rank%d.g%d.offload", c->nvme_dir, run_name, rank, group);
    if (aio_init(&o->aio, (int)c->queue_depth, why, sizeof why) != 0) FATAL(NULL, "offload: %s", why);
    if (aio_open(&o->file, path, AIO_READ | AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, sizeof why) != 0)
        FATAL("set [offload] nvme_dir to a writable directory", "offload: %s", why);
    if (!o->file.direct)
        log_warn("offload: %s: the file system does not take O_DIRECT; buffered I/O (the page cache holds copies)",
                 path);
    int arrays = params_nvme ? 3 : 2;
    o->G = pick_group(c, n, o->file.align, arrays, o->nbuf);
    o->nsub = (int)((n + o->G - 1) / o->G);
    o->region = aio_align_up((uint64_t)n * sizeof(float), o->file.align);
    reserve(o, o->region * (uint64_t)arrays);
    o->slots = xcalloc(sizeof(OffloadSlot) * (size_t)o->nbuf, "offload slots");
    for (int s = 0; s < o->nbuf; s++) {
        o->slots[s].sub = -1;
        for (int a = first_arr(o); a < OFF_NARR; a++) {
            o->slots[s].arr[a] = aio_buffer(o->G * sizeof(float), o->file.align);
            SYS_CHECK(o->slots[s].arr[a], "offload: out of memory for a %zu-byte staging buffer", o->G * sizeof(float));
            o->held_bytes += o->G * sizeof(float);
        }
    }
}

void offload_free(Offload *o) {
    if (!o->slots) return;
    char why[800];
    aio_wait_all(&o->aio, why, sizeof why);
    for (int s = 0; s < o->nbuf; s++)
        for (int a = 0; a < OFF_NARR; a++) aio_buffer_free(o->slots[s].arr[a]);
    free(o->slots);
    aio_buffer_free(o->bounce[0]);
    aio_buffer_free(o->bounce[1]);
    free(o->ulo);
    free(o->uhi);
    aio_close(&o->file);
    unlink(o->file.path);
    aio_free(&o->aio);
    memset(o, 0, sizeof *o);
}

// ---------------------------------------------------------------------------
// Whole regions (start-up, checkpoints)

static void drop_bounces(Offload *o);

void offload_put(Offload *o, int which, const float *src) {
    drop_bounces(o);
    float *buf = o->slots[0].arr[OFF_M];
    for (int i = 0; i < o->nsub; i++) {
        size_t cnt = sub_count(o, i), bytes = sub_bytes(o, i);
        memcpy(buf, src + (size_t)i * o->G, cnt * sizeof(float));
        memset((char *)buf + cnt * sizeof(float), 0, bytes - cnt * sizeof(float));
        uint64_t t = aio_write(&o->aio, &o->file, buf, bytes, region_off(o, which) + (uint64_t)i * o->G * sizeof(float));
        io_wait(o, &t);
    }
}

void offload_get(Offload *o, int which, float *dst) {
    float *buf = o->slots[0].arr[OFF_M];
    for (int i = 0; i < o->nsub; i++) {
        uint64_t t = aio_read(&o->aio, &o->file, buf, sub_bytes(o, i),
                              region_off(o, which) + (uint64_t)i * o->G * sizeof(float));
        io_wait(o, &t);
        memcpy(dst + (size_t)i * o->G, buf, sub_count(o, i) * sizeof(float));
    }
}

void offload_init_params(Offload *o, const Model *m, uint64_t seed, double std) {
    drop_bounces(o);
    float *buf = o->slots[0].arr[OFF_P];
    for (int i = 0; i < o->nsub; i++) {
        size_t lo = o->begin + (size_t)i * o->G, cnt = sub_count(o, i), bytes = sub_bytes(o, i);
        memset(buf, 0, bytes);
        model_init_range(m, buf, lo, lo + cnt, seed, std);
        uint64_t t = aio_write(&o->aio, &o->file, buf, bytes, region_off(o, OFF_P) + (uint64_t)i * o->G * sizeof(float));
        io_wait(o, &t);
    }
}

// ---------------------------------------------------------------------------
// The subgroup pipeline

static void issue_reads(Offload *o, int i) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    for (int a = first_arr(o); a < OFF_NARR; a++) io_wait(o, &s->wr[a]);   // its last write-back
    s->sub = i;
    for (int a = first_arr(o); a < OFF_NARR; a++)
        s->rd[a] = aio_read(&o->aio, &o->file, s->arr[a], sub_bytes(o, i),
                            region_off(o, a) + (uint64_t)i * o->G * sizeof(float));
}

static void issue_writes(Offload *o, int i) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    for (int a = first_arr(o); a < OFF_NARR; a++)
        s->wr[a] = aio_write(&o->aio, &o->file, s->arr[a], sub_bytes(o, i),
                             region_off(o, a) + (uint64_t)i * o->G * sizeof(float));
}

static void drop_bounces(Offload *o) {
    for (int b = 0; b < 2; b++) {
        io_wait(o, &o->bounce_tk[b]);
        o->bounce_unit[b] = -1;
    }
    o->last_unit = -1;
}

void offload_update(Offload *o, const Model *m, Optim *opt, float *params, float *grads, double lr, float grad_scale) {
    drop_bounces(o);    // parameter reads of the last backward: the update rewrites the parameters
    opt->t++;
    if (o->nsub > 0) issue_reads(o, 0);
    for (int i = 0; i < o->nsub; i++) {
        if (o->prefetch && i + 1 < o->nsub) issue_reads(o, i + 1);
        OffloadSlot *s = &o->slots[i % o->nbuf];
        for (int a = first_arr(o); a < OFF_NARR; a++) io_wait(o, &s->rd[a]);
        size_t off = (size_t)i * o->G, cnt = sub_count(o, i);
        double t0 = wall_seconds();
        float *g = grads + off, *p = o->params_nvme ? s->arr[OFF_P] : params + off;
        if (grad_scale != 1.0f) opt->bk->scale_inplace(g, grad_scale, cnt);
        optim_update_range(opt, m, opt->bk->adamw_update, p, g, s->arr[OFF_M], s->arr[OFF_V], o->begin + off,
                           o->begin + off + cnt, lr, opt->t);
        o->update_s += wall_seconds() - t0;
        issue_writes(o, i);
        if (!o->prefetch) {
            for (int a = first_arr(o); a < OFF_NARR; a++) io_wait(o, &s->wr[a]);
            if (i + 1 < o->nsub) issue_reads(o, i + 1);
        }
    }
    char why[800];
    if (aio_wait_all(&o->aio, why, sizeof why) != 0) io_fatal(why);
    for (int s = 0; s < o->nbuf; s++)
        for (int a = 0; a < OFF_NARR; a++) o->slots[s].rd[a] = o->slots[s].wr[a] = 0;
}

// ---------------------------------------------------------------------------
// Parameter shards on NVMe (ZeRO-3)

void offload_set_units(Offload *o, int nunits, const size_t *ulo, const size_t *uhi) {
    o->nunits = nunits;
    o->ulo = xmalloc(sizeof(size_t) * (size_t)nunits, "offload units");
    o->uhi = xmalloc(sizeof(size_t) * (size_t)nunits, "offload units");
    size_t most = 0;
    for (int u = 0; u < nunits; u++) {
        o->ulo[u] = ulo[u];
        o->uhi[u] = uhi[u];
        if (uhi[u] - ulo[u] > most) most = uhi[u] - ulo[u];
    }
    o->bounce_cap = (size_t)aio_align_up(most * sizeof(float), o->file.align) + 2 * o->file.align;
    for (int b = 0; b < 2; b++) {
        o->bounce[b] = aio_buffer(o->bounce_cap, o->file.align);
        SYS_CHECK(o->bounce[b], "offload: out of memory for a %zu-byte bounce buffer", o->bounce_cap);
    }
    o->held_bytes += 2 * o->bounce_cap;
}

// The aligned file span holding unit u's owned part.
static void unit_span(const Offload *o, int u, uint64_t *a0, uint64_t *a1, uint64_t *at) {
    uint64_t off = region_off(o, OFF_P) + (uint64_t)(o->ulo[u] - o->begin) * sizeof(float);
    uint64_t end = off + (uint64_t)(o->uhi[u] - o->ulo[u]) * sizeof(float);
    *a0 = aio_align_down(off, o->file.align);
    *a1 = aio_align_up(end, o->file.align);
    *at = off - *a0;
}

static void bounce_read(Offload *o, int b, int u) {
    uint64_t a0, a1, at;
    unit_span(o, u, &a0, &a1, &at);
    io_wait(o, &o->bounce_tk[b]);
    o->bounce_unit[b] = u;
    o->bounce_tk[b] = aio_read(&o->aio, &o->file, o->bounce[b], a1 - a0, a0);
}

void offload_param_fetch(Offload *o, int u, float *dst) {
    size_t cnt = o->uhi[u] - o->ulo[u];
    int b = o->bounce_unit[0] == u ? 0 : o->bounce_unit[1] == u ? 1 : -1;
    if (b < 0 && cnt > 0) {
        b = o->bounce_unit[0] == -1 ? 0 : 1;   // a free one (the other may hold a prefetch)
        bounce_read(o, b, u);
    }
    if (cnt > 0) {
        io_wait(o, &o->bounce_tk[b]);
        uint64_t a0, a1, at;
        unit_span(o, u, &a0, &a1, &at);
        memcpy(dst, (char *)o->bounce[b] + at, cnt * sizeof(float));
        o->bounce_unit[b] = -1;
    }
    int next = u >= o->last_unit ? u + 1 : u - 1;   // the direction of travel: forward or backward
    o->last_unit = u;
    if (!o->prefetch || next < 0 || next >= o->nunits || o->uhi[next] == o->ulo[next]) return;
    if (o->bounce_unit[0] == next || o->bounce_unit[1] == next) return;
    int f = o->bounce_unit[0] == -1 ? 0 : o->bounce_unit[1] == -1 ? 1 : -1;
    if (f >= 0) bounce_read(o, f, next);
}

uint64_t offload_read_bytes(const Offload *o) { return o->aio.bytes_read; }
uint64_t offload_write_bytes(const Offload *o) { return o->aio.bytes_written; }
double offload_io_wait(const Offload *o) { return o->aio.wait_s; }
