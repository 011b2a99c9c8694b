// topo.c: world -> node, gradient (all ranks), sequence-group, expert-parallel and
// expert-data-parallel communicators.
#include "topo.h"
#include "log.h"

void topo_init(Topo *t, int dp, int sp, int ep) {
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &t->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &t->size));
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t->rank,
                                  MPI_INFO_NULL, &t->node));
    MPI_CHECK(MPI_Comm_rank(t->node, &t->local_rank));
    MPI_CHECK(MPI_Comm_size(t->node, &t->local_size));
    SYS_CHECK(sp >= 1 && dp >= 1 && (long)dp * sp == t->size,
              "dp*sp = %d*%d but the world has %d ranks (tp not yet supported)", dp, sp, t->size);
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &t->dp));
    MPI_CHECK(MPI_Comm_rank(t->dp, &t->dp_rank));
    MPI_CHECK(MPI_Comm_size(t->dp, &t->dp_size));
    t->data_rank = t->rank / sp;
    t->data_size = dp;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, t->data_rank, t->rank, &t->sp));
    MPI_CHECK(MPI_Comm_rank(t->sp, &t->sp_rank));
    MPI_CHECK(MPI_Comm_size(t->sp, &t->sp_size));
    SYS_CHECK(ep >= 1 && dp % ep == 0, "ep = %d does not divide dp = %d", ep, dp);
    // Expert-parallel group k: data ranks k*ep .. k*ep+ep-1 of one sp rank; the
    // expert-data-parallel group: the data ranks with the same index j in theirs.
    int j = t->data_rank % ep, k = t->data_rank / ep;
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, k * sp + t->sp_rank, t->data_rank, &t->ep));
    MPI_CHECK(MPI_Comm_rank(t->ep, &t->ep_rank));
    MPI_CHECK(MPI_Comm_size(t->ep, &t->ep_size));
    MPI_CHECK(MPI_Comm_split(MPI_COMM_WORLD, j * sp + t->sp_rank, t->data_rank, &t->edp));
    MPI_CHECK(MPI_Comm_rank(t->edp, &t->edp_rank));
    MPI_CHECK(MPI_Comm_size(t->edp, &t->edp_size));
    SYS_CHECK(t->ep_rank == j && t->ep_size == ep && t->edp_rank == k && t->edp_size == dp / ep,
              "expert groups: rank %d is %d of %d (ep) and %d of %d (edp), expected %d of %d and %d of %d", t->rank,
              t->ep_rank, t->ep_size, t->edp_rank, t->edp_size, j, ep, k, dp / ep);
}

void topo_free(Topo *t) {
    MPI_CHECK(MPI_Comm_free(&t->edp));
    MPI_CHECK(MPI_Comm_free(&t->ep));
    MPI_CHECK(MPI_Comm_free(&t->sp));
    MPI_CHECK(MPI_Comm_free(&t->dp));
    MPI_CHECK(MPI_Comm_free(&t->node));
}

void topo_node_place(int *local_rank, int *local_size) {
    MPI_Comm node;
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    MPI_CHECK(MPI_Comm_size(node, local_size));
    MPI_CHECK(MPI_Comm_rank(node, local_rank));
    MPI_CHECK(MPI_Comm_free(&node));
}
