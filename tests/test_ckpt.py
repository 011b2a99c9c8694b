#!/usr/bin/python3
"""Checkpoints.

1. Exact resume: 20 steps straight, and 10 (train.stop_at) + resume + 10 at the
   same layout: bit-identical losses and final weights.
2. Crash safety: a rank is killed (SIGKILL, the whole job) half-way through
   writing step 10's checkpoint (test-only pause); resume = auto picks step 5,
   the last whole one, and trains on to the same losses as the straight run.
3. Another layout: written at np=4 ZeRO-3, resumed at np=2 ZeRO-1 and np=1
   ZeRO-0; losses follow the np=4 run within the layout tolerance (1e-5).
   3b. A wider model (d_model 128: its matrices start on a page of the flat
   layout, as do ZeRO's shards): resumes at np=1 ZeRO-0, np=2 ZeRO-1 (node-shared),
   np=2 ZeRO-3 with MPI gathers and np=2 ZeRO-0 read at least 90% of their bytes
   by O_DIRECT straight into the state buffers where the file system takes
   O_DIRECT; the same layout trains on bit for bit, the others within 1e-5.
4. Refusals, each naming what is wrong: truncated file, missing dataset,
   flipped byte, a deck of another model shape.
5. `ckpt info` and `ckpt export`: the export equals final.h5 and loads into
   the PyTorch reference model.
"""
import os
import re
import shutil
import signal
import subprocess
import time

import h5py
import numpy as np
import torch

from common import MICRO_MODEL, MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck
from gpt_torch import gpt_forward, loss_of

d = tmpdir("ckpt")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "c.deck"), f"""
[run]
seed = 5
{MICRO_MODEL}[data]
train = {tok}
order = shuffled
[train]
steps = 20
batch = 8
log_interval = 5
eval_interval = 0
[optimizer]
lr = 3e-3
warmup = 2
[checkpoint]
interval = 5
keep = 2
""")


def train(name, np_, stage, *sets, check_rc=True, deck=deck):
    out = os.path.join(d, name)
    args = ["train", deck, "--set", f"run.out_dir={out}", "--set", f"zero.stage={stage}",
            "--set", f"train.micro_batch={8 // np_}"]
    for s in sets:
        args += ["--set", s]
    return run(args, np=np_, check_rc=check_rc)


def losses(name):
    with h5py.File(os.path.join(d, name, "run.h5"), "r") as f:
        return np.array(f["metrics/loss"]), np.array(f["metrics/step"])


def weights(path):
    with h5py.File(path, "r") as f:
        return {k: np.array(f["params"][k]) for k in f["params"]}


# 1. exact resume
train("straight", 2, 2)
ref, _ = losses("straight")
train("split", 2, 2, "train.stop_at=10")
a, steps_a = losses("split")
check(len(a) == 10 and os.path.exists(os.path.join(d, "split/ckpt/step-000010.h5")),
      "stop_at=10 stops after 10 steps with a checkpoint")
p = train("split", 2, 2)
check("resumed from" in p.stdout and "step-000010.h5" in p.stdout, "resume = auto finds step 10")
b, steps_b = losses("split")
check(len(b) == 20 and list(steps_b) == list(range(1, 21)), "run.h5 continues: steps 1..20, once each")
check(np.array_equal(b, ref), "10 + resume + 10 gives bit-identical losses",
      f"max |diff| {np.max(np.abs(b - ref)):.3g}")
wa, wb = weights(os.path.join(d, "straight/final.h5")), weights(os.path.join(d, "split/final.h5"))
check(all(np.array_equal(wa[k], wb[k]) for k in wa), "... and bit-identical final weights")
ck = sorted(os.listdir(os.path.join(d, "straight/ckpt")))
check(ck == ["latest", "step-000015.h5", "step-000020.h5"], "keep = 2 keeps the newest two", str(ck))

# 2. crash in the middle of a checkpoint write
out = os.path.join(d, "crash")
cmd = [MPIEXEC, "-np", "2", PARTITA, "train", deck, "--set", f"run.out_dir={out}", "--set", "zero.stage=2",
       "--set", "train.micro_batch=4", "--set", "checkpoint.test_pause_step=10", "--set", "checkpoint.test_pause_s=60"]
env = dict(os.environ, OMP_NUM_THREADS="1")
proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
tmp = os.path.join(out, "ckpt/step-000010.h5.tmp")
t0 = time.time()
while not os.path.exists(tmp) and time.time() - t0 < 60 and proc.poll() is None:
    time.sleep(0.1)
time.sleep(1.0)
os.killpg(proc.pid, signal.SIGKILL)
proc.wait()
check(os.path.exists(tmp), "the job was killed while step 10's checkpoint was half written")
with open(os.path.join(out, "ckpt/latest")) as f:
    latest = f.read().strip()
check(latest == "step-000005.h5", "latest still names the last whole checkpoint", latest)
p = run(["train", deck, "--set", f"run.out_dir={out}", "--set", "zero.stage=2", "--set", "train.micro_batch=4"], np=2)
check("step-000005.h5" in p.stdout and "resumed" in p.stdout, "resume = auto picks step 5")
c, steps_c = losses("crash")
check(np.array_equal(c, ref), "the crashed run trains on to the straight run's losses, bit for bit")
check(not os.path.exists(tmp), "the half-written file is cleaned up")

# 3. another layout
train("np4z3", 4, 3, "train.stop_at=10")
train("np4z3-full", 4, 3, "checkpoint.interval=0")
ref4, _ = losses("np4z3-full")
src = os.path.join(d, "np4z3/ckpt/step-000010.h5")
# (ZeRO-0 at np > 1: each rank reads its partition of every state, then they all-gather.)
read = {}
for np_, stage in [(2, 1), (1, 0), (2, 0), (4, 0)]:
    name = f"from-np4-to-np{np_}z{stage}"
    p = train(name, np_, stage, f"checkpoint.resume={src}", "checkpoint.interval=0")
    l, st = losses(name)
    e = float(np.max(np.abs(l - ref4[10:]) / ref4[10:]))
    check(len(l) == 10 and st[0] == 11 and e < 1e-5, f"np=4 ZeRO-3 checkpoint resumes at np={np_} ZeRO-{stage}",
          f"steps {int(st[0])}..{int(st[-1])}, max rel diff {e:.1e} (tol 1e-5)")
    mb = re.search(r"states [\d.]+ s = ([\d.]+) MB at", p.stdout)
    read[(np_, stage)] = float(mb.group(1)) if mb else float("nan")
whole = read[(1, 0)]
for np_ in (2, 4):     # rank 0's partition: 1/np of the states, within a tensor row's rounding
    part = read[(np_, 0)]
    check(abs(part * np_ / whole - 1) < 0.02, f"np={np_} ZeRO-0: rank 0 reads its partition of the states, not all",
          f"{part:.3f} MB of {whole:.3f} MB")

# 3b. in place
wide = write_deck(os.path.join(d, "wide.deck"), open(deck).read().replace("d_model = 32", "d_model = 128"))
w = train("wide", 2, 1, "train.steps=8", "checkpoint.interval=4", deck=wide)
refw, _ = losses("wide")
direct = re.search(r"\((\d+)% by O_DIRECT\)", w.stdout)
direct = int(direct.group(1)) if direct else 0
src = os.path.join(d, "wide/ckpt/step-000004.h5")
for np_, stage, extra in [(2, 1, ()), (1, 0, ()), (2, 3, ("zero.node_shared=false",)), (2, 0, ())]:
    name = f"wide-np{np_}z{stage}"
    p = train(name, np_, stage, "train.steps=8", f"checkpoint.resume={src}", "checkpoint.interval=0", *extra,
              deck=wide)
    l, st = losses(name)
    same = np_ == 2 and stage == 1
    e = float(np.max(np.abs(l - refw[4:]) / refw[4:])) if len(l) == 4 else float("inf")
    inplace = re.search(r"(\d+)% read in place", p.stdout)
    inplace = int(inplace.group(1)) if inplace else -1
    check(len(l) == 4 and (np.array_equal(l, refw[4:]) if same else e < 1e-5),
          f"d_model 128, written at np=2 ZeRO-1: resumes at np={np_} ZeRO-{stage} "
          f"{'bit for bit' if same else 'within 1e-5'}", f"max rel diff {e:.1e}")
    if direct == 0:     # a file system without O_DIRECT (tmpfs): everything goes through the page cache
        check(inplace == 0, f"... no O_DIRECT here: nothing claimed in place", f"{inplace}%")
    else:
        check(inplace >= 90, f"... {inplace}% of rank 0's bytes read by O_DIRECT straight into place (>= 90%)",
              p.stdout[p.stdout.find("resumed from"):][:240])

# 4. refusals
good = os.path.join(d, "straight/ckpt/step-000020.h5")


def refused(what, path, must, extra=()):
    p = train("refuse", 1, 0, f"checkpoint.resume={path}", *extra, check_rc=False)
    text = p.stderr
    ok = p.returncode != 0 and all(m in text for m in must)
    check(ok, what, (text.strip().splitlines() or ["(nothing)"])[0][:200])


bad = os.path.join(d, "truncated.h5")
with open(good, "rb") as f:
    data = f.read()
with open(bad, "wb") as f:
    f.write(data[: len(data) // 2])
refused("a truncated checkpoint is refused", bad, ["cannot resume from checkpoint", "truncated.h5", "truncated file"])

bad = os.path.join(d, "missing.h5")
shutil.copy(good, bad)
with h5py.File(bad, "a") as f:
    del f["optim/exp_avg/h.1.mlp.c_fc.weight"]
refused("a missing dataset is refused, naming it", bad, ["lacks the dataset", "optim/exp_avg/h.1.mlp.c_fc.weight"])

bad = os.path.join(d, "flipped.h5")
shutil.copy(good, bad)
with h5py.File(bad, "r") as f:
    off = f["params/h.0.attn.c_attn.weight"].id.get_offset()
with open(bad, "r+b") as f:
    f.seek(off + 1001)
    byte = f.read(1)
    f.seek(off + 1001)
    f.write(bytes([byte[0] ^ 0x10]))
refused("a flipped byte is refused, naming the dataset", bad, ["checksum", "params/h.0.attn.c_attn.weight"])
refused("a checkpoint of another model shape is refused, naming the key", good,
        ["n_embd = 32", "model.d_model", "--set"], ["model.d_model=48"])
p = run(["ckpt", "info", bad], check_rc=False)
check(p.returncode == 1 and "MISMATCH" in p.stdout and "FAILED" in p.stdout, "ckpt info reports the corrupt dataset")

# 5. info and export
p = run(["ckpt", "info", good])
check("step 20" in p.stdout and "ranks=2 dp=2 zero_stage=2" in p.stdout and "ok: 0 of" in p.stdout,
      "ckpt info shows step, layout and checksums ok")
exp = os.path.join(d, "export.h5")
run(["ckpt", "export", good, exp])
we = weights(exp)
check(all(np.array_equal(we[k], wa[k]) for k in wa) and len(we) == len(wa), "the export equals final.h5")
with h5py.File(exp, "r") as f:
    L, NH, V = int(f.attrs["n_layer"]), int(f.attrs["n_head"]), int(f.attrs["vocab_size"])
    params = {k: torch.tensor(np.array(f["params"][k])) for k in f["params"]}
with h5py.File(tok, "r") as f:
    t = torch.tensor(np.array(f["tokens"][:4 * 33]).astype(np.int64)).view(4, 33)
loss = loss_of(gpt_forward(params, t[:, :-1], L, NH, V), t[:, 1:], V).item()
check(np.isfinite(loss) and loss < 4.5, "the export loads into the PyTorch model and scores text", f"loss {loss:.3f}")

# 6. the analysis tools on the runs and checkpoints made here
py = "/usr/bin/python3"
png = os.path.join(d, "runs.png")
p = subprocess.run([py, os.path.join(ROOT, "analysis/plot_run.py"), os.path.join(d, "straight/run.h5"),
                    os.path.join(d, "np4z3-full/run.h5"), "-o", png], capture_output=True, text=True)
check(p.returncode == 0 and os.path.getsize(png) > 10000 and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n",
      "plot_run.py draws two real runs into a PNG", f"{os.path.getsize(png) if os.path.exists(png) else 0} bytes")
p = subprocess.run([py, os.path.join(ROOT, "analysis/summary.py"), os.path.join(d, "split/run.h5")],
                   capture_output=True, text=True)
check(p.returncode == 0 and f"{ref[-1]:.4f}" in p.stdout, "summary.py shows the resumed run's final loss", f"{ref[-1]:.4f}")
p = subprocess.run([py, os.path.join(ROOT, "analysis/inspect_ckpt.py"), good], capture_output=True, text=True)
check(p.returncode == 0, "inspect_ckpt.py passes a real checkpoint", p.stdout.strip().splitlines()[-1][:120])
p = subprocess.run([py, os.path.join(ROOT, "analysis/inspect_ckpt.py"), os.path.join(d, "flipped.h5")],
                   capture_output=True, text=True)
check(p.returncode == 1 and "h.0.attn.c_attn.weight" in p.stdout, "inspect_ckpt.py names the flipped dataset")
finish()
