// moe.c: gate, routing, dispatch/combine with all-to-all, experts, aux loss, PR-MoE.
#include "moe.h"
#include "log.h"
#include "rng.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { MOE_MAX_EXPERTS = 4096, RNG_MOE_JITTER = 7 };
enum { MOE_COMM_PIECES = 7, MOE_ALIGN = 64 };     // buffers in the exchanged region; floats each piece aligns to

// ---------------------------------------------------------------------------
// Spec

void moe_spec_from_config(MoeSpec *s, const Config *c) {
    memset(s, 0, sizeof *s);
    s->L = (int)c->model.layers;
    s->experts = xcalloc(sizeof(int) * (size_t)(s->L > 0 ? s->L : 1), "moe layers");
    for (int l = 0; l < s->L; l++) {
        s->experts[l] = (int)deck_moe_experts(c, l);
        if (s->experts[l] > 0) s->nmoe++;
    }
    s->residual = c->moe.residual;
    s->top_k = s->residual ? 1 : (int)c->moe.top_k;
    s->min_capacity = (int)c->moe.min_capacity;
    s->drop_tokens = c->moe.drop_tokens;
    s->jitter = c->moe.noisy_gate == MOE_GATE_JITTER;
    s->cf = c->moe.capacity_factor;
    s->eval_cf = c->moe.eval_capacity_factor;
    s->aux_w = c->moe.aux_loss;
}

void moe_spec_free(MoeSpec *s) {
    free(s->experts);
    memset(s, 0, sizeof *s);
}

int moe_capacity(const MoeSpec *s, int E, int T, int eval) {
    if (!s->drop_tokens) return T;
    double cf = eval ? s->eval_cf : s->cf;
    double want = ceil((double)s->top_k * cf * (double)T / (double)E - 1e-9);
    int cap = want > (double)T ? T : (int)want;
    if (cap < s->min_capacity) cap = s->min_capacity;
    return cap < T ? cap : T;
}

// ---------------------------------------------------------------------------
// Routing (host)

int64_t moe_route(const float *p, int B, int T, int E, int K, int cap, int32_t *e, float *w, int32_t *slot,
                  double *aux) {
    SYS_CHECK(E >= K && E <= MOE_MAX_EXPERTS, "moe_route: %d experts, top-%d", E, K);
    int cnt[MOE_MAX_EXPERTS], first[MOE_MAX_EXPERTS];
    double mean[MOE_MAX_EXPERTS];
    int64_t dropped = 0;
    for (int b = 0; b < B; b++) {
        const size_t n0 = (size_t)b * (size_t)T;
        for (int x = 0; x < E; x++) {
            cnt[x] = first[x] = 0;
            mean[x] = 0.0;
        }
        for (int t = 0; t < T; t++) {     // choices: the k largest, lowest index on ties
            const float *pr = p + (n0 + (size_t)t) * (size_t)E;
            int32_t *et = e + (n0 + (size_t)t) * (size_t)K;
            for (int k = 0; k < K; k++) {
                int best = -1;
                for (int x = 0; x < E; x++) {
                    if (k == 1 && x == et[0]) continue;
                    if (best < 0 || pr[x] > pr[best]) best = x;
                }
                et[k] = best;
            }
            first[et[0]]++;
            for (int x = 0; x < E; x++) mean[x] += pr[x];
        }
        for (int k = 0; k < K; k++) {       // slots: all first choices in position order, then the second
            for (int t = 0; t < T; t++) {
                size_t i = (n0 + (size_t)t) * (size_t)K + (size_t)k;
                int x = e[i];
                if (cnt[x] < cap) {
                    slot[i] = cnt[x]++;
                } else {
                    slot[i] = -1;
                    dropped++;
                }
            }
        }
        for (int t = 0; t < T; t++) {       // weights over the kept choices
            size_t n = n0 + (size_t)t;
            const float *pr = p + n * (size_t)E;
            double kept = 0.0;
            for (int k = 0; k < K; k++)
                if (slot[n * K + k] >= 0) kept += pr[e[n * K + k]];
            double norm = K == 1 ? 1.0 : (kept > 1e-9 ? kept : 1e-9);
            for (int k = 0; k < K; k++)
                w[n * K + k] = slot[n * K + k] >= 0 ? (float)(pr[e[n * K + k]] / norm) : 0.0f;
        }
        double l = 0.0;
        for (int x = 0; x < E; x++) l += ((double)first[x] / T) * (mean[x] / T);
        *aux += (double)E * l;
    }
    return dropped;
}

// ---------------------------------------------------------------------------
// Life cycle

static size_t rows_expert_side(const MoeSpec *s, int E, int B, int T, int ep) {
    int capT = moe_capacity(s, E, T, 0);
    int c2 = moe_capacity(s, E, T, 1);
    if (c2 > capT) capT = c2;
    size_t K = (size_t)s->top_k, El = (size_t)(E / ep);
    size_t a = (size_t)ep * (size_t)B * (size_t)T * K, b = (size_t)ep * (size_t)B * El * (size_t)capT;
    return a < b ? a : b;
}

// Floats of every backend buffer, in the order moe_layer_create takes them.
static size_t layer_floats(const MoeSpec *s, int E, int C, int H, int B, int T, int ep, size_t *R_out) {
    size_t N = (size_t)B * (size_t)T, K = (size_t)s->top_k, R = rows_expert_side(s, E, B, T, ep);
    size_t RN = R > N ? R : N;
    size_t n = 0;
    if (s->jitter) n += N * C;                          // xg
    n += N * (size_t)E + N * K;                         // logits, wdev
    n += N * K;                                         // posd (int32, same size)
    n += 2 * N * K * C;                                 // send, ybuf
    if (ep > 1) n += R * C;                             // recv
    if (ep > 1) n += R * C;                             // xe
    n += 2 * R * H;                                     // he, ge
    if (ep > 1) n += R * C;                             // ye
    n += N * (K > 2 ? K : 2);                           // dots
    n += 2 * (size_t)E;                                 // cnt_send, cnt_recv
    if (s->residual) n += 2 * N * H + 2 * N * C + 4 * N;   // hd gd yd ym cl cdev
    n += N * K * C;                                     // dsend
    if (ep > 1) n += 2 * R * C;                         // drecv, dxe
    n += 2 * RN * H + 3 * N * C;                        // dge dhe dtmp dtmp2 dtmp3 (in dtmp: 3 N C)
    n += N;                                             // ident
    n += MOE_COMM_PIECES * MOE_ALIGN;                   // alignment of the exchanged region's pieces
    if (R_out) *R_out = R;
    return n;
}

size_t moe_layer_bytes(const MoeSpec *s, int E, int C, int H, int B, int T, int ep) {
    return layer_floats(s, E, C, H, B, T, ep, NULL) * sizeof(float);
}

static float *balloc(MoeLayer *ml, size_t n, const char *what) {
    return ml->bk->alloc((n ? n : 1) * sizeof(float), what);
}

static size_t align_up(size_t n) { return (n + MOE_ALIGN - 1) / MOE_ALIGN * MOE_ALIGN; }

// The buffers the ep all-to-alls read and write, carved from one region that
// is registered with the ep communicator once (the staged path mirrors it on
// the host): counts, dispatch and combine rows, their gradients.
static void alloc_exchanged(MoeLayer *ml, size_t N, size_t R) {
    const size_t C = (size_t)ml->C, E = (size_t)ml->E, K = (size_t)ml->K;
    const int epb = ml->ep != NULL;
    size_t len[MOE_COMM_PIECES] = {E, E, N * K * C, N * K * C, N * K * C, epb ? R * C : 0, epb ? R * C : 0};
    float **dst[MOE_COMM_PIECES] = {&ml->cnt_send, &ml->cnt_recv, &ml->send, &ml->ybuf, &ml->dsend, &ml->recv,
                                    &ml->drecv};
    size_t total = 0;
    for (int i = 0; i < MOE_COMM_PIECES; i++) total += align_up(len[i]);
    ml->xbuf = balloc(ml, total, "moe exchanged rows");
    ml->xbuf_n = total;
    size_t at = 0;
    for (int i = 0; i < MOE_COMM_PIECES; i++) {
        *dst[i] = len[i] ? ml->xbuf + at : NULL;
        at += align_up(len[i]);
    }
    if (ml->ep) comm_register(ml->ep, ml->xbuf, total, "moe exchanged rows");
}

void moe_layer_create(MoeLayer *ml, const MoeSpec *s, int layer, int C, int H, int B, int T, Comm *ep,
                      const Backend *bk) {
    memset(ml, 0, sizeof *ml);
    ml->spec = s;
    ml->bk = bk;
    ml->layer = layer;
    ml->E = s->experts[layer];
    ml->ep = ep && ep->size > 1 ? ep : NULL;
    ml->ep_size = ml->ep ? ep->size : 1;
    ml->ep_rank = ml->ep ? ep->rank : 0;
    SYS_CHECK(ml->E > 0 && ml->E <= MOE_MAX_EXPERTS && ml->E % ml->ep_size == 0,
              "layer %d: %d experts over ep = %d", layer, ml->E, ml->ep_size);
    SYS_CHECK(bk->moe_dispatch && bk->moe_combine && bk->moe_rowdot,
              "the %s backend has no Mixture-of-Experts kernels; hint: train MoE models with [run] backend = cpu",
              bk->name);
    ml->El = ml->E / ml->ep_size;
    ml->e0 = ml->ep_rank * ml->El;
    ml->K = s->top_k;
    ml->C = C;
    ml->H = H;
    ml->B = B;
    ml->T = T;
    int c1 = moe_capacity(s, ml->E, T, 0), c2 = moe_capacity(s, ml->E, T, 1);
    ml->capmax = c1 > c2 ? c1 : c2;
    size_t N = (size_t)B * T, K = (size_t)ml->K, E = (size_t)ml->E, R;
    layer_floats(s, ml->E, C, H, B, T, ml->ep_size, &R);
    ml->R = R;
    size_t RN = R > N ? R : N;
    int epb = ml->ep != NULL;
    alloc_exchanged(ml, N, R);
    if (s->jitter) ml->xg = balloc(ml, N * C, "moe gate input");
    ml->logits = balloc(ml, N * E, "moe gate logits");
    ml->wdev = balloc(ml, N * K, "moe combine weights");
    ml->posd = bk->alloc(N * K * sizeof(int32_t), "moe dispatch rows");
    ml->xe = epb ? balloc(ml, R * C, "moe expert inputs") : ml->send;
    ml->he = balloc(ml, R * H, "moe expert hidden");
    ml->ge = balloc(ml, R * H, "moe expert hidden");
    ml->ye = epb ? balloc(ml, R * C, "moe expert outputs") : ml->ybuf;
    ml->dots = balloc(ml, N * (K > 2 ? K : 2), "moe dots");
    if (s->residual) {
        ml->hd = balloc(ml, N * H, "pr-moe hidden");
        ml->gd = balloc(ml, N * H, "pr-moe hidden");
        ml->yd = balloc(ml, N * C, "pr-moe dense output");
        ml->ym = balloc(ml, N * C, "pr-moe expert output");
        ml->cl = balloc(ml, N * 2, "pr-moe coefficient logits");
        ml->cdev = balloc(ml, N * 2, "pr-moe coefficients");
    }
    ml->dxe = epb ? balloc(ml, R * C, "moe expert input gradients") : ml->dsend;
    ml->dge = balloc(ml, RN * H, "moe hidden gradients");
    ml->dhe = balloc(ml, RN * H, "moe hidden gradients");
    ml->dtmp = balloc(ml, 3 * N * C, "moe gradient scratch");
    ml->dtmp2 = ml->dtmp + N * C;
    // ident: row n -> row n, for the per-token mixes of PR-MoE
    int32_t *id = xmalloc(N * sizeof(int32_t), "moe identity");
    for (size_t n = 0; n < N; n++) id[n] = (int32_t)n;
    int32_t *identd = bk->alloc(N * sizeof(int32_t), "moe identity");
    bk->from_host_i32(identd, id, N);
    free(id);
    ml->ident = identd;
    ml->p = xcalloc(N * E * sizeof(float), "moe probabilities");
    ml->xh = xcalloc(N * C * sizeof(float), "moe host rows");
    ml->u = s->jitter ? xcalloc(N * C * sizeof(float), "moe jitter") : NULL;
    ml->w_host = xcalloc(N * K * sizeof(float), "moe weights");
    ml->dw = xcalloc(N * (K > 2 ? K : 2) * sizeof(float), "moe weight gradients");
    ml->dl = xcalloc(N * (E > 2 ? E : 2) * sizeof(float), "moe logit gradients");
    ml->c_host = xcalloc(N * 2 * sizeof(float), "pr-moe coefficients");
    ml->e_host = xcalloc(N * K * sizeof(int32_t), "moe choices");
    ml->pos_host = xcalloc(N * K * sizeof(int32_t), "moe slots");
    ml->eb = xcalloc(E * (size_t)B * sizeof(size_t), "moe expert-row counts");
    ml->srows = xcalloc(E * sizeof(size_t), "moe counts");
    ml->rrows = xcalloc(E * sizeof(size_t), "moe counts");
    ml->sfl = xcalloc((size_t)ml->ep_size * sizeof(size_t), "moe counts");
    ml->rfl = xcalloc((size_t)ml->ep_size * sizeof(size_t), "moe counts");
    ml->xoff = xcalloc(((size_t)ml->El + 1) * sizeof(size_t), "moe offsets");
    ml->stats.load = xcalloc(E * sizeof(double), "moe load");
    ml->w.experts = xcalloc((size_t)ml->El * sizeof(MoeExpertW), "moe expert weights");
    ml->g.experts = xcalloc((size_t)ml->El * sizeof(MoeExpertG), "moe expert gradients");
}

void moe_layer_create_replicated(MoeLayer *ml, const MoeSpec *s, int layer, int C, int H, int N, Comm *ep,
                                 const Backend *bk) {
    moe_layer_create(ml, s, layer, C, H, N, 1, NULL, bk);
    if (!ep || ep->size == 1) return;
    SYS_CHECK(ml->E % ep->size == 0, "layer %d: %d experts over ep = %d", layer, ml->E, ep->size);
    ml->rep = ep;
    ml->El = ml->E / ep->size;
    ml->e0 = ep->rank * ml->El;
}

void moe_layer_free(MoeLayer *ml) {
    const Backend *bk = ml->bk;
    if (!bk) return;
    float *bufs[] = {ml->xbuf, ml->xg, ml->logits, ml->wdev, ml->he, ml->ge, ml->dots, ml->hd, ml->gd, ml->yd,
                     ml->ym, ml->cl, ml->cdev, ml->dge, ml->dhe, ml->dtmp};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) bk->release(bufs[i]);
    if (ml->ep) {
        bk->release(ml->xe);
        bk->release(ml->ye);
        bk->release(ml->dxe);
    }
    bk->release(ml->posd);
    bk->release(ml->ident);
    void *host[] = {ml->p, ml->xh, ml->u, ml->w_host, ml->dw, ml->dl, ml->c_host, ml->e_host, ml->pos_host,
                    ml->eb, ml->srows, ml->rrows, ml->sfl, ml->rfl, ml->xoff, ml->stats.load, ml->w.experts,
                    ml->g.experts};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    memset(ml, 0, sizeof *ml);
}

// ---------------------------------------------------------------------------
// Forward

static float jitter_u(Rng *r) { return (float)(1.0 - 1e-2 + 2e-2 * rng_uniform(r)); }

// The gate's input: x, or x * u with u drawn per (step, layer, global row, t, c).
static const float *gate_input(MoeLayer *ml, const float *x, size_t N, int eval, uint64_t seed, int64_t step,
                               uint64_t row0) {
    if (!ml->spec->jitter || eval) return x;
    const int C = ml->C, T = ml->fT;
    ml->bk->to_host(ml->xh, x, N * C);
    for (size_t n = 0; n < N; n++) {
        uint64_t row = row0 + n / (size_t)T, t = n % (size_t)T;
        Rng r = rng_stream(seed + (uint64_t)step * 0xD1B54A32D192ED03ull, RNG_MOE_JITTER,
                           ((uint64_t)ml->layer << 48) ^ row);
        rng_skip(&r, t * (uint64_t)C);
        for (int c = 0; c < C; c++) {
            float u = jitter_u(&r);
            ml->u[n * C + c] = u;
            ml->xh[n * C + c] *= u;
        }
    }
    ml->bk->from_host(ml->xg, ml->xh, N * C);
    return ml->xg;
}

static void softmax_rows(float *p, size_t N, int E) {
    for (size_t n = 0; n < N; n++) {
        float *r = p + n * (size_t)E;
        float mx = r[0];
        for (int x = 1; x < E; x++) mx = r[x] > mx ? r[x] : mx;
        double s = 0.0;
        for (int x = 0; x < E; x++) s += exp((double)r[x] - mx);
        for (int x = 0; x < E; x++) r[x] = (float)(exp((double)r[x] - mx) / s);
    }
}

// Send-order rows: [expert e (= rank e / El, held expert e % El)][row b][slot].
static void assign_rows(MoeLayer *ml, int B, int T) {
    const int E = ml->E, K = ml->K;
    size_t N = (size_t)B * T;
    memset(ml->eb, 0, (size_t)E * (size_t)B * sizeof(size_t));
    for (size_t n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            if (ml->pos_host[n * K + k] >= 0) ml->eb[(size_t)ml->e_host[n * K + k] * B + n / T]++;
    size_t at = 0;
    for (int x = 0; x < E; x++) {
        ml->srows[x] = 0;
        for (int b = 0; b < B; b++) {
            size_t c = ml->eb[(size_t)x * B + b];
            ml->eb[(size_t)x * B + b] = at;     // now the start of (expert, row)
            at += c;
            ml->srows[x] += c;
        }
    }
    ml->nrows_send = at;
    for (size_t n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            int32_t *ps = &ml->pos_host[n * K + k];
            if (*ps >= 0) *ps = (int32_t)(ml->eb[(size_t)ml->e_host[n * K + k] * B + n / T] + (size_t)*ps);
        }
}

// ep > 1: counts first (floats), then the geometry of both all-to-alls.
static void exchange_counts(MoeLayer *ml) {
    const int P = ml->ep_size, El = ml->El, C = ml->C;
    float *h = ml->dl;     // host scratch of at least E floats
    for (int x = 0; x < ml->E; x++) h[x] = (float)ml->srows[x];
    ml->bk->from_host(ml->cnt_send, h, (size_t)ml->E);
    size_t *cnt = ml->sfl;
    for (int j = 0; j < P; j++) cnt[j] = (size_t)El;
    CommReq r;
    char tag[40];
    snprintf(tag, sizeof tag, "moe counts h.%d", ml->layer);
    comm_ialltoallv(ml->ep, ml->cnt_send, cnt, ml->cnt_recv, cnt, tag, &r);
    comm_wait(ml->ep, &r);
    ml->bk->to_host(h, ml->cnt_recv, (size_t)ml->E);
    size_t total = 0;
    for (int i = 0; i < ml->E; i++) {
        SYS_CHECK(h[i] >= 0.0f && (size_t)h[i] <= ml->R, "moe layer %d: %g rows from a peer (at most %zu)",
                  ml->layer, h[i], ml->R);
        ml->rrows[i] = (size_t)h[i];      // [source j][held expert]
        total += ml->rrows[i];
    }
    SYS_CHECK(total <= ml->R, "moe layer %d: %zu rows received, buffers hold %zu", ml->layer, total, ml->R);
    ml->nrows_recv = total;
    for (int j = 0; j < P; j++) {
        ml->sfl[j] = ml->rfl[j] = 0;
        for (int le = 0; le < El; le++) {
            ml->sfl[j] += ml->srows[j * El + le] * (size_t)C;
            ml->rfl[j] += ml->rrows[j * El + le] * (size_t)C;
        }
    }
    ml->xoff[0] = 0;
    for (int le = 0; le < El; le++) {
        size_t n = 0;
        for (int j = 0; j < P; j++) n += ml->rrows[j * El + le];
        ml->xoff[le + 1] = ml->xoff[le] + n;
    }
}

// Receive order [source][held expert] <-> expert-major [held expert][source].
static void permute(MoeLayer *ml, float *dst, const float *src, int to_expert_major) {
    const int P = ml->ep_size, El = ml->El, C = ml->C;
    size_t at_recv = 0;
    for (int j = 0; j < P; j++)
        for (int le = 0; le < El; le++) {
            size_t n = ml->rrows[j * El + le], at_exp = ml->xoff[le];
            for (int jj = 0; jj < j; jj++) at_exp += ml->rrows[jj * El + le];
            if (n) {
                if (to_expert_major) ml->bk->copy(dst + at_exp * C, src + at_recv * C, n * C);
                else ml->bk->copy(dst + at_recv * C, src + at_exp * C, n * C);
            }
            at_recv += n;
        }
}

static void a2a(MoeLayer *ml, const float *send, const size_t *sc, float *recv, const size_t *rc, const char *what) {
    CommReq r;
    char tag[40];
    snprintf(tag, sizeof tag, "moe %s h.%d", what, ml->layer);
    comm_ialltoallv(ml->ep, send, sc, recv, rc, tag, &r);
    comm_wait(ml->ep, &r);
}

static void experts_forward(MoeLayer *ml) {
    const Backend *k = ml->bk;
    const int C = ml->C, H = ml->H;
    for (int le = 0; le < ml->El; le++) {
        size_t r0 = ml->xoff[le], n = ml->xoff[le + 1] - r0;
        if (!n) continue;
        const MoeExpertW *w = &ml->w.experts[le];
        k->matmul_forward(ml->he + r0 * H, ml->xe + r0 * C, w->fcw, w->fcb, n, C, H, 0);
        k->gelu_forward(ml->ge + r0 * H, ml->he + r0 * H, n * H);
        k->matmul_forward(ml->ye + r0 * C, ml->ge + r0 * H, w->pw, w->pb, n, H, C, 0);
    }
}

static void route(MoeLayer *ml, size_t N, int B, int T, int eval) {
    const int E = ml->E, K = ml->K;
    ml->bk->to_host(ml->p, ml->logits, N * E);
    softmax_rows(ml->p, N, E);
    int cap = moe_capacity(ml->spec, E, T, eval);
    double aux = 0.0;
    int64_t dropped = moe_route(ml->p, B, T, E, K, cap, ml->e_host, ml->w_host, ml->pos_host, &aux);
    ml->stats.aux = aux;
    ml->stats.choices = (int64_t)(N * (size_t)K);
    ml->stats.dropped = dropped;
    for (int x = 0; x < E; x++) ml->stats.load[x] = 0.0;
    for (size_t i = 0; i < N * (size_t)K; i++)
        if (ml->pos_host[i] >= 0) ml->stats.load[ml->e_host[i]] += 1.0;
    if (ml->rep)    // replicated batch: this rank computes only its experts' choices
        for (size_t i = 0; i < N * (size_t)K; i++)
            if (ml->e_host[i] < ml->e0 || ml->e_host[i] >= ml->e0 + ml->El) ml->pos_host[i] = -1;
    assign_rows(ml, B, T);
    ml->bk->from_host_i32(ml->posd, ml->pos_host, N * K);
    ml->bk->from_host(ml->wdev, ml->w_host, N * K);
}

// PR-MoE: the dense MLP and the coefficients, mixed with the expert output ym.
static void residual_forward(MoeLayer *ml, float *out, const float *x, size_t N) {
    const Backend *k = ml->bk;
    const int C = ml->C, H = ml->H;
    const MoeWeights *w = &ml->w;
    k->matmul_forward(ml->hd, x, w->rfcw, w->rfcb, N, C, H, 0);
    k->gelu_forward(ml->gd, ml->hd, N * H);
    k->matmul_forward(ml->yd, ml->gd, w->rpw, w->rpb, N, H, C, 0);
    k->matmul_forward(ml->cl, x, w->coefw, w->coefb, N, C, 2, 0);
    k->to_host(ml->c_host, ml->cl, N * 2);
    softmax_rows(ml->c_host, N, 2);
    float *c0 = ml->dw, *c1 = ml->dw + N;   // host scratch (N*2), split
    for (size_t n = 0; n < N; n++) {
        c0[n] = ml->c_host[2 * n];
        c1[n] = ml->c_host[2 * n + 1];
    }
    k->from_host(ml->cdev, ml->dw, 2 * N);
    k->moe_combine(out, ml->yd, ml->ident, ml->cdev, N, 1, C, 0);
    k->moe_combine(out, ml->ym, ml->ident, ml->cdev + N, N, 1, C, 1);
}

void moe_forward(MoeLayer *ml, float *out, const float *x, int B, int T, int eval, uint64_t seed, int64_t step,
                 uint64_t row0) {
    const Backend *k = ml->bk;
    const int C = ml->C, E = ml->E, K = ml->K;
    const size_t N = (size_t)B * T;
    int fits = ml->rep || ml->T == 1 ? B <= ml->B && N <= (size_t)ml->B * (size_t)ml->T : B <= ml->B && T <= ml->T;
    SYS_CHECK(fits, "moe layer %d: batch %dx%d over %dx%d", ml->layer, B, T, ml->B, ml->T);
    ml->fN = (int)N;
    ml->fB = B;
    ml->fT = T;
    ml->eval = eval;
    const float *xg = gate_input(ml, x, N, eval, seed, step, row0);
    k->matmul_forward(ml->logits, xg, ml->w.gate, NULL, N, C, E, 0);
    route(ml, N, B, T, eval);
    k->moe_dispatch(ml->send, x, ml->posd, NULL, N, K, C);
    if (ml->ep) {
        exchange_counts(ml);
        a2a(ml, ml->send, ml->sfl, ml->recv, ml->rfl, "dispatch");
        permute(ml, ml->xe, ml->recv, 1);
    } else {
        for (int le = 0; le <= ml->El; le++) {
            ml->xoff[le] = 0;
            for (int x2 = 0; x2 < le; x2++) ml->xoff[le] += ml->srows[ml->e0 + x2];
        }
    }
    experts_forward(ml);
    if (ml->ep) {
        permute(ml, ml->recv, ml->ye, 0);
        a2a(ml, ml->recv, ml->rfl, ml->ybuf, ml->sfl, "combine");
    }
    float *moe_out = ml->spec->residual ? ml->ym : out;
    k->moe_combine(moe_out, ml->ybuf, ml->posd, ml->wdev, N, K, C, 0);
    if (ml->rep) {
        char tag[40];
        snprintf(tag, sizeof tag, "moe out h.%d", ml->layer);
        comm_allreduce_sum(ml->rep, moe_out, N * (size_t)C, tag);
    }
    if (ml->spec->residual) residual_forward(ml, out, x, N);
}

// ---------------------------------------------------------------------------
// Backward

static void experts_backward(MoeLayer *ml, const float *dye) {
    const Backend *k = ml->bk;
    const int C = ml->C, H = ml->H;
    for (int le = 0; le < ml->El; le++) {
        size_t r0 = ml->xoff[le], n = ml->xoff[le + 1] - r0;
        if (!n) continue;
        const MoeExpertW *w = &ml->w.experts[le];
        const MoeExpertG *g = &ml->g.experts[le];
        k->matmul_backward(ml->dge, g->pw, g->pb, dye + r0 * C, ml->ge + r0 * H, w->pw, n, H, C, 0);
        k->gelu_backward(ml->dhe, ml->he + r0 * H, ml->dge, n * H);
        k->matmul_backward(ml->dxe + r0 * C, g->fcw, g->fcb, ml->dhe, ml->xe + r0 * C, w->fcw, n, C, H, 0);
    }
}

// d(probabilities) from d(weights) and the aux term, then d(logits) in ml->dl.
static void gate_grads(MoeLayer *ml, float aux_grad) {
    const int E = ml->E, K = ml->K, B = ml->fB, T = ml->fT;
    const size_t N = (size_t)ml->fN;
    float *dp = ml->dl;
    memset(dp, 0, N * (size_t)E * sizeof(float));
    for (size_t n = 0; n < N; n++) {
        const float *pr = ml->p + n * E;
        const float *dw = ml->dw + n * K;
        const int32_t *e = ml->e_host + n * K, *ps = ml->pos_host + n * K;
        float *d = dp + n * E;
        if (K == 1) {
            if (ps[0] >= 0) d[e[0]] += dw[0];
            continue;
        }
        double S = 0.0, sdp = 0.0;
        for (int k = 0; k < K; k++)
            if (ps[k] >= 0) S += pr[e[k]];
        int floor = !(S > 1e-9);
        double Sn = floor ? 1e-9 : S;
        for (int k = 0; k < K; k++)
            if (ps[k] >= 0) sdp += (double)dw[k] * pr[e[k]];
        for (int k = 0; k < K; k++) {
            if (ps[k] < 0) continue;
            d[e[k]] += (float)(dw[k] / Sn - (floor ? 0.0 : sdp / (S * S)));
        }
    }
    if (aux_grad != 0.0f) {
        int first[MOE_MAX_EXPERTS];
        for (int b = 0; b < B; b++) {
            for (int x = 0; x < E; x++) first[x] = 0;
            for (int t = 0; t < T; t++) first[ml->e_host[((size_t)b * T + t) * K]]++;
            for (int t = 0; t < T; t++) {
                float *d = dp + ((size_t)b * T + t) * E;
                for (int x = 0; x < E; x++) d[x] += aux_grad * (float)E * ((float)first[x] / T) / (float)T;
            }
        }
    }
    for (size_t n = 0; n < N; n++) {    // softmax backward, in place
        const float *pr = ml->p + n * E;
        float *d = dp + n * E;
        double s = 0.0;
        for (int x = 0; x < E; x++) s += (double)pr[x] * d[x];
        for (int x = 0; x < E; x++) d[x] = (float)(pr[x] * (d[x] - s));
    }
}

// PR-MoE: d(coefficient logits), the dense MLP's backward; leaves d(expert
// output) in dtmp, d(x) of the dense MLP in dtmp3 and of the coefficients in dtmp2.
static void residual_backward(MoeLayer *ml, const float *dout, const float *x) {
    const Backend *k = ml->bk;
    const int C = ml->C, H = ml->H;
    const size_t N = (size_t)ml->fN;
    float *dtmp3 = ml->dtmp + 2 * N * C;
    const MoeWeights *w = &ml->w;
    const MoeGrads *g = &ml->g;
    k->moe_rowdot(ml->dots, dout, ml->yd, NULL, N, 1, C);
    k->moe_rowdot(ml->dots + N, dout, ml->ym, NULL, N, 1, C);
    float *dc = ml->dw;     // host (2N): dc0 then dc1
    k->to_host(dc, ml->dots, 2 * N);
    k->moe_combine(ml->dtmp, dout, ml->ident, ml->cdev + N, N, 1, C, 0);    // d(ym) = c1 dout
    k->moe_combine(ml->dtmp2, dout, ml->ident, ml->cdev, N, 1, C, 0);       // d(yd) = c0 dout
    k->matmul_backward(ml->dge, g->rpw, g->rpb, ml->dtmp2, ml->gd, w->rpw, N, H, C, 0);
    k->gelu_backward(ml->dhe, ml->hd, ml->dge, N * H);
    k->matmul_backward(dtmp3, g->rfcw, g->rfcb, ml->dhe, x, w->rfcw, N, C, H, 0);
    float *dl = ml->dl;     // host (N*2), interleaved like the logits
    for (size_t n = 0; n < N; n++) {
        double c0 = ml->c_host[2 * n], c1 = ml->c_host[2 * n + 1], d0 = dc[n], d1 = dc[N + n];
        double s = c0 * d0 + c1 * d1;
        dl[2 * n] = (float)(c0 * (d0 - s));
        dl[2 * n + 1] = (float)(c1 * (d1 - s));
    }
    k->from_host(ml->cl, dl, 2 * N);
    k->matmul_backward(ml->dtmp2, g->coefw, g->coefb, ml->cl, x, w->coefw, N, C, 2, 0);
}

void moe_backward(MoeLayer *ml, float *dx, const float *dout, const float *x, float aux_grad) {
    const Backend *k = ml->bk;
    const int C = ml->C, E = ml->E, K = ml->K;
    const size_t N = (size_t)ml->fN;
    const float *dmoe = dout;
    if (ml->spec->residual) {
        residual_backward(ml, dout, x);
        dmoe = ml->dtmp;
    }
    // combine: d(expert outputs) = w d(out) at each kept slot; d(w) = d(out) . y
    k->moe_dispatch(ml->dsend, dmoe, ml->posd, ml->wdev, N, K, C);
    k->moe_rowdot(ml->dots, dmoe, ml->ybuf, ml->posd, N, K, C);
    k->to_host(ml->dw, ml->dots, N * K);
    const float *dye = ml->dsend;
    if (ml->ep) {
        a2a(ml, ml->dsend, ml->sfl, ml->drecv, ml->rfl, "d combine");
        permute(ml, ml->dxe, ml->drecv, 1);   // dxe holds d(ye) until experts_backward reads it ...
        k->copy(ml->drecv, ml->dxe, ml->nrows_recv * C);
        dye = ml->drecv;                      // ... from here, expert-major
    }
    experts_backward(ml, dye);
    const float *dsent = ml->dxe;             // d(dispatched rows), send order
    if (ml->ep) {
        permute(ml, ml->drecv, ml->dxe, 0);
        a2a(ml, ml->drecv, ml->rfl, ml->dsend, ml->sfl, "d dispatch");
        dsent = ml->dsend;
    }
    k->moe_combine(dx, dsent, ml->posd, NULL, N, K, C, 0);
    // gate
    gate_grads(ml, aux_grad);
    k->from_host(ml->logits, ml->dl, N * E);
    const float *xg = ml->xg && !ml->eval ? ml->xg : x;
    float *dxg = ml->dtmp;    // free now (PR-MoE's d(ym) is consumed)
    k->matmul_backward(dxg, ml->g.gate, NULL, ml->logits, xg, ml->w.gate, N, C, E, 0);
    if (ml->u && !ml->eval) {
        k->to_host(ml->xh, dxg, N * C);
        for (size_t i = 0; i < N * C; i++) ml->xh[i] *= ml->u[i];
        k->from_host(dxg, ml->xh, N * C);
    }
    k->axpy(dx, dxg, 1.0f, N * C);
    if (ml->spec->residual) {
        k->axpy(dx, ml->dtmp + 2 * N * C, 1.0f, N * C);
        k->axpy(dx, ml->dtmp2, 1.0f, N * C);
    }
}
