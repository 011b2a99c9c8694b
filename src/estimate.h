// estimate.h: `partita estimate DECK --ranks N`: the memory, communication and
// compute plan of a run, for every ZeRO stage, without running it.
#ifndef PARTITA_ESTIMATE_H
#define PARTITA_ESTIMATE_H

#include "deck.h"

int estimate_run(const Deck *d, int ranks);

#endif
