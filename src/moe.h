// moe.h: Mixture-of-Experts layers (GShard / DeepSpeed-MoE), training side.
//
// One MoE layer replaces a GPT-2 MLP: x (the ln_2 output) -> gate (linear,
// softmax in fp32) -> top-1 or top-2 choices -> capacity per expert and
// sequence row -> a token -> (expert, slot) table -> dispatch (rows gathered
// into per-expert buffers, sent to the rank that holds the expert by an
// all-to-all over the ep group) -> expert MLPs -> back by a second all-to-all
// -> combine (weighted scatter-add) -> out. PR-MoE (residual) adds a dense MLP
// mixed with the expert output by a learned per-token 2-way softmax.
//
// Where decisions are made: routing (choices, capacity, drops, slots) runs on
// the host of the rank that holds the token's row, from the gate's
// probabilities, before any exchange. The capacity group is one sequence row,
// so the decisions depend on nothing but the row: any dp, ep or accumulation
// layout drops the same tokens.
//
// Buffers are sized at create for the worst case (the capacity bound); the
// step loop allocates nothing. The row moves run through the Backend's moe_*
// kernels, the products through its matmul/gelu kernels, so on the cuda
// backend everything but the host parts above (softmax and routing, the gate's
// softmax backward, PR-MoE's coefficient softmax, jitter factors) stays on the
// device; those move through the Backend's copies (a few per layer and pass).
#ifndef PARTITA_MOE_H
#define PARTITA_MOE_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "comm.h"
#include "deck.h"

// The MoE shape of a model (from the deck's [moe] section).
typedef struct MoeSpec {
    int L;                  // model layers
    int *experts;           // (L) experts of layer l; 0 = a dense MLP
    int nmoe;               // MoE layers
    int top_k;              // 1 or 2 (residual forces 1)
    int min_capacity;
    int drop_tokens;
    int jitter;             // multiplicative jitter on the gate input (training only)
    int residual;           // PR-MoE
    double cf, eval_cf;     // capacity factors: training, eval
    double aux_w;           // weight of the load-balancing loss in the objective
} MoeSpec;

// From a validated config (c->moe, deck_moe_experts); nmoe = 0 without MoE.
void moe_spec_from_config(MoeSpec *s, const Config *c);
void moe_spec_free(MoeSpec *s);
// Capacity per expert and row of T tokens: max(min_capacity, ceil(k cf T / E)),
// at most T; T when tokens are never dropped.
int moe_capacity(const MoeSpec *s, int E, int T, int eval);

// One expert's MLP (GPT-2 shapes, Conv1D layout (in, out)).
typedef struct MoeExpertW {
    const float *fcw, *fcb, *pw, *pb;   // (C,H) (H) (H,C) (C)
} MoeExpertW;
typedef struct MoeExpertG {
    float *fcw, *fcb, *pw, *pb;
} MoeExpertG;

// A layer's parameters and their gradients as the caller holds them for one
// pass (set before moe_forward / moe_backward). Experts: the El held here.
typedef struct MoeWeights {
    const float *gate;                  // (C, E)
    const float *rfcw, *rfcb, *rpw, *rpb;   // PR-MoE residual MLP
    const float *coefw, *coefb;         // PR-MoE (C, 2) (2)
    MoeExpertW *experts;                // (El)
} MoeWeights;
typedef struct MoeGrads {
    float *gate, *rfcw, *rfcb, *rpw, *rpb, *coefw, *coefb;
    MoeExpertG *experts;                // (El)
} MoeGrads;

// Per-forward statistics of a layer (this rank's rows).
typedef struct MoeStats {
    double aux;             // sum over the rows of E sum_e f_e P_e
    int64_t choices;        // routing choices made (tokens x k)
    int64_t dropped;        // of them dropped by capacity
    double *load;           // (E) kept choices routed to each expert
} MoeStats;

typedef struct MoeLayer {
    const MoeSpec *spec;
    const Backend *bk;
    int layer;              // model layer index
    int E, El, e0;          // experts, held here, first held
    int K, C, H, B, T;      // choices per token; shapes; the largest batch
    Comm *ep;               // expert-parallel group (NULL or size 1: none)
    int ep_size, ep_rank;
    Comm *rep;              // generation: the ep group over which the batch is replicated (NULL: none)
    size_t R;               // rows of the expert-side buffers (worst case)
    int capmax;             // the larger capacity (train, eval)
    MoeWeights w;
    MoeGrads g;
    // the last forward
    int fN, fB, fT, eval;
    size_t nrows_send, nrows_recv;
    // backend buffers
    float *xg;              // (N, C) jittered gate input (jitter only)
    float *logits;          // (N, E), then d(logits) in backward
    float *wdev;            // (N*K) combine weights
    int32_t *posd;          // (N*K) dispatch rows
    float *xbuf;            // the region the ep all-to-alls touch (one comm registration):
    size_t xbuf_n;          //   cnt_send, cnt_recv, send, ybuf, dsend, recv, drecv live in it
    float *send, *ybuf;     // (N*K, C) dispatched inputs / returned outputs, send order
    float *recv;            // (R, C) received (ep > 1), then returned outputs in receive order
    float *xe, *he, *ge, *ye;   // expert-major: (R,C) (R,H) (R,H) (R,C)
    float *dots;            // (N*K) or (N*2)
    float *cnt_send, *cnt_recv; // (ep*El) row counts exchanged before the rows
    // PR-MoE
    float *hd, *gd, *yd, *ym, *cl, *cdev;   // (N,H) (N,H) (N,C) (N,C) (N,2) (N*2)
    // backward scratch
    float *dsend, *drecv, *dxe, *dhe, *dge;
    float *dtmp, *dtmp2;    // (3 N C) scratch and its second third
    int32_t *ident;         // (N) row n -> row n
    // host
    float *p;               // (N, E) probabilities
    float *xh;              // (N, C) host rows (jitter)
    float *u;               // (N, C) jitter factors
    float *w_host;          // (N*K)
    float *dw, *dl;         // (N*K) d(weights); (N, E) d(logits)
    float *c_host;          // (N*2) PR-MoE coefficients
    int32_t *e_host;        // (N*K) chosen experts
    int32_t *pos_host;      // (N*K)
    size_t *eb;             // (E, B) first send row of each (expert, row)
    size_t *srows, *rrows;  // (ep*El) rows to / from each (rank, held expert) pair, this forward
    size_t *sfl, *rfl;      // (ep) floats per rank
    size_t *xoff;           // (El+1) expert-major row offsets
    MoeStats stats;
} MoeLayer;

// A layer of E experts, El = E/ep of them held here (experts [ep_rank*El, ...)),
// for passes of up to B x T tokens.
void moe_layer_create(MoeLayer *ml, const MoeSpec *s, int layer, int C, int H, int B, int T, Comm *ep,
                      const Backend *bk);
// Generation: the batch replicated on every rank of the ep group (as with tp):
// every rank routes every token, runs its El = E/ep held experts (experts
// [ep_rank*El, ...)) on the tokens routed to them, and an all-reduce over the
// group sums the outputs (before PR-MoE's mix). Passes of up to N tokens, in
// any grouping of B rows of T (B*T <= N; the capacity group is a row).
void moe_layer_create_replicated(MoeLayer *ml, const MoeSpec *s, int layer, int C, int H, int N, Comm *ep,
                                 const Backend *bk);
void moe_layer_free(MoeLayer *ml);
// Bytes moe_layer_create allocates on the backend.
size_t moe_layer_bytes(const MoeSpec *s, int E, int C, int H, int B, int T, int ep);

// Forward of N = B*T rows of x into out (overwritten). eval: eval capacity,
// no jitter. Jitter draws are keyed by (seed, step, layer, row0 + b, t, c),
// row0 the global index of the first row. Every rank of the ep group calls it.
void moe_forward(MoeLayer *ml, float *out, const float *x, int B, int T, int eval, uint64_t seed, int64_t step,
                 uint64_t row0);
// Backward of the last forward: dx (overwritten) from dout; parameter gradients
// accumulate into ml->g. aux_grad: d(objective)/d(l_row) for each row's aux term.
void moe_backward(MoeLayer *ml, float *dx, const float *dout, const float *x, float aux_grad);

// Host-side routing of one pass (exposed for the unit test): from the
// probabilities p (N, E), fills e (N*K), w (N*K) and the per-row slot of each
// kept choice in slot (N*K, -1 dropped); returns the dropped choices and adds
// the rows' aux terms into *aux.
int64_t moe_route(const float *p, int B, int T, int E, int K, int cap, int32_t *e, float *w, int32_t *slot,
                  double *aux);

#endif
