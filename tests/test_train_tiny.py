#!/usr/bin/python3
"""The tiny deck at np=2 lowers validation loss clearly, prints progress lines
with tokens/s, MFU and ETA, and writes run.h5 and weights that read back."""
import math
import os
import re

import h5py
import numpy as np

from common import ROOT, check, finish, licenses_tokens, run, tmpdir

d = tmpdir("tiny")
tok = licenses_tokens(d)
out = os.path.join(d, "run")
p = run(["train", os.path.join(ROOT, "inputs/gpt-tiny.deck"), "--set", f"data.train={tok}",
         "--set", f"run.out_dir={out}"], np=2)
print(p.stdout[-2500:])
lines = [l for l in p.stdout.splitlines() if re.match(r"step +\d+/\d+ \| loss", l)]
check(len(lines) >= 10, "progress lines printed once per log interval", f"{len(lines)} lines")
check(all(re.search(r"tok/s \| MFU +[\d.]+% \| [\d.]+ GFLOP/s \| [\d.]+ s/step \| ETA \d+:\d\d:\d\d", l) for l in lines),
      "progress lines carry tok/s, MFU, GFLOP/s, s/step and ETA")
check(p.stdout.count("[run]") == 1, "resolved deck echoed once (rank 0)")

with h5py.File(os.path.join(out, "run.h5"), "r") as f:
    m = f["metrics"]
    steps = np.array(m["step"])
    val = np.array(m["val_loss"])
    v0 = float(f.attrs["val_loss_initial"])
    check(len(steps) == 300 and steps[-1] == 300, "run.h5 has a row for each of 300 steps")
    for name in ["loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time", "comm_bytes_all_reduce"]:
        a = np.array(m[name])
        check(len(a) == 300 and np.all(np.isfinite(a)), f"run.h5 /metrics/{name} is complete and finite")
    check(m["peak_rss_mb"].shape == (300, 2), "per-rank peak memory recorded", str(m["peak_rss_mb"].shape))
    check(np.all(np.array(m["comm_bytes_all_reduce"]) > 0), "all-reduce bytes counted each step at np=2")
    check("[model]" in f.attrs["deck"], "the resolved deck is stored in run.h5")
    done = val[np.isfinite(val)]
    check(len(done) == 3, "validation ran at steps 100, 200, 300", str(len(done)))
    check(abs(v0 - math.log(257)) < 0.3, "initial validation loss is near ln(257)", f"{v0:.3f}")
    check(done[-1] < v0 - 2.0, "validation loss falls clearly", f"{v0:.3f} -> {done[-1]:.3f}")
with h5py.File(os.path.join(out, "final.h5"), "r") as f:
    names = list(f["params"])
    check("h.1.mlp.c_proj.weight" in names and "wte.weight" in names and "ln_f.bias" in names,
          "final.h5 holds the GPT-2 tensor names", f"{len(names)} tensors")
    check(f["params/h.0.attn.c_attn.weight"].shape == (64, 192), "c_attn weight is (in, out) = (64, 192)")
finish()
