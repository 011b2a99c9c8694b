#!/usr/bin/python3
"""MoE training (issue 13) against tests/moe_torch.py, and its layouts.

1. `partita dump` of a tiny MoE GPT (2 MoE layers of 4): loss, aux, logits and every gradient
   against the PyTorch reference, for top-1 with drops, top-2 with drops, top-1 without drops,
   and PR-MoE (residual) with a pyramid.
2. The same model trains: loss falls, run.h5 has aux_loss and moe_dropped; dp = 2 at ZeRO-3
   equals dp = 1 with grad_accum = 2 (experts replicated, ep = 1).
"""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, rel_err, run, tmpdir, write_deck
from moe_torch import MoeCfg, reference

d = tmpdir("moe")
tok = licenses_tokens(d)
B, T = 3, 16


def deck(name, moe, extra=""):
    return write_deck(os.path.join(d, name + ".deck"), f"""
[run]
name = {name}
out_dir = {d}/{name}
seed = 7
[model]
vocab = 257
vocab_pad = 64
layers = 4
d_model = 32
heads = 4
seq_len = 16
[moe]
{moe}
[data]
train = {tok}
val_fraction = 0.1
order = sequential
[train]
steps = 8
seq_len = {T}
micro_batch = {B}
log_interval = 1
eval_interval = 0
eval_batches = 1
{extra}
[optimizer]
lr = 3e-3
warmup = 2
""")


CASES = {
    "top1_drop": "experts = 4\ntop_k = 1\ncapacity_factor = 1.0\nmin_capacity = 2\naux_loss = 0.1",
    "top2_drop": "experts = 4\ntop_k = 2\ncapacity_factor = 0.5\nmin_capacity = 2\naux_loss = 0.1",
    "top1_nodrop": "experts = 4\ntop_k = 1\ndrop_tokens = false\naux_loss = 0.01",
    "prmoe": "pyramid = 2,4\nresidual = true\ncapacity_factor = 1.0\nmin_capacity = 2\naux_loss = 0.05",
}

for name, moe in CASES.items():
    path = deck(name, moe)
    out = os.path.join(d, name + ".h5")
    run(["dump", path, out])
    cfg = MoeCfg.from_deck_text(open(path).read())
    with h5py.File(out, "r") as f:
        w = {k: np.array(f["params"][k]) for k in f["params"]}
        idx, tgt = np.array(f["inputs"]), np.array(f["targets"])
        logits, loss, aux = np.array(f["logits"]), float(f.attrs["loss"]), float(f.attrs["aux"])
        grads = {k: np.array(f["grads"][k]) for k in f["grads"]}
    r = reference(w, idx, tgt, cfg)
    dropped = sum(s["dropped"] for s in r["stats"].values())
    e = abs(loss - r["lm_loss"]) / abs(r["lm_loss"])
    check(e < 1e-5, f"{name}: loss matches moe_torch", f"partita {loss:.7f} torch {r['lm_loss']:.7f} rel {e:.1e}; "
          f"{dropped} choices dropped")
    e = abs(aux - r["aux"]) / abs(r["aux"])
    check(e < 1e-5, f"{name}: aux matches", f"partita {aux:.7f} torch {r['aux']:.7f} rel {e:.1e}")
    V = logits.shape[-1]
    e = rel_err(logits, r["logits"][..., :V])
    check(e < 1e-5, f"{name}: logits match", f"rel {e:.1e}")
    worst = ("", 0.0)
    for k, g in r["grads"].items():
        ek = rel_err(grads[k], g) if np.abs(g).max() > 0 else float(np.abs(grads[k]).max())
        if ek > worst[1]:
            worst = (k, ek)
    check(set(grads) == set(r["grads"]), f"{name}: the same {len(grads)} tensors")
    check(worst[1] < 1e-5, f"{name}: every gradient matches", f"worst {worst[0]} rel {worst[1]:.1e} (tol 1e-5)")
    if name in ("top1_drop", "top2_drop"):
        check(dropped > 0, f"{name}: the case drops tokens", f"{dropped}")
    if name == "top1_nodrop":
        check(dropped == 0, f"{name}: nothing dropped")

# ---- 2. training, and dp = 2 ZeRO-3 against dp = 1
moe = CASES["top2_drop"]
run(["train", deck("train1", moe, "grad_accum = 2")], np=1)
run(["train", deck("train2", moe, "grad_accum = 1\n[zero]\nstage = 3")], np=2)
with h5py.File(f"{d}/train1/run.h5", "r") as f:
    l1, a1, dr1 = (np.array(f["metrics"][k]) for k in ("loss", "aux_loss", "moe_dropped"))
with h5py.File(f"{d}/train2/run.h5", "r") as f:
    l2 = np.array(f["metrics/loss"])
check(l1[-1] < l1[0], "MoE training lowers the loss", f"{l1[0]:.4f} -> {l1[-1]:.4f}")
check(np.all(np.isfinite(a1)) and np.all((dr1 > 0) & (dr1 < 1)), "run.h5 aux_loss and moe_dropped",
      f"aux {a1[0]:.4f}..{a1[-1]:.4f}, dropped {dr1.min():.3f}..{dr1.max():.3f}")
e = float(np.max(np.abs(l1 - l2)))
check(e < 1e-5, "dp = 2 ZeRO-3 loss curve equals dp = 1", f"max diff {e:.1e} over {len(l1)} steps")
finish()
