"""Shared helpers for Partita's Python tests: run the binary, make token files, read HDF5."""
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTITA = os.path.join(ROOT, os.environ.get("PARTITA", "build/partita"))
MPIEXEC = os.environ.get("MPIEXEC", "mpiexec.mpich")

failures = []


def check(cond, what, detail=""):
    """Records one assertion and prints it, so a failure explains itself."""
    print(("ok   " if cond else "FAIL ") + what + (f"  [{detail}]" if detail else ""), flush=True)
    if not cond:
        failures.append(what)
    return cond


def finish():
    print(f"summary: {len(failures)} failed checks" + (": " + "; ".join(failures) if failures else ""))
    sys.exit(1 if failures else 0)


def run(args, np=None, env=None, check_rc=True, timeout=600):
    """Runs partita (under mpiexec when np is given); returns CompletedProcess."""
    cmd = ([MPIEXEC, "-np", str(np)] if np else []) + [PARTITA] + list(args)
    e = dict(os.environ)
    e.setdefault("OMP_NUM_THREADS", "1")
    if env:
        e.update(env)
    p = subprocess.run(cmd, cwd=ROOT, env=e, capture_output=True, text=True, timeout=timeout)
    if check_rc and p.returncode != 0:
        print("command failed:", " ".join(cmd), "rc", p.returncode)
        print(p.stdout[-3000:])
        print(p.stderr[-3000:])
        raise SystemExit(1)
    return p


def tmpdir(prefix):
    return tempfile.mkdtemp(prefix=f"partita-{prefix}-", dir=os.environ.get("TMPDIR", "/tmp"))


def licenses_tokens(d):
    """A token file of /usr/share/common-licenses (on every Debian machine)."""
    path = os.path.join(d, "tokens.h5")
    run(["prep", path, "/usr/share/common-licenses"])
    return path


# The micro GPT most integration tests train (seconds per run): a deck's [model] section.
MICRO_MODEL = """[model]
vocab = 257
layers = 2
d_model = 32
heads = 2
seq_len = 32
"""


def moe_model(seq_len):
    """The tiny model the MoE tests train and serve: its [model] section."""
    return f"""[model]
vocab = 257
vocab_pad = 64
layers = 4
d_model = 32
heads = 4
seq_len = {seq_len}
"""


def shard_floats(n, p):
    """ZeRO's shard of n floats over p ranks (zero_shard_floats): ceil(n / p), rounded up to a
    4 KiB page of floats where the shard is 100 pages or more and the last rank keeps some."""
    s = -(-n // p)
    a = -(-s // 1024) * 1024
    return a if p > 1 and s >= 100 * 1024 and (p - 1) * a < n else s


def write_deck(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def rel_err(a, b):
    import numpy as np
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


EMU = os.path.join(ROOT, "build/emu-partita/partita")


def build_emu(timeout=1200):
    """Builds build/emu-partita/partita, the cuda backend on the emulated device
    (tests/gpu/emu/build_partita_emu.sh, incremental), as one check; True when it is there."""
    p = subprocess.run(["bash", os.path.join(ROOT, "tests/gpu/emu/build_partita_emu.sh")], cwd=ROOT,
                       capture_output=True, text=True, timeout=timeout)
    said = [ln for ln in (p.stdout + p.stderr).splitlines() if ln.startswith("build_partita_emu:")]
    ok = check(p.returncode == 0 and os.access(EMU, os.X_OK), "build/emu-partita/partita builds",
               said[-1][:160] if said else "(no message)")
    if not ok:
        print(p.stdout[-3000:], p.stderr[-3000:])
    return ok
