// dos.h: the performance model of Deep Optimizer States (a pure function).
//
// With the AdamW moments in host memory and the parameters and gradients on
// the GPU, each subgroup's update can run on the CPU (gradients and parameters
// copied device -> host, host AdamW, parameters copied back) or on the GPU
// (moments copied host -> device, device AdamW, moments copied back, using the
// device memory backward has freed). Subgroup i goes to the GPU when
// stride > 0 and i % stride == stride - 1 ("every stride-th subgroup"); stride
// 0 keeps every update on the CPU (the ZeRO-Offload baseline), stride 1 puts
// all on the GPU. The model (docs/architecture.md, "Offload"):
//   bytes_h2d = 4 N_cpu + 8 N_gpu      (parameters back; moments in)
//   bytes_d2h = 8 N_cpu + 8 N_gpu      (gradients and parameters out; moments back)
//   T_dma = max(bytes_h2d / bw_h2d, bytes_d2h / bw_d2h)     (two copy engines)
//   T_gpu = T_dma + N_gpu / gpu_rate
//   T_cpu0 = N_cpu / cpu_rate;  T_cpu = T_cpu0 (1 + (slowdown - 1) min(1, T_dma / T_cpu0))
//   T(stride) = max(T_cpu, T_gpu)
// dos_choose finds the best stride from the balance point and checks its
// neighbours (tests/unit/test_dos.c compares it with a search over all strides).
#ifndef PARTITA_DOS_H
#define PARTITA_DOS_H

#include <stddef.h>

typedef struct DosRates {
    double bw_h2d, bw_d2h;      // bytes/s host -> device and back (pinned memory)
    double cpu_rate, gpu_rate;  // AdamW elements/s on the host (all its threads) and on the device
    double cpu_slowdown;        // >= 1: how much slower the host update runs while DMA runs
} DosRates;

// Seconds of one update of subgroups sizes[0..nsub) (elements) at this stride.
double dos_predict(const DosRates *r, const size_t *sizes, int nsub, int stride);
// The stride in 0..nsub with the least predicted time (the smallest such
// stride... ties go to fewer GPU subgroups: the larger stride, 0 first);
// *seconds gets its time.
int dos_choose(const DosRates *r, const size_t *sizes, int nsub, double *seconds);
// 1 when subgroup i runs on the GPU at this stride.
static inline int dos_on_gpu(int stride, int i) { return stride > 0 && i % stride == stride - 1; }

#endif
