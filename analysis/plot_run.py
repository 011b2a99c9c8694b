#!/usr/bin/python3
"""plot_run.py: one PNG of a training run's per-step record, or several overlaid.

    analysis/plot_run.py runs/gpt-tiny/run.h5                  -> runs/gpt-tiny/run.png
    analysis/plot_run.py a/run.h5 b/run.h5 -o cmp.png --label zero0 zero3

Panels against step: train and validation loss, learning rate, gradient norm,
throughput, MFU, step time and comm wait, peak memory per rank, and bytes rank 0
sent per collective. Each run has one colour; the legend at the top names the
runs (default label: the run's directory name). Reads a live run too.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partita_h5 import COMM_OPS, MIB, checkpoint_steps, die, read_run, run_label, run_name, run_title  # noqa: E402

OP_STYLE = {"all_reduce": "-", "reduce_scatter": "--", "all_gather": ":"}
MAX_RANK_LINES = 8  # one run with at most this many ranks: one memory line per rank


def labels_for(runs, given):
    """The legend name of each run: --label, else the directory name, made unique
    with run.name from the deck or the position on the command line."""
    if given:
        if len(given) != len(runs):
            die(f"{len(given)} --label names for {len(runs)} runs", "give one --label name per run.h5, in order")
        return list(given)
    labels = [run_label(r) for r in runs]
    for i, r in enumerate(runs):
        if labels.count(labels[i]) > 1:
            name = run_name(r)
            labels[i] = f"{labels[i]} ({name})" if name else labels[i]
    seen = {}
    for i, lab in enumerate(labels):
        if labels.count(lab) > 1:
            seen[lab] = seen.get(lab, 0) + 1
            labels[i] = f"{lab} #{seen[lab]}"
    return labels


def wide_range(*arrays):
    """True when the positive values span more than two decades (use a log axis)."""
    v = np.concatenate([a[np.isfinite(a) & (a > 0)] for a in arrays if a is not None] or [np.zeros(0)])
    return v.size > 1 and v.max() / v.min() > 100.0


def plot_runs(runs, labels, out):
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(4, 2, figsize=(13, 14.5), sharex=True)
    ax = {k: a for k, a in zip(["loss", "lr", "gnorm", "tps", "mfu", "time", "mem", "comm"], axes.ravel())}
    single = len(runs) == 1
    grad_arrays, comm_arrays = [], []

    for i, (run, label) in enumerate(zip(runs, labels)):
        c = colours[i % len(colours)]
        m, s = run["m"], run["m"]["step"]
        # Earlier runs draw wider, so identical curves (a ZeRO stage against
        # plain DP, say) still show every colour, nested.
        nest = (len(runs) - 1 - i) / (len(runs) - 1) if len(runs) > 1 else 0.0
        lw = 1.2 + 1.8 * nest

        def line(key, name, scale=1.0, **kw):
            if name in m:
                ax[key].plot(s, m[name] * scale, color=c, lw=lw, **kw)

        line("loss", "loss", label=label)
        if "val_loss" in m:
            ok = np.isfinite(m["val_loss"])
            ax["loss"].plot(s[ok], m["val_loss"][ok], "o", color=c, ms=5 + 4 * nest, mec="black", mew=0.6)
        line("lr", "lr")
        line("gnorm", "grad_norm")
        grad_arrays.append(m.get("grad_norm"))
        line("tps", "tokens_per_s")
        line("mfu", "mfu", 100.0)
        line("time", "step_time")
        line("time", "comm_wait", ls="--")

        rss = run["rss"]
        if rss is not None and rss.size:
            if single and rss.shape[1] <= MAX_RANK_LINES:
                for r in range(rss.shape[1]):
                    ax["mem"].plot(s, rss[:, r], lw=1.2, color=colours[r % len(colours)], label=f"rank {r}")
            else:
                lo, hi = np.nanmin(rss, axis=1), np.nanmax(rss, axis=1)
                ax["mem"].fill_between(s, lo, hi, color=c, alpha=0.25, lw=0)
                ax["mem"].plot(s, hi, color=c, lw=lw)

        # Steps that wrote a checkpoint: its gathers are in their comm bytes. They are
        # marked (a vertical line on every panel, an x on the comm panel) and left out
        # of the comm lines, so a checkpoint does not read as a communication spike.
        ck = checkpoint_steps(run)
        ck_rows = np.isin(s, ck)
        for a in ax.values():
            for x in ck:
                a.axvline(x, color=c, lw=0.8, ls=(0, (2, 3)), alpha=0.6, zorder=0)
        for op in COMM_OPS:
            b = m.get(f"comm_bytes_{op}")
            if b is not None and np.nansum(b) > 0:
                plain = np.where(ck_rows, np.nan, b / MIB)
                ax["comm"].plot(s, plain, color=c, ls=OP_STYLE[op], lw=lw)
                if ck_rows.any():
                    ax["comm"].plot(s[ck_rows], b[ck_rows] / MIB, "x", color=c, ms=7)
                comm_arrays.append(plain)

    titles = {"loss": ("Loss", "cross-entropy (nats)"), "lr": ("Learning rate", "lr"),
              "gnorm": ("Gradient norm (before clipping)", "L2 norm"),
              "tps": ("Throughput", "tokens/s"), "mfu": ("Model FLOPs utilisation", "MFU (%)"),
              "time": ("Step time and time blocked in collectives", "seconds"),
              "mem": ("Peak memory per rank (resident)", "MiB"),
              "comm": ("Bytes rank 0 sent per step, per collective", "MiB")}
    for k, a in ax.items():
        a.set_title(titles[k][0], fontsize=11)
        a.set_ylabel(titles[k][1])
        a.grid(True, alpha=0.3)
        a.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False) \
            if k in ("lr", "tps") else None
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    for a in axes[-1]:
        a.set_xlabel("step")
        a.xaxis.set_tick_params(labelbottom=True)
    if wide_range(*grad_arrays):
        ax["gnorm"].set_yscale("log")
    if wide_range(*comm_arrays):
        ax["comm"].set_yscale("log")

    # Panel legends for what line style and markers mean (colour means the run).
    k = "black" if not single else colours[0]
    ax["loss"].legend([Line2D([], [], color=k, lw=1.2), Line2D([], [], marker="o", ls="", color=k, mec="black")],
                      ["train (per step)", "validation"], fontsize=9, loc="upper right")
    ax["time"].legend([Line2D([], [], color=k, lw=1.2), Line2D([], [], color=k, lw=1.2, ls="--")],
                      ["step time", "comm wait"], fontsize=9, loc="upper right")
    ops = [op for op in COMM_OPS if any(np.nansum(r["m"].get(f"comm_bytes_{op}", np.zeros(1))) > 0 for r in runs)]
    if ops:
        handles = [Line2D([], [], color=k, ls=OP_STYLE[op], lw=1.2) for op in ops]
        names = list(ops)
        if any(checkpoint_steps(r).size for r in runs):
            handles.append(Line2D([], [], color=k, marker="x", ls=(0, (2, 3)), lw=0.8))
            names.append("checkpoint step (its gathers)")
        ax["comm"].legend(handles, names, fontsize=9, loc="best")
    else:
        ax["comm"].text(0.5, 0.5, "no collective traffic (one rank)", ha="center", va="center",
                        transform=ax["comm"].transAxes, color="gray")
    if any(r["rss"] is not None for r in runs):
        if single and runs[0]["rss"].shape[1] <= MAX_RANK_LINES:
            ax["mem"].legend(fontsize=9, loc="upper right", ncol=min(4, runs[0]["rss"].shape[1]))
        else:
            ax["mem"].legend([Line2D([], [], color=k, lw=1.2), Patch(color=k, alpha=0.25, lw=0)],
                             ["max over ranks", "min to max over ranks"], fontsize=9, loc="upper right")
    else:
        ax["mem"].text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax["mem"].transAxes,
                       color="gray")

    for key in ("time", "mem"):  # headroom, so the legend sits above the lines
        lo, hi = ax[key].get_ylim()
        ax[key].set_ylim(lo, hi + 0.3 * (hi - lo))
    if single:
        machine = runs[0]["attrs"].get("machine")
        what = run_title(runs[0])
        fig.suptitle(f"Partita training run: {labels[0]}" + (f" ({what})" if what else "")
                     + (f"\n{machine}" if machine else ""), fontsize=12)
        fig.tight_layout(rect=(0, 0, 1, 0.965))
    else:
        fig.suptitle(f"Partita: {len(runs)} training runs overlaid (colour = run)", fontsize=12, y=0.995)
        labels = [f"{lab} ({run_title(r)})" if run_title(r) else lab for lab, r in zip(labels, runs)]
        handles = [Line2D([], [], color=colours[i % len(colours)], lw=2.5) for i in range(len(runs))]
        fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), fontsize=10, frameon=False,
                   bbox_to_anchor=(0.5, 0.978))
        fig.tight_layout(rect=(0, 0, 1, 0.955))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description="Plot Partita run.h5 files (several are overlaid).")
    ap.add_argument("runs", nargs="+", help="run.h5 files")
    ap.add_argument("-o", "--output", help="PNG to write (default: <first run's directory>/run.png)")
    ap.add_argument("--label", nargs="+", action="extend", default=[], metavar="NAME",
                    help="legend name per run, in order (default: the run's directory name)")
    args = ap.parse_args()
    runs = [read_run(p) for p in args.runs]
    for r in runs:
        if r["n"] == 0:
            print(f"warning: '{r['path']}' has no steps recorded yet", file=sys.stderr)
    out = args.output or os.path.join(os.path.dirname(os.path.abspath(args.runs[0])), "run.png")
    plot_runs(runs, labels_for(runs, args.label), out)
    print(out)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
