// eval.c: validation loss and perplexity of a weights file (eval.h).
#include "eval.h"
#include "comm.h"
#include "data.h"
#include "device.h"
#include "engine.h"
#include "kernels.h"
#include "log.h"
#include "model.h"
#include "sysutil.h"
#include "topo.h"
#include "weights.h"

#include <errno.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct Eval {
    const Config *cfg;
    Comm comm;
    int T, naive;
    Model g;                // the whole model (naive: with activations for B = 1 x T)
    float *full;            // naive: the parameters, host
    Engine e;               // the inference forward
    TokenFile file;
    Loader ld;
    int32_t *inputs, *targets, *pos, *tables, *sample;
    float *logits;          // (T, Vp)
    int max_blocks;
} Eval;

static const float *naive_params(void *ctx, int u, int phase) {
    const Eval *ev = ctx;
    (void)phase;
    return ev->full + ev->g.unit_begin[u];
}
static void naive_release(void *ctx, int u, int phase) { (void)ctx; (void)u; (void)phase; }

// -log softmax(x)[target] over the first V logits, in double.
static double token_loss(const float *x, int V, int target) {
    double mx = x[0];
    for (int v = 1; v < V; v++) mx = x[v] > mx ? x[v] : mx;
    double z = 0.0;
    for (int v = 0; v < V; v++) z += exp((double)x[v] - mx);
    return log(z) + mx - (double)x[target];
}

// The token range evaluated: [data] val whole, or the tail of [data] train that training validates on.
static void open_tokens(Eval *ev, uint64_t *b, uint64_t *e) {
    const DataConfig *dc = &ev->cfg->data;
    tokenfile_open(&ev->file, dc->val[0] ? dc->val : dc->train);
    *e = ev->file.ntok;
    *b = dc->val[0] ? 0 : (uint64_t)((double)ev->file.ntok * (1.0 - dc->val_fraction));
    if (*b >= *e)
        FATAL("set [data] val to a token file, or [data] val_fraction above 0",
              "eval: no validation tokens in '%s' (val_fraction = %g)", ev->file.path, dc->val_fraction);
}

// One row through the inference forward: a prefill of T tokens, every row sampled.
static double row_loss_paged(Eval *ev) {
    const int T = ev->T;
    RaggedBatch b = {.N = T, .nsample = T, .max_blocks = ev->max_blocks, .tok = ev->inputs, .pos = ev->pos,
                     .tables = ev->tables, .sample = ev->sample};
    engine_forward(&ev->e, &b, ev->logits);
    if (ev->e.ep_rank != 0) return 0.0;     // the logits are on the replica's first rank
    double sum = 0.0;
    for (int t = 0; t < T; t++) sum += token_loss(ev->logits + (size_t)t * ev->g.s.Vp, ev->g.s.V, ev->targets[t]);
    return sum;
}

static double row_loss_naive(Eval *ev) {
    ParamStore ps = {.ctx = ev, .params = naive_params, .release = naive_release};
    model_forward(&ev->g, &ps, ev->inputs, ev->targets, 1, ev->T, 0);
    ev->g.bk->to_host(ev->logits, model_logits(&ev->g), (size_t)ev->T * (size_t)ev->g.s.Vp);
    double sum = 0.0;
    for (int t = 0; t < ev->T; t++) sum += token_loss(ev->logits + (size_t)t * ev->g.s.Vp, ev->g.s.V, ev->targets[t]);
    return sum;
}

// The logits of the first row, (T, V) float32 little-endian, for tests.
static void dump_logits(const Eval *ev, const char *path) {
    FILE *f = fopen(path, "wb");
    if (!f) FATAL("give a path you can write", "eval: cannot write '%s': %s", path, strerror(errno));
    for (int t = 0; t < ev->T; t++)
        if (fwrite(ev->logits + (size_t)t * ev->g.s.Vp, sizeof(float), (size_t)ev->g.s.V, f) != (size_t)ev->g.s.V)
            FATAL("check the disk", "eval: cannot write '%s': %s", path, strerror(errno));
    if (fclose(f) != 0) FATAL("check the disk", "eval: cannot write '%s': %s", path, strerror(errno));
}

int eval_run(const Deck *d, const char *logits_path) {
    Eval ev;
    memset(&ev, 0, sizeof ev);
    ev.cfg = &d->cfg;
    const Config *c = ev.cfg;
    int local_rank = engine_start_ranks(&ev.comm, "eval", c->run.threads, c->comm.debug, c->comm.timeout_s);
    ev.naive = c->generate.naive;
    ev.T = c->train.seq_len > 0 ? (int)c->train.seq_len : (int)c->model.seq_len;
    uint64_t tb, te;
    open_tokens(&ev, &tb, &te);
    loader_create(&ev.ld, &ev.file, tb, te, 1, ev.T, ORDER_SEQUENTIAL, 0, c->model.vocab);
    const int T = ev.T;
    engine_whole_model(&ev.g, c, 1, ev.naive ? T : 0);
    ev.full = xmalloc(ev.g.nparams * sizeof(float), "weights");
    weights_read(&ev.g, c->generate.weights, ev.full);
    const int bs = (int)c->generate.kv_block;
    ev.max_blocks = (T + bs - 1) / bs;
    DeviceInfo dev;
    memset(&dev, 0, sizeof dev);
    if (!ev.naive) {     // the inference forward on the run's backend (naive: the cpu reference)
        char err[2048];
        if (device_select(d, 1, &dev, err, sizeof err) != 0) FATAL_ALL(NULL, "%s", err);
        const Backend *bk = device_start(&dev, local_rank, engine_arena_bytes(&ev.g, 1, ev.max_blocks, bs, T, T, ev.max_blocks));
        engine_create_ep(&ev.e, &ev.g, ev.full, &c->model, bk, &ev.comm, 1, (int)c->parallel.ep,
                         c->generate.weights_dtype, ev.max_blocks, bs, T, T, ev.max_blocks);
        free(ev.full);
        ev.full = NULL;
    }
    ev.inputs = xmalloc(sizeof(int32_t) * (size_t)T, "eval inputs");
    ev.targets = xmalloc(sizeof(int32_t) * (size_t)T, "eval targets");
    ev.pos = xmalloc(sizeof(int32_t) * (size_t)T, "eval positions");
    ev.sample = xmalloc(sizeof(int32_t) * (size_t)T, "eval rows");
    ev.tables = xmalloc(sizeof(int32_t) * (size_t)T * (size_t)ev.max_blocks, "eval tables");
    ev.logits = xmalloc(sizeof(float) * (size_t)T * (size_t)ev.g.s.Vp, "eval logits");
    for (int t = 0; t < T; t++) {
        ev.pos[t] = ev.sample[t] = t;
        for (int k = 0; k < ev.max_blocks; k++) ev.tables[(size_t)t * ev.max_blocks + k] = k;
    }
    static const char *dtypes[] = {"fp32", "bf16", "int8"};
    double t0 = wall_seconds(), acc[2] = {0.0, 0.0};   // loss sum, tokens
    // Rows are dealt over the model replicas (naive: every rank; with ep, the ep ranks of a replica share each
    // row and its first rank counts it).
    const uint64_t first = ev.naive ? (uint64_t)ev.comm.rank : (uint64_t)ev.e.replica;
    const uint64_t stride = ev.naive ? (uint64_t)ev.comm.size : (uint64_t)ev.e.replicas;
    const int counts = ev.naive || ev.e.ep_rank == 0;
    for (uint64_t r = first; r < ev.ld.rows; r += stride) {
        loader_batch(&ev.ld, r, ev.inputs, ev.targets);
        double l = ev.naive ? row_loss_naive(&ev) : row_loss_paged(&ev);
        if (!counts) continue;
        acc[0] += l;
        acc[1] += T;
        if (r == 0 && logits_path) dump_logits(&ev, logits_path);
    }
    comm_allreduce_sum_f64(&ev.comm, acc, 2, "eval loss");
    double loss = acc[1] > 0 ? acc[0] / acc[1] : NAN;
    log_info("eval: %s on %s tokens [%llu, %llu): %llu rows of %d tokens over %d ranks, forward %s, weights %s, backend %s\n",
             c->generate.weights, ev.file.path, (unsigned long long)tb, (unsigned long long)te,
             (unsigned long long)ev.ld.rows, T, ev.comm.size, ev.naive ? "training (naive)" : "inference",
             ev.naive ? "fp32" : dtypes[c->generate.weights_dtype], ev.naive ? "cpu" : ev.e.bk->name);
    log_info("eval: loss %.6f perplexity %.4f (%.0f tokens, %.2f s)\n", loss, exp(loss), acc[1], wall_seconds() - t0);
    if (ev.naive) model_free(&ev.g);
    else {
        engine_free(&ev.e);
        device_stop(&dev);
        model_free(&ev.g);
    }
    free(ev.full);
    free(ev.inputs); free(ev.targets); free(ev.pos); free(ev.sample); free(ev.tables); free(ev.logits);
    loader_free(&ev.ld);
    tokenfile_close(&ev.file);
    comm_free(&ev.comm);
    return 0;
}
