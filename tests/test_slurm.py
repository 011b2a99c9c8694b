"""Partita's jobscripts under a real single-node Slurm, started inside the test.

Starts munged, slurmctld and slurmd in the foreground as children of this test (a generated
slurm.conf for one node named after `hostname`, 2 CPUs, SlurmUser=root, in a temp dir, on free
ports), submits jobscripts/train-cpu.sbatch, and tears everything down. Where Slurm cannot start
(not root, slurm-wlm/munge missing, a daemon that does not come up) it prints "SKIP: <reason>"
and exits 77, which tests/run.sh shows as skipped.

  (a) a short training under `srun --mpi=pmi2` with 2 tasks ends with run.h5 (every step).
  (b) self-requeue: SIGUSR1 reaches the ranks (what `#SBATCH --signal=USR1@N` sends N s before
      the time limit; the test sends it at once with `scancel --signal=USR1`), partita finishes
      its step, checkpoints and exits 75, the script runs `scontrol requeue`, and the requeued
      job resumes from the checkpoint and finishes: run.h5 and ckpt/latest cover every step.
      Where this partita lacks that contract (no `[run] time_limit` key), the same plumbing is
      checked with a stand-in trainer that traps USR1 and exits 75.
  --time-limit (slow, about 1-2 min): the signal comes from Slurm itself: --time=1 --signal=USR1@50.
Slurm holds a requeued job for ~2 minutes before it is eligible again; the test releases it
at once (`scontrol update StartTime=now`).
"""
import argparse
import re
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, PARTITA, check, finish  # noqa: E402

SBATCH_SCRIPT = os.path.join(ROOT, "jobscripts", "train-cpu.sbatch")
DAEMONS = ["/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd"]
CLIENTS = ["sbatch", "srun", "scontrol", "scancel", "sinfo"]

SLURM_CONF = """ClusterName=partitatest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
SlurmctldPort={p1}
SlurmdPort={p2}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmi2
SchedulerType=sched/builtin
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
KillWait=5
MinJobAge=600
NodeName={host} CPUs=2 State=UNKNOWN
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""

TRAIN_DECK = """[run]
name = slurm
out_dir = {out}
threads = 1
[model]
vocab = 257
layers = 2
d_model = 64
heads = 4
seq_len = 64
[data]
train = {tokens}
val_fraction = 0.1
[train]
steps = {steps}
micro_batch = 4
batch = 8
log_interval = 10
eval_batches = 2
[optimizer]
warmup = 0
[checkpoint]
interval = {interval}
"""

# The stand-in trainer: waits for SIGUSR1 (then "checkpoints" and exits 75); a requeued run
# finds the marker, "resumes" and finishes.
STANDIN = """#!/bin/bash
d={d}
mkdir -p "$d"
if [ -e "$d/ckpt.$SLURM_PROCID" ]; then echo "stand-in rank $SLURM_PROCID resumed"; touch "$d/done.$SLURM_PROCID"; exit 0; fi
trap 'touch "$d/ckpt.$SLURM_PROCID"; echo "stand-in rank $SLURM_PROCID: USR1, checkpoint, exit 75"; exit 75' USR1
touch "$d/started.$SLURM_PROCID"
for i in $(seq 1200); do sleep 0.1; done
exit 3
"""


def skip(reason):
    print(f"SKIP: {reason}")
    sys.exit(77)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Slurm:
    """munged + slurmctld + slurmd in the foreground, in a temp dir; stop() ends them."""

    def __init__(self):
        self.d = tempfile.mkdtemp(prefix="partita-slurm-")
        self.procs = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = os.path.join(self.d, "slurm.conf")
        self.env = dict(os.environ, SLURM_CONF=self.conf)
        for k in list(self.env):
            if k.startswith("SLURM_") and k != "SLURM_CONF":
                del self.env[k]  # a test run inside a Slurm job must not leak its job into ours

    def start(self):
        os.makedirs(os.path.join(self.d, "state"))
        os.makedirs(os.path.join(self.d, "spool"))
        key = os.path.join(self.d, "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o600)
        with open(self.conf, "w") as f:
            f.write(SLURM_CONF.format(host=self.host, d=self.d, p1=free_port(), p2=free_port()))
        sock = os.path.join(self.d, "munge.socket")
        self.spawn("munged", ["/usr/sbin/munged", "-F", "--force", f"--key-file={key}", f"--socket={sock}",
                              f"--pid-file={self.d}/munged.pid", f"--log-file={self.d}/munged.log",
                              f"--seed-file={self.d}/munge.seed"])
        if not self.wait_for(lambda: os.path.exists(sock), 10):
            return "munged did not create its socket: " + self.tail("munged")
        self.spawn("slurmctld", ["/usr/sbin/slurmctld", "-D", "-i", "-f", self.conf])
        self.spawn("slurmd", ["/usr/sbin/slurmd", "-D", "-f", self.conf])
        ok = self.wait_for(lambda: "idle" in self.cmd(["sinfo", "-h", "-o", "%t"]).stdout, 30)
        if not ok:
            return ("the node did not come up idle in 30 s: " + self.tail("slurmctld") + self.tail("slurmd") +
                    self.log_tail("slurmctld.log") + self.log_tail("slurmd.log"))
        return None

    def spawn(self, name, argv):
        out = open(os.path.join(self.d, name + ".out"), "w")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append((name, p))

    def tail(self, name):
        p = os.path.join(self.d, name + ".out")
        return f"\n[{name}] " + (open(p).read()[-800:] if os.path.exists(p) else "(no output)")

    def log_tail(self, name):
        p = os.path.join(self.d, name)
        return f"\n[{name}] " + (open(p).read()[-800:] if os.path.exists(p) else "(none)")

    @staticmethod
    def wait_for(cond, seconds, step=0.3):
        t = time.time()
        while time.time() - t < seconds:
            try:
                if cond():
                    return True
            except (OSError, subprocess.SubprocessError):
                pass
            time.sleep(step)
        return False

    def cmd(self, argv, timeout=30):
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def job(self, jid):
        """scontrol show job as a dict."""
        r = self.cmd(["scontrol", "show", "job", "-o", str(jid)])
        return dict(kv.split("=", 1) for kv in r.stdout.split() if "=" in kv)

    def stop(self):
        subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=30)
        if any(n == "slurmd" for n, _ in self.procs):  # let the jobs' steps end before slurmd does
            self.wait_for(lambda: not self.cmd(["squeue", "-h"]).stdout.strip(), 20, 0.5)
        for name, p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for name, p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def prerequisites():
    if os.geteuid() != 0:
        return "the test runs slurmctld and slurmd as root, and this is not root"
    for b in DAEMONS:
        if not os.access(b, os.X_OK):
            return f"{b} is missing (hint: make deps installs slurm-wlm and munge)"
    for c in CLIENTS:
        if not shutil.which(c):
            return f"{c} is missing (hint: make deps installs slurm-wlm)"
    if not os.access(PARTITA, os.X_OK):
        return f"{PARTITA} is missing (hint: make)"
    return None


def submit(s, args, wait=True):
    """sbatch (--wait) the cpu jobscript; returns the Popen (its stdout is the job id line)."""
    argv = ["sbatch", "--parsable"] + (["--wait"] if wait else []) + args
    return subprocess.Popen(argv, env=s.env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def job_id(p, s, timeout=30):
    """Reads the job id sbatch --parsable prints first."""
    line = p.stdout.readline().strip()
    return int(line.split(";")[0]) if line else None


def read(path):
    return open(path, errors="replace").read() if os.path.exists(path) else ""


def metrics_steps(run_h5):
    import h5py
    with h5py.File(run_h5, "r") as f:
        return [int(x) for x in f["metrics/step"][:]]


def case_training(s, tokens):
    """(a) srun --mpi=pmi2, 2 tasks, a short training; run.h5 holds every step."""
    out = os.path.join(s.d, "run-a")
    deck = os.path.join(s.d, "a.deck")
    open(deck, "w").write(TRAIN_DECK.format(out=out, tokens=tokens, steps=20, interval=10))
    log = os.path.join(s.d, "a.out")
    t0 = time.time()
    p = submit(s, ["-n", "2", "--time=10", f"--output={log}", SBATCH_SCRIPT, deck])
    jid = job_id(p, s)
    try:
        rc = p.wait(timeout=240)
    except subprocess.TimeoutExpired:
        s.cmd(["scancel", str(jid)])
        rc = None
    text = read(log)
    check(rc == 0, "(a) sbatch --wait of train-cpu.sbatch: the job ends with status 0",
          f"rc {rc}, {time.time() - t0:.1f} s; job log tail: {text[-600:]!r}" if rc != 0 else f"{time.time() - t0:.1f} s")
    check(re.search(r"layout: 2 ranks \(dp=2\b", text), "(a) srun --mpi=pmi2 started one job of 2 MPI ranks (dp = 2)",
          next((ln for ln in text.splitlines() if ln.startswith("layout:")), "no layout line"))
    run_h5 = os.path.join(out, "run.h5")
    steps = metrics_steps(run_h5) if os.path.exists(run_h5) else []
    check(steps == list(range(1, 21)) or steps[-1:] == [20], "(a) run.h5 records the steps up to 20",
          f"steps {steps[:3]}...{steps[-3:]} ({len(steps)} rows)")


def partita_has_signal_contract():
    r = subprocess.run([PARTITA, "check", os.path.join(ROOT, "inputs", "gpt-tiny.deck"), "--deck-only", "--set",
                        "run.time_limit=0"], capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    return r.returncode == 0


def release_requeued(s, jid, timeout):
    """Waits until jid has been requeued (Restarts >= 1, pending), then makes it eligible now."""
    ok = s.wait_for(lambda: int(s.job(jid).get("Restarts", "0")) >= 1 and
                    s.job(jid).get("JobState") == "PENDING", timeout, 0.5)
    if ok:
        s.cmd(["scontrol", "update", f"JobId={jid}", "StartTime=now"])
    return ok


def case_requeue(s, tokens, slurm_signal):
    """(b) USR1 -> checkpoint + exit 75 -> scontrol requeue -> resume -> done."""
    real = partita_has_signal_contract()
    tag = "b-slurm" if slurm_signal else "b"
    log = os.path.join(s.d, f"{tag}.out")
    out = os.path.join(s.d, f"run-{tag}")
    steps = 1500  # ~0.01 s a step at np 2: long enough to be signalled mid-run
    deck = os.path.join(s.d, f"{tag}.deck")
    open(deck, "w").write(TRAIN_DECK.format(out=out, tokens=tokens, steps=steps, interval=100000))
    env_args = []
    if not real:
        print("note: this partita has no [run] time_limit key, so no SIGUSR1 contract yet: the requeue "
              "plumbing is checked with a stand-in trainer that traps USR1 and exits 75")
        standin = os.path.join(s.d, f"standin-{tag}.sh")
        open(standin, "w").write(STANDIN.format(d=os.path.join(s.d, f"standin-{tag}")))
        os.chmod(standin, 0o755)
        env_args = [f"--export=ALL,PARTITA={standin}"]
    timing = ["--time=1", "--signal=USR1@50"] if slurm_signal else ["--time=10"]
    t0 = time.time()
    p = submit(s, ["-n", "2", f"--output={log}"] + timing + env_args + [SBATCH_SCRIPT, deck])
    jid = job_id(p, s)
    if not slurm_signal:
        # Wait until the ranks are training (or the stand-in is waiting), then signal them.
        started = (lambda: "step     10/" in read(log)) if real else \
                  (lambda: all(os.path.exists(os.path.join(s.d, f"standin-{tag}", f"started.{r}")) for r in (0, 1)))
        ok = s.wait_for(started, 120)
        check(ok, f"({tag}) the job is running before the signal", f"{time.time() - t0:.1f} s")
        s.cmd(["scancel", "--signal=USR1", str(jid)])
    requeued = release_requeued(s, jid, 150)
    check(requeued, f"({tag}) the job requeued itself after exit 75", read(log)[-500:] if not requeued else
          f"{time.time() - t0:.1f} s")
    try:
        rc = p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        s.cmd(["scancel", str(jid)])
        rc = None
    text = read(log)
    info = s.job(jid)
    check(rc == 0 and info.get("JobState") == "COMPLETED", f"({tag}) sbatch --wait ends: the requeued job completed",
          f"rc {rc}, state {info.get('JobState')}, restarts {info.get('Restarts')}, {time.time() - t0:.1f} s")
    check("requeueing job" in text and "restart 1" in text, f"({tag}) the job log shows exit 75, the requeue and restart 1",
          " | ".join(ln for ln in text.splitlines() if "requeue" in ln or "restart" in ln)[:300])
    if not real:
        done = all(os.path.exists(os.path.join(s.d, f"standin-{tag}", f"{m}.{r}")) for m in ("ckpt", "done")
                   for r in (0, 1))
        check(done, f"({tag}) stand-in: both ranks checkpointed on USR1 and finished after the requeue")
        return
    run_h5 = os.path.join(out, "run.h5")
    got = metrics_steps(run_h5) if os.path.exists(run_h5) else []
    check(sorted(set(got)) == list(range(1, steps + 1)) or (got and got[-1] == steps),
          f"({tag}) run.h5 covers steps 1..{steps} across the two jobs", f"{len(got)} rows, last {got[-1:]}")
    latest = read(os.path.join(out, "ckpt", "latest")).strip()
    check(latest.endswith(f"step-{steps:06d}.h5"), f"({tag}) ckpt/latest names the final step's checkpoint", latest)
    first = text.split("requeueing job")[0]
    check("checkpoint:" in first, f"({tag}) the signalled run wrote a checkpoint before exit 75",
          next((ln for ln in first.splitlines() if ln.startswith("checkpoint:")), "none"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-limit", action="store_true", help="also the slow case: the signal from --signal")
    a = ap.parse_args()
    why = prerequisites()
    if why:
        skip(why)
    s = Slurm()
    try:
        why = s.start()
        if why:
            skip("Slurm did not start here: " + why)
        print(f"slurm: munged, slurmctld, slurmd up on node {s.host} (2 CPUs) in {s.d}")
        tokens = os.path.join(s.d, "tokens.h5")
        r = subprocess.run([PARTITA, "prep", tokens, "/usr/share/common-licenses"], capture_output=True,
                           text=True, cwd=ROOT)
        if not check(r.returncode == 0, "token file for the jobs", r.stderr[-300:]):
            finish()
        case_training(s, tokens)
        case_requeue(s, tokens, slurm_signal=False)
        if a.time_limit:
            case_requeue(s, tokens, slurm_signal=True)
    finally:
        s.stop()
        if not __import__("common").failures:
            shutil.rmtree(s.d, ignore_errors=True)
        else:
            print(f"logs kept in {s.d}")
    finish()


if __name__ == "__main__":
    main()
