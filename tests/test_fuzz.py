"""The file readers under AddressSanitizer + UBSan (build-asan/partita, `make asan`) on bad inputs.

Readers and how each is driven:
  ckpt        `partita ckpt info FILE`                    (a checkpoint)
  resume      `partita train DECK --set checkpoint.resume=FILE`
  weights     `partita generate DECK` with [generate] weights = FILE
  tokens      `partita train DECK` with [data] train = FILE (np 1, and np 2 for some seeds)
  requests    `partita generate DECK` with [generate] requests = FILE (JSONL)
  genjsonl    `partita generate DECK` rerun over an existing (bad) gen.jsonl
  sets        `partita train|generate DECK --set key=value` with extreme values

Every run must end with an exit status in {0, 1, 2}, no sanitizer report, no signal, no hang
(a timeout), and a message when it fails ("error..." or `ckpt info`'s "FAILED: ..." verdict); a generate run that succeeds must
leave a gen.jsonl of valid UTF-8 JSON lines.

Inputs: first the kept regression corpus, tests/corpus/<reader>/ (HDF5 inputs are kept as recipes,
NAME.json: a list of mutations applied to a fresh base file, so the corpus stays small and
readable; text inputs are kept as they are), then a seeded mutation loop (--seed, --runs per
reader; --long for `make fuzz`). A failing random case prints its recipe and writes it to
build-asan/fuzz-out/ so it can be kept in tests/corpus/<reader>/.
"""
import argparse
import concurrent.futures
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, MPIEXEC, check, finish, tmpdir  # noqa: E402

ASAN_BIN = os.path.join(ROOT, "build-asan", "partita")
CORPUS = os.path.join(ROOT, "tests", "corpus")
OUT = os.path.join(ROOT, "build-asan", "fuzz-out")
ALLOWED_RC = (0, 1, 2)
SANITIZER = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error:|"
                       r"SUMMARY: \w+Sanitizer")
# A failure says so: an "error: ..." message, or `ckpt info`'s verdict line "FAILED: ...".
FAILURE_MESSAGE = re.compile(r"(?im)error|^FAILED: ")
# detect_leaks=0: MPICH leaks at exit by design. allocator_may_return_null=1 with
# max_allocation_size_mb: an allocation past 1 GiB returns NULL as a real machine's would, so
# the program's own "out of memory" path is what runs (and a run cannot take the machine's memory).
ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=86:allocator_may_return_null=1:max_allocation_size_mb=1024",
    "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1:exitcode=86",
    "OMP_NUM_THREADS": "1",
}

TINY_DECK = """[run]
name = fuzz
out_dir = {out}
seed = 7
threads = 1
peak_gflops = 1
[model]
vocab = 257
layers = 1
d_model = 32
heads = 2
seq_len = 16
[data]
train = {tokens}
val_fraction = 0.2
[train]
steps = 2
micro_batch = 2
log_interval = 1
eval_batches = 1
[optimizer]
warmup = 0
[checkpoint]
interval = 2
[comm]
timeout_s = 10
"""

GEN_DECK = """[run]
name = fuzz-gen
out_dir = {out}
threads = 1
[model]
vocab = 257
layers = 1
d_model = 32
heads = 2
seq_len = 16
[generate]
weights = {weights}
requests = {requests}
max_new_tokens = 3
token_budget = 16
kv_block = 4
kv_blocks = 16
max_batch = 4
[comm]
timeout_s = 10
"""

REQUESTS = ('{"id": "a", "prompt": "The license", "max_tokens": 3}\n'
            '{"id": "b", "tokens": [70, 71, 72], "max_tokens": 2, "temperature": 0.8, "top_k": 5, "seed": 3}\n')

EXTREME_INTS = [0, -1, 1, 3, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -2**63]


# ------------------------------------------------------------------ running the binary

def run_partita(args, np_=None, timeout=30):
    """Runs build-asan/partita; returns (rc or None on timeout, stdout + stderr, stderr)."""
    cmd = ([MPIEXEC, "-np", str(np_)] if np_ else []) + [ASAN_BIN] + list(args)
    env = dict(os.environ, **ENV)
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         errors="replace", start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out + err, err
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, 9)
        out, err = p.communicate()
        return None, out + err, err


def problems_of(rc, text, err):
    """What is wrong with one run (an empty list: it held)."""
    bad = []
    if rc is None:
        bad.append("hang (timeout)")
    elif rc < 0:
        bad.append(f"killed by signal {-rc}")
    elif rc not in ALLOWED_RC:
        bad.append(f"exit status {rc}")
    m = SANITIZER.search(text)
    if m:
        line = next((ln for ln in text.splitlines() if "SUMMARY:" in ln or "runtime error:" in ln), m.group(0))
        bad.append("sanitizer: " + line.strip()[:200])
    if rc in (1, 2) and not FAILURE_MESSAGE.search(text):
        bad.append("failed without an error message")
    return bad


def jsonl_problems(path, before=b""):
    """A gen.jsonl must be valid UTF-8 with one JSON object a line; where the file still begins
    with what an earlier run left there (before), only what this run added is checked."""
    if not os.path.exists(path):
        return []
    raw = open(path, "rb").read()
    if before and raw.startswith(before):
        raw = raw[len(before):]
        if not before.endswith(b"\n") and b"\n" in raw:
            raw = raw[raw.index(b"\n") + 1:]  # the rest of a last line left without its newline
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return [f"gen.jsonl is not valid UTF-8 ({e.reason} at byte {e.start})"]
    for i, line in enumerate(text.splitlines(), 1):
        try:
            if not isinstance(json.loads(line), dict):
                return [f"gen.jsonl line {i} is not an object"]
        except ValueError as e:
            return [f"gen.jsonl line {i} is not JSON ({e})"]
    return []


# ------------------------------------------------------------------ HDF5 mutations (recipes)

def _value(kind):
    """An attribute or element value named in a recipe."""
    if kind.startswith("i64:"):
        return np.int64(int(kind[4:]))
    if kind.startswith("i8:"):
        return np.int8(int(kind[3:]))
    if kind.startswith("u64:"):
        return np.uint64(int(kind[4:]))
    if kind.startswith("f64:"):
        return np.float64(float(kind[4:]))
    if kind.startswith("str:"):
        return kind[4:]
    if kind.startswith("arr:"):  # arr:N  an int64 array of N elements
        return np.arange(int(kind[4:]), dtype=np.int64) + 1
    raise ValueError(kind)


def mutate(path, recipe):
    """Applies a recipe (a list of [op, args...]) to the HDF5 file at path, in place."""
    for m in recipe:
        op = m[0]
        if op == "truncate":
            size = os.path.getsize(path)
            with open(path, "r+b") as f:
                f.truncate(int(size * m[1]))
            continue
        if op == "bytes":  # flip `count` bytes at offsets drawn from `seed`
            data = bytearray(open(path, "rb").read())
            r = random.Random(m[1])
            for _ in range(m[2]):
                i = r.randrange(len(data))
                data[i] ^= r.randrange(1, 256)
            open(path, "wb").write(bytes(data))
            continue
        with h5py.File(path, "r+") as f:
            if op == "attr":  # [attr, object, name, kind]; kind "del" deletes it
                obj, name, kind = f[m[1]], m[2], m[3]
                if name in obj.attrs:
                    del obj.attrs[name]
                if kind != "del":
                    obj.attrs[name] = _value(kind)
            elif op == "ds_del":
                del f[m[1]]
            elif op == "ds_dtype":  # [ds_dtype, path, dtype, offset]: same shape, another type
                d = f[m[1]][...]
                attrs = dict(f[m[1]].attrs)
                del f[m[1]]
                ds = f.create_dataset(m[1], data=(d.astype(np.float64) + m[3]).astype(m[2]))
                for k, v in attrs.items():
                    ds.attrs[k] = v
            elif op == "ds_shape":  # [ds_shape, path, how]
                d = f[m[1]][...]
                attrs = dict(f[m[1]].attrs)
                del f[m[1]]
                flat = d.reshape(-1)
                new = {"half": flat[: flat.size // 2], "empty": flat[:0], "grow": np.concatenate([flat, flat[:7]]),
                       "2d": flat[: flat.size // 2 * 2].reshape(2, -1), "scalar": flat[:1].reshape(())}[m[2]]
                ds = f.create_dataset(m[1], data=new)
                for k, v in attrs.items():
                    ds.attrs[k] = v
            elif op == "ds_set":  # [ds_set, path, position in [0, 1) or an index >= 1, value kind]
                ds = f[m[1]]
                flat = ds[...].reshape(-1)
                if flat.size:
                    v = _value(m[3])
                    i = min(int(m[2] * flat.size) if m[2] < 1 else int(m[2]), flat.size - 1)
                    if np.issubdtype(flat.dtype, np.integer):
                        info = np.iinfo(flat.dtype)
                        flat[i] = int(np.clip(int(v) if np.isfinite(float(v)) else info.max, info.min, info.max))
                    else:
                        flat[i] = float(v)
                    ds[...] = flat.reshape(ds.shape)
            else:
                raise ValueError(f"unknown mutation {op}")


def objects(path):
    """The groups/datasets (with their attribute names) and datasets of an HDF5 file."""
    attrs, datasets = [], []
    with h5py.File(path, "r") as f:
        def visit(name, o):
            for a in o.attrs:
                attrs.append((name, a))
            if isinstance(o, h5py.Dataset):
                datasets.append(name)
        for a in f.attrs:
            attrs.append(("/", a))
        f.visititems(visit)
    return sorted(attrs), sorted(datasets)


ATTR_KINDS = ["del", "f64:nan", "f64:1e300", "str:abc", "arr:2", "arr:300", "i8:5", "u64:18446744073709551615"] + \
             [f"i64:{v}" for v in EXTREME_INTS]
ELEM_KINDS = ["f64:nan", "f64:inf", "f64:-1", "f64:1e30", "i64:300", "i64:70000", "i64:-1", "i64:4294967295"]


def random_recipe(r, path):
    """One to three mutations drawn from r for the file at path."""
    attrs, datasets = objects(path)
    recipe = []
    for _ in range(r.choice([1, 1, 1, 2, 3])):
        kind = r.choices(["attr", "ds_del", "ds_dtype", "ds_shape", "ds_set", "truncate", "bytes"],
                         weights=[6, 1, 2, 2, 3, 1, 1])[0]
        if kind == "attr" and attrs:
            shape = [x for x in attrs if not x[1].startswith("checksum")]  # most are checksums: favour the rest
            obj, name = r.choice(shape if shape and r.random() < 0.8 else attrs)
            if r.random() < 0.1:
                name = name + "_x" if r.random() < 0.5 else name
            recipe.append(["attr", obj, name, r.choice(ATTR_KINDS)])
        elif kind == "ds_del" and datasets:
            recipe.append(["ds_del", r.choice(datasets)])
        elif kind == "ds_dtype" and datasets:
            recipe.append(["ds_dtype", r.choice(datasets), r.choice(["float64", "float32", "int8", "int16", "int32",
                                                                     "int64", "uint32", "float16"]),
                           r.choice([0, 0, -1, 300])])
        elif kind == "ds_shape" and datasets:
            recipe.append(["ds_shape", r.choice(datasets), r.choice(["half", "empty", "grow", "2d", "scalar"])])
        elif kind == "ds_set" and datasets:
            recipe.append(["ds_set", r.choice(datasets), round(r.random(), 3), r.choice(ELEM_KINDS)])
        elif kind == "truncate":
            recipe.append(["truncate", round(r.uniform(0.05, 0.99), 3)])
        else:
            recipe.append(["bytes", r.randrange(1 << 30), r.choice([1, 4, 32])])
        if recipe[-1][0] in ("ds_del", "truncate", "bytes"):
            break  # later mutations would look for what is gone
    return recipe


# ------------------------------------------------------------------ text mutations

TEXT_PIECES = ['"', '\\"', '\\', '\\u0000', '\\ud800', '\\udc00', '\xc0\xaf', '\xed\xa0\x80', '\xff', '\x00',
               '{', '}', '[', ']', ',', ':', 'null', 'true', '1e999', '-1', '4294967296', '9223372036854775807',
               '"id"', '"prompt"', '"tokens"', '"max_tokens"', '"stop"', '"top_p"', '\n', '"' * 300,
               'x' * 200, '\u00e9', '\U0001f600']


def mutate_text(r, base):
    """A few splices of TEXT_PIECES and byte edits into base (bytes)."""
    data = bytearray(base)
    for _ in range(r.choice([1, 2, 3, 5])):
        i = r.randrange(len(data) + 1)
        how = r.random()
        if how < 0.5:
            piece = r.choice(TEXT_PIECES).encode("latin-1" if r.random() < 0.5 else "utf-8", "surrogatepass")
            data[i:i] = piece
        elif how < 0.7 and data:
            del data[i:i + r.randrange(1, 16)]
        elif how < 0.85 and data:
            data[min(i, len(data) - 1)] = r.randrange(256)
        else:
            data[i:i] = data[max(0, i - 40):i] * r.choice([1, 10])
    return bytes(data)


# ------------------------------------------------------------------ the readers

class Fixture:
    """Base files every case starts from: a token file, a checkpoint, a weights file, requests."""

    def __init__(self, d):
        self.d = d
        text = os.path.join(d, "text.txt")
        with open(text, "w") as f:
            for name in ("MIT", "Apache-2.0", "BSD"):
                p = os.path.join("/usr/share/common-licenses", name)
                if os.path.exists(p):
                    f.write(open(p, errors="replace").read())
        self.tokens = os.path.join(d, "tokens.h5")
        rc, out, _ = run_partita(["prep", self.tokens, text], timeout=60)
        if rc != 0:
            raise SystemExit("cannot make the base token file:\n" + out[-2000:])
        run_dir = os.path.join(d, "base-run")
        deck = self.train_deck(os.path.join(d, "base"), self.tokens, run_dir)
        rc, out, _ = run_partita(["train", deck], timeout=120)
        if rc != 0:
            raise SystemExit("cannot train the base model under ASan:\n" + out[-3000:])
        self.ckpt = os.path.join(run_dir, "ckpt", "step-000002.h5")
        self.weights = os.path.join(run_dir, "final.h5")
        self.requests = os.path.join(d, "requests.jsonl")
        open(self.requests, "w").write(REQUESTS)
        # A gen.jsonl as a good run leaves it, for the rerun reader.
        out_dir = os.path.join(d, "base-gen")
        rc, out, _ = run_partita(["generate", self.gen_deck(os.path.join(d, "base"), self.weights, self.requests,
                                                            out_dir)], timeout=120)
        if rc != 0:
            raise SystemExit("cannot generate from the base model under ASan:\n" + out[-3000:])
        self.genjsonl = os.path.join(out_dir, "gen.jsonl")

    @staticmethod
    def train_deck(prefix, tokens, out):
        path = prefix + "-train.deck"
        open(path, "w").write(TINY_DECK.format(out=out, tokens=tokens))
        return path

    @staticmethod
    def gen_deck(prefix, weights, requests, out):
        path = prefix + "-gen.deck"
        open(path, "w").write(GEN_DECK.format(out=out, weights=weights, requests=requests))
        return path


def case_dir(fx, tag):
    d = os.path.join(fx.d, tag)
    os.makedirs(d, exist_ok=True)
    return d


def run_hdf5_case(fx, reader, recipe, tag, np_=None):
    """Copies the reader's base file, applies recipe, runs the reader; returns problems."""
    d = case_dir(fx, tag)
    base = {"ckpt": fx.ckpt, "resume": fx.ckpt, "weights": fx.weights, "tokens": fx.tokens}[reader]
    f = os.path.join(d, "input.h5")
    shutil.copy(base, f)
    try:
        mutate(f, recipe)
    except (KeyError, OSError, ValueError, TypeError) as e:  # the recipe does not apply to this base
        print(f"note: {tag}: the recipe does not apply to this base file ({type(e).__name__}: {e})")
        return [], None, ""
    out = os.path.join(d, "out")
    if reader == "ckpt":
        args = ["ckpt", "info", f]
    elif reader == "resume":
        args = ["train", fx.train_deck(os.path.join(d, "c"), fx.tokens, out), "--set", f"checkpoint.resume={f}",
                "--set", "train.steps=3", "--set", "checkpoint.interval=0"]
    elif reader == "tokens":
        args = ["train", fx.train_deck(os.path.join(d, "c"), f, out), "--set", "train.steps=1",
                "--set", "checkpoint.interval=0", "--set", "train.save_weights=false"]
    else:
        args = ["generate", fx.gen_deck(os.path.join(d, "c"), f, fx.requests, out)]
    rc, text, err = run_partita(args, np_=np_)
    bad = problems_of(rc, text, err)
    if reader == "weights" and rc == 0:
        bad += jsonl_problems(os.path.join(out, "gen.jsonl"))
    return bad, rc, text


def run_text_case(fx, reader, data, tag):
    """requests: data is the requests file; genjsonl: data is a gen.jsonl left by an earlier run."""
    d = case_dir(fx, tag)
    out = os.path.join(d, "out")
    os.makedirs(out, exist_ok=True)
    req = fx.requests
    if reader == "requests":
        req = os.path.join(d, "requests.jsonl")
        open(req, "wb").write(data)
    else:
        open(os.path.join(out, "gen.jsonl"), "wb").write(data)
    rc, text, err = run_partita(["generate", fx.gen_deck(os.path.join(d, "c"), fx.weights, req, out)])
    bad = problems_of(rc, text, err)
    if rc == 0:
        # A bad gen.jsonl left by an earlier run stays the user's: check what this run added.
        bad += jsonl_problems(os.path.join(out, "gen.jsonl"), data if reader == "genjsonl" else b"")
        g = os.path.join(out, "gen.h5")
        if os.path.exists(g):
            try:
                with h5py.File(g, "r") as f:
                    for name in ("requests/id", "requests/text"):
                        if name in f:
                            for s in f[name][...]:
                                (s if isinstance(s, bytes) else str(s).encode()).decode("utf-8")
            except (UnicodeDecodeError, OSError) as e:
                bad.append(f"gen.h5 strings unreadable as UTF-8 ({type(e).__name__})")
    return bad, rc, text


SET_KEYS = {
    "train": ["model.d_model", "model.heads", "model.layers", "model.seq_len", "model.vocab", "model.vocab_pad",
              "model.mlp_ratio", "train.micro_batch", "train.seq_len", "train.log_interval", "train.stop_at",
              "zero.stage", "zero.bucket_mb",
              "checkpoint.keep", "run.threads", "data.val_fraction", "optimizer.lr", "train.clip"],
    "generate": ["generate.kv_block", "generate.kv_blocks", "generate.max_batch", "generate.token_budget",
                 "generate.max_new_tokens", "generate.arrivals", "model.heads", "model.d_model", "model.seq_len",
                 "model.vocab", "run.threads"],
}
# (Keys whose large values only mean legitimately more work, grad_accum, batch, eval_batches, are left out.)
SET_VALUES = ["0", "-1", "1", "3", "7", "64", "4096", "8K", "1M", "2147483647", "2147483648", "4294967296",
              "9223372036854775807", "1e308", "nan", "poisson:0", "poisson:1e308", "poisson:-1", '""']


def run_sets_case(fx, spec, tag):
    """spec: {"command": "train"|"generate", "sets": ["k=v", ...]}."""
    d = case_dir(fx, tag)
    out = os.path.join(d, "out")
    if spec["command"] == "train":
        deck = fx.train_deck(os.path.join(d, "c"), fx.tokens, out)
        extra = ["--set", "train.steps=1", "--set", "checkpoint.interval=0", "--set", "train.save_weights=false"]
    else:
        deck = fx.gen_deck(os.path.join(d, "c"), fx.weights, fx.requests, out)
        extra = []
    args = [spec["command"], deck] + extra
    for s in spec["sets"]:
        args += ["--set", s]
    rc, text, err = run_partita(args, timeout=30)
    return problems_of(rc, text, err), rc, text


def random_case(fx, reader, r):
    """Draws one input for reader from r; returns (kind, input) with input a recipe, bytes or a spec."""
    if reader in ("ckpt", "resume", "weights", "tokens"):
        base = {"ckpt": fx.ckpt, "resume": fx.ckpt, "weights": fx.weights, "tokens": fx.tokens}[reader]
        return random_recipe(r, base)
    if reader == "requests":
        return mutate_text(r, REQUESTS.encode())
    if reader == "genjsonl":
        return mutate_text(r, open(fx.genjsonl, "rb").read())
    cmd = r.choice(["train", "generate"])
    return {"command": cmd, "sets": [f"{r.choice(SET_KEYS[cmd])}={r.choice(SET_VALUES)}"
                                     for _ in range(r.choice([1, 1, 2]))]}


def run_case(fx, reader, inp, tag, np_=None):
    if reader in ("ckpt", "resume", "weights", "tokens"):
        return run_hdf5_case(fx, reader, inp, tag, np_)
    if reader in ("requests", "genjsonl"):
        return run_text_case(fx, reader, inp, tag)
    return run_sets_case(fx, inp, tag)


def load_corpus():
    """(reader, name, input, np, expect) for every kept regression input. A kept JSON input may
    say "expect_refused": true (the reader must also refuse it, exit 1 or 2: bad inputs that were
    once silently accepted, issue 10) and "expect_message": a regular expression the output must
    match (say, the reason printed by the rank that met it)."""
    cases = []
    for reader in ("ckpt", "resume", "weights", "tokens", "requests", "genjsonl", "sets"):
        d = os.path.join(CORPUS, reader)
        if not os.path.isdir(d):
            continue
        for name in sorted(os.listdir(d)):
            path = os.path.join(d, name)
            if reader in ("requests", "genjsonl"):
                cases.append((reader, name, open(path, "rb").read(), None, {}))
            else:
                spec = json.load(open(path))
                inp = spec if reader == "sets" else spec["recipe"]
                cases.append((reader, name, inp, spec.get("np"), spec))
    return cases


def keep_hint(reader, inp, seed, np_):
    """Writes a failing random input where it can be copied into tests/corpus/<reader>/."""
    os.makedirs(OUT, exist_ok=True)
    if reader in ("requests", "genjsonl"):
        path = os.path.join(OUT, f"{reader}-seed{seed}.jsonl")
        open(path, "wb").write(inp)
    else:
        path = os.path.join(OUT, f"{reader}-seed{seed}.json")
        body = inp if reader == "sets" else {"recipe": inp}
        if np_:
            body["np"] = np_
        json.dump(body, open(path, "w"), indent=1)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=12, help="random inputs per reader")
    ap.add_argument("--long", action="store_true", help="`make fuzz`: 150 inputs per reader")
    ap.add_argument("--jobs", type=int, default=4, help="runs at once (they mostly wait)")
    ap.add_argument("--only", default="", help="comma-separated readers")
    a = ap.parse_args()
    if a.long:
        a.runs = 150
    if not os.access(ASAN_BIN, os.X_OK):
        check(False, "build-asan/partita exists", "run `make asan`")
        finish()
    t0 = time.time()
    d = tmpdir("fuzz")
    fx = Fixture(d)
    print(f"base files made under ASan in {time.time() - t0:.1f} s ({d})")
    readers = ["ckpt", "resume", "weights", "tokens", "requests", "genjsonl", "sets"]
    if a.only:
        readers = [x for x in readers if x in a.only.split(",")]
    per_reader = {"resume": max(2, a.runs // 3)}  # each resume trains a step: fewer of them

    jobs = []  # (label, reader, input, tag, np, seed or None, expect_refused)
    for i, (reader, name, inp, np_, refuse) in enumerate(load_corpus()):
        if reader in readers:
            jobs.append((f"corpus {reader}/{name}", reader, inp, f"corpus{i}", np_, None, refuse))
    for reader in readers:
        for k in range(per_reader.get(reader, a.runs)):
            seed = a.seed * 1000003 + k
            r = random.Random(f"{reader}:{seed}")
            inp = random_case(fx, reader, r)
            np_ = 2 if reader == "tokens" and k % 4 == 3 else None
            jobs.append((f"random {reader} seed {seed}" + (" np 2" if np_ else ""), reader, inp,
                         f"{reader}-{seed}", np_, seed, {}))

    counts = {}
    with concurrent.futures.ThreadPoolExecutor(a.jobs) as ex:
        futs = [(j, ex.submit(run_case, fx, j[1], j[2], j[3], j[4])) for j in jobs]
        for (label, reader, inp, tag, np_, seed, expect), fut in futs:
            bad, rc, text = fut.result()
            if expect.get("expect_refused") and rc == 0:
                bad.append("accepted (exit 0) an input it must refuse")
            if expect.get("expect_message") and not re.search(expect["expect_message"], text):
                bad.append(f"the output lacks /{expect['expect_message']}/")
            c = counts.setdefault(reader, [0, 0])
            c[0] += 1
            if bad:
                c[1] += 1
                shown = json.dumps(inp)[:300] if not isinstance(inp, bytes) else repr(inp[:300])
                where = keep_hint(reader, inp, seed, np_) if seed is not None else "tests/corpus"
                check(False, f"{label}: {'; '.join(bad)}", f"input {shown}; kept as {where}")
    for reader, (n, nbad) in counts.items():
        check(nbad == 0, f"{reader}: {n} inputs, {nbad} with a crash, sanitizer report, hang or silent failure")
    print(f"{len(jobs)} runs in {time.time() - t0:.1f} s")
    shutil.rmtree(d, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
