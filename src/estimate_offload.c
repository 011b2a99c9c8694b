// estimate_offload.c: the [offload] part of `partita estimate`: per-rank bytes
// in memory and on NVMe, bytes moved per step, and a predicted step time from
// the disk and AdamW rates measured here (formula in docs/architecture.md, "Offload").
#include "offload.h"
#include "kernels.h"
#include "peak.h"
#include "sysutil.h"
#include "zero.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static double mib(double b) { return b / 1048576.0; }

// Read and write GB/s of nvme_dir: 32 MiB through the engine at the deck's queue depth.
static void disk_rates(const OffloadConfig *oc, double *rd, double *wr) {
    *rd = *wr = 0;
    char path[DECK_STR + 64], why[800];
    make_dirs(oc->nvme_dir, "set [offload] nvme_dir to a writable directory");
    snprintf(path, sizeof path, "%s/estimate-probe.%d", oc->nvme_dir, (int)getpid());
    Aio a;
    AioFile f;
    if (aio_init(&a, (int)oc->queue_depth, why, sizeof why) != 0) return;
    if (aio_open(&f, path, AIO_READ | AIO_WRITE | AIO_CREATE | AIO_TRUNC, why, sizeof why) != 0) {
        aio_free(&a);
        return;
    }
    size_t bytes = (size_t)32 << 20;
    void *buf = aio_buffer(bytes, f.align);
    if (buf) {
        memset(buf, 1, bytes);
        double t0 = wall_seconds();
        aio_write(&a, &f, buf, bytes, 0);
        int ok = aio_wait_all(&a, why, sizeof why) == 0 && fsync(f.fd) == 0;
        double t1 = wall_seconds();
        aio_read(&a, &f, buf, bytes, 0);
        ok = ok && aio_wait_all(&a, why, sizeof why) == 0;
        double t2 = wall_seconds();
        if (ok) {
            *wr = (double)bytes / (t1 - t0);
            *rd = (double)bytes / (t2 - t1);
        }
    }
    aio_buffer_free(buf);
    aio_close(&f);
    unlink(path);
    aio_free(&a);
}

// Host AdamW elements/s (this process's threads).
static double adamw_rate(void) {
    size_t n = (size_t)1 << 22;
    float *x = calloc(4 * n, sizeof(float));
    if (!x) return 0;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = wall_seconds();
        adamw_update(x, x + n, x + 2 * n, x + 3 * n, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, r + 1);
        double dt = wall_seconds() - t0;
        if (dt > 0 && (double)n / dt > best) best = (double)n / dt;
    }
    free(x);
    return best;
}

void offload_estimate(const Config *c, const Model *m, int ranks) {
    const OffloadConfig *oc = &c->offload;
    if (oc->optimizer != OFFLOAD_NVME) {
        if (oc->optimizer == OFFLOAD_HOST || oc->params == OFFLOAD_HOST)
            printf("\noffload: host tier: on the cpu backend the states already live in host memory (no traffic); on cuda "
                   "the moments (and parameters = host) move to pinned host memory, updates placed by Deep Optimizer States\n");
        return;
    }
    size_t N = m->nparams, own = c->zero.stage == 0 ? N : zero_shard_floats(N, ranks);
    int pn = oc->params == OFFLOAD_NVME, gn = c->zero.stage >= 2, arrays = 2 + pn;
    double accum = (double)c->train.grad_accum, f = sizeof(float), ownb = (double)own * f;
    double nvme = (arrays + gn) * ownb;
    double g = oc->subgroup_mb * 1048576.0, staging = (double)oc->buffers * (arrays + gn) * g;
    if (oc->host_cap_mb > 0 && staging > oc->host_cap_mb * 1048576.0) staging = oc->host_cap_mb * 1048576.0;
    // the update reads every array (and the gradients) once and writes the arrays back; the gradients
    // are written once per micro-step and read back before each micro-step after the first
    double upd_rd = (arrays + gn) * ownb, upd_wr = arrays * ownb;
    double grad_wr = gn ? accum * ownb : 0.0, grad_rd = gn ? (accum - 1.0) * ownb : 0.0;
    // params on NVMe: each rank reads its own part of every unit before each gather (forward and backward)
    double gather_rd = pn ? 2.0 * ownb * accum : 0.0;
    double rd_bw, wr_bw;
    disk_rates(oc, &rd_bw, &wr_bw);
    double adam = adamw_rate(), peak = peak_sgemm_gflops(512, 2) * 1e9;
    double flops = model_flops_per_token(m, (int)c->train.seq_len) * (double)c->train.batch * (double)c->train.seq_len / ranks;
    double t_comp = peak > 0 ? flops / peak : 0;
    double t_rd = rd_bw > 0 ? upd_rd / rd_bw : 0, t_wr = wr_bw > 0 ? upd_wr / wr_bw : 0, t_ad = adam > 0 ? own / adam : 0;
    double t_upd = oc->prefetch && oc->buffers >= 3 ? (t_rd > t_wr ? t_rd : t_wr) : t_rd + t_wr + t_ad;
    if (oc->prefetch && oc->buffers >= 3 && t_ad > t_upd) t_upd = t_ad;
    double t_gather = rd_bw > 0 ? gather_rd / rd_bw : 0;
    double t_grads = (wr_bw > 0 ? grad_wr / wr_bw : 0) + (rd_bw > 0 ? grad_rd / rd_bw : 0);
    printf("\noffload (rank 0, [offload] optimizer = nvme%s, ZeRO-%lld, %d ranks; cpu backend)\n",
           pn ? ", params = nvme" : "", (long long)c->zero.stage, ranks);
    printf("  %-44s %10.1f MiB\n", pn ? (gn ? "on NVMe (parameters, AdamW m, v, gradients)" : "on NVMe (parameters, AdamW m, v)")
                                      : (gn ? "on NVMe (AdamW m, v, gradients)" : "on NVMe (AdamW m, v)"), mib(nvme));
    printf("  %-44s %10.1f MiB (replaces %.1f MiB of resident states%s)\n", "in host memory: staging buffers",
           mib(staging), mib(nvme + (gn ? ownb : 0)), gn ? " and the gradients' landing area" : "");
    printf("  %-44s %10.1f MiB read, %.1f MiB written\n", "moved per step by the update", mib(upd_rd), mib(upd_wr));
    if (gn) printf("  %-44s %10.1f MiB read, %.1f MiB written\n", "moved per step by gradient buckets", mib(grad_rd), mib(grad_wr));
    if (pn) printf("  %-44s %10.1f MiB read\n", "moved per step by parameter gathers", mib(gather_rd));
    printf("  measured here: disk %.2f GB/s read, %.2f GB/s write (%s); host AdamW %.3g elements/s; sgemm %.1f GFLOP/s\n",
           rd_bw * 1e-9, wr_bw * 1e-9, oc->nvme_dir, adam, peak * 1e-9);
    printf("  predicted step: compute %.3f s + update %.3f s%s + gathers %.3f s + gradients %.3f s = %.3f s\n", t_comp,
           t_upd, oc->prefetch && oc->buffers >= 3 ? " (max of read, write, AdamW: overlapped)" : " (read + AdamW + write: serial)",
           t_gather, t_grads, t_comp + t_upd + t_gather + t_grads);
    printf("offload_nvme_bytes %.0f\noffload_step_read_bytes %.0f\noffload_step_write_bytes %.0f\noffload_predicted_step_s %.6f\n",
           nvme, upd_rd + gather_rd + grad_rd, upd_wr + grad_wr, t_comp + t_upd + t_gather + t_grads);
}
