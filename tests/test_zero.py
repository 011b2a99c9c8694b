#!/usr/bin/python3
"""ZeRO stages 0-3 over MPI ranks.

1. Layouts: for one seed and sequential data, stages 0-3 at np=2 and np=4 (and
   stage 2-3 at np=3) give the loss curve of the np=1 stage-0 run over 20 steps.
   Tolerance 1e-5 relative: the same rows are summed in another order (MPI's
   reduction tree, per-rank GEMMs), which changes fp32 rounding and nothing else.
   The model has N = 42330 parameters, not divisible by 4, so partitions are uneven.
2. Bytes per step per rank, from the comm counters: stages 1-2 move what the
   stage-0 all-reduce moves; stage 3 moves 1.5 times it (less ln_f, gathered once).
3. Resident model-state memory per rank at stage 3 is 1/np of stage 0.
4. Node-shared parameters ([zero] node_shared, the default where every rank is
   on one node): 1-3 above run with it off (the MPI all-gathers); with it on,
   stages 1-3 give bit-identical losses (the same values, read in place instead
   of gathered), move no all-gather bytes, the same reduce-scatter bytes, and
   hold 1/np of the parameters per rank at stages 1-2 as well.
5. The embeddings' gradient reduced early (every stage, where p B T <= Vp: a
   model with a 2048-row vocabulary): np=2 and np=3, with and without
   micro-steps (stages 0-1 reduce once, after the last; 2-3 every one), follow
   the np=1 curve within 1e-5 (the encoder's rows are added after the
   reduction, an order of its own); overlap on and off agree bit for bit at
   stages 0, 1 and 3; the log says the path was taken.
6. A /dev/shm too small for the window: MPI's gathers, the reason logged.
7. Fused gradients ([zero] fused_grads, zero.h), np=2 stages 2-3 with and without
   micro-steps: the np=1 curve within 1e-5, deterministic, no reduce-scatter
   bytes (the all-reduce moves the packed biases and LayerNorms only), the
   same model states; with every product's second half postponed (a test
   switch) the losses stay the same bit for bit; not fused at np=3, the log
   saying why.
"""
import os

import h5py
import numpy as np

from common import check, finish, licenses_tokens, run, shard_floats, tmpdir, write_deck

d = tmpdir("zero")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "z.deck"), f"""
[run]
seed = 11
[model]
vocab = 257
vocab_pad = 1
layers = 3
d_model = 30
heads = 3
seq_len = 33
[data]
train = {tok}
order = sequential
[train]
steps = 20
batch = 12
log_interval = 10
eval_interval = 0
save_weights = false
[optimizer]
lr = 3e-3
warmup = 2
[zero]
bucket_mb = 0.03
""")


def train(np_, stage, extra=(), shared=False, deck=deck, name="", micro=None):
    out = os.path.join(d, f"np{np_}-z{stage}-{'shared' if shared else 'mpi'}{name}")
    extra = list(extra) + ["--set", f"zero.node_shared={'true' if shared else 'false'}"]
    p = run(["train", deck, "--set", f"run.out_dir={out}", "--set", f"zero.stage={stage}",
             "--set", f"train.micro_batch={micro or 12 // np_}"] + list(extra), np=np_)
    f = h5py.File(os.path.join(out, "run.h5"), "r")
    m = f["metrics"]
    return dict(loss=np.array(m["loss"]), ar=np.array(m["comm_bytes_all_reduce"]),
                rs=np.array(m["comm_bytes_reduce_scatter"]), ag=np.array(m["comm_bytes_all_gather"]),
                state=int(f.attrs["model_state_bytes"]), N=int(f.attrs["layout_floats"]),
                rss=np.array(m["peak_rss_mb"]).max(), postponed=np.array(m["grad_postponed"]),
                pmax=np.array(m["grad_postponed_max"]), log=p.stdout)


ref = train(1, 0)
N = ref["N"]
check(N % 4 != 0, "parameter count does not divide by 4 (uneven shards)", f"N = {N}")
runs = {}
for np_, stage in [(2, 0), (2, 1), (2, 2), (2, 3), (4, 0), (4, 1), (4, 2), (4, 3), (3, 2), (3, 3)]:
    r = runs[(np_, stage)] = train(np_, stage)
    e = float(np.max(np.abs(r["loss"] - ref["loss"]) / ref["loss"]))
    check(len(r["loss"]) == 20 and e < 1e-5, f"np={np_} ZeRO-{stage} follows the np=1 loss curve",
          f"max rel diff {e:.1e} over 20 steps (tol 1e-5); final {r['loss'][-1]:.5f} vs {ref['loss'][-1]:.5f}")

# Bytes: step 5 (no evaluation in it); control all-reduces (loss, norm) are a few doubles.
s = 4
for np_ in (2, 4):
    p = np_
    theory = 2 * (p - 1) / p * N * 4        # ring all-reduce of N fp32, bytes sent per rank
    z0 = runs[(p, 0)]
    grads0 = z0["ar"][s]
    check(abs(grads0 - theory) <= 64, f"np={p} stage 0 all-reduce bytes equal 2(p-1)/p N", f"{grads0:.0f} vs {theory:.0f}")
    for stage in (1, 2):
        r = runs[(p, stage)]
        moved = r["rs"][s] + r["ag"][s]
        check(abs(moved - grads0) <= 4 * p + 64, f"np={p} stage {stage} moves what stage 0 moves",
              f"reduce-scatter {r['rs'][s]:.0f} + all-gather {r['ag'][s]:.0f} = {moved:.0f} vs {grads0:.0f}")
    r = runs[(p, 3)]
    moved = r["rs"][s] + r["ag"][s]
    # Within the padding: ln_f is gathered once (held from forward into backward),
    # and rank 0's share of each unit differs from 1/p by at most a shard boundary.
    check(abs(moved / grads0 - 1.5) < 0.003, f"np={p} stage 3 moves 1.5x stage 0",
          f"{moved:.0f} = {moved / grads0:.4f} x {grads0:.0f} (tol 0.003)")

for p in (2, 4):
    s0, s3 = runs[(p, 0)]["state"], runs[(p, 3)]["state"]
    ratio = s3 / s0
    print(f"np={p}: model states per rank: stage 0 {s0 / 1024:.1f} KiB, stage 3 {s3 / 1024:.1f} KiB; "
          f"peak RSS stage 0 {runs[(p, 0)]['rss']:.1f} MiB, stage 3 {runs[(p, 3)]['rss']:.1f} MiB")
    check(abs(ratio - 1 / p) < 0.01, f"np={p} stage-3 model states are 1/np of stage 0", f"ratio {ratio:.4f}")

for (np_, stage) in [(2, 1), (2, 2), (2, 3), (4, 1), (4, 3), (3, 3)]:
    r, m = train(np_, stage, shared=True), runs[(np_, stage)]
    check(np.array_equal(r["loss"], m["loss"]), f"np={np_} ZeRO-{stage} node-shared: losses bit-identical to all-gathers",
          f"final {r['loss'][-1]!r} vs {m['loss'][-1]!r}")
    check(r["ag"][s] == 0 and r["rs"][s] == m["rs"][s] and r["ar"][s] == m["ar"][s],
          f"np={np_} ZeRO-{stage} node-shared: no all-gather bytes, the same reductions",
          f"all-gather {r['ag'][s]:.0f} (gathering: {m['ag'][s]:.0f}), reduce-scatter {r['rs'][s]:.0f} vs {m['rs'][s]:.0f}")
    if stage < 3:   # parameters: the rank's shard, not the whole layout (moments and gradient shard unchanged)
        saved = m["state"] - r["state"]
        check(saved == (N - shard_floats(N, np_)) * 4, f"np={np_} ZeRO-{stage} node-shared: holds one shard of the parameters",
              f"{m['state']} -> {r['state']} bytes of model states ({saved} less; N = {N})")

big = write_deck(os.path.join(d, "big.deck"), open(deck).read().replace("vocab = 257", "vocab = 2048"))
EARLY = "reduced from the LM head on"
bref = train(1, 0, deck=big, name="big")
for np_, stage, micro, ov in [(2, 2, None, "true"), (2, 3, None, "true"), (2, 3, None, "false"), (3, 3, None, "true"),
                              (2, 3, 3, "true"), (2, 3, 3, "false"), (2, 1, None, "true"), (2, 1, None, "false"),
                              (2, 1, 3, "true"), (2, 1, 3, "false"), (2, 0, None, "true"), (2, 0, None, "false"),
                              (3, 0, 2, "true")]:
    r = train(np_, stage, ["--set", f"zero.overlap={ov}"], deck=big, name=f"big-m{micro}-{ov}", shared=True, micro=micro)
    e = float(np.max(np.abs(r["loss"] - bref["loss"]) / bref["loss"]))
    took = EARLY in r["log"]
    label = f"np={np_} ZeRO-{stage}, vocab 2048{', 2 micro-steps' if micro else ''}, overlap {ov}"
    check(took, f"{label}: the embeddings' gradient reduced early", f"log says {'so' if took else 'nothing'}")
    check(len(r["loss"]) == 20 and e < 1e-5, f"{label}: follows the np=1 loss curve",
          f"max rel diff {e:.1e} (tol 1e-5); final {r['loss'][-1]:.6f} vs {bref['loss'][-1]:.6f}")
    runs[("big", np_, stage, micro, ov)] = r
for stage, micro in ((3, None), (3, 3), (1, None), (1, 3), (0, None)):
    a, b = runs[("big", 2, stage, micro, "true")], runs[("big", 2, stage, micro, "false")]
    check(np.array_equal(a["loss"], b["loss"]), f"np=2 ZeRO-{stage} early embeddings{', 2 micro-steps' if micro else ''}: overlap on = off bit for bit",
          f"{a['loss'][-1]!r} vs {b['loss'][-1]!r}")

# 6. A /dev/shm too small for the window (a container's): the MPI path, with the reason, not a crash.
# Needs a private mount namespace (root, unshare): skipped where there is none.
import shutil
import subprocess
from common import MPIEXEC, PARTITA, ROOT
out = os.path.join(d, "smallshm")
cmd = (f"mount -t tmpfs -o size=60m tmpfs /dev/shm && {MPIEXEC} -np 2 {PARTITA} train {big} --set run.out_dir={out} "
       f"--set zero.stage=3 --set train.steps=2 --set model.d_model=480 --set model.heads=8 --set model.layers=6 "
       f"--set optimizer.warmup=0 --set train.micro_batch=6")
probe = subprocess.run(["unshare", "-m", "true"], capture_output=True) if shutil.which("unshare") else None
if probe is None or probe.returncode != 0:
    print("skip a small /dev/shm: no private mount namespace here (unshare -m)")
else:
    p = subprocess.run(["unshare", "-m", "sh", "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    check(p.returncode == 0 and "parameters not node-shared: /dev/shm has" in p.stdout + p.stderr,
          "a /dev/shm too small for the window: MPI's gathers, the reason logged",
          (p.stdout + p.stderr).strip().splitlines()[0] if (p.stdout + p.stderr).strip() else f"rc {p.returncode}")
# 7. Fused gradients (the default at stages 2-3 with node-shared parameters on two ranks and the
# embeddings taken early): the matrices' gradients summed by the products themselves, the other
# tensors (biases, LayerNorms: 9 C + H a layer, 2 C for ln_f) all-reduced packed; no reduce-scatter.
FUSED = "gradients fused"
L, C, H = 3, 30, 120
packed = (L * (9 * C + H) + 2 * C) * 4      # bytes a micro-step's packed all-reduce sends at p = 2
for stage, micro in ((2, None), (3, None), (2, 3), (3, 3)):
    label = f"np=2 ZeRO-{stage} fused gradients{', 2 micro-steps' if micro else ''}"
    a = runs.get(("big", 2, stage, micro, "true")) or train(2, stage, deck=big, name=f"big-m{micro}-fz", shared=True,
                                                             micro=micro)
    b = train(2, stage, deck=big, name=f"big-m{micro}-fz2", shared=True, micro=micro)
    n = train(2, stage, ["--set", "zero.fused_grads=false"], deck=big, name=f"big-m{micro}-nofz", shared=True, micro=micro)
    check(FUSED in a["log"] and FUSED not in n["log"], f"{label}: the log says so (and not with fused_grads = false)")
    e = float(np.max(np.abs(a["loss"] - bref["loss"]) / bref["loss"]))
    check(len(a["loss"]) == 20 and e < 1e-5, f"{label}: follows the np=1 loss curve",
          f"max rel diff {e:.1e} (tol 1e-5); final {a['loss'][-1]:.6f} vs {bref['loss'][-1]:.6f}")
    check(np.array_equal(a["loss"], b["loss"]), f"{label}: deterministic (two runs bit for bit)",
          f"{a['loss'][-1]!r} vs {b['loss'][-1]!r}")
    accum = 2 if micro else 1
    want = packed * accum + 16      # and the loss and gradient norm (two doubles)
    check(a["rs"][s] == 0 and n["rs"][s] > 0 and a["ar"][s] == want and a["ag"][s] == n["ag"][s],
          f"{label}: no reduce-scatter, the all-reduce only the packed small tensors",
          f"reduce-scatter {a['rs'][s]:.0f} (unfused {n['rs'][s]:.0f}), all-reduce {a['ar'][s]:.0f} vs {want}")
    check(a["state"] == n["state"], f"{label}: the same model states as the reduce-scatter's",
          f"{a['state']} vs {n['state']} bytes")
    # Postponed products (zero.h), every one that may be ([zero] fault_postpone),
    # 13 a micro-step (wte's dout stays; the ring holds two layers' douts). With
    # a bucket a layer (this deck's) the buckets' finishes run them, the ring
    # wrapping; with micro-steps, one bucket for all layers (bucket_mb = 1): the
    # ring fills at the third layer, so the oldest run first, then the rest at
    # the backward's end. Either way the sums keep their order.
    one = ["--set", "zero.bucket_mb=1"] if micro else []
    f = train(2, stage, ["--set", "zero.fault_postpone=true"] + one, deck=big, name=f"big-m{micro}-fzlate",
              shared=True, micro=micro)
    how = "one bucket, the ring full" if micro else "a bucket a layer"
    check(np.array_equal(a["loss"], f["loss"]) and (f["postponed"] == 13 * accum).all()
          and (f["pmax"] == 13 * accum).all(),
          f"{label}: every product postponed by each rank ({how}; grad_postponed_max too), the same losses bit for bit",
          f"postponed a step {sorted(set(f['postponed'].tolist()))}, most of a rank "
          f"{sorted(set(f['pmax'].tolist()))} (want {13 * accum}); "
          f"final loss {f['loss'][-1]!r} vs {a['loss'][-1]!r}")
r = runs[("big", 3, 3, None, "true")]
check(FUSED not in r["log"] and "gradients not fused: not two ranks" in r["log"],
      "np=3: gradients not fused, the log says why", next((l for l in r["log"].splitlines() if "fused" in l), "nothing"))

finish()
