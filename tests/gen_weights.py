"""Trained tiny weights for the generation tests (test_generate.py, test_serve.py).

Training dominates those tests on a loaded 2-core machine, and their checks need a model that
produces varied text, not a good one. Each model is trained once per build of partita and kept
under build/test-cache/ (the key holds the binary's size and mtime, the deck and the training
arguments), so a suite run trains it once for every test that uses it; a rebuilt binary trains
afresh. A lock file serialises tests that start at once.
"""
import fcntl
import glob
import hashlib
import os
import shutil

from common import PARTITA, ROOT, run, tmpdir

DECK = os.path.join(ROOT, "inputs/gpt-tiny.deck")
BPE_DIR = os.path.join(ROOT, "data/gpt2")
# GPT-2 BPE: a vocabulary of 50257 makes the logits the cost, so few sequences a step.
BPE_SETS = ["data.tokenizer=gpt2", f"data.tokenizer_dir={BPE_DIR}", "model.vocab=50257"]


def _trained(name, sets, prep, source):
    st = os.stat(PARTITA)
    with open(DECK) as f:
        deck = f.read()
    key = hashlib.sha1(repr((sets, prep, source, st.st_size, st.st_mtime_ns, deck)).encode()).hexdigest()[:16]
    name += "-" + os.path.basename(os.path.dirname(os.path.abspath(PARTITA)))   # build/ and build-asan/ apart
    cache = os.path.join(ROOT, "build", "test-cache")
    os.makedirs(cache, exist_ok=True)
    final = os.path.join(cache, f"{name}@{key}")
    with open(os.path.join(cache, f"{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(final, "final.h5")):
            print(f"weights: {name} reused from {final}", flush=True)
        else:
            for old in glob.glob(os.path.join(cache, f"{name}@*")):   # an earlier build's
                shutil.rmtree(old, ignore_errors=True)
            d = tmpdir("weights-" + name)
            tok = os.path.join(d, "tokens.h5")
            run(["prep"] + prep + [tok, source])
            args = ["train", DECK, "--set", f"data.train={tok}", "--set", f"run.out_dir={d}/out", "--set", "train.eval_interval=0"]
            for s in sets:
                args += ["--set", s]
            run(args, np=1)
            shutil.move(f"{d}/out", final + ".part")
            os.rename(final + ".part", final)
            print(f"weights: {name} trained into {final}", flush=True)
    return os.path.join(final, "final.h5")


def tiny_weights():
    """gpt-tiny (byte tokenizer) after 30 steps of 8 sequences: its samples are varied, its greedy outputs mostly spaces."""
    return _trained("gpt-tiny", ["train.steps=30", "train.batch=8"], [], "/usr/share/common-licenses")


def have_bpe():
    return os.path.exists(os.path.join(BPE_DIR, "encoder.json"))


def bpe_weights():
    """gpt-tiny with GPT-2's BPE tokenizer (data/gpt2, `make deps`) after 8 steps of 2 sequences."""
    return _trained("gpt2-tiny", BPE_SETS + ["train.steps=8", "train.micro_batch=2", "train.batch=2", "optimizer.warmup=0"],
                    ["--tokenizer", "gpt2", "--tokenizer-dir", BPE_DIR], "/usr/share/common-licenses/GPL-3")
