// topo.h: the job's ranks laid out as process groups.
//
// Today only the data-parallel group carries traffic; sp, tp and ep are
// validated by the deck and will split the world here when they land.
#ifndef PARTITA_TOPO_H
#define PARTITA_TOPO_H

#include <mpi.h>

typedef struct Topo {
    int rank, size;             // in MPI_COMM_WORLD
    int local_rank, local_size; // ranks sharing this node
    int dp_rank, dp_size;
    MPI_Comm dp;                // data-parallel group
    MPI_Comm node;              // ranks on this node
} Topo;

void topo_init(Topo *t, int dp);
void topo_free(Topo *t);

#endif
