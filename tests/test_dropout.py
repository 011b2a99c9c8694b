#!/usr/bin/python3
"""[model] dropout: GPT-2's sites, counter-based masks, layouts, PyTorch.

1. `partita dump` at dropout = 0.1 (one training forward and backward): a GPT-2
   in PyTorch whose masks are drawn here from the documented formula (the hash
   below, written from kernels.h's comment) gives the same loss, logits and
   every gradient to 1e-5; without the masks it does not (the test can fail).
2. 10 training steps at dropout = 0.1 give the same losses (1e-5 relative, the
   tolerance of the other layout tests: only fp32 sum orders differ) at dp = 2,
   ZeRO-3, grad_accum 2, sp = 2 and recompute = layer as at np = 1; each curve
   is further from the dropout = 0 curve than that, so the masks are in play.
   An MoE model too, at dp = 2.
3. dropout = 0 gives the losses of a deck without the key, bit for bit.
4. Evaluation never drops: the trainer's initial val loss and `partita eval`
   through the training forward (generate.naive) equal those of dropout = 0
   (the inference model has no dropout at all: model_create_infer).
"""
import math
import os
import re

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from common import check, finish, licenses_tokens, rel_err, run, tmpdir, write_deck
from gpt_torch import load_params, loss_of

torch.set_num_threads(1)
d = tmpdir("dropout")
tok = licenses_tokens(d)
P = 0.1
SEED = 42

# ---- the mask, from the formula (kernels.h: Dropout)
M64 = (1 << 64) - 1
G1, G2 = 0x9E3779B97F4A7C15, 0xD1B54A32D192ED03
EMBED, ATTN, ATTN_RESID, MLP_RESID = 0, 1, 2, 3


def mix(z):
    """splitmix64's finalizer on numpy uint64 (wrapping) or a Python int."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def site_key(seed, step, layer, site):
    h = mix(seed ^ 0xD2B74407B1CE6E93)
    h = mix((h + step * G1) & M64)
    return mix((h + 4 * (layer + 1) + site) & M64)


def keep_scale(p, key, rows, elems):
    """keep * scale (float32) of elements elems (any shape) of each global row in rows."""
    pf = float(np.float32(p))
    thr = min(int(pf * 4294967296.0), 4294967295)
    scale = np.float32(1.0 / (1.0 - pf))
    rk = np.array([mix((key + r * G1) & M64) for r in rows], dtype=np.uint64)
    with np.errstate(over="ignore"):
        e = elems.astype(np.uint64) * np.uint64(G2)
        bits = mix(rk.reshape((-1,) + (1,) * elems.ndim) ^ e[None]) >> np.uint64(32)
    return np.where(bits >= np.uint64(thr), scale, np.float32(0.0)).astype(np.float32)


def hidden_mask(p, seed, step, layer, site, B, T, C, row0=0):
    e = np.arange(T, dtype=np.uint64)[:, None] * np.uint64(C) + np.arange(C, dtype=np.uint64)[None, :]
    return torch.tensor(keep_scale(p, site_key(seed, step, layer, site), range(row0, row0 + B), e))


def attn_mask(p, seed, step, layer, B, NH, T, row0=0):
    h = np.arange(NH, dtype=np.uint64)[:, None, None]
    i = np.arange(T, dtype=np.uint64)[None, :, None]
    j = np.arange(T, dtype=np.uint64)[None, None, :]
    e = (h * np.uint64(T) + i) * np.uint64(T) + j
    return torch.tensor(keep_scale(p, site_key(seed, step, layer, ATTN), range(row0, row0 + B), e))


def gpt_forward_dropout(p, idx, L, NH, V, drop):
    """gpt_torch.gpt_forward with GPT-2's dropout sites; drop(layer, site) gives keep*scale or None."""
    Bq, Tq = idx.shape
    x = p["wte.weight"][idx] + p["wpe.weight"][:Tq]
    C = x.shape[-1]
    HS = C // NH

    def dr(t, layer, site):
        m = drop(layer, site)
        return t if m is None else t * m

    x = dr(x, -1, EMBED)
    causal = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    for l in range(L):
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_1.weight"], p[f"h.{l}.ln_1.bias"], eps=1e-5)
        qkv = h @ p[f"h.{l}.attn.c_attn.weight"] + p[f"h.{l}.attn.c_attn.bias"]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(Bq, Tq, NH, HS).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        att = dr(att.masked_fill(~causal, float("-inf")).softmax(dim=-1), l, ATTN)
        y = (att @ v).transpose(1, 2).reshape(Bq, Tq, C)
        x = x + dr(y @ p[f"h.{l}.attn.c_proj.weight"] + p[f"h.{l}.attn.c_proj.bias"], l, ATTN_RESID)
        h = F.layer_norm(x, (C,), p[f"h.{l}.ln_2.weight"], p[f"h.{l}.ln_2.bias"], eps=1e-5)
        h = F.gelu(h @ p[f"h.{l}.mlp.c_fc.weight"] + p[f"h.{l}.mlp.c_fc.bias"], approximate="tanh")
        x = x + dr(h @ p[f"h.{l}.mlp.c_proj.weight"] + p[f"h.{l}.mlp.c_proj.bias"], l, MLP_RESID)
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    return x @ p["wte.weight"].T


# ---- 1. one training forward and backward against PyTorch with the same masks
B, T = 3, 37
ref_deck = write_deck(os.path.join(d, "ref.deck"), f"""
[run]
seed = {SEED}
[model]
vocab = 257
vocab_pad = 64
layers = 2
d_model = 48
heads = 4
seq_len = 40
dropout = {P}
[data]
train = {tok}
order = sequential
[train]
steps = 1
seq_len = {T}
micro_batch = {B}
grad_accum = 1
eval_interval = 0
""")
run(["dump", ref_deck, os.path.join(d, "dump.h5")])
with h5py.File(os.path.join(d, "dump.h5"), "r") as f:
    L, NH, V = int(f.attrs["n_layer"]), int(f.attrs["n_head"]), int(f.attrs["vocab_size"])
    params = load_params(f["params"])
    idx = torch.tensor(np.array(f["inputs"]), dtype=torch.long)
    tgt = torch.tensor(np.array(f["targets"]), dtype=torch.long)
    ref_logits = np.array(f["logits"])
    ref_loss = float(f.attrs["loss"])
    ref_grads = {k: np.array(f["grads"][k]) for k in f["grads"]}
C = params["wte.weight"].shape[1]


def masks(layer, site):     # the dump: step 0, rows 0..B-1
    if site == ATTN:
        return attn_mask(P, SEED, 0, layer, B, NH, T)
    return hidden_mask(P, SEED, 0, layer, site, B, T, C)


drop_frac = float((masks(0, MLP_RESID) == 0).float().mean())
check(abs(drop_frac - P) < 0.02, "the Python masks drop about p of the elements", f"{drop_frac:.4f}")
logits = gpt_forward_dropout(params, idx, L, NH, V, masks)
loss = loss_of(logits, tgt, V)
loss.backward()
check(abs(loss.item() - ref_loss) <= 1e-5 * abs(ref_loss), "dropout 0.1: loss equals PyTorch's with the same masks",
      f"{ref_loss:.7f} vs {loss.item():.7f}")
e = rel_err(ref_logits, logits.detach().numpy())
check(e < 1e-5, "dropout 0.1: logits equal PyTorch's", f"rel {e:.1e}")
worst, worst_name = 0.0, ""
for name, g in ref_grads.items():
    tg = params[name].grad
    err = rel_err(g, tg.numpy()) if tg is not None else 1.0
    if err > worst:
        worst, worst_name = err, name
check(set(ref_grads) == set(params) and worst < 1e-5, "dropout 0.1: every gradient equals PyTorch's",
      f"worst {worst_name} rel {worst:.1e} over {len(ref_grads)} tensors")
with torch.no_grad():
    plain = loss_of(gpt_forward_dropout(params, idx, L, NH, V, lambda l, s: None), tgt, V).item()
check(abs(plain - ref_loss) > 100e-5 * abs(ref_loss), "without the masks PyTorch's loss differs (the masks matter)",
      f"{plain:.6f} vs {ref_loss:.6f}")
C_grads = {k: torch.tensor(v) for k, v in ref_grads.items()}
for site, name in ((EMBED, "embeddings"), (ATTN, "attention probabilities"), (ATTN_RESID, "attn c_proj"),
                   (MLP_RESID, "mlp c_proj")):
    # every site is live: PyTorch without that one site's masks is far from partita's gradients
    def but_one(l, s, site=site):
        return None if s == site else masks(l, s)
    q = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss_of(gpt_forward_dropout(q, idx, L, NH, V, but_one), tgt, V).backward()
    num = sum(float(((q[k].grad - C_grads[k]) ** 2).sum()) for k in q)
    den = sum(float((C_grads[k] ** 2).sum()) for k in q)
    e = math.sqrt(num / den)
    check(e > 100 * max(worst, 1e-7), f"the {name} site drops (PyTorch without its masks: other gradients)",
          f"rel {e:.1e} vs {worst:.1e} with them")

# ---- 2/3. layouts, 10 steps
STEPS = 10


def layout_deck(name, dropout, extra=""):
    text = f"""
[run]
name = {name}
out_dir = {d}/{name}
seed = 7
[model]
vocab = 257
layers = 2
d_model = 32
heads = 2
seq_len = 32
{"" if dropout is None else f"dropout = {dropout}"}
[data]
train = {tok}
order = shuffled
[train]
steps = {STEPS}
batch = 8
log_interval = 1
eval_interval = 0
eval_batches = 1
save_weights = false
[optimizer]
lr = 3e-3
warmup = 2
{extra}
"""
    return write_deck(os.path.join(d, f"{name}.deck"), text)


def losses(name, dropout, np_=1, sets=(), extra=""):
    args = ["train", layout_deck(name, dropout, extra)]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_)
    with h5py.File(os.path.join(d, name, "run.h5"), "r") as f:
        return np.array(f["metrics/loss"]), float(f.attrs["val_loss_initial"]), p


ref, val_ref, _ = losses("drop-ref", P, 1, ["train.micro_batch=8"])
none, val_none, _ = losses("nodrop", 0.0, 1, ["train.micro_batch=8", "train.save_weights=true"])
check(len(ref) == STEPS and np.all(np.isfinite(ref)), "dropout 0.1: 10 steps at np=1", f"{ref[0]:.4f} -> {ref[-1]:.4f}")
gap = rel_err(ref, none)
check(gap > 1e-3, "dropout 0.1 changes the loss curve (vs dropout 0)", f"rel {gap:.1e}")
layouts = [
    ("dp=2", "drop-dp2", 2, ["train.micro_batch=4"]),
    ("ZeRO-3 dp=2", "drop-z3", 2, ["train.micro_batch=4", "zero.stage=3"]),
    ("grad_accum 2", "drop-acc2", 1, ["train.micro_batch=4", "train.grad_accum=2"]),
    ("sp=2", "drop-sp2", 2, ["train.micro_batch=8", "parallel.sp=2"]),
    ("recompute = layer", "drop-rc", 1, ["train.micro_batch=8", "train.recompute=layer"]),
]
for what, name, np_, sets in layouts:
    got, _, p = losses(name, P, np_, sets)
    e = rel_err(got, ref) if len(got) == len(ref) else 1.0
    bitwise = len(got) == len(ref) and np.array_equal(got, ref)
    check(e < 1e-5, f"dropout 0.1: {what} gives np=1's losses over {STEPS} steps",
          f"rel {e:.1e}{' (bitwise)' if bitwise else ''}, vs dropout 0 {gap:.1e}")

# MoE layers: the MLP site is the MoE output (moe.c), dropped like the dense c_proj's
moe = "[moe]\nexperts = 4\nevery = 1"
moe1, _, _ = losses("moe1", P, 1, ["train.micro_batch=8"], moe)
moe2, _, _ = losses("moe2", P, 2, ["train.micro_batch=4"], moe)
e = rel_err(moe2, moe1) if len(moe2) == len(moe1) else 1.0
check(len(moe1) == STEPS and e < 1e-5, f"MoE (4 experts per layer) with dropout 0.1: dp=2 gives np=1's losses",
      f"rel {e:.1e}")

omitted, val_omit, _ = losses("nokey", None, 1, ["train.micro_batch=8"])
check(np.array_equal(omitted, none), "dropout = 0 gives the losses of a deck without the key, bit for bit",
      f"{none[-1]:.6f}")

# ---- 4. evaluation never drops
check(val_ref == val_none == val_omit, "the trainer's initial val loss is the same with dropout 0.1 and 0 (bitwise)",
      f"{val_ref:.6f}")
weights = os.path.join(d, "nodrop", "final.h5")


def eval_loss(dropout, *sets):
    args = ["eval", layout_deck("ev", dropout), "--set", f"generate.weights={weights}"]
    for s in sets:
        args += ["--set", s]
    m = re.search(r"eval: loss ([0-9.]+)", run(args, np=1).stdout)
    return m.group(1) if m else None


a, b = eval_loss(P, "generate.naive=true"), eval_loss(0.0, "generate.naive=true")
check(a is not None and a == b, "partita eval (the training forward, naive) is the same with dropout 0.1 and 0",
      f"{a} vs {b}")

finish()
