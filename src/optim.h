// optim.h: AdamW on fp32 masters, the LR schedule, global-norm clipping.
//
// The optimizer updates one contiguous range [begin, end) of the flat
// parameter layout: the whole model at ZeRO stage 0, a rank's shard above it.
#ifndef PARTITA_OPTIM_H
#define PARTITA_OPTIM_H

#include <stddef.h>

#include "deck.h"
#include "model.h"

typedef struct Optim {
    OptimConfig cfg;
    int64_t steps;          // total steps of the run (for the decay)
    size_t begin, end;      // the range this optimizer owns
    const Backend *bk;      // where the moments live and the update runs
    float *m, *v;           // (end - begin) first and second moments (backend memory)
    int t;                  // updates taken so far
} Optim;

void optim_create(Optim *o, const OptimConfig *cfg, int64_t steps, size_t begin, size_t end, const Backend *bk);
void optim_free(Optim *o);

// Learning rate for step s (0-based): linear warmup over `warmup` steps from
// lr/warmup to lr, then cosine (or linear) decay to min_lr at the last step.
double optim_lr(const Optim *o, int64_t s);

// Global-norm clipping factor: min(1, clip / norm); 1 when clip is 0.
float optim_clip_scale(double grad_norm, double clip);

// One AdamW update of the owned range: params and grads point at element
// `begin`. grads are scaled by grad_scale first. Weight decay applies to the
// tensors marked decay (matrices), as GPT-2 training does.
void optim_update(Optim *o, const Model *m, float *params, float *grads, double lr, float grad_scale);

// AdamW at step t on the elements [lo, hi) of the flat layout (begin <= lo <=
// hi <= end): p, g, mm, vv point at element lo, grads already scaled; the same
// per-tensor kernel calls optim_update makes over that stretch, so an update
// done in pieces (offload subgroups) gives the same bits as one in whole.
// update is the kernel: o->bk->adamw_update, or the host kernel for a
// subgroup updated on the CPU (Deep Optimizer States).
typedef void (*AdamwFn)(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1,
                        float beta2, float eps, float wd, int t);
void optim_update_range(const Optim *o, const Model *m, AdamwFn update, float *p, const float *g, float *mm,
                        float *vv, size_t lo, size_t hi, double lr, int t);

#endif
