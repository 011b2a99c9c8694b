#!/usr/bin/python3
"""Offload on the cuda backend and Deep Optimizer States, on the emulated device.

build/emu-partita/partita (tests/gpu/emu/build_partita_emu.sh: the real kernels/cuda
sources on a CPU emulation of CUDA in which host code cannot touch device memory)
trains a micro model (36k parameters, subgroups of 0.02 MiB: 8 of them) for 6 steps:

1. optimizer = host (moments in pinned host memory), Deep Optimizer States placements
   all on the CPU (dos_stride = 0), all on the GPU (1), every 3rd on the GPU (3), the
   model's choice (-1) and dos = false: losses within 1e-6 relative of the emulated run
   without offload and of the cpu backend's; the choice and the measured rates are
   printed and stored in run.h5 (dos_* attributes).
2. optimizer = nvme with every 2nd subgroup on the GPU; ZeRO-3 at np=2 (staged) with
   params = host and with params + optimizer = nvme (updates on the CPU, parameters
   gathered from host memory / the file): within 1e-6 of the same layout without offload,
   and the device holds neither the parameter shard nor the moments (run.h5
   model_state_bytes and device_arena_used_bytes against the run without offload).
3. A checkpoint of an offloaded cuda run (ZeRO-1, np=2, every 2nd subgroup on the GPU)
   resumes bit-identically on the emulated device and follows it on the cpu backend.
"""
import os
import re
import subprocess

import h5py
import numpy as np

from common import EMU, MPIEXEC, PARTITA, ROOT, build_emu, check, finish, licenses_tokens, tmpdir, write_deck

TOL = 1e-6

if not build_emu():
    finish()

d = tmpdir("offload-cuda")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "m.deck"), f"""
[run]
seed = 7
threads = 1
peak_gflops = 1
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
steps = 6
batch = 4
log_interval = 1
eval_interval = 0
eval_batches = 1
save_weights = false
[optimizer]
lr = 1e-2
warmup = 2
[offload]
subgroup_mb = 0.02
""")


def train(binary, name, np_, *sets):
    out = os.path.join(d, name)
    cmd = [MPIEXEC, "-np", str(np_), binary, "train", deck, "--set", f"run.out_dir={out}",
           "--set", f"train.micro_batch={4 // np_}"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        print(f"command failed (rc {r.returncode}):", " ".join(cmd))
        print(r.stdout[-2000:], r.stderr[-2000:])
    path = os.path.join(out, "run.h5")
    if not os.path.exists(path):
        return r, None, {}
    with h5py.File(path, "r") as f:
        return r, np.array(f["metrics/loss"], dtype=np.float64), dict(f.attrs)


def rel(a, ref):
    if a is None or ref is None or len(a) != len(ref):
        return float("inf")
    return float(np.max(np.abs(a - ref) / np.abs(ref)))


CUDA = ("run.backend=cuda", "train.precision=fp32")
_, cpu, _ = train(PARTITA, "cpu", 1, "run.backend=cpu")
_, base, _ = train(EMU, "base", 1, *CUDA)
check(base is not None and rel(base, cpu) < 1e-4, "the emulated run without offload follows the cpu backend",
      f"max rel diff {rel(base, cpu):.1e}")

# 1. placements
for name, sets, ngpu in [("all-cpu", ["offload.dos_stride=0"], 0), ("all-gpu", ["offload.dos_stride=1"], 8),
                         ("every-3rd", ["offload.dos_stride=3"], 2), ("model", [], None),
                         ("dos-off", ["offload.dos=false"], 0)]:
    r, a, at = train(EMU, f"dos-{name}", 1, *CUDA, "offload.optimizer=host", *sets)
    e, ec = rel(a, base), rel(a, cpu)
    got = at.get("dos_gpu_subgroups")
    check(e <= TOL and ec <= TOL and got is not None and (ngpu is None or got == ngpu),
          f"DOS {name}: {got} of 8 subgroups on the GPU; losses vs no offload and vs the cpu backend within {TOL:g}",
          f"max rel diff {e:.1e}, {ec:.1e}")
    if name == "model":
        line = next((l for l in r.stdout.splitlines() if l.startswith("offload: stride")), "")
        rates = [at.get(k, 0) for k in ("dos_bw_h2d", "dos_bw_d2h", "dos_cpu_rate", "dos_gpu_rate")]
        check("the performance model's choice" in line and all(x > 0 for x in rates)
              and at.get("dos_cpu_slowdown", 0) >= 1 and at.get("dos_predicted_s", -1) >= 0
              and "Deep Optimizer States: measured h2d" in r.stdout,
              "DOS: the measured rates and the model's stride printed at start and stored in run.h5", line[:150])

# 2. NVMe tier with DOS; parameters off the device (ZeRO-3, np=2)
_, a, at = train(EMU, "nvme-dos", 1, *CUDA, "offload.optimizer=nvme", "offload.dos_stride=2")
check(rel(a, base) <= TOL and at.get("dos_gpu_subgroups") == 4,
      "optimizer = nvme, every 2nd subgroup on the GPU: losses within 1e-6", f"max rel diff {rel(a, base):.1e}")
Z3 = ("comm.device_path=staged", "zero.stage=3")
_, b3, b3at = train(EMU, "z3-base", 2, *CUDA, *Z3)
for name, sets in [("params-host", ["offload.optimizer=host", "offload.params=host"]),
                   ("params-nvme", ["offload.optimizer=nvme", "offload.params=nvme"])]:
    r, a, at = train(EMU, f"z3-{name}", 2, *CUDA, *Z3, *sets)
    check(rel(a, b3) <= TOL and "every update on the CPU" in r.stdout,
          f"ZeRO-3 np=2 {name.replace('-', ' = ')} on cuda: gathered from there, losses within 1e-6",
          f"max rel diff {rel(a, b3):.1e}")
    # Device memory: at ZeRO-3 the states are params + gradient shard + 2 moments, 4 x own floats;
    # offloaded, only the gradient shard stays, and the arena holds 3 x own floats less (zero_create
    # leaves the shard and the moments out; 256-byte alignment of each buffer aside).
    sb, so = b3at.get("model_state_bytes", 0), at.get("model_state_bytes", -1)
    ub, uo = b3at.get("device_arena_used_bytes", 0), at.get("device_arena_used_bytes", 0)
    saved, want = ub - uo, 3 * sb // 4
    check(sb > 0 and so * 4 == sb and uo > 0 and abs(saved - want) <= 3 * 256,
          f"ZeRO-3 np=2 {name.replace('-', ' = ')}: device model states {so} B vs {sb} B without offload; the arena "
          f"used {uo} B vs {ub} B: {saved} B saved, the shard and moments are {want} B")

# 3. checkpoints
CK = (*CUDA, "comm.device_path=staged", "zero.stage=1", "offload.optimizer=host", "offload.dos_stride=2",
      "checkpoint.interval=3")
_, full, _ = train(EMU, "ck-full", 2, *CK)
train(EMU, "ck-split", 2, *CK, "train.stop_at=3")
r, both, _ = train(EMU, "ck-split", 2, *CK)
check(full is not None and both is not None and np.array_equal(full, both) and "resumed from" in r.stdout,
      "an offloaded cuda checkpoint (moments from pinned host memory) resumes bit-identically")
ck = os.path.join(d, "ck-split/ckpt/step-000003.h5")
_, oncpu, _ = train(PARTITA, "ck-cpu", 2, "zero.stage=1", f"checkpoint.resume={ck}")
check(full is not None and rel(oncpu, full[3:]) < 1e-4, "... and on the cpu backend follows the cuda run",
      f"max rel diff {rel(oncpu, full[3:] if full is not None else None):.1e}")
finish()
