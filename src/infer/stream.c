// stream.c: the layer window of ZeRO-Inference (stream.h) over the staged
// weight file (stage.h), reading through the one I/O engine (aio.h).
#include "stream.h"
#include "aio.h"
#include "h5io.h"
#include "kernels.h"
#include "log.h"
#include "stage.h"
#include "sysutil.h"

#include <errno.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

// One layer slot of the window. host: where this rank's part of the file
// segment lands (the whole segment once shared parts are all-gathered); cut:
// this rank's tensor-parallel slice cut from a whole-layer segment; src: the
// ready bytes in the slice layout (host, cut, or the host-mode store); dev: the
// backend copy (device backends) and ev the event of its upload.
typedef struct Slot {
    uint8_t *host, *cut;
    const uint8_t *src;
    void *dev, *ev;
    int layer;                // held or arriving, -1 = free
    uint64_t ticket;          // own part's read in flight, 0 = none
    int ready, uploaded;
} Slot;

struct Stream {
    int mode;                 // GEN_FROM_HOST or GEN_FROM_NVME
    char path[DECK_STR];
    const Backend *bk;
    StageHeader h;
    StageLayer ly;            // the file's layer segment layout (a whole layer when h.shards = 1 < tp)
    StageLayer lyr;           // this rank's slice layout (= ly unless cutting)
    int L, seg_index, W;      // layers, the file shard this rank reads, slots
    int tp_rank, tp_size;
    int cutting;              // the file holds whole layers, the job runs tp > 1: each rank cuts its slice
    Comm share;               // ranks reading the same segments 1/N each (host path), size 1: none
    int share_res;            // the resident segment read 1/N by each rank of share and all-gathered
    int sharing;              // the layers too (a whole-layer file at tp > 1)
    size_t part;              // bytes of a shared segment each rank reads (multiple of the alignment)
    AioFile f;
    Aio aio;
    float *resident;          // segment 0 (fp32)
    size_t *res_off;          // (ntensors) float offset of each non-matrix tensor in it
    int ntensors;
    int *tmat, *tlayer;       // (ntensors) each tensor's STAGE_* matrix (-1: resident) and layer
    size_t seg_bytes;         // a layer segment rounded up to the alignment (a slot)
    size_t own_bytes;         // what this rank reads of a segment: seg_bytes, or its shared part
    size_t slice_bytes;       // this rank's slice rounded up to 64 bytes (device slots, uploads)
    uint8_t *store;           // host mode: this rank's part of the L segments, own_bytes apart
    int store_locked;
    Slot *slot;               // (W)
    uint8_t *verified;        // (L) checksum checked once
    int next;                 // the next layer to request
    int cur, cur_slot;        // the acquired layer and its slot, -1 = none
    double pass_t0;
    double rss_open;          // bytes resident when the stream opened (the process's own baseline)
    StreamStats st;
};

static const StageSeg *layer_seg(const Stream *s, int l) { return &s->h.seg[1 + (size_t)l * s->h.shards + s->seg_index]; }

// ---------------------------------------------------------------------------
// Reading, alone or shared

// A span read whole by this rank (the header; the resident segment unshared).
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

// Shared reading: of len bytes (a multiple of the alignment), rank i of the
// share group reads [i part, (i + 1) part), the last ones less or nothing.
static size_t part_bytes(const Stream *s, size_t len) {
    return aio_align_up((len + (size_t)s->share.size - 1) / (size_t)s->share.size, STAGE_ALIGN);
}
static void part_range(const Stream *s, size_t len, int i, size_t *b, size_t *e) {
    const size_t p = part_bytes(s, len);
    *b = (size_t)i * p < len ? (size_t)i * p : len;
    *e = *b + p < len ? *b + p : len;
}

// The other ranks' parts of buf (len bytes, this rank's part in place): an
// all-gather over the share group (counted by comm as its "stream" group).
static void gather_parts(Stream *s, uint8_t *buf, size_t len, const char *tag) {
    size_t *counts = xmalloc(sizeof(size_t) * (size_t)s->share.size, "all-gather counts");
    for (int i = 0; i < s->share.size; i++) {
        size_t b, e;
        part_range(s, len, i, &b, &e);
        counts[i] = (e - b) / sizeof(float);
    }
    CommReq r;
    comm_iallgather(&s->share, (float *)buf, counts, tag, &r);
    comm_wait(&s->share, &r);
    free(counts);
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
    if (h->shards != tp_size && h->shards != 1)
        FATAL_ALL("stage it for this tp (partita stage DECK --shards N), or whole (--shards 1)",
                  "[generate] stage = '%s' is cut for tp = %d, the job runs tp = %d", s->path, h->shards, tp_size);
    if ((int)h->dtype != d->cfg.generate.weights_dtype) {
        char where[300];
        FATAL_ALL("set [generate] weights_dtype to the file's, or stage it again with --dtype",
                  "%s: [generate] weights_dtype = %s, but '%s' holds %s", deck_where(d, "generate.weights_dtype", where, sizeof where),
                  dn[d->cfg.generate.weights_dtype], s->path, dn[h->dtype]);
    }
    if (h->shards != tp_size && h->dtype == STAGE_INT8)
        FATAL_ALL("stage int8 for this tp: partita stage DECK --dtype int8 --shards N",
                  "[generate] stage = '%s' holds whole int8 layers, the job runs tp = %d: the c_proj slices' per-row scales "
                  "are not those of the whole rows", s->path, tp_size);
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
    if (s->share_res) {
        const size_t len = aio_align_up(sg->bytes, STAGE_ALIGN);
        uint8_t *buf = aio_buffer(len, STAGE_ALIGN);
        SYS_CHECK(buf, "no memory for the %zu-byte resident segment", len);
        size_t b, e;
        part_range(s, len, s->share.rank, &b, &e);
        char why[700];
        if (e > b && aio_wait(&s->aio, aio_read(&s->aio, &s->f, buf + b, e - b, sg->offset + b), why, sizeof why) != 0)
            FATAL("check the staged file and its disk", "[generate] stage: %s", why);
        gather_parts(s, buf, len, "resident segment");
        s->st.resident_read = e - b;
        s->resident = (float *)buf;
    } else {
        s->resident = (float *)read_span(s, sg->offset, sg->bytes);
        s->st.resident_read = sg->bytes;
    }
    verify(s, s->resident, sg, "the resident segment", 0);
    s->res_off = xcalloc(sizeof(size_t) * (size_t)g->ntensors, "resident index");
    size_t at = 0;
    s->ntensors = g->ntensors;
    s->tmat = xmalloc(sizeof(int) * (size_t)g->ntensors, "tensor kinds");
    s->tlayer = xmalloc(sizeof(int) * (size_t)g->ntensors, "tensor layers");
    for (int t = 0; t < g->ntensors; t++) {
        s->tmat[t] = stage_matrix_of(g->tensors[t].kind);
        s->tlayer[t] = g->tensors[t].layer;
        if (s->tmat[t] >= 0) continue;
        s->res_off[t] = at;
        at += g->tensors[t].numel;
    }
    SYS_CHECK(at * sizeof(float) == sg->bytes, "resident segment of %llu bytes, the table needs %zu",
              (unsigned long long)sg->bytes, at * sizeof(float));
    s->st.resident_bytes = sg->bytes;
}

// This rank's part of layer segments: [own_off, own_off + own_bytes).
static size_t own_off(const Stream *s) {
    size_t b = 0, e = s->seg_bytes;
    if (s->sharing) part_range(s, s->seg_bytes, s->share.rank, &b, &e);
    return b;
}

// host mode: this rank's part of every segment read once and kept (page-locked:
// pinned on a device backend, mlock'ed on cpu where the limit allows). Unshared,
// every segment is verified now; shared, once gathered.
static void load_store(Stream *s) {
    const size_t bytes = s->own_bytes * (size_t)s->L, off = own_off(s);
    s->store = s->bk->host_alloc(bytes ? bytes : 1, "staged layers (host)");
    char why[700];
    for (int l = 0; l < s->L && s->own_bytes; l++)
        aio_read(&s->aio, &s->f, s->store + (size_t)l * s->own_bytes, s->own_bytes, layer_seg(s, l)->offset + off);
    if (aio_wait_all(&s->aio, why, sizeof why) != 0) FATAL("check the staged file and its disk", "[generate] stage: %s", why);
    if (!s->sharing) {
        for (int l = 0; l < s->L; l++) verify(s, s->store + (size_t)l * s->own_bytes, layer_seg(s, l), "layer", l);
        memset(s->verified, 1, (size_t)s->L);
    }
    if (s->bk->device_memory) return;
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

// The share group: the tp ranks (every one needs the resident segment whole,
// and with a whole-layer file every layer whole), a duplicate of the tp
// communicator on the host path (the slots are host memory).
static void share_open(Stream *s, const Comm *tp, int on) {
    MPI_Comm dup;
    MPI_CHECK(MPI_Comm_dup(tp->comm, &dup));
    CommOptions opt = tp->opt;
    opt.path = COMM_PATH_HOST;
    opt.bk = NULL;
    comm_init(&s->share, dup, "stream", &opt);
    s->share_res = on && s->share.size > 1;
}

static void slots_open(Stream *s) {
    const Backend *bk = s->bk;
    s->slot = xcalloc(sizeof(Slot) * (size_t)s->W, "slots");
    for (int k = 0; k < s->W; k++) {
        Slot *sl = &s->slot[k];
        if (s->mode == GEN_FROM_NVME || s->sharing) sl->host = bk->host_alloc(s->seg_bytes, "layer slot");
        if (s->cutting) sl->cut = bk->host_alloc(aio_align_up(s->lyr.bytes, STAGE_ALIGN), "layer slice");
        if (bk->device_memory) {
            sl->dev = bk->alloc(s->slice_bytes, "layer slot (device)");
            sl->ev = bk->event_create();
        }
        sl->layer = -1;
    }
}

Stream *stream_open(const Deck *d, const Model *g, const Backend *bk, const Comm *tp) {
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
    s->tp_rank = tp->rank;
    s->tp_size = tp->size;
    snprintf(s->path, sizeof s->path, "%s", gc->stage);
    if (aio_init(&s->aio, 32, why, sizeof why) != 0) FATAL(NULL, "generate: I/O engine: %s", why);
    if (aio_open(&s->f, s->path, AIO_READ, why, sizeof why) != 0)
        FATAL_ALL("write it with `partita stage DECK --out FILE`", "%s: [generate] stage: %s",
                  deck_where(d, "generate.stage", where, sizeof where), why);
    read_header(s);
    s->L = s->h.L;
    check_fit(s, d, g, tp->size);
    s->cutting = s->h.shards != tp->size;
    s->seg_index = s->cutting ? 0 : tp->rank;
    SYS_CHECK(stage_layer_layout(&s->h, &s->ly, why, sizeof why) == 0, "%s", why);
    StageHeader hr = s->h;
    hr.shards = tp->size;
    SYS_CHECK(stage_layer_layout(&hr, &s->lyr, why, sizeof why) == 0, "%s", why);
    share_open(s, tp, (int)gc->stream_share);
    read_resident(s, g);
    s->seg_bytes = aio_align_up(s->ly.bytes, STAGE_ALIGN);
    // Layers are shared only where the ranks need the same segment: a whole-layer file at tp > 1.
    s->sharing = s->share_res && s->cutting;
    s->own_bytes = s->seg_bytes;
    if (s->sharing) {
        size_t b, e;
        part_range(s, s->seg_bytes, s->share.rank, &b, &e);
        s->own_bytes = e - b;
        SYS_CHECK(s->seg_bytes / sizeof(float) <= (size_t)INT32_MAX, "a layer segment of %zu bytes is too large to all-gather",
                  s->seg_bytes);
    }
    s->slice_bytes = aio_align_up(s->lyr.bytes, 64);
    s->W = gc->window < s->L ? (int)gc->window : s->L;
    // A read only progresses once submitted, and the engine submits a request's 1 MiB
    // chunks while the ring has room: by default the ring holds the whole window's reads,
    // so that requesting a layer never waits (at most 4096 chunks).
    size_t depth = gc->io_depth ? (size_t)gc->io_depth : (size_t)s->W * ((s->own_bytes + AIO_CHUNK - 1) / AIO_CHUNK);
    if (depth < 1) depth = 1;
    if (depth > 4096) depth = 4096;
    aio_free(&s->aio);
    if (aio_init(&s->aio, (int)depth, why, sizeof why) != 0) FATAL(NULL, "generate: I/O engine: %s", why);
    s->st.io_depth = (int)depth;
    s->verified = xcalloc((size_t)s->L, "verified layers");
    if (s->mode == GEN_FROM_HOST) load_store(s);
    slots_open(s);
    s->cur = s->cur_slot = -1;
    s->st.bytes_per_pass = (uint64_t)s->L * (s->sharing ? s->own_bytes : s->ly.bytes);
    s->st.window_bytes = (uint64_t)s->W * ((s->mode == GEN_FROM_NVME || s->sharing ? s->seg_bytes : 0) +
                                           (s->cutting ? aio_align_up(s->lyr.bytes, STAGE_ALIGN) : 0));
    s->st.device_window_bytes = bk->device_memory ? (uint64_t)s->W * s->slice_bytes : 0;
    s->st.window = s->W;
    s->st.dtype = (int)s->h.dtype;
    s->st.share_ranks = s->sharing ? s->share.size : 1;
    return s;
}

void stream_close(Stream *s) {
    if (!s) return;
    char why[700];
    if (s->mode == GEN_FROM_NVME && aio_wait_all(&s->aio, why, sizeof why) != 0) log_warn("generate: %s\n", why);
    const Backend *bk = s->bk;
    if (bk->device_memory) bk->sync();
    for (int k = 0; k < s->W; k++) {
        Slot *sl = &s->slot[k];
        if (sl->ev) {
            bk->event_sync(sl->ev);
            bk->event_destroy(sl->ev);
        }
        if (sl->dev) bk->release(sl->dev);
        if (sl->host) bk->host_free(sl->host);
        if (sl->cut) bk->host_free(sl->cut);
    }
    if (s->store) {
        if (s->store_locked) munlock(s->store, s->own_bytes * (size_t)s->L);
        bk->host_free(s->store);
    }
    aio_buffer_free(s->resident);
    aio_close(&s->f);
    aio_free(&s->aio);
    stage_header_free(&s->h);
    MPI_Comm dup = s->share.comm;
    comm_free(&s->share);
    MPI_CHECK(MPI_Comm_free(&dup));
    free(s->res_off); free(s->tmat); free(s->tlayer); free(s->slot); free(s->verified);
    free(s);
}

const float *stream_resident(const Stream *s, int t) {
    SYS_CHECK(s->resident, "stream: the resident tensors were released");
    SYS_CHECK(t >= 0 && t < s->ntensors, "stream: tensor %d of %d", t, s->ntensors);
    if (s->tmat[t] >= 0) return NULL;
    return s->resident + s->res_off[t];
}

int stream_dtype(const Stream *s) { return (int)s->h.dtype; }

void stream_resident_done(Stream *s) {
    aio_buffer_free(s->resident);
    s->resident = NULL;
}

size_t stream_arena_bytes(const Model *g, int tp, int window, int wdtype, size_t resident_arena) {
    StageHeader h = {.dtype = (uint32_t)wdtype, .L = g->s.L, .C = g->s.C, .H = g->s.H, .shards = tp};
    StageLayer ly;
    char why[200];
    if (stage_layer_layout(&h, &ly, why, sizeof why) != 0) return resident_arena;
    size_t mats = 0;
    for (int t = 0; t < g->ntensors; t++)
        if (stage_matrix_of(g->tensors[t].kind) >= 0) mats += 4 * g->tensors[t].numel;
    const int W = window < g->s.L ? window : g->s.L;
    const size_t slots = (size_t)W * (aio_align_up(ly.bytes, 64) + 512);
    return resident_arena > mats ? resident_arena - mats + slots : slots;
}

// ---------------------------------------------------------------------------
// The window

// Rank tp_rank's slice of a whole layer segment (engine.c's cut: c_attn and
// c_fc by output rows, c_attn's q, k and v blocks each; both c_proj by input
// columns). fp32 and bf16 (int8 files are cut by stage).
static void cut_layer(const Stream *s, const uint8_t *whole, uint8_t *out) {
    const size_t es = s->h.dtype == STAGE_F32 ? 4 : 2;
    const int r = s->tp_rank, Ct = s->h.C / s->tp_size, Ht = s->h.H / s->tp_size, C = s->h.C;
    for (int k = 0; k < STAGE_NMAT; k++) {
        const uint8_t *src = whole + s->ly.mat[k];
        uint8_t *dst = out + s->lyr.mat[k];
        const size_t wcols = (size_t)s->ly.cols[k], cols = (size_t)s->lyr.cols[k];
        const int rows = s->lyr.rows[k];
        for (int j = 0; j < rows; j++) {
            size_t srow = (size_t)j, scol = 0;
            if (k == STAGE_QKV) srow = (size_t)(j / Ct) * (size_t)C + (size_t)r * (size_t)Ct + (size_t)(j % Ct);
            else if (k == STAGE_FC) srow = (size_t)r * (size_t)Ht + (size_t)j;
            else scol = (size_t)r * (size_t)(k == STAGE_ATTP ? Ct : Ht);
            memcpy(dst + (size_t)j * cols * es, src + (srow * wcols + scol) * es, cols * es);
        }
    }
}

// Slot k takes layer l: this rank's part is read (nvme) or taken from the store
// (host). Time spent here counts as stall: a host copy, a synchronous read (the
// engine's fallback), or a submission into a full ring is time not computing.
static void request(Stream *s, int k, int l) {
    Slot *sl = &s->slot[k];
    if (sl->ev && sl->uploaded) s->bk->event_sync(sl->ev);   // the host buffers' last upload has finished
    sl->layer = l;
    sl->ready = sl->uploaded = 0;
    sl->ticket = 0;
    const StageSeg *sg = layer_seg(s, l);
    const size_t off = own_off(s);
    double t0 = wall_seconds();
    if (s->own_bytes && s->mode == GEN_FROM_NVME)
        sl->ticket = aio_read(&s->aio, &s->f, sl->host + off, s->own_bytes, sg->offset + off);
    else if (s->own_bytes && s->sharing)
        memcpy(sl->host + off, s->store + (size_t)l * s->own_bytes, s->own_bytes);
    s->st.stall_s += wall_seconds() - t0;
    s->st.bytes_read += s->sharing ? s->own_bytes : s->ly.bytes;
}

// Slot k's layer made ready in this rank's layout: its read waited for, the
// other ranks' parts gathered, the checksum verified once, the slice cut.
static void complete(Stream *s, int k) {
    Slot *sl = &s->slot[k];
    const int l = sl->layer;
    double t0 = wall_seconds();
    if (sl->ticket) {
        char why[700];
        if (aio_wait(&s->aio, sl->ticket, why, sizeof why) != 0)
            FATAL("check the staged file and its disk", "[generate] stage, layer %d: %s", l, why);
        sl->ticket = 0;
    }
    const uint8_t *seg = s->mode == GEN_FROM_HOST && !s->sharing ? s->store + (size_t)l * s->own_bytes : sl->host;
    if (s->sharing) gather_parts(s, sl->host, s->seg_bytes, "layer");
    if (!s->verified[l]) {
        verify(s, seg, layer_seg(s, l), "layer", l);
        s->verified[l] = 1;
    }
    if (s->cutting) {
        cut_layer(s, seg, sl->cut);
        seg = sl->cut;
    }
    sl->src = seg;
    sl->ready = 1;
    s->st.stall_s += wall_seconds() - t0;
}

// Device backends: slot k's slice copied to its device slot on the copy stream.
static void upload(Stream *s, int k) {
    Slot *sl = &s->slot[k];
    if (!s->bk->device_memory || sl->uploaded) return;
    s->bk->h2d_async(sl->dev, (const float *)sl->src, s->slice_bytes / sizeof(float), sl->ev);
    sl->uploaded = 1;
}

static int find(const Stream *s, int l) {
    for (int k = 0; k < s->W; k++) if (s->slot[k].layer == l) return k;
    return -1;
}

// Out of order (the first pass): drop what is in flight and fill every slot from layer l on.
static void refill(Stream *s, int l) {
    char why[700];
    if (s->mode == GEN_FROM_NVME && aio_wait_all(&s->aio, why, sizeof why) != 0)
        FATAL("check the staged file and its disk", "[generate] stage: %s", why);
    for (int k = 0; k < s->W; k++) {
        s->slot[k].ticket = 0;
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
    if (!s->slot[k].ready) complete(s, k);
    if (s->bk->device_memory) {
        upload(s, k);
        s->bk->compute_wait(s->slot[k].ev);   // the layer's kernels wait for its copy, the host does not
    }
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
    // Device backends: layer l's kernels are queued; while they run, the next
    // layer is made ready and its copy issued on the copy stream.
    if (s->bk->device_memory) {
        int k = find(s, (l + 1) % s->L);
        if (k >= 0) {
            if (!s->slot[k].ready) complete(s, k);
            upload(s, k);
        }
    }
    if (l == s->L - 1) {
        s->st.passes++;
        s->st.pass_s += wall_seconds() - s->pass_t0;
    }
}

HeldMatrix stream_matrix(Stream *s, int t) {
    SYS_CHECK(t >= 0 && t < s->ntensors && s->tmat[t] >= 0, "stream: tensor %d is not a layer matrix", t);
    const int l = s->tlayer[t], k = s->tmat[t];
    SYS_CHECK(l == s->cur, "stream: matrix %d of layer %d, while layer %d is held", t, l, s->cur);
    const Slot *sl = &s->slot[s->cur_slot];
    const uint8_t *base = s->bk->device_memory ? (const uint8_t *)sl->dev : sl->src;
    return (HeldMatrix){base + s->lyr.mat[k], (int)s->h.dtype,
                        s->h.dtype == STAGE_INT8 ? (const float *)(base + s->lyr.scale[k]) : NULL};
}

void stream_stats(const Stream *s, StreamStats *out) {
    *out = s->st;
    out->share_bytes_sent = s->share.bytes[COMM_ALLGATHER];
}

void stream_report(const Stream *s, hid_t f) {
    StreamStats t;
    stream_stats(s, &t);
    const double gbps = t.pass_s > 0 ? (double)t.bytes_per_pass * (double)t.passes / t.pass_s / 1e9 : 0.0;
    log_info("  streaming (%s, window %d, %d reads of 1 MiB in flight at most): %.1f MiB read per pass per rank, %llu passes, %.2f GB read; "
             "achieved %.2f GB/s over the passes' layers (%.2f s), %.2f s of it waiting for (or copying) layers\n",
             s->mode == GEN_FROM_NVME ? "nvme" : "host", t.window, t.io_depth, (double)t.bytes_per_pass / 1048576.0,
             (unsigned long long)t.passes, (double)t.bytes_read / 1e9, gbps, t.pass_s, t.stall_s);
    if (s->share_res)
        log_info("  shared reading over %d ranks (%s): each reads 1/%d of %s and all-gathers the rest; %.1f MiB of the resident "
                 "segment read, %.2f GB sent in all-gathers (rank 0)\n", s->share.size,
                 s->cutting ? "whole-layer file" : "file cut for this tp", s->share.size,
                 s->sharing ? "every layer and the resident segment" : "the resident segment", (double)t.resident_read / 1048576.0,
                 (double)t.share_bytes_sent / 1e9);
    h5_attr_str(f, "weights_from", s->mode == GEN_FROM_NVME ? "nvme" : "host");
    h5_attr_i64(f, "stream_window", t.window);
    h5_attr_i64(f, "stream_bytes_per_pass", (int64_t)t.bytes_per_pass);
    h5_attr_i64(f, "stream_bytes_read", (int64_t)t.bytes_read);
    h5_attr_i64(f, "stream_layer_segment_bytes", (int64_t)s->seg_bytes);
    h5_attr_i64(f, "stream_resident_read_bytes", (int64_t)t.resident_read);
    h5_attr_i64(f, "stream_share_ranks", t.share_ranks);
    h5_attr_i64(f, "stream_share_bytes_sent", (int64_t)t.share_bytes_sent);
    h5_attr_i64(f, "stream_cut", s->cutting);
    h5_attr_f64(f, "stream_read_gb_per_s", gbps);
    h5_attr_f64(f, "stream_layers_s", t.pass_s);
    h5_attr_f64(f, "stream_stall_s", t.stall_s);
    h5_attr_i64(f, "stream_window_bytes", (int64_t)t.window_bytes);
    h5_attr_i64(f, "stream_device_window_bytes", (int64_t)t.device_window_bytes);
    h5_attr_i64(f, "stream_resident_bytes", (int64_t)t.resident_bytes);
    struct rusage ru;
    double peak = getrusage(RUSAGE_SELF, &ru) == 0 ? (double)ru.ru_maxrss * 1024.0 : 0.0;   // Linux: KiB
    h5_attr_f64(f, "rss_at_stream_open_bytes", s->rss_open);
    h5_attr_f64(f, "peak_rss_bytes", peak);
    log_info("  memory (rank 0): peak RSS %.1f MiB, %.1f MiB before the stream opened; window %.1f MiB, resident %.1f MiB\n",
             peak / 1048576.0, s->rss_open / 1048576.0, (double)t.window_bytes / 1048576.0,
             (double)t.resident_bytes / 1048576.0);
}
