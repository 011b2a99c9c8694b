// offload.c: optimizer states, parameter shards and gradients in host memory
// or on NVMe, and Deep Optimizer States' placement of updates (see offload.h).
#include "offload.h"
#include "kernels.h"
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

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }

static size_t sub_count(const Offload *o, int i) {
    size_t lo = (size_t)i * o->G;
    return o->n - lo < o->G ? o->n - lo : o->G;
}

static size_t sub_bytes(const Offload *o, int i) {   // padded to the alignment
    return (size_t)aio_align_up(sub_count(o, i) * sizeof(float), o->file.align);
}

static uint64_t sub_off(const Offload *o, int a, int i) { return o->roff[a] + (uint64_t)i * o->G * sizeof(float); }

static int has_file(const Offload *o) { return o->tier == OFFLOAD_NVME; }

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
    if (c->host_cap_mb > 0 && arrays > 0) {
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

static void open_file(Offload *o, const OffloadConfig *c, const char *run_name, int rank, int group) {
    make_dirs(c->nvme_dir, "set [offload] nvme_dir to a writable directory");
    char path[DECK_STR * 2 + 64], why[1200];
    snprintf(path, sizeof path, "%s/%s.rank%d.g%d.offload", c->nvme_dir, run_name, rank, group);
    if (aio_open(&o->file, path, AIO_READ | AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, sizeof why) != 0)
        FATAL("set [offload] nvme_dir to a writable directory", "offload: %s", why);
    if (!o->file.direct)
        log_warn("offload: %s: the file system does not take O_DIRECT; buffered I/O (the page cache holds copies)",
                 path);
}

// Which arrays a slot stages: those the file holds, and on cuda the gradients
// and (parameters on the device) parameters a CPU subgroup copies to the host.
static int staged(const Offload *o, int a) {
    if (o->in_file[a]) return 1;
    if (!o->device) return 0;
    if (a == OFF_G) return 1;
    return a == OFF_P && o->params_tier == OFFLOAD_NONE;
}

static float *host_floats(Offload *o, size_t n, const char *what) {
    float *p = o->bk->host_alloc(n * sizeof(float), what);
    SYS_CHECK(((uintptr_t)p % (o->file.align ? o->file.align : 1)) == 0, "offload: %s not aligned to %zu bytes", what,
              o->file.align);
    return p;
}

void offload_create(Offload *o, const OffloadConfig *c, const Backend *bk, const char *run_name, int rank, int group,
                    size_t begin, size_t n, int params_tier, int grads_nvme) {
    memset(o, 0, sizeof *o);
    o->bk = bk;
    o->device = bk->device_memory;
    o->tier = c->optimizer == OFFLOAD_NVME ? OFFLOAD_NVME : OFFLOAD_HOST;
    o->params_tier = params_tier;
    o->grads_nvme = grads_nvme;
    o->prefetch = c->prefetch;
    o->begin = begin;
    o->n = n;
    o->nbuf = (int)c->buffers;
    o->last_unit = -1;
    o->bounce_unit[0] = o->bounce_unit[1] = -1;
    o->file.fd = -1;
    o->file.align = 4096;
    char why[1200];
    if (aio_init(&o->aio, (int)c->queue_depth, why, sizeof why) != 0) FATAL(NULL, "offload: %s", why);
    if (has_file(o)) {
        open_file(o, c, run_name, rank, group);
        o->in_file[OFF_P] = params_tier == OFFLOAD_NVME;
        o->in_file[OFF_M] = o->in_file[OFF_V] = 1;
        o->in_file[OFF_G] = grads_nvme;
    }
    int arrays = 0, regions = 0;
    for (int a = 0; a < OFF_NARR; a++) arrays += staged(o, a);
    o->G = pick_group(c, n, o->file.align, arrays, o->nbuf);
    o->nsub = (int)((n + o->G - 1) / o->G);
    o->region = aio_align_up((uint64_t)n * sizeof(float), o->file.align);
    for (int a = 0; a < OFF_NARR; a++)
        if (o->in_file[a]) o->roff[a] = (uint64_t)regions++ * o->region;
    if (has_file(o)) reserve(o, o->region * (uint64_t)regions);
    o->slots = xcalloc(sizeof(OffloadSlot) * (size_t)o->nbuf, "offload slots");
    for (int s = 0; s < o->nbuf; s++) {
        o->slots[s].sub = -1;
        o->slots[s].ev = bk->event_create();
        for (int a = 0; a < OFF_NARR; a++) {
            if (!staged(o, a)) continue;
            o->slots[s].arr[a] = host_floats(o, o->G, "offload staging buffer");
            o->held_bytes += o->G * sizeof(float);
        }
    }
    o->fence = bk->event_create();
    if (o->tier == OFFLOAD_HOST) {      // cuda: the moments in pinned host memory
        o->hm = host_floats(o, n ? n : 1, "host tier of AdamW first moments");
        o->hv = host_floats(o, n ? n : 1, "host tier of AdamW second moments");
    }
    if (params_tier == OFFLOAD_HOST) o->hp = host_floats(o, n ? n : 1, "host tier of parameters");
}

void offload_free(Offload *o) {
    if (!o->slots) return;
    const Backend *bk = o->bk;
    char why[800];
    aio_wait_all(&o->aio, why, sizeof why);
    bk->event_sync(o->fence);
    for (int s = 0; s < o->nbuf; s++) {
        for (int a = 0; a < OFF_NARR; a++) bk->host_free(o->slots[s].arr[a]);
        bk->event_destroy(o->slots[s].ev);
    }
    bk->event_destroy(o->fence);
    free(o->slots);
    bk->host_free(o->hm);
    bk->host_free(o->hv);
    bk->host_free(o->hp);
    aio_buffer_free(o->bounce[0]);
    aio_buffer_free(o->bounce[1]);
    aio_buffer_free(o->gacc[0]);
    aio_buffer_free(o->gacc[1]);
    aio_buffer_free(o->gcarry);
    free(o->gpart);
    free(o->gck);
    free(o->ulo);
    free(o->uhi);
    if (o->file.fd >= 0) {
        aio_close(&o->file);
        unlink(o->file.path);
    }
    aio_free(&o->aio);
    memset(o, 0, sizeof *o);
}

// ---------------------------------------------------------------------------
// Whole arrays (start-up, checkpoints)

static void drop_bounces(Offload *o);

// The host tier's array `which`, or NULL where it is in the file.
static float *host_array(Offload *o, int which) {
    if (which == OFF_P) return o->params_tier == OFFLOAD_HOST ? o->hp : NULL;
    if (o->tier != OFFLOAD_HOST) return NULL;
    return which == OFF_M ? o->hm : which == OFF_V ? o->hv : NULL;
}

void offload_put(Offload *o, int which, const float *src) {
    drop_bounces(o);
    float *h = host_array(o, which);
    if (h) {
        memcpy(h, src, o->n * sizeof(float));
        return;
    }
    float *buf = o->slots[0].arr[OFF_M];
    for (int i = 0; i < o->nsub; i++) {
        size_t cnt = sub_count(o, i), bytes = sub_bytes(o, i);
        memcpy(buf, src + (size_t)i * o->G, cnt * sizeof(float));
        memset((char *)buf + cnt * sizeof(float), 0, bytes - cnt * sizeof(float));
        uint64_t t = aio_write(&o->aio, &o->file, buf, bytes, sub_off(o, which, i));
        io_wait(o, &t);
    }
}

void offload_get(Offload *o, int which, float *dst) {
    const float *h = host_array(o, which);
    if (h) {
        o->bk->event_sync(o->fence);
        memcpy(dst, h, o->n * sizeof(float));
        return;
    }
    float *buf = o->slots[0].arr[OFF_M];
    for (int i = 0; i < o->nsub; i++) {
        uint64_t t = aio_read(&o->aio, &o->file, buf, sub_bytes(o, i), sub_off(o, which, i));
        io_wait(o, &t);
        memcpy(dst + (size_t)i * o->G, buf, sub_count(o, i) * sizeof(float));
    }
}

void offload_init_params(Offload *o, const Model *m, uint64_t seed, double std) {
    drop_bounces(o);
    if (o->hp) {
        model_init_range(m, o->hp, o->begin, o->begin + o->n, seed, std);
        return;
    }
    float *buf = o->slots[0].arr[OFF_P];
    for (int i = 0; i < o->nsub; i++) {
        size_t lo = o->begin + (size_t)i * o->G, cnt = sub_count(o, i), bytes = sub_bytes(o, i);
        memset(buf, 0, bytes);
        model_init_range(m, buf, lo, lo + cnt, seed, std);
        uint64_t t = aio_write(&o->aio, &o->file, buf, bytes, sub_off(o, OFF_P, i));
        io_wait(o, &t);
    }
}

// ---------------------------------------------------------------------------
// Deep Optimizer States: rates, stride, device staging

size_t offload_device_bytes(const OffloadConfig *c, size_t own) {
    size_t g = (size_t)(c->subgroup_mb * 1048576.0) + 4096;
    return 4 * min_sz(g, own * sizeof(float) + 4096);
}

// Best seconds of `reps` runs of what, timed with the host clock.
#define BEST_OF(reps, t, body)                       \
    do {                                             \
        (t) = 1e30;                                  \
        for (int r_ = 0; r_ < (reps); r_++) {        \
            double t0_ = wall_seconds();             \
            body;                                    \
            double dt_ = wall_seconds() - t0_;       \
            if (dt_ < (t)) (t) = dt_;                \
        }                                            \
    } while (0)

static double rate(double amount, double seconds) { return amount / (seconds > 1e-9 ? seconds : 1e-9); }

// The rates of dos.h, on G-float buffers: the device staging, slots 0-1's host
// staging of parameters and gradients (nothing in them is live at start) and
// two temporary host arrays.
static void measure(Offload *o) {
    const Backend *bk = o->bk;
    size_t G = o->G;
    float *h0 = o->slots[0].arr[OFF_P], *h1 = o->slots[0].arr[OFF_G];
    float *h2 = o->slots[1].arr[OFF_P], *h3 = o->slots[1].arr[OFF_G];
    float *t0 = xcalloc(2 * G * sizeof(float), "AdamW rate scratch"), *t1 = t0 + G;
    double t;
    BEST_OF(3, t, { bk->h2d_async(o->dm[0], h0, G, o->fence); bk->event_sync(o->fence); });
    o->rates.bw_h2d = rate(4.0 * G, t);
    BEST_OF(3, t, { bk->d2h_async(h0, o->dm[0], G, o->fence); bk->event_sync(o->fence); });
    o->rates.bw_d2h = rate(4.0 * G, t);
    BEST_OF(3, t, { bk->adamw_update(o->dm[0], o->dv[0], o->dm[1], o->dv[1], G, 1e-9f, 0.9f, 0.95f, 1e-8f, 0.0f, 1);
                    bk->sync(); });
    o->rates.gpu_rate = rate((double)G, t);
    double alone;
    BEST_OF(3, alone, adamw_update(h2, h3, t0, t1, G, 1e-9f, 0.9f, 0.95f, 1e-8f, 0.0f, 1));
    o->rates.cpu_rate = rate((double)G, alone);
    // The host update while copies run both ways for about as long.
    int reps = (int)(alone / (4.0 * G / o->rates.bw_h2d + 4.0 * G / o->rates.bw_d2h)) + 1;
    if (reps > 64) reps = 64;
    double busy = 1e30;
    for (int r = 0; r < 2; r++) {
        for (int k = 0; k < reps; k++) {
            bk->h2d_async(o->dm[0], h0, G, NULL);
            bk->d2h_async(h1, o->dv[0], G, NULL);
        }
        double c0 = wall_seconds();
        adamw_update(h2, h3, t0, t1, G, 1e-9f, 0.9f, 0.95f, 1e-8f, 0.0f, 1);
        double dt = wall_seconds() - c0;
        if (dt < busy) busy = dt;
        bk->copy_fence(o->fence);
        bk->event_sync(o->fence);
    }
    free(t0);
    o->rates.cpu_slowdown = busy > alone ? busy / alone : 1.0;
}

void offload_dos_plan(Offload *o, const Model *m, int dos, int stride) {
    if (!o->device) return;
    if (o->params_tier != OFFLOAD_NONE) {
        o->stride = 0;
        log_info("offload: every update on the CPU: the parameters live in %s (Deep Optimizer States needs them "
                 "on the device)\n", o->params_tier == OFFLOAD_HOST ? "host memory" : "the file");
        return;
    }
    size_t need = 4 * o->G;
    const char *where = "the activations' memory (free between backward and forward)";
    float *d = m->acts;
    if (m->nacts < need) {
        d = o->bk->alloc(need * sizeof(float), "Deep Optimizer States staging");
        where = "its own device buffer (the activations are smaller)";
    }
    for (int k = 0; k < 2; k++) {
        o->dm[k] = d + (size_t)(2 * k) * o->G;
        o->dv[k] = d + (size_t)(2 * k + 1) * o->G;
    }
    measure(o);
    size_t *sizes = xmalloc(sizeof(size_t) * (size_t)(o->nsub ? o->nsub : 1), "subgroup sizes");
    for (int i = 0; i < o->nsub; i++) sizes[i] = sub_count(o, i);
    const char *why = "the performance model's choice";
    if (!dos) {
        o->stride = 0;
        why = "dos = false: every update on the CPU (ZeRO-Offload)";
    } else if (stride >= 0) {
        o->stride = stride > o->nsub ? o->nsub : stride;
        why = "[offload] dos_stride";
    } else {
        double s;
        o->stride = dos_choose(&o->rates, sizes, o->nsub, &s);
    }
    o->cpu_only_s = dos_predict(&o->rates, sizes, o->nsub, 0);
    o->predicted_s = dos_predict(&o->rates, sizes, o->nsub, o->stride);
    free(sizes);
    int ngpu = 0;
    for (int i = 0; i < o->nsub; i++) ngpu += dos_on_gpu(o->stride, i);
    log_info("offload: Deep Optimizer States: measured h2d %.2f GB/s, d2h %.2f GB/s, AdamW %.3g elem/s on the CPU, "
             "%.3g on the GPU, CPU slowdown under DMA x%.2f\n",
             o->rates.bw_h2d * 1e-9, o->rates.bw_d2h * 1e-9, o->rates.cpu_rate, o->rates.gpu_rate,
             o->rates.cpu_slowdown);
    log_info("offload: stride %d (%s): %d of %d subgroups on the GPU, staged in %s; predicted update %.3g s "
             "(all on the CPU %.3g s)\n",
             o->stride, why, ngpu, o->nsub, where, o->predicted_s, o->cpu_only_s);
}

// ---------------------------------------------------------------------------
// The subgroup pipeline

static void write_back(Offload *o, int i);

// Issues subgroup i's transfers into its slot: file reads (after the slot's
// last write-back), and on cuda for a CPU subgroup the device -> host copies
// of its gradients (and parameters on the device).
static void start_sub(Offload *o, int i, const float *params, const float *grads) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    if (s->dirty) write_back(o, s->sub);    // a GPU subgroup's, still deferred
    for (int a = 0; a < OFF_NARR; a++) io_wait(o, &s->wr[a]);   // its last write-back
    s->sub = i;
    for (int a = 0; a < OFF_NARR; a++)
        if (o->in_file[a]) s->rd[a] = aio_read(&o->aio, &o->file, s->arr[a], sub_bytes(o, i), sub_off(o, a, i));
    if (!o->device || dos_on_gpu(o->stride, i)) return;
    size_t off = (size_t)i * o->G, cnt = sub_count(o, i);
    if (o->params_tier == OFFLOAD_NONE) o->bk->d2h_async(s->arr[OFF_P], params + off, cnt, NULL);
    o->bk->d2h_async(s->arr[OFF_G], grads + off, cnt, s->ev);
    o->host_bytes_moved += (o->params_tier == OFFLOAD_NONE ? 8 : 4) * (uint64_t)cnt;
}

// Once per update of subgroup i: (a GPU subgroup's moments back on the host)
// the write-back of what the file holds.
static void write_back(Offload *o, int i) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    if (!s->dirty || s->sub != i) return;
    if (s->gpu_pending) o->bk->event_sync(s->ev);
    s->gpu_pending = 0;
    s->dirty = 0;
    for (int a = 0; a < OFF_NARR; a++)
        if (o->in_file[a] && a != OFF_G)
            s->wr[a] = aio_write(&o->aio, &o->file, s->arr[a], sub_bytes(o, i), sub_off(o, a, i));
}

// The host pointers of subgroup i's moments.
static void moments(Offload *o, int i, float **hm, float **hv) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    size_t off = (size_t)i * o->G;
    *hm = o->tier == OFFLOAD_HOST ? o->hm + off : s->arr[OFF_M];
    *hv = o->tier == OFFLOAD_HOST ? o->hv + off : s->arr[OFF_V];
}

// cuda, a GPU subgroup: moments in, device AdamW, moments out (all asynchronous).
static void update_gpu(Offload *o, const Model *m, Optim *opt, int i, float *params, float *grads, double lr,
                       float grad_scale) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    const Backend *bk = o->bk;
    size_t off = (size_t)i * o->G, cnt = sub_count(o, i);
    float *hm, *hv, *dm = o->dm[o->dset], *dv = o->dv[o->dset];
    o->dset ^= 1;
    moments(o, i, &hm, &hv);
    bk->h2d_async(dm, hm, cnt, NULL);
    bk->h2d_async(dv, hv, cnt, s->ev);
    bk->compute_wait(s->ev);
    if (grad_scale != 1.0f) bk->scale_inplace(grads + off, grad_scale, cnt);
    optim_update_range(opt, m, bk->adamw_update, params + off, grads + off, dm, dv, o->begin + off,
                       o->begin + off + cnt, lr, opt->t);
    bk->d2h_async(hm, dm, cnt, NULL);
    bk->d2h_async(hv, dv, cnt, s->ev);
    s->gpu_pending = 1;
    o->host_bytes_moved += 16 * (uint64_t)cnt;
}

// A CPU subgroup: host AdamW (on cuda on the staged gradients and parameters,
// the parameters copied back).
static void update_cpu(Offload *o, const Model *m, Optim *opt, int i, float *params, float *grads, double lr,
                       float grad_scale) {
    OffloadSlot *s = &o->slots[i % o->nbuf];
    size_t off = (size_t)i * o->G, cnt = sub_count(o, i);
    float *hm, *hv, *p, *g;
    moments(o, i, &hm, &hv);
    if (o->device) {
        o->bk->event_sync(s->ev);      // the gradients (and parameters) copied in start_sub
        g = s->arr[OFF_G];
        p = o->params_tier == OFFLOAD_HOST ? o->hp + off : s->arr[OFF_P];
    } else {
        g = o->grads_nvme ? s->arr[OFF_G] : grads + off;
        p = o->params_tier == OFFLOAD_NVME ? s->arr[OFF_P] : params + off;
    }
    if (grad_scale != 1.0f) scale_inplace(g, grad_scale, cnt);
    optim_update_range(opt, m, adamw_update, p, g, hm, hv, o->begin + off, o->begin + off + cnt, lr, opt->t);
    if (o->device && o->params_tier == OFFLOAD_NONE) {
        o->bk->h2d_async(params + off, p, cnt, NULL);
        o->host_bytes_moved += 4 * (uint64_t)cnt;
    }
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
    int gpu_prev = -1;  // a GPU subgroup whose write-back waits for the next subgroup's host work
    if (o->nsub > 0) start_sub(o, 0, params, grads);
    for (int i = 0; i < o->nsub; i++) {
        if (o->prefetch && i + 1 < o->nsub) start_sub(o, i + 1, params, grads);
        OffloadSlot *s = &o->slots[i % o->nbuf];
        for (int a = 0; a < OFF_NARR; a++) io_wait(o, &s->rd[a]);
        double t0 = wall_seconds();
        int gpu = o->device && dos_on_gpu(o->stride, i);
        if (gpu) update_gpu(o, m, opt, i, params, grads, lr, grad_scale);
        else update_cpu(o, m, opt, i, params, grads, lr, grad_scale);
        s->dirty = 1;
        o->update_s += wall_seconds() - t0;
        if (gpu_prev >= 0) write_back(o, gpu_prev);
        gpu_prev = gpu ? i : -1;
        if (!gpu) write_back(o, i);
        if (!o->prefetch) {
            write_back(o, i);
            gpu_prev = -1;
            for (int a = 0; a < OFF_NARR; a++) io_wait(o, &s->wr[a]);
            if (i + 1 < o->nsub) start_sub(o, i + 1, params, grads);
        }
    }
    if (gpu_prev >= 0) write_back(o, gpu_prev);
    char why[800];
    if (aio_wait_all(&o->aio, why, sizeof why) != 0) io_fatal(why);
    for (int s = 0; s < o->nbuf; s++)
        for (int a = 0; a < OFF_NARR; a++) o->slots[s].rd[a] = o->slots[s].wr[a] = 0;
    // cuda: the next forward reads the parameters copied back; the host tier is whole.
    o->bk->copy_fence(o->fence);
    o->bk->compute_wait(o->fence);
    o->bk->event_sync(o->fence);
}

// ---------------------------------------------------------------------------
// Parameter shards off the device (ZeRO-3)

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
    if (o->params_tier != OFFLOAD_NVME) return;
    o->bounce_cap = (size_t)aio_align_up(most * sizeof(float), o->file.align) + 2 * o->file.align;
    for (int b = 0; b < 2; b++) {
        o->bounce[b] = aio_buffer(o->bounce_cap, o->file.align);
        SYS_CHECK(o->bounce[b], "offload: out of memory for a %zu-byte bounce buffer", o->bounce_cap);
    }
    o->held_bytes += 2 * o->bounce_cap;
}

// The aligned file span holding unit u's owned part.
static void unit_span(const Offload *o, int u, uint64_t *a0, uint64_t *a1, uint64_t *at) {
    uint64_t off = o->roff[OFF_P] + (uint64_t)(o->ulo[u] - o->begin) * sizeof(float);
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
    if (o->params_tier == OFFLOAD_HOST) {
        o->bk->event_sync(o->fence);
        o->bk->from_host(dst, o->hp + (o->ulo[u] - o->begin), cnt);
        return;
    }
    int b = o->bounce_unit[0] == u ? 0 : o->bounce_unit[1] == u ? 1 : -1;
    if (b < 0 && cnt > 0) {
        b = o->bounce_unit[0] == -1 ? 0 : 1;   // a free one (the other may hold a prefetch)
        bounce_read(o, b, u);
    }
    if (cnt > 0) {
        io_wait(o, &o->bounce_tk[b]);
        uint64_t a0, a1, at;
        unit_span(o, u, &a0, &a1, &at);
        o->bk->from_host(dst, (float *)((char *)o->bounce[b] + at), cnt);
        o->bounce_unit[b] = -1;
    }
    int next = u >= o->last_unit ? u + 1 : u - 1;   // the direction of travel: forward or backward
    o->last_unit = u;
    if (!o->prefetch || next < 0 || next >= o->nunits || o->uhi[next] == o->ulo[next]) return;
    if (o->bounce_unit[0] == next || o->bounce_unit[1] == next) return;
    int f = o->bounce_unit[0] == -1 ? 0 : o->bounce_unit[1] == -1 ? 1 : -1;
    if (f >= 0) bounce_read(o, f, next);
}

// ---------------------------------------------------------------------------
// Gradients on NVMe

void offload_grad_buffers(Offload *o, size_t max_part) {
    size_t al = o->file.align / sizeof(float);
    o->gacc_cap = (size_t)aio_align_up(max_part ? max_part : 1, al) + 2 * al;
    for (int k = 0; k < 2; k++) {
        o->gacc[k] = aio_buffer(o->gacc_cap * sizeof(float), o->file.align);
        SYS_CHECK(o->gacc[k], "offload: out of memory for a %zu-float gradient buffer", o->gacc_cap);
    }
    o->gcarry = aio_buffer(o->file.align, o->file.align);
    SYS_CHECK(o->gcarry, "offload: out of memory for the gradient carry");
    o->gchunk = sumsq_chunk_size(o->n ? o->n : 1);
    o->gpart = xcalloc(sizeof(double) * (o->n / o->gchunk + 1), "gradient norm partials");
    o->gck = xcalloc(sizeof(float) * o->gchunk, "gradient norm chunk");
    o->carry_lo = o->n;
    o->held_bytes += 2 * o->gacc_cap * sizeof(float) + o->gchunk * sizeof(float);
}

// sumsq's chunk partials over [lo, hi) (final values at acc, acc[0] = float base).
static void grad_norm_parts(Offload *o, size_t lo, size_t hi, const float *acc, size_t base) {
    size_t k = o->gchunk;
    for (size_t c = (hi - 1) / k + 1; c-- > lo / k;) {
        size_t cs = c * k, ce = min_sz(cs + k, o->n);
        size_t a = cs > lo ? cs : lo, b = ce < hi ? ce : hi;
        if (a == cs && b == ce) {
            o->gpart[c] = sumsq_chunk(acc + (cs - base), ce - cs);
            continue;
        }
        memcpy(o->gck + (a - cs), acc + (a - base), (b - a) * sizeof(float));   // the chunk spans buckets
        if (a == cs) o->gpart[c] = sumsq_chunk(o->gck, ce - cs);
    }
}

void offload_grad_put(Offload *o, size_t lo, size_t hi, const float *part, int first, int last, float scale) {
    if (hi <= lo) return;
    size_t al = o->file.align / sizeof(float);
    if (hi == o->n) {                       // the first part of a micro-step: nothing carried
        o->carry_lo = o->n;
        memset(o->gcarry, 0, o->file.align);
    }
    SYS_CHECK(hi == o->carry_lo && hi - lo + 2 * al <= o->gacc_cap,
              "offload: gradient part [%zu, %zu) out of order (expected one ending at %zu)", lo, hi, o->carry_lo);
    size_t base = (size_t)aio_align_down(lo, al), top = (size_t)aio_align_up(hi, al), lo_up = (size_t)aio_align_up(lo, al);
    int k = o->gacc_next;
    o->gacc_next ^= 1;
    io_wait(o, &o->gacc_tk[k]);             // its last write
    float *acc = o->gacc[k];
    const Backend *hb = backend_cpu();
    if (first) {
        memset(acc + (lo - base), 0, (hi - lo) * sizeof(float));
    } else {                                // earlier micro-steps' sums
        uint64_t t = aio_read(&o->aio, &o->file, acc, (top - base) * sizeof(float),
                              o->roff[OFF_G] + (uint64_t)base * sizeof(float));
        io_wait(o, &t);
    }
    hb->axpy(acc + (lo - base), part, 1.0f, hi - lo);
    if (last) {
        if (scale != 1.0f) hb->scale_inplace(acc + (lo - base), scale, hi - lo);
        grad_norm_parts(o, lo, hi, acc, base);
    }
    memcpy(acc + (hi - base), o->gcarry + (hi - (size_t)aio_align_down(hi, al)), (top - hi) * sizeof(float));
    if (top > lo_up)
        o->gacc_tk[k] = aio_write(&o->aio, &o->file, acc + (lo_up - base), (top - lo_up) * sizeof(float),
                                  o->roff[OFF_G] + (uint64_t)lo_up * sizeof(float));
    // floats [lo, lo_up) go down with the next part (they share its last block)
    memset(o->gcarry, 0, o->file.align);
    memcpy(o->gcarry + (lo - base), acc + (lo - base), (lo_up - lo) * sizeof(float));
    o->carry_lo = lo;
}

double offload_grad_sumsq(Offload *o) {
    SYS_CHECK(o->carry_lo == 0 || o->n == 0, "offload: the step's gradients stopped at %zu", o->carry_lo);
    for (int k = 0; k < 2; k++) io_wait(o, &o->gacc_tk[k]);
    double total = 0.0;
    size_t nc = o->n ? (o->n + o->gchunk - 1) / o->gchunk : 0;
    for (size_t c = 0; c < nc; c++) total += o->gpart[c];
    return total;
}

uint64_t offload_read_bytes(const Offload *o) { return o->aio.bytes_read; }
uint64_t offload_write_bytes(const Offload *o) { return o->aio.bytes_written; }
double offload_io_wait(const Offload *o) { return o->aio.wait_s; }
