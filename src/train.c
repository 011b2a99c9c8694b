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
    Offload off;                // [offload] optimizer/params = nvme (off.slots NULL: none)
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
    double step_s[4];           // the last steps' seconds (ring), for the time limit
    CkptJob ckpt;               // checkpoints this job wrote (the only ones pruning deletes)
    double *rss_all;            // (ranks) per-rank peak RSS, MiB
    double rss_base;            // resident MiB before the model is allocated, largest rank: the process baseline
    double flops_per_token;
} Trainer;

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

// Device memory for the run, taken in one piece at start: model states and
// working buffers (zero_plan), activations, and room for alignment.
static size_t arena_bytes(const Trainer *tr) {
    Model m;
    ZeroPlan plan;
    model_table(&m, &tr->cfg->model);
    zero_plan(&m, &tr->cfg->zero, tr->topo.dp_size, tr->topo.dp_rank, 1, &plan);
    size_t acts = model_activation_bytes_layout(&m, tr->B, tr->Tl, tr->topo.sp_size, tr->topo.sp_rank,
                                                (int)tr->cfg->train.recompute);
    size_t bytes = plan.params + plan.grads + plan.optim + plan.working + acts + ((size_t)64 << 20);
    if (tr->cfg->offload.optimizer != OFFLOAD_NONE) {   // cuda: the moments on the host; room for DOS staging
        bytes -= plan.optim;                            //   (taken from the activations when they hold it)
        bytes += offload_device_bytes(&tr->cfg->offload, plan.optim / 8);
    }
    model_free(&m);
    return bytes;
}

// [offload] moves the moments off the backend: to NVMe, or (cuda) to host memory.
static int moments_offloaded(const Config *c, const Backend *bk) {
    return c->offload.optimizer == OFFLOAD_NVME || (c->offload.optimizer == OFFLOAD_HOST && bk->device_memory);
}

// [offload]: the owned range's moments (and stage-3 shard; on cpu at ZeRO 2-3
// with the moments on NVMe the reduced gradients too) to host memory or a file per rank.
static void start_offload(Trainer *tr) {
    const OffloadConfig *oc = &tr->cfg->offload;
    if (oc->optimizer == OFFLOAD_NONE && oc->params == OFFLOAD_NONE) return;
    int dev = tr->bk->device_memory;
    if (dev && oc->optimizer == OFFLOAD_NONE)
        FATAL_ALL("set [offload] optimizer = host (or nvme) too: the update runs where the moments are",
                  "[offload] params = host on cuda needs the moments off the device as well");
    if (!moments_offloaded(tr->cfg, tr->bk)) {
        log_info("offload: optimizer = host, params = %s: on the cpu backend the states already live in host memory\n",
                 oc->params == OFFLOAD_HOST ? "host" : "none");
        return;
    }
    Zero *z = &tr->zero;
    int params = oc->params == OFFLOAD_NVME || (oc->params == OFFLOAD_HOST && dev) ? (int)oc->params : OFFLOAD_NONE;
    int grads = !dev && oc->optimizer == OFFLOAD_NVME && z->stage >= 2;
    offload_create(&tr->off, oc, tr->bk, tr->cfg->run.name, tr->topo.rank, 0, z->own_begin,
                   z->own_end - z->own_begin, params, grads);
    zero_attach_offload(z, &tr->off);
    const Offload *o = &tr->off;
    static const char *const tiers[] = {"device", "host", "nvme"};
    if (o->tier == OFFLOAD_NVME)
        log_info("offload: optimizer = nvme, params = %s, gradients = %s, in %s (%s, %zu-byte alignment): ",
                 dev ? tiers[params] : params == OFFLOAD_NVME ? "nvme" : "memory", grads ? "nvme" : "memory",
                 oc->nvme_dir, o->file.direct ? "O_DIRECT" : "buffered", o->file.align);
    else
        log_info("offload: optimizer = host (pinned), params = %s: ", tiers[params]);
    log_info("%d subgroups of %.3f MiB, %d buffers, queue depth %lld, prefetch %s; %.1f MiB staged in memory per "
             "rank (cap %g MiB)\n", o->nsub, (double)o->G * 4 / 1048576.0, o->nbuf, (long long)oc->queue_depth,
             o->prefetch ? "on" : "off", (double)o->held_bytes / 1048576.0, oc->host_cap_mb);
    offload_dos_plan(&tr->off, &tr->model, oc->dos, (int)oc->dos_stride);
}

// Deep Optimizer States' choice and its inputs, as run.h5 attributes (rank 0).
static void describe_offload(const Trainer *tr, hid_t f) {
    const Offload *o = &tr->off;
    if (!o->slots) return;
    h5_attr_i64(f, "offload_subgroups", o->nsub);
    h5_attr_i64(f, "offload_subgroup_floats", (int64_t)o->G);
    if (!o->device) return;
    int ngpu = 0;
    for (int i = 0; i < o->nsub; i++) ngpu += dos_on_gpu(o->stride, i);
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
static void open_data(Trainer *tr) {
    const Config *c = tr->cfg;
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
    if (!ckpt_resume(&tr->zero, tr->deck, tr->cfg->checkpoint.dir, &st, path, sizeof path)) return;
    if (st.step > tr->cfg->train.steps)
        FATAL_ALL("raise [train] steps to train on", "checkpoint '%s' is at step %lld, past train.steps = %lld",
                  path, (long long)st.step, (long long)tr->cfg->train.steps);
    tr->start_step = st.step;
    tr->base_rows = st.data_rows >= 0 ? st.data_rows : st.step * tr->cfg->train.batch;
    log_info("resumed from %s at step %lld (%.2f s)\n", path, (long long)st.step, wall_seconds() - t0);
    if (st.data_rows >= 0 && st.data_rows != st.step * tr->cfg->train.batch)
        log_info("data: continuing at row %lld of the data order (the checkpoint's cursor; batch %lld now)\n",
                 (long long)st.data_rows, (long long)tr->cfg->train.batch);
}

static void checkpoint(Trainer *tr, int64_t steps_done) {
    int64_t rows = rows_done(tr, steps_done);
    CkptState st = {.step = steps_done, .data_cursor = steps_done, .data_rows = rows,
                    .tokens_seen = (double)rows * tr->T};
    double t0 = wall_seconds();
    zero_pull_states(&tr->zero);
    ckpt_write(&tr->ckpt, &tr->zero, tr->deck, tr->deck_text, tr->cfg->checkpoint.dir, &st);
    log_info("checkpoint: %s/step-%06lld.h5 (%.2f s)\n", tr->cfg->checkpoint.dir, (long long)steps_done, wall_seconds() - t0);
}

// A checkpoint, timed (the time limit plans with the longest of this job).
static void save(Trainer *tr, int64_t steps_done) {
    double t0 = wall_seconds();
    checkpoint(tr, steps_done);
    double dt = wall_seconds() - t0;
    if (dt > tr->ckpt_s || tr->last_ckpt < 0) tr->ckpt_s = dt;
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
    tr->deck = d;
    tr->cfg = &d->cfg;
    const Config *c = tr->cfg;
    tr->deck_text = xmalloc(1 << 16, "deck text");
    deck_format(d, tr->deck_text, 1 << 16);
    topo_init(&tr->topo, (int)c->parallel.dp, (int)c->parallel.sp);
    tr->threads = threads_per_rank(c->run.threads, tr->topo.local_size);
    CommOptions co = {.debug = c->comm.debug, .timeout_s = c->comm.timeout_s,
                      .fault_skip_rank = (int)c->comm.fault_skip_rank, .fault_skip_step = c->comm.fault_skip_step,
                      .fault_hang_s = c->comm.fault_hang_s, .oversubscribed = tr->threads * tr->topo.local_size > sysconf(_SC_NPROCESSORS_ONLN)};
    kernels_set_threads(tr->threads);
    tr->B = (int)c->train.micro_batch;
    tr->T = (int)c->train.seq_len;
    tr->Tl = tr->T / tr->topo.sp_size;
    tr->accum = (int)c->train.grad_accum;
    start_backend(tr, &co);
    comm_init(&tr->dp, tr->topo.dp, "dp", &co);
    comm_init(&tr->sp, tr->topo.sp, "sp", &co);

    measure_peak(tr);

    if (tr->topo.rank == 0) make_dirs(c->run.out_dir, "set [run] out_dir to a writable directory");
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    open_data(tr);
    double base = rss_now_mb();     // MPI, HDF5, BLAS, the loader: what the model's memory comes on top of
    MPI_CHECK(MPI_Allreduce(&base, &tr->rss_base, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    ModelParallel mp = {.sp = &tr->sp, .recompute = (int)c->train.recompute};
    model_create_parallel(&tr->model, &c->model, tr->B, tr->Tl, tr->bk, &mp);
    OptimConfig optc = c->optim;
    optc.offloaded = moments_offloaded(c, tr->bk);
    zero_create(&tr->zero, &c->zero, &tr->dp, &tr->model, &optc, c->train.steps);
    start_offload(tr);
    zero_init_weights(&tr->zero, (uint64_t)c->run.seed, c->model.init_std);
    tr->ps = zero_store(&tr->zero);
    tr->inputs = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "inputs");
    tr->targets = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "targets");
    tr->rss_all = xcalloc((size_t)tr->topo.size * sizeof(double), "rss");
    tr->flops_per_token = model_flops_per_token(&tr->model, tr->T);
    tr->last_ckpt = -1;
    // Before the first checkpoint of the job, plan with 1 s + its bytes at 200 MB/s.
    tr->ckpt_s = 1.0 + 3.0 * (double)tr->model.nparams * sizeof(float) / 200e6;
    resume(tr);
    if (tr->topo.rank == 0) {
        char path[DECK_STR + 16], machine[1024];
        machine_text(tr, machine, sizeof machine);
        snprintf(path, sizeof path, "%s/run.h5", c->run.out_dir);
        int buffer = c->train.log_interval < 4096 ? (int)c->train.log_interval : 4096;
        if (metrics_open(&tr->metrics, path, tr->topo.size, tr->start_step, buffer))
            log_info("run.h5: continuing %s from step %lld\n", path, (long long)tr->start_step);
        metrics_describe(&tr->metrics, tr->deck_text, machine, tr->peak_gflops, &tr->peak, tr->peak_all,
                         tr->threads, tr->start_step);
        h5_attr_i64(tr->metrics.file, "zero_stage", tr->zero.stage);
        h5_attr_i64(tr->metrics.file, "model_state_bytes", (int64_t)tr->zero.state_bytes);
        h5_attr_i64(tr->metrics.file, "working_bytes", (int64_t)tr->zero.working_bytes);
        h5_attr_i64(tr->metrics.file, "activation_bytes", (int64_t)model_activation_bytes(&tr->model, tr->B, tr->Tl));
        h5_attr_i64(tr->metrics.file, "nparams", (int64_t)tr->model.nparams);
        h5_attr_f64(tr->metrics.file, "baseline_rss_mb", tr->rss_base);
        describe_offload(tr, tr->metrics.file);
        metrics_flush(&tr->metrics);
    }
}

static void trainer_free(Trainer *tr) {
    if (tr->topo.rank == 0) metrics_close(&tr->metrics);
    loader_free(&tr->train);
    if (tr->val.rows) loader_free(&tr->val);
    tokenfile_close(&tr->train_file);
    if (tr->cfg->data.val[0]) tokenfile_close(&tr->val_file);
    zero_free(&tr->zero);
    offload_free(&tr->off);
    model_free(&tr->model);
    comm_free(&tr->sp);
    comm_free(&tr->dp);
    device_stop(&tr->dev);
    free(tr->inputs);
    free(tr->targets);
    free(tr->rss_all);
    free(tr->peak_all);
    free(tr->deck_text);
    ckpt_job_free(&tr->ckpt);
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
        sum[0] += model_forward(&tr->model, tr->ps, tr->inputs, tr->targets, tr->B, tr->Tl, 0);
        sum[1] += 1.0;
    }
    comm_allreduce_sum_f64(&tr->dp, sum, 2, "validation loss");
    return sum[0] / sum[1];
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
    double loss = 0.0;
    float dloss = 1.0f / ((float)B * (float)T * (float)accum);
    uint64_t base = (uint64_t)rows_done(tr, step);
    for (int a = 0; a < accum; a++) {
        uint64_t g0 = base + ((uint64_t)a * (uint64_t)tr->topo.data_size + (uint64_t)tr->topo.data_rank) * (uint64_t)B;
        loader_batch(&tr->train, g0, tr->inputs, tr->targets);
        zero_begin_micro(&tr->zero, a, accum);
        loss += model_forward(m, tr->ps, tr->inputs, tr->targets, B, T, 1);
        // Test-only: one rank's gradient of this step turns NaN.
        int poison = c->train.fault_nan_step == step + 1 && c->train.fault_nan_rank == tr->topo.rank && a == accum - 1;
        if (poison) log_warn("test fault: poisoning the gradient of step %lld", (long long)step + 1);
        model_backward(m, tr->ps, tr->inputs, tr->targets, B, T, poison ? NAN : dloss);
    }
    *grad_norm = zero_reduce_grads(&tr->zero);
    double l = loss / accum;
    comm_allreduce_sum_f64(&tr->dp, &l, 1, "loss");
    return l / tr->dp.size;
}

// Clip and AdamW on the owned shard.
static void apply_update(Trainer *tr, double grad_norm, double lr) {
    double t0 = wall_seconds();
    zero_step(&tr->zero, lr, optim_clip_scale(grad_norm, tr->cfg->train.clip));
    tr->bk->sync();     // the step's time includes its device work (AdamW runs asynchronously)
    tr->update_s += wall_seconds() - t0;
}

static void format_eta(double s, char *buf, size_t n) {
    if (!isfinite(s) || s < 0) s = 0;
    long t = (long)(s + 0.5);
    snprintf(buf, n, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
}

static void gather_rss(Trainer *tr) {
    double mine = peak_rss_mb();
    MPI_CHECK(MPI_Gather(&mine, 1, MPI_DOUBLE, tr->rss_all, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD));
}

static void print_header(const Trainer *tr) {
    const Config *c = tr->cfg;
    const GPTShape *s = &tr->model.s;
    log_info("%s", tr->deck_text);
    log_info("model: GPT-2, %zu parameters (L=%d C=%d NH=%d T=%d V=%d padded to %d)\n",
             tr->model.nparams, s->L, s->C, s->NH, tr->T, s->V, s->Vp);
    log_info("data: %s, %llu tokens (%s tokenizer); train rows %llu, val rows %llu of %d tokens, %s order\n",
             c->data.train, (unsigned long long)tr->train_file.ntok, tr->train_file.tokenizer,
             (unsigned long long)tr->train.rows, (unsigned long long)tr->val.rows, tr->T + 1,
             c->data.order == ORDER_SHUFFLED ? "shuffled" : "sequential");
    log_info("layout: %d ranks (dp=%d x sp=%d), %d threads per rank, batch %lld sequences = %lld tokens per step%s\n",
             tr->topo.size, tr->topo.data_size, tr->topo.sp_size, tr->threads, (long long)c->train.batch,
             (long long)c->train.batch * tr->T, c->train.recompute ? ", activation checkpointing per layer" : "");
    char dev[300];
    device_describe(&tr->dev, dev, sizeof dev);
    log_info("backend: %s; collectives: %s\n", dev, comm_path_name(tr->dp.opt.path));
    log_info("compute: %.3f GFLOP per token; MFU peak %.1f GFLOP/s (job; rank 0 %.1f): %s\n",
             tr->flops_per_token * 1e-9, tr->peak_gflops, tr->peak_all[0], tr->peak.method);
    log_info("memory per rank: ZeRO-%d model states %.1f MiB, working buffers %.1f MiB, activations %.1f MiB\n",
             tr->zero.stage, (double)tr->zero.state_bytes / 1048576.0, (double)tr->zero.working_bytes / 1048576.0,
             (double)model_activation_bytes(&tr->model, tr->B, tr->Tl) / 1048576.0);
}

// One step's figures, for run.h5 and the progress line.
typedef struct StepOut {
    double loss, val, gnorm, lr, dt;
    int skipped;            // the update was not applied (non-finite loss or gradient norm)
    int print;              // a progress line (and a run.h5 flush) after it
} StepOut;

// Counters at the previous row, so each row holds one step's traffic.
typedef struct CommMark {
    uint64_t bytes[COMM_NOPS];     // dp (ZeRO) group
    uint64_t a2a;                  // sp group: Ulysses all-to-alls
    double wait_s;
    uint64_t io_read, io_write;    // offload
    double io_wait, update_s;
} CommMark;

// Rank 0's offload traffic and update time in the step.
static void record_offload(Trainer *tr, MetricsRow *row, CommMark *mark) {
    uint64_t rd = tr->off.slots ? offload_read_bytes(&tr->off) : 0, wr = tr->off.slots ? offload_write_bytes(&tr->off) : 0;
    double w = tr->off.slots ? offload_io_wait(&tr->off) : 0.0;
    row->v[M_OFFLOAD_READ_BYTES] = (double)(rd - mark->io_read);
    row->v[M_OFFLOAD_WRITE_BYTES] = (double)(wr - mark->io_write);
    row->v[M_IO_WAIT] = w - mark->io_wait;
    row->v[M_UPDATE_TIME] = tr->update_s - mark->update_s;
    mark->io_read = rd;
    mark->io_write = wr;
    mark->io_wait = w;
    mark->update_s = tr->update_s;
}

// Collective (per-rank memory); rank 0 appends the row and maybe prints.
static void record_step(Trainer *tr, int64_t step, int64_t stop, const StepOut *o, CommMark *mark, double train_time) {
    gather_rss(tr);
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
    row.v[M_COMM_ALL_REDUCE] = (double)(tr->dp.bytes[COMM_ALLREDUCE] - mark->bytes[COMM_ALLREDUCE]);
    row.v[M_COMM_REDUCE_SCATTER] = (double)(tr->dp.bytes[COMM_REDUCE_SCATTER] - mark->bytes[COMM_REDUCE_SCATTER]);
    row.v[M_COMM_ALL_GATHER] = (double)(tr->dp.bytes[COMM_ALLGATHER] - mark->bytes[COMM_ALLGATHER]);
    row.v[M_COMM_WAIT] = tr->dp.wait_s - mark->wait_s;
    row.v[M_COMM_ALL_TO_ALL] = (double)(tr->sp.bytes[COMM_ALLTOALL] - mark->a2a);
    mark->a2a = tr->sp.bytes[COMM_ALLTOALL];
    record_offload(tr, &row, mark);
    memcpy(mark->bytes, tr->dp.bytes, sizeof mark->bytes);
    mark->wait_s = tr->dp.wait_s;
    metrics_append(&tr->metrics, &row);
    if (!o->print) return;
    char eta[32], vbuf[32] = "";
    format_eta(train_time / (double)(step + 1 - tr->start_step) * (double)(stop - step - 1), eta, sizeof eta);
    if (isfinite(o->val)) snprintf(vbuf, sizeof vbuf, " | val %.4f", o->val);
    log_info("step %6lld/%lld | loss %.4f%s | lr %.2e | gnorm %7.3f | %8.0f tok/s | MFU %5.1f%% | %.1f GFLOP/s | %.3f s/step | ETA %s\n",
             (long long)step + 1, (long long)c->train.steps, o->loss, vbuf, o->lr, o->gnorm, tps, 100.0 * mfu, gflops,
             o->dt, eta);
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
    if (c->train.save_weights && tr.start_step == 0) {
        snprintf(path, sizeof path, "%s/init.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, 0, tr.deck_text);
    }
    double t_start = wall_seconds(), train_time = 0.0, eval_s = wall_seconds(), last_val = evaluate(&tr);
    eval_s = wall_seconds() - eval_s;
    log_info("step %6lld/%lld | val %.4f (%s)\n", (long long)tr.start_step, (long long)c->train.steps, last_val,
             tr.start_step ? "resumed" : "initial");
    if (tr.topo.rank == 0 && tr.start_step == 0) h5_attr_f64(tr.metrics.file, "val_loss_initial", last_val);
    CommMark mark;
    memcpy(mark.bytes, tr.dp.bytes, sizeof mark.bytes);
    mark.wait_s = tr.dp.wait_s;
    mark.a2a = tr.sp.bytes[COMM_ALLTOALL];
    mark.io_read = tr.off.slots ? offload_read_bytes(&tr.off) : 0;
    mark.io_write = tr.off.slots ? offload_write_bytes(&tr.off) : 0;
    mark.io_wait = tr.off.slots ? offload_io_wait(&tr.off) : 0.0;
    mark.update_s = tr.update_s;
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
        o = (StepOut){.val = NAN};
        o.loss = compute_grads(&tr, step, &o.gnorm);
        o.lr = optim_lr(&tr.zero.optim, step);
        // Every rank holds the same job-wide loss and norm, so all take the same branch.
        o.skipped = !isfinite(o.loss) || !isfinite(o.gnorm);
        if (!o.skipped) apply_update(&tr, o.gnorm, o.lr);
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
    } else if (c->train.save_weights) {
        snprintf(path, sizeof path, "%s/final.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, c->train.steps, tr.deck_text);
    }
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
    if (tr.off.slots && step > tr.start_step) {
        const Offload *o = &tr.off;
        log_info("offload: update %.4f s per step on average over %lld steps (rank 0)", tr.update_s / (double)(step - tr.start_step),
                 (long long)(step - tr.start_step));
        if (o->device && o->params_tier == OFFLOAD_NONE)
            log_info("; Deep Optimizer States stride %d predicted %.4f s, all on the CPU %.4f s", o->stride,
                     o->predicted_s, o->cpu_only_s);
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
    model_create(m, &c->model, tr.B, tr.T, backend_cpu());
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
    h5_attr_i64(f, "vocab_size", m->s.V);
    h5_attr_i64(f, "n_layer", m->s.L);
    h5_attr_i64(f, "n_head", m->s.NH);
    model_backward(m, ps, in, tg, tr.B, tr.T, 1.0f / ((float)tr.B * (float)tr.T));
    weights_write_group(m, f, "grads", tr.zero.grads);
    h5_close(f);
    printf("dump: loss %.6f, %zu parameters -> %s\n", loss, m->nparams, out_path);
    free(in);
    free(tg);
    zero_free(&tr.zero);
    comm_free(&tr.dp);
    model_free(m);
    loader_free(&tr.train);
    if (tr.val.rows) loader_free(&tr.val);
    tokenfile_close(&tr.train_file);
    return 0;
}
