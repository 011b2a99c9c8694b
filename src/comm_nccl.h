// comm_nccl.h: the NCCL path of comm.c (cuda backend).
//
// One NCCL communicator per process group, created from an ncclUniqueId that
// rank 0 broadcasts over MPI. Collectives run on a communication stream of
// their own: each starts after the work already issued on the compute stream
// (an event), and records a completion event, whose slot it returns.
// nccl_wait makes the compute stream wait for that event; the host never
// blocks, so the collective overlaps whatever compute does not depend on it.
// Uneven partitions (the last ZeRO shard is shorter) become grouped
// ncclReduce / ncclBroadcast calls, NCCL having no v-collectives.
// In a build without NCCL every entry is a fatal error (device_select never
// picks this path there).
#ifndef PARTITA_COMM_NCCL_H
#define PARTITA_COMM_NCCL_H

#include <mpi.h>
#include <stddef.h>

typedef struct NcclComm NcclComm;

// 1 when this binary carries NCCL.
int nccl_available(void);
NcclComm *nccl_create(MPI_Comm comm, int rank, int size);
void nccl_destroy(NcclComm *n);
int nccl_allreduce_sum(NcclComm *n, float *buf, size_t count);
int nccl_reduce_scatter_sum(NcclComm *n, const float *send, float *recv, const size_t *counts);
int nccl_allgather(NcclComm *n, float *buf, const size_t *counts);     // in place, counts[k] for rank k
int nccl_alltoallv(NcclComm *n, const float *send, const size_t *counts, float *recv, const size_t *rcounts);
// The compute stream waits for event slot ev (the host does not).
void nccl_wait(NcclComm *n, int ev);
// 1 when the collective of slot ev has finished on the device.
int nccl_test(NcclComm *n, int ev);

#endif
