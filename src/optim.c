// optim.c: AdamW over the parameter table.
#include "optim.h"
#include "kernels.h"
#include "log.h"

#include <math.h>
#include <stdlib.h>

void optim_create(Optim *o, const OptimConfig *cfg, int64_t steps, size_t nparams) {
    o->cfg = *cfg;
    o->steps = steps;
    o->n = nparams;
    o->m = xcalloc(nparams * sizeof(float), "AdamW first moments");
    o->v = xcalloc(nparams * sizeof(float), "AdamW second moments");
    o->t = 0;
}

void optim_free(Optim *o) {
    free(o->m);
    free(o->v);
    o->m = o->v = NULL;
}

double optim_lr(const Optim *o, int64_t s) {
    const OptimConfig *c = &o->cfg;
    if (s < c->warmup) return c->lr * (double)(s + 1) / (double)c->warmup;
    int64_t span = o->steps - c->warmup;
    if (c->decay == DECAY_NONE || span <= 1) return c->lr;
    double frac = (double)(s - c->warmup) / (double)(span - 1);   // 0 .. 1 at the last step
    if (frac > 1.0) frac = 1.0;
    double shape = c->decay == DECAY_COSINE ? 0.5 * (1.0 + cos(M_PI * frac)) : 1.0 - frac;
    return c->min_lr + (c->lr - c->min_lr) * shape;
}

float optim_clip_scale(double grad_norm, double clip) {
    if (clip <= 0.0 || grad_norm <= clip || !isfinite(grad_norm)) return 1.0f;
    return (float)(clip / grad_norm);
}

void optim_step(Optim *o, Model *m, double lr, float grad_scale) {
    if (grad_scale != 1.0f) scale_inplace(m->grads, grad_scale, m->nparams);
    o->t++;
    const OptimConfig *c = &o->cfg;
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        size_t off = t->offset;
        adamw_update(m->params + off, m->grads + off, o->m + off, o->v + off, t->numel,
                     (float)lr, (float)c->beta1, (float)c->beta2, (float)c->eps,
                     t->decay ? (float)c->weight_decay : 0.0f, o->t);
    }
}
