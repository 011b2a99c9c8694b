// estimate.c: per-rank memory, bytes per collective and FLOPs for stages 0-3.
#include "estimate.h"
#include "estimate_gen.h"
#include "comm.h"
#include "model.h"
#include "offload.h"
#include "peak.h"
#include "ulysses.h"
#include "zero.h"

#include <stdio.h>
#include <unistd.h>

static double mib(double bytes) { return bytes / 1048576.0; }

// This process's resident memory now: MPI, HDF5 and OpenBLAS (warmed by one
// small sgemm), i.e. what a run holds before it allocates the model.
static double baseline_bytes(void) {
    peak_sgemm_gflops(256, 1);
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0.0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
    return (double)rss * (double)sysconf(_SC_PAGESIZE);
}

static void row(const char *name, const double v[4]) {
    printf("  %-34s %10.1f %10.1f %10.1f %10.1f\n", name, mib(v[0]), mib(v[1]), mib(v[2]), mib(v[3]));
}

// All-to-all bytes rank 0 sends per step (it has the most heads): per layer and
// micro-step the forward pair (q,k,v to heads: 3 parts; output back: 1), the
// backward pair (1 and 3 parts), and with recompute the forward pair again for
// all layers but the last (still in place when backward starts).
static double a2a_bytes(const GPTShape *s, int B, int Tl, int sp, int accum, int recompute) {
    if (sp <= 1) return 0.0;
    double fwd = ulysses_sent_bytes(B, Tl, s->C, s->NH, sp, 0, 3, 1) + ulysses_sent_bytes(B, Tl, s->C, s->NH, sp, 0, 1, 0);
    double bwd = ulysses_sent_bytes(B, Tl, s->C, s->NH, sp, 0, 1, 1) + ulysses_sent_bytes(B, Tl, s->C, s->NH, sp, 0, 3, 0);
    return (double)accum * ((double)s->L * (fwd + bwd) + (recompute ? (double)(s->L - 1) * fwd : 0.0));
}

// For contrast: sequence parallelism that all-gathers K and V of the whole
// sequence in forward and reduce-scatters their gradients in backward: each
// rank sends its (B, Tl, 2C) slice to the sp-1 others, twice per layer.
static double allgather_sp_bytes(const GPTShape *s, int B, int Tl, int sp, int accum) {
    return (double)accum * s->L * 2.0 * (double)B * Tl * 2.0 * s->C * (double)(sp - 1) * sizeof(float);
}

// Predicted peak bytes of rank 0 at sequence length T (model.seq_len = T too):
// the deck's ZeRO stage, sp and micro-batch.
static double peak_at(const Config *c, int T, int recompute, double base) {
    ModelConfig mc = c->model;
    mc.seq_len = T;
    Model m;
    model_table(&m, &mc);
    const int sp = (int)c->parallel.sp, B = (int)c->train.micro_batch;
    ZeroPlan plan;
    ZeroConfig zc = c->zero;
    zc.tokens = (size_t)B * (size_t)(T / sp);     // the cpu backend's early embeddings (zero.h), as below
    zero_plan(&m, &zc, (int)c->parallel.dp * sp, 0, (int)c->train.grad_accum, &plan);
    double acts = (double)model_activation_bytes_layout(&m, B, T / sp, sp, 0, recompute);
    double io = 2.0 * B * T * 4 + (double)(T + 1) * 4 * 2 + 65536;
    model_free(&m);
    return (double)(plan.params + plan.grads + plan.optim + plan.working + plan.mpi_temp) + acts + io + base;
}

// The longest T (a multiple of sp) whose predicted peak fits in mem bytes; 0 if none.
static long longest_T(const Config *c, int recompute, double base, double mem) {
    long sp = c->parallel.sp, lo = 0, hi = (1L << 24) / sp;    // in units of sp
    while (lo < hi) {
        long mid = (lo + hi + 1) / 2;
        if (peak_at(c, (int)(mid * sp), recompute, base) <= mem) lo = mid;
        else hi = mid - 1;
    }
    return lo * sp;
}

static void sp_section(const Config *c, const Model *m, double base, double mem) {
    const int sp = (int)c->parallel.sp, B = (int)c->train.micro_batch, T = (int)c->train.seq_len;
    const int accum = (int)c->train.grad_accum, Tl = T / sp;
    int h0, nh;
    ulysses_split_heads(m->s.NH, sp, 0, &h0, &nh);
    printf("\nsequence parallelism: sp = %d, %d of T = %d tokens per rank, %d of %d heads on rank 0%s\n", sp, Tl, T,
           nh, m->s.NH, sp > 1 && m->s.NH % sp ? " (uneven split, all-to-allv)" : "");
    double an = (double)model_activation_bytes_layout(m, B, Tl, sp, 0, RECOMPUTE_NONE);
    double al = (double)model_activation_bytes_layout(m, B, Tl, sp, 0, RECOMPUTE_LAYER);
    double un = sp > 1 ? 2.0 * sizeof(float) * (double)ulysses_buffer_floats(B, Tl, m->s.C, m->s.NH, sp) : 0.0;
    printf("  %-44s %10.1f MiB\n", "activations per rank, recompute = none", mib(an));
    printf("  %-44s %10.1f MiB\n", "activations per rank, recompute = layer", mib(al));
    printf("  %-44s %10.1f MiB (included above: they share the MLP's backward scratch)\n",
           "all-to-all send/receive buffers", mib(un));
    double xn = a2a_bytes(&m->s, B, Tl, sp, accum, 0), xl = a2a_bytes(&m->s, B, Tl, sp, accum, 1);
    double ag = allgather_sp_bytes(&m->s, B, Tl, sp, accum);
    printf("  %-44s %10.2f MiB (recompute = layer: %.2f)\n", "all-to-all sent per step per rank", mib(xn), mib(xl));
    printf("  %-44s %10.2f MiB (grows with sp at fixed T/sp; all-to-all does not)\n",
           "all-gather style sp would send (K,V)", mib(ag));
    long tn = longest_T(c, RECOMPUTE_NONE, base, mem), tl = longest_T(c, RECOMPUTE_LAYER, base, mem);
    printf("  longest T fitting %.2f GiB per rank (ZeRO-%d, micro_batch %d, sp %d): %ld (recompute = none), "
           "%ld (recompute = layer)\n", mem / 1073741824.0, (int)c->zero.stage, B, sp, tn, tl);
    printf("activation_bytes_recompute_none %.0f\nactivation_bytes_recompute_layer %.0f\n", an, al);
    printf("all_to_all_bytes_per_step %.0f %.0f\nallgather_sp_bytes_per_step %.0f\n", xn, xl, ag);
    printf("longest_T %ld %ld\n", tn, tl);
}

int estimate_run(const Deck *d, int ranks, double mem_per_rank) {
    const Config *c = &d->cfg;
    Model m;
    model_table(&m, &c->model);
    const int B = (int)c->train.micro_batch, T = (int)c->train.seq_len, accum = (int)c->train.grad_accum;
    const int sp = (int)c->parallel.sp, p = (int)c->parallel.dp * sp, Tl = T / sp;
    double acts = (double)model_activation_bytes_layout(&m, B, Tl, sp, 0, (int)c->train.recompute);
    double acts_ckpt = (double)model_activation_bytes_layout(&m, B, Tl, sp, 0, RECOMPUTE_LAYER);
    double base = baseline_bytes();
    double io = 2.0 * B * T * 4 + (double)(T + 1) * 4 * 2 + 65536;   // batch, loader rows, deck text

    printf("estimate: %s on %d ranks (dp=%d x sp=%d), micro_batch %d x seq_len %d, grad_accum %d, batch %lld\n",
           d->path, ranks, (int)c->parallel.dp, sp, B, T, accum, (long long)c->train.batch);
    printf("model: %zu parameters (%d layers, d_model %d, %d heads, vocab %d padded to %d)\n", model_count_params(&m),
           m.s.L, m.s.C, m.s.NH, m.s.V, m.s.Vp);
    double v[9][4], sent[COMM_NOPS][4], total_sent[4];
    for (int st = 0; st < 4; st++) {
        ZeroConfig zc = c->zero;
        zc.stage = st;
        zc.tokens = (size_t)B * (size_t)Tl;    // the cpu backend's early embeddings (zero.h)
        ZeroPlan plan;
        zero_plan(&m, &zc, p, 0, accum, &plan);   // rank 0 owns the largest shard
        v[0][st] = (double)plan.params;
        v[1][st] = (double)plan.grads;
        v[2][st] = (double)plan.optim;
        v[3][st] = v[0][st] + v[1][st] + v[2][st];
        v[4][st] = (double)plan.working;
        v[5][st] = acts;
        v[6][st] = acts_ckpt;
        v[8][st] = (double)plan.mpi_temp;
        v[7][st] = v[3][st] + v[4][st] + v[8][st] + acts + io + base;
        total_sent[st] = 0;
        for (int op = 0; op < COMM_NOPS; op++) {
            sent[op][st] = plan.sent[op];
            total_sent[st] += plan.sent[op];
        }
    }
    printf("\nper-rank memory (MiB)                  stage 0    stage 1    stage 2    stage 3\n");
    row("parameters (fp32)", v[0]);
    row("gradients", v[1]);
    row("optimizer states (AdamW m, v)", v[2]);
    row("= model states", v[3]);
    row("working buffers (gather, staging)", v[4]);
    row(c->train.recompute ? "activations (recompute = layer)" : "activations (recompute = none)", v[5]);
    row("activations, recompute = layer", v[6]);
    row("MPI reduction temporaries", v[8]);
    double b4[4] = {base, base, base, base};
    row("process baseline (MPI, HDF5, BLAS)", b4);
    row(c->train.recompute ? "predicted peak (recompute = layer)" : "predicted peak (recompute = none)", v[7]);
    printf("\ncommunication per step per rank (MiB, dp group)\n");
    for (int op = 0; op < COMM_NOPS; op++)
        if (sent[op][0] + sent[op][1] + sent[op][2] + sent[op][3] > 0) row(comm_op_name(op), sent[op]);
    row("total", total_sent);
    if (total_sent[0] > 0)
        printf("  %-34s %10.2f %10.2f %10.2f %10.2f\n", "x stage 0", 1.0, total_sent[1] / total_sent[0],
               total_sent[2] / total_sent[0], total_sent[3] / total_sent[0]);
    if (c->zero.node_shared && p > 1)
        printf("  (parameters gathered by MPI, as on several nodes or cuda; on the cpu backend with every rank on one\n"
               "   node, [zero] node_shared holds them once per node instead: at stages 1-3 each rank's parameters\n"
               "   are its shard and the all-gathers vanish)\n");
    double flops = model_flops_per_token(&m, T) * (double)c->train.batch * T;
    printf("\ncompute: %.3g FLOP per step (job), %.3g per rank; %.3g FLOP per token\n", flops, flops / p,
           model_flops_per_token(&m, T));
    printf("\n# machine-readable: key stage0 stage1 stage2 stage3\n");
    printf("predicted_peak_bytes %.0f %.0f %.0f %.0f\n", v[7][0], v[7][1], v[7][2], v[7][3]);
    printf("model_state_bytes %.0f %.0f %.0f %.0f\n", v[3][0], v[3][1], v[3][2], v[3][3]);
    printf("comm_bytes_per_step %.0f %.0f %.0f %.0f\n", total_sent[0], total_sent[1], total_sent[2], total_sent[3]);
    sp_section(c, &m, base, mem_per_rank > 0 ? mem_per_rank : 4.0 * 1073741824.0);
    estimate_generate(d, ranks);
    offload_estimate(c, &m, p);
    if (c->moe.experts > 0) estimate_moe_print(c);
    model_free(&m);
    return 0;
}
