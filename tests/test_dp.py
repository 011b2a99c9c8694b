#!/usr/bin/python3
"""Plain data parallelism: np=2 with micro-batch B gives the loss curve of np=1
with micro-batch 2B (and of np=1 with B and grad_accum 2), over 20 steps.

The rows of a step are the same in every layout (data.h), so the only
difference is the order of fp32 sums (across ranks in the all-reduce, across
rows in the gradient GEMMs): tolerance 1e-4 relative on every step's loss."""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("dp")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "dp.deck"), f"""
[run]
name = dp
seed = 7
[model]
vocab = 257
layers = 2
d_model = 32
heads = 2
seq_len = 32
[data]
train = {tok}
order = shuffled
[train]
steps = 20
log_interval = 5
eval_interval = 10
save_weights = false
[optimizer]
lr = 3e-3
warmup = 2
""")


def losses(name, np_, micro, accum):
    out = os.path.join(d, name)
    run(["train", deck, "--set", f"run.out_dir={out}", "--set", f"train.micro_batch={micro}",
         "--set", f"train.grad_accum={accum}"], np=np_)
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        return np.array(f["metrics/loss"]), f.attrs["ranks"]


ref, _ = losses("np1-b8", 1, 8, 1)
two, ranks = losses("np2-b4", 2, 4, 1)
acc, _ = losses("np1-b4-acc2", 1, 4, 2)
check(ranks == 2, "run.h5 records 2 ranks")
check(len(ref) == 20 and len(two) == 20, "20 steps recorded in each run")
check(ref[-1] < ref[0] - 0.1, "the loss falls over 20 steps", f"{ref[0]:.4f} -> {ref[-1]:.4f}")
e = float(np.max(np.abs(two - ref) / np.abs(ref)))
check(e < 1e-4, "np=2 x B=4 matches np=1 x B=8", f"max rel diff {e:.2e} over 20 steps (tol 1e-4)")
e = float(np.max(np.abs(acc - ref) / np.abs(ref)))
check(e < 1e-4, "np=1 x B=4 x accum 2 matches np=1 x B=8", f"max rel diff {e:.2e} (tol 1e-4)")
finish()
