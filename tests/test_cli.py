#!/usr/bin/python3
"""Errors found after the deck parses still name the deck line and stop every
rank cleanly: missing token file, cuda without a cuda backend, bf16 on cpu,
a token outside the model vocabulary, an unknown command."""
import os

from common import check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("cli")
tok = licenses_tokens(d)
base = f"""[run]
out_dir = {d}/out
[model]
vocab = 257
layers = 1
d_model = 16
heads = 2
seq_len = 16
[data]
train = {tok}
[train]
steps = 2
"""


def err_case(what, deck_text, args, must, np=None):
    deck = write_deck(os.path.join(d, "case.deck"), deck_text)
    p = run(["train", deck] + args, np=np, check_rc=False)
    text = p.stderr + p.stdout
    ok = p.returncode != 0 and all(m in text for m in must)
    check(ok, what, f"rc {p.returncode}: " + (p.stderr.strip().splitlines() or ["(no stderr)"])[0][:140])
    return text


err_case("missing token file names the deck line and key",
         base.replace(f"train = {tok}", "train = nowhere.h5"), [], ["case.deck:10", "[data] train", "nowhere.h5", "hint:"])
t = err_case("backend = cuda without a cuda backend is a clear error",
             base + "[run]\n".replace("[run]", "") , ["--set", "run.backend=cuda"], ["--set", "cuda", "hint:"], np=2)
check(t.count("error:") == 1, "the error is printed once at np=2", f"{t.count('error:')} times")
check("no CUDA device" in t or "built without the cuda backend" in t,
      "the cuda error says why (no device here, or no cuda backend in the build)")
p = run(["train", write_deck(os.path.join(d, "ok.deck"), base), "--set", "train.steps=1"], np=1)
check("backend auto -> cpu" in p.stdout, "backend = auto falls back to cpu and says why",
      next((l for l in p.stdout.splitlines() if "backend" in l), ""))
err_case("precision = bf16 on cpu is refused", base, ["--set", "train.precision=bf16"], ["bf16", "cuda"])
err_case("model.vocab smaller than the token file's vocabulary names the key",
         base.replace("vocab = 257", "vocab = 100"), [], ["case.deck:4", "model.vocab", "257"])
p = run(["frobnicate"], check_rc=False)
check(p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr, "unknown command is refused with usage")
p = run(["prep", os.path.join(d, "x.h5"), "/nonexistent/text"], check_rc=False)
check(p.returncode != 0 and "/nonexistent/text" in p.stderr, "prep names an unreadable input")
p = run(["version"])
check("partita" in p.stdout, "version prints")
finish()
