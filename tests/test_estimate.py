#!/usr/bin/python3
"""`partita estimate` predicts per-rank peak memory within 10% of a real run's
measured peak (max resident set over the run, from run.h5), for ZeRO stages 0
and 3 at np=2, and its communication plan matches the comm counters."""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("estimate")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "e.deck"), f"""
[model]
vocab = 257
layers = 4
d_model = 384
heads = 6
seq_len = 64
[data]
train = {tok}
[train]
steps = 3
micro_batch = 2
log_interval = 1
eval_batches = 1
save_weights = false
""")

p = run(["estimate", deck, "--ranks", "2"])
print(p.stdout)
table = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in p.stdout.splitlines()
         if l.startswith(("predicted_peak_bytes", "model_state_bytes", "comm_bytes_per_step"))}
check(len(table) == 3, "estimate prints its machine-readable block")
for stage in (0, 3):
    out = os.path.join(d, f"z{stage}")
    # estimate plans MPI's gathers (several nodes, cuda): the run takes that path too
    run(["train", deck, "--set", f"zero.stage={stage}", "--set", f"run.out_dir={out}", "--set", "zero.node_shared=false"], np=2)
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        peak = np.array(f["metrics/peak_rss_mb"]).max(axis=0) * 1048576   # per rank
        state = int(f.attrs["model_state_bytes"])
        m = f["metrics"]
        sent = float(m["comm_bytes_all_reduce"][1] + m["comm_bytes_reduce_scatter"][1] + m["comm_bytes_all_gather"][1])
    pred = table["predicted_peak_bytes"][stage]
    err = abs(pred - peak[0]) / peak[0]
    check(err < 0.10, f"stage {stage}: predicted peak memory within 10% of measured (rank 0)",
          f"predicted {pred / 2**20:.1f} MiB, measured {peak[0] / 2**20:.1f} MiB, off {100 * err:.1f}%")
    check(state == table["model_state_bytes"][stage], f"stage {stage}: model-state bytes as planned",
          f"{state} vs {table['model_state_bytes'][stage]:.0f}")
    plan = table["comm_bytes_per_step"][stage]
    check(abs(sent - plan) <= 64, f"stage {stage}: bytes sent per step as planned (rank 0)", f"{sent:.0f} vs {plan:.0f}")
finish()
