#!/usr/bin/python3
"""`partita estimate` for MoE decks against hand formulas (issue 13).

- parameters: the total is the sum of the sizes of every tensor of the MoE GPT under its global names
  (enumerated by tests/moe_torch.py's init_weights, a separate count from the C one); active per token
  replaces each MoE layer's E experts by its top_k;
- per-rank model states by ZeRO stage: fp32 params, grads, AdamW m and v as zero_plan counts them, the
  dense part over dp*sp ranks and E/ep experts of each MoE layer over dp/ep ranks;
- all-to-all bytes per step per rank: accum * sum_l (ep-1)/ep * (4 * B*T*k * C * 4 + E_l * 4);
- FLOPs per token: 6 * (active - wpe) + 12 * L * C * T.
"""
import math
import os

from common import check, finish, run, tmpdir, write_deck
from moe_torch import MoeCfg, init_weights

d = tmpdir("estimate-moe")


def estimate(text, ranks):
    deck = write_deck(os.path.join(d, "m.deck"), text)
    p = run(["estimate", deck, "--ranks", str(ranks)])
    out = {}
    for line in p.stdout.splitlines():
        if line.startswith("moe_"):
            k, *v = line.split()
            out[k] = [float(x) for x in v]
    return out, p.stdout


def states(P, n, st):
    own = P if st == 0 else math.ceil(P / n)
    params = own if st == 3 else P
    grads = (P if st <= 1 else 0) + (own if st >= 1 else 0)
    return 4 * (params + grads + 2 * own)


CASES = [
    # name, layers, C, T, B, accum, experts, pyramid, top_k, residual, ep, ranks
    ("MoE-8 top-1 ep 2", 6, 32, 16, 2, 1, 8, [], 1, False, 2, 4),
    ("top-2 ep 4 accum 2", 4, 32, 16, 3, 2, 4, [], 2, False, 4, 4),
    ("PR-MoE pyramid 2,4 ep 2", 4, 32, 16, 2, 1, 0, [2, 4], 1, True, 2, 2),
]
for name, L, C, T, B, accum, E, pyr, k, res, ep, ranks in CASES:
    text = f"""
[model]
vocab = 257
vocab_pad = 64
layers = {L}
d_model = {C}
heads = 4
seq_len = {T}
[train]
micro_batch = {B}
grad_accum = {accum}
[moe]
experts = {E}
pyramid = "{','.join(map(str, pyr))}"
top_k = {k}
residual = {'true' if res else 'false'}
[parallel]
ep = {ep}
"""
    got, text_out = estimate(text, ranks)
    cfg = MoeCfg(layers=L, heads=4, vocab=257, experts=E or max(pyr), pyramid=pyr, top_k=k, residual=res)
    w = init_weights(cfg, C, T, vocab_pad=320)
    total = sum(a.size for a in w.values())
    mlp = 2 * C * 4 * C + 4 * C + C
    nE = [cfg.experts_of(l) for l in range(L)]
    experts = sum(n * mlp for n in nE)
    active = total - sum((n - k) * mlp for n in nE if n)
    check(got.get("moe_params_total") == [total] and got.get("moe_params_active") == [active] and
          got.get("moe_params_experts") == [experts],
          f"{name}: parameters total {total}, active {active}, experts {experts}",
          f"got {got.get('moe_params_total')}, {got.get('moe_params_active')}, {got.get('moe_params_experts')}")
    dp = ranks
    want = [states(total - experts, dp, st) + states(experts // ep, dp // ep, st) for st in range(4)]
    check(got.get("moe_model_state_bytes") == want, f"{name}: model states per rank by stage {want}",
          f"got {got.get('moe_model_state_bytes')}")
    a2a = accum * sum((ep - 1) / ep * (4 * B * T * k * C * 4 + n * 4) for n in nE if n)
    check(abs(got["moe_all_to_all_bytes_per_step"][0] - a2a) < 1, f"{name}: all-to-all {a2a:.0f} bytes per step",
          f"got {got['moe_all_to_all_bytes_per_step']}")
    fl = 6 * (active - T * C) + 12 * L * C * T
    check(got.get("moe_flops_per_token") == [fl], f"{name}: {fl} FLOP per token (active)",
          f"got {got.get('moe_flops_per_token')}")

got, out = estimate("[model]\nlayers = 2\n", 1)
check(not got and "Mixture of Experts" not in out, "a dense deck prints no MoE section")
finish()
