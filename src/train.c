// train.c: the data-parallel training loop.
#include "train.h"
#include "ckpt.h"
#include "comm.h"
#include "data.h"
#include "device.h"
#include "h5io.h"
#include "kernels.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "offload.h"
#include "peak.h"
#include "prep.h"
#include "stop.h"
#include "sysutil.h"
#include "topo.h"
#include "weights.h"
#include "zero.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

// Everything one training run owns, created once before the step loop.
typedef struct Trainer {
    const Deck *deck;
    const Config *cfg;
    char *deck_text;
    Topo topo;
    Comm dp;
    Comm sp;                    // sequence group (Ulysses all-to-alls); size 1 without sp
    Comm ep, edp;               // expert-parallel and expert-data-parallel groups (ep > 1 only)
    int ep_size;
    MoeSpec moe;                // the deck's [moe] shape (nmoe = 0: dense)
    double moe_aux, moe_choices, moe_dropped;   // this step's sums (aux: over micro-steps of the mean over rows)
    int moe_nx;                 // experts of every MoE layer together
    double *moe_load;           // (moe_nx) this step's kept choices per expert (layer by layer), then per token
    double *moe_load_rows;      // rank 0: (buffer rows, moe_nx) rows not yet in run.h5
    int moe_load_pending, moe_load_cap;
    uint64_t moe_load_at;       // rows of /moe_load in run.h5
    hid_t *moe_load_ds;         // (L) rank 0: /moe_load/h.<l> of each MoE layer
    DeviceInfo dev;
    const Backend *bk;          // where model states and activations live
    int threads;
    double peak_gflops;         // job-wide: sum over ranks of each rank's GEMM rate
    PeakInfo peak;              // how this rank measured its share
    double *peak_all;           // (ranks) each rank's GEMM rate (rank 0)
    Stop stop;                  // stop signals and the time limit
    TokenFile train_file, val_file;
    Loader train, val;
    Model model;
    Zero zero;
    Offload off[ZERO_MAX_GROUPS];   // [offload]: one per ZeRO parameter group (noff of them; 0: none)
    int noff;
    double update_s;            // seconds of optimizer updates so far (this rank)
    const ParamStore *ps;
    Metrics metrics;
    int B, T, accum;
    int Tl;                     // this rank's tokens of each row: T / sp
    int32_t *inputs, *targets;  // (B, Tl)
    int64_t start_step;         // 0, or the step a checkpoint resumed at
    int64_t base_rows;          // global data rows consumed before start_step
    int64_t last_ckpt;          // step of the newest checkpoint this job wrote (-1: none)
    double ckpt_s;              // the longest checkpoint write of this job (an estimate before one)
    double ckpt_last_s;         // seconds of the newest checkpoint write (run.h5 checkpoint_time)
    double step_s[4];           // the last steps' seconds (ring), for the time limit
    CkptJob ckpt;               // checkpoints this job wrote (the only ones pruning deletes)
    double *rss_all;            // (ranks) per-rank peak RSS, MiB
    double rss_base;            // resident MiB before the model is allocated, largest rank: the process baseline
    double flops_per_token;
    double t_begin;             // wall_seconds() as the trainer started (the progress line's elapsed time)
} Trainer;

// run.h5's /moe_load (defined with record_step).
static void moe_load_open(Trainer *tr, int buffer);
static void moe_load_write(Trainer *tr);
static void moe_load_close(Trainer *tr);

static double peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0.0;
    return (double)ru.ru_maxrss / 1024.0;   // Linux reports KiB
}

// Resident memory now (not the peak), MiB; 0 if /proc is unreadable.
static double rss_now_mb(void) {
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0.0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static void machine_text(const Trainer *tr, char *buf, size_t n) {
    char host[256] = "?", dev[300];
    gethostname(host, sizeof host - 1);
    device_describe(&tr->dev, dev, sizeof dev);
    snprintf(buf, n, "host=%s ranks=%d ranks_per_node=%d threads_per_rank=%d backend=%s comm=%s", host,
             tr->topo.size, tr->topo.local_size, tr->threads, dev, comm_path_name(tr->dp.opt.path));
}

// [offload] moves the moments off the backend: to NVMe, or (cuda) to host memory.
static int moments_offloaded(const Config *c, int dev) {
    return c->offload.optimizer == OFFLOAD_NVME || (c->offload.optimizer == OFFLOAD_HOST && dev);
}

// What the offload engine holds instead of ZeRO's buffers (dev: the backend
// has device memory): the moments; at stage 3 the parameter shard (params =
// nvme, or host on cuda); on cpu at ZeRO 2-3 with the moments on NVMe and one
// parameter group, the reduced gradients.
static ZeroOffload offload_wants(const Config *c, int dev, int ngroups) {
    ZeroOffload w = {.moments = moments_offloaded(c, dev)};
    const OffloadConfig *oc = &c->offload;
    w.params = w.moments && c->zero.stage == 3 && (oc->params == OFFLOAD_NVME || (oc->params == OFFLOAD_HOST && dev));
    w.grads = w.moments && !dev && oc->optimizer == OFFLOAD_NVME && c->zero.stage >= 2 && ngroups == 1;
    return w;
}

// Device memory for the run, taken in one piece at start: model states and
// working buffers (zero_plan_offload: what offload holds is left out),
// activations, Deep Optimizer States' staging, and room for alignment.
static size_t arena_bytes(const Trainer *tr) {
    Model m;
    ZeroPlan plan, whole;
    model_table_moe(&m, &tr->cfg->model, &tr->moe, tr->ep_size, tr->topo.ep_rank);
    ZeroOffload w = offload_wants(tr->cfg, 1, m.ngroups > 1 ? 2 : 1);
    zero_plan_offload(&m, &tr->cfg->zero, &w, tr->topo.dp_size, tr->topo.dp_rank, (int)tr->cfg->train.grad_accum, &plan);
    size_t acts = model_activation_bytes_layout(&m, tr->B, tr->Tl, tr->topo.sp_size, tr->topo.sp_rank,
                                                (int)tr->cfg->train.recompute);
    size_t bytes = plan.params + plan.grads + plan.optim + plan.working + acts + ((size_t)64 << 20);
    if (w.moments && !w.params) {   // DOS staging per group (taken from the activations when they hold it)
        zero_plan(&m, &tr->cfg->zero, tr->topo.dp_size, tr->topo.dp_rank, 1, &whole);
        bytes += (size_t)(m.ngroups > 1 ? 2 : 1) * offload_device_bytes(&tr->cfg->offload, whole.optim / 8);
    }
    model_free(&m);
    return bytes;
}

// [offload]: each ZeRO group's owned range (moments; stage-3 shard; on cpu at
// ZeRO 2-3 with the moments on NVMe and one group, the reduced gradients) to
// host memory or a file per rank and group. Call after zero_create_offload
// with offload_wants' answer.
static void start_offload(Trainer *tr) {
    const OffloadConfig *oc = &tr->cfg->offload;
    if (oc->optimizer == OFFLOAD_NONE && oc->params == OFFLOAD_NONE) return;
    int dev = tr->bk->device_memory;
    Zero *z = &tr->zero;
    if (!z->offl.moments) {
        log_info("offload: optimizer = host, params = %s: on the cpu backend the states already live in host memory\n",
                 oc->params == OFFLOAD_HOST ? "host" : "none");
        return;
    }
    static const char *const tiers[] = {"device", "host", "nvme"};
    int params = z->offl.params ? (int)oc->params : OFFLOAD_NONE;
    for (int k = 0; k < z->ngroups; k++) {
        ZeroGroup *g = &z->g[k];
        Offload *o = &tr->off[k];
        offload_create(o, oc, tr->bk, tr->cfg->run.name, tr->topo.rank, k, g->own_begin, g->own_end - g->own_begin,
                       params, z->offl.grads);
        tr->noff = k + 1;
        zero_attach_offload(z, k, o);
        char grp[48] = "";
        if (z->ngroups > 1) snprintf(grp, sizeof grp, " (group %d: %s)", k, k ? "held experts" : "dense");
        if (o->tier == OFFLOAD_NVME)
            log_info("offload%s: optimizer = nvme, params = %s, gradients = %s, in %s (%s, %zu-byte alignment): ", grp,
                     dev ? tiers[params] : params == OFFLOAD_NVME ? "nvme" : "memory", z->offl.grads ? "nvme" : "memory",
                     oc->nvme_dir, o->file.direct ? "O_DIRECT" : "buffered", o->file.align);
        else
            log_info("offload%s: optimizer = host (pinned), params = %s: ", grp, tiers[params]);
        log_info("%d subgroups of %.3f MiB, %d buffers, queue depth %lld, prefetch %s; %.1f MiB staged in memory per "
                 "rank (cap %g MiB)\n", o->nsub, (double)o->G * 4 / 1048576.0, o->nbuf, (long long)oc->queue_depth,
                 o->prefetch ? "on" : "off", (double)o->held_bytes / 1048576.0, oc->host_cap_mb);
        offload_dos_plan(o, &tr->model, oc->dos, (int)oc->dos_stride);
    }
}

// Deep Optimizer States' choice and its inputs, as run.h5 attributes (rank 0).
static void describe_offload(const Trainer *tr, hid_t f) {
    if (tr->bk->device_memory) h5_attr_i64(f, "device_arena_used_bytes", (int64_t)device_arena_used());
    if (!tr->noff) return;
    const Offload *o = &tr->off[0];     // group 0's choice; the counts over every group
    int nsub = 0, ngpu = 0;
    for (int k = 0; k < tr->noff; k++) {
        nsub += tr->off[k].nsub;
        for (int i = 0; i < tr->off[k].nsub; i++) ngpu += dos_on_gpu(tr->off[k].stride, i);
    }
    h5_attr_i64(f, "offload_groups", tr->noff);
    h5_attr_i64(f, "offload_subgroups", nsub);
    h5_attr_i64(f, "offload_subgroup_floats", (int64_t)o->G);
    if (!o->device) return;
    h5_attr_i64(f, "dos_stride", o->stride);
    h5_attr_i64(f, "dos_gpu_subgroups", ngpu);
    h5_attr_f64(f, "dos_bw_h2d", o->rates.bw_h2d);
    h5_attr_f64(f, "dos_bw_d2h", o->rates.bw_d2h);
    h5_attr_f64(f, "dos_cpu_rate", o->rates.cpu_rate);
    h5_attr_f64(f, "dos_gpu_rate", o->rates.gpu_rate);
    h5_attr_f64(f, "dos_cpu_slowdown", o->rates.cpu_slowdown);
    h5_attr_f64(f, "dos_predicted_s", o->predicted_s);
    h5_attr_f64(f, "dos_cpu_only_s", o->cpu_only_s);
}

// Selects the backend and the path of device collectives, starts the device.
static void start_backend(Trainer *tr, CommOptions *co) {
    char err[2048] = "";
    if (device_select(tr->deck, 1, &tr->dev, err, sizeof err) != 0) FATAL_ALL(NULL, "%s", err);
    co->path = device_comm_path(tr->deck, &tr->dev, tr->topo.local_size, err, sizeof err);
    if (co->path < 0) FATAL_ALL(NULL, "%s", err);
    tr->bk = device_start(&tr->dev, tr->topo.local_rank, arena_bytes(tr));
    co->bk = tr->bk;
}

// Token ranges: [0, split) trains and [split, ntok) validates when no val file is given.
static void open_data_mix(Trainer *tr);

static void open_data(Trainer *tr) {
    const Config *c = tr->cfg;
    if (strchr(c->data.train, ',') || c->data.weights[0]) {   // data mixing (issue 18): data.c
        open_data_mix(tr);
        return;
    }
    tokenfile_open(&tr->train_file, c->data.train);
    const TokenFile *vf = &tr->train_file;
    uint64_t tb = 0, te = tr->train_file.ntok, vb = 0, ve = 0;
    if (c->data.val[0]) {
        tokenfile_open(&tr->val_file, c->data.val);
        vf = &tr->val_file;
        ve = tr->val_file.ntok;
    } else {
        te = (uint64_t)((double)tr->train_file.ntok * (1.0 - c->data.val_fraction));
        vb = te;
        ve = tr->train_file.ntok;
    }
    int64_t V = c->model.vocab;
    for (int k = 0; k < 1 + (c->data.val[0] != 0); k++) {   // the deck's tokenizer made the files (issue 17)
        char why[2048], where[600];
        if (prep_check_tokens(k ? c->data.val : c->data.train, c->data.tokenizer, c->data.tokenizer_dir, V, why, sizeof why))
            FATAL_ALL(NULL, "%s: %s", deck_where(tr->deck, "data.tokenizer", where, sizeof where), why);
    }
    if (tr->train_file.vocab_size > V) {
        char where[600];
        FATAL_ALL("set [model] vocab to at least the token file's vocab_size",
              "%s: model.vocab = %lld is smaller than the vocab_size %lld of '%s'",
              deck_where(tr->deck, "model.vocab", where, sizeof where), (long long)V,
              (long long)tr->train_file.vocab_size, c->data.train);
    }
    loader_create(&tr->train, &tr->train_file, tb, te, tr->B, tr->T, c->data.order,
                  (uint64_t)c->run.seed, V);
    if (ve > vb) loader_create(&tr->val, vf, vb, ve, tr->B, tr->T, ORDER_SEQUENTIAL, 0, V);
    if (tr->Tl != tr->T) {  // sequence parallelism: this rank's slice of every row
        loader_set_slice(&tr->train, tr->topo.sp_rank * tr->Tl, tr->Tl);
        if (ve > vb) loader_set_slice(&tr->val, tr->topo.sp_rank * tr->Tl, tr->Tl);
    }
}

// Several train files mixed by [data] weights: each file's tokenizer checked as
// for one, its val_fraction tail held out unless [data] val is given.
static void open_data_mix(Trainer *tr) {
    const Config *c = tr->cfg;
    char paths[DATA_MAX_SOURCES][512], why[2048], where[600];
    int n = data_split_list(c->data.train, paths, DATA_MAX_SOURCES);
    for (int k = 0; k < n; k++)
        if (prep_check_tokens(paths[k], c->data.tokenizer, c->data.tokenizer_dir, c->model.vocab, why, sizeof why))
            FATAL_ALL(NULL, "%s: %s", deck_where(tr->deck, "data.tokenizer", where, sizeof where), why);
    int own_val = c->data.val[0] != 0;
    if (data_open_mix(&tr->train, own_val ? NULL : &tr->val, c->data.train, c->data.weights,
                      own_val ? 0.0 : c->data.val_fraction, tr->B, tr->T, c->data.order, (uint64_t)c->run.seed,
                      c->model.vocab, why, sizeof why) != 0)
        FATAL_ALL(NULL, "%s: %s", deck_where(tr->deck, c->data.weights[0] ? "data.weights" : "data.train", where,
                  sizeof where), why);
    tr->train_file = tr->train.mix->files[0];   // a copy for the header; the mix owns and closes the files
    tr->train_file.file = tr->train_file.dset = 0;
    for (int k = 0; k < tr->train.mix->n; k++)
        if (tr->train.mix->files[k].vocab_size > c->model.vocab)
            FATAL_ALL("set [model] vocab to at least the token files' vocab_size", "%s: model.vocab = %lld is smaller "
                      "than the vocab_size %lld of '%s'", deck_where(tr->deck, "model.vocab", where, sizeof where),
                      (long long)c->model.vocab, (long long)tr->train.mix->files[k].vocab_size, paths[k]);
    if (own_val) {
        tokenfile_open(&tr->val_file, c->data.val);
        loader_create(&tr->val, &tr->val_file, 0, tr->val_file.ntok, tr->B, tr->T, ORDER_SEQUENTIAL, 0, c->model.vocab);
    }
    if (tr->Tl != tr->T) {
        loader_set_slice(&tr->train, tr->topo.sp_rank * tr->Tl, tr->Tl);
        if (tr->val.rows) loader_set_slice(&tr->val, tr->topo.sp_rank * tr->Tl, tr->Tl);
    }
    if (tr->topo.rank == 0)
        for (int k = 0; k < tr->train.mix->n; k++)
            log_info("data mix: %s, weight %.4f (%u of every %d rows), %llu train rows\n", paths[k],
                     tr->train.mix->weight[k], tr->train.mix->count[k], DATA_MIX_PERIOD,
                     (unsigned long long)tr->train.mix->src[k].rows);
}

// Global data rows consumed once `steps` steps are done: the checkpoint's
// cursor plus this job's steps at this job's batch (train.batch may change
// between jobs; rows are neither skipped nor repeated).
static int64_t rows_done(const Trainer *tr, int64_t steps) {
    return tr->base_rows + (steps - tr->start_step) * tr->cfg->train.batch;
}

// [checkpoint] resume: the file `latest` names, or the newest whole one
// (ckpt_resume tries them in turn, collectively).
static void resume(Trainer *tr) {
    char path[1200] = "";
    CkptState st = {.data_rows = -1};
    double t0 = wall_seconds();
    zero_host_buffers(&tr->zero);   // offloaded: host copies for ckpt_resume to fill
    if (!ckpt_resume(&tr->zero, tr->deck, tr->cfg->checkpoint.dir, &st, path, sizeof path)) {
        // Only now: a load overwrites every weight, and drawing 124M normals took a third of a resume.
        zero_init_weights(&tr->zero, (uint64_t)tr->cfg->run.seed, tr->cfg->model.init_std);
        return;
    }
    if (st.step > tr->cfg->train.steps)
        FATAL_ALL("raise [train] steps to train on", "checkpoint '%s' is at step %lld, past train.steps = %lld",
                  path, (long long)st.step, (long long)tr->cfg->train.steps);
    tr->start_step = st.step;
    tr->base_rows = st.data_rows >= 0 ? st.data_rows : st.step * tr->cfg->train.batch;
    log_info("resumed from %s at step %lld (%.2f s; open and checks %.2f s, states %.2f s = %.3f MB at %.2f GB/s on "
             "rank 0, %.0f%% read in place, gather and close %.2f s)\n", path, (long long)st.step, wall_seconds() - t0,
             st.open_s, st.read_s, (double)st.read_bytes * 1e-6,
             st.read_s > 0 ? (double)st.read_bytes / st.read_s * 1e-9 : 0.0,
             st.read_bytes ? 100.0 * (double)st.inplace_bytes / (double)st.read_bytes : 0.0, st.rest_s);
    if (st.data_rows >= 0 && st.data_rows != st.step * tr->cfg->train.batch)
        log_info("data: continuing at row %lld of the data order (the checkpoint's cursor; batch %lld now)\n",
                 (long long)st.data_rows, (long long)tr->cfg->train.batch);
}

static void checkpoint(Trainer *tr, int64_t steps_done) {
    if (tr->cfg->comm.compute_only) {   // its states are not a model: nothing to resume from
        log_info("checkpoint: none at step %lld ([comm] compute_only)\n", (long long)steps_done);
        return;
    }
    int64_t rows = rows_done(tr, steps_done);
    CkptState st = {.step = steps_done, .data_cursor = steps_done, .data_rows = rows,
                    .tokens_seen = (double)rows * tr->T};
    double t0 = wall_seconds();
    zero_pull_states(&tr->zero);
    ckpt_write(&tr->ckpt, &tr->zero, tr->deck, tr->deck_text, tr->cfg->checkpoint.dir, &st);
    int async = tr->cfg->checkpoint.async;
    char direct[40] = "";
    if (!async) snprintf(direct, sizeof direct, " (%.0f%% by O_DIRECT)", 100 * ckpt_direct_share(&tr->ckpt));
    log_info("checkpoint: %s/step-%06lld.h5 (%.2f s%s; layout %.2f s, %s %.2f s%s, meta and publish %.2f s)\n",
             tr->cfg->checkpoint.dir, (long long)steps_done, wall_seconds() - t0,
             async ? "; writing in the background" : "", tr->ckpt.layout_s, async ? "host copy" : "states",
             tr->ckpt.data_s, direct, tr->ckpt.publish_s);
}

// A checkpoint, timed (the time limit plans with the longest of this job).
static void save(Trainer *tr, int64_t steps_done) {
    double t0 = wall_seconds();
    checkpoint(tr, steps_done);
    double dt = wall_seconds() - t0;
    if (dt > tr->ckpt_s || tr->last_ckpt < 0) tr->ckpt_s = dt;
    tr->ckpt_last_s = dt;
    tr->last_ckpt = steps_done;
}

// Ranks that outnumber the cores of their node take turns on them, and one
// may time a small sgemm alone on a core: the node's figure is capped at its
// cores times the best per-thread rate measured on it.
static double cap_to_cores(Trainer *tr, double mine) {
    double v[2] = {mine, mine / tr->threads}, node_sum = 0, best_thread = 0;
    MPI_CHECK(MPI_Allreduce(&v[0], &node_sum, 1, MPI_DOUBLE, MPI_SUM, tr->topo.node));
    MPI_CHECK(MPI_Allreduce(&v[1], &best_thread, 1, MPI_DOUBLE, MPI_MAX, tr->topo.node));
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    double cap = (double)(cores > 0 ? cores : 1) * best_thread;
    if (node_sum <= cap) return mine;
    size_t len = strlen(tr->peak.method);
    snprintf(tr->peak.method + len, sizeof tr->peak.method - len, "; node capped at %ld cores x %.1f GFLOP/s",
             cores, best_thread);
    return mine * cap / node_sum;
}

// Every rank times sgemm at once, so the figure is what the job really has;
// ranks sharing a GPU count their share of it. Rank 0 keeps each rank's figure.
static void measure_peak(Trainer *tr) {
    const Config *c = tr->cfg;
    int share = 1;
    if (tr->dev.backend == BACKEND_CUDA && tr->topo.local_size > tr->dev.cuda_devices)
        share = (tr->topo.local_size + tr->dev.cuda_devices - 1) / tr->dev.cuda_devices;
    double mine;
    if (c->run.peak_gflops > 0) {
        memset(&tr->peak, 0, sizeof tr->peak);
        mine = tr->peak.gflops = c->run.peak_gflops / tr->topo.size;
        snprintf(tr->peak.method, sizeof tr->peak.method, "given: [run] peak_gflops = %g for the job, split evenly over ranks",
                 c->run.peak_gflops);
    } else {
        MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
        mine = device_gemm_peak_gflops(&tr->dev, share, &tr->peak);
        if (tr->dev.backend != BACKEND_CUDA) mine = cap_to_cores(tr, mine);
    }
    tr->peak_all = xcalloc((size_t)tr->topo.size * sizeof(double), "peak per rank");
    MPI_CHECK(MPI_Gather(&mine, 1, MPI_DOUBLE, tr->peak_all, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    MPI_CHECK(MPI_Allreduce(&mine, &tr->peak_gflops, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
}

static void trainer_create(Trainer *tr, const Deck *d) {
    memset(tr, 0, sizeof *tr);
    tr->t_begin = wall_seconds();
    tr->deck = d;
    tr->cfg = &d->cfg;
    const Config *c = tr->cfg;
    tr->deck_text = xmalloc(1 << 16, "deck text");
    deck_format(d, tr->deck_text, 1 << 16);
    moe_spec_from_config(&tr->moe, c);
    tr->ep_size = tr->moe.nmoe ? (int)c->parallel.ep : 1;
    topo_init(&tr->topo, (int)c->parallel.dp, (int)c->parallel.sp, tr->ep_size);
    tr->threads = threads_per_rank(c->run.threads, tr->topo.local_size);
    CommOptions co = {.debug = c->comm.debug, .timeout_s = c->comm.timeout_s,
                      .fault_skip_rank = (int)c->comm.fault_skip_rank, .fault_skip_step = c->comm.fault_skip_step,
                      .fault_hang_s = c->comm.fault_hang_s, .oversubscribed = tr->threads * tr->topo.local_size > sysconf(_SC_NPROCESSORS_ONLN),
                      .progress = c->comm.progress, .progress_us = c->comm.progress_us,
                      .compute_only = c->comm.compute_only};
    if (c->comm.compute_only && log_rank() == 0)
        log_warn("[comm] compute_only = %s: the float collectives move nothing on %s, so the losses are meaningless "
                 "(a benchmark baseline)", c->comm.compute_only == COMM_COMPUTE_ON ? "true" : "alternate",
                 c->comm.compute_only == COMM_COMPUTE_ON ? "every step" : "steps 1, 3, 5, ...");
    kernels_set_threads(tr->threads);
    tr->B = (int)c->train.micro_batch;
    tr->T = (int)c->train.seq_len;
    tr->Tl = tr->T / tr->topo.sp_size;
    tr->accum = (int)c->train.grad_accum;
    start_backend(tr, &co);
    comm_init(&tr->dp, tr->topo.dp, "dp", &co);
    comm_init(&tr->sp, tr->topo.sp, "sp", &co);
    if (tr->ep_size > 1) {
        comm_init(&tr->ep, tr->topo.ep, "ep", &co);
        comm_init(&tr->edp, tr->topo.edp, "edp", &co);
    }

    measure_peak(tr);

    if (tr->topo.rank == 0) make_dirs(c->run.out_dir, "set [run] out_dir to a writable directory");
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    open_data(tr);
    double base = rss_now_mb();     // MPI, HDF5, BLAS, the loader: what the model's memory comes on top of
    MPI_CHECK(MPI_Allreduce(&base, &tr->rss_base, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    ModelParallel mp = {.sp = &tr->sp, .recompute = (int)c->train.recompute, .moe = &tr->moe,
                        .ep = tr->ep_size > 1 ? &tr->ep : NULL};
    model_create_parallel(&tr->model, &c->model, tr->B, tr->Tl, tr->bk, &mp);
    ZeroOffload want = offload_wants(c, tr->bk->device_memory, tr->model.ngroups > 1 ? 2 : 1);
    if (tr->bk->device_memory && c->offload.params != OFFLOAD_NONE && !want.moments)
        FATAL_ALL("set [offload] optimizer = host (or nvme) too: the update runs where the moments are",
                  "[offload] params = host on cuda needs the moments off the device as well");
    ZeroConfig zc = c->zero;
    zc.tokens = tr->bk->device_memory ? 0 : (size_t)tr->B * (size_t)tr->Tl;   // early embeddings: cpu only (zero.h)
    zc.accum = tr->accum;
    zero_create_offload(&tr->zero, &zc, &tr->dp, tr->ep_size > 1 ? &tr->edp : NULL, &tr->model, &c->optim,
                        c->train.steps, &want);
    start_offload(tr);
    tr->ps = zero_store(&tr->zero);
    for (int l = 0; l < tr->model.s.L && tr->moe.nmoe; l++) tr->moe_nx += tr->moe.experts[l];
    tr->moe_load = tr->moe_nx ? xcalloc(sizeof(double) * (size_t)tr->moe_nx, "moe load") : NULL;
    tr->inputs = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "inputs");
    tr->targets = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "targets");
    tr->rss_all = xcalloc((size_t)tr->topo.size * sizeof(double), "rss");
    tr->flops_per_token = model_flops_per_token(&tr->model, tr->T);
    tr->last_ckpt = -1;
    // Before the first checkpoint of the job, plan with 1 s + its bytes at 200 MB/s.
    tr->ckpt_s = 1.0 + 3.0 * (double)tr->model.nparams * sizeof(float) / 200e6;
    resume(tr);
    char hosts[4096];
    metrics_hosts(MPI_COMM_WORLD, hosts, sizeof hosts);
    if (tr->topo.rank == 0) {
        char path[DECK_STR + 16], machine[1024];
        machine_text(tr, machine, sizeof machine);
        snprintf(path, sizeof path, "%s/run.h5", c->run.out_dir);
        int buffer = c->train.log_interval < 4096 ? (int)c->train.log_interval : 4096;
        if (metrics_open(&tr->metrics, path, tr->topo.size, tr->start_step, buffer))
            log_info("run.h5: continuing %s from step %lld\n", path, (long long)tr->start_step);
        metrics_describe(&tr->metrics, tr->deck_text, machine, tr->peak_gflops, &tr->peak, tr->peak_all,
                         tr->threads, tr->start_step);
        metrics_describe_job(&tr->metrics, hosts);
        h5_attr_i64(tr->metrics.file, "zero_stage", tr->zero.stage);
        h5_attr_i64(tr->metrics.file, "model_state_bytes", (int64_t)tr->zero.state_bytes);
        h5_attr_i64(tr->metrics.file, "working_bytes", (int64_t)tr->zero.working_bytes);
        h5_attr_i64(tr->metrics.file, "activation_bytes", (int64_t)model_activation_bytes(&tr->model, tr->B, tr->Tl));
        h5_attr_i64(tr->metrics.file, "nparams", (int64_t)model_count_params(&tr->model));
        h5_attr_i64(tr->metrics.file, "layout_floats", (int64_t)tr->model.nparams);
        h5_attr_f64(tr->metrics.file, "baseline_rss_mb", tr->rss_base);
        describe_offload(tr, tr->metrics.file);
        moe_load_open(tr, buffer);
        metrics_flush(&tr->metrics);
    }
}

static void trainer_free(Trainer *tr) {
    if (tr->topo.rank == 0) {
        moe_load_write(tr);
        moe_load_close(tr);
        metrics_close(&tr->metrics);
    }
    free(tr->moe_load);
    loader_free(&tr->train);
    if (tr->val.rows) loader_free(&tr->val);
    tokenfile_close(&tr->train_file);
    if (tr->cfg->data.val[0]) tokenfile_close(&tr->val_file);
    zero_free(&tr->zero);
    for (int k = 0; k < tr->noff; k++) offload_free(&tr->off[k]);
    model_free(&tr->model);
    if (tr->ep_size > 1) {
        comm_free(&tr->edp);
        comm_free(&tr->ep);
    }
    comm_free(&tr->sp);
    comm_free(&tr->dp);
    device_stop(&tr->dev);
    free(tr->inputs);
    free(tr->targets);
    free(tr->rss_all);
    free(tr->peak_all);
    free(tr->deck_text);
    ckpt_job_free(&tr->ckpt);
    moe_spec_free(&tr->moe);
    topo_free(&tr->topo);
}

// Mean validation loss over eval_batches micro-batches per rank; NaN without a split.
static double evaluate(Trainer *tr) {
    if (!tr->val.rows) return NAN;
    double sum[2] = {0.0, 0.0};
    int64_t nb = tr->cfg->train.eval_batches;
    for (int64_t k = 0; k < nb; k++) {
        uint64_t g0 = ((uint64_t)k * (uint64_t)tr->topo.data_size + (uint64_t)tr->topo.data_rank) * (uint64_t)tr->B;
        loader_batch(&tr->val, g0, tr->inputs, tr->targets);
        tr->model.moe_row0 = g0;
        sum[0] += model_forward(&tr->model, tr->ps, tr->inputs, tr->targets, tr->B, tr->Tl, 0);
        sum[1] += 1.0;
    }
    comm_allreduce_sum_f64(&tr->dp, sum, 2, "validation loss");
    return sum[0] / sum[1];
}

// MoE: the last forward's aux term and drops, added to the step's sums.
static void moe_step_stats(Trainer *tr) {
    const Model *m = &tr->model;
    if (!m->moe.nmoe) return;
    tr->moe_aux += m->moe_aux;
    for (int l = 0; l < m->s.L; l++) {
        if (!m->moe.experts[l]) continue;
        tr->moe_choices += (double)m->moel[l].stats.choices;
        tr->moe_dropped += (double)m->moel[l].stats.dropped;
    }
    for (int l = 0, at = 0; l < m->s.L; l++)
        for (int x = 0; x < m->moe.experts[l]; x++) tr->moe_load[at++] += m->moel[l].stats.load[x];
}

// The step's collectives are done (compute_only applies only inside a step).
static void end_step(Trainer *tr) {
    comm_end_step(&tr->dp);
    comm_end_step(&tr->sp);
    if (tr->ep_size > 1) {
        comm_end_step(&tr->ep);
        comm_end_step(&tr->edp);
    }
}

// The gradients of one optimizer step: grad_accum micro-steps (ZeRO reduces
// gradients as buckets complete), then the global norm. Returns the step's
// mean loss over the job. Rank r reads, at micro-step a, the B rows from
// rows_done(step) + (a*dp + r)*B.
static double compute_grads(Trainer *tr, int64_t step, double *grad_norm) {
    Model *m = &tr->model;
    const Config *c = tr->cfg;
    // T: this rank's tokens. ZeRO averages gradients over all dp x sp ranks, so
    // scaling by the local token count gives the mean over every token of the step.
    const int B = tr->B, T = tr->Tl, accum = tr->accum;
    zero_begin_step(&tr->zero, step);
    comm_set_step(&tr->sp, step);
    if (tr->ep_size > 1) comm_set_step(&tr->ep, step);
    double loss = 0.0;
    float dloss = 1.0f / ((float)B * (float)T * (float)accum);
    tr->moe_aux = tr->moe_choices = tr->moe_dropped = 0.0;
    if (tr->moe_nx) memset(tr->moe_load, 0, sizeof(double) * (size_t)tr->moe_nx);
    m->moe_seed = (uint64_t)c->run.seed;
    m->moe_step = step;
    uint64_t base = (uint64_t)rows_done(tr, step);
    for (int a = 0; a < accum; a++) {
        uint64_t g0 = base + ((uint64_t)a * (uint64_t)tr->topo.data_size + (uint64_t)tr->topo.data_rank) * (uint64_t)B;
        loader_batch(&tr->train, g0, tr->inputs, tr->targets);
        zero_begin_micro(&tr->zero, a, accum);
        m->moe_row0 = g0;
        loss += model_forward(m, tr->ps, tr->inputs, tr->targets, B, T, 1);
        moe_step_stats(tr);
        // Test-only: one rank's gradient of this step turns NaN.
        int poison = c->train.fault_nan_step == step + 1 && c->train.fault_nan_rank == tr->topo.rank && a == accum - 1;
        if (poison) log_warn("test fault: poisoning the gradient of step %lld", (long long)step + 1);
        model_backward(m, tr->ps, tr->inputs, tr->targets, B, T, poison ? NAN : dloss);
    }
    *grad_norm = zero_reduce_grads(&tr->zero);
    double l[4] = {loss / accum, tr->moe_aux / accum, tr->moe_choices, tr->moe_dropped};
    comm_allreduce_sum_f64(&tr->dp, l, tr->moe.nmoe ? 4 : 1, "loss");
    tr->moe_aux = l[1] / tr->dp.size;
    tr->moe_dropped = l[2] > 0 ? l[3] / l[2] : 0.0;
    if (tr->moe_nx) {   // tokens routed to each expert, over every rank, per token of the step
        comm_allreduce_sum_f64(&tr->dp, tr->moe_load, (size_t)tr->moe_nx, "moe load");
        for (int x = 0; x < tr->moe_nx; x++) tr->moe_load[x] /= (double)c->train.batch * (double)tr->T;
    }
    return l[0] / tr->dp.size;
}

// Seconds this rank has been blocked in ZeRO's collectives (dp, and with ep the edp and ep groups).
static double zero_wait_s(const Trainer *tr) {
    return tr->dp.wait_s + (tr->ep_size > 1 ? tr->edp.wait_s + tr->ep.wait_s : 0.0);
}

// Clip and AdamW on the owned shard. update_s counts its compute: the time
// blocked in its collectives (node-shared barriers, stage 1-2 gathers) is
// comm_wait's, so that the benchmark can take a ZeRO stage's own update as
// compute (bench/report.py overlap).
static void apply_update(Trainer *tr, double grad_norm, double lr) {
    double t0 = wall_seconds(), w0 = zero_wait_s(tr);
    zero_step(&tr->zero, lr, optim_clip_scale(grad_norm, tr->cfg->train.clip));
    tr->bk->sync();     // the step's time includes its device work (AdamW runs asynchronously)
    tr->update_s += wall_seconds() - t0 - (zero_wait_s(tr) - w0);
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

// The progress line's tail: elapsed wall time since start, memory in use, the local time.
static void progress_tail(double elapsed, double rss_mb, char *buf, size_t n) {
    char el[32], stamp[32];
    format_eta(elapsed, el, sizeof el);
    time_t now = time(NULL);
    struct tm tmv;
    strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", localtime_r(&now, &tmv));
    snprintf(buf, n, " | elapsed %s | mem %.0f MiB | %s", el, rss_mb, stamp);
}

static void print_header(const Trainer *tr) {
    const Config *c = tr->cfg;
    const GPTShape *s = &tr->model.s;
    log_info("%s", tr->deck_text);
    log_info("model: GPT-2, %zu parameters (L=%d C=%d NH=%d T=%d V=%d padded to %d)\n",
             model_count_params(&tr->model), s->L, s->C, s->NH, tr->T, s->V, s->Vp);
    log_info("data: %s, %llu tokens (%s tokenizer); train rows %llu, val rows %llu of %d tokens, %s order\n",
             c->data.train, (unsigned long long)tr->train_file.ntok, tr->train_file.tokenizer,
             (unsigned long long)tr->train.rows, (unsigned long long)tr->val.rows, tr->T + 1,
             c->data.order == ORDER_SHUFFLED ? "shuffled" : "sequential");
    log_info("layout: %d ranks (dp=%d x sp=%d), %d threads per rank, batch %lld sequences = %lld tokens per step%s\n",
             tr->topo.size, tr->topo.data_size, tr->topo.sp_size, tr->threads, (long long)c->train.batch,
             (long long)c->train.batch * tr->T, c->train.recompute ? ", activation checkpointing per layer" : "");
    if (tr->ep_size > 1)
        log_info("experts: ep = %d (groups of %d consecutive data-parallel ranks; rank %d holds experts %d/%d of each "
                 "MoE layer), their states partitioned over %d ranks\n", tr->ep_size, tr->ep_size, tr->topo.rank,
                 tr->topo.ep_rank, tr->ep_size, tr->topo.edp_size);
    char dev[300];
    device_describe(&tr->dev, dev, sizeof dev);
    log_info("backend: %s; collectives: %s\n", dev, comm_path_name(tr->dp.opt.path));
    log_info("compute: %.3f GFLOP per token; MFU peak %.1f GFLOP/s (job; rank 0 %.1f): %s\n",
             tr->flops_per_token * 1e-9, tr->peak_gflops, tr->peak_all[0], tr->peak.method);
    log_info("memory per rank: ZeRO-%d model states %.1f MiB, working buffers %.1f MiB, activations %.1f MiB\n",
             tr->zero.stage, (double)tr->zero.state_bytes / 1048576.0, (double)tr->zero.working_bytes / 1048576.0,
             (double)model_activation_bytes(&tr->model, tr->B, tr->Tl) / 1048576.0);
    if (tr->zero.shared || tr->zero.early)
        log_info("zero:%s%s%s\n", tr->zero.shared ? " parameters node-shared (read in place, no all-gathers)" : "",
                 tr->zero.shared && tr->zero.early ? ";" : "",
                 tr->zero.early ? " the embeddings' gradient reduced from the LM head on, the encoder's rows exchanged after" : "");
}

// One step's figures, for run.h5 and the progress line.
typedef struct StepOut {
    double loss, val, gnorm, lr, dt;
    int skipped;            // the update was not applied (non-finite loss or gradient norm)
    int print;              // a progress line (and a run.h5 flush) after it
} StepOut;

// Counters at the previous row, so each row holds one step's traffic.
typedef struct CommMark {
    uint64_t bytes[COMM_NOPS];     // ZeRO's groups: dp (and edp with expert parallelism)
    uint64_t a2a;                  // all-to-alls: sp (Ulysses) and ep (MoE dispatch and combine)
    double wait_s;                 // dp (and, with ep, the edp and ep groups)
    double wait_sync_s;            //   of which at the node-shared barriers (dp)
    double busy_s;                 // inside MPI outside waits (dp)
    double inflight_s;
    uint64_t io_read, io_write;    // offload, every group's
    double io_wait, update_s;      // offload's I/O waits; every optimizer update
    uint64_t postponed;            // fused gradients' postponed products
} CommMark;

// This rank's counters since the start of the job (communication, offload I/O, updates).
static CommMark comm_now(const Trainer *tr) {
    CommMark n;
    int ep = tr->ep_size > 1;
    for (int op = 0; op < COMM_NOPS; op++) n.bytes[op] = tr->dp.bytes[op] + (ep ? tr->edp.bytes[op] : 0);
    n.a2a = tr->sp.bytes[COMM_ALLTOALL] + (ep ? tr->ep.bytes[COMM_ALLTOALL] : 0);
    n.wait_s = zero_wait_s(tr);
    n.wait_sync_s = tr->dp.wait_op_s[COMM_SYNC];
    n.busy_s = tr->dp.busy_s;
    n.inflight_s = comm_inflight_s(&tr->dp);
    n.io_read = n.io_write = 0;
    n.io_wait = 0.0;
    for (int k = 0; k < tr->noff; k++) {
        n.io_read += offload_read_bytes(&tr->off[k]);
        n.io_write += offload_write_bytes(&tr->off[k]);
        n.io_wait += offload_io_wait(&tr->off[k]);
    }
    n.update_s = tr->update_s;
    n.postponed = tr->zero.npostponed;
    return n;
}

// What differs by rank in a step, reduced to its largest over ranks (rank 0's copy): rank 0's
// own counters cannot tell which rank the step waited for.
enum { RM_RSS_NOW, RM_WAIT, RM_POSTPONED, RM_N };

// Collective: each rank's peak RSS into rss_all, and the step's per-rank figures (this rank's
// counters now less at the previous row) reduced by MPI_MAX into most (rank 0).
static void gather_ranks(Trainer *tr, const CommMark *now, const CommMark *was, double most[RM_N]) {
    double peak = peak_rss_mb(), mine[RM_N];
    mine[RM_RSS_NOW] = rss_now_mb();
    mine[RM_WAIT] = now->wait_s - was->wait_s;
    mine[RM_POSTPONED] = (double)(now->postponed - was->postponed);
    MPI_CHECK(MPI_Gather(&peak, 1, MPI_DOUBLE, tr->rss_all, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    MPI_CHECK(MPI_Reduce(mine, most, RM_N, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD));
}

// Rank 0: the buffered rows of /moe_load/h.<l> into run.h5 (before a flush).
static void moe_load_write(Trainer *tr) {
    const Model *m = &tr->model;
    uint64_t n = (uint64_t)tr->moe_load_pending;
    if (!tr->moe_load_ds || !n) return;
    double *rows = xmalloc(sizeof(double) * n * (size_t)tr->moe_nx, "moe load rows");
    for (int l = 0, at = 0; l < m->s.L; l++) {
        int E = m->moe.experts[l];
        if (!E) continue;
        for (uint64_t i = 0; i < n; i++)
            memcpy(rows + i * (size_t)E, tr->moe_load_rows + i * (size_t)tr->moe_nx + at, sizeof(double) * (size_t)E);
        metrics_series_write(tr->moe_load_ds[l], tr->moe_load_at, n, E, rows);
        at += E;
    }
    free(rows);
    tr->moe_load_at += n;
    tr->moe_load_pending = 0;
}

// Rank 0: this step's loads into the buffer.
static void moe_load_append(Trainer *tr) {
    if (!tr->moe_load_ds) return;
    if (tr->moe_load_pending == tr->moe_load_cap) moe_load_write(tr);
    memcpy(tr->moe_load_rows + (size_t)tr->moe_load_pending * (size_t)tr->moe_nx, tr->moe_load,
           sizeof(double) * (size_t)tr->moe_nx);
    tr->moe_load_pending++;
}

// Rank 0: /moe_load/h.<l>, (steps, E_l), beside /metrics.
static void moe_load_open(Trainer *tr, int buffer) {
    const Model *m = &tr->model;
    if (!tr->moe_nx) return;
    tr->moe_load_cap = buffer < 1 ? 1 : buffer;
    tr->moe_load_rows = xmalloc(sizeof(double) * (size_t)tr->moe_load_cap * (size_t)tr->moe_nx, "moe load rows");
    tr->moe_load_ds = xcalloc(sizeof(hid_t) * (size_t)m->s.L, "moe load datasets");
    tr->moe_load_at = tr->metrics.rows;
    for (int l = 0; l < m->s.L; l++) {
        if (!m->moe.experts[l]) continue;
        char path[64];
        snprintf(path, sizeof path, "moe_load/h.%d", l);
        tr->moe_load_ds[l] = metrics_series(&tr->metrics, path, m->moe.experts[l]);
        h5_attr_str(tr->moe_load_ds[l], "description", "(steps, experts of the layer): tokens routed to each expert "
                    "(kept choices, every rank) per token of the step; rows as /metrics/step");
    }
}

static void moe_load_close(Trainer *tr) {
    if (!tr->moe_load_ds) return;
    for (int l = 0; l < tr->model.s.L; l++)
        if (tr->moe_load_ds[l] > 0) H5_CHECK(H5Dclose(tr->moe_load_ds[l]));
    free(tr->moe_load_ds);
    free(tr->moe_load_rows);
    tr->moe_load_ds = NULL;
}

// Collective (per-rank memory); rank 0 appends the row and maybe prints.
static void record_step(Trainer *tr, int64_t step, int64_t stop, const StepOut *o, CommMark *mark, double train_time) {
    CommMark now = comm_now(tr), was = *mark;
    double most[RM_N];
    *mark = now;
    gather_ranks(tr, &now, &was, most);
    if (tr->topo.rank != 0) return;
    const Config *c = tr->cfg;
    double tokens_per_step = (double)c->train.batch * tr->T;
    double tps = tokens_per_step / o->dt, gflops = tps * tr->flops_per_token * 1e-9;
    double mfu = gflops / tr->peak_gflops;
    MetricsRow row = {.peak_rss_mb = tr->rss_all};
    row.v[M_STEP] = (double)(step + 1);
    row.v[M_LOSS] = o->loss;
    row.v[M_VAL_LOSS] = o->val;
    row.v[M_LR] = o->lr;
    row.v[M_GRAD_NORM] = o->gnorm;
    row.v[M_TOKENS_PER_S] = tps;
    row.v[M_MFU] = mfu;
    row.v[M_GFLOPS] = gflops;
    row.v[M_STEP_TIME] = o->dt;
    row.v[M_DATA_ROWS] = (double)rows_done(tr, step + 1);
    row.v[M_TOKENS] = row.v[M_DATA_ROWS] * tr->T;
    row.v[M_SKIPPED] = o->skipped;
    row.v[M_RANKS] = tr->topo.size;
    row.v[M_CHECKPOINT_TIME] = tr->last_ckpt == step + 1 ? tr->ckpt_last_s : 0.0;
    row.v[M_COMM_ALL_REDUCE] = (double)(now.bytes[COMM_ALLREDUCE] - was.bytes[COMM_ALLREDUCE]);
    row.v[M_COMM_REDUCE_SCATTER] = (double)(now.bytes[COMM_REDUCE_SCATTER] - was.bytes[COMM_REDUCE_SCATTER]);
    row.v[M_COMM_ALL_GATHER] = (double)(now.bytes[COMM_ALLGATHER] - was.bytes[COMM_ALLGATHER]);
    row.v[M_COMM_WAIT] = now.wait_s - was.wait_s;
    row.v[M_COMM_ALL_TO_ALL] = (double)(now.a2a - was.a2a);
    row.v[M_AUX_LOSS] = tr->moe.nmoe ? tr->moe_aux : NAN;
    row.v[M_MOE_DROPPED] = tr->moe.nmoe ? tr->moe_dropped : NAN;
    row.v[M_COMM_INFLIGHT] = now.inflight_s - was.inflight_s;
    row.v[M_OFFLOAD_READ_BYTES] = (double)(now.io_read - was.io_read);     // rank 0's offload traffic
    row.v[M_OFFLOAD_WRITE_BYTES] = (double)(now.io_write - was.io_write);
    row.v[M_IO_WAIT] = now.io_wait - was.io_wait;
    row.v[M_UPDATE_TIME] = now.update_s - was.update_s;
    row.v[M_COMM_WAIT_SYNC] = now.wait_sync_s - was.wait_sync_s;
    row.v[M_COMM_BUSY] = now.busy_s - was.busy_s;
    row.v[M_GRAD_POSTPONED] = (double)(now.postponed - was.postponed);
    row.v[M_COMM_WAIT_MAX] = most[RM_WAIT];
    row.v[M_GRAD_POSTPONED_MAX] = most[RM_POSTPONED];
    metrics_append(&tr->metrics, &row);
    moe_load_append(tr);
    if (!o->print) return;
    char eta[32], vbuf[32] = "", tail[128];
    format_eta(train_time / (double)(step + 1 - tr->start_step) * (double)(stop - step - 1), eta, sizeof eta);
    if (isfinite(o->val)) snprintf(vbuf, sizeof vbuf, " | val %.4f", o->val);
    progress_tail(wall_seconds() - tr->t_begin, most[RM_RSS_NOW], tail, sizeof tail);
    log_info("step %6lld/%lld | loss %.4f%s | lr %.2e | gnorm %7.3f | %8.0f tok/s | MFU %5.1f%% | %.1f GFLOP/s | %.3f s/step | ETA %s%s\n",
             (long long)step + 1, (long long)c->train.steps, o->loss, vbuf, o->lr, o->gnorm, tps, 100.0 * mfu, gflops,
             o->dt, eta, tail);
    moe_load_write(tr);
    metrics_flush(&tr->metrics);
}

// Rank 0's guess of the next step's seconds: the slowest of the last four
// steps, plus the last evaluation's time if the next step evaluates.
static double predict_step(const Trainer *tr, int64_t step, int64_t stop, double eval_s) {
    double worst = 0;
    for (int i = 0; i < 4; i++) worst = tr->step_s[i] > worst ? tr->step_s[i] : worst;
    int64_t ei = tr->cfg->train.eval_interval;
    int evaluates = step == stop - 1 || (ei > 0 && (step + 1) % ei == 0);
    return worst + (evaluates ? eval_s : 0.0);
}

// What ended the step loop.
enum { END_DONE, END_STOPPED, END_NAN };

static void report_nan(const Trainer *tr, int64_t step, const StepOut *o) {
    if (tr->topo.rank != 0) return;
    char latest[1100], name[256] = "none";
    snprintf(latest, sizeof latest, "%s/latest", tr->cfg->checkpoint.dir);
    FILE *f = fopen(latest, "r");
    if (f) {
        if (!fgets(name, sizeof name, f)) snprintf(name, sizeof name, "none");
        fclose(f);
        name[strcspn(name, "\n")] = 0;
    }
    fprintf(stderr, "error: step %lld: %s is not finite (loss %g, gradient norm %g); the update was not applied "
            "and no checkpoint of it was written ([train] on_nan = stop); %s names %s\n"
            "  hint: resume from it with a lower [optimizer] lr, a longer warmup or [train] clip, "
            "or set [train] on_nan = skip to step over such batches\n",
            (long long)step + 1, isfinite(o->loss) ? "the gradient norm" : "the loss", o->loss, o->gnorm, latest, name);
    fflush(stderr);
}

static void report_stop(const Trainer *tr, int64_t done) {
    char why[128];
    stop_reason(&tr->stop, why, sizeof why);
    log_info("stopping at step %lld on %s: checkpoint written to %s/step-%06lld.h5, exit %d\n", (long long)done, why,
             tr->cfg->checkpoint.dir, (long long)done, STOP_EXIT_TEMPFAIL);
}

static void print_stop_plan(const Trainer *tr) {
    const Stop *s = &tr->stop;
    char sigs[128] = "";
    for (int i = 0; i < s->nsig; i++) {
        Stop one = {.reason = STOP_SIGNAL, .signo = s->sigs[i]};
        char nm[32];
        size_t len = strlen(sigs);
        snprintf(sigs + len, sizeof sigs - len, "%s%s", i ? ", " : "", stop_reason(&one, nm, sizeof nm));
    }
    double left = stop_seconds_left(s);
    char lim[192] = "no time limit";
    if (isfinite(left)) {
        char hms[32];
        format_eta(left, hms, sizeof hms);
        snprintf(lim, sizeof lim, "time limit in %s (%s, less %.0f s margin)", hms, s->deadline_from, s->margin);
    }
    log_info("stop: %s%s with a checkpoint, exit %d; %s\n", s->nsig ? "on " : "no stop signals", sigs,
             STOP_EXIT_TEMPFAIL, lim);
}

// <out_dir>/exit_status: the status and why, written by rank 0 as the run
// ends (removed as it starts, so a run that crashed leaves none). mpiexec's
// own status is not reliable when mpiexec itself receives the stop signal.
static void exit_status(const Trainer *tr, int rc, const char *why) {
    if (tr->topo.rank != 0) return;
    char path[DECK_STR + 32], tmp[DECK_STR + 48];
    snprintf(path, sizeof path, "%s/exit_status", tr->cfg->run.out_dir);
    if (rc < 0) {
        SYS_CHECK(unlink(path) == 0 || errno == ENOENT, "cannot remove '%s': %s", path, strerror(errno));
        return;
    }
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    SYS_CHECK(f, "cannot write '%s': %s", tmp, strerror(errno));
    fprintf(f, "%d\n%s\n", rc, why);
    SYS_CHECK(fflush(f) == 0 && fsync(fileno(f)) == 0, "cannot write '%s': %s", tmp, strerror(errno));
    SYS_CHECK(fclose(f) == 0, "cannot write '%s': %s", tmp, strerror(errno));
    SYS_CHECK(rename(tmp, path) == 0, "cannot rename '%s': %s", tmp, strerror(errno));
}

int train_run(const Deck *d) {
    Trainer tr;
    char err[2048];
    int rank = 0;
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    Stop stop;
    if (stop_init(&stop, d, rank, err, sizeof err) != 0) {
        if (rank == 0) fprintf(stderr, "%s\n", err);
        return STOP_EXIT_INPUT;
    }
    trainer_create(&tr, d);
    tr.stop = stop;
    exit_status(&tr, -1, NULL);
    const Config *c = tr.cfg;
    print_header(&tr);
    print_stop_plan(&tr);
    char path[DECK_STR + 32];
    if (c->train.save_weights && tr.start_step == 0 && !c->comm.compute_only) {
        snprintf(path, sizeof path, "%s/init.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, 0, tr.deck_text);
    }
    double t_start = wall_seconds(), train_time = 0.0, eval_s = wall_seconds(), last_val = evaluate(&tr);
    eval_s = wall_seconds() - eval_s;
    log_info("step %6lld/%lld | val %.4f (%s)\n", (long long)tr.start_step, (long long)c->train.steps, last_val,
             tr.start_step ? "resumed" : "initial");
    if (tr.topo.rank == 0 && tr.start_step == 0) h5_attr_f64(tr.metrics.file, "val_loss_initial", last_val);
    CommMark mark = comm_now(&tr);
    // The job may stop early (stop_at) with a checkpoint; the schedule still spans train.steps.
    int64_t stop_at = c->train.stop_at > 0 && c->train.stop_at < c->train.steps ? c->train.stop_at : c->train.steps;
    int end = END_DONE;
    int64_t step = tr.start_step;
    StepOut o = {0};
    for (; step < stop_at; step++) {
        if (stop_check(&tr.stop, MPI_COMM_WORLD, predict_step(&tr, step, stop_at, eval_s), tr.ckpt_s)) {
            end = END_STOPPED;
            break;
        }
        double t0 = wall_seconds();
        ckpt_poll(&tr.ckpt);    // publishes an asynchronous checkpoint whose writes are done (counted in the step)
        o = (StepOut){.val = NAN};
        o.loss = compute_grads(&tr, step, &o.gnorm);
        o.lr = optim_lr(&tr.zero.optim, step);
        // Every rank holds the same job-wide loss and norm, so all take the same branch.
        o.skipped = !isfinite(o.loss) || !isfinite(o.gnorm);
        if (c->comm.compute_only) {     // there each rank's norm is its own: agree on the branch
            double any = o.skipped;
            comm_allreduce_max_f64(&tr.dp, &any, 1, "skip");
            o.skipped = any > 0;
        }
        if (!o.skipped) apply_update(&tr, o.gnorm, o.lr);
        end_step(&tr);
        o.dt = wall_seconds() - t0;
        tr.step_s[step % 4] = o.dt;
        train_time += o.dt;
        if (o.skipped && c->train.on_nan == ON_NAN_STOP) {
            o.print = 1;
            record_step(&tr, step, stop_at, &o, &mark, train_time);
            end = END_NAN;
            break;
        }
        if (o.skipped && tr.topo.rank == 0)
            log_warn("step %lld: loss %g, gradient norm %g: not finite, update skipped ([train] on_nan = skip)",
                     (long long)step + 1, o.loss, o.gnorm);
        int last = step == stop_at - 1;
        int do_eval = last || (c->train.eval_interval > 0 && (step + 1) % c->train.eval_interval == 0);
        if (do_eval) {
            double te = wall_seconds();
            last_val = o.val = evaluate(&tr);
            eval_s = wall_seconds() - te;
        }
        int64_t ival = c->checkpoint.interval;
        if (ival > 0 && ((step + 1) % ival == 0 || last)) save(&tr, step + 1);
        o.print = (step + 1) % c->train.log_interval == 0 || last || do_eval;
        record_step(&tr, step, stop_at, &o, &mark, train_time);
    }
    int rc = STOP_EXIT_DONE;
    if (end == END_NAN) {
        report_nan(&tr, step, &o);
        rc = STOP_EXIT_NAN;
    } else if (end == END_STOPPED || stop_at < c->train.steps) {
        // Any early stop leaves a checkpoint to continue from.
        if (tr.last_ckpt != step) save(&tr, step);
        if (end == END_STOPPED) {
            report_stop(&tr, step);
            rc = STOP_EXIT_TEMPFAIL;
        }
    } else if (c->train.save_weights && !c->comm.compute_only) {
        snprintf(path, sizeof path, "%s/final.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, c->train.steps, tr.deck_text);
    }
    ckpt_flush(&tr.ckpt);       // an asynchronous checkpoint still being written
    char why[160];
    const char *how = end == END_NAN ? "stopped (non-finite loss or gradient)"
                    : end == END_STOPPED ? "stopped early" : stop_at < c->train.steps ? "stopped (train.stop_at)" : "done";
    if (end == END_STOPPED) {
        char r[128];
        snprintf(why, sizeof why, "stopped at step %lld on %s with a checkpoint", (long long)step,
                 stop_reason(&tr.stop, r, sizeof r));
    } else {
        snprintf(why, sizeof why, "%s at step %lld", how, (long long)step);
    }
    exit_status(&tr, rc, why);
    if (tr.noff && step > tr.start_step) {
        log_info("offload: update %.4f s per step on average over %lld steps (rank 0; its collectives' waits left out)",
                 tr.update_s / (double)(step - tr.start_step),
                 (long long)(step - tr.start_step));
        for (int k = 0; k < tr.noff; k++) {
            const Offload *o = &tr.off[k];
            if (o->device && o->params_tier == OFFLOAD_NONE)
                log_info("; %sDeep Optimizer States stride %d predicted %.4f s, all on the CPU %.4f s",
                         tr.noff > 1 ? (k ? "experts: " : "dense: ") : "", o->stride, o->predicted_s, o->cpu_only_s);
        }
        log_info("\n");
    }
    log_info("%s: %lld steps in %.1f s (%.1f s training), final val loss %.4f; outputs in %s/\n", how,
             (long long)(step - tr.start_step), wall_seconds() - t_start, train_time, last_val, c->run.out_dir);
    trainer_free(&tr);
    stop_free(&tr.stop);
    return rc;
}

int train_dump(const Deck *d, const char *out_path) {
    const Config *c = &d->cfg;
    Trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.deck = d;
    tr.cfg = c;
    tr.B = (int)c->train.micro_batch;
    tr.T = (int)c->train.seq_len;
    tr.Tl = tr.T;   // the dump runs one rank, whole rows
    kernels_set_threads(c->run.threads > 0 ? (int)c->run.threads : 1);
    open_data(&tr);
    Model *m = &tr.model;
    moe_spec_from_config(&tr.moe, c);
    ModelParallel mp = {.moe = &tr.moe};
    model_create_parallel(m, &c->model, tr.B, tr.T, backend_cpu(), &mp);
    m->moe_seed = (uint64_t)c->run.seed;
    CommOptions co = {.fault_skip_rank = -1};
    comm_init(&tr.dp, MPI_COMM_WORLD, "dp", &co);
    ZeroConfig zc = {.stage = 0, .bucket_mb = 1e6, .overlap = 0};
    zero_create(&tr.zero, &zc, &tr.dp, m, &c->optim, 1);
    zero_init_weights(&tr.zero, (uint64_t)c->run.seed, c->model.init_std);
    const ParamStore *ps = zero_store(&tr.zero);
    int32_t *in = xmalloc((size_t)tr.B * tr.T * sizeof(int32_t), "inputs");
    int32_t *tg = xmalloc((size_t)tr.B * tr.T * sizeof(int32_t), "targets");
    loader_batch(&tr.train, 0, in, tg);
    zero_begin_step(&tr.zero, 0);
    zero_begin_micro(&tr.zero, 0, 1);
    float loss = model_forward(m, ps, in, tg, tr.B, tr.T, 1);

    hid_t f = h5_create(out_path);
    weights_write_group(m, f, "params", tr.zero.params);
    uint64_t bt[2] = {(uint64_t)tr.B, (uint64_t)tr.T};
    uint64_t lg[3] = {(uint64_t)tr.B, (uint64_t)tr.T, (uint64_t)m->s.Vp};
    h5_write_i32(f, "inputs", in, 2, bt);
    h5_write_i32(f, "targets", tg, 2, bt);
    h5_write_f32(f, "logits", model_logits(m), 3, lg);
    h5_attr_f64(f, "loss", loss);
    h5_attr_f64(f, "aux", m->moe_aux);
    h5_attr_i64(f, "vocab_size", m->s.V);
    h5_attr_i64(f, "n_layer", m->s.L);
    h5_attr_i64(f, "n_head", m->s.NH);
    model_backward(m, ps, in, tg, tr.B, tr.T, 1.0f / ((float)tr.B * (float)tr.T));
    weights_write_group(m, f, "grads", tr.zero.grads);
    h5_close(f);
    printf("dump: loss %.6f, %zu parameters -> %s\n", loss, model_count_params(m), out_path);
    free(in);
    free(tg);
    zero_free(&tr.zero);
    comm_free(&tr.dp);
    model_free(m);
    moe_spec_free(&tr.moe);
    loader_free(&tr.train);
    if (tr.val.rows) loader_free(&tr.val);
    tokenfile_close(&tr.train_file);
    return 0;
}
