// sampler.h: next-token choice from logits: greedy, temperature, top-k, top-p.
//
// The random draw for a request's n-th generated token comes from the stream
// (seed, RNG_SAMPLE, n), so a request's output depends on its seed and its own
// tokens only, never on which other requests share its passes or on tp.
#ifndef PARTITA_SAMPLER_H
#define PARTITA_SAMPLER_H

#include <stdint.h>

typedef struct SamplerParams {
    double temperature;     // 0 = greedy
    int top_k;              // 0 = all
    double top_p;           // 1 = all
    uint64_t seed;
} SamplerParams;

typedef struct Sampler {
    int V;
    float *probs;           // (V) scratch
    int32_t *idx, *tmp;     // (V) scratch
} Sampler;

void sampler_create(Sampler *s, int V);
void sampler_free(Sampler *s);
// logits: the first V entries are scored. n: index of the token being generated.
int32_t sampler_next(Sampler *s, const float *logits, const SamplerParams *p, int64_t n);

#endif
