// comm.c: MPI collectives with counted bytes and a core-yielding wait.
#include "comm.h"
#include "log.h"

#include <limits.h>
#include <time.h>

void comm_init(Comm *c, MPI_Comm comm) {
    *c = (Comm){.comm = comm};
    MPI_CHECK(MPI_Comm_rank(comm, &c->rank));
    MPI_CHECK(MPI_Comm_size(comm, &c->size));
}

const char *comm_op_name(int op) {
    static const char *names[COMM_NOPS] = {"allreduce", "bcast"};
    return op >= 0 && op < COMM_NOPS ? names[op] : "?";
}

// Polls with a short sleep so that oversubscribed ranks give their core to
// the rank that still computes instead of spinning against it.
static void wait_yielding(Comm *c, MPI_Request *req) {
    double t0 = MPI_Wtime();
    int done = 0;
    struct timespec nap = {0, 20000};
    for (int spins = 0; ; spins++) {
        MPI_CHECK(MPI_Test(req, &done, MPI_STATUS_IGNORE));
        if (done) break;
        if (spins > 64) nanosleep(&nap, NULL);
    }
    c->wait_s += MPI_Wtime() - t0;
}

static void count(Comm *c, int op, size_t bytes) {
    c->bytes[op] += bytes;
    c->calls[op]++;
}

void comm_allreduce_sum(Comm *c, float *buf, size_t n) {
    if (c->size == 1) return;
    // MPI counts are int: split very large buffers.
    for (size_t off = 0; off < n; ) {
        size_t len = n - off < (size_t)INT_MAX / 2 ? n - off : (size_t)INT_MAX / 2;
        MPI_Request req;
        MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)len, MPI_FLOAT, MPI_SUM,
                                 c->comm, &req));
        wait_yielding(c, &req);
        off += len;
    }
    // A ring all-reduce sends 2 (p-1)/p of the buffer from each rank.
    count(c, COMM_ALLREDUCE, 2 * (size_t)(c->size - 1) * n * sizeof(float) / (size_t)c->size);
}

static void allreduce_f64(Comm *c, double *buf, int n, MPI_Op op) {
    if (c->size == 1) return;
    MPI_Request req;
    MPI_CHECK(MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, op, c->comm, &req));
    wait_yielding(c, &req);
    count(c, COMM_ALLREDUCE, 2 * (size_t)(c->size - 1) * (size_t)n * sizeof(double) / (size_t)c->size);
}

void comm_allreduce_sum_f64(Comm *c, double *buf, int n) { allreduce_f64(c, buf, n, MPI_SUM); }
void comm_allreduce_max_f64(Comm *c, double *buf, int n) { allreduce_f64(c, buf, n, MPI_MAX); }
