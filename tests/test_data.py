#!/usr/bin/python3
"""`partita prep` writes every byte of every file in name order with an
end-of-text token after each; the shuffled order is deterministic by seed."""
import os

import h5py
import numpy as np

from common import check, finish, run, tmpdir, write_deck

d = tmpdir("data")
src = os.path.join(d, "text")
os.makedirs(os.path.join(src, "sub"))
docs = {"b.txt": b"second file\n", "a.txt": "first \xe9 file\n".encode(), "sub/c.txt": b"third" * 400}
for name, data in docs.items():
    with open(os.path.join(src, name), "wb") as f:
        f.write(data)
tok = os.path.join(d, "tok.h5")
run(["prep", tok, src])
with h5py.File(tok, "r") as f:
    t = np.array(f["tokens"])
    attrs = dict(f["tokens"].attrs)
expect = []
for name in ["a.txt", "b.txt", "sub/c.txt"]:
    expect += list(docs[name]) + [256]
check(t.dtype == np.uint16, "tokens stored as uint16", str(t.dtype))
check(list(t) == expect, "tokens are the bytes of each file in name order, EOT after each", f"{len(t)} tokens")
check(attrs["vocab_size"] == 257 and attrs["eot"] == 256, "vocab_size and eot attributes")
tk = attrs["tokenizer"]
check((tk.decode() if isinstance(tk, bytes) else tk) == "byte", "tokenizer attribute names the byte tokenizer")

deck = write_deck(os.path.join(d, "d.deck"), f"""[model]
vocab = 257
layers = 1
d_model = 16
heads = 2
seq_len = 8
[data]
train = {tok}
order = shuffled
val_fraction = 0.2
[train]
steps = 30
micro_batch = 4
log_interval = 10
save_weights = false
""")


def losses(name, seed):
    out = os.path.join(d, name)
    run(["train", deck, "--set", f"run.out_dir={out}", "--set", f"run.seed={seed}"], np=1)
    with h5py.File(os.path.join(out, "run.h5"), "r") as f:
        return np.array(f["metrics/loss"])


a, b, c = losses("s1", 1), losses("s1again", 1), losses("s2", 2)
check(np.array_equal(a, b), "same seed, same deck: bit-identical losses")
check(not np.array_equal(a, c), "another seed gives another run")
finish()
