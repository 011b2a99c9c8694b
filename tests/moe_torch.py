#!/usr/bin/python3
"""The MoE GPT in PyTorch over Partita's global weight names: the reference the MoE tests compare against.

It follows the MoE decisions of issue 13 (docs/architecture.md, "Mixture of Experts") exactly:
- layer l (0-based) is an MoE layer when l % every == every - 1; its expert count is the pyramid's
  entry for that MoE layer, else `experts`;
- gate: logits = x @ h.<l>.mlp.gate.weight (x: the ln_2 output), p = softmax, in fp32 (or the dtype
  asked for); top-1: e1 = argmax p (lowest index on ties), w1 = p[e1]; top-2: e1, e2 the two largest,
  w_i = p[e_i] * kept_i / max(sum of kept p, 1e-9);
- capacity per sequence row of T tokens: cap = max(min_capacity, ceil(top_k * cf * T / E)), cap = T
  without drops; slots in one pass over the row, all first choices in position order, then all second
  choices; a choice whose expert is full is dropped; a token with every choice dropped gets MoE output 0;
- expert i: a GPT-2 MLP h.<l>.mlp.experts.<i>.c_fc/.c_proj (weights (in, out));
- PR-MoE (residual): y = c0 * MLP_residual(x) + c1 * w1 * Expert_e1(x), [c0, c1] = softmax(x @
  h.<l>.mlp.coefficient.weight + .bias);
- aux loss per row: E * sum_e f_e * P_e (f_e: fraction of the row's tokens whose FIRST choice is e, before
  drops; P_e: mean p[e] over the row); a layer's aux is the mean over the rows; total objective = LM loss +
  aux_loss * (sum over MoE layers of their aux);
- jitter (noisy_gate, training only) is drawn by Partita's counter-based stream, which this file does not
  reproduce: pass the multipliers in (`jitter={layer: tensor (B, T, C)}`), e.g. dumped by the C side.

Use:
    from moe_torch import MoeCfg, load_weights, reference, greedy
    cfg = MoeCfg.from_deck_text(open(resolved_deck).read())      # or MoeCfg(layers=..., experts=...)
    w = load_weights("final.h5")                                 # weights file, checkpoint or .safetensors
    r = reference(w, idx, targets, cfg)                          # r["loss"], r["logits"], r["grads"][name] ...
    toks = greedy(w, prompt, 16, cfg)                            # eval capacity, no drops

Run directly, it checks itself (seconds): dense equivalence with gpt_torch, the slot assignment against a
plain loop, the aux loss of a uniform gate, and autograd gradients against finite differences in float64.
"""
import json
import math
import os
import re
import struct
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_torch import gpt_forward  # noqa: E402


@dataclass
class MoeCfg:
    layers: int = 2
    heads: int = 4
    vocab: int = 257
    experts: int = 0
    every: int = 2
    top_k: int = 1
    capacity_factor: float = 1.0
    eval_capacity_factor: float = 2.0
    min_capacity: int = 4
    drop_tokens: bool = True
    aux_loss: float = 0.01
    residual: bool = False
    pyramid: list = field(default_factory=list)

    def is_moe(self, l):
        return self.experts > 0 and l % self.every == self.every - 1

    def experts_of(self, l):
        """Experts of layer l (0 for a dense layer)."""
        if not self.is_moe(l):
            return 0
        return self.pyramid[l // self.every] if self.pyramid else self.experts

    def moe_layers(self):
        return [l for l in range(self.layers) if self.is_moe(l)]

    @staticmethod
    def from_deck_text(text):
        """From deck text (e.g. `partita check` output): the [model] and [moe] keys it has."""
        sec, kv = None, {}
        for line in text.splitlines():
            s = line.split("#", 1)[0].strip()
            m = re.match(r"^\[\s*(\w+)\s*\]$", s)
            if m:
                sec = m.group(1)
            elif "=" in s and sec:
                k, v = (t.strip() for t in s.split("=", 1))
                kv[sec + "." + k] = v.strip('"')
        c = MoeCfg()
        b = lambda v: v.lower() in ("true", "yes", "on", "1")  # noqa: E731
        conv = {"model.layers": ("layers", int), "model.heads": ("heads", int), "model.vocab": ("vocab", int),
                "moe.experts": ("experts", int), "moe.every": ("every", int), "moe.top_k": ("top_k", int),
                "moe.capacity_factor": ("capacity_factor", float),
                "moe.eval_capacity_factor": ("eval_capacity_factor", float),
                "moe.min_capacity": ("min_capacity", int), "moe.drop_tokens": ("drop_tokens", b),
                "moe.aux_loss": ("aux_loss", float), "moe.residual": ("residual", b)}
        for k, (name, f) in conv.items():
            if k in kv:
                setattr(c, name, f(kv[k]))
        if kv.get("moe.pyramid"):
            c.pyramid = [int(x) for x in kv["moe.pyramid"].split(",")]
            if c.experts == 0:
                c.experts = max(c.pyramid)
        return c


# ---------------------------------------------------------------------------------------------
# Weights: Partita HDF5 (weights file or checkpoint: /params/<name>) or safetensors

def _read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in head.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32", "%s: %s is %s (only F32 here)" % (path, name, t["dtype"])
        b, e = t["data_offsets"]
        out[name[12:] if name.startswith("transformer.") else name] = \
            np.frombuffer(data[b:e], dtype="<f4").reshape(t["shape"]).copy()
    out.pop("lm_head.weight", None)
    return out


def write_safetensors(path, weights):
    """weights: name -> array, written as F32 with Partita's names (no prefix)."""
    head, blobs, off = {}, [], 0
    for name in sorted(weights):
        a = np.ascontiguousarray(np.asarray(weights[name], dtype="<f4"))
        head[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    h = json.dumps(head, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def write_weights_h5(path, weights):
    """weights: name -> array, as a Partita-style /params/<name> HDF5 group (no attributes)."""
    import h5py
    with h5py.File(path, "w") as f:
        g = f.create_group("params")
        for name, a in weights.items():
            g.create_dataset(name, data=np.asarray(a, dtype=np.float32))


def load_weights(path):
    """name -> numpy float32 array, from an HDF5 weights file or checkpoint, or a safetensors file."""
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    import h5py
    with h5py.File(path, "r") as f:
        g = f["params"]
        return {k: np.array(g[k], dtype=np.float32) for k in g}


def as_tensors(weights, dtype=torch.float32, grad=True):
    return {k: torch.tensor(np.asarray(v), dtype=dtype, requires_grad=grad) for k, v in weights.items()}


def init_weights(cfg, C, seq_len, vocab_pad=None, mlp_ratio=4, std=0.02, seed=0):
    """Random weights of an MoE GPT under the global names (for tests; not Partita's init streams)."""
    g = np.random.default_rng(seed)
    Vp = vocab_pad or cfg.vocab
    H = mlp_ratio * C
    rs = std / math.sqrt(2 * cfg.layers)
    n = lambda *s, sd=std: (g.standard_normal(s) * sd).astype(np.float32)  # noqa: E731
    w = {"wte.weight": n(Vp, C), "wpe.weight": n(seq_len, C),
         "ln_f.weight": 1 + n(C, sd=0.1), "ln_f.bias": n(C, sd=0.1)}

    def mlp(pre):
        w[pre + "c_fc.weight"], w[pre + "c_fc.bias"] = n(C, H), n(H, sd=0.02)
        w[pre + "c_proj.weight"], w[pre + "c_proj.bias"] = n(H, C, sd=rs), n(C, sd=0.02)

    for l in range(cfg.layers):
        p = "h.%d." % l
        for ln in ("ln_1", "ln_2"):
            w[p + ln + ".weight"], w[p + ln + ".bias"] = 1 + n(C, sd=0.1), n(C, sd=0.1)
        w[p + "attn.c_attn.weight"], w[p + "attn.c_attn.bias"] = n(C, 3 * C), n(3 * C)
        w[p + "attn.c_proj.weight"], w[p + "attn.c_proj.bias"] = n(C, C, sd=rs), n(C)
        E = cfg.experts_of(l)
        if not E:
            mlp(p + "mlp.")
            continue
        w[p + "mlp.gate.weight"] = n(C, E, sd=0.5)   # a peaked gate: routing that is not uniform
        for i in range(E):
            mlp(p + "mlp.experts.%d." % i)
        if cfg.residual:
            mlp(p + "mlp.residual.")
            w[p + "mlp.coefficient.weight"], w[p + "mlp.coefficient.bias"] = n(C, 2, sd=0.5), n(2, sd=0.1)
    return w


# ---------------------------------------------------------------------------------------------
# The model

def _mlp(p, pre, x):
    h = F.gelu(x @ p[pre + "c_fc.weight"] + p[pre + "c_fc.bias"], approximate="tanh")
    return h @ p[pre + "c_proj.weight"] + p[pre + "c_proj.bias"]


def capacity(cfg, E, T, cf, drop):
    if not drop:
        return T
    return max(cfg.min_capacity, math.ceil(cfg.top_k * cf * T / E))


def route(probs, top_k, cap):
    """probs (B, T, E) -> choices (B, T, k) long, kept (B, T, k) bool: slots per row, first choices in
    position order, then second choices."""
    B, T, E = probs.shape
    with torch.no_grad():
        e1 = probs.argmax(-1)
        choices = [e1]
        if top_k == 2:
            masked = probs.masked_fill(F.one_hot(e1, E).bool(), float("-inf"))
            choices.append(masked.argmax(-1))
        used = torch.zeros(B, E, dtype=torch.long)
        kept = []
        for e in choices:
            oh = F.one_hot(e, E)                                     # (B, T, E)
            rank = oh.cumsum(1) * oh + used[:, None, :] * oh        # 1-based slot among this expert's tokens
            k = (rank.sum(-1) <= cap)
            kept.append(k)
            used = used + (oh * k[..., None]).sum(1)
        return torch.stack(choices, -1), torch.stack(kept, -1)


def route_loop(probs, top_k, cap):
    """The same assignment written as a plain loop (the self-check compares the two)."""
    B, T, E = probs.shape
    ch = np.zeros((B, T, top_k), dtype=np.int64)
    kept = np.zeros((B, T, top_k), dtype=bool)
    P = probs.detach().numpy()
    for b in range(B):
        order = [sorted(range(E), key=lambda e: (-P[b, t, e], e))[:top_k] for t in range(T)]
        used = [0] * E
        for j in range(top_k):
            for t in range(T):
                e = order[t][j]
                ch[b, t, j] = e
                if used[e] < cap:
                    used[e] += 1
                    kept[b, t, j] = True
    return ch, kept


def moe_layer(p, l, x, cfg, train=True, drop=None, jitter=None):
    """x (B, T, C): the ln_2 output. Returns (y, aux, stats)."""
    B, T, C = x.shape
    E = cfg.experts_of(l)
    pre = "h.%d.mlp." % l
    xg = x * jitter if jitter is not None else x
    logits = xg @ p[pre + "gate.weight"]
    probs = logits.softmax(-1)
    cf = cfg.capacity_factor if train else cfg.eval_capacity_factor
    cap = capacity(cfg, E, T, cf, cfg.drop_tokens if drop is None else drop)
    choices, kept = route(probs, cfg.top_k, cap)
    pc = probs.gather(-1, choices) * kept                           # (B, T, k) probabilities of kept choices
    if cfg.top_k == 2:
        w = pc / pc.sum(-1, keepdim=True).clamp_min(1e-9)
    else:
        w = pc
    yf = torch.zeros(B * T, C, dtype=x.dtype)
    flat_x = x.reshape(-1, C)
    for i in range(E):
        sel = (choices == i) & kept                                 # (B, T, k), at most one True per token
        rows = sel.any(-1).reshape(-1).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        out = _mlp(p, pre + "experts.%d." % i, flat_x[rows])
        wi = (w * sel).sum(-1).reshape(-1)[rows]
        yf = yf.index_add(0, rows, out * wi[:, None])
    y = yf.reshape(B, T, C)
    if cfg.residual:
        coef = (x @ p[pre + "coefficient.weight"] + p[pre + "coefficient.bias"]).softmax(-1)
        y = coef[..., :1] * _mlp(p, pre + "residual.", x) + coef[..., 1:] * y
    f = F.one_hot(choices[..., 0], E).to(probs.dtype).mean(1)      # (B, E), no gradient
    P = probs.mean(1)                                               # (B, E)
    aux = (E * (f * P).sum(-1)).mean()
    stats = {"dropped": int((~kept).sum()), "choices": int(kept.numel()), "capacity": cap,
             "load_first": F.one_hot(choices[..., 0], E).sum((0, 1)).numpy() / (B * T),
             "load_kept": ((F.one_hot(choices, E) * kept[..., None]).sum((0, 1, 2))).numpy() / (B * T)}
    return y, aux, stats


def moe_gpt_forward(p, idx, cfg, train=True, drop=None, jitter=None):
    """idx (B, T) long -> (logits (B, T, rows of wte), aux sum over MoE layers (unweighted), stats by layer)."""
    if not cfg.moe_layers():
        return gpt_forward(p, idx, cfg.layers, cfg.heads, cfg.vocab), torch.zeros(()), {}
    Bq, Tq = idx.shape
    x = p["wte.weight"][idx] + p["wpe.weight"][:Tq]
    C = x.shape[-1]
    NH = cfg.heads
    HS = C // NH
    mask = torch.ones(Tq, Tq, dtype=torch.bool).tril()
    aux_sum, stats = torch.zeros((), dtype=x.dtype), {}
    for l in range(cfg.layers):
        h = F.layer_norm(x, (C,), p["h.%d.ln_1.weight" % l], p["h.%d.ln_1.bias" % l], eps=1e-5)
        qkv = h @ p["h.%d.attn.c_attn.weight" % l] + p["h.%d.attn.c_attn.bias" % l]
        q, k, v = qkv.split(C, dim=-1)
        q, k, v = (t.view(Bq, Tq, NH, HS).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(HS)
        att = att.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(Bq, Tq, C)
        x = x + y @ p["h.%d.attn.c_proj.weight" % l] + p["h.%d.attn.c_proj.bias" % l]
        h = F.layer_norm(x, (C,), p["h.%d.ln_2.weight" % l], p["h.%d.ln_2.bias" % l], eps=1e-5)
        if cfg.is_moe(l):
            m, aux, st = moe_layer(p, l, h, cfg, train, drop, (jitter or {}).get(l))
            x = x + m
            aux_sum = aux_sum + aux
            stats[l] = st
        else:
            x = x + _mlp(p, "h.%d.mlp." % l, h)
    x = F.layer_norm(x, (C,), p["ln_f.weight"], p["ln_f.bias"], eps=1e-5)
    return x @ p["wte.weight"].T, aux_sum, stats


def reference(weights, idx, targets, cfg, train=True, drop=None, jitter=None, dtype=torch.float32):
    """Loss, logits and every gradient of one batch.

    weights: name -> array (load_weights) or a path; idx, targets: (B, T) integer arrays.
    Returns {"loss": total objective, "lm_loss", "aux" (unweighted sum over MoE layers), "logits" (B, T, rows),
    "grads": name -> array, "stats": layer -> {dropped, choices, capacity, load_first, load_kept}}."""
    if isinstance(weights, str):
        weights = load_weights(weights)
    p = as_tensors(weights, dtype)
    idx = torch.as_tensor(np.asarray(idx), dtype=torch.long)
    tg = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    logits, aux, stats = moe_gpt_forward(p, idx, cfg, train, drop, jitter)
    V = cfg.vocab
    lm = F.cross_entropy(logits[..., :V].reshape(-1, V), tg.reshape(-1))
    loss = lm + cfg.aux_loss * aux
    loss.backward()
    grads = {k: (t.grad.numpy() if t.grad is not None else np.zeros(t.shape, dtype=np.float32))
             for k, t in p.items()}
    return {"loss": float(loss), "lm_loss": float(lm), "aux": float(aux), "logits": logits.detach().numpy(),
            "grads": grads, "stats": stats}


def greedy(weights, prompt, n_new, cfg, drop=False):
    """Greedy continuation, recomputing the whole sequence for each token, eval capacity; drop=False:
    no token dropped (what generate does unless [generate] moe_drop = true)."""
    if isinstance(weights, str):
        weights = load_weights(weights)
    p = as_tensors(weights, torch.float32, grad=False)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n_new):
            logits, _, _ = moe_gpt_forward(p, torch.tensor([seq]), cfg, train=False, drop=drop)
            seq.append(int(logits[0, -1, :cfg.vocab].argmax()))
    return seq[len(prompt):]


# ---------------------------------------------------------------------------------------------
# Self-check

def _selftest():
    torch.manual_seed(0)
    fails = []

    def check(ok, what, detail=""):
        print(("ok   " if ok else "FAIL ") + what + ("" if ok else "  " + detail))
        if not ok:
            fails.append(what)

    C, T, B = 16, 12, 3
    dense = MoeCfg(layers=2, heads=2, vocab=37)
    w = init_weights(dense, C, T, seed=1)
    idx = np.random.default_rng(2).integers(0, 37, (B, T))
    a = gpt_forward(as_tensors(w), torch.tensor(idx), 2, 2, 37)
    b, _, _ = moe_gpt_forward(as_tensors(w), torch.tensor(idx), dense)
    check(torch.equal(a, b), "experts = 0 is the dense GPT (gpt_torch)")

    probs = torch.rand(4, 9, 5).softmax(-1)
    for k in (1, 2):
        for cap in (1, 2, 4, 9):
            c1, k1 = route(probs, k, cap)
            c2, k2 = route_loop(probs, k, cap)
            check(np.array_equal(c1.numpy(), c2) and np.array_equal(k1.numpy(), k2),
                  "slot assignment = plain loop (top_k %d, capacity %d)" % (k, cap))

    cfg = MoeCfg(layers=2, heads=2, vocab=37, experts=4)
    w = init_weights(cfg, C, T, seed=3)
    w["h.1.mlp.gate.weight"][:] = 0
    r = reference(w, idx, idx, cfg)
    check(abs(r["aux"] - 1.0) < 1e-6, "uniform gate: aux = E * 1 * 1/E = 1", "aux %r" % r["aux"])
    check(r["stats"][1]["dropped"] == B * (T - 4), "uniform gate, top-1, capacity 4: all but 4 of each row dropped",
          "dropped %d" % r["stats"][1]["dropped"])

    tg = np.random.default_rng(4).integers(0, 37, (B, T))
    for name, c in (("top-1 with drops", MoeCfg(layers=2, heads=2, vocab=37, experts=4, capacity_factor=0.5,
                                                 min_capacity=1, aux_loss=0.1)),
                    ("top-2 with drops", MoeCfg(layers=2, heads=2, vocab=37, experts=4, top_k=2,
                                                 capacity_factor=0.5, min_capacity=1, aux_loss=0.1)),
                    ("PR-MoE pyramid", MoeCfg(layers=4, heads=2, vocab=37, experts=4, residual=True,
                                              pyramid=[2, 4], aux_loss=0.1, drop_tokens=False))):
        w = init_weights(c, C, T, seed=5)
        r = reference(w, idx, tg, c, dtype=torch.float64)
        st = r["stats"]
        p64 = as_tensors(w, torch.float64, grad=False)
        worst, checked = 0.0, 0
        rng = np.random.default_rng(6)
        for nm in sorted(w):
            g = r["grads"][nm].reshape(-1)
            for j in rng.choice(g.size, size=min(3, g.size), replace=False):
                def f(delta):
                    q = dict(p64)
                    t = q[nm].clone().reshape(-1)
                    t[j] += delta
                    q[nm] = t.reshape(q[nm].shape)
                    lg, ax, s2 = moe_gpt_forward(q, torch.tensor(idx), c)
                    lm = F.cross_entropy(lg[..., :37].reshape(-1, 37), torch.tensor(tg).reshape(-1))
                    return float(lm + c.aux_loss * ax), s2
                h = 1e-6
                (fp, sp), (fm, sm) = f(h), f(-h)
                same = all(sp[l]["dropped"] == st[l]["dropped"] and sm[l]["dropped"] == st[l]["dropped"] for l in st)
                if not same:
                    continue      # a routing decision flipped inside the step: not a smooth point
                fd = (fp - fm) / (2 * h)
                worst = max(worst, abs(fd - g[j]) / max(1e-4, abs(fd)))
                checked += 1
        dropped = sum(s["dropped"] for s in st.values())
        check(worst < 1e-5 and checked > 50, "%s: autograd = finite differences (%d entries, worst rel %.1e, "
              "%d choices dropped)" % (name, checked, worst, dropped))
    print("%d failed" % len(fails))
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(_selftest())
