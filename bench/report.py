#!/usr/bin/python3
"""Prints partita's throughput from run.h5 next to PyTorch's, as a ratio."""
import sys

import h5py
import numpy as np

run_h5, torch_log = sys.argv[1], sys.argv[2]
with h5py.File(run_h5, "r") as f:
    tps = np.array(f["metrics/tokens_per_s"])[1:]   # the first step warms up
    mfu = np.array(f["metrics/mfu"])[1:]
    peak = float(f.attrs["sgemm_peak_gflops"])
    threads = int(f.attrs["threads_per_rank"])
torch_vals = dict(line.split() for line in open(torch_log) if line.strip())
ttps = float(torch_vals["torch_tokens_per_s"])
p_tps, p_mfu = float(np.median(tps)), float(np.median(mfu))
print(f"  {'':28s} {'partita':>12s} {'pytorch':>12s} {'ratio':>8s}")
print(f"  {'tokens/s (median step)':28s} {p_tps:12.1f} {ttps:12.1f} {p_tps / ttps:8.2f}")
print(f"  {'MFU vs measured sgemm peak':28s} {100 * p_mfu:11.1f}% {100 * p_mfu * ttps / p_tps:11.1f}%")
print(f"  {'sgemm peak GFLOP/s':28s} {peak:12.1f}   ({threads} threads)")
