#!/usr/bin/python3
"""The analysis tools on synthetic inputs (no partita binary): plot_run.py draws a
PNG of one run and of two overlaid; summary.py prints the final loss and the
median tokens/s computed here independently, and its --json parses;
inspect_ckpt.py passes a checkpoint whose checksums come from a plain per-element
loop, and fails (exit 1, naming the dataset) one with a flipped byte or a lost
checksum."""
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys

import h5py
import numpy as np

from common import ROOT, check, finish, tmpdir

PY = "/usr/bin/python3"
ANALYSIS = os.path.join(ROOT, "analysis")
sys.path.insert(0, ANALYSIS)
from partita_h5 import checksum_part  # noqa: E402

d = tmpdir("analysis")
rng = np.random.default_rng(1234)
M64 = (1 << 64) - 1


def tool(name, *args):
    return subprocess.run([PY, os.path.join(ANALYSIS, name)] + list(args), capture_output=True, text=True,
                          timeout=120)


# ---------------------------------------------------------------------------
# Synthetic run.h5 files.

DECK = """[run]
name          = "synth"
out_dir       = "runs/synth"  # --set
seed          = 7

[model]
layers        = 2
d_model       = 32  # the width
heads         = 2
vocab_pad     = 64  # default

[train]
steps         = 50
batch         = 8
"""


def make_run(path, steps, ranks, full_attrs=True, seed=0):
    """A run.h5 with every column of metrics.c; validation every 10 steps (NaN elsewhere)."""
    r = np.random.default_rng(seed)
    s = np.arange(1, steps + 1, dtype=np.float64)
    cols = {
        "step": s,
        "loss": 5.5 * np.exp(-s / 30.0) + 1.0 + 0.05 * r.standard_normal(steps),
        "val_loss": np.where(s % 10 == 0, 5.4 * np.exp(-s / 30.0) + 1.1, np.nan),
        "lr": np.minimum(s / 5.0, 1.0) * 3e-3,
        "grad_norm": 2.0 / np.sqrt(s) + 0.1 * r.random(steps),
        "tokens_per_s": np.r_[1500.0, 18000.0 + 2500.0 * r.random(steps - 1)],
        "mfu": 0.04 + 0.01 * r.random(steps),
        "step_time": 0.014 + 0.002 * r.random(steps),
        "tokens": 256.0 * s,
        "comm_bytes_all_reduce": np.full(steps, 24.0),
        "comm_bytes_reduce_scatter": np.full(steps, 148320.0),
        "comm_bytes_all_gather": np.full(steps, 296384.0),
        "comm_wait": 0.004 * r.random(steps),
    }
    with h5py.File(path, "w") as f:
        g = f.create_group("metrics")
        for k, v in cols.items():
            g[k] = v
        g["peak_rss_mb"] = 39.0 + np.arange(ranks)[None, :] * 0.5 + 0.01 * s[:, None]
        f.attrs["deck"] = DECK
        f.attrs["machine"] = f"host=test ranks={ranks} threads_per_rank=1 backend=cpu"
        f.attrs["ranks"] = ranks
        f.attrs["threads_per_rank"] = 1
        f.attrs["sgemm_peak_gflops"] = 140.5
        if full_attrs:  # older files lack these
            f.attrs["val_loss_initial"] = 5.53
            f.attrs["zero_stage"] = 3
            f.attrs["model_state_bytes"] = 197760
            f.attrs["working_bytes"] = 343072
            f.attrs["activation_bytes"] = 652800
            f.attrs["nparams"] = 49440
    return cols


os.makedirs(os.path.join(d, "zero3"))
os.makedirs(os.path.join(d, "older"))
run1 = os.path.join(d, "zero3", "run.h5")
run2 = os.path.join(d, "older", "run.h5")
cols = make_run(run1, 50, 2, seed=1)
make_run(run2, 30, 1, full_attrs=False, seed=2)

# ---------------------------------------------------------------------------
# plot_run.py

PNG_SIG = b"\x89PNG\r\n\x1a\n"


def png_ok(path):
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return False
    with open(path, "rb") as f:
        return f.read(8) == PNG_SIG


p = tool("plot_run.py", run1)
default_png = os.path.join(d, "zero3", "run.png")
check(p.returncode == 0 and png_ok(default_png), "plot_run: one run -> <run dir>/run.png, a PNG",
      f"rc {p.returncode}, {os.path.getsize(default_png) if os.path.exists(default_png) else 0} bytes "
      f"{p.stderr.strip()[-300:]}")
check(p.stdout.strip() == default_png, "plot_run prints the output path", p.stdout.strip())
two_png = os.path.join(d, "two.png")
p = tool("plot_run.py", run1, run2, "-o", two_png, "--label", "zero-3", "old-format")
check(p.returncode == 0 and png_ok(two_png), "plot_run: two runs overlaid (one with 1 rank, fewer attributes)",
      f"rc {p.returncode}, {os.path.getsize(two_png) if os.path.exists(two_png) else 0} bytes "
      f"{p.stderr.strip()[-300:]}")
p = tool("plot_run.py", run1, run2, "-o", os.path.join(d, "bad.png"), "--label", "only-one")
check(p.returncode != 0 and "--label" in p.stderr, "plot_run refuses a --label count that does not match",
      p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")

# ---------------------------------------------------------------------------
# summary.py

final_loss = float(cols["loss"][-1])
med_tps = statistics.median([float(x) for x in cols["tokens_per_s"][1:]])
p = tool("summary.py", run1)
want_loss, want_tps = f"{final_loss:.4f}", f"{med_tps:,.0f}"
check(p.returncode == 0 and want_loss in p.stdout, "summary prints the final loss", want_loss)
check(want_tps in p.stdout, "summary prints the median tokens/s excluding step 1", want_tps)
check("[model]" in p.stdout and "layers=2" in p.stdout and "vocab_pad" not in p.stdout,
      "summary prints the deck compactly (defaults left out)")
p = tool("summary.py", run1, "--json")
try:
    h = json.loads(p.stdout)
    ok = (abs(h["final_loss"] - final_loss) < 1e-12 and abs(h["median_tokens_per_s"] - med_tps) < 1e-9
          and h["ranks"] == 2 and h["zero_stage"] == 3 and abs(h["best_val_loss"] - np.nanmin(cols["val_loss"])) < 1e-12)
    detail = f"final_loss {h['final_loss']:.6f}, median_tokens_per_s {h['median_tokens_per_s']:.1f}"
except (ValueError, KeyError, TypeError) as e:
    ok, detail = False, f"{e}: {p.stdout[:200]} {p.stderr[-200:]}"
check(ok, "summary --json parses and matches the independent figures", detail)
p = tool("summary.py", run2)
check(p.returncode == 0 and "ZeRO stage           ?" in p.stdout,
      "summary of an older file shows '?' for missing attributes", p.stderr.strip()[-200:])

# ---------------------------------------------------------------------------
# Checksums: an independent per-element loop against the vectorized numpy one.


def mix64_ref(x):
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def checksum_ref(a):
    """Straightforward: element i (row-major) with fp32 bits b adds mix64((i << 32) ^ b)."""
    total = 0
    for i, x in enumerate(np.asarray(a, dtype=np.float32).reshape(-1).tolist()):
        b = struct.unpack("<I", struct.pack("<f", x))[0]
        total = (total + mix64_ref(((i << 32) ^ b) & M64)) & M64
    return total


x = rng.standard_normal(3001).astype(np.float32)
x[[5, 17, 99]] = [np.float32(0.0), np.float32(-0.0), np.float32(3.0e38)]
ref = checksum_ref(x)
got = checksum_part(x, 0)
check(got == ref, "vectorized checksum equals the per-element loop", f"numpy {got:016x}, loop {ref:016x}")
split = (checksum_part(x[:1234], 0) + checksum_part(x[1234:], 1234)) & M64
check(split == ref, "checksum of two parts (as two ranks write them) sums to the whole",
      f"parts {split:016x}, whole {ref:016x}")

# ---------------------------------------------------------------------------
# Synthetic checkpoint and weights file.

SHAPES = {"wte.weight": (16, 8), "wpe.weight": (6, 8), "h.0.ln_1.weight": (8,),
          "h.0.attn.c_attn.weight": (8, 24), "ln_f.bias": (8,)}
ckpt = os.path.join(d, "step-000100.h5")
with h5py.File(ckpt, "w") as f:
    meta = f.create_group("meta")
    for grp in ["params", "optim/exp_avg", "optim/exp_avg_sq"]:
        for name, shape in SHAPES.items():
            a = (0.02 * rng.standard_normal(shape)).astype(np.float32)
            if grp.endswith("sq"):
                a = a * a
            f.create_dataset(f"{grp}/{name}", data=a)  # contiguous, so a byte can be flipped in place
            meta.attrs.create(f"checksum:/{grp}/{name}", checksum_ref(a), dtype=np.uint64)
    for k, v in {"step": 100, "data_cursor": 800, "seed": 7, "optim_t": 100}.items():
        meta.attrs[k] = np.int64(v)
    meta.attrs["tokens_seen"] = 25600.0
    meta.attrs["deck"] = DECK
    meta.attrs["layout"] = "ranks=4 dp=4 zero_stage=3"

p = tool("inspect_ckpt.py", ckpt)
oks = sum(1 for line in p.stdout.splitlines() if line.rstrip().endswith("  ok"))
check(p.returncode == 0 and oks == 3 * len(SHAPES), "inspect_ckpt: good checkpoint exits 0, every checksum ok",
      f"rc {p.returncode}, {oks} ok {p.stderr.strip()[-200:]}")
check("ranks=4 dp=4 zero_stage=3" in p.stdout and p.stdout.find("layout") < p.stdout.find("/params/"),
      "inspect_ckpt prints /meta (layout) before the datasets")
with h5py.File(ckpt, "r") as f:
    a = np.asarray(f["params/h.0.attn.c_attn.weight"], dtype=np.float64)
want_norm = f"{np.sqrt(np.sum(a * a)):11.4e}".strip()
line = next((l for l in p.stdout.splitlines() if "/params/h.0.attn.c_attn.weight" in l), "")
check(want_norm in line and "(8, 24)" in line and "float32" in line, "inspect_ckpt prints shape, dtype and L2 norm",
      line.strip()[:120])

bad_name = "/params/h.0.attn.c_attn.weight"
flipped = os.path.join(d, "flipped.h5")
shutil.copy(ckpt, flipped)
with h5py.File(flipped, "r") as f:
    off = f[bad_name].id.get_offset()
with open(flipped, "r+b") as fh:
    fh.seek(off + 37)
    b = fh.read(1)
    fh.seek(off + 37)
    fh.write(bytes([b[0] ^ 0x10]))
p = tool("inspect_ckpt.py", flipped)
bad_lines = [l for l in p.stdout.splitlines() if "MISMATCH" in l]
check(p.returncode == 1 and len(bad_lines) == 1 and bad_name in bad_lines[0],
      "inspect_ckpt: one flipped byte -> exit 1, MISMATCH names that dataset",
      f"rc {p.returncode}: {bad_lines[0].split()[0] if bad_lines else p.stdout[-200:]}")
check(bad_name in p.stdout.strip().splitlines()[-2 if "hint" in p.stdout else -1],
      "inspect_ckpt: the final verdict names the corrupted dataset")

lost = os.path.join(d, "lost.h5")
shutil.copy(ckpt, lost)
with h5py.File(lost, "r+") as f:
    del f["meta"].attrs["checksum:/optim/exp_avg/wpe.weight"]
p = tool("inspect_ckpt.py", lost)
check(p.returncode == 1 and "MISSING" in p.stdout, "inspect_ckpt: a dataset without its checksum -> exit 1",
      f"rc {p.returncode}")

weights = os.path.join(d, "final.h5")
with h5py.File(weights, "w") as f:
    for name, shape in SHAPES.items():
        f[f"params/{name}"] = np.full(shape, 0.5, dtype=np.float32)
    for k, v in {"n_layer": 1, "n_embd": 8, "n_head": 2, "vocab_size": 13, "padded_vocab_size": 16,
                 "n_positions": 6, "step": 100}.items():
        f.attrs[k] = np.int64(v)
    f.attrs["deck"] = DECK
p = tool("inspect_ckpt.py", weights)
check(p.returncode == 0 and "weights file" in p.stdout and "checksum" not in p.stdout.split("datasets")[-1]
      and "5.0000e-01" in p.stdout, "inspect_ckpt: a weights file (no /meta) gives statistics only",
      f"rc {p.returncode} {p.stderr.strip()[-200:]}")

# ---------------------------------------------------------------------------
# Issue 18: titles name the run, checkpoint steps are marked, CSV/JSONL export,
# and every tool piped into `head` exits without a traceback.
from partita_h5 import checkpoint_steps, read_run, run_title  # noqa: E402

t = run_title(read_run(run1))
check(all(x in t for x in ("49.4K params", "2 ranks", "ZeRO-3", "cpu")), "the plot title names model size, ranks, ZeRO stage and backend", t)
with h5py.File(run1, "a") as f:
    ct = np.zeros(50)
    ct[[9, 19, 49]] = 0.05
    f["metrics/checkpoint_time"] = ct
ck = checkpoint_steps(read_run(run1))
check(list(ck) == [10, 20, 50], "checkpoint steps come from the checkpoint_time column", str(list(ck)))
older = read_run(run2)
older["deck"] += "[checkpoint]\ninterval = 10\n"
check(list(checkpoint_steps(older)) == [10, 20, 30], "without the column, from [checkpoint] interval",
      str(list(checkpoint_steps(older))))
p = tool("plot_run.py", run1, "-o", os.path.join(d, "ck.png"))
check(p.returncode == 0 and png_ok(os.path.join(d, "ck.png")), "plot_run.py draws a run with checkpoint steps", p.stderr[-200:])

p = tool("export_run.py", run1)
rows = p.stdout.splitlines()
head = rows[0].split(",") if rows else []
check(p.returncode == 0 and len(rows) == 51 and head[0] == "step" and "peak_rss_mb_rank1" in head,
      "export_run.py writes a CSV header and one row per step", f"{len(rows)} lines, {len(head)} columns")
li = head.index("loss") if "loss" in head else 0
last = rows[-2].split(",") if rows else []   # step 49: no validation
check(len(last) == len(head) and abs(float(last[li]) - cols["loss"][-2]) < 1e-12 and last[head.index("val_loss")] == "",
      "CSV values equal the file's (NaN as an empty cell)", f"loss {last[li] if last else None} vs {cols['loss'][-2]}")
jl = os.path.join(d, "run.jsonl")
p = tool("export_run.py", run1, "-o", jl)
recs = [json.loads(x) for x in open(jl)] if os.path.isfile(jl) else []
check(p.returncode == 0 and len(recs) == 50 and recs[9]["val_loss"] is not None and recs[0]["val_loss"] is None
      and abs(recs[9]["step"] - 10) == 0, "export_run.py -o run.jsonl writes JSON lines (NaN as null)", f"{len(recs)} records")

for name, arg in (("summary.py", run1), ("export_run.py", run1), ("inspect_ckpt.py", ckpt), ("plot_run.py", run1)):
    sh = f"{PY} {os.path.join(ANALYSIS, name)} {arg} | head -1"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", sh], capture_output=True, text=True, timeout=120)
    check("Traceback" not in p.stderr and "Broken pipe" not in p.stderr and p.stderr.strip() == "",
          f"{name} | head -1 exits quietly", p.stderr.strip()[-120:] or f"rc {p.returncode}")

finish()
