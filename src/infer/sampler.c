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

// Order of the candidates: higher probability first, ties by the lower index.
static int before(const float *p, int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); }

static void sift_down(int32_t *h, int n, int i, const float *p) {
    for (;;) {
        int c = 2 * i + 1;
        if (c >= n) return;
        if (c + 1 < n && before(p, h[c + 1], h[c])) c++;
        if (!before(p, h[c], h[i])) return;
        int32_t t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}

// The candidates top-k / top-p keep, best first, into out; returns their count.
// A heap over the vocabulary (built in O(V)) is popped only as far as the cut:
// O(V + kept log V) instead of sorting all V per token.
static int nucleus(Sampler *s, const SamplerParams *p, int32_t *out) {
    const int V = s->V;
    int32_t *h = s->idx;
    for (int i = 0; i < V; i++) h[i] = i;
    for (int i = V / 2 - 1; i >= 0; i--) sift_down(h, V, i, s->probs);
    int limit = p->top_k > 0 && p->top_k < V ? p->top_k : V, n = V, kept = 0;
    double cum = 0.0;
    while (kept < limit) {
        int32_t best = h[0];
        out[kept++] = best;
        cum += s->probs[best];
        if (p->top_p < 1.0 && cum >= p->top_p) break;
        h[0] = h[--n];
        sift_down(h, n, 0, s->probs);
    }
    return kept;
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
    const int32_t *cand = s->tmp;
    int keep = V;
    if (p->top_k > 0 || p->top_p < 1.0) {
        keep = nucleus(s, p, s->tmp);
    } else {
        for (int i = 0; i < V; i++) s->idx[i] = i;
        cand = s->idx;
    }
    double mass = 0.0;
    for (int k = 0; k < keep; k++) mass += s->probs[cand[k]];
    Rng r = rng_stream(p->seed, RNG_SAMPLE, (uint64_t)n);
    double u = rng_uniform(&r) * mass, acc = 0.0;
    for (int k = 0; k < keep; k++) {
        acc += s->probs[cand[k]];
        if (u < acc) return cand[k];
    }
    return cand[keep - 1];
}
