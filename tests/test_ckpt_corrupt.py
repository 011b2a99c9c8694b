#!/usr/bin/python3
"""Damaged and hostile checkpoints: `partita ckpt info` on ~80 variants of one
small checkpoint (attributes edited, retyped, made arrays or deleted; datasets
retyped, reshaped or deleted; bytes flipped; the file truncated), a subset
resumed by `partita train` and read by `partita generate`.

Each must end with a clear message and status 1 (never a signal, a hang, or a
sanitizer report; run with PARTITA=<an ASan build> to check the latter), and
the pristine file must pass. The variants are deterministic (seeded).
"""
import gzip
import os
import random
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

from common import MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("ckptbad")
tok = licenses_tokens(d)
deck = write_deck(os.path.join(d, "c.deck"), f"""
[model]
vocab = 257
layers = 2
d_model = 32
heads = 2
seq_len = 32
[data]
train = {tok}
[train]
steps = 4
batch = 4
eval_interval = 0
[checkpoint]
interval = 4
""")
run(["train", deck, "--set", f"run.out_dir={d}/run"], np=1)
good = os.path.join(d, "run/ckpt/step-000004.h5")
SANITIZER = ("AddressSanitizer", "runtime error:", "LeakSanitizer", "Segmentation fault", "Caught signal")


def variant(name, edit):
    path = os.path.join(d, f"v-{name}.h5")
    shutil.copy(good, path)
    edit(path)
    return path


def set_attr(key, value):
    def edit(path):
        with h5py.File(path, "a") as f:
            if value is None:
                del f["meta"].attrs[key]
            else:
                f["meta"].attrs[key] = value
    return edit


def dataset(name, data):
    def edit(path):
        with h5py.File(path, "a") as f:
            del f[name]
            if data is not None:
                f[name] = data
    return edit


def flip(seed):
    def edit(path):
        rng = random.Random(seed)
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            for _ in range(rng.choice([1, 4, 32])):
                off = rng.randrange(size)
                f.seek(off)
                b = f.read(1)
                f.seek(off)
                f.write(bytes([b[0] ^ (1 << rng.randrange(8))]))
    return edit


def metadata_ranges(path):
    """The byte ranges of the file outside every dataset's data: HDF5's own
    structures (superblock, object headers, attributes, B-trees, heaps)."""
    spans = []
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                spans.append((obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()))
        f.visititems(visit)
    spans.sort()
    out, at = [], 0
    for a, b in spans:
        if a > at:
            out.append((at, a))
        at = max(at, b)
    out.append((at, os.path.getsize(path)))
    return [(a, b) for a, b in out if b > a]


def flip_meta(seed):
    def edit(path):
        rng = random.Random(1000 + seed)
        ranges = metadata_ranges(path)
        with open(path, "r+b") as f:
            for _ in range(rng.choice([1, 2, 8])):
                a, b = rng.choice(ranges)
                off = rng.randrange(a, b)
                f.seek(off)
                byte = f.read(1)
                f.seek(off)
                f.write(bytes([byte[0] ^ (1 << rng.randrange(8))]))
    return edit


def truncate(frac):
    def edit(path):
        with open(path, "r+b") as f:
            f.truncate(int(os.path.getsize(path) * frac))
    return edit


variants = []
for key in ["n_layer", "n_embd", "n_head", "vocab_size", "padded_vocab_size", "n_positions", "mlp_hidden"]:
    for tag, v in [("zero", 0), ("neg", -1), ("huge", 2 ** 40), ("i32max", 2 ** 31 - 1), ("array", np.array([1, 2, 3])),
                   ("float", 2.5), ("str", "x"), ("del", None)]:
        variants.append((f"{key}-{tag}", set_attr(key, v)))
for label, key, v in [
        ("step-neg", "step", -1), ("step-huge", "step", 2 ** 62), ("step-array", "step", np.arange(100)),
        ("step-str", "step", "12"), ("step-edit", "step", 12), ("optim_t-huge", "optim_t", 2 ** 40),
        ("data_cursor-neg", "data_cursor", -5), ("tokens_seen-nan", "tokens_seen", float("nan")),
        ("tokens_seen-str", "tokens_seen", "x"), ("layout-long", "layout", "L" * 5000),
        ("layout-array", "layout", np.array(["a", "b"], dtype=object)), ("deck-array", "deck", np.arange(7)),
        ("deck-int", "deck", 3), ("version-4", "format_version", 4), ("version-0", "format_version", 0),
        ("version-str", "format_version", "2"), ("meta_checksum-del", "meta_checksum", None),
        ("meta_checksum-str", "meta_checksum", "x"), ("meta_checksum-array", "meta_checksum", np.arange(2, dtype=np.uint64)),
        ("checksum-array", "checksum:/params/wte.weight", np.arange(3, dtype=np.uint64)),
        ("checksum-del", "checksum:/params/wte.weight", None), ("extra-attr", "extra", 1), ("bool-attr", "boolean", True)]:
    variants.append((label, set_attr(key, v)))
variants += [
    ("wte-int", dataset("params/wte.weight", np.zeros((320, 32), np.int32))),
    ("wte-3d", dataset("params/wte.weight", np.zeros((320, 32, 2), np.float32))),
    ("wte-shape", dataset("params/wte.weight", np.zeros((32, 320), np.float32))),
    ("wte-scalar", dataset("params/wte.weight", np.float32(1))),
    ("wte-del", dataset("params/wte.weight", None)),
    ("params-del", dataset("params", None)),
    ("meta-dataset", dataset("meta", np.zeros(3))),
    ("optim-del", dataset("optim", None)),
]
variants += [(f"flip-{s}", flip(s)) for s in range(16)]
variants += [(f"flipmeta-{s}", flip_meta(s)) for s in range(24)]
variants += [(f"trunc-{f}", truncate(f)) for f in (0.0, 0.01, 0.3, 0.9, 0.999)]


def verdict(p, dt):
    text = p.stdout + p.stderr
    clean = not any(s in text for s in SANITIZER) and 0 <= p.returncode < 128 and dt < 30
    return clean, text


# The pristine file passes.
p = run(["ckpt", "info", good], check_rc=False)
check(p.returncode == 0 and "meta checksum ok" in p.stdout, "the pristine checkpoint passes `ckpt info`")

def info(item):
    name, edit = item
    path = variant(name, edit)
    t0 = time.time()
    p = run(["ckpt", "info", path], check_rc=False, timeout=60)
    return name, p, time.time() - t0


bad_runs, passed, results = [], 0, {}
with ThreadPoolExecutor(max_workers=2) as pool:     # each run is mostly MPI and library start-up
    for name, p, dt in pool.map(info, variants):
        clean, text = verdict(p, dt)
        results[name] = (p.returncode, text)
        # Refused with a message, or (a flip in an unused byte) accepted whole.
        ok = clean and ((p.returncode == 1 and ("error:" in text or "FAILED" in text)) or
                        (p.returncode == 0 and "ok: 0 of" in p.stdout))
        if p.returncode == 0:
            passed += 1
        if not ok:
            bad_runs.append(f"{name}: rc {p.returncode}: {text.strip()[-300:]}")
check(not bad_runs, f"`ckpt info` on {len(variants)} damaged variants: each a clear verdict, no signal or sanitizer report",
      f"{passed} accepted whole (flips in unused bytes), {len(variants) - passed - len(bad_runs)} refused"
      + ("; " + " | ".join(bad_runs[:3]) if bad_runs else ""))
must_refuse = [n for n, _ in variants if not n.startswith("flip")]  # a flip may hit an unused byte
accepted = [n for n in must_refuse if results[n][0] == 0]
check(not accepted, "every edited attribute or dataset is refused (the meta checksum or a range check)",
      ", ".join(accepted[:5]))

# A few refusals name what is wrong.
for name, must in [("n_embd-zero", "n_embd = 0"), ("step-array", "step is a 1-D array of 100"),
                   ("step-edit", "meta checksum mismatch"), ("n_head-array", "n_head is a 1-D array of 3"),
                   ("layout-long", "layout is a string"), ("wte-3d", "shape (320, 32, 2) instead of (320, 32)"), ("version-4", "format_version = 4"),
                   ("bool-attr", "'boolean' is an enum"), ("n_layer-huge", "n_layer = 1099511627776 is outside"),
                   ("trunc-0.3", "truncated file")]:
    rc, text = results[name]
    check(rc == 1 and must in text, f"ckpt info on {name} names it", f"want '{must}'")

# train resumes and generate reads a subset: refused with a message, never a crash.
subset = ["n_embd-zero", "n_head-array", "step-edit", "step-array", "wte-3d", "wte-int", "meta-dataset", "flip-3",
          "flip-7", "trunc-0.3", "checksum-array", "meta_checksum-del"]
for name in subset:
    path = os.path.join(d, f"v-{name}.h5")
    t0 = time.time()
    p = run(["train", deck, "--set", f"run.out_dir={d}/resume-{name}", "--set", f"checkpoint.resume={path}",
             "--set", "train.steps=6"], np=1, check_rc=False, timeout=120)
    clean, text = verdict(p, time.time() - t0)
    err = [l for l in p.stderr.splitlines() if "error:" in l]
    check(clean and p.returncode != 0 and "cannot resume from checkpoint" in text,
          f"train resume = {name}: a clear refusal", (err or [""])[0][:200])
    gp = run(["generate", os.path.join(ROOT, "inputs/generate-tiny.deck"), "--set", "model.d_model=32",
              "--set", "model.heads=2", "--set", "model.seq_len=32", "--set", f"generate.weights={path}",
              "--set", f"run.out_dir={d}/gen"], np=1, check_rc=False, timeout=120)
    clean, text = verdict(gp, 0)
    check(clean and (gp.returncode != 0 and "error:" in text or gp.returncode == 0),
          f"generate weights = {name}: a clear refusal or a whole read", (text.strip().splitlines() or [""])[-1][:160])
# A kept damaged checkpoint (a flip-meta variant of one run) on which libhdf5
# itself loops forever reading a string attribute of /meta (H5HG_read), with no
# error to refuse it by: the reads of /meta are bounded (20 s), for `ckpt info`
# and for a resume alike.
loop = os.path.join(d, "heap-loop.h5")
with gzip.open(os.path.join(ROOT, "tests", "corpus", "hdf5", "heap-loop.h5.gz")) as src, open(loop, "wb") as dst:
    shutil.copyfileobj(src, dst)
for what, cmd in [("ckpt info", ["ckpt", "info", loop]),
                  ("train resume", ["train", deck, "--set", f"run.out_dir={d}/resume-loop", "--set",
                                    f"checkpoint.resume={loop}", "--set", "train.steps=6"])]:
    t0 = time.time()
    p = run(cmd, np=1, check_rc=False, timeout=90)
    dt = time.time() - t0
    text = p.stdout + p.stderr
    check(p.returncode == 1 and "did not finish within 20 s" in text and "damaged" in text and dt < 60,
          f"{what} on a file libhdf5 loops on: ended after the 20 s bound with the reason",
          f"rc {p.returncode}, {dt:.0f} s: " + (text.strip().splitlines() or [""])[-2][:200])
finish()
