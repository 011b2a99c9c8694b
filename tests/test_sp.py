#!/usr/bin/python3
"""Ulysses sequence parallelism ([parallel] sp) and activation checkpointing ([train] recompute).

Model: L=2, C=32, NH=4, T=32 (V=257), batch 4 rows per step, sequential data, 20 steps.

1. Layouts: sp=2 (np=2), sp=4 (np=4) and dp=2 x sp=2 (np=4), each at ZeRO stages 0 and 3,
   give the np=1 loss curve within 1e-5 relative (the same tokens, another fp32 summation
   order: per-rank GEMMs on T/sp tokens, MPI's reduction tree).
2. Uneven heads: NH=6 (C=48) at sp=4 splits heads 2,2,1,1 (all-to-allv) and gives the
   np=1 curve within 1e-5.
3. recompute = layer vs none (sp=2 ZeRO-3, and np=1): bit-identical losses and final weights.
4. The all-to-all byte counter of rank 0 (run.h5 comm_bytes_all_to_all, steps without an
   evaluation) equals the formula. Per layer and micro-step, with Tl = T/sp and rank 0's
   Cl = (its heads) * C/NH channels, four all-to-alls of parts P = 3 (q,k,v / their
   gradients) and P = 1 (attention output / its gradient):
       to heads (forward qkv P=3, backward d(out) P=1): B Tl P (C - Cl) * 4 bytes
       to rows  (forward out P=1, backward d(qkv) P=3): B Tl P (sp-1) Cl * 4 bytes
   so per step  L * accum * 4 B Tl [(C - Cl) + (sp-1) Cl] * 4 bytes, and recompute adds
   the forward pair again for the L-1 layers it recomputes:
       (L-1) * accum * B Tl [3 (C - Cl) + (sp-1) Cl] * 4 bytes.
   With sp | NH both brackets are (sp-1)/sp * C per part.
5. Deck errors: T % sp != 0 and NH < sp, each naming both numbers.
6. Checkpoints: written at dp=1 x sp=2 (stop_at=10), resumed at sp=1 (np=1); and written at
   dp=2 x sp=1, resumed at dp=1 x sp=2: both continue the uninterrupted np=1 curve within 1e-5.
7. The cuda backend on the emulated device (build/emu-partita, see tests/test_cuda_emu.py):
   sp=2 (np=2) with comm.device_path = staged (device -> host -> MPI all-to-all -> device,
   the copy2d kernel packing), ZeRO-3 and recompute = layer, 6 steps: the np=1 cpu curve
   within 1e-4 relative (the emulated kernels sum in other orders).
"""
import os
import subprocess

import h5py
import numpy as np

from common import EMU, MPIEXEC, ROOT, build_emu, check, finish, licenses_tokens, rel_err, run, tmpdir, write_deck

d = tmpdir("sp")
tok = licenses_tokens(d)
L, C, NH, T, BATCH = 2, 32, 4, 32, 4
deck = write_deck(os.path.join(d, "sp.deck"), f"""
[run]
seed = 11
[model]
vocab = 257
vocab_pad = 1
layers = {L}
d_model = {C}
heads = {NH}
seq_len = {T}
[data]
train = {tok}
order = sequential
[train]
steps = 20
batch = {BATCH}
log_interval = 10
eval_interval = 0
save_weights = false
[optimizer]
lr = 3e-3
warmup = 2
[checkpoint]
interval = 0
""")


def train(name, np_, dp, sp, *sets):
    out = os.path.join(d, name)
    args = ["train", deck, "--set", f"run.out_dir={out}", "--set", f"parallel.sp={sp}",
            "--set", f"train.micro_batch={BATCH // dp}"]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_)
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        m = f["metrics"]
        return p, np.array(m["loss"], dtype=np.float64), np.array(m["comm_bytes_all_to_all"], dtype=np.float64)


def final_weights(name):
    with h5py.File(os.path.join(d, name, "final.h5"), "r") as f:
        out = {}
        f.visititems(lambda k, v: out.__setitem__(k, np.array(v)) if isinstance(v, h5py.Dataset) else None)
        return out


# 1. layouts
_, ref, _ = train("ref", 1, 1, 1)
check(len(ref) == 20 and ref[-1] < ref[0], "np=1 reference trains 20 steps", f"{ref[0]:.4f} -> {ref[-1]:.4f}")
for np_, dp, sp in [(2, 1, 2), (4, 1, 4), (4, 2, 2)]:
    for stage in (0, 3):
        p, loss, _ = train(f"dp{dp}sp{sp}z{stage}", np_, dp, sp, f"zero.stage={stage}")
        e = rel_err(loss, ref)
        check(f"dp={dp} x sp={sp}" in p.stdout and len(loss) == 20 and e < 1e-5,
              f"dp={dp} x sp={sp} ZeRO-{stage} (np={np_}) follows the np=1 curve within 1e-5", f"rel err {e:.2e}")

# 2. uneven heads: NH=6 over sp=4 -> 2,2,1,1
odd = ["model.heads=6", "model.d_model=48"]
_, ref6, _ = train("ref6", 1, 1, 1, *odd)
_, loss6, a2a6 = train("odd", 4, 1, 4, *odd)
e = rel_err(loss6, ref6)
check(e < 1e-5, "NH=6 at sp=4 (heads 2,2,1,1, all-to-allv) follows the np=1 curve within 1e-5", f"rel err {e:.2e}")

# 3. recompute on vs off: bit-identical
for name, np_, dp, sp, stage in [("np1", 1, 1, 1, 0), ("sp2z3", 2, 1, 2, 3)]:
    _, off, a2a_off = train(f"rc-off-{name}", np_, dp, sp, f"zero.stage={stage}", "train.save_weights=true")
    _, on, a2a_on = train(f"rc-on-{name}", np_, dp, sp, f"zero.stage={stage}", "train.save_weights=true",
                          "train.recompute=layer")
    wa, wb = final_weights(f"rc-off-{name}"), final_weights(f"rc-on-{name}")
    same_w = wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)
    check(np.array_equal(on, off), f"recompute=layer gives bit-identical losses ({name}, ZeRO-{stage})",
          f"max diff {np.abs(on - off).max():.1e}")
    check(same_w and len(wa) > 0, f"recompute=layer gives bit-identical final weights ({name})", f"{len(wa)} tensors")


# 4. all-to-all bytes
def a2a_formula(sp, nh, c, recompute, B=BATCH, accum=1):
    cl = (nh // sp + (1 if nh % sp else 0)) * (c // nh)   # rank 0 has the most heads
    tl = T // sp
    per = L * accum * 4 * B * tl * ((c - cl) + (sp - 1) * cl) * 4
    if recompute:
        per += (L - 1) * accum * B * tl * (3 * (c - cl) + (sp - 1) * cl) * 4
    return per


_, _, a2a = train("bytes", 4, 1, 4, "zero.stage=0")
want = a2a_formula(4, NH, C, False)
check(np.all(a2a[:-1] == want), "sp=4: comm_bytes_all_to_all per step equals the formula",
      f"{a2a[0]:.0f} vs {want} bytes")
want = a2a_formula(4, 6, 48, False)
check(np.all(a2a6[:-1] == want), "NH=6 sp=4: comm_bytes_all_to_all of rank 0 equals the uneven formula",
      f"{a2a6[0]:.0f} vs {want} bytes")
want = a2a_formula(2, NH, C, True)
check(np.all(a2a_on[:-1] == want), "sp=2 recompute: comm_bytes_all_to_all equals the formula with the recomputed layers",
      f"{a2a_on[0]:.0f} vs {want} bytes")
check(np.all(a2a_off[:-1] == a2a_formula(2, NH, C, False)), "sp=2 without recompute: the formula",
      f"{a2a_off[0]:.0f} bytes")
# estimate plans the same traffic and activations
# The budget is the process baseline (MPI, HDF5, BLAS, and the CUDA libraries in a
# cuda build: it differs between builds) plus 64 MiB for the model.
p = run(["estimate", deck, "--ranks", "4", "--set", "parallel.sp=4"])
base_mib = float(next(l.split()[-1] for l in p.stdout.splitlines() if l.strip().startswith("process baseline")))
budget = f"{int(base_mib) + 64}M"
p = run(["estimate", deck, "--ranks", "4", "--set", "parallel.sp=4", "--mem-per-rank", budget])
plan = {l.split()[0]: [float(x) for x in l.split()[1:]] for l in p.stdout.splitlines()
        if l.startswith(("all_to_all_bytes_per_step", "activation_bytes_recompute", "longest_T"))}
with h5py.File(os.path.join(d, "bytes", "run.h5"), "r") as f:
    acts = int(f.attrs["activation_bytes"])
check(plan.get("all_to_all_bytes_per_step") == [a2a[0], a2a_formula(4, NH, C, True)],
      "estimate's all-to-all bytes per step (recompute none, layer) equal the counter and the formula",
      str(plan.get("all_to_all_bytes_per_step")))
check(plan.get("activation_bytes_recompute_none", [0])[0] == acts,
      "estimate's activation bytes (sp=4) equal the trainer's report", f"{acts}")
lt = plan.get("longest_T", [0, 0])
check(0 < lt[0] < lt[1] and lt[0] % 4 == 0, f"estimate: recompute = layer fits a longer T in {budget} (baseline + 64M) than none",
      f"{lt[0]:.0f} vs {lt[1]:.0f}")
_, _, a2a1 = train("bytes1", 1, 1, 1)
check(np.all(a2a1 == 0), "sp=1 moves no all-to-all bytes")

# 5. deck errors
p = run(["estimate", deck, "--ranks", "3", "--set", "parallel.sp=3"], check_rc=False)
check(p.returncode != 0 and "seq_len = 32" in p.stderr and "sp = 3" in p.stderr and "hint:" in p.stderr,
      "T % sp != 0 is refused naming seq_len = 32 and sp = 3", p.stderr.strip().splitlines()[0] if p.stderr else "")
p = run(["estimate", deck, "--ranks", "8", "--set", "parallel.sp=8"], check_rc=False)
check(p.returncode != 0 and "heads = 4" in p.stderr and "sp = 8" in p.stderr and "hint:" in p.stderr,
      "NH < sp is refused naming heads = 4 and sp = 8", p.stderr.strip().splitlines()[0] if p.stderr else "")

# 6. checkpoints across layouts
ck = ["checkpoint.interval=10", "train.stop_at=10"]
train("ck-sp2", 2, 1, 2, *ck)
src = os.path.join(d, "ck-sp2", "ckpt", "step-000010.h5")
_, rest, _ = train("ck-sp2-resumed", 1, 1, 1, f"checkpoint.resume={src}")
e = rel_err(rest, ref[10:]) if len(rest) == 10 else 1.0
check(e < 1e-5, "a checkpoint written at dp=1 x sp=2 resumes at sp=1 on the same curve", f"rel err {e:.2e}")
train("ck-dp2", 2, 2, 1, *ck)
src = os.path.join(d, "ck-dp2", "ckpt", "step-000010.h5")
_, rest, _ = train("ck-dp2-resumed", 2, 1, 2, f"checkpoint.resume={src}")
e = rel_err(rest, ref[10:]) if len(rest) == 10 else 1.0
check(e < 1e-5, "a checkpoint written at dp=2 x sp=1 resumes at dp=1 x sp=2 on the same curve", f"rel err {e:.2e}")

# 7. the cuda staged path on the emulated device
emu = EMU
if build_emu():
    short = ["train.steps=6", "optimizer.warmup=1", "train.log_interval=1"]
    _, ref6s, _ = train("emu-ref", 1, 1, 1, *short)
    out = os.path.join(d, "emu-sp2")
    cmd = [MPIEXEC, "-np", "2", emu, "train", deck, "--set", f"run.out_dir={out}"]
    for s_ in short + ["parallel.sp=2", "run.backend=cuda", "train.precision=fp32", "comm.device_path=staged",
                       "run.peak_gflops=1", "run.threads=1", "zero.stage=3", "train.recompute=layer"]:
        cmd += ["--set", s_]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1", ASAN_OPTIONS="detect_leaks=0"),
                       capture_output=True, text=True, timeout=600)
    ok = p.returncode == 0 and os.path.exists(os.path.join(out, "run.h5"))
    if not ok:
        print(p.stdout[-2000:], p.stderr[-2000:])
    e = 1.0
    if ok:
        with h5py.File(os.path.join(out, "run.h5"), "r") as f:
            el = np.array(f["metrics/loss"], dtype=np.float64)
            ea = np.array(f["metrics/comm_bytes_all_to_all"], dtype=np.float64)
        e = rel_err(el, ref6s) if len(el) == len(ref6s) else 1.0
        check(np.all(ea[:-1] == a2a_formula(2, NH, C, True)), "emulated cuda: all-to-all bytes equal the formula",
              f"{ea[0]:.0f} bytes")
    check(ok and "staged" in p.stdout and e < 1e-4,
          "sp=2 on emulated cuda (staged all-to-all, ZeRO-3, recompute) follows the np=1 cpu curve within 1e-4",
          f"rel err {e:.2e}")

finish()
