"""safetensors interop: `partita ckpt export --format safetensors` and `partita import`.

1. Round trip: a checkpoint of the tiny deck -> safetensors -> Partita weights, bit-identical
   to `ckpt export` (h5) of the same checkpoint.
2. fp16 and bf16 files (written here from the same weights) import within their rounding.
3. A GPT-2 written here by a short numpy writer from the format's specification (with the
   "transformer." prefix, lm_head.weight and attention-mask buffers, as Hugging Face saves
   GPT2LMHeadModel) imports, and the PyTorch reference gives identical logits on it and on
   the imported weights.
4. Corrupt headers, out-of-range offsets, overlaps, holes, bad dtypes and shape mismatches
   are refused with the reason (under the ASan build as well)."""
import json
import os
import struct

import h5py
import numpy as np
import torch

from common import ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck
from gpt_torch import gpt_forward

ASAN = os.path.join(ROOT, "build-asan", "partita")


def st_write(path, tensors, dtype_of=None, header_edit=None, data_edit=None):
    """safetensors from its specification: u64 LE header size, JSON header, raw LE data."""
    header, blobs, at = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors.items():
        dt = (dtype_of or {}).get(name, "F32")
        if dt == "F32":
            raw = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        elif dt == "F16":
            raw = np.ascontiguousarray(arr, dtype="<f2").tobytes()
        elif dt == "BF16":   # round to nearest even on the top 16 bits
            u = np.ascontiguousarray(arr, dtype="<f4").view("<u4").astype(np.uint64)
            raw = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")).tobytes()
        else:
            raw = np.ascontiguousarray(arr, dtype="<i8").tobytes()
        header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    if header_edit:
        header_edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    data = b"".join(blobs)
    if data_edit:
        data = data_edit(data)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + data)
    return path


def params(path):
    with h5py.File(path) as f:
        return {k: np.array(f["params"][k]) for k in f["params"]}, dict(f.attrs)


def main():
    d = tmpdir("safetensors")
    tok = licenses_tokens(d)
    deck = write_deck(os.path.join(d, "t.deck"), f"""
[run]
name = st
out_dir = {d}/run
[model]
vocab = 257
layers = 2
d_model = 64
heads = 4
seq_len = 32
[data]
train = {tok}
[train]
steps = 4
micro_batch = 2
log_interval = 1
eval_interval = 0
[optimizer]
warmup = 0
[checkpoint]
dir = {d}/ckpt
interval = 4
""")
    run(["train", deck], np=1)
    ck = sorted(f for f in os.listdir(os.path.join(d, "ckpt")) if f.endswith(".h5"))[-1]
    ck = os.path.join(d, "ckpt", ck)
    ref_h5, st, back = (os.path.join(d, x) for x in ("ref.h5", "model.safetensors", "back.h5"))
    run(["ckpt", "export", ck, ref_h5])
    p = run(["ckpt", "export", ck, st, "--format", "safetensors"])
    check(os.path.exists(os.path.join(d, "config.json")), "export writes config.json beside the safetensors file", p.stdout.strip())
    cfg = json.load(open(os.path.join(d, "config.json")))
    check(cfg["n_layer"] == 2 and cfg["n_head"] == 4 and cfg["vocab_size"] == 257 and cfg["model_type"] == "gpt2",
          "config.json names GPT2LMHeadModel's shape", str({k: cfg[k] for k in ("n_layer", "n_head", "n_embd", "vocab_size")}))
    with open(st, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    check(hdr["wte.weight"]["shape"] == [257, 64] and hdr["h.0.attn.c_attn.weight"]["shape"] == [64, 192] and n % 8 == 0,
          "the exported header: wte (V, C) = (257, 64), c_attn (C, 3C) Conv1D, 8-aligned data",
          f"{hdr['wte.weight']['shape']} {hdr['h.0.attn.c_attn.weight']['shape']}")
    p = run(["import", st, back, "--heads", "4"])
    a, attrs_a = params(ref_h5)
    b, attrs_b = params(back)
    V = 257
    same = all(np.array_equal(a[k][:V] if k == "wte.weight" else a[k], b[k][:V] if k == "wte.weight" else b[k]) for k in a)
    pad = np.abs(a["wte.weight"][V:]).max() if a["wte.weight"].shape[0] > V else 0.0
    check(sorted(a) == sorted(b) and same, f"round trip checkpoint -> safetensors -> Partita: {len(a)} tensors bit-identical",
          f"wte padding rows: {a['wte.weight'].shape[0] - V}, max |x| there in the checkpoint {pad:.3g}")
    check(all(attrs_a[k] == attrs_b[k] for k in ("n_layer", "n_embd", "n_head", "vocab_size", "padded_vocab_size",
                                                     "n_positions", "mlp_hidden")), "the imported file's shape attributes equal the export's")

    # 2. fp16 and bf16.
    hf = {k: (v[:V] if k == "wte.weight" else v) for k, v in a.items()}
    for dt, tol in (("F16", 2.0 ** -11), ("BF16", 2.0 ** -8)):
        path = st_write(os.path.join(d, f"m-{dt}.safetensors"), hf, {k: dt for k in hf})
        out = os.path.join(d, f"m-{dt}.h5")
        run(["import", path, out, "--heads", "4"])
        c, _ = params(out)
        worst = max(float(np.max(np.abs(c[k][:V] - hf[k][:V]) / (np.abs(hf[k][:V]) + 1e-30) * (np.abs(hf[k][:V]) > 1e-4)))
                    for k in hf)
        if dt == "F16":
            exact = all(np.array_equal(c[k][:V] if k == "wte.weight" else c[k], hf[k].astype(np.float16).astype(np.float32))
                        for k in hf)
        else:
            exact = True
        check(worst <= tol and exact, f"{dt} import within rounding: max relative error {worst:.2e} <= {tol:.2e}"
              + (" and equal to numpy's float16 conversion" if dt == "F16" else ""))

    # 3. A Hugging Face-style file from the numpy writer, through the PyTorch reference.
    rng = np.random.default_rng(7)
    L, C, NH, Vh, T = 2, 32, 2, 300, 16
    w = {"wte.weight": rng.normal(0, 0.1, (Vh, C)), "wpe.weight": rng.normal(0, 0.1, (T, C))}
    for l in range(L):
        for nm, shp in (("ln_1.weight", (C,)), ("ln_1.bias", (C,)), ("attn.c_attn.weight", (C, 3 * C)),
                        ("attn.c_attn.bias", (3 * C,)), ("attn.c_proj.weight", (C, C)), ("attn.c_proj.bias", (C,)),
                        ("ln_2.weight", (C,)), ("ln_2.bias", (C,)), ("mlp.c_fc.weight", (C, 4 * C)),
                        ("mlp.c_fc.bias", (4 * C,)), ("mlp.c_proj.weight", (4 * C, C)), ("mlp.c_proj.bias", (C,))):
            w[f"h.{l}.{nm}"] = rng.normal(1.0 if nm.startswith("ln") and nm.endswith("weight") else 0.0, 0.1, shp)
    w["ln_f.weight"], w["ln_f.bias"] = rng.normal(1, 0.1, (C,)), rng.normal(0, 0.1, (C,))
    w = {k: v.astype(np.float32) for k, v in w.items()}
    hfw = {"transformer." + k: v for k, v in w.items()}
    hfw["lm_head.weight"] = w["wte.weight"]
    for l in range(L):
        hfw[f"transformer.h.{l}.attn.bias"] = np.tril(np.ones((1, 1, T, T), np.float32))
    path = st_write(os.path.join(d, "hf.safetensors"), hfw)
    out = os.path.join(d, "hf.h5")
    p = run(["import", path, out, "--heads", str(NH)])
    imp, _ = params(out)
    Vp = imp["wte.weight"].shape[0]
    same = set(imp) == set(w) and all(np.array_equal(imp[k][:Vh] if k == "wte.weight" else imp[k], w[k]) for k in w)
    check(same and not imp["wte.weight"][Vh:].any(), f"a numpy-written HF GPT-2 (transformer. prefix, lm_head, mask "
          f"buffers) imports bit for bit (wte padded {Vh} -> {Vp} rows with zeros)", p.stdout.strip())
    # The reference with wte padded the same way, so that PyTorch runs the same
    # shapes (its GEMM's bits may depend on the output width).
    idx = torch.tensor(rng.integers(0, Vh, (2, T)))
    wp = dict(w, **{"wte.weight": np.concatenate([w["wte.weight"], np.zeros((Vp - Vh, C), np.float32)])})
    ref = gpt_forward({k: torch.tensor(v) for k, v in wp.items()}, idx, L, NH, Vh)[..., :Vh]
    got = gpt_forward({k: torch.tensor(v) for k, v in imp.items()}, idx, L, NH, Vh)[..., :Vh]
    check(torch.equal(ref, got), f"the imported HF GPT-2 gives PyTorch's logits bit for bit on {tuple(ref.shape)}")

    # 4. Bad files.
    good = hf
    def hdr_only(raw):
        return lambda path: open(path, "wb").write(raw)
    cases = [
        ("short file", lambda pth: open(pth, "wb").write(b"\x01\x02"), "shorter than the 8-byte"),
        ("huge header length", lambda pth: open(pth, "wb").write(struct.pack("<Q", 1 << 60) + b"{}"), "above the format's 100 MB"),
        ("header past the end", lambda pth: open(pth, "wb").write(struct.pack("<Q", 1000) + b"{}"), "more than the file holds"),
        ("not JSON", lambda pth: open(pth, "wb").write(struct.pack("<Q", 8) + b"[1,2,3] "), "expected '{'"),
        ("truncated JSON", lambda pth: open(pth, "wb").write(struct.pack("<Q", 9) + b'{"a": {"d'), "ends inside a string"),
        ("invalid UTF-8 name", lambda pth: open(pth, "wb").write(struct.pack("<Q", 16) + b'{"\xff": 1}'.ljust(16)), "invalid UTF-8"),
        ("offset out of range", lambda pth: st_write(pth, good, header_edit=lambda h: h["ln_f.bias"].update(
            data_offsets=[h["ln_f.bias"]["data_offsets"][0] + 10**9, h["ln_f.bias"]["data_offsets"][1] + 10**9])), "reach past"),
        ("offsets vs shape", lambda pth: st_write(pth, good, header_edit=lambda h: h["ln_f.bias"].update(shape=[65])), "need"),
        ("overlap", lambda pth: st_write(pth, good, header_edit=lambda h: h["ln_f.bias"].update(
            data_offsets=h["ln_f.weight"]["data_offsets"])), "overlaps"),
        ("truncated data", lambda pth: st_write(pth, good, data_edit=lambda x: x[:-100]), "reach past"),
        ("trailing bytes", lambda pth: st_write(pth, good, data_edit=lambda x: x + b"\0" * 16), "belong to no tensor"),
        ("unknown dtype", lambda pth: st_write(pth, good, header_edit=lambda h: h["ln_f.bias"].update(dtype="F128")), "unknown dtype"),
        ("integer weights", lambda pth: st_write(pth, good, {"ln_f.bias": "I64"}), "not F32, F16 or BF16"),
        ("shape mismatch", lambda pth: st_write(pth, dict(good, **{"h.1.mlp.c_proj.bias": np.zeros(63, np.float32)})),
         "has shape (63), the model"),
        ("missing tensor", lambda pth: st_write(pth, {k: v for k, v in good.items() if k != "ln_f.bias"}), "no tensor 'ln_f.bias'"),
        ("extra tensor", lambda pth: st_write(pth, dict(good, **{"h.0.attn.rotary": np.zeros(4, np.float32)})), "not part of a GPT-2"),
        ("not GPT-2", lambda pth: st_write(pth, {"x": np.zeros(4, np.float32)}), "not a GPT-2 model"),
        ("repeated member", lambda pth: open(pth, "wb").write(struct.pack("<Q", 64) + b'{"a":{"dtype":"F32","dtype":"F32"}}'.ljust(64)),
         "unexpected or repeated"),
        ("negative offset", lambda pth: open(pth, "wb").write(struct.pack("<Q", 64) + b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}}'.ljust(64)),
         "non-negative integer"),
    ]
    binaries = [b for b in ("build/partita", ASAN) if os.path.exists(os.path.join(ROOT, b))]
    for name, make, reason in cases:
        path = os.path.join(d, "bad.safetensors")
        make(path)
        for binary in binaries:
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")  # MPICH leaks at exit by design
            import subprocess
            q = subprocess.run([os.path.join(ROOT, binary), "import", path, os.path.join(d, "bad.h5"), "--heads", "4"],
                               capture_output=True, text=True, env=env, timeout=120)
            check(q.returncode == 1 and reason in q.stderr and "Sanitizer" not in q.stderr and "runtime error" not in q.stderr,
                  f"{os.path.basename(binary)}{' (asan)' if 'asan' in binary else ''}: {name} refused: {reason}",
                  q.stderr.strip().splitlines()[0][:220] if q.stderr.strip() else f"rc {q.returncode}")
    finish()


if __name__ == "__main__":
    main()
