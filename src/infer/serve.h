// serve.h: `partita serve DECK`: an OpenAI-compatible completions server over
// the generate scheduler (scheduler.h). Rank 0 listens and schedules; the other
// tensor-parallel ranks follow its passes.
#ifndef PARTITA_SERVE_H
#define PARTITA_SERVE_H

#include "deck.h"

// Collective over MPI_COMM_WORLD; returns the exit code (0 after a SIGTERM drain).
int serve_run(const Deck *d);
// `partita serve DECK [--set section.key=value ...]`: loads and checks the deck, then serve_run.
int serve_main(int argc, char **argv, int rank, int size);

#endif
