// test_sampler.c: the sampler (src/infer/sampler.c) against a reference that
// sorts the whole vocabulary per token (the implementation before the heap):
// the same token for every draw, over greedy, temperature, top-k, top-p and
// both, on GPT-2's vocabulary and the byte tokenizer's, with ties. Prints the
// time per token of each.
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"
#include "sampler.h"

static int32_t ref_argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void ref_sort(int32_t *idx, int32_t *tmp, const float *p, int n) {
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

static int32_t ref_next(int V, float *probs, int32_t *idx, int32_t *tmp, const float *logits, const SamplerParams *p,
                        int64_t n) {
    if (p->temperature <= 0.0) return ref_argmax(logits, V);
    float mx = logits[ref_argmax(logits, V)];
    double z = 0.0;
    for (int i = 0; i < V; i++) {
        probs[i] = expf((float)((logits[i] - mx) / p->temperature));
        z += probs[i];
    }
    for (int i = 0; i < V; i++) probs[i] = (float)(probs[i] / z);
    int keep = V;
    for (int i = 0; i < V; i++) idx[i] = i;
    if (p->top_k > 0 || p->top_p < 1.0) {
        ref_sort(idx, tmp, probs, V);
        if (p->top_k > 0 && p->top_k < keep) keep = p->top_k;
        if (p->top_p < 1.0) {
            double cum = 0.0;
            for (int k = 0; k < keep; k++) {
                cum += probs[idx[k]];
                if (cum >= p->top_p) { keep = k + 1; break; }
            }
        }
    }
    double mass = 0.0;
    for (int k = 0; k < keep; k++) mass += probs[idx[k]];
    Rng r = rng_stream(p->seed, RNG_SAMPLE, (uint64_t)n);
    double u = rng_uniform(&r) * mass, acc = 0.0;
    for (int k = 0; k < keep; k++) {
        acc += probs[idx[k]];
        if (u < acc) return idx[k];
    }
    return idx[keep - 1];
}

int main(void) {
    int fails = 0;
    const int Vs[2] = {50257, 257};
    const SamplerParams ps[] = {
        {0.0, 0, 1.0, 1}, {1.0, 0, 1.0, 2}, {0.8, 40, 1.0, 3}, {1.0, 0, 0.9, 4}, {1.2, 50, 0.95, 5},
        {0.7, 1, 1.0, 6}, {1.0, 0, 0.01, 7}, {2.0, 0, 0.999, 8}, {1.0, 100000, 1.0, 9},
    };
    const int NP = sizeof ps / sizeof ps[0], DRAWS = 20;
    for (int vi = 0; vi < 2; vi++) {
        const int V = Vs[vi];
        Sampler s;
        sampler_create(&s, V);
        float *logits = malloc(sizeof(float) * V), *probs = malloc(sizeof(float) * V);
        int32_t *idx = malloc(sizeof(int32_t) * V), *tmp = malloc(sizeof(int32_t) * V);
        Rng g = rng_stream(42, RNG_SAMPLE + 7, (uint64_t)V);
        for (int q = 0; q < NP; q++) {
            int same = 0;
            double t_new = 0, t_ref = 0;
            for (int d = 0; d < DRAWS; d++) {
                // peaked logits with exact ties (quantised), so the tie order matters
                for (int i = 0; i < V; i++) logits[i] = (float)floor(4.0 * rng_normal(&g) * (d % 3 + 1)) / 2.0f;
                double t0 = omp_get_wtime();
                int32_t a = sampler_next(&s, logits, &ps[q], d);
                double t1 = omp_get_wtime();
                int32_t b = ref_next(V, probs, idx, tmp, logits, &ps[q], d);
                double t2 = omp_get_wtime();
                t_new += t1 - t0;
                t_ref += t2 - t1;
                same += a == b;
            }
            int ok = same == DRAWS;
            fails += !ok;
            printf("  V=%-6d T=%.1f top_k=%-6d top_p=%-5g  %2d of %d draws equal the full sort  "
                   "(%.3f ms vs %.3f ms per token) %s\n", V, ps[q].temperature, ps[q].top_k, ps[q].top_p, same, DRAWS,
                   1e3 * t_new / DRAWS, 1e3 * t_ref / DRAWS, ok ? "ok" : "FAIL");
        }
        sampler_free(&s);
        free(logits); free(probs); free(idx); free(tmp);
    }
    printf("test_sampler: %s (%d failed)\n", fails ? "FAIL" : "pass", fails);
    return fails ? 1 : 0;
}
