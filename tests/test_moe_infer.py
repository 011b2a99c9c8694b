#!/usr/bin/python3
"""MoE in `partita generate` and `partita eval` (issue 13) against tests/moe_torch.py.

A tiny MoE GPT (4 layers, MoE on layers 1 and 3) with random weights from moe_torch.init_weights,
written as a weights file:
1. top-2 over 4 experts: greedy generate outputs (SplitFuse, prompt chunks beside decodes) are
   identical at ep = 1, 2, 4 and tp = 2 x ep = 2, equal the naive full-recompute generate, and equal
   moe_torch.greedy (eval capacity, no drops);
2. `partita eval`: loss equal to moe_torch.reference on the same rows (no drops), at ep = 1 and 2;
   with [generate] moe_drop = true and a small eval capacity (tokens dropped), equal to the reference
   with drops, at ep = 1 and 2;
3. PR-MoE (residual, pyramid 2,4): generate at ep = 1 and 2 equal moe_torch.greedy;
4. a model trained by `partita train` at ep = 2: its final.h5 (ep = 1), its last checkpoint's
   `ckpt export` (ep = 2) and the checkpoint itself (ep = 4) generate the reference's greedy tokens;
5. a deck whose tp x ep differs from the ranks, or whose ep does not divide the experts, is refused;
6. the cuda backend on the emulated device (build/emu-partita, tests/gpu/emu; fp32): generate gives the
   reference's tokens and eval with moe_drop the cpu loss; ep = 2 there is refused (cpu only).
"""
import json
import os
import re
import subprocess

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from common import moe_model, EMU, MPIEXEC, ROOT, build_emu, check, finish, licenses_tokens, run, tmpdir, write_deck
from moe_torch import MoeCfg, as_tensors, greedy, init_weights, moe_gpt_forward

d = tmpdir("moe-infer")
T = 32
MODEL = moe_model(T)


def weights_file(path, w, cfg):
    """A Partita weights file of w (name -> array) with the shape attributes weights_read checks."""
    C = w["wte.weight"].shape[1]
    H = w["h.0.mlp.c_fc.weight"].shape[1]
    with h5py.File(path, "w") as f:
        for k, v in (("vocab_size", cfg.vocab), ("padded_vocab_size", w["wte.weight"].shape[0]),
                     ("n_layer", cfg.layers), ("n_embd", C), ("n_head", cfg.heads),
                     ("n_positions", w["wpe.weight"].shape[0]), ("mlp_hidden", H), ("step", 0)):
            f.attrs[k] = np.int64(v)
        g = f.create_group("params")
        for name, a in w.items():
            g.create_dataset(name, data=np.asarray(a, dtype=np.float32))
    return path


# Prompts as token ids: one longer than the token budget (chunked), short ones that decode beside it.
rng = np.random.default_rng(3)
prompts = [list(rng.integers(0, 257, n)) for n in (11, 3, 7, 1)]
reqs = [{"id": f"r{i}", "tokens": [int(x) for x in p], "max_tokens": 12 - i} for i, p in enumerate(prompts)]
req_path = os.path.join(d, "req.jsonl")
with open(req_path, "w") as f:
    for r in reqs:
        f.write(json.dumps(r) + "\n")

# A small validation token file (2500 tokens of the GPL).
txt = os.path.join(d, "val.txt")
with open("/usr/share/common-licenses/GPL-3", "rb") as f:
    open(txt, "wb").write(f.read()[:2500])
val = os.path.join(d, "val.h5")
run(["prep", val, txt])


def deck(name, moe, weights, extra=""):
    return write_deck(os.path.join(d, name + ".deck"), f"""
[run]
name = {name}
out_dir = {d}/{name}
{MODEL}
[moe]
{moe}
[data]
val = {val}
[train]
seq_len = {T}
[generate]
weights = {weights}
requests = {req_path}
token_budget = 8
kv_block = 4
kv_blocks = 64
max_batch = 4
{extra}
""")


def generate(path, np_, tp=1, ep=1, *sets):
    out = os.path.join(d, f"gen-{os.path.basename(path)}-{np_}-{tp}-{ep}-{len(sets)}")
    args = ["generate", path, "--set", f"run.out_dir={out}", "--set", f"parallel.tp={tp}", "--set", f"parallel.ep={ep}"]
    for s in sets:
        args += ["--set", s]
    run(args, np=np_)
    with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
        g = f["requests"]
        ids = [x.decode() if isinstance(x, bytes) else x for x in g["id"][:]]
        oo, ot = g["output_offsets"][:], g["output_tokens"][:]
        return {ids[i]: [int(t) for t in ot[oo[i]:oo[i + 1]]] for i in range(len(ids))}


def evaluate(path, np_, ep=1, *sets):
    args = ["eval", path, "--set", f"parallel.ep={ep}"]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_)
    m = re.search(r"eval: loss ([0-9.]+) perplexity [0-9.]+ \((\d+) tokens", p.stdout)
    check(m is not None, f"eval prints its loss ({os.path.basename(path)}, np {np_}, ep {ep})")
    return float(m.group(1)), int(m.group(2))


def reference_loss(w, cfg, drop):
    with h5py.File(val, "r") as f:
        tok = np.array(f["tokens"], dtype=np.int64)
    rows = len(tok) // (T + 1)
    r = tok[:rows * (T + 1)].reshape(rows, T + 1)
    with torch.no_grad():
        logits, _, st = moe_gpt_forward(as_tensors(w, grad=False), torch.tensor(r[:, :T]), cfg, train=False, drop=drop)
        lm = F.cross_entropy(logits[..., :cfg.vocab].reshape(-1, cfg.vocab), torch.tensor(r[:, 1:]).reshape(-1))
    return float(lm), rows * T, sum(s["dropped"] for s in st.values())


def want_tokens(w, cfg):
    return {r["id"]: greedy(w, r["tokens"], r["max_tokens"], cfg) for r in reqs}


# 1-2. top-2 over 4 experts
moe = "experts = 4\ntop_k = 2\neval_capacity_factor = 0.5\nmin_capacity = 1"
cfg = MoeCfg(layers=4, heads=4, vocab=257, experts=4, top_k=2, eval_capacity_factor=0.5, min_capacity=1)
w = init_weights(cfg, 32, T, vocab_pad=320, seed=1, std=0.3)   # std 0.3: varied greedy tokens
wpath = weights_file(os.path.join(d, "top2.h5"), w, cfg)
top2 = deck("top2", moe, wpath)
want = want_tokens(w, cfg)
top1 = want_tokens(w, MoeCfg(layers=4, heads=4, vocab=257, experts=4, top_k=1))
check(sum(top1[k] != want[k] for k in want) >= 2, "the experts matter: top-1 routing gives other greedy tokens",
      f"{sum(top1[k] != want[k] for k in want)} of {len(want)} requests differ")
outs = {(1, 1): generate(top2, 1), (1, 2): generate(top2, 2, 1, 2), (1, 4): generate(top2, 4, 1, 4),
        (2, 2): generate(top2, 4, 2, 2)}
naive = generate(top2, 1, 1, 1, "generate.naive=true")
check(all(len(want[r["id"]]) == r["max_tokens"] for r in reqs), "the reference made max_tokens tokens per request")
check(naive == want, "naive full-recompute generate equals moe_torch.greedy (top-2, no drops)",
      f"{sum(naive[k] == want[k] for k in want)} of {len(want)} requests")
for (tp, ep), o in outs.items():
    check(o == want, f"KV-cache generate at tp = {tp} x ep = {ep} equals moe_torch.greedy",
          f"{sum(o.get(k) == want[k] for k in want)} of {len(want)} requests; r0 {o.get('r0')} vs {want['r0']}")

lm, ntok, _ = reference_loss(w, cfg, drop=False)
for ep in (1, 2):
    loss, n = evaluate(top2, ep, ep)
    check(n == ntok and abs(loss - lm) <= 1e-5 * lm, f"eval at ep = {ep} equals the reference loss (no drops)",
          f"partita {loss:.6f} torch {lm:.6f} over {n} tokens (reference {ntok})")
lmd, _, dropped = reference_loss(w, cfg, drop=True)
check(dropped > 0 and abs(lmd - lm) > 1e-6, "the eval capacity 0.5 drops tokens in the reference",
      f"{dropped} choices dropped, loss {lmd:.6f} vs {lm:.6f} without drops")
for ep in (1, 2):
    loss, _ = evaluate(top2, ep, ep, "generate.moe_drop=true")
    check(abs(loss - lmd) <= 1e-5 * lmd, f"eval with moe_drop at ep = {ep} equals the reference with drops",
          f"partita {loss:.6f} torch {lmd:.6f}")
loss, _ = evaluate(top2, 1, 1, "generate.moe_drop=true", "generate.naive=true")
check(abs(loss - lmd) <= 1e-5 * lmd, "naive eval with moe_drop equals the reference with drops", f"{loss:.6f} vs {lmd:.6f}")

# 3. PR-MoE with a pyramid
moe = "pyramid = 2,4\nresidual = true"
pcfg = MoeCfg(layers=4, heads=4, vocab=257, experts=4, residual=True, pyramid=[2, 4])
pw = init_weights(pcfg, 32, T, vocab_pad=320, seed=2, std=0.3)
pr = deck("prmoe", moe, weights_file(os.path.join(d, "prmoe.h5"), pw, pcfg))
pwant = want_tokens(pw, pcfg)
for ep in (1, 2):
    o = generate(pr, ep, 1, ep)
    check(o == pwant, f"PR-MoE (pyramid 2,4) generate at ep = {ep} equals moe_torch.greedy",
          f"{sum(o.get(k) == pwant[k] for k in pwant)} of {len(pwant)} requests")

# 4. an MoE model trained at ep = 2: its final.h5, its last checkpoint and that checkpoint's export
tok = licenses_tokens(d)
trained = write_deck(os.path.join(d, "train.deck"), f"""
[run]
name = trained
out_dir = {d}/trained
seed = 5
{MODEL}
[moe]
experts = 4
top_k = 1
[data]
train = {tok}
[train]
steps = 12
seq_len = {T}
micro_batch = 4
eval_interval = 0
[optimizer]
lr = 3e-3
warmup = 2
[checkpoint]
interval = 12
[generate]
requests = {req_path}
token_budget = 8
kv_block = 4
kv_blocks = 64
""")
run(["train", trained, "--set", "parallel.ep=2"], np=2)
final, ck = os.path.join(d, "trained/final.h5"), os.path.join(d, "trained/ckpt/step-000012.h5")
export = os.path.join(d, "export.h5")
run(["ckpt", "export", ck, export])
with h5py.File(export, "r") as f:
    tw = {k: np.array(f["params"][k]) for k in f["params"]}
tcfg = MoeCfg(layers=4, heads=4, vocab=257, experts=4, top_k=1)
check("h.1.mlp.experts.3.c_proj.bias" in tw and "h.3.mlp.gate.weight" in tw, "the export of an ep = 2 checkpoint holds "
      "every expert and gate under its global name", f"{len(tw)} tensors")
twant = want_tokens(tw, tcfg)
for name, wfile, ep in (("final.h5", final, 1), ("the exported checkpoint", export, 2), ("the checkpoint", ck, 4)):
    o = generate(trained, ep, 1, ep, f"generate.weights={wfile}")
    check(o == twant, f"{name} of the model trained at ep = 2 generates moe_torch.greedy's tokens at ep = {ep}",
          f"{sum(o.get(k) == twant[k] for k in twant)} of {len(twant)} requests")

p = run(["generate", top2, "--set", "parallel.ep=2"], np=4, check_rc=False)
check(p.returncode == 2 and "tp x ep" in p.stderr and "hint:" in p.stderr,
      "generate with tp x ep != ranks is refused with a hint", p.stderr.strip().splitlines()[0] if p.stderr else "")
p = run(["generate", top2, "--set", "parallel.ep=3", "--set", "parallel.tp=1"], np=3, check_rc=False)
check(p.returncode == 2 and "parallel.ep" in p.stderr and "hint:" in p.stderr,
      "ep that does not divide the experts is refused naming the key", p.stderr.strip().splitlines()[0] if p.stderr else "")

# 6. the cuda backend, emulated (the moe_* kernels of kernels/cuda/moe.cu)
emu = EMU
if build_emu():
    def emu_run(np_, *args):
        return subprocess.run([MPIEXEC, "-np", str(np_), emu] + list(args), cwd=ROOT, capture_output=True, text=True,
                              timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    cu = ["--set", "run.backend=cuda", "--set", "train.precision=fp32"]
    out = os.path.join(d, "emu-gen")
    q = emu_run(1, "generate", top2, "--set", f"run.out_dir={out}", *cu)
    o = {}
    if q.returncode == 0:
        with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
            g = f["requests"]
            ids = [x.decode() if isinstance(x, bytes) else x for x in g["id"][:]]
            oo, ot = g["output_offsets"][:], g["output_tokens"][:]
            o = {ids[i]: [int(t) for t in ot[oo[i]:oo[i + 1]]] for i in range(len(ids))}
    check("backend cuda" in q.stdout and o == want, "generate on the emulated cuda backend equals moe_torch.greedy",
          f"rc {q.returncode}, {sum(o.get(k) == want[k] for k in want)} of {len(want)} requests; {q.stderr.strip()[-200:]}")
    q = emu_run(1, "eval", top2, "--set", "generate.moe_drop=true", *cu)
    m = re.search(r"eval: loss ([0-9.]+)", q.stdout)
    check(m is not None and "backend cuda" in q.stdout and abs(float(m.group(1)) - lmd) <= 1e-5 * lmd,
          "eval with moe_drop on the emulated cuda backend equals the reference with drops",
          f"{m.group(1) if m else q.stderr.strip()[-200:]} vs {lmd:.6f}")
    q = emu_run(2, "eval", top2, "--set", "parallel.ep=2", *cu)
    check(q.returncode != 0 and "cpu backend only" in q.stderr and "hint:" in q.stderr,
          "expert-parallel eval on the cuda backend is refused with a hint", q.stderr.strip().splitlines()[0][:160]
          if q.stderr.strip() else "")
finish()
