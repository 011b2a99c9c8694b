#!/usr/bin/python3
"""`partita generate` against hostile inputs and a hostile filesystem.

- Request lines: every class of bad JSON (numbers outside the grammar, duplicate keys, nesting,
  trailing text, sizes), of bad UTF-8 (raw and in \\u escapes), of out-of-range values; each is
  refused with its line number and the rest run.
- Outputs: ids full of quotes and control characters round-trip through gen.jsonl and gen.h5
  (this overflowed the JSONL buffer before); generated text is valid UTF-8 even when the byte
  tokenizer emits bytes that are not (replaced by U+FFFD).
- A malformed gen.jsonl from an earlier run (truncated lines, wrong types, NUL bytes) is reported
  line by line and ignored; the whole earlier outputs are still skipped.
- Output directories are created with their parents; a write error (/dev/full) is fatal, naming
  the path and the reason; the thread count follows [run] threads or the cores per rank.

The model is gpt-tiny after 2 training steps: near-uniform over 257 tokens, which is what makes
the sampled bytes invalid UTF-8.
"""
import json
import os
import time

import h5py

from common import ROOT, check, finish, licenses_tokens, run, tmpdir

d = tmpdir("requests")
tok = licenses_tokens(d)
run(["train", os.path.join(ROOT, "inputs/gpt-tiny.deck"), "--set", f"data.train={tok}", "--set",
     f"run.out_dir={d}/tiny", "--set", "train.steps=2", "--set", "optimizer.warmup=0"], np=1)
weights = os.path.join(d, "tiny/final.h5")
deck = os.path.join(ROOT, "inputs/generate-tiny.deck")


def generate(out, req, np_=1, sets=(), check_rc=True, timeout=300):
    args = ["generate", deck, "--set", f"run.out_dir={out}", "--set", f"parallel.tp={np_}",
            "--set", f"generate.weights={weights}", "--set", f"generate.requests={req}"]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_, check_rc=check_rc, timeout=timeout)
    if "Sanitizer" in p.stderr or "runtime error:" in p.stderr:   # an ASan/UBSan build (make asan)
        sanitizer.append(out)
        print(p.stderr[-4000:])
    return p


sanitizer = []


def read_h5(path):
    with h5py.File(path, "r") as f:
        g = f["requests"]
        ids = [x.decode("utf-8") if isinstance(x, bytes) else x for x in g["id"][:]]
        texts = [x if isinstance(x, bytes) else x.encode("utf-8") for x in g["text"][:]]
    return ids, texts


# ---------------------------------------------------------------------------------------------
# Bad request lines, each refused with its line number; good ones around them run.
quotes_id = '"' * 120 + "\\"
ctrl_id = "".join(chr(c) for c in range(1, 32)) * 4 + "\x7f"        # 125 bytes, 6x when escaped
good = [
    {"id": quotes_id, "prompt": "GNU", "max_tokens": 3},
    {"id": ctrl_id, "prompt": "GNU", "max_tokens": 3},
    {"id": "x" * 127, "prompt": "GNU", "max_tokens": 3},
    {"id": "utf8 ☕ é 𝄞", "prompt": "café ☕ 𝄞", "max_tokens": 3},
    {"id": 9007199254740992, "tokens": [1, 2, 3], "max_tokens": 2},
    {"id": "sampled", "prompt": "The", "max_tokens": 40, "temperature": 5.0, "seed": 3},
]
bad = [  # (raw line, fragment of the message)
    (json.dumps({"id": "x" * 128, "prompt": "a"}), "'id' must be 1 to 127 bytes, got 128"),
    (json.dumps({"id": "", "prompt": "a"}), "'id' must be 1 to 127 bytes, got 0"),
    ('{"id": 1e300, "prompt": "a"}', "a number 'id' must be an integer"),
    ('{"id": 1.5, "prompt": "a"}', "a number 'id' must be an integer"),
    ('{"id": "s1", "prompt": "a\\ud800"}', "invalid Unicode"),
    ('{"id": "s2", "prompt": "a\\ud800\\u0041"}', "invalid Unicode"),
    ('{"id": "s3", "prompt": "a\\udc00b"}', "invalid Unicode"),
    ('{"id": "s4", "prompt": "a\\u0000b"}', "\\u0000 is not allowed"),
    ('{"id": "s5", "prompt": "a\\u12"}', "invalid escape"),
    ('{"id": "s6", "prompt": "a\\x"}', "invalid escape"),
    ('{"id": "ctl", "prompt": "a\tb"}', "control character 0x9"),
    (b'{"id": "u1", "prompt": "a\xed\xa0\x80b"}', "unable to decode byte"),           # raw surrogate
    (b'{"id": "u2", "prompt": "a\xc0\xafb"}', "unable to decode byte"),               # overlong
    (b'{"id": "u3", "prompt": "a\xf8\x88\x80\x80\x80b"}', "unable to decode byte"),   # 5-byte form
    (b'{"id": "u4", "prompt": "a\xf4\x90\x80\x80"}', "unable to decode byte"),        # above U+10FFFF
    (b'{"id": "u5", "prompt": "a\xe2\x82"}', "unable to decode byte"),                # truncated
    (b'{"id": "nul", "prompt": "a\x00b"}', "a NUL byte in the line"),
    ('{"id": "n1", "prompt": "a", "max_tokens": 01}', "invalid token near '0'"),
    ('{"id": "n2", "prompt": "a", "max_tokens": +1}', "invalid token near '+'"),
    ('{"id": "n3", "prompt": "a", "max_tokens": .5}', "invalid token near '.'"),
    ('{"id": "n4", "prompt": "a", "max_tokens": 1.}', "invalid token near '1.'"),
    ('{"id": "n5", "prompt": "a", "max_tokens": 0x10}', "'}' expected near 'x'"),
    ('{"id": "n6", "prompt": "a", "max_tokens": NaN}', "invalid token near 'NaN'"),
    ('{"id": "n7", "prompt": "a", "max_tokens": Infinity}', "invalid token near 'Infinity'"),
    ('{"id": "n8", "prompt": "a", "max_tokens": 1e999}', "real number overflow"),
    ('{"id": "n9", "prompt": "a", "max_tokens": 1e}', "invalid token near '1e'"),
    ('{"id": "n10", "prompt": "a", "max_tokens": ' + "1" * 70 + "}", "too big integer"),
    ('{"id": "d1", "id": "d2", "prompt": "a"}', "duplicate object key"),
    ('{"id": "t1", "prompt": "a"} x', "end of file expected"),
    ('{"id": "t2", "prompt": "a"}{}', "end of file expected"),
    ('{"id": "t3", "tokens": [[1]]}', "'tokens' holds a nested array at index 0"),
    ('{"id": "t4", "prompt": {"a": 1}}', "'prompt' must be a non-empty string or an array of token ids"),
    ('[1, 2]', "expected an object ('{'), got an array"),
    ('{"id": "t5", "tokens": [1, "a"]}', "'tokens' holds a string at index 1"),
    ('{' + ", ".join(f'"k{i}": 1' for i in range(65)) + "}", "an object of 65 members (at most 64)"),
    ('{"id": "big", "tokens": [' + ",".join(["1"] * (1 << 20 | 1)) + "]}", "an array longer than 1048576 elements"),
    ('{"id": "huge", "prompt": "' + "a" * (5 << 20) + '"}', "a line longer than 4194304 bytes"),
    ('{"id": "v1", "prompt": "a", "max_tokens": 0}', "'max_tokens' must be an integer in [1, 16777216]"),
    ('{"id": "v2", "prompt": "a", "max_tokens": 4294967296}', "'max_tokens' must be an integer in [1, 16777216]"),
    ('{"id": "v3", "prompt": "a", "max_tokens": 2.5}', "'max_tokens' must be an integer"),
    ('{"id": "v4", "prompt": "a", "top_k": -2}', "'top_k' must be an integer in [0, 2147483647]"),
    ('{"id": "v5", "prompt": "a", "top_k": 1e12}', "'top_k' must be an integer in [0, 2147483647]"),
    ('{"id": "v6", "prompt": "a", "top_p": 0}', "'top_p' must be a number in (0, 1]"),
    ('{"id": "v7", "prompt": "a", "top_p": 1.5}', "'top_p' must be a number in (0, 1]"),
    ('{"id": "v8", "prompt": "a", "temperature": -1}', "'temperature' must be a number in [0, 100]"),
    ('{"id": "v9", "prompt": "a", "temperature": 1e300}', "'temperature' must be a number in [0, 100]"),
    ('{"id": "v10", "prompt": "a", "seed": -1}', "'seed' must be an integer in [0, 2^53]"),
    ('{"id": "v11", "prompt": "a", "seed": 1e300}', "'seed' must be an integer in [0, 2^53]"),
    ('{"id": "v12", "tokens": [257]}', "token 257 at index 0 is not an integer in [0, 257)"),
    ('{"id": "v13", "tokens": [-1]}', "token -1 at index 0"),
    ('{"id": "v14", "tokens": [1.5]}', "token 1.5 at index 0"),
    ('{"id": "v15", "tokens": [1e300]}', "at index 0 is not an integer"),
    ('{"id": "v16", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "'stop' must be a string or up to 4"),
    ('{"id": "v17", "prompt": "a", "stop": [1]}', "'stop' must be a string or up to 4"),
]
req = os.path.join(d, "req.jsonl")
expect = {}
with open(req, "wb") as f:
    n = 0
    for r in good:
        f.write((json.dumps(r) + "\n").encode()); n += 1
    for line, frag in bad:
        f.write((line if isinstance(line, bytes) else line.encode()) + b"\n"); n += 1
        expect[n] = frag
t0 = time.time()
p = generate(f"{d}/a/b/c", req, sets=["generate.max_batch=8", "generate.kv_blocks=64"], timeout=600)
dt = time.time() - t0
err = p.stderr
missing = [(ln, frag) for ln, frag in expect.items() if f"req.jsonl:{ln}: bad request, skipped: " not in err
           or frag not in [l for l in err.splitlines() if f"req.jsonl:{ln}: " in l][0]]
check(not missing, f"{len(bad)} bad request lines each refused with its line number and the reason",
      "missing: " + "; ".join(f"line {ln}: {frag}" for ln, frag in missing[:6]))
check(f"{len(good)} requests from" in p.stdout and f"{len(bad)} bad lines skipped" in p.stdout,
      "the good requests around them run", p.stdout.splitlines()[-1] if p.stdout else "")
check(os.path.isfile(f"{d}/a/b/c/gen.h5"), "generate creates run.out_dir with its parents (a/b/c)", f"{dt:.1f} s")

with open(f"{d}/a/b/c/gen.jsonl", "rb") as f:
    raw = f.read()
try:
    text = raw.decode("utf-8")
    lines = [json.loads(l) for l in text.splitlines()]
    ok = True
except (UnicodeDecodeError, ValueError) as e:
    ok, lines = False, []
    print("gen.jsonl:", e)
refused = [l for l in lines if l.get("status") == "refused"]
lines = [l for l in lines if l.get("status") == "done"]
check(ok and len(lines) == len(good), "gen.jsonl is valid UTF-8 JSONL, one done line per good request", f"{len(lines)} lines")
check(len(refused) >= 20 and all(l["reason"] for l in refused) and any(l["id"] == "v8" and "temperature" in l["reason"] for l in refused),
      "refused requests (those with an id) appear in gen.jsonl with their reason", f"{len(refused)} refused lines")
got_ids = [l["id"] for l in lines]
want_ids = [str(r["id"]) for r in good]
check(sorted(got_ids) == sorted(want_ids), "ids with quotes, backslashes, control characters, 127 bytes and UTF-8 round-trip through gen.jsonl")
ids, texts = read_h5(f"{d}/a/b/c/gen.h5")
check(sorted(ids) == sorted(want_ids), "... and through gen.h5")
valid = True
for t in texts:
    try:
        t.decode("utf-8")
    except UnicodeDecodeError:
        valid = False
check(valid and all("\x00" not in l["text"] for l in lines), "every output text in gen.h5 and gen.jsonl is valid UTF-8 without NUL")
sampled = [l for l in lines if l["id"] == "sampled"][0]
raw_bytes = bytes(t for t in sampled["tokens"] if t < 256)
try:
    raw_bytes.decode("utf-8")
    raw_valid = True
except UnicodeDecodeError:
    raw_valid = False
check(not raw_valid and "\ufffd" in sampled["text"],
      "sampled bytes that are not UTF-8 come out as U+FFFD", f"{len(raw_bytes)} bytes, {sampled['text'].count(chr(0xfffd))} replaced")

# ---------------------------------------------------------------------------------------------
# A malformed mirror from an earlier run: reported line by line, ignored; whole lines still skip.
out2 = f"{d}/rerun"
os.makedirs(out2)
req2 = os.path.join(d, "req2.jsonl")
with open(req2, "w") as f:
    for i in range(6):
        f.write(json.dumps({"id": f"r{i}", "prompt": "GNU", "max_tokens": 2}) + "\n")
whole = {"id": "r0", "status": "done", "text": "ok", "tokens": [1, 2], "prompt_tokens": [71, 78, 85],
         "arrival": 0, "first_token": 0, "finish": 0}
with open(f"{out2}/gen.jsonl", "wb") as f:
    f.write((json.dumps(whole) + "\n").encode())                                        # 1: whole
    f.write(b'{"id": "r1", "status": "done", "text": "x", "tokens": [1, 2], "prom\n')   # 2: truncated
    f.write(json.dumps(dict(whole, id="r2", tokens=["a", "b"])).encode() + b"\n")      # 3: crashed before
    f.write(json.dumps(dict(whole, id="r3", prompt_tokens="x")).encode() + b"\n")      # 4
    f.write(json.dumps(dict(whole, id="r4" * 100)).encode() + b"\n")                   # 5: id too long
    f.write(b'{"id": "r5", \x00 "status": "done"}\n')                                 # 6: NUL
    f.write(json.dumps(dict(whole, id="r5", tokens=[1.5])).encode() + b"\n")           # 7
    f.write(b"\n")                                                                     # 8: blank
    f.write(b"not json at all")                                                        # 9: no newline
p = generate(out2, req2, check_rc=False)
warned = [ln for ln in range(2, 10) if f"gen.jsonl:{ln}: not an earlier output, ignored" in p.stderr]
check(p.returncode == 0 and warned == [2, 3, 4, 5, 6, 7, 9],
      "a malformed gen.jsonl is reported line by line and ignored (no crash)", f"exit {p.returncode}, warned lines {warned}")
check("1 requests already done" in p.stdout and "5 requests from" in p.stdout,
      "the whole earlier output is still skipped; the others run again",
      [l for l in p.stdout.splitlines() if "requests" in l][:2])

# ---------------------------------------------------------------------------------------------
# Write errors, output parents, threads.
p = generate(f"{d}/full", req2, sets=["generate.jsonl=/dev/full"], check_rc=False)
check(p.returncode != 0 and "/dev/full" in p.stderr and "No space left on device" in p.stderr and "hint:" in p.stderr,
      "a gen.jsonl write error is fatal, naming the path and the reason",
      [l for l in p.stderr.splitlines() if "/dev/full" in l][:1])
p = generate(f"{d}/par", req2, sets=[f"generate.jsonl={d}/j/k/gen.jsonl", f"generate.out={d}/h/i/gen.h5"])
check(os.path.isfile(f"{d}/j/k/gen.jsonl") and os.path.isfile(f"{d}/h/i/gen.h5"),
      "generate creates the parents of generate.jsonl and generate.out")
cores = os.cpu_count()
p = generate(f"{d}/thr1", req2, sets=["run.threads=1"])
check(", 1 threads per rank" in p.stdout, "[run] threads = 1 is applied to generation")
t0 = time.time()
p = generate(f"{d}/tp2", req2, np_=2)
per = max(1, cores // 2)
check(f", {per} threads per rank" in p.stdout, f"tp = 2 on {cores} cores: {per} threads per rank by default",
      f"{time.time() - t0:.1f} s")
check(not sanitizer, "no AddressSanitizer or UBSan report in any run", ", ".join(sanitizer))
# A text prompt is checked against the model's vocabulary: a model of 100 tokens cannot take the
# byte 'z' (122); the request is refused naming the token, the rest run.
import numpy as np
small_tok = os.path.join(d, "small-vocab.h5")
with h5py.File(small_tok, "w") as f:
    t = f.create_dataset("tokens", data=(np.arange(20000) * 7 % 100).astype(np.uint16))
    t.attrs["vocab_size"] = np.int64(100)
    t.attrs["eot"] = np.int64(99)
    t.attrs["tokenizer"] = "byte"
small_sets = ["--set", "model.vocab=100", "--set", f"data.train={small_tok}"]
run(["train", os.path.join(ROOT, "inputs/gpt-tiny.deck"), "--set", f"run.out_dir={d}/small", "--set", "train.steps=1",
     "--set", "optimizer.warmup=0"] + small_sets, np=1)
with open(os.path.join(d, "vocab.jsonl"), "w") as f:
    f.write(json.dumps({"id": "low", "prompt": "ABC", "max_tokens": 2}) + "\n")
    f.write(json.dumps({"id": "high", "prompt": "ABz", "max_tokens": 2}) + "\n")
p = run(["generate", deck, "--set", f"run.out_dir={d}/vocab", "--set", f"generate.weights={d}/small/final.h5",
         "--set", f"generate.requests={d}/vocab.jsonl", "--set", "model.vocab=100"], np=1, check_rc=False)
ids, _ = read_h5(os.path.join(d, "vocab/gen.h5")) if p.returncode == 0 else ([], [])
check(p.returncode == 0 and "vocab.jsonl:2: bad request" in p.stderr and "token 122 at index 2" in p.stderr and
      "vocabulary of 100" in p.stderr and ids == ["low"],
      "a text prompt with a byte outside a 100-token vocabulary is refused naming it; the others run",
      (p.stderr.strip().splitlines() or [""])[-1])

finish()
