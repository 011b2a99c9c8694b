#!/usr/bin/python3
"""MoE training (issue 13) against tests/moe_torch.py, and its layouts.

1. `partita dump` of a tiny MoE GPT (2 MoE layers of 4): loss, aux, logits and every gradient
   against the PyTorch reference, for top-1 with drops, top-2 with drops, top-1 without drops,
   and PR-MoE (residual) with a pyramid.
2. The same model trains: loss falls, run.h5 has aux_loss and moe_dropped; dp = 2 at ZeRO-3
   equals dp = 1 with grad_accum = 2 (experts replicated, ep = 1).
3. Expert parallelism: 20-step loss curves at ep = 2 (np = 2, ZeRO-0 and ZeRO-1), ep = 4 (np = 4,
   ZeRO-2) and ep = 2 x dp = 2 (np = 4, ZeRO-3) equal ep = 1 within 1e-5; run.h5 /moe_load/h.<l>
   (layout-independent, sums to top_k x kept share); weights files hold every expert.
4. All-to-all bytes in run.h5 equal `partita estimate`'s formula where routing is balanced by
   construction (2 experts, top-2, no drops, ep = 2) and stay under its bound elsewhere.
5. Checkpoints: ep = 4 -> ep = 2 -> ep = 1 (ZeRO-1, 3, 2) continues the ep = 1 loss curve; the
   export of the last one equals the run's final weights.
6. noisy_gate = jitter with PR-MoE: ep = 2 at ZeRO-3 equals ep = 1.
"""
import os

import h5py
import numpy as np

from common import moe_model, check, finish, licenses_tokens, rel_err, run, tmpdir, write_deck
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
peak_gflops = 100
{moe_model(16)}[moe]
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


# ---- 3. expert parallelism: the same curves at every layout
def series(name):
    with h5py.File(f"{d}/{name}/run.h5", "r") as f:
        m = {k: np.array(f["metrics"][k]) for k in ("loss", "moe_dropped", "comm_bytes_all_to_all")}
        m["load"] = {k: np.array(v) for k, v in f["moe_load"].items()}
    return m


def train(name, moe, np_, sets, extra=""):
    args = ["train", deck(name, moe, extra)]
    for kv in ["train.steps=20"] + sets:
        args += ["--set", kv]
    run(args, np=np_)
    return series(name)


moe = CASES["top2_drop"]
ref = train("ep1", moe, 1, ["train.grad_accum=4"])
layouts = [("ep2", 2, ["parallel.ep=2", "train.grad_accum=2"]),
           ("ep2z1", 2, ["parallel.ep=2", "train.grad_accum=2", "zero.stage=1"]),
           ("ep4z2", 4, ["parallel.ep=4", "zero.stage=2"]),
           ("ep2dp2z3", 4, ["parallel.ep=2", "zero.stage=3"])]
for name, np_, sets in layouts:
    r = train(name, moe, np_, sets)
    e = float(np.max(np.abs(r["loss"] - ref["loss"])))
    check(len(r["loss"]) == 20 and e < 1e-5, f"{name} (np = {np_}, {' '.join(sets)}): loss curve equals ep = 1",
          f"max diff {e:.1e} over {len(r['loss'])} steps")
    el = max(float(np.max(np.abs(r["load"][k] - ref["load"][k]))) for k in ref["load"])
    check(set(r["load"]) == set(ref["load"]) and el < 1e-6, f"{name}: /moe_load equals ep = 1", f"max diff {el:.1e}")
    if name == "ep2":
        with h5py.File(f"{d}/ep1/final.h5", "r") as f1, h5py.File(f"{d}/ep2/final.h5", "r") as f2:
            names = set(f1["params"])
            same = names == set(f2["params"])
            e = max(float(np.max(np.abs(np.array(f1["params"][k]) - np.array(f2["params"][k])))) for k in names)
        check(same and e < 1e-4, "ep = 2 final.h5 holds every expert, equal to ep = 1's",
              f"{len(names)} tensors, max diff {e:.1e}")
loads = ref["load"]
total = sum(v.sum(axis=1) for v in loads.values())
want = 2 * len(loads) * (1 - ref["moe_dropped"])
check(all(v.shape == (20, 4) for v in loads.values()) and np.allclose(total, want, rtol=1e-9),
      "run.h5 /moe_load: (steps, experts) per MoE layer, summing to top_k x the kept share",
      f"{sorted(loads)}, step 1 h.1 {np.round(loads['h.1'][0], 3)}")

# ---- 4. all-to-all bytes against the estimate's formula
def estimate_a2a(path, ranks):
    out = run(["estimate", path, "--ranks", str(ranks)]).stdout
    line = [ln for ln in out.splitlines() if ln.startswith("moe_all_to_all_bytes_per_step")][0]
    return [float(x) for x in line.split()[1:]]


bal = "experts = 2\ntop_k = 2\ndrop_tokens = false\naux_loss = 0.01"
r = train("a2a", bal, 2, ["parallel.ep=2"])
est = estimate_a2a(deck("a2a", bal, "[parallel]\nep = 2"), 2)
a = r["comm_bytes_all_to_all"]
# The last step also evaluates (eval_batches = 1): one forward, 2 row exchanges and the counts per layer.
C = 32
ev = 2 * (2 * B * T * 2 * C * 4 * 0.5 + 2 * 4 * 0.5)
check(np.all(a[:-1] == est[0]) and a[-1] == est[0] + ev,
      "all-to-all bytes equal the estimate (2 experts, top-2, no drops, ep = 2)",
      f"run.h5 {a[0]:.0f} per step (+{a[-1] - a[0]:.0f} at the evaluating last step, {ev:.0f} expected), "
      f"estimate {est[0]:.0f} = 2 layers x (4 x B T k C x 4 x 1/2 + E x 4 x 1/2)")
est4 = estimate_a2a(deck("a2a4", moe, "[parallel]\nep = 4"), 4)
a = series("ep4z2")["comm_bytes_all_to_all"]
a = a[:-1]      # the last step evaluates too (eval capacity)
check(np.all((a > 0) & (a <= est4[1])), "all-to-all bytes at ep = 4 stay within the estimate's capacity bound",
      f"run.h5 {a.min():.0f}..{a.max():.0f}, bound {est4[1]:.0f} (balanced without drops {est4[0]:.0f})")

# ---- 5. checkpoints across ep: 4 -> 2 -> 1
ck = f"checkpoint.dir={d}/ck"
r = run(["train", deck("ck", moe), "--set", "train.steps=20", "--set", ck, "--set", "checkpoint.interval=4",
         "--set", "parallel.ep=4", "--set", "train.stop_at=8", "--set", "zero.stage=1"], np=4)
run(["train", deck("ck", moe), "--set", "train.steps=20", "--set", ck, "--set", "checkpoint.interval=4",
     "--set", "parallel.ep=2", "--set", "train.grad_accum=2", "--set", "train.stop_at=14", "--set", "zero.stage=3"], np=2)
p = run(["train", deck("ck", moe), "--set", "train.steps=20", "--set", ck, "--set", "checkpoint.interval=4",
         "--set", "train.grad_accum=4", "--set", "zero.stage=2"], np=1)
r = series("ck")
e = float(np.max(np.abs(r["loss"] - ref["loss"])))
check("resumed from" in p.stdout + p.stderr and len(r["loss"]) == 20 and e < 1e-5,
      "checkpoint ep = 4 -> ep = 2 -> ep = 1 continues the ep = 1 loss curve", f"max diff {e:.1e} over 20 steps")
run(["ckpt", "export", f"{d}/ck/step-000020.h5", f"{d}/ck/export.h5"])
with h5py.File(f"{d}/ck/export.h5", "r") as fe, h5py.File(f"{d}/ck/final.h5", "r") as ff:
    same = set(fe["params"]) == set(ff["params"])
    e = max(float(np.max(np.abs(np.array(fe["params"][k]) - np.array(ff["params"][k])))) for k in ff["params"])
    n = len(ff["params"])
check(same and e == 0.0, "ckpt export of the MoE checkpoint equals the run's final weights",
      f"{n} tensors, max diff {e:.1e}")

# ---- 6. jitter with PR-MoE across ep
jit = "pyramid = 2,4\nresidual = true\nnoisy_gate = jitter\ncapacity_factor = 1.0\nmin_capacity = 2\naux_loss = 0.05"
j1 = train("jit1", jit, 1, ["train.grad_accum=2"])
j2 = train("jit2", jit, 2, ["parallel.ep=2", "zero.stage=3"])
e = float(np.max(np.abs(j1["loss"] - j2["loss"])))
check(e < 1e-5, "noisy_gate = jitter, PR-MoE: ep = 2 ZeRO-3 loss curve equals ep = 1", f"max diff {e:.1e} over 20 steps")
finish()
