// estimate_gen.c: the generate part of `partita estimate`: memory per rank
// for each [generate] weights_from, the bytes a pass streams, and tokens/s
// predicted from this machine's measured rates (estimate_gen.h).
#include "estimate_gen.h"
#include "aio.h"
#include "infer/engine.h"
#include "infer/stage.h"
#include "kernels.h"
#include "model.h"
#include "peak.h"
#include "sysutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double mib(double b) { return b / 1048576.0; }

// Bytes per second reading a large buffer (sum of floats), best of three.
static double probe_memory(double *copy_bps) {
    const size_t n = (size_t)64 << 20;   // 256 MiB
    float *a = aligned_alloc(64, n * sizeof(float)), *b = aligned_alloc(64, n * sizeof(float));
    if (!a || !b) {
        free(a);
        free(b);
        *copy_bps = 0;
        return 0;
    }
    for (size_t i = 0; i < n; i++) a[i] = b[i] = (float)(i & 255);
    double best = 0, best_copy = 0;
    volatile double sink = 0;   // keeps the summing loop from being optimised away
    for (int r = 0; r < 3; r++) {
        double t0 = wall_seconds(), s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static)
        for (size_t i = 0; i < n; i++) s += a[i];
        double t1 = wall_seconds();
        memcpy(b, a, n * sizeof(float));
        double t2 = wall_seconds();
        sink += s + b[r];
        if (t1 > t0 && n * 4.0 / (t1 - t0) > best) best = n * 4.0 / (t1 - t0);
        if (t2 > t1 && n * 4.0 / (t2 - t1) > best_copy) best_copy = n * 4.0 / (t2 - t1);
    }
    free(a);
    free(b);
    *copy_bps = best_copy;
    return best;
}

// O_DIRECT read rate of the staged file (up to 2 GiB or ~3 s), through the I/O
// engine at the deck's io_depth; 0 where there is no file to read.
static double probe_disk(const GenerateConfig *g, char *note, size_t n) {
    char why[700];
    Aio a;
    AioFile f;
    if (!g->stage[0]) {
        snprintf(note, n, "not measured: no [generate] stage file");
        return 0;
    }
    if (aio_init(&a, g->io_depth ? (int)g->io_depth : 256, why, sizeof why) != 0) {
        snprintf(note, n, "not measured: %s", why);
        return 0;
    }
    if (aio_open(&f, g->stage, AIO_READ, why, sizeof why) != 0) {
        snprintf(note, n, "not measured: %s", why);
        aio_free(&a);
        return 0;
    }
    // Four 64 MiB reads in flight (each split by the engine into 1 MiB requests), up to 4 GiB or ~3 s.
    enum { K = 4 };
    const size_t chunk = (size_t)64 << 20;
    void *buf[K];
    uint64_t off = 0, done = 0, t[K] = {0};
    int bad = 0;
    for (int k = 0; k < K; k++) bad |= !(buf[k] = aio_buffer(chunk, 4096));
    double t0 = wall_seconds();
    for (int k = 0; !bad && off + chunk <= f.size && off < ((uint64_t)4 << 30) && wall_seconds() - t0 < 3.0; k = (k + 1) % K) {
        if (t[k] && aio_wait(&a, t[k], why, sizeof why) != 0) bad = 1;
        if (t[k]) done += chunk;
        t[k] = aio_read(&a, &f, buf[k], chunk, off);
        off += chunk;
    }
    if (!bad && aio_wait_all(&a, why, sizeof why) != 0) bad = 1;
    for (int k = 0; k < K; k++) done += t[k] ? chunk : 0;
    double dt = wall_seconds() - t0;
    for (int k = 0; k < K; k++) aio_buffer_free(buf[k]);
    snprintf(note, n, "%s: %.0f MiB read with %s in %.2f s", g->stage, mib((double)done), f.direct ? "O_DIRECT" : "buffered reads (O_DIRECT refused)", dt);
    aio_close(&f);
    aio_free(&a);
    if (bad || done < chunk || dt <= 0) {
        snprintf(note, n, "not measured: %s", bad ? why : "the stage file is smaller than 64 MiB");
        return 0;
    }
    return (double)done / dt;
}

void estimate_generate(const Deck *d, int ranks) {
    const Config *c = &d->cfg;
    const GenerateConfig *g = &c->generate;
    Model m;
    model_table(&m, &c->model);
    const int tp = ranks, L = m.s.L, C = m.s.C;
    if (m.s.NH % tp || m.s.H % tp) {
        printf("\ngenerate: tp = %d does not divide the heads (%d) and the MLP width (%d); no generate plan\n", tp, m.s.NH, m.s.H);
        model_free(&m);
        return;
    }
    StageHeader h = {.dtype = (uint32_t)g->weights_dtype, .L = L, .C = C, .NH = m.s.NH, .V = m.s.V, .Vp = m.s.Vp,
                     .maxT = m.s.maxT, .H = m.s.H, .shards = tp, .align = STAGE_ALIGN};
    StageLayer ly;
    char why[700];
    if (stage_layer_layout(&h, &ly, why, sizeof why) != 0) {
        printf("\ngenerate: %s\n", why);
        model_free(&m);
        return;
    }
    static const char *dn[] = {"fp32", "bf16", "int8"};
    const double elem = g->weights_dtype == GEN_W_FP32 ? 4 : g->weights_dtype == GEN_W_BF16 ? 2 : 1;
    const double seg = (double)aio_align_up(ly.bytes, STAGE_ALIGN);
    const double layers = (double)L * (double)ly.bytes;                     // streamed per pass per rank
    const double W = (double)(g->window < L ? g->window : L);
    const double matrix_params = (double)L * (4.0 * C * C + 2.0 * C * m.s.H) / tp;
    const double head = (double)m.s.Vp * C;
    // Resident fp32: wte, wpe, the layer vectors (the biases of split matrices cut by tp), ln_f;
    // the LM head in the weight dtype beside wte unless fp32 (then wte is the head).
    const double vectors = (double)L * (6.0 * C + 3.0 * C / tp + (double)m.s.H / tp) + 2.0 * C;
    const double resident = 4.0 * (head + (double)m.s.maxT * C + vectors) + (elem < 4 ? head * elem : 0);
    const int bs = (int)g->kv_block, max_blocks = (m.s.maxT + bs - 1) / bs;
    const double kv = (double)g->kv_blocks * (double)engine_kv_bytes_per_block(&m, tp, bs);
    int Nmax = (int)g->token_budget;
    if (g->weights_from != GEN_FROM_MEMORY && Nmax < g->max_batch) Nmax = (int)g->max_batch;
    const int Smax = g->max_batch < Nmax ? (int)g->max_batch : Nmax;
    const double N = Nmax, S = Smax, H = m.s.H, wide = H > 3.0 * C ? H : 3.0 * C;
    const double work = 4 * (N * (8.0 * C + wide + H + 4) + S * (C + (double)m.s.Vp + 8)) + 4 * (N * (3.0 + max_blocks) + S);

    printf("\ngenerate plan: tp = %d, matrices as %s, window %g of %d layers, KV cache %lld blocks of %d tokens, "
           "pass of %d rows\n", tp, dn[g->weights_dtype], W, L, (long long)g->kv_blocks, bs, Nmax);
    printf("per-rank memory (MiB)                  memory       host       nvme\n");
    printf("  %-34s %10.1f %10.1f %10.1f\n", "layer matrices held", mib(layers), mib((double)L * seg), 0.0);
    printf("  %-34s %10.1f %10.1f %10.1f\n", "window of layer slots", 0.0, mib(W * seg), mib(W * seg));
    printf("  %-34s %10.1f %10.1f %10.1f\n", "resident (embeddings, vectors, head)", mib(resident), mib(resident),
           mib(resident));
    printf("  %-34s %10.1f %10.1f %10.1f\n", "KV cache", mib(kv), mib(kv), mib(kv));
    printf("  %-34s %10.1f %10.1f %10.1f\n", "working (a pass's activations)", mib(work), mib(work), mib(work));
    printf("  %-34s %10.1f %10.1f %10.1f\n", "= total", mib(layers + resident + kv + work),
           mib((double)L * seg + W * seg + resident + kv + work), mib(W * seg + resident + kv + work));
    printf("bytes read per pass per rank: %.1f MiB (host: copied, nvme: read from disk; memory: none)\n", mib(layers));

    // Rates measured here.
    double copy_bps, mem_bps = probe_memory(&copy_bps);
    double flops = peak_sgemm_gflops(1024, 2) * 1e9;
    char note[1200];
    double disk_bps = probe_disk(g, note, sizeof note);
    printf("measured: sgemm %.1f GFLOP/s (%d threads), memory read %.2f GB/s, memcpy %.2f GB/s, disk %.2f GB/s (%s)\n",
           flops / 1e9, kernels_get_threads(), mem_bps / 1e9, copy_bps / 1e9, disk_bps / 1e9, note);
    const double disk = disk_bps > 0 ? disk_bps : 2e9;
    if (disk_bps <= 0) printf("  (nvme predictions below assume 2.00 GB/s: set [generate] stage to a staged file to measure)\n");
    printf("model of a decode pass of B sequences (one token each; attention over the context and the scheduler ignored):\n"
           "  t_compute(B) = max(bytes_touched / mem_rate, 2 * B * params_rank / sgemm_rate)\n"
           "  memory: t = t_compute;  host: t = layer_bytes / memcpy_rate + t_compute (copies not overlapped);\n"
           "  nvme: t = max(layer_bytes / disk_rate, t_compute) (the window overlaps reads with compute);  tokens/s = B / t\n");
    printf("  %6s %14s %14s %14s\n", "batch", "memory tok/s", "host tok/s", "nvme tok/s");
    const double touched = layers + elem * head + 4.0 * vectors, params = matrix_params + head;
    int crossover = 0;
    for (int B = 1; B <= 256; B *= 2) {
        double tc = touched / mem_bps, tf = 2.0 * B * params / flops;
        double t_mem = tc > tf ? tc : tf, t_host = layers / copy_bps + t_mem;
        double t_io = layers / disk, t_nvme = t_io > t_mem ? t_io : t_mem;
        if (!crossover && t_mem >= t_io) crossover = B;
        printf("  %6d %14.3g %14.3g %14.3g\n", B, B / t_mem, B / t_host, B / t_nvme);
    }
    double bstar = layers / disk * flops / (2.0 * params);
    printf("  nvme: compute bounds a pass from batch ~%.0f on (B* = layer_bytes / disk_rate * sgemm_rate / (2 params_rank))%s\n",
           bstar, crossover ? "" : "; beyond 256 here");
    printf("generate_bytes_per_pass %.0f\ngenerate_window_bytes %.0f\ngenerate_nvme_batch_compute_bound %.0f\n", layers, W * seg, bstar);
    model_free(&m);
}
