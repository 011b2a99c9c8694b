// topo.h: the job's ranks laid out as process groups.
//
// The world of dp x sp ranks is cut into dp sequence groups of sp consecutive
// ranks (consecutive ranks share a node first): world rank w is rank w % sp
// of sequence group w / sp. Every rank holds the same model, so ZeRO
// partitions model states over, and reduces gradients over, all of them: the
// group `dp` below is the whole world (the name predates sp). The data-parallel
// index of a rank is its sequence group's index (data_rank of data_size = dp);
// the rank in the group picks the slice of the row. tp would split the world
// further here.
//
// Expert parallelism (ep, Mixture of Experts): ep consecutive data-parallel
// ranks (data ranks k*ep .. k*ep+ep-1, the same sp rank) form an expert-parallel
// group; rank j of it holds experts [j*E/ep, (j+1)*E/ep) of every MoE layer.
// The ranks with the same j (and sp rank) form the expert-data-parallel group
// of dp/ep ranks, over which the experts' states are partitioned and their
// gradients reduced. At ep = 1 the two are a single rank and all of dp x sp.
#ifndef PARTITA_TOPO_H
#define PARTITA_TOPO_H

#include <mpi.h>

typedef struct Topo {
    int rank, size;             // in MPI_COMM_WORLD
    int local_rank, local_size; // ranks sharing this node
    int dp_rank, dp_size;       // in the ZeRO / gradient group: all dp x sp ranks
    MPI_Comm dp;                // the ZeRO / gradient group
    int sp_rank, sp_size;       // in this rank's sequence group
    MPI_Comm sp;                // the sequence group (sp consecutive ranks)
    int data_rank, data_size;   // data-parallel index (the sequence group's) and count (dp)
    int ep_rank, ep_size;       // in this rank's expert-parallel group (j above)
    MPI_Comm ep;                // the expert-parallel group (all-to-alls of MoE layers)
    int edp_rank, edp_size;     // in this rank's expert-data-parallel group
    MPI_Comm edp;               // the expert-data-parallel group (ZeRO over the held experts)
    MPI_Comm node;              // ranks on this node
} Topo;

// dp * sp must be the world size and ep must divide dp (the deck has checked both).
void topo_init(Topo *t, int dp, int sp, int ep);
void topo_free(Topo *t);
// This rank's place among the ranks of its node (MPI_COMM_TYPE_SHARED), for
// commands that need no grid (generate, eval): its rank there and their count.
void topo_node_place(int *local_rank, int *local_size);

#endif
