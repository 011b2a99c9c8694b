#!/usr/bin/python3
"""Checkpoints under faults (issue 10, part B).

1. Resume fallback and pruning: a job writes checkpoints 2, 4, 6; `latest` is
   pointed at a missing step-8: resume = auto warns, resumes at 6, and with
   keep = 1 the earlier job's 2, 4 and 6 are all still there afterwards (only
   this job's own files are pruned). `latest` naming a damaged file (flipped
   byte, edited /meta) falls back past it with the reason; a directory whose
   checkpoints are all damaged is refused, not silently restarted.
2. Checkpoint I/O under [comm] timeout_s: one rank stalls inside the write
   ([checkpoint] fault_stall_*), and one rank is SIGSTOPped inside it: the job
   ends within timeout + a few seconds with "checkpoint write of ... did not
   finish within timeout_s", and `latest` still names the previous whole one.
3. /meta under its checksum: an edited step is refused by resume, `ckpt info`
   and inspect_ckpt.py ("meta checksum mismatch"); a format-1 file (no
   format_version, no meta_checksum) still resumes, with a warning.
4. File-system errors name the file and the reason: the checkpoint directory
   on a read-only tmpfs (EROFS), on a full one (ENOSPC), and a temporary name
   taken by a directory (EISDIR); the previous checkpoint stays whole.
"""
import os
import shutil
import signal
import subprocess
import time

import h5py

from common import MICRO_MODEL, MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("ckptfault")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "c.deck"), f"""
[run]
seed = 5
{MICRO_MODEL}[data]
train = {tok}
[train]
steps = 6
batch = 8
log_interval = 2
eval_interval = 0
[checkpoint]
interval = 2
keep = 3
""")


def train(out, *sets, np_=2, check_rc=True, timeout=300):
    args = ["train", deck, "--set", f"run.out_dir={out}", "--set", f"train.micro_batch={8 // np_}"]
    for s in sets:
        args += ["--set", s]
    return run(args, np=np_, check_rc=check_rc, timeout=timeout)


def ckpts(out):
    return sorted(f for f in os.listdir(os.path.join(out, "ckpt")) if f.startswith("step-"))


def latest(out):
    with open(os.path.join(out, "ckpt/latest")) as f:
        return f.read().strip()


def flip_byte(path, dataset="params/wte.weight"):
    with h5py.File(path, "r") as f:
        off = f[dataset].id.get_offset()
    with open(path, "r+b") as f:
        f.seek(off + 100)
        b = f.read(1)
        f.seek(off + 100)
        f.write(bytes([b[0] ^ 1]))


# 1. resume fallback and pruning ------------------------------------------------
base = os.path.join(d, "base")
train(base)
check(ckpts(base) == ["step-000002.h5", "step-000004.h5", "step-000006.h5"], "the first job writes 2, 4, 6",
      str(ckpts(base)))

out = os.path.join(d, "fallback")
shutil.copytree(base, out)
with open(os.path.join(out, "ckpt/latest"), "w") as f:
    f.write("step-000008.h5\n")
p = train(out, "train.steps=10", "checkpoint.keep=1")
check("resumed from" in p.stdout and "step-000006.h5 at step 6" in p.stdout,
      "latest names a missing step-8: resume = auto resumes at step 6, not 0",
      [l for l in p.stdout.splitlines() if "resumed" in l][:1])
check("step-000008.h5', which is missing" in p.stderr, "... with a warning naming the missing file")
left = ckpts(out)
check(all(f in left for f in ["step-000002.h5", "step-000004.h5", "step-000006.h5"]),
      "keep = 1 prunes only this job's files: the earlier job's 2, 4, 6 are all still there", str(left))
check("step-000008.h5" not in left and "step-000010.h5" in left and latest(out) == "step-000010.h5",
      "... and this job's own 8 is pruned, 10 kept and latest", str(left))

out = os.path.join(d, "damaged")
shutil.copytree(base, out)
flip_byte(os.path.join(out, "ckpt/step-000006.h5"))
with h5py.File(os.path.join(out, "ckpt/step-000004.h5"), "a") as f:
    f["meta"].attrs["step"] = 5
p = train(out, "train.steps=8")
warn = p.stderr
check("at step 2" in p.stdout and "step-000006.h5' is damaged" in warn and "fails its checksum" in warn and
      "step-000004.h5' is damaged" in warn and "meta checksum mismatch" in warn,
      "latest names a damaged file: resume falls back past 6 (flipped byte) and 4 (edited step) to 2, saying why",
      [l for l in p.stdout.splitlines() if "resumed" in l][:1])

out = os.path.join(d, "alldamaged")
shutil.copytree(base, out)
for s in (2, 4, 6):
    flip_byte(os.path.join(out, f"ckpt/step-00000{s}.h5"))
p = train(out, "train.steps=8", check_rc=False)
check(p.returncode != 0 and "no checkpoint in" in p.stderr and "loads whole" in p.stderr and
      len(ckpts(out)) == 3, "every checkpoint damaged: refused with a hint, nothing deleted or restarted",
      (p.stderr.strip().splitlines() or [""])[-2][:160] if p.stderr.strip() else "")

# 2. checkpoint I/O under the timeout --------------------------------------------
out = os.path.join(d, "stall")
t0 = time.time()
p = train(out, "comm.timeout_s=3", "checkpoint.fault_stall_rank=1", "checkpoint.fault_stall_step=4",
          "checkpoint.fault_stall_s=120", check_rc=False, timeout=120)
dt = time.time() - t0
check(p.returncode != 0 and dt < 3 + 15 and "checkpoint write of" in p.stderr and
      "did not finish within timeout_s = 3 s on rank" in p.stderr,
      "a rank stalled in a checkpoint write ends the job within timeout_s + a few s, saying so",
      f"{dt:.1f} s; " + next((l for l in p.stderr.splitlines() if "did not finish" in l), "")[:150])
check(latest(out) == "step-000002.h5" and os.path.exists(os.path.join(out, "ckpt/step-000002.h5")),
      "... and latest still names the previous whole checkpoint", latest(out))
p = train(out, check_rc=True)
check("step-000002.h5 at step 2" in p.stdout, "... from which the next job resumes")


def ancestor(pid, root):
    while pid > 1:
        if pid == root:
            return True
        try:
            with open(f"/proc/{pid}/status") as f:
                pid = int(next(l for l in f if l.startswith("PPid:")).split()[1])
        except (OSError, StopIteration):
            return False
    return False


def rank_pid(launcher, rank):
    """The pid of one rank of the job mpiexec `launcher` started (PMI_RANK in its environment)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                exe = f.read().split(b"\0")[0]
        except OSError:
            continue
        if exe.endswith(b"partita") and f"PMI_RANK={rank}".encode() in env and ancestor(int(pid), launcher):
            return int(pid)
    return None


out = os.path.join(d, "sigstop")
cmd = [MPIEXEC, "-np", "2", PARTITA, "train", deck, "--set", f"run.out_dir={out}", "--set", "train.micro_batch=4",
       "--set", "comm.timeout_s=4", "--set", "checkpoint.test_pause_step=4", "--set", "checkpoint.test_pause_s=2"]
proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, start_new_session=True)
tmp = os.path.join(out, "ckpt/step-000004.h5.tmp")
t0 = time.time()
while not os.path.exists(tmp) and time.time() - t0 < 120 and proc.poll() is None:
    time.sleep(0.05)
pid = rank_pid(proc.pid, 1)
t_stop = time.time()
if pid:
    os.kill(pid, signal.SIGSTOP)
try:
    _, err = proc.communicate(timeout=60)
except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
dt = time.time() - t_stop
gone = pid is not None and not os.path.exists(f"/proc/{pid}")
check(pid is not None and proc.returncode != 0 and dt < 4 + 15 and "did not finish within timeout_s = 4 s" in err,
      "rank 1 SIGSTOPped inside a checkpoint write: the job ends within timeout_s + a few s, naming the write",
      f"{dt:.1f} s after SIGSTOP; " + next((l for l in err.splitlines() if "did not finish" in l), "")[:150])
check(gone and latest(out) == "step-000002.h5", "... the stopped rank is gone and latest names step 2", latest(out))

# 3. /meta under its checksum --------------------------------------------------------
good = os.path.join(base, "ckpt/step-000006.h5")
edited = os.path.join(d, "edited.h5")
shutil.copy(good, edited)
with h5py.File(edited, "a") as f:
    f["meta"].attrs["step"] = 3
p = train(os.path.join(d, "edited-run"), f"checkpoint.resume={edited}", check_rc=False)
check(p.returncode != 0 and "meta checksum mismatch" in p.stderr and "edited.h5" in p.stderr,
      "an edited step is refused by resume (meta checksum mismatch)")
p = run(["ckpt", "info", edited], check_rc=False)
check(p.returncode == 1 and "meta checksum mismatch" in p.stdout and "FAILED" in p.stdout,
      "... and by `ckpt info`", p.stdout.strip().splitlines()[-1])
p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "analysis/inspect_ckpt.py"), edited], capture_output=True,
                   text=True)
check(p.returncode == 1 and "meta checksum: MISMATCH" in p.stdout, "... and by inspect_ckpt.py, which recomputes it")
p = subprocess.run(["/usr/bin/python3", os.path.join(ROOT, "analysis/inspect_ckpt.py"), good], capture_output=True,
                   text=True)
check(p.returncode == 0 and "meta checksum: ok" in p.stdout, "inspect_ckpt.py's meta checksum equals ckpt.c's")

old = os.path.join(d, "format1.h5")
shutil.copy(good, old)
with h5py.File(old, "a") as f:
    del f["meta"].attrs["format_version"]
    del f["meta"].attrs["meta_checksum"]
p = train(os.path.join(d, "format1-run"), f"checkpoint.resume={old}")
check("step 6" in p.stdout and "format 1" in p.stderr, "a format-1 checkpoint (no meta checksum) resumes, with a warning",
      next((l for l in p.stderr.splitlines() if "format 1" in l), "")[:150])
p = run(["ckpt", "info", old])
check("no meta checksum" in p.stdout and "ok: 0 of" in p.stdout, "... and `ckpt info` says it has none")

# 4. file-system errors name the file and the reason ------------------------------------
mnt = os.path.join(d, "mnt")
os.makedirs(mnt)
mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", mnt], capture_output=True).returncode == 0
if mounted:
    try:
        subprocess.run(["mount", "-o", "remount,ro", mnt], check=True)
        p = train(os.path.join(d, "rofs"), f"checkpoint.dir={mnt}", check_rc=False)
        check(p.returncode != 0 and f"cannot create checkpoint '{mnt}/step-000002.h5.tmp'" in p.stderr and
              "Read-only file system" in p.stderr, "a read-only checkpoint directory: the message names the file and EROFS",
              next((l for l in p.stderr.splitlines() if "error:" in l), "")[:160])
        # Room for one checkpoint (~450 KB) but not two.
        subprocess.run(["mount", "-o", "remount,rw,size=700k", mnt], check=True)
        out = os.path.join(d, "full")
        p = train(out, f"checkpoint.dir={mnt}", "checkpoint.keep=0", check_rc=False)
        check(p.returncode != 0 and "No space left on device" in p.stderr and f"'{mnt}/step-000004.h5.tmp'" in p.stderr,
              "a full file system: the message names the checkpoint file and ENOSPC",
              next((l for l in p.stderr.splitlines() if "error:" in l), "")[:160])
        with open(os.path.join(mnt, "latest")) as f:
            name = f.read().strip()
        p = run(["ckpt", "info", os.path.join(mnt, name)], check_rc=False)
        check(name == "step-000002.h5" and p.returncode == 0, "... and latest names step 2, which is whole", name)
    finally:
        for _ in range(50):     # the aborted job's processes may hold the mount a moment longer
            if subprocess.run(["umount", mnt], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            subprocess.run(["umount", "-l", mnt])
else:
    print("skip: cannot mount a tmpfs here (not root?): EROFS and ENOSPC cases not run")
out = os.path.join(d, "eisdir")
os.makedirs(os.path.join(out, "ckpt/step-000004.h5.tmp"))
p = train(out, check_rc=False)
check(p.returncode != 0 and "step-000004.h5.tmp" in p.stderr and "Is a directory" in p.stderr and
      latest(out) == "step-000002.h5",
      "the temporary name taken by a directory: the message names it and EISDIR; latest stays at step 2",
      next((l for l in p.stderr.splitlines() if "error:" in l), "")[:160])
finish()
