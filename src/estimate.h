// estimate.h: `partita estimate DECK --ranks N`: the memory, communication and
// compute plan of a run, for every ZeRO stage, without running it; with
// sequence parallelism, the activations, all-to-all traffic and the longest
// sequence that fits `--mem-per-rank SIZE` (e.g. 4G), recompute on and off.
#ifndef PARTITA_ESTIMATE_H
#define PARTITA_ESTIMATE_H

#include "deck.h"

// mem_per_rank: bytes the "longest T" lines fit in; <= 0: 4 GiB.
int estimate_run(const Deck *d, int ranks, double mem_per_rank);

// Mixture of Experts (estimate_moe.c): closed forms of the deck, any layout.
// All-to-all bytes a rank sends per step over its ep group (recompute = none):
//   accum x sum over MoE layers l of (ep-1)/ep x (4 x R_l x C x 4 + E_l x 4)
// (4 row exchanges of C floats: dispatch, combine, and their gradients; one
// exchange of E_l float row counts), R_l = B x T x top_k rows per micro-step
// with balanced routing; the bound replaces (ep-1)/ep x R_l by
// B x min(T x k, E_l x (ep-1)/ep x cap_l) (every kept row remote, at most the
// capacity of the remote experts), cap_l the training capacity.
typedef struct MoeEstimate {
    int moe_layers, ep;
    double params_total, params_active, params_dense, params_experts;
    double dense_state[4], expert_state[4], state[4];   // per-rank model-state bytes by ZeRO stage
    double a2a_balanced, a2a_bound;                     // all-to-all bytes per step per rank
    double flops_per_token, flops_per_token_total;      // active parameters; every expert
} MoeEstimate;
void estimate_moe(const Config *c, int ep, MoeEstimate *e);
// The MoE section of `partita estimate` (and its machine-readable lines).
void estimate_moe_print(const Config *c);

#endif
