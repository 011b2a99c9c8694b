// estimate.h: `partita estimate DECK --ranks N`: the memory, communication and
// compute plan of a run, for every ZeRO stage, without running it; with
// sequence parallelism, the activations, all-to-all traffic and the longest
// sequence that fits `--mem-per-rank SIZE` (e.g. 4G), recompute on and off.
#ifndef PARTITA_ESTIMATE_H
#define PARTITA_ESTIMATE_H

#include "deck.h"

// mem_per_rank: bytes the "longest T" lines fit in; <= 0: 4 GiB.
int estimate_run(const Deck *d, int ranks, double mem_per_rank);

#endif
