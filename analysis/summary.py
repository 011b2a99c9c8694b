#!/usr/bin/python3
"""summary.py: the configuration and headline figures of one training run.

    analysis/summary.py RUN.h5            the deck (compact) and a table of figures
    analysis/summary.py RUN.h5 --deck     the whole resolved deck instead of the compact one
    analysis/summary.py RUN.h5 --json     the figures as JSON (null where unknown)

Throughput and MFU are medians over the steps after the first (the first step
pays for warm-up). Comm bytes are what rank 0 sent per step, median over steps.
Figures an older run.h5 lacks show as "?".
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partita_h5 import COMM_OPS, MIB, deck_compact, read_run, run_label, run_name  # noqa: E402


def _f(x):
    """A float, or None when missing or not finite."""
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _i(x):
    return int(x) if _f(x) is not None else None


def _median(a):
    a = a[np.isfinite(a)] if a is not None else None
    return float(np.median(a)) if a is not None and a.size else None


def headline(run):
    """The headline figures as a flat dict (JSON-ready: None where unknown)."""
    m, a, n = run["m"], run["attrs"], run["n"]
    col = m.get
    after_first = (lambda x: x[1:] if x is not None and x.size > 1 else x)
    h = {"path": os.path.abspath(run["path"]), "label": run_label(run), "name": run_name(run),
         "machine": a.get("machine"), "rows": n,
         "steps": _i(col("step")[-1]) if n else 0}
    loss = col("loss")
    h["final_loss"] = _f(loss[-1]) if loss is not None and n else None
    val = col("val_loss")
    h["best_val_loss"] = h["best_val_step"] = None
    if val is not None and np.isfinite(val).any():
        k = int(np.nanargmin(val))
        h["best_val_loss"], h["best_val_step"] = _f(val[k]), _i(col("step")[k])
    h["final_val_loss"] = _f(val[np.isfinite(val)][-1]) if h["best_val_loss"] is not None else None
    h["val_loss_initial"] = _f(a.get("val_loss_initial"))
    h["median_tokens_per_s"] = _median(after_first(col("tokens_per_s")))
    mfu = _median(after_first(col("mfu")))
    h["median_mfu_percent"] = mfu * 100.0 if mfu is not None else None
    h["median_step_time_s"] = _median(after_first(col("step_time")))
    h["sgemm_peak_gflops"] = _f(a.get("sgemm_peak_gflops"))
    h["ranks"] = _i(a.get("ranks"))
    if h["ranks"] is None and run["rss"] is not None:
        h["ranks"] = int(run["rss"].shape[1])
    h["threads_per_rank"] = _i(a.get("threads_per_rank"))
    h["zero_stage"] = _i(a.get("zero_stage"))
    h["nparams"] = _i(a.get("nparams"))
    rss = run["rss"]
    h["peak_rss_mib_max"] = h["peak_rss_mib_max_rank"] = h["peak_rss_mib_min"] = None
    if rss is not None and rss.size and np.isfinite(rss).any():
        per_rank = np.nanmax(rss, axis=0)
        h["peak_rss_mib_max"] = _f(np.nanmax(per_rank))
        h["peak_rss_mib_max_rank"] = int(np.nanargmax(per_rank))
        h["peak_rss_mib_min"] = _f(np.nanmin(per_rank))
    for k in ["model_state_bytes", "working_bytes", "activation_bytes"]:
        v = _f(a.get(k))
        h[k.replace("_bytes", "_mib")] = v / MIB if v is not None else None
    for op in COMM_OPS:
        v = _median(col(f"comm_bytes_{op}"))
        h[f"comm_mib_per_step_{op}"] = v / MIB if v is not None else None
    t = col("step_time")
    h["total_time_s"] = _f(np.nansum(t)) if t is not None and n else None
    w = col("comm_wait")
    h["total_comm_wait_s"] = _f(np.nansum(w)) if w is not None and n else None
    tok = col("tokens")
    h["tokens"] = _f(tok[-1]) if tok is not None and n else None
    return h


def fmt(x, spec="{:,.0f}", unit=""):
    """A figure for the table; '?' where unknown."""
    if x is None:
        return "?"
    return spec.format(x) + (f" {unit}" if unit else "")


def fmt_time(s):
    if s is None:
        return "?"
    hh, rem = divmod(int(round(s)), 3600)
    return f"{s:.1f} s ({hh}:{rem // 60:02d}:{rem % 60:02d})" if s >= 60 else f"{s:.2f} s"


def print_table(run, h, full_deck):
    print(f"run {h['label']}  ({h['path']})")
    print(f"machine: {h['machine'] or '?'}")
    deck = run["deck"]
    if not deck:
        print("deck: ? (not stored in this file)")
    elif full_deck:
        print("deck:")
        print("\n".join("  " + l for l in deck.rstrip().splitlines()))
    else:
        lines, hidden = deck_compact(deck)
        print(f"deck ({hidden} keys at their default not shown; --deck prints all):")
        print("\n".join("  " + l for l in lines))
    v0 = h["val_loss_initial"]
    best = "?" if h["best_val_loss"] is None else f"{h['best_val_loss']:.4f} at step {h['best_val_step']}"
    rows = [
        ("steps", fmt(h["steps"], "{:d}") + ("" if h["tokens"] is None else f"  ({h['tokens']:,.0f} tokens)")),
        ("final loss", fmt(h["final_loss"], "{:.4f}")),
        ("best val loss", f"{best}  (initial {fmt(v0, '{:.4f}')})"),
        ("median tokens/s", fmt(h["median_tokens_per_s"], "{:,.0f}", "tok/s") + "  (excluding step 1)"),
        ("median MFU", fmt(h["median_mfu_percent"], "{:.2f}", "%")),
        ("median step time", fmt(h["median_step_time_s"], "{:.4g}", "s")),
        ("sgemm peak", fmt(h["sgemm_peak_gflops"], "{:,.1f}", "GFLOP/s per rank")),
        ("ranks x threads", f"{fmt(h['ranks'], '{:d}')} x {fmt(h['threads_per_rank'], '{:d}')}"),
        ("ZeRO stage", fmt(h["zero_stage"], "{:d}")),
        ("parameters", fmt(h["nparams"], "{:,d}")),
        ("peak memory/rank", fmt(h["peak_rss_mib_max"], "{:,.1f}", "MiB") +
         ("" if h["peak_rss_mib_max"] is None else
          f" max (rank {h['peak_rss_mib_max_rank']}), {h['peak_rss_mib_min']:,.1f} MiB min")),
        ("model state/rank", fmt(h["model_state_mib"], "{:,.2f}", "MiB")),
        ("working/rank", fmt(h["working_mib"], "{:,.2f}", "MiB")),
        ("activations/rank", fmt(h["activation_mib"], "{:,.2f}", "MiB")),
    ]
    for op in COMM_OPS:
        v = h[f"comm_mib_per_step_{op}"]
        rows.append((f"{op}/step", "?" if v is None else f"{v:,.4f} MiB ({v * MIB:,.0f} B; median, rank 0 sent)"))
    wait = h["total_comm_wait_s"]
    share = "" if wait is None or not h["total_time_s"] else f"  ({100.0 * wait / h['total_time_s']:.1f}% of the time)"
    rows.append(("comm wait", fmt(wait, "{:.2f}", "s") + share))
    rows.append(("total time", fmt_time(h["total_time_s"])))
    print("headline figures:")
    for k, v in rows:
        print(f"  {k:<20} {v}")


def main():
    ap = argparse.ArgumentParser(description="Configuration and headline figures of a Partita run.h5.")
    ap.add_argument("run", help="run.h5 of a training run")
    ap.add_argument("--json", action="store_true", help="print the headline figures as JSON")
    ap.add_argument("--deck", action="store_true", help="print the whole resolved deck")
    args = ap.parse_args()
    run = read_run(args.run)
    h = headline(run)
    if args.json:
        print(json.dumps(h, indent=2))
    else:
        print_table(run, h, args.deck)


if __name__ == "__main__":
    main()
