// optim.h: AdamW on fp32 masters, the LR schedule, global-norm clipping.
#ifndef PARTITA_OPTIM_H
#define PARTITA_OPTIM_H

#include <stddef.h>

#include "deck.h"
#include "model.h"

typedef struct Optim {
    OptimConfig cfg;
    int64_t steps;          // total steps of the run (for the decay)
    float *m, *v;           // first and second moments, laid out like the parameters
    size_t n;
    int t;                  // updates taken so far
} Optim;

void optim_create(Optim *o, const OptimConfig *cfg, int64_t steps, size_t nparams);
void optim_free(Optim *o);

// Learning rate for step s (0-based): linear warmup over `warmup` steps from
// lr/warmup to lr, then cosine (or linear) decay to min_lr at the last step.
double optim_lr(const Optim *o, int64_t s);

// Global-norm clipping factor: min(1, clip / norm); 1 when clip is 0.
float optim_clip_scale(double grad_norm, double clip);

// One AdamW update of every tensor of m with m->grads * grad_scale.
// Weight decay only on tensors marked decay (matrices), as GPT-2 training does.
void optim_step(Optim *o, Model *m, double lr, float grad_scale);

#endif
