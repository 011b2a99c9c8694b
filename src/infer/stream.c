// stream.c: the layer window of ZeRO-Inference (stream.h) over the staged
// weight file (stage.h), reading through the one I/O engine (aio.h).
#include "stream.h"
#include "aio.h"
#include "h5io.h"
#include "kernels.h"
#include "log.h"
#include "stage.h"
#include "sysutil.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

struct Stream {
    int mode;                 // GEN_FROM_HOST or GEN_FROM_NVME
    char path[DECK_STR];
    const Backend *bk;
    StageHeader h;
    StageLayer ly;            // this rank's layer segment layout
    int L, rank, W;           // layers, tp rank (= shard), slots
    AioFile f;
    Aio aio;
    float *resident;          // segment 0 (fp32)
    size_t *res_off;          // (ntensors) float offset of each non-matrix tensor in it
    size_t seg_bytes;         // a layer segment rounded up to the alignment (a slot)
    uint8_t *store;           // host mode: this rank's L segments, seg_bytes apart
    int store_locked;
    uint8_t **slot;           // (W) host buffers (aligned)
    void **dslot;             // (W) backend copies on a device backend, else the slots themselves
    int *slot_layer;          // (W) layer held or arriving, -1 = free
    uint64_t *ticket;         // (W) read in flight, 0 = none
    uint8_t *verified;        // (L) checksum checked once
    int next;                 // the next layer to request
    int cur, cur_slot;        // the acquired layer and its slot, -1 = none
    double pass_t0;
    double rss_open;          // bytes resident when the stream opened (the process's own baseline)
    StreamStats st;
};

static const StageSeg *layer_seg(const Stream *s, int l) { return &s->h.seg[1 + (size_t)l * s->h.shards + s->rank]; }

// The resident segment and the header: read with the engine, checked.
static uint8_t *read_span(Stream *s, uint64_t off, uint64_t bytes) {
    uint64_t len = aio_align_up(bytes, s->f.align);
    uint8_t *buf = aio_buffer(len, s->f.align > 64 ? s->f.align : 64);
    SYS_CHECK(buf, "no memory for %llu bytes of '%s'", (unsigned long long)len, s->path);
    char why[700];
    uint64_t t = aio_read(&s->aio, &s->f, buf, len, off);
    if (aio_wait(&s->aio, t, why, sizeof why) != 0)
        FATAL("check the staged file and its disk", "[generate] stage: %s", why);
    return buf;
}

static void read_header(Stream *s) {
    uint64_t want = s->f.size < STAGE_ALIGN ? s->f.size : STAGE_ALIGN, need = 0;
    char why[600];
    for (int tries = 0; tries < 2; tries++) {
        uint8_t *b = read_span(s, 0, want ? want : 1);
        int rc = stage_header_parse(&s->h, b, want, s->f.size, &need, why, sizeof why);
        aio_buffer_free(b);
        if (rc == 0) return;
        if (!need) break;
        want = need;
    }
    FATAL("stage the weights again: partita stage DECK --out FILE", "[generate] stage = '%s': %s", s->path, why);
}

// The file against the deck and the job.
static void check_fit(Stream *s, const Deck *d, const Model *g, int tp_size) {
    const StageHeader *h = &s->h;
    const int file[7] = {h->L, h->C, h->NH, h->V, h->Vp, h->maxT, h->H};
    const int want[7] = {g->s.L, g->s.C, g->s.NH, g->s.V, g->s.Vp, g->s.maxT, g->s.H};
    static const char *names[7] = {"n_layer", "n_embd", "n_head", "vocab_size", "padded_vocab_size", "n_positions", "mlp_hidden"};
    for (int i = 0; i < 7; i++)
        if (file[i] != want[i])
            FATAL_ALL("set the deck's [model] to the staged model's shape", "[generate] stage = '%s': %s = %d, the deck's [model] gives %d",
                      s->path, names[i], file[i], want[i]);
    static const char *dn[] = {"fp32", "bf16", "int8"};
    if (h->shards != tp_size)
        FATAL_ALL("stage it for this tp: partita stage DECK --shards N", "[generate] stage = '%s' is cut for tp = %d, the job runs tp = %d",
                  s->path, h->shards, tp_size);
    if ((int)h->dtype != d->cfg.generate.weights_dtype) {
        char where[300];
        FATAL_ALL("set [generate] weights_dtype to the file's, or stage it again with --dtype",
                  "%s: [generate] weights_dtype = %s, but '%s' holds %s", deck_where(d, "generate.weights_dtype", where, sizeof where),
                  dn[d->cfg.generate.weights_dtype], s->path, dn[h->dtype]);
    }
}

static void verify(const Stream *s, const void *p, const StageSeg *sg, const char *what, int l) {
    uint64_t sum = stage_checksum(p, sg->bytes);
    if (sum != sg->checksum)
        FATAL("the file was altered or damaged: stage it again", "[generate] stage = '%s': %s %d (segment at byte %llu) fails its checksum "
              "(stored %016llx, computed %016llx)", s->path, what, l, (unsigned long long)sg->offset,
              (unsigned long long)sg->checksum, (unsigned long long)sum);
}

static void read_resident(Stream *s, const Model *g) {
    const StageSeg *sg = &s->h.seg[0];
    s->resident = (float *)read_span(s, sg->offset, sg->bytes);
    verify(s, s->resident, sg, "the resident segment", 0);
    s->res_off = xcalloc(sizeof(size_t) * (size_t)g->ntensors, "resident index");
    size_t at = 0;
    for (int t = 0; t < g->ntensors; t++) {
        int j = t >= 2 && t < 2 + P_PER_LAYER * s->L ? (t - 2) % P_PER_LAYER : -1;
        if (j == P_QKVW || j == P_ATTPW || j == P_FCW || j == P_FCPW) continue;
        s->res_off[t] = at;
        at += g->tensors[t].numel;
    }
    SYS_CHECK(at * sizeof(float) == sg->bytes, "resident segment of %llu bytes, the table needs %zu",
              (unsigned long long)sg->bytes, at * sizeof(float));
    s->st.resident_bytes = sg->bytes;
}

// host mode: every segment of this rank read once, verified, kept (locked where allowed).
static void load_store(Stream *s) {
    const size_t bytes = s->seg_bytes * (size_t)s->L;
    s->store = aio_buffer(bytes, s->f.align);
    if (!s->store) FATAL("use weights_from = nvme", "[generate] weights_from = host: no memory for %zu bytes of layers", bytes);
    char why[700];
    for (int l = 0; l < s->L; l++) aio_read(&s->aio, &s->f, s->store + (size_t)l * s->seg_bytes, s->seg_bytes, layer_seg(s, l)->offset);
    if (aio_wait_all(&s->aio, why, sizeof why) != 0) FATAL("check the staged file and its disk", "[generate] stage: %s", why);
    for (int l = 0; l < s->L; l++) verify(s, s->store + (size_t)l * s->seg_bytes, layer_seg(s, l), "layer", l);
    memset(s->verified, 1, (size_t)s->L);
    s->store_locked = mlock(s->store, bytes) == 0;
    if (!s->store_locked)
        log_info("generate: the staged layers (%.1f MiB) are not page-locked (mlock: %s); raise `ulimit -l` to lock them\n",
                 (double)bytes / 1048576.0, strerror(errno));
}

static double rss_now(void) {
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0.0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

Stream *stream_open(const Deck *d, const Model *g, const Backend *bk, int tp_rank, int tp_size) {
    const GenerateConfig *gc = &d->cfg.generate;
    char where[300], why[700];
    if (!gc->stage[0])
        FATAL_ALL("write one with `partita stage DECK --out FILE` and set [generate] stage = FILE",
                  "%s: [generate] weights_from = %s needs [generate] stage", deck_where(d, "generate.weights_from", where, sizeof where),
                  gc->weights_from == GEN_FROM_HOST ? "host" : "nvme");
    if (gc->naive)
        FATAL_ALL("set [generate] naive = false, or weights_from = memory", "%s: [generate] naive recomputes from resident weights only",
                  deck_where(d, "generate.naive", where, sizeof where));
    Stream *s = xcalloc(sizeof *s, "stream");
    s->rss_open = rss_now();
    s->mode = gc->weights_from;
    s->bk = bk;
    s->rank = tp_rank;
    snprintf(s->path, sizeof s->path, "%s", gc->stage);
    if (aio_init(&s->aio, 32, why, sizeof why) != 0) FATAL(NULL, "generate: I/O engine: %s", why);
    if (aio_open(&s->f, s->path, AIO_READ, why, sizeof why) != 0)
        FATAL_ALL("write it with `partita stage DECK --out FILE`", "%s: [generate] stage: %s",
                  deck_where(d, "generate.stage", where, sizeof where), why);
    read_header(s);
    s->L = s->h.L;
    check_fit(s, d, g, tp_size);
    SYS_CHECK(stage_layer_layout(&s->h, &s->ly, why, sizeof why) == 0, "%s", why);
    read_resident(s, g);
    s->seg_bytes = aio_align_up(s->ly.bytes, STAGE_ALIGN);
    s->W = gc->window < s->L ? (int)gc->window : s->L;
    // A read only progresses once submitted, and the engine submits a request's 1 MiB
    // chunks while the ring has room: by default the ring holds the whole window's reads,
    // so that requesting a layer never waits (at most 4096 chunks).
    size_t depth = gc->io_depth ? (size_t)gc->io_depth : (size_t)s->W * ((s->seg_bytes + AIO_CHUNK - 1) / AIO_CHUNK);
    if (depth > 4096) depth = 4096;
    aio_free(&s->aio);
    if (aio_init(&s->aio, (int)depth, why, sizeof why) != 0) FATAL(NULL, "generate: I/O engine: %s", why);
    s->st.io_depth = (int)depth;
    s->verified = xcalloc((size_t)s->L, "verified layers");
    if (s->mode == GEN_FROM_HOST) load_store(s);
    s->slot = xcalloc(sizeof(uint8_t *) * (size_t)s->W, "slots");
    s->dslot = xcalloc(sizeof(void *) * (size_t)s->W, "slots");
    s->slot_layer = xmalloc(sizeof(int) * (size_t)s->W, "slots");
    s->ticket = xcalloc(sizeof(uint64_t) * (size_t)s->W, "slots");
    for (int k = 0; k < s->W; k++) {
        s->slot[k] = aio_buffer(s->seg_bytes, STAGE_ALIGN);
        SYS_CHECK(s->slot[k], "no memory for a %zu-byte layer slot", s->seg_bytes);
        s->dslot[k] = bk->device_memory ? bk->alloc(s->seg_bytes, "layer slot") : s->slot[k];
        s->slot_layer[k] = -1;
    }
    s->cur = s->cur_slot = -1;
    s->st.bytes_per_pass = (uint64_t)s->L * s->ly.bytes;
    s->st.window_bytes = (uint64_t)s->W * s->seg_bytes;
    s->st.window = s->W;
    s->st.dtype = (int)s->h.dtype;
    return s;
}

void stream_close(Stream *s) {
    if (!s) return;
    char why[700];
    if (s->mode == GEN_FROM_NVME && aio_wait_all(&s->aio, why, sizeof why) != 0) log_warn("generate: %s\n", why);
    for (int k = 0; k < s->W; k++) {
        if (s->bk->device_memory) s->bk->release(s->dslot[k]);
        aio_buffer_free(s->slot[k]);
    }
    if (s->store) {
        if (s->store_locked) munlock(s->store, s->seg_bytes * (size_t)s->L);
        aio_buffer_free(s->store);
    }
    aio_buffer_free(s->resident);
    aio_close(&s->f);
    aio_free(&s->aio);
    stage_header_free(&s->h);
    free(s->res_off); free(s->slot); free(s->dslot); free(s->slot_layer); free(s->ticket); free(s->verified);
    free(s);
}

const float *stream_resident(const Stream *s, int t) {
    SYS_CHECK(s->resident, "stream: the resident tensors were released");
    int j = t >= 2 && t < 2 + P_PER_LAYER * s->L ? (t - 2) % P_PER_LAYER : -1;
    if (j == P_QKVW || j == P_ATTPW || j == P_FCW || j == P_FCPW) return NULL;
    return s->resident + s->res_off[t];
}

int stream_dtype(const Stream *s) { return (int)s->h.dtype; }

void stream_resident_done(Stream *s) {
    aio_buffer_free(s->resident);
    s->resident = NULL;
}

// ---------------------------------------------------------------------------
// The window

// Time spent here counts as stall: a host copy, a synchronous read (the
// engine's fallback), or a submission into a full ring is time not computing.
static void request(Stream *s, int k, int l) {
    s->slot_layer[k] = l;
    const StageSeg *sg = layer_seg(s, l);
    double t0 = wall_seconds();
    if (s->mode == GEN_FROM_NVME) s->ticket[k] = aio_read(&s->aio, &s->f, s->slot[k], s->seg_bytes, sg->offset);
    else memcpy(s->slot[k], s->store + (size_t)l * s->seg_bytes, s->ly.bytes);
    s->st.stall_s += wall_seconds() - t0;
    s->st.bytes_read += s->ly.bytes;
}

static int find(const Stream *s, int l) {
    for (int k = 0; k < s->W; k++) if (s->slot_layer[k] == l) return k;
    return -1;
}

// Out of order (the first pass): drop what is in flight and fill every slot from layer l on.
static void refill(Stream *s, int l) {
    char why[700];
    if (s->mode == GEN_FROM_NVME && aio_wait_all(&s->aio, why, sizeof why) != 0)
        FATAL("check the staged file and its disk", "[generate] stage: %s", why);
    for (int k = 0; k < s->W; k++) {
        s->ticket[k] = 0;
        request(s, k, (l + k) % s->L);
    }
    s->next = (l + s->W) % s->L;
}

void stream_acquire(Stream *s, int l) {
    SYS_CHECK(l >= 0 && l < s->L && s->cur < 0, "stream: layer %d acquired while %d is held", l, s->cur);
    if (l == 0) s->pass_t0 = wall_seconds();
    int k = find(s, l);
    if (k < 0) {
        refill(s, l);
        k = find(s, l);
    }
    if (s->ticket[k]) {
        char why[700];
        double t0 = wall_seconds();
        if (aio_wait(&s->aio, s->ticket[k], why, sizeof why) != 0)
            FATAL("check the staged file and its disk", "[generate] stage, layer %d: %s", l, why);
        s->st.stall_s += wall_seconds() - t0;
        s->ticket[k] = 0;
    }
    if (!s->verified[l]) {
        verify(s, s->slot[k], layer_seg(s, l), "layer", l);
        s->verified[l] = 1;
    }
    if (s->bk->device_memory) s->bk->from_host(s->dslot[k], (const float *)s->slot[k], s->seg_bytes / sizeof(float));
    s->cur = l;
    s->cur_slot = k;
}

void stream_release(Stream *s, int l) {
    SYS_CHECK(l == s->cur, "stream: layer %d released, %d is held", l, s->cur);
    // A window as deep as the model keeps every layer after the first pass.
    if (s->W < s->L) {
        request(s, s->cur_slot, s->next);
        s->next = (s->next + 1) % s->L;
    }
    s->cur = s->cur_slot = -1;
    if (l == s->L - 1) {
        s->st.passes++;
        s->st.pass_s += wall_seconds() - s->pass_t0;
    }
}

HeldMatrix stream_matrix(Stream *s, int t) {
    const int l = (t - 2) / P_PER_LAYER, j = (t - 2) % P_PER_LAYER;
    SYS_CHECK(t >= 2 && l == s->cur, "stream: matrix %d of layer %d, while layer %d is held", t, l, s->cur);
    const int k = j == P_QKVW ? STAGE_QKV : j == P_ATTPW ? STAGE_ATTP : j == P_FCW ? STAGE_FC : STAGE_FCP;
    SYS_CHECK(j == P_QKVW || j == P_ATTPW || j == P_FCW || j == P_FCPW, "stream: tensor %d is not a matrix", t);
    uint8_t *base = s->dslot[s->cur_slot];
    return (HeldMatrix){base + s->ly.mat[k], (int)s->h.dtype,
                        s->h.dtype == STAGE_INT8 ? (const float *)(base + s->ly.scale[k]) : NULL};
}

void stream_stats(const Stream *s, StreamStats *out) { *out = s->st; }

void stream_report(const Stream *s, hid_t f) {
    const StreamStats *t = &s->st;
    const double gbps = t->pass_s > 0 ? (double)t->bytes_per_pass * (double)t->passes / t->pass_s / 1e9 : 0.0;
    log_info("  streaming (%s, window %d, %d reads of 1 MiB in flight at most): %.1f MiB read per pass per rank, %llu passes, %.2f GB read; "
             "achieved %.2f GB/s over the passes' layers (%.2f s), %.2f s of it waiting for (or copying) layers\n",
             s->mode == GEN_FROM_NVME ? "nvme" : "host", t->window, t->io_depth, (double)t->bytes_per_pass / 1048576.0,
             (unsigned long long)t->passes, (double)t->bytes_read / 1e9, gbps, t->pass_s, t->stall_s);
    h5_attr_str(f, "weights_from", s->mode == GEN_FROM_NVME ? "nvme" : "host");
    h5_attr_i64(f, "stream_window", t->window);
    h5_attr_i64(f, "stream_bytes_per_pass", (int64_t)t->bytes_per_pass);
    h5_attr_i64(f, "stream_bytes_read", (int64_t)t->bytes_read);
    h5_attr_f64(f, "stream_read_gb_per_s", gbps);
    h5_attr_f64(f, "stream_layers_s", t->pass_s);
    h5_attr_f64(f, "stream_stall_s", t->stall_s);
    h5_attr_i64(f, "stream_window_bytes", (int64_t)t->window_bytes);
    h5_attr_i64(f, "stream_resident_bytes", (int64_t)t->resident_bytes);
    struct rusage ru;
    double peak = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0.0;   // Linux: KiB
    h5_attr_f64(f, "rss_at_stream_open_bytes", s->rss_open);
    h5_attr_f64(f, "peak_rss_bytes", peak);
    log_info("  memory (rank 0): peak RSS %.1f MiB, %.1f MiB before the stream opened; window %.1f MiB, resident %.1f MiB\n",
             peak / 1048576.0, s->rss_open / 1048576.0, (double)t->window_bytes / 1048576.0,
             (double)t->resident_bytes / 1048576.0);
}
