// overlap_probe: ZeRO-3's gather pattern between two processes, without Partita.
// Usage: mpiexec -np 2 build/overlap_probe MODE [LAYERS [SPLIT]]
// Two 28 MB slots (a 124M layer) alternate as in zero.c: wait for the gather
// of slot A, copy this rank's shard into slot B, issue B's in-place
// MPI_Iallgatherv, compute 17 pieces of sgemm (~4 ms each, a layer's tiles)
// with a poll after each, then wait for B. MODE: 0 polls by MPI_Iprobe on a
// duplicate communicator (Partita's poke), 1 by MPI_Test on the request,
// 2 no polls. SPLIT: `even` (default: each rank owns half of the layer) or
// `oneway` (rank 0 owns it all, as ZeRO's flat shards make of every layer but
// the one the boundary cuts). Prints each rank's mean wait per layer. On the
// 2-core machine (issue 16), even: 1.8 ms (mode 0), 5 ms (mode 2), 0 with
// UCX_CMA_SEG_SIZE=256m; oneway: 10-14 ms whatever the polls or segments,
// as inside Partita (6-10 ms), while the same one-way 28 MB by MPI_Isend/
// MPI_Irecv waits 2.3-6.3 ms, 0-1.3 ms with the larger segments: MPICH's
// MPI_Iallgatherv with a rank of count 0 does not advance under polls.
#include <cblas.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) { \
    char s_[MPI_MAX_ERROR_STRING]; int n_; MPI_Error_string(rc_, s_, &n_); \
    fprintf(stderr, "overlap_probe: %s failed: %s\n", #call, s_); MPI_Abort(MPI_COMM_WORLD, 1); } } while (0)

int main(int argc, char **argv) {
    int provided = 0, rank = 0, size = 0;
    CHECK(MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided));
    CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
    CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
    int mode = argc > 1 ? atoi(argv[1]) : -1, layers = argc > 2 ? atoi(argv[2]) : 24;
    int oneway = argc > 3 && strcmp(argv[3], "oneway") == 0;
    if (size != 2 || mode < 0 || mode > 2 || layers < 2 || layers > 10000 ||
        (argc > 3 && !oneway && strcmp(argv[3], "even") != 0)) {
        if (rank == 0)
            fprintf(stderr, "usage: mpiexec -np 2 overlap_probe MODE(0 probe, 1 test, 2 none) [LAYERS 2..10000 [even|oneway]]\n");
        MPI_Finalize();
        return 2;
    }
    MPI_Comm comm, probe;
    CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &comm));
    CHECK(MPI_Comm_dup(comm, &probe));
    const int n = 7087872, M = 256, N = 768, K = 768, polls = 17;
    int counts[2] = {oneway ? n : n / 2, oneway ? 0 : n - n / 2}, displs[2] = {0, oneway ? n : n / 2};
    float *slot[2] = {calloc(n, 4), calloc(n, 4)}, *shard = calloc((size_t)n / 2 + 1, 4);
    float *A = calloc((size_t)M * K, 4), *B = calloc((size_t)K * N, 4), *C = calloc((size_t)M * N, 4);
    if (!slot[0] || !slot[1] || !shard || !A || !B || !C) {
        fprintf(stderr, "overlap_probe: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    MPI_Request req[2];
    memcpy(slot[0] + displs[rank], shard, (size_t)counts[rank] * 4);
    CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, slot[0], counts, displs, MPI_FLOAT, comm, &req[0]));
    double waited = 0;
    int cur = 0;
    for (int l = 0; l < layers; l++) {
        double t0 = MPI_Wtime();
        CHECK(MPI_Wait(&req[cur], MPI_STATUS_IGNORE));
        if (l > 0) waited += MPI_Wtime() - t0;      // the first gather had no compute to hide behind
        int next = cur ^ 1;
        memcpy(slot[next] + displs[rank], shard, (size_t)counts[rank] * 4);
        CHECK(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_FLOAT, slot[next], counts, displs, MPI_FLOAT, comm, &req[next]));
        for (int k = 0; k < polls; k++) {
            for (int g = 0; g < 2; g++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
            int flag = 0;
            if (mode == 0) CHECK(MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, probe, &flag, MPI_STATUS_IGNORE));
            else if (mode == 1) CHECK(MPI_Test(&req[next], &flag, MPI_STATUS_IGNORE));
        }
        cur = next;
    }
    CHECK(MPI_Wait(&req[cur], MPI_STATUS_IGNORE));
    printf("rank %d mode %d %s: mean wait %.4f s per layer over %d layers\n", rank, mode, oneway ? "oneway" : "even",
           waited / (layers - 1), layers - 1);
    free(slot[0]);
    free(slot[1]);
    free(shard);
    free(A);
    free(B);
    free(C);
    CHECK(MPI_Comm_free(&probe));
    CHECK(MPI_Comm_free(&comm));
    CHECK(MPI_Finalize());
    return 0;
}
