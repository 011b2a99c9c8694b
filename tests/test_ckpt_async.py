#!/usr/bin/python3
"""Asynchronous checkpoints ([checkpoint] async = true).

1. The same run with async on and off: bit-identical losses, and every
   checkpoint holds bit-identical datasets (the host copy is taken at the step
   boundary, not while training moves on) and passes `ckpt info`.
2. SIGKILL of the whole job at several points of an async write of step 4
   (while the writer thread is half-way, paused after /params by the test
   switch, and at a few delays after the write began, whatever it is doing
   then): `latest` names a checkpoint that is whole (`ckpt info` ok), never
   the half-written one (after the last delay the write may be published or
   the job done: then a later one), and resume = auto continues from it to the straight
   run's losses bit for bit.
"""
import os
import signal
import subprocess
import time

import h5py
import numpy as np

from common import MICRO_MODEL, MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("ckptasync")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "a.deck"), f"""
[run]
seed = 3
{MICRO_MODEL}[data]
train = {tok}
order = sequential
[train]
steps = 8
batch = 8
micro_batch = 4
log_interval = 1
eval_interval = 0
save_weights = false
[zero]
stage = 2
[checkpoint]
interval = 2
keep = 0
""")


def train(out, *sets, check_rc=True):
    args = ["train", deck, "--set", f"run.out_dir={out}"]
    for s in sets:
        args += ["--set", s]
    return run(args, np=2, check_rc=check_rc)


def losses(out):
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        return np.array(f["metrics/loss"]), np.array(f["metrics/step"])


def states(path):
    with h5py.File(path, "r") as f:
        out = {}
        f.visititems(lambda n, o: out.__setitem__(n, np.array(o)) if isinstance(o, h5py.Dataset) else None)
        return out


def latest(out):
    with open(os.path.join(out, "ckpt/latest")) as f:
        return f.read().strip()


sync, asyn = os.path.join(d, "sync"), os.path.join(d, "async")
train(sync)
p = train(asyn, "checkpoint.async=true")
ref, _ = losses(sync)
got, _ = losses(asyn)
check(np.array_equal(ref, got), "async checkpoints: losses bit-identical to synchronous ones", f"{got.tolist()}")
check("writing in the background" in p.stdout and "written in the background" in p.stdout,
      "... the log says the writes ran in the background")
same, whole = True, True
for s in (2, 4, 6, 8):
    name = f"ckpt/step-{s:06d}.h5"
    a, b = states(os.path.join(sync, name)), states(os.path.join(asyn, name))
    same &= a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    whole &= run(["ckpt", "info", os.path.join(asyn, name)], check_rc=False).returncode == 0
check(same, "... every async checkpoint (steps 2, 4, 6, 8) holds the synchronous one's datasets, bit for bit")
check(whole and latest(asyn) == "step-000008.h5", "... each passes ckpt info; latest names step 8 at the end")

# 2. SIGKILL during an async write ---------------------------------------------
for label, delay in (("the writer half-way (paused after /params)", None), ("0.2 s into the write", 0.2),
                     ("1 s into the write", 1.0), ("3 s into the write", 3.0)):
    out = os.path.join(d, f"kill-{delay}")
    cmd = [MPIEXEC, "-np", "2", PARTITA, "train", deck, "--set", f"run.out_dir={out}", "--set", "checkpoint.async=true",
           "--set", "checkpoint.test_pause_step=4", "--set", f"checkpoint.test_pause_s={60 if delay is None else 2}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    tmp = os.path.join(out, "ckpt/step-000004.h5.tmp")
    t0 = time.time()
    while not os.path.exists(tmp) and time.time() - t0 < 60 and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(1.0 if delay is None else delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    name = latest(out)
    info = run(["ckpt", "info", os.path.join(out, "ckpt", name)], check_rc=False)
    # Later delays may find the write done and published, or the job even finished.
    check(name in [f"step-{s:06d}.h5" for s in (2, 4, 6, 8)] and info.returncode == 0,
          f"SIGKILL {label}: latest names a whole checkpoint", f"{name}; left: {sorted(os.listdir(os.path.join(out, 'ckpt')))}")
    if delay is None:
        check(name == "step-000002.h5" and os.path.exists(tmp), "... the half-written step 4 is a .tmp, not named")
    p = train(out, "checkpoint.async=true")
    got, steps = losses(out)
    check(f"{name} at step" in p.stdout and np.array_equal(got, ref) and list(steps) == list(range(1, 9)),
          f"... resume = auto continues from {name} to the straight run's losses, bit for bit")


# 3. Older formats -------------------------------------------------------------
# A format-2 file as the HDF5 hyperslab writer made it is still read: here the
# datasets are rewritten chunked and compressed (no raw offset: the reader must
# go through H5Dread), /meta index dropped, format_version 2, meta checksum
# recomputed. A format-4 file is refused naming the version.
import importlib.util  # noqa: E402
import shutil  # noqa: E402
spec = importlib.util.spec_from_file_location("inspect_ckpt", os.path.join(ROOT, "analysis/inspect_ckpt.py"))
ic = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ic)
old = os.path.join(d, "format2.h5")
shutil.copy(os.path.join(sync, "ckpt/step-000004.h5"), old)
with h5py.File(old, "a") as f:
    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
    for n in names:
        a = np.array(f[n])
        del f[n]
        f.create_dataset(n, data=a, chunks=True, compression="gzip")
    m = f["meta"]
    del m.attrs["index"]
    m.attrs["format_version"] = np.int64(2)
    h, why = ic.meta_digest(m)
    m.attrs["meta_checksum"] = np.uint64(h)
out = os.path.join(d, "from-format2")
p = train(out, f"checkpoint.resume={old}", "checkpoint.interval=0")
got, steps = losses(out)
check("at step 4" in p.stdout and np.array_equal(got, ref[4:]) and list(steps) == [5, 6, 7, 8],
      "a format-2 file (chunked, compressed datasets, no index) resumes to the straight run's losses, bit for bit",
      f"{got.tolist()}")
new = os.path.join(d, "format4.h5")
shutil.copy(os.path.join(sync, "ckpt/step-000004.h5"), new)
with h5py.File(new, "a") as f:
    f["meta"].attrs["format_version"] = np.int64(4)
p = train(os.path.join(d, "from-format4"), f"checkpoint.resume={new}", check_rc=False)
check(p.returncode != 0 and "format_version = 4" in p.stderr and "formats 1 to 3" in p.stderr,
      "a format-4 file is refused naming its version and the formats read",
      next((l for l in p.stderr.splitlines() if "error" in l), "")[:200])
finish()
