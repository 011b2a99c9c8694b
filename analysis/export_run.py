#!/usr/bin/python3
"""export_run.py: a run.h5's per-step record as CSV or JSON lines, for pandas and spreadsheets.

    analysis/export_run.py runs/gpt-tiny/run.h5                 # CSV on standard output
    analysis/export_run.py runs/gpt-tiny/run.h5 -o run.csv
    analysis/export_run.py runs/gpt-tiny/run.h5 --format jsonl  # one JSON object per step

One row per step: every /metrics column (integer columns as integers, NaN as an
empty CSV cell or JSON null) and peak_rss_mb as peak_rss_mb_rank0, _rank1, ...
With --units the CSV gets a second header line of units (from each column's
`units` attribute). pandas: pd.read_csv("run.csv") or pd.read_json("run.jsonl", lines=True).
"""
import argparse
import csv
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partita_h5 import RUN_COLUMNS, die, open_h5, py  # noqa: E402


def read_columns(path):
    """[(name, unit, values as a list of Python ints/floats/None)] in RUN_COLUMNS order, then others."""
    with open_h5(path) as f:
        if "metrics" not in f:
            die(f"'{path}' has no /metrics group: not a run.h5", "run.h5 is written to the run's out_dir by `partita train`")
        g = f["metrics"]
        names = [n for n in RUN_COLUMNS if n in g] + sorted(n for n in g if n not in RUN_COLUMNS
                                                            and n not in ("peak_rss_mb", "rank"))
        cols = []
        for n in names:
            ds = g[n]
            if ds.ndim != 1:
                continue
            vals = ds[()]
            integer = vals.dtype.kind in "iu"
            cols.append((n, py(ds.attrs.get("units", "")), [int(v) if integer else float(v) for v in vals]))
        if "peak_rss_mb" in g:
            rss = np.asarray(g["peak_rss_mb"][()], dtype=np.float64)
            rss = rss[:, None] if rss.ndim == 1 else rss
            unit = py(g["peak_rss_mb"].attrs.get("units", "MiB"))
            for r in range(rss.shape[1]):
                cols.append((f"peak_rss_mb_rank{r}", unit, [float(v) for v in rss[:, r]]))
    n = min((len(v) for _, _, v in cols), default=0)   # a live run may be mid-append
    return [(name, unit, [None if isinstance(x, float) and not math.isfinite(x) else x for x in v[:n]])
            for name, unit, v in cols], n


def main():
    ap = argparse.ArgumentParser(description="Export a Partita run.h5 per-step record as CSV or JSON lines.")
    ap.add_argument("run", help="run.h5")
    ap.add_argument("-o", "--output", help="file to write (default: standard output)")
    ap.add_argument("--format", choices=["csv", "jsonl"], help="default: from -o's extension, else csv")
    ap.add_argument("--units", action="store_true", help="CSV: a second header line with each column's units")
    args = ap.parse_args()
    fmt = args.format or ("jsonl" if args.output and args.output.endswith((".jsonl", ".json")) else "csv")
    cols, n = read_columns(args.run)
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    if fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow([c[0] for c in cols])
        if args.units:
            w.writerow([c[1] for c in cols])
        for i in range(n):
            w.writerow(["" if c[2][i] is None else repr(c[2][i]) if isinstance(c[2][i], float) else c[2][i]
                        for c in cols])
    else:
        for i in range(n):
            out.write(json.dumps({c[0]: c[2][i] for c in cols}) + "\n")
    out.flush()
    if args.output:
        out.close()
        print(f"{args.output}: {n} steps, {len(cols)} columns ({fmt})", file=sys.stderr)


if __name__ == "__main__":
    main()
