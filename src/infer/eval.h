// eval.h: `partita eval DECK`: validation loss and perplexity of a weights
// file ([generate] weights) on a token file ([data] val, or the val_fraction
// tail of [data] train, as training splits it), in rows of [train] seq_len + 1
// tokens, the rows dealt over all ranks. The inference forward runs each row
// as one prefill pass with the matrices held in [generate] weights_dtype;
// [generate] naive = true runs the training forward instead (fp32), the reference.
#ifndef PARTITA_EVAL_H
#define PARTITA_EVAL_H

#include "deck.h"

// logits_path: where to write the first row's logits ((T, V) float32), or NULL.
int eval_run(const Deck *d, const char *logits_path);

#endif
