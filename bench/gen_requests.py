#!/usr/bin/python3
"""Writes the request files of the generation benchmark.
usage: gen_requests.py DIR  -> DIR/decode1.jsonl decode8.jsonl prefill.jsonl poisson.jsonl"""
import json
import os
import random
import sys

d = sys.argv[1]
os.makedirs(d, exist_ok=True)
text = open("/usr/share/common-licenses/GPL-3", "rb").read().decode("latin-1")


def write(name, reqs):
    with open(os.path.join(d, name), "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")


write("decode1.jsonl", [{"id": "d0", "prompt": text[:16], "max_tokens": 64}])
write("decode8.jsonl", [{"id": f"d{i}", "prompt": text[100 * i:100 * i + 16], "max_tokens": 64} for i in range(8)])
write("prefill.jsonl", [{"id": "p0", "prompt": text[:512], "max_tokens": 1}])
rng = random.Random(1)
reqs = []
for i in range(24):
    plen = rng.randint(32, 384)
    start = rng.randint(0, len(text) - plen)
    reqs.append({"id": f"q{i}", "prompt": text[start:start + plen], "max_tokens": rng.randint(24, 48)})
write("poisson.jsonl", reqs)
