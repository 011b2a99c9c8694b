#!/usr/bin/python3
"""Input-deck tests against the real binary: `PARTITA check DECK [--set k=v ...]`.

A valid deck exits 0 and prints the resolved configuration (deck text) on stdout; an invalid one
exits 2 with "error: WHERE: ...\\n  hint: ..." on stderr. Each case writes its deck into a
temporary directory, runs the binary and checks the exit code and the message: file name, line
number, key name and, where one applies, the suggestion. One case runs under `mpiexec.mpich -np 2`
to check that the error is printed once, and one derives dp from the world size.

    PARTITA=build/partita python3 tests/test_deck.py     # PARTITA defaults to build/partita
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

PARTITA = os.environ.get("PARTITA", "build/partita")
MPIEXEC = shutil.which("mpiexec.mpich")
TMP = tempfile.mkdtemp(prefix="partita-deck-")
results = []  # (ok, name)


def write(name, text):
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def run(deck_path, sets=(), np=None):
    cmd = [PARTITA, "check", deck_path, "--deck-only"]   # the deck alone, not its files (issue 18)
    for s in sets:
        cmd += ["--set", s]
    if np:
        cmd = [MPIEXEC, "-np", str(np)] + cmd
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return 124, "", "timed out after 60 s: " + " ".join(cmd)
    except OSError as e:
        return 127, "", "cannot run %s: %s" % (cmd[0], e)
    return p.returncode, p.stdout, p.stderr


def report(ok, name, got=""):
    results.append((ok, name))
    if ok:
        print("ok   " + name)
    else:
        print("FAIL " + name + " ... got: " + got.rstrip().replace("\n", "\n     "))


def parse_resolved(text):
    """Deck text -> {"section.key": value-as-text}, comments dropped, quoted strings kept whole."""
    out, sec = {}, None
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        m = re.match(r"^\[\s*(\w+)\s*\]", s)
        if m:
            sec = m.group(1)
            continue
        if "=" not in s or sec is None:
            continue
        key, rhs = s.split("=", 1)
        rhs = rhs.strip()
        if rhs.startswith('"'):
            val, i = '"', 1
            while i < len(rhs) and rhs[i] != '"':
                if rhs[i] == "\\" and i + 1 < len(rhs):
                    val += rhs[i]
                    i += 1
                val += rhs[i]
                i += 1
            val += '"'
        else:
            val = rhs.split("#", 1)[0].strip()
        out[sec + "." + key.strip()] = val
    return out


def bad(name, text, expect, sets=(), line=None, deck="bad.deck"):
    """An invalid deck: exit 2, stderr starts with error: FILE:LINE and holds every expect."""
    path = write(deck, text) if text is not None else os.path.join(TMP, deck)
    rc, out, err = run(path, sets)
    want = list(expect)
    if line is not None:
        want.insert(0, "error: %s:%d: " % (path, line))
    missing = [w for w in want if w not in err]
    ok = rc == 2 and not missing and "  hint: " in err
    report(ok, name, "rc=%d, missing %r; stderr:\n%s" % (rc, missing, err))


def good(name, text, expect, sets=(), np=None):
    """A valid deck: exit 0, and the resolved config holds every "section.key": value in expect."""
    path = write("good.deck", text)
    rc, out, err = run(path, sets, np)
    cfg = parse_resolved(out)
    wrong = {k: cfg.get(k) for k, v in expect.items() if cfg.get(k) != v}
    ok = rc == 0 and not wrong
    report(ok, name, "rc=%d, wrong %r (want %r); stderr:\n%s" % (
        rc, wrong, {k: expect[k] for k in wrong}, err))
    return out


def main():
    if not os.access(PARTITA, os.X_OK):
        print("FAIL cannot run %s (set PARTITA to the binary)" % PARTITA)
        return 1

    # --- syntax and lookup errors --------------------------------------------------------------
    bad("unknown section suggests [train]", "# a comment\n\n[trian]\nsteps = 5\n",
        ["unknown section [trian]", "did you mean [train]?"], line=3)
    bad("unknown key suggests steps", "[train]\nstpes = 5\n",
        ["unknown key [train] stpes", "did you mean 'steps'?"], line=2)
    bad("unknown key from another section", "[run]\nname = x\n[train]\nlr = 1e-3\n",
        ["unknown key [train] lr", "did you mean [optimizer] lr?"], line=4)
    bad("unknown key, near miss in another section", "[train]\nwarmpu = 5\n",
        ["unknown key [train] warmpu", "did you mean [optimizer] warmup?"], line=2)
    bad("unknown key far from all lists the section", "[train]\nzzzzzzzz = 5\n",
        ["unknown key [train] zzzzzzzz", "keys in [train]:", "micro_batch"], line=2)
    bad("key before any section", "\nsteps = 5\n[train]\n",
        ["key 'steps' appears before any [section] header", "[train]"], line=2)
    bad("malformed line without '='", "[train]\nsteps = 1\nmicro_batch 5\n",
        ["[train] micro_batch", "malformed line", "key = value"], line=3)
    bad("malformed section header", "[train\nsteps = 5\n", ["malformed section header", "]"],
        line=1)
    bad("text after a section header", "[train] steps\n", ["malformed section header"], line=1)
    bad("dotted key in a deck", "[train]\ntrain.steps = 5\n",
        ["'train.steps' is not a key name", "[train] then steps"], line=2)
    bad("missing key before '='", "[train]\n = 5\n", ["missing the key"], line=2)
    bad("empty value", "[train]\nsteps =    # nothing here\n",
        ["[train] steps", "empty value", "an integer in [1, 1073741824]", "default (100)"], line=2)
    bad("empty string needs quotes", "[data]\ntrain =\n", ["[data] train", "empty value", '""'],
        line=2)
    bad("empty run name", '[run]\nname = ""\n', ["[run] name", "empty string"], line=2)

    # --- values --------------------------------------------------------------------------------
    bad("integer wrong type", "[train]\n\nsteps = abc\n",
        ["[train] steps", "expected an integer, got 'abc'"], line=3)
    bad("integer given as a float", "[train]\nsteps = 1.5\n",
        ["[train] steps", "expected an integer, got '1.5'"], line=2)
    bad("integer trailing garbage", "[train]\nsteps = 12abc\n",
        ["[train] steps", "got '12abc'", "trailing 'abc'"], line=2)
    bad("integer bad suffix", "[train]\nsteps = 4KB\n", ["[train] steps", "trailing 'B'"], line=2)
    bad("integer overflow with suffix", "[train]\nsteps = 9000000000000G\n",
        ["[train] steps", "integer overflow", "9000000000000G"], line=2)
    bad("integer overflow", "[run]\nseed = 99999999999999999999\n",
        ["[run] seed", "integer overflow"], line=2)
    bad("number wrong type", "[optimizer]\nlr = fast\n",
        ["[optimizer] lr", "expected a number, got 'fast'"], line=2)
    bad("number trailing garbage", "[optimizer]\nlr = 3e-4x\n",
        ["[optimizer] lr", "trailing 'x'"], line=2)
    bad("number not finite", "[optimizer]\nlr = inf\n", ["[optimizer] lr", "finite"], line=2)
    bad("quoted number", '[train]\nsteps = "5"\n', ["[train] steps", "without quotes"], line=2)
    bad("boolean wrong type", "[train]\nsave_weights = maybe\n",
        ["[train] save_weights", "expected a boolean", "got 'maybe'"], line=2)
    bad("integer out of range", "[train]\nsteps = 0\n",
        ["[train] steps", "0 is out of range", "an integer in [1, 1073741824]"], line=2)
    bad("integer out of range, both bounds", "[model]\nvocab = 20M\n",
        ["[model] vocab", "out of range", "[2, 10000000]"], line=2)
    bad("number out of range, half-open", "[optimizer]\nbeta1 = 1.0\n",
        ["[optimizer] beta1", "out of range", "a number in [0, 1)"], line=2)
    bad("number out of range, open", "[optimizer]\neps = 0\n",
        ["[optimizer] eps", "out of range", "a number in (0, 1]"], line=2)
    bad("val_fraction out of range", "[data]\nval_fraction = 0.7\n",
        ["[data] val_fraction", "[0, 0.5]"], line=2)
    bad("unknown enum value", "[run]\nbackend = gpu\n",
        ["[run] backend", "unknown value 'gpu'", "valid choices: auto, cpu, cuda"], line=2)
    bad("unknown enum value, near miss", "[optimizer]\ndecay = cosin\n",
        ["[optimizer] decay", "did you mean 'cosine'?", "cosine, linear, none"], line=2)
    bad("duplicate key names both lines", "[train]\nsteps = 5\n# again:\nsteps = 6\n",
        ["duplicate key [train] steps", "line 2", "line 4"], line=4)
    bad("string too long", '[run]\nname = "%s"\n' % ("x" * 600),
        ["[run] name", "600 characters is too long", "at most 511"], line=2)
    bad("unterminated string", '[run]\nname = "abc\n', ["[run] name", "closing '\"'"], line=2)
    bad("text after a string", '[run]\nname = "abc" def\n',
        ["[run] name", "unexpected text 'def'"], line=2)
    bad("missing deck file", None, ["cannot open the deck", "No such file or directory",
                                    os.path.join(TMP, "no-such.deck")], deck="no-such.deck")

    # --- --set ---------------------------------------------------------------------------------
    bad("--set unknown key suggests steps", "[train]\nsteps = 5\n",
        ["error: --set train.stpes=5: ", "unknown key train.stpes", "did you mean train.steps?"],
        sets=["train.stpes=5"])
    bad("--set unknown section", "", ["error: --set trian.steps=5: ", "unknown section 'trian'",
                                      "did you mean train.steps?"], sets=["trian.steps=5"])
    bad("--set key in another section", "", ["error: --set train.lr=1: ", "unknown key train.lr",
                                             "did you mean optimizer.lr?"], sets=["train.lr=1"])
    bad("--set wrong type", "", ["error: --set train.steps=abc: ", "train.steps",
                                 "expected an integer, got 'abc'"], sets=["train.steps=abc"])
    bad("--set out of range", "", ["error: --set optimizer.beta2=2: ", "optimizer.beta2",
                                   "out of range"], sets=["optimizer.beta2=2"])
    bad("--set without section", "", ["error: --set steps=5: ", "section.key=value",
                                      "--set train.steps"], sets=["steps=5"])
    bad("--set without '='", "", ["error: --set train.steps: ", "section.key=value"],
        sets=["train.steps"])

    # --- derivations and cross-checks ----------------------------------------------------------
    bad("dp given but does not match the world", "[parallel]\nsp = 1\ndp = 2\n",
        ["[parallel] dp = 2", "dp*sp*tp = 2*1*1 = 2 but the job has 1 rank"], line=3)
    bad("world not divisible by sp*tp", "[run]\nname = x\n[parallel]\nsp = 2\ntp = 2\n",
        ["[parallel] dp cannot be derived", "world size 1 is not divisible by sp*tp = 2*2 = 4",
         "line 5"], line=4)
    bad("train.seq_len above model.seq_len", "[model]\nseq_len = 32\n[train]\nseq_len = 64\n",
        ["[train] seq_len = 64", "larger than [model] seq_len = 32 (line 2)"], line=4)
    bad("heads must divide d_model", "[model]\nd_model = 64\nheads = 5\n",
        ["[model] heads = 5", "does not divide [model] d_model = 64 (line 2)", "64 % 5 = 4",
         "4 or 8"], line=3)
    bad("grad_accum not derivable from batch", "[train]\nmicro_batch = 4\nbatch = 10\n",
        ["[train] grad_accum cannot be derived", "[train] batch = 10",
         "micro_batch*dp = 4*1 = 4", "micro_batch: line 2"], line=3)
    bad("batch disagrees with its product",
        "[train]\nmicro_batch = 4\ngrad_accum = 2\nbatch = 16\n",
        ["[train] batch = 16", "micro_batch*grad_accum*dp = 4*2*1 = 8",
         "micro_batch: line 2", "grad_accum: line 3"], line=4)
    bad("min_lr above lr", "[optimizer]\nlr = 1e-3\nmin_lr = 1e-2\n",
        ["[optimizer] min_lr = 0.01", "larger than [optimizer] lr = 0.001 (line 2)"], line=3)
    bad("warmup above steps", "[train]\nsteps = 10\n[optimizer]\nwarmup = 20\n",
        ["[optimizer] warmup = 20", "larger than [train] steps = 10 (line 2)"], line=4)
    bad("cross-check blames a --set", "[train]\nsteps = 10\n",
        ["error: --set optimizer.warmup=50: ", "[optimizer] warmup = 50 (--set)"],
        sets=["optimizer.warmup=50"])

    # --- valid decks ---------------------------------------------------------------------------
    good("empty deck gives the defaults", "",
         {"run.name": '"run"', "run.out_dir": '"runs/run"', "run.seed": "1337",
          "run.backend": "auto", "model.vocab": "257", "model.seq_len": "64",
          "train.steps": "100", "train.seq_len": "64", "train.micro_batch": "4",
          "train.grad_accum": "1", "train.batch": "4", "train.precision": "auto", "comm.device_path": "auto",
          "train.save_weights": "true", "optimizer.lr": "0.0006", "optimizer.eps": "1e-08",
          "optimizer.decay": "cosine", "data.order": "sequential", "data.tokenizer": "byte",
          "parallel.dp": "1", "parallel.sp": "1"})
    good("integer suffixes are binary (4K = 4096, 1M = 1048576)",
         "[train]\nsteps = 4K\n[model]\nvocab = 1M\n[run]\nseed = 2g\n",
         {"train.steps": "4096", "model.vocab": "1048576", "run.seed": "2147483648"})
    good("syntax: whitespace, comments, quotes",
         '  # leading comment\n\t[ run ]   # trailing\n name="a # b"  # c\nout_dir = out/x # c\n'
         "[optimizer]\nlr=3e-4\nbeta2 = 0.999\ndecay = LINEAR\n[train]\nsave_weights = off\n"
         "precision = bf16\n",
         {"run.name": '"a # b"', "run.out_dir": '"out/x"', "optimizer.lr": "0.0003",
          "optimizer.beta2": "0.999", "optimizer.decay": "linear", "train.save_weights": "false",
          "train.precision": "bf16"})
    good("--set overrides the deck, last one wins",
         "[train]\nsteps = 5\n",
         {"train.steps": "7", "run.name": '"x y"', "run.out_dir": '"runs/x y"'},
         sets=["train.steps=6", "train.steps = 7", 'run.name="x y"'])
    out = good("--set is marked in the resolved deck", "", {"train.steps": "9"},
               sets=["train.steps=9"])
    ok = (re.search(r"^steps\s*=\s*9\s*# --set$", out, re.M) is not None and
          re.search(r"^micro_batch\s*=\s*4\s*# default$", out, re.M) is not None and
          re.search(r"^grad_accum\s*=\s*1\s*# derived$", out, re.M) is not None)
    report(ok, "resolved deck marks --set, default and derived",
           out if not ok else "")
    good("grad_accum derived from batch", "[train]\nmicro_batch = 2\nbatch = 8\n",
         {"train.grad_accum": "4", "train.batch": "8", "parallel.dp": "1"})
    good("batch derived from grad_accum", "[train]\nmicro_batch = 2\ngrad_accum = 3\n",
         {"train.batch": "6", "train.grad_accum": "3"})
    good("all three batch keys agreeing", "[train]\nmicro_batch = 2\ngrad_accum = 3\nbatch = 6\n",
         {"train.batch": "6"})
    good("train.seq_len derived, out_dir derived", "[model]\nseq_len = 128\n[run]\nname = tiny\n",
         {"train.seq_len": "128", "run.out_dir": '"runs/tiny"'})

    # --- round trip: resolved deck -> check -> the same resolved deck ---------------------------
    src = write("rt.deck", '[run]\nname = "q\\"uote\\\\d"\nbackend = cpu\npeak_gflops = 123.456\n'
                "[model]\nlayers = 3\nd_model = 96\nheads = 6\ninit_std = 0.015\n"
                "[data]\ntrain = data/x.h5\norder = shuffled\nval_fraction = 0.1\n"
                "[train]\nmicro_batch = 3\nbatch = 12\nclip = 0.5\n"
                "[optimizer]\nlr = 3e-4\nmin_lr = 3e-5\nwarmup = 7\n")
    rc1, out1, err1 = run(src, ["train.steps=50"])
    again = write("rt-resolved.deck", out1)
    rc2, out2, err2 = run(again)
    a, b = parse_resolved(out1), parse_resolved(out2)
    ok = rc1 == 0 and rc2 == 0 and a == b and len(a) >= 40 and a["run.name"] == '"q\\"uote\\\\d"'
    report(ok, "round trip of the resolved deck (%d keys)" % len(a),
           "rc=%d,%d diff %r\n%s%s" % (rc1, rc2, {k: (a.get(k), b.get(k)) for k in set(a) | set(b)
                                                  if a.get(k) != b.get(k)}, err1, err2))

    # --- under MPI -----------------------------------------------------------------------------
    if MPIEXEC:
        good("dp derived from the world size (-np 2)", "[train]\nmicro_batch = 3\n",
             {"parallel.dp": "2", "train.batch": "6", "train.grad_accum": "1"}, np=2)
        path = write("bad-mpi.deck", "[train]\nsteps = 5\n[parallel]\ndp = 4\n")
        rc, out, err = run(path, np=2)
        both = out + err
        msg = "error: %s:4: [parallel] dp = 4" % path
        n = both.count(msg)
        ok = rc != 0 and n == 1 and "dp*sp*tp = 4*1*1 = 4 but the job has 2 ranks" in both
        report(ok, "error printed once under mpiexec -np 2", "rc=%d, %d copies:\n%s" % (
            rc, n, both))
    else:
        print("skip mpiexec.mpich not found: MPI cases not run")

    shutil.rmtree(TMP, ignore_errors=True)
    npass = sum(1 for ok, _ in results if ok)
    nfail = len(results) - npass
    print("%d passed, %d failed" % (npass, nfail))
    return 1 if nfail else 0


if __name__ == "__main__":
    sys.exit(main())
