// rng.h: small deterministic random numbers, one stream per purpose.
//
// splitmix64 seeds and steps the state; normals by Box-Muller in float64.
// A stream is named by (seed, purpose, index) so that, for example, a tensor's
// initial values do not depend on how many tensors came before it.
#ifndef PARTITA_RNG_H
#define PARTITA_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct Rng { uint64_t s; } Rng;

static inline uint64_t rng_next(Rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline Rng rng_stream(uint64_t seed, uint64_t purpose, uint64_t index) {
    Rng r = {seed ^ 0x5851F42D4C957F2Dull};
    r.s ^= rng_next(&r) + purpose * 0x632BE59BD9B4E019ull;
    r.s ^= rng_next(&r) + index * 0x9E3779B97F4A7C15ull;
    rng_next(&r);
    return r;
}

// uniform in [0, 1) with 53 random bits
static inline double rng_uniform(Rng *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

static inline double rng_normal(Rng *r) {
    double u1 = rng_uniform(r), u2 = rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// Moves the stream past n draws in O(1): splitmix64's state is a counter.
static inline void rng_skip(Rng *r, uint64_t n) { r->s += n * 0x9E3779B97F4A7C15ull; }

// uniform integer in [0, n)
static inline uint64_t rng_below(Rng *r, uint64_t n) { return rng_next(r) % n; }

enum { RNG_INIT = 1, RNG_DATA = 2, RNG_SAMPLE = 3 };

#endif
