// estimate_gen.h: `partita estimate`'s generate plan (ZeRO-Inference): per-rank
// memory for [generate] weights_from = memory | host | nvme (layer matrices,
// window, resident tensors, KV cache, a pass's activations), the bytes a pass
// reads, and tokens/s at batch 1..256 predicted from the sgemm, memory, memcpy
// and O_DIRECT disk rates measured on this machine (the formula is printed).
// tp = the job's ranks (generate runs tensor-parallel over all of them).
#ifndef PARTITA_ESTIMATE_GEN_H
#define PARTITA_ESTIMATE_GEN_H

#include "deck.h"

void estimate_generate(const Deck *d, int ranks);

#endif
