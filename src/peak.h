// peak.h: the machine's measured sgemm rate, the denominator of MFU.
#ifndef PARTITA_PEAK_H
#define PARTITA_PEAK_H

// GFLOP/s of a square fp32 sgemm of side n on this process's kernel threads,
// best of a few repetitions after a warm-up.
double peak_sgemm_gflops(int n, int reps);

#endif
