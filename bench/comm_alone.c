// comm_alone: a ZeRO step's collectives with no compute, for the overlap
// benchmark's "communication alone" (bench/run.sh BENCH_ONLY=overlap).
// Usage: mpiexec -np P build/comm_alone AR_BYTES RS_BYTES AG_BYTES CHUNK_FLOATS STEPS
// where *_BYTES are what one rank sends per step per op (run.h5's
// comm_bytes_* columns); each op's elements are issued in CHUNK_FLOATS
// pieces, each waited on at once. Prints one line per step: "step S seconds".
// The pieces walk buffers as large as a step's gradients (the largest
// all-reduce or reduce-scatter; the all-gathers walk it again where they move
// more, as ZeRO-3 gathers the model twice a step), not one reused chunk: a
// step's collectives in training read and write memory that has left the
// cache, and a chunk reused stays in it (this machine's L3 holds 480 MiB; the
// reused chunk timed a 124M step's reduce-scatter at 0.04 s).
#include "comm.h"
#include "log.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int provided = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    log_init(rank);
    if (argc != 6) {
        if (rank == 0) fprintf(stderr, "usage: comm_alone AR_BYTES RS_BYTES AG_BYTES CHUNK_FLOATS STEPS\n");
        MPI_Finalize();
        return 2;
    }
    CommOptions opt = {.fault_skip_rank = -1, .timeout_s = 600};
    Comm c;
    comm_init(&c, MPI_COMM_WORLD, "dp", &opt);
    double p = c.size, sent[3] = {atof(argv[1]), atof(argv[2]), atof(argv[3])};
    size_t chunk = (size_t)atof(argv[4]);
    int steps = atoi(argv[5]);
    if (c.size < 2 || chunk < (size_t)c.size || steps < 1) FATAL("np >= 2, CHUNK_FLOATS >= np, STEPS >= 1", "comm_alone: bad arguments");
    // Elements per op and step from the bytes a rank sends (comm.h's ring formulas).
    size_t n[3] = {(size_t)(sent[0] * p / (2 * (p - 1)) / 4), (size_t)(sent[1] * p / (p - 1) / 4),
                   (size_t)(sent[2] * p / (p - 1) / 4)};
    size_t len = n[0] > n[1] ? n[0] : n[1];
    if (len == 0) len = n[2];
    if (len < chunk) len = chunk;
    // Pieces start at multiples of chunk and wrap at len: round len up so each fits.
    len = (len + chunk - 1) / chunk * chunk;
    // The reduce-scatters land this rank's part of each piece at at / size.
    size_t rlen = n[1] ? len / (size_t)c.size + chunk : 1;
    float *buf = xmalloc(len * sizeof(float), "comm_alone buffer"), *recv = xmalloc(rlen * sizeof(float), "recv");
    for (size_t i = 0; i < len; i++) buf[i] = 1.0f;     // present, not zero pages
    for (size_t i = 0; i < rlen; i++) recv[i] = 1.0f;
    size_t *counts = xcalloc(sizeof(size_t) * (size_t)c.size, "counts");
    for (int s = 0; s < steps; s++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        for (int op = 0; op < 3; op++)
            for (size_t done = 0; done < n[op]; ) {
                size_t m = n[op] - done < chunk ? n[op] - done : chunk, at = done % len;
                CommReq r;
                for (int k = 0; k < c.size; k++) counts[k] = m / (size_t)c.size + ((size_t)k < m % (size_t)c.size);
                if (op == 0) comm_iallreduce_sum(&c, buf + at, m, "ar", &r);
                else if (op == 1) comm_ireduce_scatter_sum(&c, buf + at, recv + at / (size_t)c.size, counts, "rs", &r);
                else comm_iallgather(&c, buf + at, counts, "ag", &r);
                comm_wait(&c, &r);
                done += m;
            }
        double dt = MPI_Wtime() - t0, worst = 0;
        MPI_Allreduce(&dt, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rank == 0) printf("step %d %.4f\n", s + 1, worst);
    }
    free(buf);
    free(recv);
    free(counts);
    comm_free(&c);
    MPI_Finalize();
    return 0;
}
