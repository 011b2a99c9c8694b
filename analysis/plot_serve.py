#!/usr/bin/python3
"""Latency-throughput curves from bench/loadgen.py files (one per arrival rate and mode).

  plot_serve.py [--sla-prompt-tok-s R] [--png OUT.png] MODE=FILE.h5 ...

Per file: throughput (finished requests/s over the span from the first send to the last
finish), mean and p95 end-to-end latency, p95 per-token latency (the gap between streamed
chunks), and FastGen's effective throughput: requests whose first token came within
prompt_len / R seconds and whose EMA (span 16) token rate stayed at or above 2, 4 and 6
tokens/s, per second. Prints one row per file; --png draws latency against throughput per mode.
"""
import argparse
import sys

import h5py
import numpy as np


def sla_ok(send, first, chunks, plen, prompt_tok_s, rate):
    if not (first - send <= plen / prompt_tok_s):
        return False
    alpha, ema = 2.0 / 17, None
    for g in np.diff(chunks):
        ema = g if ema is None else alpha * g + (1 - alpha) * ema
        if ema * rate > 1.0:
            return False
    return True


def summarize(path, prompt_tok_s):
    with h5py.File(path, "r") as f:
        r = {k: f["requests"][k][:] for k in f["requests"]}
        tt, tr = f["tokens"]["time"][:], f["tokens"]["request"][:]
        rate = float(f.attrs["rate"])
    ok = r["status"] == 200
    n = int(ok.sum())
    if n == 0:
        return dict(rate=rate, n=0)
    span = np.nanmax(r["finish"][ok]) - np.nanmin(r["send"])
    e2e = (r["finish"] - r["send"])[ok]
    gaps, eff = [], [0, 0, 0]
    for i in np.nonzero(ok)[0]:
        ch = tt[tr == i]
        gaps.extend(np.diff(ch))
        for k, q in enumerate((2, 4, 6)):
            eff[k] += sla_ok(r["send"][i], r["first_token"][i], ch, r["prompt_len"][i], prompt_tok_s, q)
    gaps = np.array(gaps) if gaps else np.array([np.nan])
    return dict(rate=rate, n=n, sent=len(ok), thr=n / span, e2e_mean=float(e2e.mean()),
                e2e_p95=float(np.percentile(e2e, 95)), ttft_p95=float(np.percentile((r["first_token"] - r["send"])[ok], 95)),
                tok_p95=float(np.nanpercentile(gaps, 95)), tok_mean=float(np.nanmean(gaps)),
                eff2=eff[0] / span, eff4=eff[1] / span, eff6=eff[2] / span)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sla-prompt-tok-s", type=float, default=512.0)
    ap.add_argument("--png")
    ap.add_argument("runs", nargs="+", help="MODE=FILE.h5")
    a = ap.parse_args()
    rows = []
    print(f"{'mode':<11}{'rate':>6}{'done':>6}{'req/s':>8}{'e2e mean':>10}{'e2e p95':>9}{'ttft p95':>9}"
          f"{'tok p95':>9}{'eff@2':>7}{'eff@4':>7}{'eff@6':>7}")
    for spec in a.runs:
        mode, _, path = spec.partition("=")
        s = summarize(path, a.sla_prompt_tok_s)
        rows.append((mode, s))
        if s["n"] == 0:
            print(f"{mode:<11}{s['rate']:>6.2f}     0")
            continue
        print(f"{mode:<11}{s['rate']:>6.2f}{s['n']:>6}{s['thr']:>8.3f}{s['e2e_mean']:>10.2f}{s['e2e_p95']:>9.2f}"
              f"{s['ttft_p95']:>9.2f}{s['tok_p95']:>9.3f}{s['eff2']:>7.3f}{s['eff4']:>7.3f}{s['eff6']:>7.3f}")
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    if a.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(1, 2, figsize=(10, 4))
        for mode in dict.fromkeys(m for m, _ in rows):
            pts = sorted((s["thr"], s["e2e_mean"], s["e2e_p95"]) for m, s in rows if m == mode and s["n"])
            if pts:
                x, y1, y2 = zip(*pts)
                ax[0].plot(x, y1, "o-", label=mode)
                ax[1].plot(x, y2, "o-", label=mode)
        for k, t in enumerate(("mean latency", "p95 latency")):
            ax[k].set_xlabel("throughput (requests/s)")
            ax[k].set_ylabel(f"{t} (s)")
            ax[k].legend()
        fig.tight_layout()
        fig.savefig(a.png, dpi=100)
        print(f"plot_serve: wrote {a.png}")


if __name__ == "__main__":
    main()
