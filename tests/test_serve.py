#!/usr/bin/python3
"""`partita serve`: an OpenAI-compatible server, with a real HTTP client (http.client).

- completions, streamed (server-sent events ending in [DONE]) and not, equal `generate`'s outputs
  for the same requests (greedy and seeded sampling), with usage counts; GPT-2 BPE prompts (text
  with multi-byte characters) too;
- every error status: 400 (bad JSON, a bad field named in `param`), 404 (path, model), 405, 413,
  429 (queue full), 503 (/health and a completion while draining), 408 as a JSON body for a body
  that trickles, stops halfway or never starts;
- a client that stops reading mid-stream is cut off, its blocks freed (/metrics), logged as 408;
- a client that disconnects mid-stream frees its KV blocks (seen in /metrics) and is logged;
- SIGTERM: the running stream finishes, the process exits 0, the served log holds the requests;
- lazy KV blocks (preempting in a small pool, seen in /metrics) give the outputs of reservation;
- a tp = 2 server gives the tokens of tp = 1;
- an MoE model (top-2 over 4 experts) served at np = 2 with ep = 2 gives generate's greedy tokens and
  the ep = 1 server's, for requests batched together;
- ZeRO-Inference: a server streaming its layers from a stage file (weights_from = nvme, window = 2)
  gives the resident server's completions (greedy and sampled) and generate's tokens;
- a deck whose tp x ep is not the ranks is refused by serve with exit 2, naming [parallel].
"""
import atexit
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import h5py
import numpy as np

from common import moe_model, MPIEXEC, PARTITA, ROOT, check, finish, run, tmpdir, write_deck
from gen_weights import BPE_SETS, bpe_weights, have_bpe, tiny_weights
from moe_torch import MoeCfg, init_weights

d = tmpdir("serve")
weights = tiny_weights()   # trained once per build, shared with test_generate.py
deck = os.path.join(ROOT, "inputs/generate-tiny.deck")
base = ["--set", f"generate.weights={weights}"]
LONG_NAME = "m" * 511   # the longest [serve] model: ~700-byte SSE chunks, so 60 tokens overflow the socket buffers

reqs = [{"id": "a", "prompt": "The GNU General Public License is", "max_tokens": 12},
        {"id": "b", "prompt": "Permission is hereby granted", "max_tokens": 9, "temperature": 0.9, "seed": 7},
        {"id": "c", "tokens": [84, 104, 101, 32], "max_tokens": 6, "temperature": 1.1, "top_k": 20, "seed": 3}]
# greedy requests for the small pool (4 at once need 19 blocks: the lazy server preempts in 8)
pool_reqs = [{"id": f"p{i}", "prompt": "GNU " * (2 + i), "max_tokens": 24} for i in range(4)]
bpe_reqs = [{"id": "u1", "prompt": "Free software \u2014 \u00ablibre\u00bb, caf\u00e9 \U0001F600:", "max_tokens": 14},
            {"id": "u2", "prompt": "The GNU General Public License", "max_tokens": 20, "temperature": 1.0, "seed": 5},
            {"id": "u3", "prompt": "na\u00efve r\u00e9sum\u00e9 \u4f60\u597d", "max_tokens": 12, "temperature": 0.8,
             "top_p": 0.9, "seed": 9}]


def generate(name, requests, *sets, deck_path=deck, np_=1):
    with open(f"{d}/{name}.jsonl", "w") as f:
        for r in requests:
            f.write(json.dumps(r) + "\n")
    run(["generate", deck_path, "--set", f"run.out_dir={d}/{name}", "--set", f"generate.requests={d}/{name}.jsonl"] + list(sets), np=np_)
    return {l["id"]: l for l in map(json.loads, open(f"{d}/{name}/gen.jsonl"))}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    """A server started in the background; wait() until it listens (servers start side by side)."""
    def __init__(self, name, np_=1, sets=(), weights_sets=base, deck_path=deck, tp=None):
        self.port = free_port()
        args = ["serve", deck_path, "--set", f"run.out_dir={d}/{name}", "--set", f"serve.port={self.port}",
                "--set", f"parallel.tp={np_ if tp is None else tp}"] + list(weights_sets)
        for s in sets:
            args += ["--set", s]
        cmd = ([MPIEXEC, "-np", str(np_)] if np_ > 1 else []) + [PARTITA] + args
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.log = open(f"{d}/{name}.out", "w+")
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        atexit.register(lambda p=self.p: p.poll() is None and p.kill())   # a failed test leaves no server behind
        self.pid = None
        self.served = f"{d}/{name}/served.jsonl"

    def wait(self):
        for _ in range(1200):
            self.log.seek(0)
            m = re.search(r"listening on http://\S+ \(pid (\d+)\)", self.log.read())
            if m:
                self.pid = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        return self

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def call(self, method, path, body=None, raw=None):
        c = self.conn()
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        c.request(method, path, body=data, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.read().decode()
        c.close()
        return r.status, out

    def metric(self, name):
        _, text = self.call("GET", "/metrics")
        m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def until(self, name, cond, seconds=30):
        """Polls a metric until cond holds (robust under load); returns its last value."""
        end = time.time() + seconds
        while True:
            v = self.metric(name)
            if (v is not None and cond(v)) or time.time() > end:
                return v
            time.sleep(0.05)

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        rc = self.p.wait(timeout=60)
        self.log.seek(0)
        return rc, self.log.read()


def api_body(r, stream=False, model="gpt-tiny-gen"):
    b = {"max_tokens": r["max_tokens"], "temperature": r.get("temperature", 0.0), "stream": stream}
    if model:
        b["model"] = model
    b["prompt"] = r["prompt"] if "prompt" in r else r["tokens"]
    for k in ("seed", "top_k", "top_p"):
        if k in r:
            b[k] = r[k]
    return b


def stream_events(s, body):
    c = s.conn()
    c.request("POST", "/v1/completions", body=json.dumps(body))
    resp = c.getresponse()
    events = []
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data: "):
            events.append(line[6:])
    c.close()
    return resp.status, resp.getheader("Content-Type"), events


# Every server starts at once (each loads its weights meanwhile); the generate runs give the references.
s = Server("one", sets=["generate.kv_blocks=64", "serve.max_queue=0", "generate.max_batch=2", "serve.client_timeout_s=2",
                        "serve.max_body_bytes=4096", "serve.test_pass_delay_s=0.02"])
slow = Server("slow", sets=["serve.client_timeout_s=1", "serve.sndbuf_bytes=1024", f"serve.model={LONG_NAME}",
                            "serve.test_pass_delay_s=0.1"])
pools = {kv: Server(f"pool-{kv}", sets=["generate.kv_blocks=8", f"generate.kv_alloc={kv}", "serve.test_pass_delay_s=0.02"])
         for kv in ("lazy", "reserve")}
bpe = Server("bpe", sets=BPE_SETS, weights_sets=["--set", f"generate.weights={bpe_weights()}"]) if have_bpe() else None
want = generate("gen", reqs + pool_reqs, *base)
want_bpe = generate("gen-bpe", bpe_reqs, "--set", f"generate.weights={bpe_weights()}",
                    *[x for b in BPE_SETS for x in ("--set", b)]) if bpe else {}
s.wait()
check(s.pid is not None, "the server starts and prints its address and pid", f"port {s.port}")

# Completions, not streamed and streamed, equal generate's outputs.
same = 0
resident = {}   # the resident server's completions, for the streamed server below
for r in reqs:
    st, out = s.call("POST", "/v1/completions", api_body(r))
    o = json.loads(out)
    resident[r["id"]] = (st, o["choices"][0]["text"], o["usage"]["completion_tokens"])
    w = want[r["id"]]
    ok = st == 200 and o["choices"][0]["text"] == w["text"] and o["usage"]["completion_tokens"] == len(w["tokens"]) \
        and o["usage"]["prompt_tokens"] == len(w["prompt_tokens"]) and o["object"] == "text_completion"
    same += ok
check(same == len(reqs), "non-streamed completions equal generate's text and token counts", f"{same} of {len(reqs)}")
same = 0
for r in reqs:
    st, ctype, ev = stream_events(s, api_body(r, stream=True))
    chunks = [json.loads(e) for e in ev if e != "[DONE]"]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    ok = st == 200 and ctype.startswith("text/event-stream") and ev[-1] == "[DONE]" and text == want[r["id"]]["text"] \
        and chunks[-1]["choices"][0]["finish_reason"] == "length"
    same += ok
check(same == len(reqs), "streamed completions (SSE, ending in [DONE]) equal generate's text", f"{same} of {len(reqs)}")
st, ctype, ev = stream_events(s, dict(api_body(reqs[0], stream=True), stream_options={"include_usage": True}))
check(json.loads(ev[-2]).get("usage", {}).get("completion_tokens") == 12, "stream_options.include_usage adds usage to the last chunk")

# Errors.
st, out = s.call("POST", "/v1/completions", raw="{not json")
check(st == 400 and "error" in json.loads(out), "400 for a body that is not JSON", out[:90])
st, out = s.call("POST", "/v1/completions", {"prompt": "x", "temperature": -1})
check(st == 400 and json.loads(out)["error"]["param"] == "temperature", "400 names the bad field", out[:90])
st, out = s.call("POST", "/v1/completions", {"prompt": "x", "n": 2})
check(st == 400 and json.loads(out)["error"]["param"] == "n", "400 for n != 1")
st, out = s.call("POST", "/v1/completions", {"prompt": "x" * 60, "max_tokens": 10})
check(st == 400 and json.loads(out)["error"]["param"] == "max_tokens", "400 for prompt + max_tokens beyond the model's positions")
st, out = s.call("POST", "/v1/completions", {"prompt": "x", "model": "other"})
check(st == 404 and json.loads(out)["error"]["param"] == "model", "404 for another model's name")
st, out = s.call("GET", "/v2/nothing")
check(st == 404, "404 for an unknown path")
st, out = s.call("GET", "/v1/completions")
check(st == 405, "405 for GET /v1/completions")
st, out = s.call("POST", "/v1/completions", raw=json.dumps({"prompt": "x" * 5000}))
check(st == 413, "413 for a body over max_body_bytes", out[:90])
st, out = s.call("POST", "/v1/completions", {"prompt": "x", "max_tokens": 1, "user": "u", "metadata": {"k": [1]}})
check(st == 200, "unknown keys (user, metadata) are ignored")
st, out = s.call("GET", "/v1/models")
check(st == 200 and json.loads(out)["data"][0]["id"] == "gpt-tiny-gen", "GET /v1/models names the model")

# 429: max_batch 2 + max_queue 0 = two requests at once; a third is turned away.
results = []
def long_stream():
    results.append(stream_events(s, {"prompt": "GNU", "max_tokens": 60, "temperature": 0, "stream": True}))
ths = [threading.Thread(target=long_stream) for _ in range(2)]
for t in ths:
    t.start()
for _ in range(100):   # until both run
    if s.metric("partita_requests_running") == 2:
        break
    time.sleep(0.02)
st, out = s.call("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2})
check(st == 429 and json.loads(out)["error"]["type"] == "RateLimitError", "429 when the queue is full", out[:80])
for t in ths:
    t.join()
check(all(r[0] == 200 and r[2][-1] == "[DONE]" for r in results), "the two running streams complete")

# A client that disconnects mid-stream frees its blocks.
c = s.conn()
c.request("POST", "/v1/completions", body=json.dumps({"prompt": "GNU GNU", "max_tokens": 50, "temperature": 0, "stream": True}))
resp = c.getresponse()
resp.fp.readline()
time.sleep(0.1)
used = s.metric("partita_kv_blocks_used")
running = s.metric("partita_requests_running")
c.sock.shutdown(socket.SHUT_RDWR)
c.close()
time.sleep(1.0)
after = s.metric("partita_kv_blocks_used")
check(used and used > 0 and running == 1 and after == 0 and s.metric("partita_requests_running") == 0,
      "a client that disconnects mid-stream frees its KV blocks (/metrics)", f"blocks {used} -> {after}")
_, text = s.call("GET", "/metrics")
check("partita_time_to_first_token_seconds_bucket" in text and "partita_inter_token_latency_seconds_count" in text
      and "partita_tokens_per_second" in text, "/metrics has TTFT and inter-token histograms and tokens/s")

# SIGTERM: the running stream finishes, /health says draining, exit 0, the log has every request.
results = []
t = threading.Thread(target=lambda: results.append(stream_events(s, {"prompt": "GNU", "max_tokens": 60, "temperature": 0, "stream": True})))
t.start()
time.sleep(0.3)
hc = s.conn()   # a connection opened (and accepted: one request answered) before the signal; new ones are refused while draining
hc.request("GET", "/health")
hc.getresponse().read()
os.kill(s.pid, signal.SIGTERM)
hs = None
for _ in range(20):
    time.sleep(0.05)
    hc.request("GET", "/health")
    resp = hc.getresponse()
    resp.read()
    hs = resp.status
    if hs == 503:
        break
hc.request("POST", "/v1/completions", body=json.dumps({"prompt": "x", "max_tokens": 2}))
resp = hc.getresponse()
drain_st, drain_body = resp.status, resp.read().decode()
hc.close()
t.join()
rc, out = s.stop()
log = [json.loads(l) for l in open(s.served)]
check(hs == 503, "/health answers 503 while draining")
check(drain_st == 503 and json.loads(drain_body)["error"]["type"] == "ServiceUnavailableError",
      "a completion request while draining is answered 503 (a connection opened before SIGTERM)", drain_body[:80])
check(results and results[0][2][-1] == "[DONE]" and rc == 0 and "draining" in out,
      "SIGTERM: the running stream finishes and the server exits 0", f"exit {rc}")
cancelled = [l for l in log if l["status"] == "refused" and "HTTP 499" in l.get("reason", "")]
check(len(log) >= 10 and len(cancelled) == 1, "the served-requests log holds every request, the disconnected one as cancelled",
      f"{len(log)} lines, {len(cancelled)} cancelled")

# 408: a body that trickles, stops halfway, or never starts gets a 408 JSON body when client_timeout_s
# (1 s here) has passed since its headers; the server keeps serving.
slow.wait()
check(slow.pid is not None, "the second server starts", f"port {slow.port}")


def late_body(sent, trickle):
    """Sends the headers and `sent` body bytes (then one byte per 0.15 s when trickle); returns seconds and the reply."""
    body = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()
    sk = socket.create_connection(("127.0.0.1", slow.port))
    t0 = time.time()
    sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:sent])
    got = b""
    sk.settimeout(0.15)
    for ch in body[sent:] if trickle else b"":
        try:
            sk.sendall(bytes([ch]))
            x = sk.recv(4096)
            got += x
            if not x:
                break
        except socket.timeout:
            pass
        except OSError:
            break
    sk.settimeout(10)
    try:
        while True:
            x = sk.recv(4096)
            if not x:
                break
            got += x
    except OSError:
        pass
    sk.close()
    return time.time() - t0, got.decode(errors="replace")


for what, sent, trickle in (("trickles in (a byte every 0.15 s)", 0, True), ("stops halfway", 20, False),
                            ("never starts (headers only)", 0, False)):
    dt, got = late_body(sent, trickle)
    head, _, body = got.partition("\r\n\r\n")
    try:
        err = json.loads(body)["error"]
    except ValueError:
        err = {}
    check(head.startswith("HTTP/1.1 408") and err.get("code") == 408 and "client_timeout_s" in err.get("message", "")
          and 0.9 < dt < 4, f"a body that {what} gets a 408 JSON body after client_timeout_s", f"{dt:.2f} s: {got[:40]!r}")
st, _ = slow.call("GET", "/health")
check(st == 200 and slow.metric('partita_requests_total{status="408"}') == 3, "the server keeps serving and counts the 408s")

# A client that stops reading mid-stream: once the socket buffers are full (a small sndbuf_bytes and
# receive buffer, ~700-byte chunks) nothing moves; after 2 x client_timeout_s the connection is cut,
# the request cancelled, its KV blocks freed, and the log says 408.
body = json.dumps({"prompt": "GNU", "max_tokens": 60, "temperature": 0, "stream": True}).encode()
sk = socket.socket()
sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
sk.connect(("127.0.0.1", slow.port))
sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
t0 = time.time()
running = slow.until("partita_requests_running", lambda v: v == 1)
used = slow.until("partita_kv_blocks_used", lambda v: v > 0)
after = slow.until("partita_requests_running", lambda v: v == 0, seconds=60)
dt = time.time() - t0
blocks = slow.metric("partita_kv_blocks_used")
made = slow.metric("partita_generation_tokens_total")
sk.close()
rc, out = slow.stop()
log = [json.loads(l) for l in open(slow.served)]
cut = [l for l in log if "HTTP 408" in l.get("reason", "")]
check(running == 1 and used > 0 and after == 0 and blocks == 0 and made < 60,
      "a client that stops reading mid-stream is cut off and its KV blocks freed (/metrics)",
      f"blocks {used:.0f} -> {blocks:.0f} after {dt:.1f} s, {made:.0f} of 60 tokens made")
check(len(cut) == 1 and cut[0]["status"] == "refused" and rc == 0, "the served log records it as cancelled with HTTP 408",
      cut[0]["reason"] if cut else out[-200:])

def post_at_once(srv, requests, model):
    """POSTs every request at once, each on a thread of its own; returns id -> (status, body)."""
    res = {}

    def one(r):
        res[r["id"]] = srv.call("POST", "/v1/completions", api_body(r, model=model))

    ths = [threading.Thread(target=one, args=(r,)) for r in requests]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return res


# Lazy KV blocks vs reservation in a pool of 8 blocks: four greedy requests at once; lazy preempts
# (seen in /metrics), reserve never does, and both give generate's outputs.
outs = {}
for kv, ps in pools.items():
    ps.wait()
    res = post_at_once(ps, pool_reqs, None)
    outs[kv] = {k: json.loads(v[1])["choices"][0]["text"] if v[0] == 200 else None for k, v in res.items()}
    outs[kv + "-pre"] = ps.metric("partita_preemptions_total")
    ps.stop()
same = sum(outs["lazy"][r["id"]] == outs["reserve"][r["id"]] == want[r["id"]]["text"] for r in pool_reqs)
check(same == len(pool_reqs), "lazy and reserved KV blocks give generate's greedy outputs through the server",
      f"{same} of {len(pool_reqs)}")
check(outs["lazy-pre"] > 0 and outs["reserve-pre"] == 0, "the lazy server preempts in the small pool (/metrics), reserve never",
      f"{outs['lazy-pre']:.0f} vs {outs['reserve-pre']:.0f} preemptions")

# GPT-2 BPE prompts (multi-byte characters, an emoji): the server's text equals generate's, whole
# and streamed (the chunks' UTF-8 held across tokens).
if bpe:
    bpe.wait()
    same = 0
    for r in bpe_reqs:
        st, out = bpe.call("POST", "/v1/completions", api_body(r))
        o = json.loads(out)
        w = want_bpe[r["id"]]
        st2, _, ev = stream_events(bpe, api_body(r, stream=True))
        streamed = "".join(json.loads(e)["choices"][0]["text"] for e in ev if e != "[DONE]")
        same += st == 200 and st2 == 200 and o["choices"][0]["text"] == w["text"] == streamed \
            and o["usage"]["prompt_tokens"] == len(w["prompt_tokens"]) and o["usage"]["completion_tokens"] == len(w["tokens"])
    bpe.stop()
    check(same == len(bpe_reqs), "gpt2 BPE: the server's texts and token counts equal generate's, streamed and not", f"{same} of {len(bpe_reqs)}")
else:
    print("skip the gpt2 server checks: no data/gpt2 (make deps)")

# tp = 2 gives the tokens of tp = 1.
s2 = Server("tp2", np_=2, sets=["generate.kv_blocks=64"]).wait()
same = 0
for r in reqs:
    st, out = s2.call("POST", "/v1/completions", api_body(r))
    same += st == 200 and json.loads(out)["choices"][0]["text"] == want[r["id"]]["text"]
rc, _ = s2.stop()
check(same == len(reqs) and rc == 0, "a tp = 2 server gives generate's outputs and stops on SIGTERM", f"{same} of {len(reqs)}")

# An MoE model (top-2 over 4 experts on layers 1 and 3, random weights as tests/test_moe_infer.py's) served
# with experts split over 2 ranks (ep = 2) and on one rank; ZeRO-Inference: the tiny model streamed from
# a stage file through a window of 2 layers. Servers start together; generate gives the references.
MOE_CFG = MoeCfg(layers=4, heads=4, vocab=257, experts=4, top_k=2, eval_capacity_factor=0.5, min_capacity=1)


def moe_weights(path):
    """A Partita weights file of moe_torch.init_weights (std 0.3: varied greedy tokens)."""
    w = init_weights(MOE_CFG, 32, 32, vocab_pad=320, seed=1, std=0.3)
    with h5py.File(path, "w") as f:
        for k, v in (("vocab_size", 257), ("padded_vocab_size", 320), ("n_layer", 4), ("n_embd", 32), ("n_head", 4),
                     ("n_positions", 32), ("mlp_hidden", 128), ("step", 0)):
            f.attrs[k] = np.int64(v)
        g = f.create_group("params")
        for name, a in w.items():
            g.create_dataset(name, data=np.asarray(a, dtype=np.float32))
    return path


moe_deck = write_deck(f"{d}/moe.deck", f"""[run]
name = moe-tiny
{moe_model(32)}[moe]
experts = 4
top_k = 2
eval_capacity_factor = 0.5
min_capacity = 1
[generate]
weights = {moe_weights(f"{d}/moe.h5")}
token_budget = 8
kv_block = 4
kv_blocks = 64
max_batch = 4
""")
# greedy; the first prompt is longer than the token budget (chunked beside the others' decodes)
moe_reqs = [{"id": "m0", "prompt": "The GNU General Public", "max_tokens": 8},
            {"id": "m1", "prompt": "Free", "max_tokens": 10},
            {"id": "m2", "prompt": "Permission is", "max_tokens": 7},
            {"id": "m3", "prompt": "a", "max_tokens": 9}]
stage_path = f"{d}/tiny.stage"
run(["stage", deck, "--out", stage_path, "--from", weights])
moe_srv = {ep: Server(f"moe-ep{ep}", np_=ep, tp=1, sets=[f"parallel.ep={ep}"], weights_sets=(), deck_path=moe_deck)
           for ep in (1, 2)}
nvme = Server("nvme", sets=["generate.kv_blocks=64", "generate.weights_from=nvme", f"generate.stage={stage_path}",
                            "generate.window=2"])
want_moe = generate("gen-moe", moe_reqs, deck_path=moe_deck)


def served_tokens(srv, requests, model):
    """Sends the requests at once (batched in the server's passes); returns id -> (status, text, tokens) after
    SIGTERM (the tokens from the served log, by completion id) and the exit status."""
    res = post_at_once(srv, requests, model)
    rc, srv.out = srv.stop()
    logged = {l["id"]: l.get("tokens") for l in map(json.loads, open(srv.served))}
    outs = {}
    for k, (st, body) in res.items():
        o = json.loads(body) if st == 200 else {}
        outs[k] = (st, o.get("choices", [{}])[0].get("text"), logged.get(o.get("id")))
    return outs, rc


got_moe = {}
for ep, srv in moe_srv.items():
    srv.wait()
    srv.log.seek(0)
    check(srv.pid is not None and f"tp = 1 x ep = {ep}," in srv.log.read(), f"the MoE server at np = {ep} starts and says "
          f"tp = 1 x ep = {ep}", f"port {srv.port}")
    got_moe[ep], rc = served_tokens(srv, moe_reqs, "moe-tiny")
    same = sum(got_moe[ep][r["id"]] == (200, want_moe[r["id"]]["text"], want_moe[r["id"]]["tokens"]) for r in moe_reqs)
    check(same == len(moe_reqs) and rc == 0, f"MoE (top-2 of 4 experts) served at ep = {ep}: greedy completions equal "
          f"generate's text and tokens, the server stops on SIGTERM",
          f"{same} of {len(moe_reqs)}; m0 {got_moe[ep]['m0'][2]} vs {want_moe['m0']['tokens']}; exit {rc}")
check(all(len(want_moe[r["id"]]["tokens"]) == r["max_tokens"] for r in moe_reqs)
      and len({t for r in moe_reqs for t in want_moe[r["id"]]["tokens"]}) > 3, "the MoE reference made varied tokens, "
      "max_tokens per request")
check(got_moe[1] == got_moe[2], "the ep = 2 server gives the ep = 1 server's completions",
      f"{sum(got_moe[1][k] == got_moe[2][k] for k in got_moe[1])} of {len(moe_reqs)}")

# ZeRO-Inference: the streamed server's completions (greedy and seeded sampling) equal the resident
# server's (the first server above), and its tokens generate's.
nvme.wait()
check(nvme.pid is not None, "the server streaming from nvme (window = 2) starts", f"port {nvme.port}")
got_nvme, rc = served_tokens(nvme, reqs, "gpt-tiny-gen")
same = sum(got_nvme[r["id"]][:2] == resident[r["id"]][:2] and got_nvme[r["id"]][2] == want[r["id"]]["tokens"]
           and resident[r["id"]][2] == len(want[r["id"]]["tokens"]) for r in reqs)
m = re.search(r"streamed weights: ([0-9.]+) MiB read per pass, (\d+) passes, ([0-9.]+) MiB read in all \(window 2\)", nvme.out)
check("tiny.stage streamed from nvme (window 2)" in nvme.out and m and float(m.group(1)) > 0 and int(m.group(2)) > 0
      and float(m.group(3)) >= float(m.group(1)), "the nvme server says it streams its layers, and read them",
      m.group(0) if m else nvme.out[-300:])
check(same == len(reqs) and rc == 0, "weights_from = nvme (a stage file, window = 2): the streamed server's completions "
      "(greedy and sampled) equal the resident server's, its tokens generate's", f"{same} of {len(reqs)}; exit {rc}")

# tp x ep must be the ranks: serve refuses the deck at once (exit 2, naming [parallel]), as generate does.
t0 = time.time()
p = run(["serve", moe_deck, "--set", "parallel.tp=2", "--set", "parallel.ep=2", "--set", f"run.out_dir={d}/bad-ep"],
        np=2, check_rc=False, timeout=60)
err = p.stderr.strip().splitlines()
check(p.returncode == 2 and "[parallel] tp x ep = 2 x 2 = 4" in p.stderr and "hint:" in p.stderr
      and time.time() - t0 < 30, "serve with tp x ep = 4 on 2 ranks is refused with exit 2, naming [parallel]",
      f"exit {p.returncode} after {time.time() - t0:.1f} s: {err[0] if err else '(no message)'}")
finish()
