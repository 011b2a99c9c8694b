#!/usr/bin/python3
"""ZeRO-Infinity offload ([offload], src/offload.c) on the cpu backend.

1. Numbers: optimizer = nvme (ZeRO 0 at np=1, ZeRO 1 at np=2, ZeRO 2 at np=2 with the gradients on
   NVMe too), and params + optimizer = nvme (ZeRO-3, np=1 and 2, gradients on NVMe; np=2 also with
   2 micro-steps, whose gradients accumulate in the file), with a memory cap that forces many small
   subgroups: losses and gradient norms over 10 steps and the final weights are bit-identical to the
   same layout without offload (gradients reduce-scattered there too: zero.fused_grads = false).
   Prefetch off too.
2. run.h5 has offload_read_bytes / offload_write_bytes: each array (moments [+ params]) read and
   written once per step, the gradients written once per micro-step and read by the update.
3. Checkpoints: an offloaded run's checkpoint resumes with offload off, bit-identically to the
   uninterrupted run; SIGKILL during offloaded steps leaves the last checkpoint loadable.
4. A full nvme_dir (a 64 KiB tmpfs, where mount is permitted) stops with a clear error and a hint,
   and the checkpoint it resumed from is untouched.
5. Memory: a 13M-parameter model with optimizer = nvme and host_cap_mb = 2 has a peak RSS lower
   than without offload by at least its moments' size less the cap.
6. ZeRO parameter groups: an MoE model at ep = 2 (np = 2: the dense group over both ranks, the
   held experts over one) offloads each group to a file of its own (g0, g1): optimizer = nvme at
   ZeRO-1 and params + optimizer = nvme at ZeRO-3 (gradients stay in memory with two groups) are
   bit-identical to the same layout without offload, and the ZeRO-3 run's checkpoint resumes
   without offload exactly.
"""
import glob
import hashlib
import os
import signal
import subprocess
import time

import h5py
import numpy as np

from common import MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, shard_floats, tmpdir, write_deck

d = tmpdir("offload")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "o.deck"), f"""
[run]
seed = 5
threads = 1
[model]
vocab = 257
vocab_pad = 1
layers = 2
d_model = 32
heads = 2
seq_len = 32
[data]
train = {tok}
order = sequential
[train]
steps = 10
batch = 4
log_interval = 5
eval_interval = 0
save_weights = true
[optimizer]
lr = 3e-3
warmup = 2
[offload]
subgroup_mb = 0.02
host_cap_mb = 0.1
""")


def train(name, np_, extra=(), check_rc=True):
    out = os.path.join(d, name)
    p = run(["train", deck, "--set", f"run.out_dir={out}", "--set", f"train.micro_batch={4 // np_}"] + list(extra),
            np=np_, check_rc=check_rc)
    return out, p


def metrics(out):
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        return {k: np.array(v) for k, v in f["metrics"].items()}


def weights(out):
    with h5py.File(os.path.join(out, "final.h5"), "r") as f:
        res = {}
        f.visititems(lambda k, v: res.__setitem__(k, np.array(v)) if isinstance(v, h5py.Dataset) else None)
        return res


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


# 1-2. Bit-identical to no offload.
cases = [("z0-np1", 1, 0, ["--set", "offload.optimizer=nvme"]),
         ("z0-np1-noprefetch", 1, 0, ["--set", "offload.optimizer=nvme", "--set", "offload.prefetch=false",
                                      "--set", "offload.buffers=2"]),
         ("z1-np2", 2, 1, ["--set", "offload.optimizer=nvme"]),
         ("z3-np1", 1, 3, ["--set", "offload.optimizer=nvme", "--set", "offload.params=nvme"]),
         ("z2-np2", 2, 2, ["--set", "offload.optimizer=nvme"]),
         ("z3-np2", 2, 3, ["--set", "offload.optimizer=nvme", "--set", "offload.params=nvme"]),
         ("z3-np2-accum2", 2, 3, ["--set", "offload.optimizer=nvme", "--set", "offload.params=nvme",
                                  "--set", "train.micro_batch=1"])]
base = {}
for name, np_, stage, extra in cases:
    accum = 2 if "train.micro_batch=1" in extra else 1
    key = (np_, stage, accum)
    if key not in base:
        # The base reduce-scatters as offloaded gradients do: fused gradients (zero.h, the
        # default where they apply) sum in another order.
        base[key], _ = train(f"base-np{np_}-z{stage}-a{accum}", np_,
                             ["--set", f"zero.stage={stage}", "--set", "zero.fused_grads=false"]
                             + (["--set", "train.micro_batch=1"] if accum > 1 else []))
    out, p = train(name, np_, ["--set", f"zero.stage={stage}"] + extra)
    mb, mo = metrics(base[key]), metrics(out)
    check(np.array_equal(mb["loss"], mo["loss"]) and np.array_equal(mb["grad_norm"], mo["grad_norm"]),
          f"{name}: 10 losses and gradient norms bit-identical to no offload",
          f"max |diff| {np.abs(mb['loss'] - mo['loss']).max():.3g}, {np.abs(mb['grad_norm'] - mo['grad_norm']).max():.3g}")
    check(same_weights(base[key], out), f"{name}: final weights bit-identical to no offload")
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        nflat = int(f.attrs["layout_floats"])
    own = shard_floats(nflat, np_) if stage > 0 else nflat      # rank 0's shard (the largest)
    arrays = 3 if "offload.params=nvme" in extra else 2
    grads = stage >= 2
    rd, wr = mo["offload_read_bytes"], mo["offload_write_bytes"]
    # rank 0 reads each array once per step in the update (padded to the alignment), plus under
    # params = nvme its parameter parts before each all-gather (twice per step, ln_f once); the
    # gradients (ZeRO 2-3) are written once per micro-step (read back before the second) and read
    # by the update
    lo_r, lo_w = (arrays + grads) * own * 4, (arrays + grads * accum) * own * 4
    check(rd.min() >= lo_r and wr.min() >= lo_w and wr.max() < lo_w + (arrays + grads * accum) * 8192,
          f"{name}: run.h5 bytes per step: read {rd.min():.0f} (>= {lo_r}), written {wr.min():.0f} "
          f"(>= {lo_w}: {arrays} arrays{f' + gradients x {accum}' if grads else ''} x {own} floats)")
    check("offload: optimizer = nvme" in p.stdout and "subgroups" in p.stdout
          and f"gradients = {'nvme' if grads else 'memory'}" in p.stdout, f"{name}: the choices printed at start")
    check(not glob.glob(os.path.join(out, "offload", "*.offload")), f"{name}: offload files removed at the end")

# 2b. `partita estimate` predicts the bytes the run moved (ZeRO-3, np=2, 2 micro-steps, all on NVMe).
est = run(["estimate", deck, "--ranks", "2", "--set", "zero.stage=3", "--set", "train.micro_batch=1", "--set",
           "offload.optimizer=nvme", "--set", "offload.params=nvme", "--set", f"offload.nvme_dir={d}/est"], np=1)
vals = dict(l.split() for l in est.stdout.splitlines() if l.startswith("offload_") and len(l.split()) == 2)
mo = metrics(os.path.join(d, "z3-np2-accum2"))
ew, er = float(vals.get("offload_step_write_bytes", -1)), float(vals.get("offload_step_read_bytes", -1))
mw, mr = mo["offload_write_bytes"][1:].mean(), mo["offload_read_bytes"][1:].mean()
check(0 <= mw - ew < 8 * 8192 and abs(mr - er) <= 0.25 * mr and "gradients" in est.stdout,
      "estimate: bytes per step written as measured (within padding), read within 25% (alignment padding and "
      "parameter reads ahead that a turn of direction wastes) (ZeRO-3 np=2, params + moments + gradients on NVMe)",
      f"written {ew:.0f} predicted vs {mw:.0f} measured, read {er:.0f} vs {mr:.0f}")

# 3. Checkpoints: offloaded -> resume without offload == uninterrupted.
ck_extra = ["--set", "checkpoint.interval=5", "--set", "train.stop_at=5", "--set", "offload.optimizer=nvme",
            "--set", "zero.stage=3", "--set", "offload.params=nvme"]
out_ck, _ = train("ckpt", 1, ck_extra)
ckpt5 = os.path.join(out_ck, "ckpt", "step-000005.h5")
check(os.path.exists(ckpt5), "offloaded run wrote its step-5 checkpoint")
run(["train", deck, "--set", f"run.out_dir={out_ck}", "--set", "train.micro_batch=4", "--set", "zero.stage=0"], np=1)
m_ck, m_base = metrics(out_ck), metrics(base[(1, 3, 1)])
check(np.array_equal(m_ck["loss"][5:], m_base["loss"][5:]),
      "resume of an offloaded (ZeRO-3, params+optimizer nvme) checkpoint with offload off, ZeRO-0: steps 6-10 "
      "bit-identical to the uninterrupted run", f"max |diff| {np.abs(m_ck['loss'][5:] - m_base['loss'][5:]).max():.3g}")

# 3b. SIGKILL in the middle of offloaded steps.
out_k = os.path.join(d, "killed")
cmd = [MPIEXEC, "-np", "1", PARTITA, "train", deck, "--set", f"run.out_dir={out_k}", "--set", "train.steps=100000",
       "--set", "checkpoint.interval=3", "--set", "offload.optimizer=nvme", "--set", "train.micro_batch=4",
       "--set", "train.log_interval=1000"]
proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
t0 = time.time()
while time.time() - t0 < 60 and len(glob.glob(os.path.join(out_k, "ckpt", "step-*.h5"))) < 2:
    time.sleep(0.05)
time.sleep(0.1)
os.killpg(proc.pid, signal.SIGKILL)
proc.wait()
kept = sorted(glob.glob(os.path.join(out_k, "ckpt", "step-*.h5")))
check(len(kept) >= 1, f"SIGKILL: checkpoints on disk: {[os.path.basename(k) for k in kept]}")
last = int(os.path.basename(kept[-1])[5:11]) if kept else 0
p = run(["train", deck, "--set", f"run.out_dir={out_k}", "--set", f"train.steps={last + 1}", "--set", "train.micro_batch=4"],
        np=1, check_rc=False)
check(p.returncode == 0 and "resumed from" in p.stdout, f"SIGKILL during offloaded steps: the run resumes from a whole checkpoint",
      (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else "")

# 4. A full NVMe directory.
mnt = os.path.join(d, "tiny")
os.makedirs(mnt)
mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "none", mnt], capture_output=True).returncode == 0
if mounted:
    sha = hashlib.sha256(open(ckpt5, "rb").read()).hexdigest()
    out_f = os.path.join(d, "full")
    os.makedirs(os.path.join(out_f, "ckpt"))
    subprocess.run(["cp", ckpt5, os.path.join(out_f, "ckpt")], check=True)
    p = run(["train", deck, "--set", f"run.out_dir={out_f}", "--set", "train.micro_batch=4", "--set", "offload.optimizer=nvme",
             "--set", f"offload.nvme_dir={mnt}", "--set", "checkpoint.interval=5"], np=1, check_rc=False)
    err = p.stderr
    check(p.returncode != 0 and "disk full" in err and mnt in err and "hint:" in err and "checkpoints were not touched" in err,
          "a full nvme_dir: a clear error naming the file, with a hint", err.strip().replace("\n", " | ")[:300])
    kept = hashlib.sha256(open(os.path.join(out_f, "ckpt", "step-000005.h5"), "rb").read()).hexdigest()
    check(kept == sha and not glob.glob(os.path.join(out_f, "ckpt", "*.tmp*")), "... and the checkpoint it resumed from is intact")
    subprocess.run(["umount", mnt])
else:
    print("note: mount of a tmpfs not permitted here; the full-disk case runs in build/test_aio (RLIMIT_FSIZE)")

# 5. Memory cap: peak RSS with the moments on NVMe.
big = ["--set", "model.d_model=512", "--set", "model.layers=4", "--set", "model.heads=4", "--set", "train.steps=2",
       "--set", "train.batch=1", "--set", "train.save_weights=false", "--set", "run.peak_gflops=1"]
out_a, _ = train("rss-none", 1, big + ["--set", "train.micro_batch=1"])
out_b, _ = train("rss-nvme", 1, big + ["--set", "train.micro_batch=1", "--set", "offload.optimizer=nvme",
                                       "--set", "offload.host_cap_mb=2", "--set", "offload.subgroup_mb=64"])
with h5py.File(os.path.join(out_a, "run.h5"), "r") as f:
    n_big = int(f.attrs["nparams"])
ra, rb = metrics(out_a)["peak_rss_mb"].max(), metrics(out_b)["peak_rss_mb"].max()
moments_mb = 2 * n_big * 4 / 1048576
check(ra - rb >= moments_mb - 2 - 1.0,
      f"host_cap_mb = 2: peak RSS {rb:.1f} MiB with the moments on NVMe vs {ra:.1f} MiB in memory "
      f"(saves {ra - rb:.1f} MiB; moments {moments_mb:.1f} MiB, cap 2 MiB)")

# 6. MoE at ep = 2: one Offload per ZeRO parameter group.
moe = ["--set", "moe.experts=2", "--set", "moe.every=2", "--set", "parallel.ep=2", "--set", "train.steps=6",
       "--set", "train.save_weights=true"]
for name, stage, extra in [("moe-z1", 1, ["--set", "offload.optimizer=nvme"]),
                           ("moe-z3", 3, ["--set", "offload.optimizer=nvme", "--set", "offload.params=nvme"])]:
    ob, _ = train(f"{name}-base", 2, moe + ["--set", f"zero.stage={stage}"])
    oo, p = train(name, 2, moe + ["--set", f"zero.stage={stage}", "--set", "checkpoint.interval=3"] + extra)
    mb, mo = metrics(ob), metrics(oo)
    check(len(mb["loss"]) == 6 and np.array_equal(mb["loss"], mo["loss"]) and np.array_equal(mb["grad_norm"], mo["grad_norm"])
          and same_weights(ob, oo), f"{name} (ep = 2, np = 2): 6 losses, gradient norms and final weights bit-identical "
          "to no offload", f"max |diff| {np.abs(mb['loss'] - mo['loss']).max() if len(mb['loss']) == len(mo['loss']) else 'n/a'}")
    check("(group 0: dense)" in p.stdout and "(group 1: held experts)" in p.stdout and "gradients = memory" in p.stdout,
          f"{name}: one Offload per group printed at start, gradients in memory with two groups")
    with h5py.File(os.path.join(oo, "run.h5"), "r") as f:
        ngroups = int(f.attrs.get("offload_groups", 0))
    check(ngroups == 2 and mo["offload_write_bytes"].min() > 0, f"{name}: run.h5 offload_groups = {ngroups}, "
          f"bytes written per step {mo['offload_write_bytes'].min():.0f}")
    if stage == 3:   # the step-3 checkpoint resumes with offload off
        oc = os.path.join(d, "moe-resume")
        run(["train", deck, "--set", f"run.out_dir={oc}", "--set", "train.micro_batch=2", "--set", "zero.stage=3",
             "--set", f"checkpoint.resume={oo}/ckpt/step-000003.h5"] + moe, np=2)
        mr = metrics(oc)
        check(np.array_equal(mr["loss"][-3:], mb["loss"][3:]), "moe-z3: its offloaded checkpoint resumes without "
              "offload: steps 4-6 bit-identical to the run without offload", f"{mr['loss'][-3:]} vs {mb['loss'][3:]}")
finish()
