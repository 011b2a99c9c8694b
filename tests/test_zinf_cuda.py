#!/usr/bin/python3
"""ZeRO-Inference on the cuda backend, on the emulated device (no GPU needed).

build/emu-partita/partita (tests/gpu/emu/build_partita_emu.sh: the real cuda
backend on the CPU emulation of CUDA, where host code cannot touch device
memory) generates with the layer matrices streamed through a window of two of
six layers: each layer read into backend host memory (pinned on cuda), copied
into its device slot on the copy stream while the previous layer computes, its
kernels waiting for the copy's event. Checked:
1. nvme and host streaming (int8: nvme) give the tokens of resident weights on
   the same emulated device, fp32 and int8, greedy and seeded sampling, np = 1;
2. the device arena is sized for the window: a streamed run reserves less than
   the resident one by the layers' fp32 bytes less the device window (to the
   0.1 MiB it is printed with).
(Generation on cuda runs one rank, so the shared reading of tp > 1 is tested
on cpu, tests/test_zinf.py.)"""
import json
import os
import re
import subprocess

import h5py

from common import EMU, MPIEXEC, ROOT, build_emu, check, finish, licenses_tokens, run, tmpdir, write_deck

if not build_emu():
    finish()

d = tmpdir("zinf-cuda")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "z.deck"), f"""
[run]
out_dir = {d}/train
threads = 1
peak_gflops = 1
[model]
vocab = 257
layers = 6
d_model = 64
heads = 4
seq_len = 64
[data]
train = {tok}
[train]
steps = 3
micro_batch = 4
batch = 4
seq_len = 64
""")
run(["train", deck, "--set", "run.backend=cpu"])
weights = os.path.join(d, "train/final.h5")
req_path = os.path.join(d, "req.jsonl")
with open(req_path, "w") as f:
    for r in [{"id": "g0", "prompt": "The GNU General Public License is", "max_tokens": 10},
              {"id": "g1", "tokens": [84, 104, 101, 32], "max_tokens": 8},
              {"id": "s1", "prompt": "This program is free software", "max_tokens": 9, "temperature": 0.9,
               "top_k": 40, "seed": 11}]:
        f.write(json.dumps(r) + "\n")

stages = {}
for dtype, shards in (("fp32", 1), ("int8", 1)):
    stages[dtype] = os.path.join(d, f"{dtype}.stage")
    run(["stage", deck, "--out", stages[dtype], "--from", weights, "--dtype", dtype, "--shards", str(shards)])


def generate(name, np_, *sets):
    out = os.path.join(d, name)
    cmd = [MPIEXEC, "-np", str(np_), EMU, "generate", deck, "--set", f"run.out_dir={out}", "--set", "run.backend=cuda",
           "--set", f"parallel.tp={np_}", "--set", f"generate.weights={weights}", "--set", f"generate.requests={req_path}",
           "--set", "generate.kv_blocks=32", "--set", "generate.kv_block=8", "--set", "generate.max_batch=4",
           "--set", "generate.token_budget=8"]
    if np_ > 1:
        cmd += ["--set", "comm.device_path=staged"]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                       timeout=600)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-2000:])
        return None, {}, p
    with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
        g = f["requests"]
        ids = [x.decode() if isinstance(x, bytes) else x for x in g["id"][:]]
        oo, ot = g["output_offsets"][:], g["output_tokens"][:]
        outs = {ids[i]: [int(t) for t in ot[oo[i]:oo[i + 1]]] for i in range(len(ids))}
        attrs = dict(f.attrs)
    return outs, attrs, p


def arena_mib(p):
    m = re.search(r"device arena ([0-9.]+) MiB", p.stdout)
    return float(m.group(1)) if m else -1.0


for dtype in ("fp32", "int8"):
    ref, _, pr = generate(f"mem-{dtype}", 1, f"generate.weights_dtype={dtype}")
    check(ref is not None and "CPU emulation" in pr.stdout and len(ref) == 3, f"{dtype}: the resident run on the emulated device")
    for mode in (("nvme", "host") if dtype == "fp32" else ("nvme",)):
        out, attrs, p = generate(f"{mode}-{dtype}", 1, f"generate.weights_dtype={dtype}", f"generate.weights_from={mode}",
                                 f"generate.stage={stages[dtype]}", "generate.window=2")
        check(out == ref, f"{dtype}, emulated cuda, {mode}: streaming through 2 device slots of 6 layers equals resident "
              f"(greedy and sampled)", f"{sum(out.get(k) == v for k, v in ref.items()) if out else 0} of {len(ref)} equal")
        if mode == "nvme" and out is not None:
            dev_window, layers = int(attrs["stream_device_window_bytes"]), int(attrs["stream_bytes_per_pass"])
            a_mem, a_str = arena_mib(pr), arena_mib(p)
            saved = (a_mem - a_str) * (1 << 20)
            # resident arena counts every layer matrix in fp32 (6 layers x 12 C^2 x 4 bytes)
            fp32_layers = 6 * 12 * 64 * 64 * 4
            check(dev_window > 0 and a_str > 0 and abs(saved - (fp32_layers - dev_window)) <= 0.1 * (1 << 20) + 2 * 512,   # printed to 0.1 MiB
                  f"{dtype}: the device arena holds the window, not the layers",
                  f"arena {a_str:.2f} MiB streamed vs {a_mem:.2f} MiB resident: {saved / 1024:.0f} KiB less = fp32 layers "
                  f"{fp32_layers / 1024:.0f} KiB - device window {dev_window / 1024:.0f} KiB")

finish()
