#!/usr/bin/python3
"""Communication progress ([comm] progress) and the overlap record in run.h5.

1. The losses of a ZeRO-3 and a ZeRO-2 run at np=2 are bit-identical with
   [comm] progress = poll, thread and none: progress only changes when a
   collective advances, never what it computes.
2. run.h5 records per step comm_wait (blocked in waits) and comm_inflight
   (a dp collective in flight); both are >= 0, and in flight covers blocked
   (a wait happens while its collective is in flight) up to timer resolution;
   comm_wait_sync (the node-shared barriers' part) lies within comm_wait;
   comm_busy (inside MPI outside waits) is >= 0 and, where collectives are
   issued and polled, above 0; update_time (the update less its waits) >= 0.
3. A bad value of the key is refused, naming the deck key and the values.
4. [comm] compute_only, the overlap benchmark's baseline: with true no float
   collective moves a byte (the scalar agreements still do) and the node-shared
   barriers are skipped; with alternate, steps 1, 3, 5 move none and steps 2, 4,
   6 move what a normal run moves, at stages 0 and 3 (node-shared and MPI
   gathers); false changes nothing; no weights or checkpoints are written;
   with sequence parallelism (whose all-to-alls shape the compute) it is refused.
"""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("overlap")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "o.deck"), f"""
[run]
seed = 5
[model]
vocab = 257
vocab_pad = 1
layers = 3
d_model = 32
heads = 2
seq_len = 32
[data]
train = {tok}
order = sequential
[train]
steps = 6
batch = 4
micro_batch = 2
log_interval = 3
eval_interval = 0
save_weights = false
[zero]
bucket_mb = 0.02
""")


BYTES = ("comm_bytes_all_reduce", "comm_bytes_reduce_scatter", "comm_bytes_all_gather")


def train(stage, progress, *extra, name=None):
    out = os.path.join(d, name or f"z{stage}-{progress}")
    run(["train", deck, "--set", f"run.out_dir={out}", "--set", f"zero.stage={stage}",
         "--set", f"comm.progress={progress}", *extra], np=2)
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        m = f["metrics"]
        return {k: np.array(m[k]) for k in ("loss", "comm_wait", "comm_inflight", "comm_wait_sync", "comm_busy",
                                            "update_time", "comm_wait_max") + BYTES}


for stage in (3, 2):
    runs = {p: train(stage, p) for p in ("poll", "thread", "none")}
    base = runs["poll"]["loss"]
    for p in ("thread", "none"):
        same = np.array_equal(base.view(np.uint64), runs[p]["loss"].view(np.uint64))
        check(same, f"stage {stage}: losses with progress = {p} bit-identical to poll",
              f"poll {base.tolist()} vs {p} {runs[p]['loss'].tolist()}")
    for p, r in runs.items():
        w, fl = r["comm_wait"], r["comm_inflight"]
        check(len(w) == 6 and (w >= 0).all() and (fl > 0).all() and (fl + 1e-3 >= w).all(),
              f"stage {stage}, progress = {p}: run.h5 comm_inflight >= comm_wait >= 0 every step",
              f"wait {np.round(w, 4).tolist()} in flight {np.round(fl, 4).tolist()}")
        wm = r["comm_wait_max"]
        check((wm + 1e-12 >= w).all(),
              f"stage {stage}, progress = {p}: comm_wait_max (any rank's) >= rank 0's comm_wait every step",
              f"max {np.round(wm, 4).tolist()} rank 0 {np.round(w, 4).tolist()}")
        sy, busy, up = r["comm_wait_sync"], r["comm_busy"], r["update_time"]
        check((sy >= 0).all() and (sy <= w + 1e-9).all() and (busy >= 0).all() and busy.sum() > 0 and (up >= -1e-3).all(),
              f"stage {stage}, progress = {p}: comm_wait >= comm_wait_sync >= 0, comm_busy >= 0 (> 0 in all), update_time >= 0",
              f"sync {np.round(sy, 5).tolist()} busy {np.round(busy, 5).tolist()} update {np.round(up, 4).tolist()}")

# 4. compute_only. The scalar agreements (the loss's and the gradient norm's
# f64 all-reduces, and the agreed skip: a few dozen bytes a step) still run; a
# float collective moves at least a bucket (kilobytes here).
SCALARS = 64
moved = lambda r: sum(r[k] for k in BYTES)
for stage, shared in ((3, "true"), (3, "false"), (0, "true")):
    tag = f"stage {stage}" + (", MPI gathers" if shared == "false" else "")
    ns = ["--set", f"zero.node_shared={shared}"]
    ref = train(stage, "poll", *ns, name=f"ref{stage}{shared}")
    nothing = train(stage, "poll", "--set", "comm.compute_only=true", *ns, name=f"co{stage}{shared}")
    # The last step also evaluates, outside the step's collectives: that communicates for real.
    check((moved(ref) > 1000).all() and (moved(nothing)[:-1] <= SCALARS).all() and (nothing["comm_wait_sync"] == 0).all(),
          f"{tag}: compute_only = true moves no float collective's bytes and skips the barriers",
          f"bytes a step {moved(nothing).tolist()} (a normal run {moved(ref).tolist()}), sync waits {nothing['comm_wait_sync'].tolist()}")
    if stage == 3 and shared == "true":
        check((ref["comm_wait_sync"] > 0).any(), f"{tag}: a normal run waits at the node-shared barriers (so 0 above means skipped)",
              f"{ref['comm_wait_sync'].tolist()}")
    alt = train(stage, "poll", "--set", "comm.compute_only=alternate", *ns, name=f"alt{stage}{shared}")
    a, b = moved(alt), moved(ref)
    check((a[0::2] <= SCALARS).all() and (np.abs(a[1::2] - b[1::2]) <= SCALARS).all(),
          f"{tag}: compute_only = alternate moves nothing on steps 1, 3, 5 and a normal run's bytes on 2, 4, 6",
          f"bytes a step {a.tolist()} (a normal run {b.tolist()})")
    off = train(stage, "poll", "--set", "comm.compute_only=false", *ns, name=f"off{stage}{shared}")
    check(np.array_equal(off["loss"].view(np.uint64), ref["loss"].view(np.uint64)),
          f"{tag}: compute_only = false is bit-identical to the default", f"{off['loss'].tolist()} vs {ref['loss'].tolist()}")

# Its states are not a model: no checkpoint, init.h5 or final.h5 is written, however asked for.
out = os.path.join(d, "co-files")
run(["train", deck, "--set", f"run.out_dir={out}", "--set", "comm.compute_only=alternate", "--set", "train.save_weights=true",
     "--set", "checkpoint.interval=2", "--set", f"checkpoint.dir={out}/ckpt"], np=2)
left = [f for f in ("init.h5", "final.h5") if os.path.exists(os.path.join(out, f))]
ckpts = os.listdir(os.path.join(out, "ckpt")) if os.path.isdir(os.path.join(out, "ckpt")) else []
check(not left and not [f for f in ckpts if f.endswith(".h5")], "compute_only writes no weights and no checkpoint",
      f"found {left + ckpts}")

for bad in ("sometimes", "yes"):
    o = run(["train", deck, "--set", f"run.out_dir={d}/bad-co", "--set", f"comm.compute_only={bad}"], np=1, check_rc=False)
    text = o.stdout + o.stderr
    check(o.returncode == 2 and "compute_only" in text and "alternate" in text,
          f"compute_only = {bad} is refused naming the key and the values", text.strip()[-200:])

out = run(["train", deck, "--set", f"run.out_dir={d}/co-sp", "--set", "comm.compute_only=alternate", "--set", "parallel.sp=2"],
          np=2, check_rc=False)
text = out.stdout + out.stderr
check(out.returncode == 2 and "compute_only" in text and "sp" in text and "hint:" in text,
      "compute_only with sp = 2 is refused before the run, naming both keys", text.strip()[-300:])

out = run(["train", deck, "--set", f"run.out_dir={d}/bad", "--set", "comm.progress=sometimes"], np=1, check_rc=False)
text = out.stdout + out.stderr
check(out.returncode != 0 and "comm.progress" in text.replace("[comm] progress", "comm.progress") and "thread" in text,
      "progress = sometimes is refused naming the key and the values", text.strip()[-300:])
finish()
