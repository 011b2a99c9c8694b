// topo.c: world -> node, gradient (all ranks) and sequence-group communicators.
#include "topo.h"
#include "log.h"

void topo_init(Topo *t, int dp, int sp) {
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
}

void topo_free(Topo *t) {
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
