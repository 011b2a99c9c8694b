// sampler.c: greedy and nucleus/top-k sampling with per-request streams.
#include "sampler.h"
#include "log.h"
#include "rng.h"

#include <math.h>
#include <stdlib.h>

void sampler_create(Sampler *s, int V) {
    s->V = V;
    s->probs = xmalloc((size_t)V * sizeof(float), "sampler probabilities");
    s->idx = xmalloc((size_t)V * sizeof(int32_t), "sampler indices");
    s->tmp = xmalloc((size_t)V * sizeof(int32_t), "sampler sort scratch");
}

void sampler_free(Sampler *s) {
    free(s->probs);
    free(s->idx);
    free(s->tmp);
    s->probs = NULL;
    s->idx = s->tmp = NULL;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;   // ties: the lowest index, deterministically
    return best;
}

// Sorts idx[0..n) by p descending, ties by index: a bottom-up merge sort, since
// C11's qsort cannot carry p to its comparator.
static void sort_desc(int32_t *idx, int32_t *tmp, const float *p, int n) {
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int a = lo, b = mid, k = lo;
            while (a < mid && b < hi) {
                int ta = idx[a], tb = idx[b];
                if (p[ta] > p[tb] || (p[ta] == p[tb] && ta < tb)) tmp[k++] = idx[a++];
                else tmp[k++] = idx[b++];
            }
            while (a < mid) tmp[k++] = idx[a++];
            while (b < hi) tmp[k++] = idx[b++];
        }
        for (int i = 0; i < n; i++) idx[i] = tmp[i];
    }
}

int32_t sampler_next(Sampler *s, const float *logits, const SamplerParams *p, int64_t n) {
    const int V = s->V;
    if (p->temperature <= 0.0) return argmax(logits, V);
    float mx = logits[argmax(logits, V)];
    double z = 0.0;
    for (int i = 0; i < V; i++) {
        s->probs[i] = expf((float)((logits[i] - mx) / p->temperature));
        z += s->probs[i];
    }
    for (int i = 0; i < V; i++) s->probs[i] = (float)(s->probs[i] / z);
    int keep = V;
    if (p->top_k > 0 || p->top_p < 1.0) {
        for (int i = 0; i < V; i++) s->idx[i] = i;
        sort_desc(s->idx, s->tmp, s->probs, V);
        if (p->top_k > 0 && p->top_k < keep) keep = p->top_k;
        if (p->top_p < 1.0) {
            double cum = 0.0;
            for (int k = 0; k < keep; k++) {
                cum += s->probs[s->idx[k]];
                if (cum >= p->top_p) { keep = k + 1; break; }
            }
        }
    } else {
        for (int i = 0; i < V; i++) s->idx[i] = i;
    }
    double mass = 0.0;
    for (int k = 0; k < keep; k++) mass += s->probs[s->idx[k]];
    Rng r = rng_stream(p->seed, RNG_SAMPLE, (uint64_t)n);
    double u = rng_uniform(&r) * mass, acc = 0.0;
    for (int k = 0; k < keep; k++) {
        acc += s->probs[s->idx[k]];
        if (u < acc) return s->idx[k];
    }
    return s->idx[keep - 1];
}
