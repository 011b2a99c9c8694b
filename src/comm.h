// comm.h: collectives on the kernels' buffers, with byte counters.
//
// Every collective adds the bytes this rank sends to a counter per op, so that
// run.h5 can record communication volume per step and tests can check it
// against theory. Waits yield the core (MPI_Test + nanosleep) because ranks may
// outnumber cores: MPICH's blocking busy-poll costs milliseconds per call there.
#ifndef PARTITA_COMM_H
#define PARTITA_COMM_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

enum { COMM_ALLREDUCE = 0, COMM_BCAST, COMM_NOPS };

typedef struct Comm {
    MPI_Comm comm;
    int rank, size;
    uint64_t bytes[COMM_NOPS];   // bytes sent by this rank, per op, since start
    uint64_t calls[COMM_NOPS];
    double wait_s;               // time spent waiting in collectives
} Comm;

void comm_init(Comm *c, MPI_Comm comm);
const char *comm_op_name(int op);

// In-place sum of n floats over the group (ring volume 2 (p-1)/p n floats).
void comm_allreduce_sum(Comm *c, float *buf, size_t n);
// In-place sum of n doubles (small control values: losses, norms).
void comm_allreduce_sum_f64(Comm *c, double *buf, int n);
// In-place max of n doubles.
void comm_allreduce_max_f64(Comm *c, double *buf, int n);

#endif
