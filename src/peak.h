// peak.h: the machine's measured GEMM rate, the denominator of MFU.
#ifndef PARTITA_PEAK_H
#define PARTITA_PEAK_H

enum { PEAK_MAX_SIZES = 4 };

// How one rank's peak was found.
typedef struct PeakInfo {
    double gflops;                          // the best rate over sizes and repetitions
    int nsizes, sizes[PEAK_MAX_SIZES];      // square GEMM sides tried
    double size_gflops[PEAK_MAX_SIZES];     // the best rate of each size
    int reps;                               // fewest timed repetitions of a size (after a warm-up)
    char method[200];                       // one line, stored in run.h5
} PeakInfo;

// GFLOP/s of a square fp32 sgemm of side n on this process's kernel threads,
// best of a few repetitions after a warm-up.
double peak_sgemm_gflops(int n, int reps);

// The robust figure: sgemm of sides 512, 1024 and 2048, each a warm-up then
// up to 5 timed repetitions (at least 2) within budget_s / 3 seconds, the
// best rate of all. Run it on every rank at once, so ranks that share cores
// measure what they will have while training.
void peak_sgemm_measure(PeakInfo *p, double budget_s);

#endif
