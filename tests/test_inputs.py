#!/usr/bin/python3
"""Hostile deck values: every numeric key at huge, zero and negative values, derived sizes that
overflow, and deck lines with NUL bytes, control characters, invalid UTF-8 or too many bytes.

Each case writes a one-key deck and runs `partita check` under a timeout. A value is either
accepted (exit 0; only keys whose range allows it, e.g. 0 = auto) or refused with exit 2, once,
naming the deck file, the line and the key. Huge values (2^31, 2^32, 2^63-1, 1e300) must be refused
for every key except the seeds (any 64-bit integer is a seed). Nothing may hang or crash: each run
is given 10 s and must finish in a few seconds (a singleton MPI start included).

The keys come from the binary itself (`partita check` prints every key), so a key added later is
covered without editing this file.

    PARTITA=build/partita /usr/bin/python3 tests/test_inputs.py
"""
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import PARTITA, ROOT, check, finish, tmpdir

TMP = tmpdir("inputs")
sanitizer = []   # cases whose run printed an AddressSanitizer or UBSan report
ANY_INT64 = {"run.seed", "generate.arrival_seed"}  # seeds: every 64-bit integer is one
LIMIT_S = 5.0


def run_check(deck_bytes, name, sets=()):
    path = os.path.join(TMP, name)
    with open(path, "wb") as f:
        f.write(deck_bytes)
    cmd = [PARTITA, "check", path, "--deck-only"] + [a for s in sets for a in ("--set", s)]
    t0 = time.time()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=10)
        rc, out, err = p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        rc, out, err = 124, "", "timed out after 10 s"
    if "Sanitizer" in err or "runtime error:" in err:   # an ASan/UBSan build (make asan)
        sanitizer.append(name)
    return rc, out, err, time.time() - t0, path


def resolved_keys():
    rc, out, err, _, _ = run_check(b"[run]\nname = probe\n", "probe.deck")
    if not check(rc == 0, "the default deck resolves", err):
        finish()
    keys, sec = [], None
    for line in out.splitlines():
        s = line.split("#")[0].strip() if not line.strip().startswith('"') else line.strip()
        if s.startswith("[") and s.endswith("]"):
            sec = s[1:-1]
        elif "=" in s and sec:
            k, v = (x.strip() for x in s.split("=", 1))
            keys.append((sec, k, v))
    return keys


def key_type(sec, key, value):
    """'int', 'float' or None (strings, booleans, enums), probed with a fractional value."""
    try:
        float(value)
    except ValueError:
        return None   # a string, boolean or enum
    rc, _, err, _, _ = run_check(f"[{sec}]\n{key} = 0.5\n".encode(), f"type-{sec}-{key}.deck")
    return "int" if "expected an integer" in err else "float"


def one_case(sec, key, kind, value, must_refuse):
    name = f"{sec}-{key}-{value}".replace("/", "_")
    rc, out, err, dt, path = run_check(f"[{sec}]\n{key} = {value}\n".encode(), name + ".deck")
    names_it = f"{path}:2:" in err and (f"[{sec}] {key}" in err or key in err) and err.count("error:") == 1
    ok = rc in (0, 2) and dt < LIMIT_S and (rc == 0 or names_it) and not (must_refuse and rc != 2)
    return ok, f"{sec}.{key} = {value}: exit {rc} in {dt:.2f} s", err.strip().splitlines()[0] if err.strip() else ""


def bounds():
    keys = resolved_keys()
    typed = [(s, k, key_type(s, k, v)) for s, k, v in keys]
    ints = [(s, k) for s, k, t in typed if t == "int"]
    floats = [(s, k) for s, k, t in typed if t == "float"]
    check(len(ints) >= 30 and len(floats) >= 10, "found the numeric keys", f"{len(ints)} integer, {len(floats)} number keys")
    cases = []
    for s, k in ints:
        huge = f"{s}.{k}" not in ANY_INT64
        for v in ("2147483648", "4294967296", "9223372036854775807"):
            cases.append((s, k, "int", v, huge))
        cases.append((s, k, "int", "9223372036854775808", True))   # does not fit 64 bits
        for v in ("0", "-1", "-9223372036854775808"):
            cases.append((s, k, "int", v, False))
    for s, k in floats:
        for v in ("1e300", "1e308"):
            cases.append((s, k, "float", v, True))
        cases.append((s, k, "float", "-1", True))   # no number key takes a negative value
        cases.append((s, k, "float", "0", False))
    with ThreadPoolExecutor(max_workers=2) as ex:
        results = list(ex.map(lambda c: one_case(*c), cases))
    bad = [(what, msg) for ok, what, msg in results if not ok]
    slowest = max(float(w.split(" in ")[1].split()[0]) for _, w, _ in results)
    check(not bad, f"{len(cases)} hostile values of {len(ints) + len(floats)} numeric keys: each refused "
          "naming file:line and the key, or accepted within range; none hangs or crashes",
          f"slowest {slowest:.2f} s; failures: " + "; ".join(f"{w} -> {m}" for w, m in bad[:8]))
    for ok, what, msg in results:
        if "model.d_model = 4294967296" in what or "generate.kv_block = 4294967296" in what:
            print("     " + what + ": " + msg)


def derived():
    """Products of in-range values that overflow what the program can hold."""
    cases = [
        ("[train]\nmicro_batch = 1048576\n[model]\nseq_len = 16777216\n", "token rows micro_batch*seq_len", 2),
        ("[generate]\nkv_blocks = 16777216\nkv_block = 65536\n", "KV cache kv_blocks*kv_block*layers*2*d_model", 2),
        ("[generate]\ntoken_budget = 1048576\n[model]\nseq_len = 16777216\n", "pass message", 2),
        ("[model]\nlayers = 1024\nd_model = 65536\nheads = 1024\nmlp_ratio = 64\n", "layer weights", 2),
        ("[train]\nsteps = 1073741824\nmicro_batch = 1048576\ngrad_accum = 1048576\n", "tokens of the run", 2),
        ("[train]\nbatch = 1099511627776\n", "grad_accum = batch/(micro_batch*dp)", 2),
        ("[model]\nd_model = 4096\nheads = 8\n", "head size d_model/heads = 4096/8 = 512 is larger than 256", 3),
        ("[model]\nd_model = 1024\nheads = 2\n[run]\nbackend = cuda\n", "the most the cuda attention runs", 3),
        ("[model]\nd_model = 65536\nheads = 1000\n", "does not divide", 3),
    ]
    for i, (text, frag, line) in enumerate(cases):
        rc, _, err, dt, path = run_check(text.encode(), f"derived-{i}.deck")
        check(rc == 2 and frag in err and f"{path}:{line}:" in err and "hint:" in err and dt < LIMIT_S,
              f"derived size refused: {frag}", f"exit {rc} in {dt:.2f} s: {err.strip().splitlines()[0] if err else ''}")


def lines():
    """A deck line is UTF-8 text without control characters, of bounded length."""
    cases = [
        (b"[run]\nname = ab\x00cd\n", "a NUL byte at column 10"),
        (b"[run]\nname = \"ab\x00cd\"\n", "a NUL byte at column 11"),
        (b"[run]\nname = ab\x01cd\n", "control character 0x01"),
        (b"[run]\nname = ab\x1bcd\n", "control character 0x1B"),
        (b"[run]\nname = ab\x7fcd\n", "control character 0x7F"),
        (b"[run]\nname = ab\xed\xa0\x80cd\n", "invalid UTF-8"),        # a surrogate
        (b"[run]\nname = ab\xc0\xafcd\n", "invalid UTF-8"),            # overlong '/'
        (b"[run]\nname = ab\xf4\x90\x80\x80\n", "invalid UTF-8"),      # above U+10FFFF
        (b"[run]\nname = ab\xe2\x82\n", "invalid UTF-8"),              # truncated
        (b"[run]\n# caf\xe9 in latin-1\n", "invalid UTF-8"),
        (b"[run]\nname = " + b"a" * 5000 + b"\n", "a line longer than 4095 bytes"),
        (b"[run]\nname = " + b"a" * 600 + b"\n", "a string of 600 characters is too long"),
        (b"[run]\nname = \"" + b"\\\"" * 600 + b"\"\n", "too long, expected at most 511"),
    ]
    for i, (text, frag) in enumerate(cases):
        rc, _, err, dt, path = run_check(text, f"line-{i}.deck")
        check(rc == 2 and frag in err and f"{path}:2:" in err and "hint:" in err,
              f"deck line refused: {frag}", f"exit {rc}: {err.strip().splitlines()[0] if err else ''}")
    rc, out, err, _, _ = run_check(b"[run]\r\nname = \"tab\there\"\r\n", "crlf.deck")
    check(rc == 0 and '"tab\there"' in out, "CRLF line ends and a tab inside a value are accepted", err.strip())
    rc, out, err, _, _ = run_check("[run]\nname = café ☕\n".encode(), "utf8.deck")
    check(rc == 0 and "café ☕" in out, "valid UTF-8 values are kept", err.strip())
    for arg, frag in (("run.name=a\x02b", "control character 0x02"), ("run.name=a\udcc0\udc80b", "invalid UTF-8")):
        path = os.path.join(TMP, "ok.deck")
        with open(path, "w") as f:
            f.write("[run]\nname = ok\n")
        argb = arg.encode("utf-8", "surrogateescape")
        p = subprocess.run([PARTITA.encode(), b"check", path.encode(), b"--deck-only", b"--set", argb], cwd=ROOT, capture_output=True, timeout=10)
        err = p.stderr.decode("utf-8", "replace")
        check(p.returncode == 2 and frag in err and "--set argument 1" in err, f"--set value refused: {frag}", err.strip().splitlines()[0] if err else "")


if __name__ == "__main__":
    only = sys.argv[1:] or ["bounds", "derived", "lines"]
    for name in only:
        globals()[name]()
    check(not sanitizer, "no AddressSanitizer or UBSan report in any run", ", ".join(sanitizer[:10]))
    finish()
