#!/usr/bin/python3
"""`partita eval`: validation loss and perplexity of a weights file, through the
inference forward (model_forward_paged, matrices held as fp32, bf16 or int8) and
through the training forward (generate.naive = true), on a tiny model trained
here for a few hundred steps on the license texts.

fp32 inference equals the training forward: logits within 1e-5 (relative to the
largest), loss within 1e-5 relative; int8 and bf16 perplexity within 1% of fp32;
two ranks give one rank's loss; a missing weights file is an error with a hint."""
import os
import re

import numpy as np

from common import ROOT, check, finish, licenses_tokens, run, tmpdir

d = tmpdir("eval")
tok = licenses_tokens(d)
deck = os.path.join(ROOT, "inputs/gpt-tiny.deck")
run(["train", deck, "--set", f"data.train={tok}", "--set", f"run.out_dir={d}/tiny", "--set", "train.steps=250",
     "--set", "train.eval_interval=0"], np=1)
weights = os.path.join(d, "tiny/final.h5")


def evaluate(name, np_=1, *sets):
    args = ["eval", deck, os.path.join(d, f"{name}.f32"), "--set", f"data.train={tok}", "--set",
            f"generate.weights={weights}"]
    for s in sets:
        args += ["--set", s]
    p = run(args, np=np_)
    m = re.search(r"eval: loss ([0-9.]+) perplexity ([0-9.]+) \((\d+) tokens", p.stdout)
    check(m is not None, f"eval {name} prints its loss and perplexity", p.stdout.strip().splitlines()[-1])
    logits = np.fromfile(os.path.join(d, f"{name}.f32"), dtype=np.float32)
    return float(m.group(1)), float(m.group(2)), int(m.group(3)), logits


ref = evaluate("naive", 1, "generate.naive=true")
fp32 = evaluate("fp32", 1, "generate.weights_dtype=fp32")
bf16 = evaluate("bf16", 1, "generate.weights_dtype=bf16")
int8 = evaluate("int8", 1, "generate.weights_dtype=int8")
two = evaluate("fp32-np2", 2, "generate.weights_dtype=fp32")

scale = float(np.abs(ref[3]).max())
diff = float(np.abs(fp32[3] - ref[3]).max())
check(ref[3].size > 0 and ref[3].size == fp32[3].size, "both forwards dump the first row's logits", f"{ref[3].size} floats")
check(diff <= 1e-5 * max(1.0, scale), "fp32 inference logits equal the training forward's within 1e-5",
      f"max |diff| {diff:.3g}, max |logit| {scale:.3g}")
check(abs(fp32[0] - ref[0]) <= 1e-5 * ref[0], "fp32 inference loss equals the training forward's within 1e-5",
      f"{fp32[0]:.6f} vs {ref[0]:.6f}")
check(ref[0] < 3.5, "the trained model has learned something (loss below 3.5 nats)", f"{ref[0]:.4f}")
for name, r in (("int8", int8), ("bf16", bf16)):
    check(abs(r[1] / fp32[1] - 1) <= 0.01, f"{name} perplexity within 1% of fp32",
          f"{r[1]:.4f} vs {fp32[1]:.4f} ({100 * (r[1] / fp32[1] - 1):+.3f}%)")
    check(0 < float(np.abs(r[3] - fp32[3]).max()), f"{name} logits differ from fp32 (the weights really are {name})")
check(two[2] == fp32[2] and abs(two[0] - fp32[0]) <= 1e-6 * fp32[0], "two ranks give one rank's loss",
      f"{two[0]:.6f} vs {fp32[0]:.6f}, {two[2]} tokens")

p = run(["eval", deck, "--set", f"data.train={tok}", "--set", f"generate.weights={d}/missing.h5"], np=1, check_rc=False)
check(p.returncode == 2 and "[generate] weights" in p.stderr and "hint:" in p.stderr,
      "a missing weights file is refused, naming the key, with a hint", p.stderr.strip().splitlines()[0] if p.stderr else "")
finish()
