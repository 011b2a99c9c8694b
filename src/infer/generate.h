// generate.h: `partita generate DECK`: batched generation as an HPC job.
#ifndef PARTITA_GENERATE_H
#define PARTITA_GENERATE_H

#include "deck.h"

// Collective over MPI_COMM_WORLD (the tensor-parallel group); returns the exit code.
int generate_run(const Deck *d);

#endif
