#!/usr/bin/python3
"""ZeRO-Inference benchmark (bench/run.sh, BENCH_ONLY=zinf; opt-in, minutes).

Part A (ZINF_PARTS contains "big"): a GPT of random weights written by
`partita stage --random` (default 40 layers x d_model 4096 = 8.2B parameters,
33 GB of fp32: larger than this machine's memory), generating from NVMe at
batch 1, 8, 32 and 64 (every request: a 1-token prompt, ZINF_NEW new tokens, so
every pass has B rows): tokens/s, the read bandwidth of the passes against a raw
O_DIRECT probe of the same file with dd, peak RSS, and the share of each pass
spent waiting for reads (the batch where it falls under 10% is where compute
bounds a pass).
Part B ("124m"): the 124M GPT-2 shape streamed from NVMe vs resident, batch 64.

Environment: ZINF_DIR (on the disk to measure; default build/bench/zinf),
ZINF_LAYERS, ZINF_DMODEL, ZINF_HEADS, ZINF_BATCHES ("1 8 32 64"), ZINF_NEW (4),
ZINF_WINDOW (3), ZINF_PARTS ("124m big"), ZINF_THREADS (all cores),
ZINF_KEEP=1 keeps the staged files."""
import json
import os
import shutil
import subprocess
import sys
import time

import h5py

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTITA = os.path.join(ROOT, "build/partita")
MPIEXEC = os.environ.get("MPIEXEC", "mpiexec.mpich")
D = os.path.abspath(os.environ.get("ZINF_DIR", os.path.join(ROOT, "build/bench/zinf")))
THREADS = int(os.environ.get("ZINF_THREADS", os.cpu_count()))
NEW = int(os.environ.get("ZINF_NEW", "4"))
WINDOW = int(os.environ.get("ZINF_WINDOW", "3"))
PARTS = os.environ.get("ZINF_PARTS", "124m big").split()
os.makedirs(D, exist_ok=True)
GB, MiB = 1e9, 1 << 20


def sh(args, log):
    t0 = time.time()
    with open(os.path.join(D, log), "w") as f:
        p = subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                           env=dict(os.environ, OMP_NUM_THREADS=str(THREADS)))
    if p.returncode != 0:
        print(f"  command failed (rc {p.returncode}): {' '.join(args)}; see {D}/{log}")
        print(open(os.path.join(D, log)).read()[-2000:])
        sys.exit(1)
    return time.time() - t0


def deck(name, L, C, NH, V=50257):
    path = os.path.join(D, name + ".deck")
    with open(path, "w") as f:
        f.write(f"[run]\nname = {name}\nout_dir = {D}/{name}\nthreads = {THREADS}\n"
                f"[model]\nvocab = {V}\nvocab_pad = 128\nlayers = {L}\nd_model = {C}\nheads = {NH}\nseq_len = 64\n"
                f"[train]\nseq_len = 64\nmicro_batch = 1\nbatch = 1\nsteps = 1\neval_batches = 1\nsave_weights = true\n"
                f"[optimizer]\nwarmup = 0\n[data]\ntrain = {ROOT}/data/licenses.h5\n[checkpoint]\nresume = none\n")
    return path


def requests(B, V=50257):
    path = os.path.join(D, f"req-{B}.jsonl")
    with open(path, "w") as f:
        for i in range(B):
            f.write(json.dumps({"id": f"r{i}", "tokens": [(7919 * i + 13) % V], "max_tokens": NEW}) + "\n")
    return path


def generate(dk, name, B, *sets):
    out = os.path.join(D, name)
    shutil.rmtree(out, ignore_errors=True)     # gen.jsonl of an earlier run would skip its requests
    args = [MPIEXEC, "-np", "1", PARTITA, "generate", dk, "--set", f"run.out_dir={out}",
            "--set", f"generate.requests={requests(B)}", "--set", f"generate.max_batch={B}",
            "--set", f"generate.token_budget={B}", "--set", "generate.kv_block=16",
            "--set", f"generate.kv_blocks={B + 1}"] + [x for s in sets for x in ("--set", s)]
    sh(args, name + ".log")
    with h5py.File(os.path.join(out, "gen.h5"), "r") as f:
        a = dict(f.attrs)
        toks = [int(t) for t in f["requests/output_tokens"][:]]
    return a, toks


def dd_probe(path, limit=8 << 30):
    """A raw O_DIRECT read of the file with dd (bs 16 MiB), GB/s."""
    size = os.path.getsize(path)
    count = min(size, limit) // (16 * MiB)
    t0 = time.time()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=16M", f"count={count}", "iflag=direct", "status=none"],
                   check=True)
    return count * 16 * MiB / (time.time() - t0) / GB


def raw_probe(path, threads=16, limit=8 << 30):
    """A raw O_DIRECT read of the file by `threads` threads of blocking 1 MiB
    preads (page-aligned buffers), GB/s: the disk with several requests in flight."""
    import mmap
    import threading
    size = min(os.path.getsize(path), limit) // MiB * MiB
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    def work(k):
        buf = mmap.mmap(-1, MiB)
        for off in range(k * MiB, size, threads * MiB):
            if os.preadv(fd, [buf], off) != MiB:
                raise SystemExit(f"raw probe: short read at {off}")
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    t0 = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.time() - t0
    os.close(fd)
    return size / dt / GB


def load():
    return open("/proc/loadavg").read().split()[:3]


def stream_row(B, a):
    passes = int(a["passes"])
    per_pass = a["stream_layers_s"] / max(passes, 1)
    stall = a["stream_stall_s"] / max(a["stream_layers_s"], 1e-9)
    return (f"  {B:6d} {a['output_tokens_per_s']:10.2f} {per_pass:9.2f} {a['stream_read_gb_per_s']:9.2f} "
            f"{100 * stall:8.1f}% {a['peak_rss_bytes'] / MiB:10.0f}"), stall


if "124m" in PARTS:
    print(f"== ZeRO-Inference B: 124M GPT-2 shape, fp32, batch 64 x {NEW} tokens, 1 rank x {THREADS} threads, window {WINDOW}")
    dk = deck("z124m", 12, 768, 12)
    if not os.path.exists(f"{D}/z124m/init.h5"):
        sh([MPIEXEC, "-np", "1", PARTITA, "train", dk], "z124m-train.log")
    st = os.path.join(D, "z124m.stage")
    t = sh([PARTITA, "stage", dk, "--out", st, "--from", f"{D}/z124m/init.h5"], "z124m-stage.log")
    print(f"  staged {os.path.getsize(st) / GB:.2f} GB in {t:.1f} s; raw O_DIRECT read of it (dd): {dd_probe(st):.2f} GB/s, "
          f"(16 threads): {raw_probe(st):.2f} GB/s; load {' '.join(load())}")
    res, rt = generate(dk, "z124m-mem", 64, f"generate.weights={D}/z124m/init.h5")
    nv, nt = generate(dk, "z124m-nvme", 64, "generate.weights_from=nvme", f"generate.stage={st}",
                      f"generate.window={WINDOW}")
    print(f"  resident: {res['output_tokens_per_s']:.1f} tokens/s; streamed from NVMe: {nv['output_tokens_per_s']:.1f} "
          f"tokens/s ({nv['output_tokens_per_s'] / res['output_tokens_per_s']:.2f}x), read {nv['stream_read_gb_per_s']:.2f} GB/s, "
          f"{100 * nv['stream_stall_s'] / max(nv['stream_layers_s'], 1e-9):.1f}% of the layers' time waiting; "
          f"tokens {'identical' if rt == nt else 'DIFFERENT'}")
    print(f"  peak RSS streamed: {nv['peak_rss_bytes'] / MiB:.0f} MiB (window {nv['stream_window_bytes'] / MiB:.0f} MiB, "
          f"layers {nv['stream_bytes_per_pass'] / MiB:.0f} MiB per pass)")

if "big" in PARTS:
    L, C, NH = (int(os.environ.get(k, v)) for k, v in (("ZINF_LAYERS", "40"), ("ZINF_DMODEL", "4096"), ("ZINF_HEADS", "32")))
    batches = [int(b) for b in os.environ.get("ZINF_BATCHES", "1 8 32 64").split()]
    dk = deck(f"zbig-{L}x{C}", L, C, NH)
    st = os.path.join(D, f"zbig-{L}x{C}.stage")
    params = L * 12 * C * C + 50304 * C
    print(f"== ZeRO-Inference A: GPT of {params / 1e9:.2f}B parameters (L={L}, C={C}), random fp32 weights from NVMe, "
          f"1 rank x {THREADS} threads, window {WINDOW}, {NEW} passes per batch")
    if not os.path.exists(st):
        t = sh([PARTITA, "stage", dk, "--out", st, "--random", "1"], f"zbig-stage.log")
        last = open(os.path.join(D, "zbig-stage.log")).read().strip().splitlines()[-1]
        print(f"  staged {os.path.getsize(st) / GB:.2f} GB in {t:.0f} s (load {' '.join(load())}): {last}")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"  file {os.path.getsize(st) / GB:.2f} GB, machine memory {mem / GB:.1f} GB")
    dd = dd_probe(st)
    raw = raw_probe(st)
    print(f"  raw O_DIRECT probes of the file (up to 8 GiB): dd, 16 MiB reads one at a time: {dd:.2f} GB/s; "
          f"16 threads of 1 MiB preads: {raw:.2f} GB/s (load {' '.join(load())})")
    raw = max(raw, dd)
    est = subprocess.run([PARTITA, "estimate", dk, "--ranks", "1", "--set", f"generate.stage={st}",
                          "--set", "generate.weights_from=nvme", "--set", f"generate.window={WINDOW}"],
                         cwd=ROOT, capture_output=True, text=True).stdout
    line = next((x for x in est.splitlines() if x.startswith("measured:")), "measured: (none)")
    engine = float(line.split("disk ")[1].split(" GB/s")[0]) if "disk " in line else 0.0
    print(f"  the I/O engine alone (partita estimate's probe: io_uring, 4 x 64 MiB in flight): {engine:.2f} GB/s "
          f"({100 * engine / raw:.0f}% of raw)")
    print("  estimate: " + line)
    for x in est.splitlines():
        if x.strip().startswith(("batch", "1 ", "8 ", "32 ", "64 ")) or "compute bounds" in x:
            print("  estimate: " + x.strip())
    print(f"  {'batch':>6} {'tokens/s':>10} {'s/pass':>9} {'read GB/s':>9} {'waiting':>9} {'peak RSS MiB':>12}")
    bound = None
    for B in batches:
        a, _ = generate(dk, f"zbig-{B}", B, "generate.weights_from=nvme", f"generate.stage={st}",
                        f"generate.window={WINDOW}")
        row, stall = stream_row(B, a)
        print(row + f"   ({100 * a['stream_read_gb_per_s'] / raw:.0f}% of raw; {int(a['passes'])} passes; load {' '.join(load())})")
        if bound is None and stall < 0.10:
            bound = B
    print(f"  compute bounds a pass (under 10% of it waiting for reads) from batch {bound if bound else '> ' + str(batches[-1])}")
    if os.environ.get("ZINF_KEEP") != "1":
        os.remove(st)
