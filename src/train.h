// train.h: the training loop (`partita train`) and the reference dump (`partita dump`).
#ifndef PARTITA_TRAIN_H
#define PARTITA_TRAIN_H

#include "deck.h"

// Runs the resolved deck d on all ranks of MPI_COMM_WORLD; returns the exit code.
int train_run(const Deck *d);

// Writes, for the first micro-batch of the deck's data: initial parameters,
// inputs, targets, logits, loss and every parameter gradient (for tests that
// compare against a reference implementation). Single rank.
int train_dump(const Deck *d, const char *out_path);

#endif
