// optim.c: AdamW over a range of the parameter table.
#include "optim.h"
#include "log.h"

#include <math.h>
#include <stdlib.h>

void optim_create(Optim *o, const OptimConfig *cfg, int64_t steps, size_t begin, size_t end, const Backend *bk) {
    o->cfg = *cfg;
    o->steps = steps;
    o->begin = begin;
    o->end = end;
    o->bk = bk;
    o->m = o->v = NULL;     // offloaded: the moments live with the offload engine (offload.h)
    if (!cfg->offloaded) {
        o->m = bk->alloc((end - begin) * sizeof(float), "AdamW first moments");
        o->v = bk->alloc((end - begin) * sizeof(float), "AdamW second moments");
    }
    o->t = 0;
}

void optim_free(Optim *o) {
    if (o->bk) {
        o->bk->release(o->m);
        o->bk->release(o->v);
    }
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

void optim_update_range(const Optim *o, const Model *m, AdamwFn update, float *p, const float *g, float *mm,
                        float *vv, size_t lo, size_t hi, double lr, int t) {
    const OptimConfig *c = &o->cfg;
    for (int i = 0; i < m->ntensors; i++) {
        const ParamTensor *tn = &m->tensors[i];
        size_t a = tn->offset > lo ? tn->offset : lo;
        size_t b = tn->offset + tn->numel < hi ? tn->offset + tn->numel : hi;
        if (a >= b) continue;
        size_t k = a - lo;
        update(p + k, g + k, mm + k, vv + k, b - a, (float)lr, (float)c->beta1, (float)c->beta2, (float)c->eps,
               tn->decay ? (float)c->weight_decay : 0.0f, t);
    }
}

void optim_update(Optim *o, const Model *m, float *params, float *grads, double lr, float grad_scale) {
    size_t n = o->end - o->begin;
    if (grad_scale != 1.0f) o->bk->scale_inplace(grads, grad_scale, n);
    o->t++;
    optim_update_range(o, m, o->bk->adamw_update, params, grads, o->m, o->v, o->begin, o->end, lr, o->t);
}
