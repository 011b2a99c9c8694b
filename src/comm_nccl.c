// comm_nccl.c: NCCL collectives on device buffers, ordered against the
// compute stream by events.
#include "comm_nccl.h"
#include "log.h"

#include <stdlib.h>

#ifdef PARTITA_NCCL
#include <cuda_runtime_api.h>
#include <nccl.h>

#include "cuda/cuda_kernels.h"

#define CUDART_CHECK(call)                                                                        \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) FATAL(NULL, "%s failed: %s", #call, cudaGetErrorString(e_));        \
    } while (0)
#define NCCL_CHECK(call)                                                                          \
    do {                                                                                           \
        ncclResult_t r_ = (call);                                                                  \
        if (r_ != ncclSuccess)                                                                     \
            FATAL("NCCL_DEBUG=WARN says more; ranks sharing one GPU need [comm] device_path = staged", \
                  "%s failed: %s", #call, ncclGetErrorString(r_));                                 \
    } while (0)

// Slots are reused round-robin; a slot is waited on long before the ring
// comes back to it (ZeRO keeps at most a few dozen collectives in flight).
enum { NCCL_EVENTS = 256 };

struct NcclComm {
    ncclComm_t comm;
    int rank, size;
    cudaStream_t stream;            // communication stream
    cudaEvent_t ready[NCCL_EVENTS]; // compute stream reached the collective
    cudaEvent_t done[NCCL_EVENTS];  // the collective finished
    int next;
};

int nccl_available(void) { return 1; }

NcclComm *nccl_create(MPI_Comm comm, int rank, int size) {
    NcclComm *n = xcalloc(sizeof *n, "NCCL communicator");
    ncclUniqueId id;
    if (rank == 0) NCCL_CHECK(ncclGetUniqueId(&id));
    MPI_CHECK(MPI_Bcast(&id, (int)sizeof id, MPI_BYTE, 0, comm));
    n->rank = rank;
    n->size = size;
    NCCL_CHECK(ncclCommInitRank(&n->comm, size, id, rank));
    CUDART_CHECK(cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking));
    for (int i = 0; i < NCCL_EVENTS; i++) {
        CUDART_CHECK(cudaEventCreateWithFlags(&n->ready[i], cudaEventDisableTiming));
        CUDART_CHECK(cudaEventCreateWithFlags(&n->done[i], cudaEventDisableTiming));
    }
    return n;
}

void nccl_destroy(NcclComm *n) {
    CUDART_CHECK(cudaStreamSynchronize(n->stream));
    for (int i = 0; i < NCCL_EVENTS; i++) {
        CUDART_CHECK(cudaEventDestroy(n->ready[i]));
        CUDART_CHECK(cudaEventDestroy(n->done[i]));
    }
    CUDART_CHECK(cudaStreamDestroy(n->stream));
    NCCL_CHECK(ncclCommDestroy(n->comm));
    free(n);
}

// The communication stream waits for what compute issued so far.
static int start(NcclComm *n) {
    int ev = n->next;
    n->next = (n->next + 1) % NCCL_EVENTS;
    cudaStream_t compute = (cudaStream_t)cuda_stream();
    CUDART_CHECK(cudaEventRecord(n->ready[ev], compute));
    CUDART_CHECK(cudaStreamWaitEvent(n->stream, n->ready[ev], 0));
    return ev;
}

static int finish(NcclComm *n, int ev) {
    CUDART_CHECK(cudaEventRecord(n->done[ev], n->stream));
    return ev;
}

static int all_equal(const size_t *counts, int size) {
    for (int k = 1; k < size; k++)
        if (counts[k] != counts[0]) return 0;
    return 1;
}

int nccl_allreduce_sum(NcclComm *n, float *buf, size_t count) {
    int ev = start(n);
    NCCL_CHECK(ncclAllReduce(buf, buf, count, ncclFloat, ncclSum, n->comm, n->stream));
    return finish(n, ev);
}

int nccl_reduce_scatter_sum(NcclComm *n, const float *send, float *recv, const size_t *counts) {
    int ev = start(n);
    if (all_equal(counts, n->size)) {
        NCCL_CHECK(ncclReduceScatter(send, recv, counts[0], ncclFloat, ncclSum, n->comm, n->stream));
    } else {
        NCCL_CHECK(ncclGroupStart());
        size_t off = 0;
        for (int k = 0; k < n->size; k++) {
            if (counts[k])
                NCCL_CHECK(ncclReduce(send + off, k == n->rank ? recv : NULL, counts[k], ncclFloat, ncclSum, k,
                                      n->comm, n->stream));
            off += counts[k];
        }
        NCCL_CHECK(ncclGroupEnd());
    }
    return finish(n, ev);
}

int nccl_allgather(NcclComm *n, float *buf, const size_t *counts) {
    int ev = start(n);
    size_t off = 0;
    if (all_equal(counts, n->size)) {
        NCCL_CHECK(ncclAllGather(buf + (size_t)n->rank * counts[0], buf, counts[0], ncclFloat, n->comm, n->stream));
    } else {
        NCCL_CHECK(ncclGroupStart());
        for (int k = 0; k < n->size; k++) {
            if (counts[k]) NCCL_CHECK(ncclBroadcast(buf + off, buf + off, counts[k], ncclFloat, k, n->comm, n->stream));
            off += counts[k];
        }
        NCCL_CHECK(ncclGroupEnd());
    }
    return finish(n, ev);
}

int nccl_alltoallv(NcclComm *n, const float *send, const size_t *counts, float *recv, const size_t *rcounts) {
    int ev = start(n);
    size_t so = 0, ro = 0;
    NCCL_CHECK(ncclGroupStart());
    for (int k = 0; k < n->size; k++) {
        if (counts[k]) NCCL_CHECK(ncclSend(send + so, counts[k], ncclFloat, k, n->comm, n->stream));
        if (rcounts[k]) NCCL_CHECK(ncclRecv(recv + ro, rcounts[k], ncclFloat, k, n->comm, n->stream));
        so += counts[k];
        ro += rcounts[k];
    }
    NCCL_CHECK(ncclGroupEnd());
    return finish(n, ev);
}

void nccl_wait(NcclComm *n, int ev) {
    CUDART_CHECK(cudaStreamWaitEvent((cudaStream_t)cuda_stream(), n->done[ev], 0));
}

int nccl_test(NcclComm *n, int ev) {
    cudaError_t e = cudaEventQuery(n->done[ev]);
    if (e == cudaErrorNotReady) return 0;
    CUDART_CHECK(e);
    return 1;
}

#else   // built without NCCL

static void no_nccl(void) {
    FATAL("use [comm] device_path = staged, or build where NCCL is installed", "this binary was built without NCCL");
}
int nccl_available(void) { return 0; }
NcclComm *nccl_create(MPI_Comm comm, int rank, int size) {
    (void)comm; (void)rank; (void)size;
    no_nccl();
    return NULL;
}
void nccl_destroy(NcclComm *n) { (void)n; }
int nccl_allreduce_sum(NcclComm *n, float *buf, size_t count) { (void)n; (void)buf; (void)count; no_nccl(); return -1; }
int nccl_reduce_scatter_sum(NcclComm *n, const float *send, float *recv, const size_t *counts) {
    (void)n; (void)send; (void)recv; (void)counts;
    no_nccl();
    return -1;
}
int nccl_allgather(NcclComm *n, float *buf, const size_t *counts) { (void)n; (void)buf; (void)counts; no_nccl(); return -1; }
int nccl_alltoallv(NcclComm *n, const float *send, const size_t *counts, float *recv, const size_t *rcounts) {
    (void)n; (void)send; (void)counts; (void)recv; (void)rcounts;
    no_nccl();
    return -1;
}
void nccl_wait(NcclComm *n, int ev) { (void)n; (void)ev; no_nccl(); }
int nccl_test(NcclComm *n, int ev) { (void)n; (void)ev; no_nccl(); return 0; }
#endif
