// test_moe.c: capacity, routing and drops against hand cases; one MoE layer's
// backward (top-1, top-2 with drops, PR-MoE) against finite differences of its forward.
#include "backend.h"
#include "moe.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fails;
static void check(int ok, const char *what, double got, double want) {
    printf("%s %-52s got %.6g want %.6g\n", ok ? "ok  " : "FAIL", what, got, want);
    if (!ok) fails++;
}

static void test_capacity(void) {
    int ex[1] = {4};
    MoeSpec s = {.L = 1, .experts = ex, .nmoe = 1, .top_k = 1, .min_capacity = 2, .drop_tokens = 1, .cf = 1.0,
                 .eval_cf = 2.0};
    check(moe_capacity(&s, 4, 16, 0) == 4, "capacity ceil(1*1.0*16/4)", moe_capacity(&s, 4, 16, 0), 4);
    check(moe_capacity(&s, 4, 16, 1) == 8, "eval capacity ceil(1*2.0*16/4)", moe_capacity(&s, 4, 16, 1), 8);
    s.min_capacity = 6;
    check(moe_capacity(&s, 4, 16, 0) == 6, "min_capacity bounds it below", moe_capacity(&s, 4, 16, 0), 6);
    s.top_k = 2;
    s.cf = 1.3;
    s.min_capacity = 1;
    check(moe_capacity(&s, 4, 10, 0) == 7, "capacity ceil(2*1.3*10/4)", moe_capacity(&s, 4, 10, 0), 7);
    s.drop_tokens = 0;
    check(moe_capacity(&s, 4, 10, 0) == 10, "no drops: capacity T", moe_capacity(&s, 4, 10, 0), 10);
}

static void test_route(void) {
    // one row of 4 tokens over 2 experts, top-2, capacity 2: first choices 0,0,0,1
    const float p[8] = {0.9f, 0.1f, 0.8f, 0.2f, 0.6f, 0.4f, 0.3f, 0.7f};
    int32_t e[8], slot[8];
    float w[8];
    double aux = 0.0;
    int64_t dropped = moe_route(p, 1, 4, 2, 2, 2, e, w, slot, &aux);
    // first pass: t0->0 slot0, t1->0 slot1, t2->0 drop, t3->1 slot0; second: t0->1 slot1, t1->1 drop, t2->1 drop, t3->0 drop
    const int32_t want_slot[8] = {0, 1, 1, -1, -1, -1, 0, -1};
    int ok = 1;
    for (int i = 0; i < 8; i++) ok &= slot[i] == want_slot[i];
    check(ok, "top-2 slots: first choices in order, then second", ok, 1);
    check(dropped == 4, "top-2 drops", (double)dropped, 4);
    check(fabsf(w[0] - 0.9f) < 1e-6 && fabsf(w[1] - 0.1f) < 1e-6, "both kept: weights p / (p1 + p2)", w[0], 0.9);
    check(fabsf(w[2] - 1.0f) < 1e-6 && w[3] == 0.0f, "one kept: renormalised to 1", w[2], 1.0);
    check(w[4] == 0.0f && w[5] == 0.0f, "all dropped: weight 0", w[4], 0.0);
    // aux = E * sum_e f_e P_e: f = (3/4, 1/4), P = (0.65, 0.35)
    double want = 2.0 * (0.75 * 0.65 + 0.25 * 0.35);
    check(fabs(aux - want) < 1e-6, "aux loss of the row", aux, want);
    float q[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    int32_t e1[2], s1[2];
    float w1[2];
    moe_route(q, 1, 2, 2, 1, 2, e1, w1, s1, &aux);
    check(e1[0] == 0 && e1[1] == 0, "ties: the lowest index", e1[1], 0);
}

// J = sum(out * R) + a * aux (the layer's rows), in double from a float forward.
static double objective(MoeLayer *ml, float *out, const float *x, const float *R, int B, int T, double a) {
    moe_forward(ml, out, x, B, T, 0, 1, 0, 0);
    double j = 0.0;
    for (size_t i = 0; i < (size_t)B * T * ml->C; i++) j += (double)out[i] * R[i];
    return j + a * ml->stats.aux;
}

static int same_route(const MoeLayer *ml, const int32_t *route0, size_t nk) {
    return memcmp(ml->e_host, route0, nk * sizeof(int32_t)) == 0 &&
           memcmp(ml->pos_host, route0 + nk, nk * sizeof(int32_t)) == 0;
}

static void fill(float *p, size_t n, Rng *r, double sd) {
    for (size_t i = 0; i < n; i++) p[i] = (float)(sd * rng_normal(r));
}

static void test_grads(const char *name, int K, int residual, double cf) {
    const Backend *bk = backend_cpu();
    const int B = 2, T = 6, C = 8, H = 12, E = 4;
    int ex[1] = {E};
    MoeSpec s = {.L = 1, .experts = ex, .nmoe = 1, .top_k = K, .min_capacity = 1, .drop_tokens = 1, .cf = cf,
                 .eval_cf = 2.0, .residual = residual};
    MoeLayer ml;
    moe_layer_create(&ml, &s, 0, C, H, B, T, NULL, bk);
    Rng r = rng_stream(3, 9, (uint64_t)K * 2 + (uint64_t)residual + 16 * (uint64_t)(cf * 10));
    size_t N = (size_t)B * T, nexp = (size_t)(2 * C * H + H + C);
    float *x = malloc(N * C * 4), *R = malloc(N * C * 4), *out = malloc(N * C * 4), *dx = calloc(N * C, 4);
    float *gate = malloc((size_t)C * E * 4), *ggate = calloc((size_t)C * E, 4);
    float *xp = malloc(E * nexp * 4), *gx = calloc(E * nexp, 4);
    float *res = malloc((2 * nexp + 2 * C + 2) * 4), *gres = calloc(2 * nexp + 2 * C + 2, 4);
    fill(x, N * C, &r, 1.0);
    fill(R, N * C, &r, 1.0);
    fill(gate, (size_t)C * E, &r, 0.5);
    fill(xp, E * nexp, &r, 0.3);
    fill(res, 2 * nexp + 2 * C + 2, &r, 0.3);
    ml.w.gate = gate;
    ml.g.gate = ggate;
    for (int e = 0; e < E; e++) {
        float *b = xp + e * nexp, *g = gx + e * nexp;
        ml.w.experts[e] = (MoeExpertW){b, b + C * H, b + C * H + H, b + 2 * C * H + H};
        ml.g.experts[e] = (MoeExpertG){g, g + C * H, g + C * H + H, g + 2 * C * H + H};
    }
    if (residual) {
        ml.w.rfcw = res; ml.w.rfcb = res + C * H; ml.w.rpw = res + C * H + H; ml.w.rpb = res + 2 * C * H + H;
        ml.w.coefw = res + nexp; ml.w.coefb = res + nexp + 2 * C;
        ml.g.rfcw = gres; ml.g.rfcb = gres + C * H; ml.g.rpw = gres + C * H + H; ml.g.rpb = gres + 2 * C * H + H;
        ml.g.coefw = gres + nexp; ml.g.coefb = gres + nexp + 2 * C;
    }
    const double a = 0.3;
    objective(&ml, out, x, R, B, T, a);
    int64_t dropped = ml.stats.dropped;
    size_t nk = N * (size_t)K;
    int32_t *route0 = malloc(2 * nk * sizeof(int32_t));
    memcpy(route0, ml.e_host, nk * sizeof(int32_t));
    memcpy(route0 + nk, ml.pos_host, nk * sizeof(int32_t));
    moe_backward(&ml, dx, R, x, (float)a);
    // central differences over a few entries of x, the gate, an expert and (PR-MoE) the coefficient
    struct { float *p, *g; size_t n; const char *what; } sets[] = {
        {x, dx, N * C, "x"}, {gate, ggate, (size_t)C * E, "gate"}, {xp, gx, E * nexp, "experts"},
        {res + nexp, gres + nexp, residual ? 2 * C + 2 : 0, "coefficient"}};
    double worst = 0.0;
    int tried = 0;
    for (size_t k = 0; k < sizeof sets / sizeof sets[0]; k++) {
        for (int i = 0; i < 12 && sets[k].n; i++) {
            size_t j = (size_t)rng_below(&r, sets[k].n);
            float keep = sets[k].p[j];
            const float h = 1e-2f;
            sets[k].p[j] = keep + h;
            double jp = objective(&ml, out, x, R, B, T, a);
            int same = same_route(&ml, route0, nk);
            sets[k].p[j] = keep - h;
            double jm = objective(&ml, out, x, R, B, T, a);
            same &= same_route(&ml, route0, nk);
            sets[k].p[j] = keep;
            if (!same) continue;   // a routing change: not differentiable there
            double fd = (jp - jm) / (2.0 * h), an = sets[k].g[j];
            double err = fabs(fd - an) / (fabs(fd) + fabs(an) + 1e-2);
            if (err > worst) worst = err;
            if (err > 2e-2) printf("    %s[%zu]: differences %.6g, backward %.6g\n", sets[k].what, j, fd, an);
            tried++;
        }
    }
    char what[96];
    snprintf(what, sizeof what, "%s: backward vs differences (%d entries, %lld dropped)", name, tried,
             (long long)dropped);
    check(worst < 2e-2 && tried > 20, what, worst, 0.0);
    moe_layer_free(&ml);
    free(route0);
    free(x); free(R); free(out); free(dx); free(gate); free(ggate); free(xp); free(gx); free(res); free(gres);
}

int main(void) {
    test_capacity();
    test_route();
    test_grads("top-1 with drops", 1, 0, 1.0);
    test_grads("top-2 with drops", 2, 0, 0.6);
    test_grads("top-1 no drops", 1, 0, 4.0);
    test_grads("PR-MoE residual", 1, 1, 1.0);
    printf("summary: %d failed\n", fails);
    return fails ? 1 : 0;
}
