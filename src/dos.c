// dos.c: Deep Optimizer States' performance model (see dos.h).
#include "dos.h"

#include <math.h>

// The model's time for n_cpu elements updated on the host and n_gpu on the device.
static double model_time(const DosRates *r, double n_cpu, double n_gpu) {
    double h2d = 4.0 * n_cpu + 8.0 * n_gpu, d2h = 8.0 * n_cpu + 8.0 * n_gpu;
    double t_dma = fmax(h2d / r->bw_h2d, d2h / r->bw_d2h);
    double t_gpu = n_gpu > 0 ? t_dma + n_gpu / r->gpu_rate : 0.0;
    double t_cpu0 = n_cpu / r->cpu_rate, t_cpu = t_cpu0;
    if (t_cpu0 > 0) t_cpu = t_cpu0 * (1.0 + (fmax(r->cpu_slowdown, 1.0) - 1.0) * fmin(1.0, t_dma / t_cpu0));
    return fmax(t_cpu, t_gpu);
}

double dos_predict(const DosRates *r, const size_t *sizes, int nsub, int stride) {
    double n_cpu = 0, n_gpu = 0;
    for (int i = 0; i < nsub; i++) {
        if (dos_on_gpu(stride, i)) n_gpu += (double)sizes[i];
        else n_cpu += (double)sizes[i];
    }
    return model_time(r, n_cpu, n_gpu);
}

// Is (t, stride) better than (bt, best)? Less time; on a tie (1e-12 relative)
// fewer GPU subgroups: stride 0 first, then the larger stride.
static int better(double t, int stride, double bt, int best) {
    if (t < bt * (1.0 - 1e-12)) return 1;
    if (t > bt * (1.0 + 1e-12)) return 0;
    if (best == 0) return 0;
    if (stride == 0) return 1;
    return stride > best;
}

int dos_choose(const DosRates *r, const size_t *sizes, int nsub, double *seconds) {
    double total = 0;
    for (int i = 0; i < nsub; i++) total += (double)sizes[i];
    // The balance point: the GPU share f where the host and device paths take
    // equal time (T(f) is the max of a falling and a rising curve); bisection.
    double lo = 0.0, hi = 1.0;
    for (int it = 0; it < 60; it++) {
        double f = 0.5 * (lo + hi), n_gpu = f * total, n_cpu = total - n_gpu;
        double h2d = 4.0 * n_cpu + 8.0 * n_gpu, d2h = 8.0 * n_cpu + 8.0 * n_gpu;
        double t_dma = fmax(h2d / r->bw_h2d, d2h / r->bw_d2h), t_cpu0 = n_cpu / r->cpu_rate;
        double t_cpu = t_cpu0 > 0 ? t_cpu0 * (1.0 + (fmax(r->cpu_slowdown, 1.0) - 1.0) * fmin(1.0, t_dma / t_cpu0)) : 0;
        double t_gpu = t_dma + n_gpu / r->gpu_rate;
        if (t_cpu > t_gpu) lo = f;
        else hi = f;
    }
    double f = 0.5 * (lo + hi);
    // Stride k puts m = floor(nsub / k) subgroups on the GPU, the last (partial)
    // one among them when k divides nsub. Subgroups are equal but the last, so
    // for each count m near the balance (m ~ f nsub) the strides worth a look
    // are the ends of the range giving m, k in (nsub/(m+1), nsub/m], and the
    // divisors of nsub in it.
    int best = 0;
    double bt = dos_predict(r, sizes, nsub, 0);
    // The counts to look at: those near f nsub, and those of the strides near 1/f.
    int mc = (int)floor(f * nsub), kf = f > 0 ? (int)fmin((double)nsub, floor(1.0 / f)) : nsub;
    int counts[12], nc = 0;
    for (int d = -2; d <= 3; d++) counts[nc++] = mc + d;
    for (int d = -2; d <= 3; d++) counts[nc++] = kf + d >= 1 ? nsub / (kf + d) : -1;
    for (int c = 0; c < nc; c++) {
        int m = counts[c];
        if (m < 1 || m > nsub) continue;
        int kmax = nsub / m, kmin = nsub / (m + 1) + 1;
        for (int k = kmin; k <= kmax; k++) {
            if (k != kmin && k != kmax && nsub % k != 0) continue;
            double t = dos_predict(r, sizes, nsub, k);
            if (better(t, k, bt, best)) {
                bt = t;
                best = k;
            }
        }
    }
    if (seconds) *seconds = bt;
    return best;
}
