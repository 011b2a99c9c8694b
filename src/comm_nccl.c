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
    float *pad;                     // (pad_cap) device scratch: uneven parts padded to the largest
    size_t pad_cap;
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
    if (n->pad) CUDART_CHECK(cudaFree(n->pad));
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

static size_t largest(const size_t *counts, int size) {
    size_t m = 0;
    for (int k = 0; k < size; k++) m = counts[k] > m ? counts[k] : m;
    return m;
}

// The padding scratch of at least n floats. Every user runs on n->stream, in
// order, so one buffer serves every collective in flight; growing it waits
// for those first (rare: the largest bucket is reached in the first step).
static float *pad_scratch(NcclComm *n, size_t floats) {
    if (floats <= n->pad_cap) return n->pad;
    CUDART_CHECK(cudaStreamSynchronize(n->stream));
    if (n->pad) CUDART_CHECK(cudaFree(n->pad));
    size_t bytes;
    if (__builtin_mul_overflow(floats, sizeof(float), &bytes)) FATAL(NULL, "NCCL padding of %zu floats overflows", floats);
    CUDART_CHECK(cudaMalloc((void **)&n->pad, bytes));
    n->pad_cap = floats;
    return n->pad;
}

static void d2d(NcclComm *n, float *dst, const float *src, size_t count) {
    if (count) CUDART_CHECK(cudaMemcpyAsync(dst, src, count * sizeof(float), cudaMemcpyDeviceToDevice, n->stream));
}

// Uneven parts (ZeRO's shards cut by bucket boundaries) are padded to the
// largest in a device scratch so that the bucket is still ONE ncclReduceScatter
// or ncclAllGather (not p grouped reduces or broadcasts): device-to-device
// copies on the communication stream in and out, padding never leaving comm
// (the shard layout, checkpoints and parameter counts do not see it).
int nccl_reduce_scatter_sum(NcclComm *n, const float *send, float *recv, const size_t *counts) {
    int ev = start(n);
    if (all_equal(counts, n->size)) {
        NCCL_CHECK(ncclReduceScatter(send, recv, counts[0], ncclFloat, ncclSum, n->comm, n->stream));
        return finish(n, ev);
    }
    size_t m = largest(counts, n->size), p = (size_t)n->size;
    float *pad = pad_scratch(n, (p + 1) * m), *out = pad + p * m;
    size_t off = 0;
    for (int k = 0; k < n->size; k++) {     // the tails stay as they are: their sums land in tails, unread
        d2d(n, pad + (size_t)k * m, send + off, counts[k]);
        off += counts[k];
    }
    NCCL_CHECK(ncclReduceScatter(pad, out, m, ncclFloat, ncclSum, n->comm, n->stream));
    d2d(n, recv, out, counts[n->rank]);
    return finish(n, ev);
}

int nccl_allgather(NcclComm *n, float *buf, const size_t *counts) {
    int ev = start(n);
    if (all_equal(counts, n->size)) {
        NCCL_CHECK(ncclAllGather(buf + (size_t)n->rank * counts[0], buf, counts[0], ncclFloat, n->comm, n->stream));
        return finish(n, ev);
    }
    size_t m = largest(counts, n->size), p = (size_t)n->size, off = 0, mine = 0;
    float *pad = pad_scratch(n, (p + 1) * m);
    for (int k = 0; k < n->rank; k++) mine += counts[k];
    d2d(n, pad + p * m, buf + mine, counts[n->rank]);
    NCCL_CHECK(ncclAllGather(pad + p * m, pad, m, ncclFloat, n->comm, n->stream));
    for (int k = 0; k < n->size; k++) {
        if (k != n->rank) d2d(n, buf + off, pad + (size_t)k * m, counts[k]);
        off += counts[k];
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
