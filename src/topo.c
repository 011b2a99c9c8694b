// topo.c: world -> node and data-parallel communicators.
#include "topo.h"
#include "log.h"

void topo_init(Topo *t, int dp) {
    MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &t->rank));
    MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &t->size));
    MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t->rank,
                                  MPI_INFO_NULL, &t->node));
    MPI_CHECK(MPI_Comm_rank(t->node, &t->local_rank));
    MPI_CHECK(MPI_Comm_size(t->node, &t->local_size));
    // dp == world until sp/tp split it; the deck has checked dp*sp*tp == size.
    SYS_CHECK(dp == t->size, "dp = %d but the world has %d ranks (sp/tp not yet supported)",
              dp, t->size);
    MPI_CHECK(MPI_Comm_dup(MPI_COMM_WORLD, &t->dp));
    MPI_CHECK(MPI_Comm_rank(t->dp, &t->dp_rank));
    MPI_CHECK(MPI_Comm_size(t->dp, &t->dp_size));
}

void topo_free(Topo *t) {
    MPI_CHECK(MPI_Comm_free(&t->dp));
    MPI_CHECK(MPI_Comm_free(&t->node));
}
