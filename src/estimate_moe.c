// estimate_moe.c: `partita estimate` for Mixture-of-Experts decks: parameters
// (total, active per token), per-rank model states by ep and ZeRO stage, the
// all-to-all bytes of a step and the FLOPs per token of the active parameters.
//
// The counts are closed forms of the deck (no model table), so they hold for
// any layout. Model states follow zero_plan's accounting (fp32 parameters,
// gradients, AdamW m and v; stage 1 keeps the full gradient plus its owned
// reduce-scatter landing; the own shard is the ceiling of the count over the
// group), applied to two groups: the dense part over the dp*sp ranks of the
// ZeRO group, and each rank's E/ep experts of every MoE layer over the
// expert-data-parallel group of dp/ep ranks.
#include "estimate.h"

#include <math.h>
#include <stdio.h>

static double mib(double bytes) { return bytes / 1048576.0; }

// Parameters of one GPT-2 MLP (c_fc, c_proj with biases).
static double mlp_params(double C, double H) { return 2.0 * C * H + H + C; }

// Capacity per expert and row of T tokens, as moe-spec: max(min_capacity,
// ceil(k cf T / E)), at most T; T without drops.
static double capacity(const Config *c, double E, double T, double cf) {
    if (!c->moe.drop_tokens) return T;
    double cap = ceil((double)c->moe.top_k * cf * T / E);
    if (cap < (double)c->moe.min_capacity) cap = (double)c->moe.min_capacity;
    return cap < T ? cap : T;
}

// Model-state bytes of P parameters partitioned over n ranks at stage st
// (zero_plan's accounting for the largest shard).
static double states(double P, double n, int st) {
    double own = st == 0 ? P : ceil(P / n), f = 4.0;
    double params = (st == 3 ? own : P) * f;
    double grads = (st <= 1 ? P : 0.0) * f + (st >= 1 ? own : 0.0) * f;
    return params + grads + 2.0 * own * f;
}

void estimate_moe(const Config *c, int ep, MoeEstimate *e) {
    const ModelConfig *mc = &c->model;
    const double C = (double)mc->d_model, H = (double)(mc->mlp_ratio * mc->d_model), L = (double)mc->layers;
    const double Vp = (double)((mc->vocab + mc->vocab_pad - 1) / mc->vocab_pad * mc->vocab_pad);
    const double maxT = (double)mc->seq_len, k = (double)c->moe.top_k;
    const double mlp = mlp_params(C, H);
    // Dense GPT-2: wte, wpe, per layer ln_1, c_attn, attn c_proj, ln_2, the MLP; ln_f.
    const double layer = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + mlp;
    double total = Vp * C + maxT * C + L * layer + 2 * C, active = total, experts = 0.0;
    e->moe_layers = 0;
    for (int64_t l = 0; l < mc->layers; l++) {
        double El = (double)deck_moe_experts(c, l);
        if (El == 0) continue;
        e->moe_layers++;
        double shared = C * El + (c->moe.residual ? mlp + 2 * C + 2 : 0.0);   // gate, PR-MoE MLP and coefficient
        total += shared + El * mlp - mlp;
        active += shared + k * mlp - mlp;
        experts += El * mlp;
    }
    e->params_total = total;
    e->params_active = active;
    e->params_experts = experts;
    e->params_dense = total - experts;
    e->ep = ep;
    const double p = (double)(c->parallel.dp * c->parallel.sp), edp = (double)c->parallel.dp / ep;
    for (int st = 0; st < 4; st++) {
        e->dense_state[st] = states(e->params_dense, p, st);
        e->expert_state[st] = states(experts / ep, edp < 1 ? 1 : edp, st);
        e->state[st] = e->dense_state[st] + e->expert_state[st];
    }
    // All-to-all: per MoE layer and micro-step, 4 exchanges of rows (dispatch and combine in forward, their
    // gradients in backward) of C floats each, plus one exchange of E row counts (floats) in forward; a rank
    // sends what goes to the other ep-1 ranks of its group.
    const double B = (double)c->train.micro_batch, T = (double)c->train.seq_len / (double)c->parallel.sp;
    const double accum = (double)c->train.grad_accum, remote = (ep - 1.0) / ep;
    double bal = 0.0, bound = 0.0;
    for (int64_t l = 0; l < mc->layers; l++) {
        double El = (double)deck_moe_experts(c, l);
        if (El == 0 || ep == 1) continue;
        double cap = capacity(c, El, T, c->moe.capacity_factor);
        double rows_bal = B * T * k * remote;                      // balanced routing, nothing dropped
        double rows_max = B * fmin(T * k, El * remote * cap);      // every kept row remote, capacity-bound
        bal += 4.0 * rows_bal * C * 4.0 + El * remote * 4.0;
        bound += 4.0 * rows_max * C * 4.0 + El * remote * 4.0;
    }
    e->a2a_balanced = accum * bal;
    e->a2a_bound = accum * bound;
    e->flops_per_token = 6.0 * (active - maxT * C) + 12.0 * L * C * (double)c->train.seq_len;
    e->flops_per_token_total = 6.0 * (total - maxT * C) + 12.0 * L * C * (double)c->train.seq_len;
}

// The ep values a deck's layout allows: divisors of every MoE layer's experts and of dp.
static int ep_allowed(const Config *c, int ep) {
    if (c->parallel.dp % ep) return 0;
    for (int64_t l = 0; l < c->model.layers; l++) {
        int64_t El = deck_moe_experts(c, l);
        if (El && El % ep) return 0;
    }
    return 1;
}

void estimate_moe_print(const Config *c) {
    MoeEstimate e;
    const int ep = (int)c->parallel.ep;
    estimate_moe(c, ep, &e);
    printf("\nMixture of Experts: %d of %lld layers (every %lld), experts", e.moe_layers, (long long)c->model.layers,
           (long long)c->moe.every);
    for (int64_t l = 0; l < c->model.layers; l++)
        if (deck_moe_experts(c, l)) printf(" %lld", (long long)deck_moe_experts(c, l));
    printf(", top-%lld%s, ep = %d, expert-data-parallel group of %lld rank(s)\n", (long long)c->moe.top_k,
           c->moe.residual ? ", PR-MoE residual" : "", ep, (long long)(c->parallel.dp / ep));
    printf("  (the tables above count the model with every MLP dense; this section counts the experts)\n");
    printf("  parameters: %.0f total, %.0f active per token (%.1f%%); dense part %.0f, experts %.0f (%.0f per rank)\n",
           e.params_total, e.params_active, 100.0 * e.params_active / e.params_total, e.params_dense,
           e.params_experts, e.params_experts / ep);
    printf("\n  per-rank model states (MiB)          stage 0    stage 1    stage 2    stage 3\n");
    printf("  %-34s %10.1f %10.1f %10.1f %10.1f\n", "dense part (ZeRO over dp x sp)", mib(e.dense_state[0]),
           mib(e.dense_state[1]), mib(e.dense_state[2]), mib(e.dense_state[3]));
    printf("  %-34s %10.1f %10.1f %10.1f %10.1f\n", "experts (E/ep, ZeRO over dp/ep)", mib(e.expert_state[0]),
           mib(e.expert_state[1]), mib(e.expert_state[2]), mib(e.expert_state[3]));
    for (int x = 1; x <= c->parallel.dp && x <= 4096; x *= 2) {
        if (!ep_allowed(c, x)) continue;
        MoeEstimate o;
        estimate_moe(c, x, &o);
        char name[64];
        snprintf(name, sizeof name, "= model states at ep = %d%s", x, x == ep ? " (deck)" : "");
        printf("  %-34s %10.1f %10.1f %10.1f %10.1f\n", name, mib(o.state[0]), mib(o.state[1]), mib(o.state[2]),
               mib(o.state[3]));
    }
    printf("\n  all-to-all sent per step per rank (ep group): %.2f MiB with balanced routing, at most %.2f MiB\n",
           mib(e.a2a_balanced), mib(e.a2a_bound));
    printf("  FLOP per token: %.4g active (%.4g if every expert ran: x%.2f)\n", e.flops_per_token,
           e.flops_per_token_total, e.flops_per_token_total / e.flops_per_token);
    printf("moe_params_total %.0f\nmoe_params_active %.0f\nmoe_params_experts %.0f\n", e.params_total,
           e.params_active, e.params_experts);
    printf("moe_model_state_bytes %.0f %.0f %.0f %.0f\n", e.state[0], e.state[1], e.state[2], e.state[3]);
    printf("moe_all_to_all_bytes_per_step %.0f %.0f\nmoe_flops_per_token %.0f\n", e.a2a_balanced, e.a2a_bound,
           e.flops_per_token);
}
