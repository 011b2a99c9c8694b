// ckpt_mpiio: the checkpoint benchmark's MPI-IO comparison (bench/run.sh BENCH_ONLY=ckpt).
// Usage: mpiexec -np P build/ckpt_mpiio FILE BYTES
// Each rank writes its contiguous 1/P of BYTES (random floats) into FILE, as a
// ZeRO rank writes its shard, three ways, each followed by MPI_File_sync, each
// on a fresh file: MPI_File_write_at_all with collective buffering on
// (romio_cb_write = enable), the same with it off (independent writes under a
// collective call), and MPI_File_write_at (independent). Prints one line per
// way: "<way> SECONDS GB/s" (rank 0), the slowest rank's time.
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHECK(call) do { int rc_ = (call); if (rc_ != MPI_SUCCESS) { \
    char s_[MPI_MAX_ERROR_STRING]; int n_; MPI_Error_string(rc_, s_, &n_); \
    fprintf(stderr, "ckpt_mpiio: %s failed: %s\n", #call, s_); MPI_Abort(MPI_COMM_WORLD, 1); } } while (0)

static double write_once(const char *path, const char *cb, int collective, const char *buf, size_t n, MPI_Offset at) {
    MPI_Info info;
    CHECK(MPI_Info_create(&info));
    CHECK(MPI_Info_set(info, "romio_cb_write", cb));
    MPI_File fh;
    CHECK(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = MPI_Wtime();
    CHECK(MPI_File_open(MPI_COMM_WORLD, path, MPI_MODE_CREATE | MPI_MODE_WRONLY, info, &fh));
    // MPI counts are int: 1 GiB per call, the same number of calls on every rank (collective)
    const size_t step = (size_t)1 << 30;
    long long mine = (long long)((n + step - 1) / step), calls = 0;
    CHECK(MPI_Allreduce(&mine, &calls, 1, MPI_LONG_LONG, MPI_MAX, MPI_COMM_WORLD));
    for (long long c = 0; c < calls; c++) {
        size_t done = (size_t)c * step;
        int len = done >= n ? 0 : (int)(n - done < step ? n - done : step);
        const char *p = buf + (done < n ? done : 0);
        if (collective) CHECK(MPI_File_write_at_all(fh, at + (MPI_Offset)done, p, len, MPI_BYTE, MPI_STATUS_IGNORE));
        else if (len) CHECK(MPI_File_write_at(fh, at + (MPI_Offset)done, p, len, MPI_BYTE, MPI_STATUS_IGNORE));
    }
    CHECK(MPI_File_sync(fh));
    CHECK(MPI_File_close(&fh));
    double t = MPI_Wtime() - t0, slowest = 0;
    CHECK(MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    CHECK(MPI_Info_free(&info));
    return slowest;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (argc != 3) {
        if (rank == 0) fprintf(stderr, "usage: ckpt_mpiio FILE BYTES\n");
        MPI_Finalize();
        return 2;
    }
    long long total = atoll(argv[2]);
    if (total <= 0 || total > (1ll << 40)) {
        if (rank == 0) fprintf(stderr, "ckpt_mpiio: BYTES must be in 1..2^40, not %s\n", argv[2]);
        MPI_Finalize();
        return 2;
    }
    size_t per = (size_t)total / (size_t)size;
    MPI_Offset at = (MPI_Offset)per * rank;
    size_t n = rank == size - 1 ? (size_t)total - per * (size_t)(size - 1) : per;
    char *buf = malloc(n ? n : 1);
    if (!buf) {
        fprintf(stderr, "ckpt_mpiio: out of memory for %zu bytes\n", n);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    uint64_t x = 0x9E3779B97F4A7C15ull * (uint64_t)(rank + 1);
    for (size_t i = 0; i + 8 <= n; i += 8) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        memcpy(buf + i, &x, 8);
    }
    struct { const char *name, *cb; int coll; } ways[] = {
        {"collective-cb", "enable", 1}, {"collective-nocb", "disable", 1}, {"independent", "disable", 0}};
    for (int w = 0; w < 3; w++) {
        if (rank == 0) unlink(argv[1]);
        double t = write_once(argv[1], ways[w].cb, ways[w].coll, buf, n, at);
        if (rank == 0) printf("%s %.3f %.2f\n", ways[w].name, t, (double)total / t / 1e9);
    }
    if (rank == 0) unlink(argv[1]);
    free(buf);
    MPI_Finalize();
    return 0;
}
