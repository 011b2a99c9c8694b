#!/usr/bin/python3
"""Prints the benchmark tables of bench/run.sh from the runs' HDF5 and logs.
usage: report.py train RUN.h5 TORCH.log | report.py zero DIR | report.py ckpt DIR BYTES PLAIN_SECONDS [DIRECT_SECONDS]
       | report.py ackpt DIR | report.py overlap DIR ROUNDS | report.py sp DIR | report.py moe DIR"""
import glob
import os
import re
import sys

import h5py
import numpy as np


def metrics(path):
    with h5py.File(path, "r") as f:
        m = {k: np.array(v) for k, v in f["metrics"].items()}
        return m, dict(f.attrs)


def train(run_h5, torch_log):
    m, a = metrics(run_h5)
    tps, mfu = float(np.median(m["tokens_per_s"][1:])), float(np.median(m["mfu"][1:]))  # step 1 warms up
    tv = dict(line.split() for line in open(torch_log) if line.strip())
    ttps = float(tv["torch_tokens_per_s"])
    print(f"  {'':30s} {'partita':>12s} {'pytorch':>12s} {'ratio':>8s}")
    print(f"  {'tokens/s (median step)':30s} {tps:12.1f} {ttps:12.1f} {tps / ttps:8.2f}")
    print(f"  {'MFU vs measured sgemm peak':30s} {100 * mfu:11.1f}% {100 * mfu * ttps / tps:11.1f}%")
    print(f"  {'sgemm peak GFLOP/s':30s} {float(a['sgemm_peak_gflops']):12.1f}   ({int(a['threads_per_rank'])} threads)")


def zero(d):
    print(f"  {'stage':>5s} {'s/step':>8s} {'tok/s':>8s} {'MiB sent/step':>14s} {'x stage 0':>9s} "
          f"{'wait s (overlap)':>17s} {'wait s (none)':>14s} {'hidden':>7s} {'states MiB':>11s}")
    base = None
    for st in range(4):
        m, a = metrics(os.path.join(d, f"zero-{st}-true", "run.h5"))
        m0, _ = metrics(os.path.join(d, f"zero-{st}-false", "run.h5"))
        s = slice(1, -1)   # the first step warms up; the last one also evaluates
        sent = float(np.median(m["comm_bytes_all_reduce"][s] + m["comm_bytes_reduce_scatter"][s] + m["comm_bytes_all_gather"][s]))
        base = base or sent
        w, w0 = float(np.median(m["comm_wait"][s])), float(np.median(m0["comm_wait"][s]))
        hidden = 1 - w / w0 if w0 > 0 else float("nan")
        print(f"  {st:5d} {np.median(m['step_time'][s]):8.2f} {np.median(m['tokens_per_s'][s]):8.0f} {sent / 2**20:14.1f} "
              f"{sent / base:9.2f} {w:17.3f} {w0:14.3f} {100 * hidden:6.0f}% {int(a['model_state_bytes']) / 2**20:11.1f}")
    print("  hidden = 1 - (time blocked in collectives with overlap) / (the same with zero.overlap = false)")


def ckpt(d, rounds):
    def med(xs):
        xs = np.array([x for x in xs if np.isfinite(x)])
        return (float(np.median(xs)), float(xs.min()), float(xs.max())) if len(xs) else (float("nan"),) * 3

    def fmt(t, pct=False):
        return f"{t[0]:.0%} [{t[1]:.0%}-{t[2]:.0%}]" if pct else f"{t[0]:.2f} [{t[1]:.2f}-{t[2]:.2f}]"

    def seconds(path, pattern):
        try:
            m = re.search(pattern, open(path).read())
        except OSError:
            return float("nan")
        return float(m.group(1)) if m else float("nan")

    rows = {k: {"w": [], "r": [], "wp": [], "wd": [], "rd": []} for k in ("1", "2", "4", "b")}
    base = {"plain": [], "dwrite": [], "dread": []}
    mpiio = {}
    nbytes = 0.0
    for r in range(1, int(rounds) + 1):
        nbytes, plain_s, dwrite_s, dread_s = [float(x) for x in open(os.path.join(d, f"ckpt-{r}-dd.txt")).read().split()]
        plain, dwrite, dread = nbytes / plain_s / 1e9, nbytes / dwrite_s / 1e9, nbytes / dread_s / 1e9
        base["plain"].append(plain)
        base["dwrite"].append(dwrite)
        base["dread"].append(dread)
        for k, row in rows.items():
            ws = seconds(os.path.join(d, f"ckpt-{r}-{k}-w.log"), r"checkpoint: \S+ \(([\d.]+) s[;)]")
            rs = seconds(os.path.join(d, f"ckpt-{r}-{k}-r.log"), r"resumed from \S+ at step \d+ \(([\d.]+) s[;)]")
            w, rd_ = nbytes / ws / 1e9, nbytes / rs / 1e9
            row["w"].append(w)
            row["r"].append(rd_)
            row["wp"].append(w / plain)
            row["wd"].append(w / dwrite)
            row["rd"].append(rd_ / dread)
        for np_ in (1, 2, 4):
            path = os.path.join(d, f"ckpt-{r}-mpiio-{np_}.txt")
            for line in open(path) if os.path.exists(path) else []:
                way, _, gbs = line.split()
                mpiio.setdefault((way, np_), []).append(float(gbs))
    print(f"  checkpoint size {nbytes / 1e9:.2f} GB; {rounds} rounds, each with its own baselines: median [min-max]")
    print(f"  dd write + fsync {fmt(med(base['plain']))} GB/s; dd O_DIRECT write {fmt(med(base['dwrite']))} GB/s; "
          f"dd O_DIRECT read {fmt(med(base['dread']))} GB/s")
    print(f"  {'ranks':>8s} {'write GB/s':>18s} {'of dd+fsync':>16s} {'of dd O_DIRECT':>16s} {'read GB/s':>18s} "
          f"{'of dd O_DIRECT':>16s}")
    for k, label in (("1", "1"), ("2", "2"), ("4", "4"), ("b", "1 cache")):
        row = rows[k]
        rd = f"{fmt(med(row['r'])):>18s} {fmt(med(row['rd']), True):>16s}" if k != "b" else ""
        print(f"  {label:>8s} {fmt(med(row['w'])):>18s} {fmt(med(row['wp']), True):>16s} {fmt(med(row['wd']), True):>16s} {rd}")
    print("  '1 cache': one rank through the page cache (PARTITA_AIO=buffered: pwrite, then fsync), the path before O_DIRECT")
    print("  a write is the whole checkpoint (layout, states, fsync, /meta, rename); a read the whole resume")
    print("  (open, /meta checks, the states by O_DIRECT, every checksum)")
    if mpiio:
        print("  MPI-IO, each rank its contiguous 1/P of the same bytes then MPI_File_sync, GB/s median [min-max]:")
        for way in ("collective-cb", "collective-nocb", "independent"):
            print(f"  {way:>16s} " + "  ".join(f"np={p}: {fmt(med(mpiio.get((way, p), [])))}" for p in (1, 2, 4)))


def ackpt(d):
    print(f"  {'checkpoints':>12s} {'step s':>18s} {'checkpoint s':>18s} {'step + checkpoint s':>20s}")
    for mode in ("none", "sync", "async"):
        m, _ = metrics(os.path.join(d, f"ackpt-{mode}", "run.h5"))
        st = m["step_time"][1:] if len(m["step_time"]) > 1 else m["step_time"]
        ck = m["checkpoint_time"][1:] if len(m["checkpoint_time"]) > 1 else m["checkpoint_time"]
        tot = st + ck
        f = lambda x: f"{np.median(x):.2f} [{x.min():.2f}-{x.max():.2f}]"
        print(f"  {mode:>12s} {f(st):>18s} {f(ck):>18s} {f(tot):>20s}")
    print("  checkpoint s: the time the step loop stood still for it (async: the host copy and, at the next")
    print("  checkpoint, the wait for the previous write and its publish)")


def overlap(d, rounds):
    s = slice(1, -1)    # the first step warms up; the last one also evaluates
    def steps(name):    # every round's steps but those two, pooled; and the metrics
        ts, ms = [], []
        for r in range(1, int(rounds) + 1):
            m, _ = metrics(os.path.join(d, f"ov-{r}-{name}", "run.h5"))
            ts.append(m["step_time"][s])
            ms.append(m)
        return np.concatenate(ts), ms

    # Compute alone: the same np = 2 run with [comm] compute_only = alternate
    # (odd steps move nothing: each rank does exactly its own layout's forward,
    # backward and update, on its own stale data, on the same two cores).
    # A communicating step (even) less the mean of its two neighbours is what
    # communication added to it: the machine drifts by 0.1-0.2 s a step over
    # minutes, which separate runs would read as communication. Step 2's
    # neighbour is the warm-up and the last step evaluates: both left out.
    def triplets(name):     # and each round's median exposed (the machine's moods last minutes)
        ex, co, per = [], [], []
        for r in range(1, int(rounds) + 1):
            t = metrics(os.path.join(d, f"ov-{r}-{name}", "run.h5"))[0]["step_time"]
            mine = [t[i] - 0.5 * (t[i - 1] + t[i + 1]) for i in range(3, len(t) - 2, 2)]   # 0-based: steps 4, 6, ...
            ex += mine
            co += [0.5 * (t[i - 1] + t[i + 1]) for i in range(3, len(t) - 2, 2)]
            per.append(float(np.median(mine)) if mine else float("nan"))
        return np.array(ex), np.array(co), per

    print(f"  {rounds} rounds, steps pooled; compute alone: [comm] compute_only = alternate, each communicating step "
          f"against its two neighbours")
    print(f"  {'stage':>7s} {'on s/step':>16s} {'off s/step':>16s} {'compute s':>9s} {'exposed s':>22s} {'comm alone s':>16s} "
          f"{'blocked (sync)':>14s} {'max':>6s} {'in MPI':>6s} {'in flight':>9s} {'postponed':>9s} {'max':>5s} {'hidden':>7s} "
          f"{'quartiles':>15s}")
    rounds_s = []
    for st, kind in ((0, "on"), (1, "on"), (1, "mpi"), (2, "on"), (2, "rs"), (2, "mpi"), (3, "on"), (3, "rs"),
                     (3, "mpi")):
        if not os.path.exists(os.path.join(d, f"ov-1-{st}-{kind}", "run.h5")):
            continue    # a stage left out (BENCH_OVERLAP_STAGES)
        on, mo = steps(f"{st}-{kind}")
        has_off = os.path.exists(os.path.join(d, f"ov-1-{st}-off", "run.h5"))   # BENCH_OVERLAP_KINDS
        off = steps(f"{st}-off")[0] if has_off else None
        ex, co, per = triplets(f"{st}-{kind}-alt")
        rounds_s.append(f"{st} {kind}: " + " ".join(f"{e:.3f}" for e in per))
        if len(ex) == 0 or len(on) == 0:
            print("  too few steps to compare: BENCH_STEPS >= 3")
            return
        cm = np.array([float(l.split()[2]) for l in open(os.path.join(d, f"ov-{st}-{kind}-comm.txt")) if l.startswith("step")])
        cm = cm[1:] if len(cm) > 1 else cm
        c = float(np.median(cm))
        col = lambda k: np.concatenate([m[k][s] for m in mo]) if k in mo[0] else np.zeros(1)
        wait, sync, fly, busy = col("comm_wait"), col("comm_wait_sync"), col("comm_inflight"), col("comm_busy")
        later, wmax, lmax = col("grad_postponed"), col("comm_wait_max"), col("grad_postponed_max")
        hid = lambda e: 1 - e / c if c > 0 else float("nan")
        q1, q2, q3 = np.percentile(ex, [25, 50, 75])
        label = f"{st}" if kind == "on" else f"{st} {kind}"
        off_s = f"{np.median(off):7.2f} [{off.min():.2f}-{off.max():.2f}]" if kind == "on" and has_off else f"{'':16s}"
        print(f"  {label:>7s} {np.median(on):7.2f} [{on.min():.2f}-{on.max():.2f}] {off_s} {np.median(co):9.2f} "
              f"{q2:7.3f} [{ex.min():.3f}, {ex.max():.3f}] "
              f"{c:7.2f} [{cm.min():.2f}-{cm.max():.2f}] {np.median(wait):7.3f} ({np.median(sync):.3f}) "
              f"{np.median(wmax):6.3f} {np.median(busy):6.3f} "
              f"{np.median(fly):9.2f} {np.median(later):9.1f} {np.median(lmax):5.1f} {hid(q2):6.0%} "
              f"[{hid(q3):.0%}, {hid(q1):.0%}]")
    print("  exposed s, each round's median: " + "; ".join(rounds_s))
    print("  exposed = a communicating step less the mean of its two compute-alone neighbours: median [min, max] over")
    print(f"  {len(ex)} such steps; hidden = 1 - exposed / comm_alone (median; quartiles of exposed);")
    print("  comm alone: build/comm_alone, the bytes run.h5 recorded through comm.c over step-sized buffers, no compute;")
    print("  blocked: rank 0's time in waits per step (median), of it at the node-shared barriers (sync); max: the")
    print("  longest any rank waited in the step (run.h5 comm_wait_max; median over steps)")
    print("  in MPI: rank 0's time inside MPI outside waits (issuing, polling: the copies and sums MPI does there),")
    print("  and the two-rank reduce-scatter's own sum; on, off, blocked, in MPI: separate runs of every step communicating")
    print("  postponed: rank 0's matrix gradient products a step put off rather than wait for the other rank (fused);")
    print("  max: the most any rank put off (grad_postponed_max)")
    print("  stages 1-3: parameters node-shared (the default on one node: no all-gathers); 'mpi': zero.node_shared = false")
    print("  stages 2-3: gradients fused (the default there: no reduce-scatter; comm alone is the reduce-scatter of the")
    print("  'rs' run's bytes, the same gradients' reduction); 'rs': zero.fused_grads = false (the two-rank reduce-scatter)")


def gen_file(path):
    with h5py.File(path, "r") as f:
        g = f["requests"]
        return dict(f.attrs), g["arrival"][:], g["first_token"][:], g["finish"][:], g["output_offsets"][:], g["prompt_offsets"][:]


def gen(d):
    stream = open(os.path.join(d, "stream.txt")).read()
    read_bw = float(re.search(r"read ([0-9.]+) GB/s", stream).group(1))
    dtypes = [dt for dt in ("fp32", "bf16", "int8") if os.path.exists(os.path.join(d, f"decode1-{dt}", "gen.h5"))]
    print(f"  {'tokens/s':34s} " + " ".join(f"{dt:>10s}" for dt in dtypes))
    rows = {}
    for dt in dtypes:
        for case, label in (("decode1", "decode, batch 1"), ("decode8", "decode, batch 8")):
            a, arr, fst, fin, oo, po = gen_file(os.path.join(d, f"{case}-{dt}", "gen.h5"))
            n = np.diff(oo)
            # decode tokens/s: tokens after the first over the time from the first token to the last finish
            rows.setdefault(label, {})[dt] = float((n - 1).sum() / (fin.max() - fst.min()))
        a, arr, fst, fin, oo, po = gen_file(os.path.join(d, f"prefill-{dt}", "gen.h5"))
        rows.setdefault("prefill, 512-token prompt", {})[dt] = float(np.diff(po)[0] / (fst[0] - arr[0]))
    for label, v in rows.items():
        print(f"  {label:34s} " + " ".join(f"{v[dt]:10.1f}" for dt in dtypes))
    print(f"  memory bandwidth (stream read, same run): {read_bw:.2f} GB/s  [{stream.strip()}]")
    for dt in dtypes:
        log = open(os.path.join(d, f"decode1-{dt}.log")).read()
        held = int(re.search(r"held_bytes (\d+)", log).group(1))
        bw = held * rows["decode, batch 1"][dt] / 1e9
        print(f"  {dt}: {held / 2**20:.0f} MiB of matrices per token at batch 1 -> {bw:.2f} GB/s of weights, "
              f"{100 * bw / read_bw:.0f}% of the measured read bandwidth")
    print(f"  {'Poisson load':34s} {'splitfuse':>10s} {'static':>10s}")
    res = {}
    for mode in ("splitfuse", "static"):
        res[mode] = gen_file(os.path.join(d, f"poisson-{mode}", "gen.h5"))[0]
    for key, label in (("inter_token_latency_p99", "p99 inter-token latency (s)"), ("inter_token_latency_p50", "p50 inter-token latency (s)"),
                       ("ttft_p99", "p99 time to first token (s)"), ("e2e_latency_p99", "p99 end-to-end latency (s)"),
                       ("output_tokens_per_s", "output tokens/s"), ("effective_rps_sla_4_tok_s", "effective req/s (SLA 4 tok/s)")):
        print(f"  {label:34s} {float(res['splitfuse'][key]):10.3f} {float(res['static'][key]):10.3f}")


def rss_table(d):
    """Peak RSS per rank (the largest rank's) split into what the run planned (run.h5 attributes:
    model states, working buffers, activations incl. backward scratch and all-to-all buffers), the
    process baseline (resident before the model is allocated: MPI, HDF5, BLAS, the loader; largest
    rank) and the rest (MPI's reduction temporaries, allocator slack)."""
    mb = 2.0**20
    print("  peak RSS per rank, recompute = layer, long-seq model (L=4 C=256 NH=4), B=1, MiB")
    print(f"  {'ZeRO':>4s} {'T':>6s} {'sp':>3s} {'peak RSS':>9s} {'states':>8s} {'working':>8s} {'activations':>12s} "
          f"{'baseline':>9s} {'other':>7s}")
    for st in (0, 3):
        rss = {}
        for T, n in [(4096, 1), (16384, 4)]:
            m, a = metrics(os.path.join(d, f"rss-{T}-{n}-z{st}", "run.h5"))
            rss[n] = float(m["peak_rss_mb"].max())
            states, work, acts = (float(a[k]) / mb for k in ("model_state_bytes", "working_bytes", "activation_bytes"))
            base = float(a["baseline_rss_mb"])
            other = rss[n] - states - work - acts - base
            print(f"  {st:4d} {T:6d} {n:3d} {rss[n]:9.1f} {states:8.1f} {work:8.1f} {acts:12.1f} {base:9.1f} {other:7.1f}")
        r = rss[4] / rss[1]
        print(f"  ZeRO-{st}: (16K, sp=4) / (4K, sp=1) = {r:.3f} ({'within' if abs(r - 1) <= 0.10 else 'NOT within'} 10%)")
    print("  (baseline: resident before the model is allocated, MPI, HDF5, BLAS and the loader; other: the rest,"
          " MPI's reduction temporaries)")


def sp(d):
    print("  weak scaling, T/sp = 2048 fixed (rank 0's all-to-all bytes; Ulysses predicts (sp-1)/sp x const)")
    print(f"  {'T':>6s} {'sp':>3s} {'a2a MiB/step':>13s} {'/ ((sp-1)/sp)':>14s} {'s/step':>8s} {'tok/s':>8s} {'peak RSS MiB/rank':>18s}")
    for T, n in [(2048, 1), (4096, 2), (8192, 4)]:
        m, _ = metrics(os.path.join(d, f"weak-{T}-{n}", "run.h5"))
        b = float(m["comm_bytes_all_to_all"][0]) / 2**20
        norm = b / ((n - 1) / n) if n > 1 else float("nan")
        print(f"  {T:6d} {n:3d} {b:13.2f} {norm:14.2f} {float(np.median(m['step_time'])):8.2f} "
              f"{float(np.median(m['tokens_per_s'])):8.0f} {float(m['peak_rss_mb'].max()):18.1f}")
    rss_table(d)
    m, a = metrics(os.path.join(d, "long-seq", "run.h5"))
    print(f"  long-seq deck (T=32768, sp=4, recompute): {float(np.median(m['tokens_per_s'])):.0f} tok/s, "
          f"MFU {100 * float(np.median(m['mfu'])):.1f}%, {float(np.median(m['step_time'])):.1f} s/step, "
          f"peak RSS per rank {float(m['peak_rss_mb'].max()):.1f} MiB")


def col(m, k):
    """A per-step series (rank 0's where the dataset has a column per rank)."""
    a = np.asarray(m[k], dtype=float)
    return a.reshape(len(a), -1)[:, 0]


def moe(d):
    """MoE benchmark (issue 13): each run's run.h5 and `estimate` output (DECK.est) under d."""
    def est(name):
        kv = {}
        for line in open(os.path.join(d, name + ".est")):
            m = re.match(r"^(moe_\w+) (.*)$", line)
            if m:
                kv[m.group(1)] = [float(x) for x in m.group(2).split()]
            m = re.match(r"^model: (\d+) parameters", line)
            if m:
                kv["dense_params"] = [float(m.group(1))]
            m = re.search(r"; ([0-9.e+]+) FLOP per token$", line.strip())
            if m:
                kv["dense_fpt"] = [float(m.group(1))]
        total = kv.get("moe_params_total", kv["dense_params"])[0]
        active = kv.get("moe_params_active", kv["dense_params"])[0]
        fpt = kv.get("moe_flops_per_token", kv["dense_fpt"])[0]
        return total, active, fpt

    runs = [("moe-dense", "dense base (6 x 128)"), ("moe-8", "MoE-8 top-1, every other layer"),
            ("moe-pr", "PR-MoE residual, pyramid 4,8,8"), ("moe-dense-wide", "dense, MoE-8's total params")]
    base_m, base_a = metrics(os.path.join(d, "moe-dense", "run.h5"))
    vb = col(base_m, "val_loss")
    target = float(vb[np.isfinite(vb)][-1])
    print(f"  {'model':32s} {'params':>9s} {'active':>9s} {'val loss':>9s} {'tok/s':>8s} {'GFLOP/tok-step':>14s} "
          f"{'step to base':>12s} {'PFLOP to base':>13s}")
    for name, what in runs:
        m, a = metrics(os.path.join(d, name, "run.h5"))
        total, active, fpt = est(name)
        steps, val = col(m, "step"), col(m, "val_loss")
        ok = np.isfinite(val)
        final = float(val[ok][-1])
        tps = float(np.median(col(m, "tokens_per_s")[1:]))
        tokens = col(m, "tokens")
        hit = np.nonzero(ok & (val <= target + 1e-12))[0]
        if len(hit):
            i = hit[0]
            reach, flops = f"{int(steps[i]):d}", f"{fpt * float(tokens[i]) / 1e15:.4f}"
        else:
            reach, flops = "not reached", "-"
        print(f"  {what:32s} {total / 1e6:8.2f}M {active / 1e6:8.2f}M {final:9.4f} {tps:8.0f} {fpt / 1e9:14.4f} "
              f"{reach:>12s} {flops:>13s}")
    if not os.path.exists(os.path.join(d, "moe-8-ep2", "run.h5")):
        print("  all-to-all share of the step at ep=2: no figure (the ep=2 run did not train; see moe-8-ep2.log)")
        return
    m1, _ = metrics(os.path.join(d, "moe-8", "run.h5"))
    m2, _ = metrics(os.path.join(d, "moe-8-ep2", "run.h5"))
    st2 = float(np.median(col(m2, "step_time")[1:]))
    w1, w2 = float(np.median(col(m1, "comm_wait")[1:])), float(np.median(col(m2, "comm_wait")[1:]))
    b2 = float(np.median(col(m2, "comm_bytes_all_to_all")[1:]))
    print(f"  MoE-8 at np=2: ep=1 {float(np.median(col(m1, 'step_time')[1:])):.3f} s/step, ep=2 {st2:.3f} s/step; "
          f"all-to-all {b2 / 2**20:.2f} MiB/step/rank at ep=2")
    print(f"  all-to-all share of the step at ep=2: {100 * max(w2 - w1, 0.0) / st2:.1f}% "
          f"(comm wait at ep=2 minus at ep=1: {w2:.3f} - {w1:.3f} s; the expert gradient all-reduce of ep=1 is in w1)")


if __name__ == "__main__":
    {"train": train, "zero": zero, "ckpt": ckpt, "gen": gen, "sp": sp, "ackpt": ackpt, "overlap": overlap,
     "moe": moe}[sys.argv[1]](*sys.argv[2:])
