#!/usr/bin/python3
"""ZeRO-Inference (`[generate] weights_from = host | nvme`, `partita stage`).

Streaming each layer through a window of two layers, from the staged file
held in host memory or read with O_DIRECT, gives the tokens of resident
weights (greedy and seeded sampling) at np = 1 and tp = 2, in fp32 and int8;
a truncated, altered or mismatched stage file is refused with the reason; the
peak RSS of an nvme run stays under the window's bound plus the KV cache,
the resident tensors, the activations and a fixed overhead, and well under a
resident run's."""
import json
import os
import struct

import h5py
import numpy as np

from common import ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("zinf")
tok = licenses_tokens(d)
# Six layers, so that a window of two holds a third of them.
model = """[model]
vocab = 257
layers = 6
d_model = 64
heads = 4
seq_len = 64
"""
deck = write_deck(os.path.join(d, "z.deck"), model + f"""
[run]
out_dir = {d}/train
[data]
train = {tok}
[train]
steps = 3
micro_batch = 4
batch = 4
seq_len = 64
""")
run(["train", deck])
weights = os.path.join(d, "train/final.h5")

reqs = [{"id": "g0", "prompt": "The GNU General Public License is", "max_tokens": 14},
        {"id": "g1", "prompt": "Permission is hereby granted", "max_tokens": 9},
        {"id": "g2", "tokens": [84, 104, 101, 32], "max_tokens": 11},
        {"id": "s1", "prompt": "This program is free software", "max_tokens": 12, "temperature": 0.9, "top_k": 40, "seed": 11},
        {"id": "s2", "prompt": "a", "max_tokens": 10, "temperature": 1.2, "top_p": 0.8, "seed": 5}]
req_path = os.path.join(d, "req.jsonl")
with open(req_path, "w") as f:
    for r in reqs:
        f.write(json.dumps(r) + "\n")


def stage(name, *args, check_rc=True):
    out = os.path.join(d, name)
    p = run(["stage", deck, "--out", out, "--from", weights] + list(args), check_rc=check_rc)
    return out, p


def generate(name, np_=1, *sets, check_rc=True):
    out = os.path.join(d, name)
    args = ["generate", deck, "--set", f"run.out_dir={out}", "--set", f"parallel.tp={np_}",
            "--set", f"generate.weights={weights}", "--set", f"generate.requests={req_path}",
            "--set", "generate.kv_blocks=64", "--set", "generate.kv_block=8", "--set", "generate.max_batch=8",
            "--set", "generate.token_budget=16"]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_ if np_ > 1 else None, check_rc=check_rc)   # one rank: no launcher to start
    if p.returncode != 0:
        return None, None, p
    with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
        g = f["requests"]
        ids = [x.decode() if isinstance(x, bytes) else x for x in g["id"][:]]
        oo, ot = g["output_offsets"][:], g["output_tokens"][:]
        outs = {ids[i]: [int(t) for t in ot[oo[i]:oo[i + 1]]] for i in range(len(ids))}
        attrs = dict(f.attrs)
    return outs, attrs, p


def stream_sets(mode, path, dtype="fp32"):
    return [f"generate.weights_from={mode}", f"generate.stage={path}", "generate.window=2",
            f"generate.weights_dtype={dtype}"]


f32_1, _ = stage("f32-1.stage", "--dtype", "fp32", "--shards", "1")
f32_2, _ = stage("f32-2.stage", "--dtype", "fp32", "--shards", "2")
i8_1, p = stage("i8-1.stage", "--dtype", "int8", "--shards", "1")
check("int8, 1 shard(s)" in p.stdout, "stage prints what it writes", p.stdout.strip().splitlines()[0])
i8_2, _ = stage("i8-2.stage", "--dtype", "int8", "--shards", "2")

# Resident references, then each streamed variant against its own.
refs = {}
for dtype, s1, s2 in [("fp32", f32_1, f32_2), ("int8", i8_1, i8_2)]:
    ref1, _, _ = generate(f"mem-{dtype}", 1, f"generate.weights_dtype={dtype}")
    ref2, _, _ = generate(f"mem-{dtype}-tp2", 2, f"generate.weights_dtype={dtype}")
    refs[dtype] = ref1, ref2
    check(len(set(ref1["s1"])) > 1 and all(len(ref1[r["id"]]) == r["max_tokens"] for r in reqs),
          f"{dtype}: the resident reference generated every request in full")
    for mode in (("host", "nvme") if dtype == "fp32" else ("nvme",)):
        out, attrs, p = generate(f"{mode}-{dtype}", 1, *stream_sets(mode, s1, dtype))
        check(out == ref1, f"{dtype}, np=1: {mode} streaming with a window of 2 of 6 layers equals resident weights "
              f"(greedy and sampled)", f"{sum(out[k] == ref1[k] for k in ref1)} of {len(ref1)} requests equal")
        per_pass = int(attrs["stream_bytes_per_pass"])
        check(per_pass > 0 and int(attrs["stream_bytes_read"]) >= per_pass * (int(attrs["passes"]) - 1),
              f"{dtype} {mode}: every pass read every layer", f"{attrs['stream_bytes_read']} bytes in {attrs['passes']} "
              f"passes of {per_pass}")
        check("streaming (" + mode in p.stdout and "GB/s" in p.stdout, f"{dtype} {mode}: the bandwidth line is printed")
        out2, _, _ = generate(f"{mode}-{dtype}-tp2", 2, *stream_sets(mode, s2, dtype))
        check(out2 == ref2, f"{dtype}, tp=2: {mode} streaming (each rank its own shard) equals resident tp=2",
              f"{sum(out2[k] == ref2[k] for k in ref2)} of {len(ref2)} requests equal")

# Ranks that need the same whole layer (a whole-layer file at tp = 2) read 1/2 of
# each segment and all-gather the rest (stream_share, the default), or each reads
# it all (stream_share = false); either way each cuts its slice and the tokens
# are resident tp=2's.
ref2 = refs["fp32"][1]
shared = {}
for mode in ("nvme", "host"):
    for share in ("true", "false"):
        out, attrs, p = generate(f"whole-{mode}-{share}", 2, *stream_sets(mode, f32_1), f"generate.stream_share={share}")
        check(out == ref2, f"tp=2 from a whole-layer file, {mode}, stream_share={share}: equals resident tp=2",
              f"{sum(out[k] == ref2[k] for k in ref2)} of {len(ref2)} requests equal")
        shared[mode, share] = attrs
for mode in ("nvme", "host"):
    a, b = shared[mode, "true"], shared[mode, "false"]
    seg, L = int(a["stream_layer_segment_bytes"]), 6
    read_s, read_u = int(a["stream_bytes_per_pass"]), int(b["stream_bytes_per_pass"])
    check(int(a["stream_share_ranks"]) == 2 and read_s == L * seg // 2 and read_u >= L * seg - L * 4096,
          f"{mode}: shared, rank 0 reads 1/2 of each layer segment per pass ({read_s} bytes = 6 x {seg} / 2); "
          f"unshared, all of it ({read_u})")
    # comm counts what a rank receives in an all-gather: the other rank's half of
    # every layer of every pass, and the rest of the resident segment.
    sent, passes = int(a["stream_share_bytes_sent"]), int(a["passes"])
    res, res_read = int(a["stream_resident_bytes"]), int(a["stream_resident_read_bytes"])
    want = passes * (L * seg - read_s) + (-(-res // 4096) * 4096 - res_read)
    check(sent == want and res_read * 2 <= res + 4096 and int(b["stream_share_bytes_sent"]) == -(-res // 4096) * 4096 - int(b["stream_resident_read_bytes"]),
          f"{mode}: the all-gathers are counted by comm ({sent} bytes = {passes} passes x {L * seg - read_s} + the resident "
          f"segment's other part; expected {want}); rank 0 read {res_read} of the {res}-byte resident segment")

# stage --random: a counter-based generator keyed by the element's place in the
# whole tensor, so a whole-layer file cut at tp=2 holds what a 2-shard file
# holds (equal tokens), with the deck's init_std (c_proj: / sqrt(2 L)).
rnd1, rnd2 = os.path.join(d, "rnd-1.stage"), os.path.join(d, "rnd-2.stage")
run(["stage", deck, "--out", rnd1, "--shards", "1", "--random", "5"])
run(["stage", deck, "--out", rnd2, "--shards", "2", "--random", "5"])
o1, _, _ = generate("rnd-whole", 2, *stream_sets("nvme", rnd1))
o2, _, _ = generate("rnd-cut", 2, *stream_sets("nvme", rnd2))
check(o1 == o2 and len(o1) == len(reqs), "stage --random: a whole-layer file at tp=2 gives the 2-shard file's tokens",
      f"{sum(o1[k] == o2[k] for k in o1)} of {len(o1)} equal")
raw1 = open(rnd1, "rb").read()
nseg = struct.unpack_from("<I", raw1, 52)[0]
segs = [struct.unpack_from("<QQQ", raw1, 128 + 24 * i) for i in range(nseg)]
qkv = np.frombuffer(raw1, np.float32, 3 * 64 * 64, segs[1][0])
attp = np.frombuffer(raw1, np.float32, 64 * 64, segs[1][0] + 3 * 64 * 64 * 4)
check(abs(qkv.std() - 0.02) < 0.001 and abs(attp.std() - 0.02 / np.sqrt(12)) < 0.0005 and abs(qkv.mean()) < 0.001,
      "stage --random draws with the deck's init_std", f"c_attn std {qkv.std():.5f} (0.02), attn c_proj std {attp.std():.5f} "
      f"({0.02 / np.sqrt(12):.5f}), mean {qkv.mean():.5f}")

# A window as deep as the model keeps every layer after the first pass.
out, attrs, _ = generate("deep", 1, "generate.weights_from=nvme", f"generate.stage={f32_1}", "generate.window=6")
check(int(attrs["stream_bytes_read"]) == int(attrs["stream_bytes_per_pass"]),
      "window = layers: the layers are read once", f"{attrs['stream_bytes_read']} bytes read")

# Refusals, each with its reason.
raw = open(f32_1, "rb").read()


def refused(name, data, want, *sets):
    path = os.path.join(d, name)
    with open(path, "wb") as f:
        f.write(data)
    _, _, p = generate("bad-" + name, 1, *(stream_sets("nvme", path) + list(sets)), check_rc=False)
    err = p.stderr.strip().splitlines()
    check(p.returncode != 0 and want in p.stderr and "hint:" in p.stderr, f"refused: {name}: says '{want}'",
          err[0] if err else "(no message)")


refused("truncated.stage", raw[:len(raw) - 5000], "truncated")
altered = bytearray(raw)
altered[len(raw) - 4096 - 100] ^= 0x40          # a byte in the last layer's matrices
refused("altered-layer.stage", bytes(altered), "fails its checksum")
altered = bytearray(raw)
altered[20] ^= 1                                 # n_embd in the header
refused("altered-header.stage", bytes(altered), "header fails its checksum")
refused("not-a-stage.stage", b"hello" * 2000, "not a staged weight file")
_, _, p = generate("bad-tp", 1, *stream_sets("nvme", f32_2), check_rc=False)
check(p.returncode != 0 and "cut for tp = 2" in p.stderr, "refused: a file cut for tp=2 at tp=1",
      p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")
_, _, p = generate("bad-int8-whole", 2, *stream_sets("nvme", i8_1, "int8"), check_rc=False)
check(p.returncode != 0 and "whole int8 layers" in p.stderr and "hint:" in p.stderr,
      "refused: whole-layer int8 at tp=2 (the c_proj slices' scales differ)",
      p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")
_, _, p = generate("bad-dtype", 1, *stream_sets("nvme", f32_1, "int8"), check_rc=False)
check(p.returncode != 0 and "holds fp32" in p.stderr, "refused: weights_dtype differs from the file's",
      p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")

for what, sets, want in [("no stage file", ["generate.weights_from=nvme"], "needs [generate] stage"),
                         ("naive with streaming", stream_sets("host", f32_1) + ["generate.naive=true"], "naive recomputes")]:
    _, _, p = generate("bad-" + what.replace(" ", "-"), 1, *sets, check_rc=False)
    check(p.returncode != 0 and want in p.stderr and "hint:" in p.stderr, f"refused: {what}: says '{want}'",
          p.stderr.strip().splitlines()[0] if p.stderr.strip() else "")

# RSS: a wider random model (16 layers of 1.5M parameters: 96 MiB of fp32 layers),
# streamed from nvme through a window of 2, against resident weights.
big = write_deck(os.path.join(d, "big.deck"), """[model]
vocab = 257
layers = 16
d_model = 352
heads = 4
seq_len = 64
[train]
steps = 1
micro_batch = 1
batch = 1
seq_len = 64
""" + f"""[data]
train = {tok}
[run]
out_dir = {d}/big
""")
run(["train", big, "--set", "train.steps=1"])
big_stage = os.path.join(d, "big.stage")
p = run(["stage", big, "--out", big_stage, "--from", os.path.join(d, "big/init.h5")])
stage_peak = float(p.stdout.split("peak RSS ")[1].split(" MiB")[0])
p = run(["stage", deck, "--out", os.path.join(d, "small.stage"), "--from", weights])
small_peak = float(p.stdout.split("peak RSS ")[1].split(" MiB")[0])
check(stage_peak < small_peak + 40, "stage --from goes layer by layer: staging 96 MiB of layers peaks under the tiny "
      "model's peak + 40 MiB", f"{stage_peak:.1f} MiB vs {small_peak:.1f} MiB")
few = os.path.join(d, "few.jsonl")
with open(few, "w") as f:
    f.write(json.dumps({"id": "a", "prompt": "The GNU", "max_tokens": 6}) + "\n")


def big_run(name, *sets):
    out = os.path.join(d, name)
    run(["generate", big, "--set", f"run.out_dir={out}", "--set", f"generate.weights={d}/big/init.h5",
         "--set", f"generate.requests={few}", "--set", "generate.kv_blocks=8", "--set", "generate.kv_block=8",
         "--set", "generate.max_batch=1", "--set", "generate.token_budget=8"] + [x for s in sets for x in ("--set", s)])
    with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
        return dict(f.attrs), [int(t) for t in f["requests/output_tokens"][:]]


attrs, toks = big_run("big-nvme", "generate.weights_from=nvme", f"generate.stage={big_stage}", "generate.window=2")
_, toks_mem = big_run("big-mem")
check(toks == toks_mem, "16-layer model: nvme streaming equals resident weights", f"{toks} vs {toks_mem}")
peak, base = attrs["peak_rss_bytes"], attrs["rss_at_stream_open_bytes"]
window, resident = int(attrs["stream_window_bytes"]), int(attrs["stream_resident_bytes"])
layers = int(attrs["stream_bytes_per_pass"])
kv = 8 * 16 * 2 * 8 * 352 * 4
acts = 8 * 4 * 352 * 40                          # a pass of 8 rows: generous
fixed = 16 << 20
bound = base + window + 2 * resident + kv + acts + fixed
MiB = 1 << 20
check(peak <= bound, "nvme peak RSS <= RSS at open + window + 2 x resident + KV + activations + 16 MiB",
      f"peak {peak / MiB:.1f} MiB, bound {bound / MiB:.1f} MiB (base {base / MiB:.1f}, window {window / MiB:.1f}, "
      f"resident {resident / MiB:.1f}, layers {layers / MiB:.1f})")
check(peak + layers / 2 < base + layers, "the streamed run does not hold the layers (peak well under base + all layers)",
      f"peak {peak / MiB:.1f} MiB < {(base + layers / 2) / MiB:.1f} MiB")
finish()
