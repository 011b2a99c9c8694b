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
#include "sysutil.h"
#include "topo.h"
#include "weights.h"
#include "zero.h"

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
    TokenFile train_file, val_file;
    Loader train, val;
    Model model;
    Zero zero;
    const ParamStore *ps;
    Metrics metrics;
    int B, T, accum;
    int Tl;                     // this rank's tokens of each row: T / sp
    int32_t *inputs, *targets;  // (B, Tl)
    int64_t start_step;         // 0, or the step a checkpoint resumed at
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

// Threads per rank: the deck's, else the node's cores shared among its ranks.
static int pick_threads(const Config *c, const Topo *t) {
    if (c->run.threads > 0) return (int)c->run.threads;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int n = (int)(cores / t->local_size);
    return n > 0 ? n : 1;
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
    size_t bytes = plan.params + plan.grads + plan.optim + plan.working +
                   model_activation_bytes_layout(&m, tr->B, tr->Tl, tr->topo.sp_size, tr->topo.sp_rank,
                                                 (int)tr->cfg->train.recompute) + ((size_t)64 << 20);
    model_free(&m);
    return bytes;
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

// [checkpoint] resume: rank 0 decides which file (all ranks then read it).
static void resume(Trainer *tr) {
    char path[1200] = "";
    int found = 0;
    if (tr->topo.rank == 0)
        found = ckpt_find_resume(tr->deck, tr->cfg->checkpoint.dir, path, sizeof path, 0);
    MPI_CHECK(MPI_Bcast(&found, 1, MPI_INT, 0, MPI_COMM_WORLD));
    if (!found) return;
    MPI_CHECK(MPI_Bcast(path, sizeof path, MPI_CHAR, 0, MPI_COMM_WORLD));
    CkptState st;
    double t0 = wall_seconds();
    ckpt_read(&tr->zero, tr->deck, path, &st);
    if (st.step > tr->cfg->train.steps)
        FATAL_ALL("raise [train] steps to train on", "checkpoint '%s' is at step %lld, past train.steps = %lld",
                  path, (long long)st.step, (long long)tr->cfg->train.steps);
    tr->start_step = st.step;
    log_info("resumed from %s at step %lld (%.2f s)\n", path, (long long)st.step, wall_seconds() - t0);
}

static void checkpoint(Trainer *tr, int64_t steps_done) {
    CkptState st = {.step = steps_done, .data_cursor = steps_done,
                    .tokens_seen = (double)steps_done * (double)tr->cfg->train.batch * tr->T};
    double t0 = wall_seconds();
    zero_pull_states(&tr->zero);
    ckpt_write(&tr->zero, tr->deck, tr->deck_text, tr->cfg->checkpoint.dir, &st);
    log_info("checkpoint: %s/step-%06lld.h5 (%.2f s)\n", tr->cfg->checkpoint.dir, (long long)steps_done, wall_seconds() - t0);
}

static void trainer_create(Trainer *tr, const Deck *d) {
    memset(tr, 0, sizeof *tr);
    tr->deck = d;
    tr->cfg = &d->cfg;
    const Config *c = tr->cfg;
    tr->deck_text = xmalloc(1 << 16, "deck text");
    deck_format(d, tr->deck_text, 1 << 16);
    topo_init(&tr->topo, (int)c->parallel.dp, (int)c->parallel.sp);
    tr->threads = pick_threads(c, &tr->topo);
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

    // Every rank measures at once, so the figure is what the job really has;
    // ranks sharing a GPU count their share of it.
    int share = 1;
    if (tr->dev.backend == BACKEND_CUDA && tr->topo.local_size > tr->dev.cuda_devices)
        share = (tr->topo.local_size + tr->dev.cuda_devices - 1) / tr->dev.cuda_devices;
    double mine = c->run.peak_gflops > 0 ? c->run.peak_gflops / tr->topo.size : device_gemm_peak_gflops(&tr->dev, share);
    MPI_CHECK(MPI_Allreduce(&mine, &tr->peak_gflops, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));

    if (tr->topo.rank == 0) make_dirs(c->run.out_dir, "set [run] out_dir to a writable directory");
    MPI_CHECK(MPI_Barrier(MPI_COMM_WORLD));
    open_data(tr);
    double base = rss_now_mb();     // MPI, HDF5, BLAS, the loader: what the model's memory comes on top of
    MPI_CHECK(MPI_Allreduce(&base, &tr->rss_base, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    ModelParallel mp = {.sp = &tr->sp, .recompute = (int)c->train.recompute};
    model_create_parallel(&tr->model, &c->model, tr->B, tr->Tl, tr->bk, &mp);
    zero_create(&tr->zero, &c->zero, &tr->dp, &tr->model, &c->optim, c->train.steps);
    zero_init_weights(&tr->zero, (uint64_t)c->run.seed, c->model.init_std);
    tr->ps = zero_store(&tr->zero);
    tr->inputs = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "inputs");
    tr->targets = xmalloc((size_t)tr->B * tr->Tl * sizeof(int32_t), "targets");
    tr->rss_all = xcalloc((size_t)tr->topo.size * sizeof(double), "rss");
    tr->flops_per_token = model_flops_per_token(&tr->model, tr->T);
    resume(tr);
    if (tr->topo.rank == 0) {
        char path[DECK_STR + 16], machine[512];
        machine_text(tr, machine, sizeof machine);
        snprintf(path, sizeof path, "%s/run.h5", c->run.out_dir);
        if (tr->start_step > 0 && metrics_reopen(&tr->metrics, path, tr->topo.size, (uint64_t)tr->start_step) == 0)
            log_info("run.h5: continuing %s from step %lld\n", path, (long long)tr->start_step);
        else {
            if (tr->start_step > 0) {
                char old[DECK_STR + 64];
                snprintf(old, sizeof old, "%s/run-before-step-%lld.h5", c->run.out_dir, (long long)tr->start_step);
                if (rename(path, old) == 0) log_warn("run.h5 was written by another layout; kept as %s", old);
            }
            metrics_create(&tr->metrics, path, tr->topo.size, tr->deck_text, machine, tr->peak_gflops, tr->threads);
        }
        h5_attr_i64(tr->metrics.file, "zero_stage", tr->zero.stage);
        h5_attr_i64(tr->metrics.file, "model_state_bytes", (int64_t)tr->zero.state_bytes);
        h5_attr_i64(tr->metrics.file, "working_bytes", (int64_t)tr->zero.working_bytes);
        h5_attr_i64(tr->metrics.file, "activation_bytes", (int64_t)model_activation_bytes(&tr->model, tr->B, tr->Tl));
        h5_attr_i64(tr->metrics.file, "nparams", (int64_t)tr->model.nparams);
        h5_attr_f64(tr->metrics.file, "baseline_rss_mb", tr->rss_base);
    }
}

static void trainer_free(Trainer *tr) {
    if (tr->topo.rank == 0) metrics_close(&tr->metrics);
    loader_free(&tr->train);
    if (tr->val.rows) loader_free(&tr->val);
    tokenfile_close(&tr->train_file);
    if (tr->cfg->data.val[0]) tokenfile_close(&tr->val_file);
    zero_free(&tr->zero);
    model_free(&tr->model);
    comm_free(&tr->sp);
    comm_free(&tr->dp);
    device_stop(&tr->dev);
    free(tr->inputs);
    free(tr->targets);
    free(tr->rss_all);
    free(tr->deck_text);
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

// One optimizer step: grad_accum micro-steps (ZeRO reduces gradients as
// buckets complete), the global norm, clip, AdamW on the owned shard.
// Returns the step's mean loss; fills grad norm and lr.
static double train_step(Trainer *tr, int64_t step, double *grad_norm, double *lr) {
    Model *m = &tr->model;
    // T: this rank's tokens. ZeRO averages gradients over all dp x sp ranks, so
    // scaling by the local token count gives the mean over every token of the step.
    const int B = tr->B, T = tr->Tl, accum = tr->accum;
    zero_begin_step(&tr->zero, step);
    comm_set_step(&tr->sp, step);
    double loss = 0.0;
    float dloss = 1.0f / ((float)B * (float)T * (float)accum);
    for (int a = 0; a < accum; a++) {
        uint64_t g0 = (((uint64_t)step * accum + a) * (uint64_t)tr->topo.data_size + (uint64_t)tr->topo.data_rank) * (uint64_t)B;
        loader_batch(&tr->train, g0, tr->inputs, tr->targets);
        zero_begin_micro(&tr->zero, a, accum);
        loss += model_forward(m, tr->ps, tr->inputs, tr->targets, B, T, 1);
        model_backward(m, tr->ps, tr->inputs, tr->targets, B, T, dloss);
    }
    *grad_norm = zero_reduce_grads(&tr->zero);
    double l = loss / accum;
    comm_allreduce_sum_f64(&tr->dp, &l, 1, "loss");
    l /= tr->dp.size;
    *lr = optim_lr(&tr->zero.optim, step);
    zero_step(&tr->zero, *lr, optim_clip_scale(*grad_norm, tr->cfg->train.clip));
    tr->bk->sync();     // the step's time includes its device work (AdamW runs asynchronously)
    return l;
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
    log_info("compute: %.3f GFLOP per token, measured %s peak %.1f GFLOP/s (job)%s\n",
             tr->flops_per_token * 1e-9,
             tr->dev.backend == BACKEND_CUDA ? (tr->dev.bf16 ? "cuBLAS bf16 GEMM" : "cuBLAS fp32 GEMM") : "sgemm",
             tr->peak_gflops, c->run.peak_gflops > 0 ? ", from [run] peak_gflops" : "");
    log_info("memory per rank: ZeRO-%d model states %.1f MiB, working buffers %.1f MiB, activations %.1f MiB\n",
             tr->zero.stage, (double)tr->zero.state_bytes / 1048576.0, (double)tr->zero.working_bytes / 1048576.0,
             (double)model_activation_bytes(&tr->model, tr->B, tr->Tl) / 1048576.0);
}

int train_run(const Deck *d) {
    Trainer tr;
    trainer_create(&tr, d);
    const Config *c = tr.cfg;
    print_header(&tr);
    char path[DECK_STR + 32];
    if (c->train.save_weights && tr.start_step == 0) {
        snprintf(path, sizeof path, "%s/init.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, 0, tr.deck_text);
    }
    const double tokens_per_step = (double)c->train.batch * tr.T;
    double t_start = wall_seconds(), train_time = 0.0, last_val = evaluate(&tr);
    log_info("step %6lld/%lld | val %.4f (%s)\n", (long long)tr.start_step, (long long)c->train.steps, last_val,
             tr.start_step ? "resumed" : "initial");
    if (tr.topo.rank == 0 && tr.start_step == 0) h5_attr_f64(tr.metrics.file, "val_loss_initial", last_val);
    uint64_t before[COMM_NOPS], a2a_before = tr.sp.bytes[COMM_ALLTOALL];
    memcpy(before, tr.dp.bytes, sizeof before);
    double comm_before = tr.dp.wait_s;
    // The job may stop early (stop_at) with a checkpoint; the schedule still spans train.steps.
    int64_t stop = c->train.stop_at > 0 && c->train.stop_at < c->train.steps ? c->train.stop_at : c->train.steps;
    for (int64_t step = tr.start_step; step < stop; step++) {
        double t0 = wall_seconds(), gnorm = 0, lr = 0;
        double loss = train_step(&tr, step, &gnorm, &lr);
        double dt = wall_seconds() - t0;
        train_time += dt;
        int last = step == stop - 1;
        int do_eval = last || (c->train.eval_interval > 0 && (step + 1) % c->train.eval_interval == 0);
        double val = do_eval ? evaluate(&tr) : NAN;
        if (do_eval) last_val = val;
        if (!isfinite(loss))
            FATAL_ALL("lower optimizer.lr or raise train.clip", "loss is %g at step %lld", loss, (long long)step + 1);
        int64_t ival = c->checkpoint.interval;
        if (ival > 0 && ((step + 1) % ival == 0 || last)) checkpoint(&tr, step + 1);
        gather_rss(&tr);
        if (tr.topo.rank != 0) continue;
        double tps = tokens_per_step / dt;
        double mfu = tps * tr.flops_per_token * 1e-9 / tr.peak_gflops;
        MetricsRow row = {.peak_rss_mb = tr.rss_all};
        row.v[M_STEP] = (double)(step + 1);
        row.v[M_LOSS] = loss;
        row.v[M_VAL_LOSS] = val;
        row.v[M_LR] = lr;
        row.v[M_GRAD_NORM] = gnorm;
        row.v[M_TOKENS_PER_S] = tps;
        row.v[M_MFU] = mfu;
        row.v[M_STEP_TIME] = dt;
        row.v[M_TOKENS] = tokens_per_step * (double)(step + 1);
        row.v[M_COMM_ALL_REDUCE] = (double)(tr.dp.bytes[COMM_ALLREDUCE] - before[COMM_ALLREDUCE]);
        row.v[M_COMM_REDUCE_SCATTER] = (double)(tr.dp.bytes[COMM_REDUCE_SCATTER] - before[COMM_REDUCE_SCATTER]);
        row.v[M_COMM_ALL_GATHER] = (double)(tr.dp.bytes[COMM_ALLGATHER] - before[COMM_ALLGATHER]);
        row.v[M_COMM_WAIT] = tr.dp.wait_s - comm_before;
        row.v[M_COMM_ALL_TO_ALL] = (double)(tr.sp.bytes[COMM_ALLTOALL] - a2a_before);   // sp (issue 11)
        a2a_before = tr.sp.bytes[COMM_ALLTOALL];
        memcpy(before, tr.dp.bytes, sizeof before);
        comm_before = tr.dp.wait_s;
        metrics_append(&tr.metrics, &row);
        if ((step + 1) % c->train.log_interval == 0 || last || do_eval) {
            char eta[32];
            format_eta(train_time / (double)(step + 1 - tr.start_step) * (double)(stop - step - 1), eta, sizeof eta);
            char vbuf[32] = "";
            if (do_eval) snprintf(vbuf, sizeof vbuf, " | val %.4f", val);
            log_info("step %6lld/%lld | loss %.4f%s | lr %.2e | gnorm %7.3f | %8.0f tok/s | MFU %5.1f%% | %.3f s/step | ETA %s\n",
                     (long long)step + 1, (long long)c->train.steps, loss, vbuf, lr, gnorm, tps,
                     100.0 * mfu, dt, eta);
            metrics_flush(&tr.metrics);
        }
    }
    if (c->train.save_weights && stop == c->train.steps) {
        snprintf(path, sizeof path, "%s/final.h5", c->run.out_dir);
        weights_write(&tr.model, tr.ps, tr.topo.rank == 0, path, c->train.steps, tr.deck_text);
    }
    log_info("%s: %lld steps in %.1f s (%.1f s training), final val loss %.4f; outputs in %s/\n",
             stop == c->train.steps ? "done" : "stopped (train.stop_at)", (long long)(stop - tr.start_step),
             wall_seconds() - t_start, train_time, last_val, c->run.out_dir);
    trainer_free(&tr);
    return 0;
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
