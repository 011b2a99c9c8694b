// stream.c: a STREAM-like memory bandwidth probe for the generation benchmark.
// usage: stream_probe [MiB per array] (default 512); threads: OMP_NUM_THREADS.
// Prints the best of 5 repetitions of: read (sum of an array, what a decode
// pass does to the weights; the better of one stream per thread and four
// interleaved streams per thread, as a matrix-vector product reads several
// rows at once), copy (a[i] = b[i]) and triad (a[i] = b[i] + s c[i]), in GB/s
// of bytes moved (read + written).
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 512;
    size_t n = mib * 1024 * 1024 / sizeof(float);
    float *a = malloc(n * sizeof(float)), *b = malloc(n * sizeof(float)), *c = malloc(n * sizeof(float));
    if (!a || !b || !c || n == 0) {
        fprintf(stderr, "stream_probe: cannot allocate 3 x %zu MiB\n", mib);
        return 2;
    }
    #pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) { a[i] = 1.0f; b[i] = 2.0f; c[i] = 0.5f; }
    double best[3] = {0, 0, 0}, sink = 0.0;
    const double bytes[3] = {4.0 * n, 8.0 * n, 12.0 * n};
    for (int rep = 0; rep < 5; rep++) {
        double t0 = omp_get_wtime();
        float s = 0.0f;
        #pragma omp parallel for simd schedule(static) reduction(+ : s)
        for (size_t i = 0; i < n; i++) s += b[i];
        double t1 = omp_get_wtime();
        float s4 = 0.0f;
        #pragma omp parallel reduction(+ : s4)
        {
            size_t nt = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
            size_t lo = n * t / nt, q = (n * (t + 1) / nt - lo) / 4;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            #pragma omp simd reduction(+ : a0, a1, a2, a3)
            for (size_t i = 0; i < q; i++) {
                a0 += b[lo + i];
                a1 += b[lo + q + i];
                a2 += b[lo + 2 * q + i];
                a3 += b[lo + 3 * q + i];
            }
            s4 += a0 + a1 + a2 + a3;
        }
        double t1b = omp_get_wtime();
        if (4.0 * n / (t1b - t1) > best[0]) best[0] = 4.0 * n / (t1b - t1);
        t1 = t1b;
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i];
        double t2 = omp_get_wtime();
        #pragma omp parallel for schedule(static)
        for (size_t i = 0; i < n; i++) a[i] = b[i] + 3.0f * c[i];
        double t3 = omp_get_wtime();
        sink += s + s4 + a[n / 2];
        double dt[3] = {t1 - t0, t2 - t1, t3 - t2};
        for (int k = 0; k < 3; k++) if (bytes[k] / dt[k] > best[k]) best[k] = bytes[k] / dt[k];
    }
    printf("stream: %d threads, %zu MiB arrays: read %.2f GB/s, copy %.2f GB/s, triad %.2f GB/s (check %g)\n",
           omp_get_max_threads(), mib, best[0] / 1e9, best[1] / 1e9, best[2] / 1e9, sink > 0 ? 1.0 : 0.0);
    free(a); free(b); free(c);
    return 0;
}
