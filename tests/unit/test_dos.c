// test_dos.c: Deep Optimizer States' stride choice (src/dos.c) against a
// search over every stride, on random rates and subgroup layouts; and the
// model's two ends (a slow CPU sends all to the GPU, a slow link keeps all on the CPU).
#define _DEFAULT_SOURCE
#include "dos.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static double urand(unsigned *s) { return (double)rand_r(s) / RAND_MAX; }
static double logu(unsigned *s, double lo, double hi) { return lo * pow(hi / lo, urand(s)); }

// Every stride; the same tie rule written out plainly: least time, then stride 0, then the larger stride.
static int brute(const DosRates *r, const size_t *sz, int nsub, double *best_t) {
    double bt = INFINITY;
    for (int k = 0; k <= nsub; k++) bt = fmin(bt, dos_predict(r, sz, nsub, k));
    int best = -1;
    for (int k = 0; k <= nsub; k++) {
        if (dos_predict(r, sz, nsub, k) > bt * (1.0 + 1e-12)) continue;
        if (k == 0) { best = 0; break; }
        if (k > best) best = k;
    }
    *best_t = bt;
    return best;
}

int main(void) {
    unsigned seed = 12345;
    int cases = 4000, same_stride = 0, bad = 0;
    double worst = 0;
    size_t sz[200];
    for (int c = 0; c < cases; c++) {
        DosRates r = {.bw_h2d = logu(&seed, 1e9, 60e9), .bw_d2h = logu(&seed, 1e9, 60e9),
                      .cpu_rate = logu(&seed, 1e8, 2e10), .gpu_rate = logu(&seed, 1e10, 1e12),
                      .cpu_slowdown = 1.0 + 2.0 * urand(&seed)};
        int nsub = 1 + rand_r(&seed) % 150;
        size_t g = (size_t)logu(&seed, 1e3, 1e8);
        for (int i = 0; i < nsub; i++) sz[i] = g;
        sz[nsub - 1] = 1 + (size_t)(urand(&seed) * (double)g);    // the last subgroup is partial
        double tc, tb;
        int kc = dos_choose(&r, sz, nsub, &tc), kb = brute(&r, sz, nsub, &tb);
        double rel = fabs(tc - tb) / tb;
        worst = fmax(worst, rel);
        if (rel > 1e-9) {
            bad++;
            if (bad < 5) printf("case %d: nsub %d chose stride %d (%.6g s), best is %d (%.6g s)\n", c, nsub, kc, tc, kb, tb);
        }
        same_stride += kc == kb;
    }
    DosRates slow_cpu = {.bw_h2d = 50e9, .bw_d2h = 50e9, .cpu_rate = 1e6, .gpu_rate = 1e12, .cpu_slowdown = 1.5};
    DosRates slow_link = {.bw_h2d = 1e6, .bw_d2h = 1e6, .cpu_rate = 1e10, .gpu_rate = 1e12, .cpu_slowdown = 1.5};
    size_t eq[8] = {1000000, 1000000, 1000000, 1000000, 1000000, 1000000, 1000000, 1000000};
    int k_fast_gpu = dos_choose(&slow_cpu, eq, 8, NULL), k_slow_link = dos_choose(&slow_link, eq, 8, NULL);
    printf("dos_choose vs every stride: %d cases, %d with a worse time (worst rel %.2e), %d the same stride\n",
           cases, bad, worst, same_stride);
    printf("slow CPU -> stride %d (expect 1: all on GPU); slow link -> stride %d (expect 0: all on CPU)\n",
           k_fast_gpu, k_slow_link);
    if (bad || k_fast_gpu != 1 || k_slow_link != 0) {
        printf("FAIL: dos model\n");
        return 1;
    }
    printf("ok: the stride chosen equals the best of a search over all strides\n");
    return 0;
}
