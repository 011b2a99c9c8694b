#!/usr/bin/python3
"""Load generator for `partita serve`: Poisson or closed-loop clients on loopback, streaming.

  loadgen.py --port P (--rate R | --clients N) --requests N --duration S
             --prompt-mean M --prompt-std S --out-mean M --out-std S [--vocab V] [--seed K] OUT.h5

Each request is a greedy streamed /v1/completions with a prompt of random token ids; lengths are
drawn from normal distributions (clipped to >= 1), like FastGen's benchmark. At most --requests
are sent and nothing is sent after --duration seconds (requests in flight are awaited, each
bounded by --timeout). OUT.h5 holds one row per request (/requests: send, first, finish times in
seconds since the start, prompt and output lengths, HTTP status) and the arrival time of every
streamed chunk (/tokens: time, request), for analysis/plot_serve.py.
"""
import argparse
import http.client
import json
import random
import threading
import time

import h5py
import numpy as np


def one_request(port, prompt, max_tokens, timeout, t0):
    rec = {"send": time.time() - t0, "first": np.nan, "finish": np.nan, "plen": len(prompt), "olen": 0, "status": 0,
           "chunks": []}
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/completions", body=json.dumps(
            {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
             "stream_options": {"include_usage": True}}), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        rec["status"] = r.status
        if r.status == 200:
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                now = time.time() - t0
                data = line[6:].strip()
                if data == b"[DONE]":
                    break
                o = json.loads(data)
                if np.isnan(rec["first"]):
                    rec["first"] = now   # the first event: text, or the end of an output whose text is empty
                if o.get("usage"):
                    rec["olen"] = o["usage"]["completion_tokens"]
                if o["choices"] and o["choices"][0]["finish_reason"] is None:
                    rec["chunks"].append(now)   # one chunk per generation step (its text may be empty)
            rec["finish"] = time.time() - t0
        else:
            r.read()
        c.close()
    except (OSError, http.client.HTTPException, ValueError):
        rec["status"] = -1
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=0.0, help="Poisson arrivals per second")
    ap.add_argument("--clients", type=int, default=0, help="closed loop: this many clients, each sends when its last ends")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--prompt-mean", type=float, default=600)
    ap.add_argument("--prompt-std", type=float, default=60)
    ap.add_argument("--out-mean", type=float, default=60)
    ap.add_argument("--out-std", type=float, default=6)
    ap.add_argument("--max-len", type=int, default=1024, help="prompt + output are clipped to this")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("out")
    a = ap.parse_args()
    if (a.rate > 0) == (a.clients > 0):
        ap.error("give one of --rate (Poisson) or --clients (closed loop)")
    rng = random.Random(a.seed)
    work = []
    for _ in range(a.requests):
        p = max(1, int(round(rng.gauss(a.prompt_mean, a.prompt_std))))
        o = max(1, int(round(rng.gauss(a.out_mean, a.out_std))))
        p = min(p, a.max_len - 1)
        o = min(o, a.max_len - p)
        work.append(([rng.randrange(a.vocab) for _ in range(p)], o))
    recs = [None] * len(work)
    lock = threading.Lock()
    nxt = [0]
    t0 = time.time()

    def run(i):
        recs[i] = one_request(a.port, work[i][0], work[i][1], a.timeout, t0)

    threads = []
    if a.rate > 0:
        t = 0.0
        for i in range(len(work)):
            t += rng.expovariate(a.rate)
            if t > a.duration:
                break
            delay = t0 + t - time.time()
            if delay > 0:
                time.sleep(delay)
            th = threading.Thread(target=run, args=(i,))
            th.start()
            threads.append(th)
    else:
        def client():
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= len(work) or time.time() - t0 > a.duration:
                    return
                run(i)
        threads = [threading.Thread(target=client) for _ in range(a.clients)]
        for th in threads:
            th.start()
    for th in threads:
        th.join()
    done = [r for r in recs if r is not None]
    with h5py.File(a.out, "w") as f:
        f.attrs["rate"] = a.rate
        f.attrs["clients"] = a.clients
        f.attrs["duration_s"] = time.time() - t0
        f.attrs["times"] = "seconds since the load generator started"
        g = f.create_group("requests")
        for k, key in (("send", "send"), ("first_token", "first"), ("finish", "finish")):
            g[k] = np.array([r[key] for r in done], dtype=np.float64)
        g["prompt_len"] = np.array([r["plen"] for r in done], dtype=np.int64)
        g["output_len"] = np.array([r["olen"] for r in done], dtype=np.int64)
        g["status"] = np.array([r["status"] for r in done], dtype=np.int64)
        t = f.create_group("tokens")
        t["time"] = np.array([x for r in done for x in r["chunks"]], dtype=np.float64)
        t["request"] = np.array([i for i, r in enumerate(done) for _ in r["chunks"]], dtype=np.int64)
    ok = sum(r["status"] == 200 for r in done)
    print(f"loadgen: {len(done)} requests sent, {ok} answered 200, in {time.time() - t0:.1f} s -> {a.out}")


if __name__ == "__main__":
    main()
