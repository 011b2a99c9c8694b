// estimate.c: per-rank memory, bytes per collective and FLOPs for stages 0-3.
#include "estimate.h"
#include "comm.h"
#include "model.h"
#include "peak.h"
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

int estimate_run(const Deck *d, int ranks) {
    const Config *c = &d->cfg;
    Model m;
    model_table(&m, &c->model);
    const int B = (int)c->train.micro_batch, T = (int)c->train.seq_len, accum = (int)c->train.grad_accum;
    const int sp = (int)c->parallel.sp, p = (int)c->parallel.dp * sp, Tl = T / sp;
    double acts = (double)model_activation_bytes_layout(&m, B, Tl, sp, 0, (int)c->train.recompute);
    double acts_ckpt = (double)model_activation_bytes_layout(&m, B, Tl, sp, 0, RECOMPUTE_LAYER);
    double base = baseline_bytes();
    double io = 2.0 * B * T * 4 + (double)(T + 1) * 4 * 2 + 65536;   // batch, loader rows, deck text

    printf("estimate: %s on %d ranks (dp=%d), micro_batch %d x seq_len %d, grad_accum %d, batch %lld\n",
           d->path, ranks, p, B, T, accum, (long long)c->train.batch);
    printf("model: %zu parameters (%d layers, d_model %d, %d heads, vocab %d padded to %d)\n", m.nparams,
           m.s.L, m.s.C, m.s.NH, m.s.V, m.s.Vp);
    double v[9][4], sent[COMM_NOPS][4], total_sent[4];
    for (int st = 0; st < 4; st++) {
        ZeroConfig zc = c->zero;
        zc.stage = st;
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
    row("activations", v[5]);
    row("activations, checkpointed (plan)", v[6]);
    row("MPI reduction temporaries", v[8]);
    double b4[4] = {base, base, base, base};
    row("process baseline (MPI, HDF5, BLAS)", b4);
    row("predicted peak (no checkpointing)", v[7]);
    printf("\ncommunication per step per rank (MiB, dp group)\n");
    for (int op = 0; op < COMM_NOPS; op++)
        if (sent[op][0] + sent[op][1] + sent[op][2] + sent[op][3] > 0) row(comm_op_name(op), sent[op]);
    row("total", total_sent);
    if (total_sent[0] > 0)
        printf("  %-34s %10.2f %10.2f %10.2f %10.2f\n", "x stage 0", 1.0, total_sent[1] / total_sent[0],
               total_sent[2] / total_sent[0], total_sent[3] / total_sent[0]);
    double flops = model_flops_per_token(&m, T) * (double)c->train.batch * T;
    printf("\ncompute: %.3g FLOP per step (job), %.3g per rank; %.3g FLOP per token\n", flops, flops / p,
           model_flops_per_token(&m, T));
    printf("\n# machine-readable: key stage0 stage1 stage2 stage3\n");
    printf("predicted_peak_bytes %.0f %.0f %.0f %.0f\n", v[7][0], v[7][1], v[7][2], v[7][3]);
    printf("model_state_bytes %.0f %.0f %.0f %.0f\n", v[3][0], v[3][1], v[3][2], v[3][3]);
    printf("comm_bytes_per_step %.0f %.0f %.0f %.0f\n", total_sent[0], total_sent[1], total_sent[2], total_sent[3]);
    model_free(&m);
    return 0;
}
