#!/usr/bin/python3
"""The trainer on the cuda backend, on a machine without a GPU.

build/emu-partita/partita is the real trainer with the real kernels/cuda sources
built against the CPU emulation of CUDA, cuBLAS and cub (tests/gpu/emu/emu_cuda.h,
built by tests/gpu/emu/build_partita_emu.sh). In it device memory is inaccessible
to host code outside kernels and copies, so any host read or write of a device
buffer (a missed staging copy, MPI or HDF5 handed a device pointer) kills the run
with a message naming the buffer. What this test checks, on a micro model
(L=2 C=32 NH=2 T=16, 36k parameters) for 8 steps:

1. fp32 on the emulated cuda backend (np=1) follows the cpu backend's per-step
   loss within 1e-4 relative (per step): the same math, other summation orders.
2. bf16 matrix products (fp32 accumulation): within 3e-2 relative per step of the
   cpu fp32 curve, and the loss still falls.
3. np=2 with comm.device_path = staged (device -> host -> MPI -> device) at ZeRO
   stages 0, 1, 2, 3: each follows the np=1 cpu fp32 curve within 1e-4 relative.
4. Checkpoints on device buffers (np=2, ZeRO-2, staged): stop_at=4 with a
   checkpoint, resume = auto, 4 more steps: bit-identical to the uninterrupted
   emulated run (the README's promise at one layout); and the same checkpoint
   resumed on the cpu backend follows it within 1e-4.
5. The normal build asked for backend = cuda by a deck line, where it has no
   device, stops with one error naming that file:line (the --set form is in
   tests/test_cli.py).
6. Generation and eval on the emulated cuda backend, through the same forward
   (model_forward_paged) and scheduler: gpt-tiny trained 100 steps on cpu; the
   tokens of greedy and sampled requests equal the cpu backend's, for fp32 and
   int8 weights; eval's loss within 1e-5 relative of cpu's, logits within 1e-4.
"""
import json
import os
import re
import subprocess

import h5py
import numpy as np

from common import EMU, MPIEXEC, PARTITA, ROOT, build_emu, check, finish, licenses_tokens, run, tmpdir, write_deck

STEPS = 8
TOL_FP32 = 1e-4      # relative, per step
TOL_BF16 = 3e-2      # relative, per step

# 0. build (incremental; SANITIZE=... in the environment passes through)
if not build_emu():
    finish()

d = tmpdir("cuda-emu")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "m.deck"), f"""
[run]
seed = 7
threads = 1
peak_gflops = 1          # no GEMM timing: 4096^3 on the emulated cuBLAS would take hours
[model]
vocab = 257
layers = 2
d_model = 32
heads = 2
seq_len = 16
[data]
train = {tok}
order = sequential
[train]
steps = {STEPS}
batch = 4
log_interval = 1
eval_interval = 0
eval_batches = 1
save_weights = false
[optimizer]
lr = 1e-2
warmup = 2
""")


def train(binary, name, np_, *sets, check_rc=True):
    """Runs `binary train deck` under mpiexec; returns (CompletedProcess, losses or None)."""
    out = os.path.join(d, name)
    args = ["train", deck, "--set", f"run.out_dir={out}", "--set", f"train.micro_batch={4 // np_}"]
    for s in sets:
        args += ["--set", s]
    cmd = [MPIEXEC, "-np", str(np_), binary] + args
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        print(f"command failed (rc {p.returncode}):", " ".join(cmd))
        print(p.stdout[-2500:])
        print(p.stderr[-2500:])
        if check_rc:
            return p, None
    path = os.path.join(out, "run.h5")
    if not os.path.exists(path):
        return p, None
    with h5py.File(path, "r") as f:
        return p, np.array(f["metrics/loss"], dtype=np.float64)


def max_rel(a, ref):
    if a is None or len(a) != len(ref):
        return float("inf")
    return float(np.max(np.abs(a - ref) / np.abs(ref)))


def fmt(a):
    return "none" if a is None else " ".join(f"{x:.4f}" for x in a)


# the reference: the cpu backend, np=1, fp32
_, ref = train(PARTITA, "cpu", 1, "run.backend=cpu")
if not check(ref is not None and len(ref) == STEPS, f"cpu reference: {STEPS} steps at np=1", fmt(ref)):
    finish()

# 1. fp32 on the emulated cuda backend
p, a = train(EMU, "emu-fp32", 1, "run.backend=cuda", "train.precision=fp32")
check("CPU emulation" in p.stdout and re.search(r"backend: cuda", p.stdout) is not None,
      "the emulated run is on the cuda backend and says it is an emulation",
      next((l for l in p.stdout.splitlines() if l.startswith("backend:")), "(no backend line)")[:150])
e = max_rel(a, ref)
check(e < TOL_FP32, "cuda fp32 (emulated) follows the cpu loss curve",
      f"max rel diff {e:.1e} over {STEPS} steps (tol {TOL_FP32:g}); cuda {fmt(a)}")

# 2. bf16 matrix products
p, a = train(EMU, "emu-bf16", 1, "run.backend=cuda", "train.precision=bf16")
check("bf16" in p.stdout, "the bf16 run says its matrix products are bf16",
      next((l for l in p.stdout.splitlines() if l.startswith("backend:")), "(no backend line)")[:150])
e = max_rel(a, ref)
check(e < TOL_BF16, "cuda bf16 (emulated) stays near the cpu fp32 loss curve",
      f"max rel diff {e:.1e} (tol {TOL_BF16:g}); bf16 {fmt(a)}")
falls = a is not None and len(a) == STEPS and a[-3:].mean() < a[:3].mean() - 0.05
check(falls, "the bf16 loss falls", "mean of the first 3 steps -> last 3: " +
      ("none" if a is None else f"{a[:3].mean():.4f} -> {a[-3:].mean():.4f}"))

# 3. np=2, staged collectives, ZeRO 0-3
for stage in (0, 1, 2, 3):
    p, a = train(EMU, f"emu-np2-z{stage}", 2, "run.backend=cuda", "train.precision=fp32",
                 "comm.device_path=staged", f"zero.stage={stage}")
    if stage == 0:
        check("staged" in p.stdout, "np=2 runs its collectives through host staging",
              next((l for l in p.stdout.splitlines() if "collectives" in l), "(no collectives line)")[-80:])
    e = max_rel(a, ref)
    check(e < TOL_FP32, f"np=2 staged ZeRO-{stage} on cuda (emulated) follows the np=1 cpu curve",
          f"max rel diff {e:.1e} (tol {TOL_FP32:g})")

# 4. checkpoint round trip on device buffers
common = ["run.backend=cuda", "train.precision=fp32", "comm.device_path=staged", "zero.stage=2",
          "checkpoint.interval=4"]
_, full = train(EMU, "emu-ck-full", 2, *common)
_, first = train(EMU, "emu-ck-split", 2, *common, "train.stop_at=4")
ck = os.path.join(d, "emu-ck-split/ckpt/step-000004.h5")
check(first is not None and len(first) == 4 and os.path.exists(ck),
      "stop_at=4 stops after 4 steps with a checkpoint", f"{0 if first is None else len(first)} steps")
p, both = train(EMU, "emu-ck-split", 2, *common)
check("resumed from" in p.stdout and "step-000004.h5" in p.stdout, "resume = auto finds step 4")
same = full is not None and both is not None and len(both) == STEPS and np.array_equal(both, full)
check(same, "4 + resume + 4 on cuda (emulated) gives the uninterrupted run's losses bit for bit",
      "max |diff| " + ("n/a" if not (full is not None and both is not None and len(both) == len(full))
                      else f"{np.max(np.abs(both - full)):.3g}"))
_, oncpu = train(PARTITA, "ck-on-cpu", 2, "run.backend=cpu", "zero.stage=2", f"checkpoint.resume={ck}")
tail = full[4:] if full is not None else None
e = max_rel(oncpu, tail) if tail is not None else float("inf")
check(e < TOL_FP32, "the cuda checkpoint resumes on the cpu backend and follows the cuda run",
      f"steps 5..{STEPS}: max rel diff {e:.1e} (tol {TOL_FP32:g})")

# 5. backend = cuda from a deck line, in the normal build, where there is no device
v = run(["version"], check_rc=False).stdout
m = re.search(r"(\d+) CUDA device", v)
if m is None or int(m.group(1)) == 0:
    text = open(deck).read().replace("threads = 1\n", "threads = 1\nbackend = cuda\n")
    bad = write_deck(os.path.join(d, "cuda.deck"), text)
    line = text.splitlines().index("backend = cuda") + 1
    p = run(["train", bad, "--set", f"run.out_dir={d}/nodev", "--set", "train.micro_batch=2"], np=2, check_rc=False)
    err = p.stderr + p.stdout
    check(p.returncode != 0 and f"cuda.deck:{line}" in err and "hint:" in err and err.count("error:") == 1,
          "backend = cuda without a device names the deck line, once",
          (p.stderr.strip().splitlines() or ["(no stderr)"])[0][:160])
else:
    print(f"skip: this machine has a CUDA device ({v.strip()}), so backend = cuda is no error here")
# 6. generation and eval on the emulated cuda backend
run(["train", os.path.join(ROOT, "inputs/gpt-tiny.deck"), "--set", f"data.train={tok}", "--set",
     f"run.out_dir={d}/tiny", "--set", "train.steps=100", "--set", "train.eval_interval=0", "--set", "run.backend=cpu"], np=1)
gw = os.path.join(d, "tiny/final.h5")
req = os.path.join(d, "req.jsonl")
with open(req, "w") as f:
    for i, (pr, n) in enumerate((("The GNU General Public License is", 12), ("Permission is hereby granted", 9),
                                 ("a", 16), ("THE SOFTWARE IS PROVIDED", 7))):
        f.write(json.dumps({"id": f"g{i}", "prompt": pr, "max_tokens": n}) + "\n")
    f.write(json.dumps({"id": "s0", "prompt": "This program is free", "max_tokens": 10, "temperature": 0.9,
                        "top_k": 40, "seed": 3}) + "\n")


def gen_tokens(binary, name, backend, dtype):
    out = os.path.join(d, name)
    cmd = [MPIEXEC, "-np", "1", binary, "generate", os.path.join(ROOT, "inputs/generate-tiny.deck"), "--set",
           f"generate.weights={gw}", "--set", f"generate.requests={req}", "--set", f"run.out_dir={out}", "--set",
           f"run.backend={backend}", "--set", f"generate.weights_dtype={dtype}", "--set", "generate.token_budget=8",
           "--set", "run.threads=1"]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:])
        return p, {}
    with open(os.path.join(out, "gen.jsonl")) as f:
        return p, {r["id"]: r["tokens"] for r in map(json.loads, f)}


for dtype in ("fp32", "int8"):
    _, cpu_out = gen_tokens(PARTITA, f"gen-cpu-{dtype}", "cpu", dtype)
    p, emu_out = gen_tokens(EMU, f"gen-emu-{dtype}", "cuda", dtype)
    check("generate: cuda backend" in p.stdout, f"generate {dtype} runs on the emulated cuda backend")
    check(len(cpu_out) == 5 and emu_out == cpu_out,
          f"generate on cuda (emulated) gives the cpu backend's tokens, {dtype} weights (greedy and sampled; prefill in chunks of 8)",
          f"{sum(emu_out.get(k) == v for k, v in cpu_out.items())} of {len(cpu_out)} requests equal")


def eval_loss(binary, name, backend):
    out = os.path.join(d, f"{name}.f32")
    cmd = [MPIEXEC, "-np", "1", binary, "eval", os.path.join(ROOT, "inputs/gpt-tiny.deck"), out, "--set",
           f"data.train={tok}", "--set", f"generate.weights={gw}", "--set", f"run.backend={backend}", "--set",
           "run.threads=1", "--set", "data.val_fraction=0.005"]     # ~24 rows: the emulated cuBLAS is slow
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    m = re.search(r"eval: loss ([0-9.]+)", p.stdout)
    return (float(m.group(1)) if m else float("nan")), (np.fromfile(out, dtype=np.float32) if m else None), p


lc, xc, _ = eval_loss(PARTITA, "eval-cpu", "cpu")
le, xe, p = eval_loss(EMU, "eval-emu", "cuda")
check("backend cuda" in p.stdout and abs(le - lc) <= 1e-5 * lc, "eval on cuda (emulated) gives the cpu loss within 1e-5",
      f"{le:.6f} vs {lc:.6f}")
dx = float(np.abs(xe - xc).max()) if xe is not None and xc is not None and xe.size == xc.size else float("inf")
check(dx <= 1e-4, "eval's first-row logits on cuda (emulated) equal cpu's within 1e-4", f"max |diff| {dx:.2g}")

finish()
