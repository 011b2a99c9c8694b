#!/usr/bin/python3
"""`partita serve`: an OpenAI-compatible server, with a real HTTP client (http.client).

- completions, streamed (server-sent events ending in [DONE]) and not, equal `generate`'s outputs
  for the same requests (greedy and seeded sampling), with usage counts;
- every error status: 400 (bad JSON, a bad field named in `param`), 404 (path, model), 405, 413,
  429 (queue full), 503 (/health while draining); a body sent too slowly is dropped;
- a client that disconnects mid-stream frees its KV blocks (seen in /metrics) and is logged;
- SIGTERM: the running stream finishes, the process exits 0, the served log holds the requests;
- a tp = 2 server gives the tokens of tp = 1.
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

from common import MPIEXEC, PARTITA, ROOT, check, finish, licenses_tokens, run, tmpdir

d = tmpdir("serve")
tok = licenses_tokens(d)
run(["train", os.path.join(ROOT, "inputs/gpt-tiny.deck"), "--set", f"data.train={tok}", "--set",
     f"run.out_dir={d}/tiny", "--set", "train.steps=30", "--set", "train.eval_interval=0"], np=1)
weights = f"{d}/tiny/final.h5"
deck = os.path.join(ROOT, "inputs/generate-tiny.deck")
base = ["--set", f"generate.weights={weights}", "--set", "generate.kv_blocks=64"]

reqs = [{"id": "a", "prompt": "The GNU General Public License is", "max_tokens": 12},
        {"id": "b", "prompt": "Permission is hereby granted", "max_tokens": 9, "temperature": 0.9, "seed": 7},
        {"id": "c", "tokens": [84, 104, 101, 32], "max_tokens": 6, "temperature": 1.1, "top_k": 20, "seed": 3}]
with open(f"{d}/req.jsonl", "w") as f:
    for r in reqs:
        f.write(json.dumps(r) + "\n")
run(["generate", deck, "--set", f"run.out_dir={d}/gen", "--set", f"generate.requests={d}/req.jsonl"] + base, np=1)
want = {l["id"]: l for l in map(json.loads, open(f"{d}/gen/gen.jsonl"))}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Server:
    def __init__(self, name, np_=1, sets=()):
        self.port = free_port()
        args = ["serve", deck, "--set", f"run.out_dir={d}/{name}", "--set", f"serve.port={self.port}",
                "--set", f"parallel.tp={np_}"] + base
        for s in sets:
            args += ["--set", s]
        cmd = ([MPIEXEC, "-np", str(np_)] if np_ > 1 else []) + [PARTITA] + args
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.log = open(f"{d}/{name}.out", "w+")
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)
        atexit.register(lambda p=self.p: p.poll() is None and p.kill())   # a failed test leaves no server behind
        self.pid = None
        for _ in range(300):
            self.log.seek(0)
            m = re.search(r"listening on http://\S+ \(pid (\d+)\)", self.log.read())
            if m:
                self.pid = int(m.group(1))
                break
            if self.p.poll() is not None:
                break
            time.sleep(0.1)
        self.served = f"{d}/{name}/served.jsonl"

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
        m = re.search(rf"^{name} (\S+)$", text, re.M)
        return float(m.group(1)) if m else None

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
        rc = self.p.wait(timeout=60)
        self.log.seek(0)
        return rc, self.log.read()


def api_body(r, stream=False):
    b = {"model": "gpt-tiny-gen", "max_tokens": r["max_tokens"], "temperature": r.get("temperature", 0.0),
         "stream": stream}
    b["prompt"] = r["prompt"] if "prompt" in r else r["tokens"]
    for k in ("seed", "top_k"):
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


s = Server("one", sets=["serve.max_queue=0", "generate.max_batch=2", "serve.client_timeout_s=2",
                        "serve.max_body_bytes=4096", "serve.test_pass_delay_s=0.02"])
check(s.pid is not None, "the server starts and prints its address and pid", f"port {s.port}")

# Completions, not streamed and streamed, equal generate's outputs.
same = 0
for r in reqs:
    st, out = s.call("POST", "/v1/completions", api_body(r))
    o = json.loads(out)
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

# A body that trickles in slower than client_timeout_s: the server gives up on it after
# client_timeout_s (libmicrohttpd closes the connection; the 408 it queues is not delivered, a
# known limitation) and keeps serving.
sk = socket.create_connection(("127.0.0.1", s.port))
body = json.dumps({"prompt": "hello", "max_tokens": 2}).encode()
sk.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
t0, got, closed = time.time(), b"", False
sk.settimeout(0.15)
for ch in body:
    try:
        sk.sendall(bytes([ch]))
        x = sk.recv(4096)
        got, closed = x, True
        break
    except socket.timeout:
        pass
    except OSError:
        closed = True
        break
dt = time.time() - t0
sk.close()
st, _ = s.call("GET", "/health")
check(closed and not got.startswith(b"HTTP/1.1 200") and 1.5 < dt < 5 and st == 200,
      "a body sent slower than client_timeout_s is dropped after it; the server keeps serving", f"closed after {dt:.1f} s: {got[:30]!r}")

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
hc = s.conn()   # a connection opened before the signal (new ones are refused while draining)
hc.connect()
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
t.join()
rc, out = s.stop()
log = [json.loads(l) for l in open(s.served)]
check(hs == 503, "/health answers 503 while draining")
check(results and results[0][2][-1] == "[DONE]" and rc == 0 and "draining" in out,
      "SIGTERM: the running stream finishes and the server exits 0", f"exit {rc}")
cancelled = [l for l in log if l["status"] == "refused" and "HTTP 499" in l.get("reason", "")]
check(len(log) >= 10 and len(cancelled) == 1, "the served-requests log holds every request, the disconnected one as cancelled",
      f"{len(log)} lines, {len(cancelled)} cancelled")

# tp = 2 gives the tokens of tp = 1.
s2 = Server("tp2", np_=2)
same = 0
for r in reqs:
    st, out = s2.call("POST", "/v1/completions", api_body(r))
    same += st == 200 and json.loads(out)["choices"][0]["text"] == want[r["id"]]["text"]
rc, _ = s2.stop()
check(same == len(reqs) and rc == 0, "a tp = 2 server gives generate's outputs and stops on SIGTERM", f"{same} of {len(reqs)}")
finish()
