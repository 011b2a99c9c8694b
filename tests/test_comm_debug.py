#!/usr/bin/python3
"""The comm debug mode names a rank that skips a collective (test-only fault
switch), and the timeout names the collective a rank is stuck in."""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("commdbg")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "c.deck"), f"""
[model]
vocab = 257
layers = 2
d_model = 16
heads = 2
seq_len = 16
[data]
train = {tok}
[train]
steps = 4
micro_batch = 2
save_weights = false
[comm]
fault_skip_rank = 1
fault_skip_step = 2
""")

for stage in (0, 3):
    p = run(["train", deck, "--set", f"zero.stage={stage}", "--set", "comm.debug=true",
             "--set", f"run.out_dir={d}/o{stage}"], np=3, check_rc=False, timeout=120)
    err = p.stderr
    check(p.returncode != 0 and "collective mismatch" in err and "2 of 3 ranks issued" in err
          and "rank 1 issued" in err and "rank 0 issued" not in err and "rank 2 issued" not in err,
          f"stage {stage}: debug mode names rank 1 as the rank that diverged",
          " | ".join(l.strip() for l in err.splitlines() if "issued" in l or "mismatch" in l)[:300])

# A stuck rank (it stalls 60 s before a collective): the others give up after
# timeout_s, naming the collective they wait in. (A rank that skips one without
# debug mode is undefined behaviour in MPI: it may hang or mismatch.)
p = run(["train", deck, "--set", "zero.stage=2", "--set", "comm.timeout_s=3", "--set", "comm.fault_hang_s=60",
         "--set", "zero.fused_grads=false", "--set", f"run.out_dir={d}/t"], np=2, check_rc=False, timeout=120)
check(p.returncode != 0 and "stuck" in p.stderr and "step 2" in p.stderr and "reduce_scatter" in p.stderr,
      "the timeout names the stuck collective when a rank stalls",
      next((l for l in p.stderr.splitlines() if "stuck" in l), "(no message)"))
# A rank that stalls less than timeout_s only slows the step: the other rank's
# wait shows in run.h5's comm_wait_max, not in comm_wait (rank 0's own).
p = run(["train", deck, "--set", "zero.stage=2", "--set", "comm.fault_skip_rank=0", "--set", "comm.fault_hang_s=2",
         "--set", "zero.fused_grads=false", "--set", f"run.out_dir={d}/w"], np=2, timeout=120)
with h5py.File(os.path.join(d, "w", "run.h5"), "r") as f:
    w, wm = np.array(f["metrics/comm_wait"]), np.array(f["metrics/comm_wait_max"])
check(wm[1] > 1.5 and w[1] < 1.0 and (wm >= w).all() and (np.delete(wm, 1) < 1.0).all(),
      "rank 0 stalls 2 s at step 2: comm_wait_max shows rank 1's wait there, comm_wait (rank 0's) does not",
      f"comm_wait {np.round(w, 3).tolist()} comm_wait_max {np.round(wm, 3).tolist()}")
# Fused gradients (zero.h; the default here): the other rank waits on a flag in
# shared memory, not in MPI, and gives up the same way, naming the tensor. With a
# bucket a unit, rank 1 stalls before ln_f's packed all-reduce, before the last
# layer's products. Rank 0 postpones its halves of them where their inputs stay,
# so it gets as far as ln_f's bucket finish (MPI's wait); with recomputation
# they do not stay, and it waits at the last layer's first product for its half.
stall = ["train", deck, "--set", "zero.stage=2", "--set", "comm.timeout_s=3", "--set", "comm.fault_hang_s=60",
         "--set", "zero.bucket_mb=0.001"]
p = run(stall + ["--set", "train.recompute=layer", "--set", f"run.out_dir={d}/tf"], np=2, check_rc=False,
        timeout=120)
msg = next((l for l in p.stderr.splitlines() if "waited" in l), "(no message)")
check(p.returncode != 0 and "gradients fused" in p.stdout and "for rank 1's" in msg and "gradient of h.1." in msg
      and "(step 2)" in msg, "fused gradients: a stalled rank ends the other's wait after timeout_s, naming the tensor", msg)
p = run(stall + ["--set", f"run.out_dir={d}/tp"], np=2, check_rc=False, timeout=120)
msg = next((l for l in p.stderr.splitlines() if "stuck" in l), "(no message)")
check(p.returncode != 0 and "gradients fused" in p.stdout and "all_reduce(grads ln_f" in msg and "step 2" in msg,
      "fused gradients, inputs kept: rank 0 postpones its products past the stall, stuck at the bucket's all-reduce", msg)
finish()
