#!/usr/bin/python3
"""Token files and weights files as outside input (issue 10, part B).

1. Token files: /tokens must be a 1-D dataset of unsigned 16- or 32-bit
   integers with vocab_size and eot in range; float, signed, int8, uint64,
   2-D files and bad attributes are refused with the dtype or rank found.
2. A token outside the vocabulary that only rank 1 reads: rank 1 prints
   "[rank 1] error: ..." naming the file and position, and the job ends at
   once (it used to stall 30 s and abort without a word).
3. Weights for `generate`: every shape attribute is checked against the deck
   (n_head, vocab_size, n_layer, n_embd, n_positions, mlp_hidden): a mismatch
   names the attribute, both values and the file. Misshapen, non-float or
   missing datasets, attributes stored as arrays, and a checkpoint whose
   /params fail their checksums are refused.
"""
import os
import shutil
import time

import h5py
import numpy as np

from common import MICRO_MODEL, ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("inputs")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "c.deck"), f"""
[run]
seed = 5
{MICRO_MODEL}[data]
train = {tok}
order = sequential
[train]
steps = 4
batch = 8
eval_interval = 0
[checkpoint]
interval = 4
""")
with h5py.File(tok, "r") as f:
    tokens = np.array(f["tokens"])


def token_file(name, data, vocab=256, eot=0, attrs=None):
    path = os.path.join(d, f"{name}.h5")
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("tokens", data=data)
        ds.attrs["vocab_size"] = vocab
        ds.attrs["eot"] = eot
        ds.attrs["tokenizer"] = "byte"
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v
    return path


def train(path, np_=2, *sets):
    args = ["train", deck, "--set", f"data.train={path}", "--set", f"run.out_dir={d}/run-{os.path.basename(path)}",
            "--set", f"train.micro_batch={8 // np_}"]
    for s in sets:
        args += ["--set", s]
    t0 = time.time()
    p = run(args, np=np_, check_rc=False, timeout=120)
    return p, time.time() - t0


# 1. token files -----------------------------------------------------------------
n = len(tokens)
cases = [
    ("float32", tokens.astype(np.float32), {}, "/tokens holds 32-bit floats"),
    ("int8", (tokens % 100).astype(np.int8), {}, "/tokens holds signed 8-bit integers"),
    ("negative-int16", tokens.astype(np.int16) - 5, {}, "/tokens holds signed 16-bit integers"),
    ("int32", tokens.astype(np.int32), {}, "/tokens holds signed 32-bit integers"),
    ("uint64", tokens.astype(np.uint64), {}, "/tokens holds unsigned 64-bit integers"),
    ("uint8", (tokens % 200).astype(np.uint8), {}, "/tokens holds unsigned 8-bit integers"),
    ("2d", tokens[: n // 2 * 2].reshape(-1, 2), {}, "/tokens has 2 dimensions, not 1"),
    ("vocab0", tokens, {"vocab": 0}, "vocab_size = 0 of /tokens is outside [1, 65536]"),
    ("vocab-huge", tokens, {"vocab": 70000}, "vocab_size = 70000 of /tokens is outside [1, 65536]"),
    ("vocab-array", tokens, {"vocab": np.array([256, 1])}, "vocab_size of /tokens is a 1-D array of 2 integers"),
    ("vocab-float", tokens, {"vocab": 256.0}, "vocab_size of /tokens is a float"),
    ("eot-out", tokens, {"eot": 256}, "eot = 256 of /tokens is outside [0, 255]"),
]
for name, data, kw, must in cases:
    path = token_file(name, data, **kw)
    p, dt = train(path, 1)
    err = p.stderr
    check(p.returncode != 0 and must in err and path in err and "hint:" in err,
          f"token file {name}: refused with the reason", next((l for l in err.splitlines() if "error:" in l), "")[:150])
path = os.path.join(d, "group.h5")
with h5py.File(path, "w") as f:
    f.create_group("tokens")
p, _ = train(path, 1)
check(p.returncode != 0 and "has no /tokens dataset" in p.stderr, "a /tokens group is refused")
p, _ = train(tok, 1)
check(p.returncode == 0, "a file made by `partita prep` trains")

# 2. a bad token that only rank 1 reads -------------------------------------------
# Sequential order, dp = 2, micro_batch 4, rows of 33 tokens: rank 1 reads rows 4..7 of step 0.
bad = tokens.copy()
bad[5 * 33 + 3] = 300
path = token_file("oov-rank1", bad.astype(np.uint16))
p, dt = train(path, 2)
check(p.returncode != 0 and "[rank 1] error:" in p.stderr and "token 300 at position 168" in p.stderr and path in p.stderr,
      "a token outside the vocabulary that only rank 1 reads: rank 1 says so, naming file and position",
      next((l for l in p.stderr.splitlines() if "error:" in l), "")[:150])
check(dt < 15, "... and the job ends at once", f"{dt:.1f} s")

# 3. weights for generate -----------------------------------------------------------
run(["train", deck, "--set", f"run.out_dir={d}/w", "--set", "train.micro_batch=8"], np=1)
final = os.path.join(d, "w/final.h5")
ckpt = os.path.join(d, "w/ckpt/step-000004.h5")


def generate(weights, *sets):
    args = ["generate", os.path.join(ROOT, "inputs/generate-tiny.deck"), "--set", "model.d_model=32",
            "--set", "model.heads=2", "--set", "model.seq_len=32", "--set", f"generate.weights={weights}",
            "--set", f"run.out_dir={d}/gen", "--set", f"generate.jsonl={d}/gen/none.jsonl", "--set", "generate.max_new_tokens=4"]
    for s in sets:
        args += ["--set", s]
    if os.path.exists(f"{d}/gen/none.jsonl"):
        os.remove(f"{d}/gen/none.jsonl")
    return run(args, np=1, check_rc=False, timeout=120)


p = generate(final)
check(p.returncode == 0, "generate reads the matching final.h5", (p.stderr.strip().splitlines() or [""])[-1][:120])
p = generate(ckpt)
check(p.returncode == 0, "... and the matching checkpoint", (p.stderr.strip().splitlines() or [""])[-1][:120])
for key, value, attr, fv, dv in [("model.heads", 4, "n_head", 2, 4), ("model.vocab", 256, "vocab_size", 257, 256),
                                 ("model.layers", 3, "n_layer", 2, 3), ("model.seq_len", 64, "n_positions", 32, 64),
                                 ("model.mlp_ratio", 2, "mlp_hidden", 128, 64)]:
    p = generate(final, f"{key}={value}")
    label = key + (" x model.d_model" if key == "model.mlp_ratio" else "")
    must = f"'{final}': {attr} = {fv}, but the deck's {label} gives {dv}"
    check(p.returncode != 0 and must in p.stderr, f"generate: the deck's {key} = {value} against the file's {attr}",
          next((l for l in p.stderr.splitlines() if "error:" in l), "")[:150])
p = generate(final, "model.d_model=64", "model.heads=4")
check(p.returncode != 0 and "n_embd = 32, but the deck's model.d_model gives 64" in p.stderr, "... and n_embd")


def edited(name, src, edit):
    path = os.path.join(d, f"{name}.h5")
    shutil.copy(src, path)
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def replace(f, name, data):
    del f[name]
    f[name] = data


for name, src, edit, must in [
    ("w-3d", final, lambda f: replace(f, "params/wte.weight", np.zeros((320, 32, 2), np.float32)),
     "/params/wte.weight has shape (320, 32, 2), the model expects (320, 32)"),
    ("w-int", final, lambda f: replace(f, "params/wte.weight", np.zeros((320, 32), np.int32)),
     "/params/wte.weight is not a float dataset"),
    ("w-missing", final, lambda f: f["params"].__delitem__("ln_f.bias"), "has no dataset /params/ln_f.bias"),
    ("w-attr-array", final, lambda f: f.attrs.__setitem__("n_head", np.array([2, 2])),
     "the attribute n_head is a 1-D array of 2 integers"),
    ("w-attr-missing", final, lambda f: f.attrs.__delitem__("vocab_size"), "the attribute vocab_size is missing"),
    ("w-attr-zero", final, lambda f: f.attrs.__setitem__("n_head", 0), "the attribute n_head = 0 is outside"),
    ("c-meta-n_head", ckpt, lambda f: f["meta"].attrs.__setitem__("n_head", 4),
     "/meta n_head = 4, but the deck's model.heads gives 2"),
]:
    path = edited(name, src, edit)
    p = generate(path)
    check(p.returncode != 0 and must in p.stderr and path in p.stderr, f"generate refuses weights {name}",
          next((l for l in p.stderr.splitlines() if "error:" in l), "")[:150])
path = os.path.join(d, "c-flipped.h5")
shutil.copy(ckpt, path)
with h5py.File(path, "r") as f:
    off = f["params/h.1.mlp.c_fc.weight"].id.get_offset()
with open(path, "r+b") as f:
    f.seek(off + 64)
    b = f.read(1)
    f.seek(off + 64)
    f.write(bytes([b[0] ^ 4]))
p = generate(path)
check(p.returncode != 0 and "/params/h.1.mlp.c_fc.weight fails its checksum" in p.stderr,
      "generate refuses a checkpoint whose /params fail their checksums")
finish()
