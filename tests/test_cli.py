#!/usr/bin/python3
"""Errors found after the deck parses still name the deck line and stop every
rank cleanly: missing token file, cuda without a cuda backend, bf16 on cpu,
a token outside the model vocabulary, an unknown command."""
import os

from common import MPIEXEC, check, finish, licenses_tokens, run, tmpdir, write_deck

d = tmpdir("cli")
tok = licenses_tokens(d)
base = f"""[run]
out_dir = {d}/out
[model]
vocab = 257
layers = 1
d_model = 16
heads = 2
seq_len = 16
[data]
train = {tok}
[train]
steps = 2
"""


def err_case(what, deck_text, args, must, np=None):
    deck = write_deck(os.path.join(d, "case.deck"), deck_text)
    p = run(["train", deck] + args, np=np, check_rc=False)
    text = p.stderr + p.stdout
    ok = p.returncode != 0 and all(m in text for m in must)
    check(ok, what, f"rc {p.returncode}: " + (p.stderr.strip().splitlines() or ["(no stderr)"])[0][:140])
    return text


err_case("missing token file names the deck line and key",
         base.replace(f"train = {tok}", "train = nowhere.h5"), [], ["case.deck:10", "[data] train", "nowhere.h5", "hint:"])
t = err_case("backend = cuda without a cuda backend is a clear error",
             base + "[run]\n".replace("[run]", "") , ["--set", "run.backend=cuda"], ["--set", "cuda", "hint:"], np=2)
check(t.count("error:") == 1, "the error is printed once at np=2", f"{t.count('error:')} times")
check("no CUDA device" in t or "built without the cuda backend" in t,
      "the cuda error says why (no device here, or no cuda backend in the build)")
p = run(["train", write_deck(os.path.join(d, "ok.deck"), base), "--set", "train.steps=1"], np=1)
check("backend auto -> cpu" in p.stdout, "backend = auto falls back to cpu and says why",
      next((l for l in p.stdout.splitlines() if "backend" in l), ""))
err_case("precision = bf16 on cpu is refused", base, ["--set", "train.precision=bf16", "--set", "run.overwrite=true"],
         ["bf16", "cuda"])
err_case("model.vocab smaller than the token file's vocabulary names the key",
         base.replace("vocab = 257", "vocab = 100"), ["--set", "run.overwrite=true"], ["case.deck:4", "model.vocab", "257"])
p = run(["frobnicate"], check_rc=False)
check(p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr, "unknown command is refused with usage")
p = run(["prep", os.path.join(d, "x.h5"), "/nonexistent/text"], check_rc=False)
check(p.returncode != 0 and "/nonexistent/text" in p.stderr, "prep names an unreadable input")
p = run(["version"])
check("partita" in p.stdout, "version prints")
if "cuda with" in p.stdout:
    # cuBLAS is opened when a device starts, not linked: loading libcublasLt costs
    # every process (cpu runs, each test rank) ~0.5 s of CPU (kernels/cuda/cublas.cu).
    import subprocess  # noqa: E402
    from common import PARTITA  # noqa: E402
    libs = subprocess.run(["ldd", PARTITA], capture_output=True, text=True).stdout
    check("libcublas" not in libs and "libcudart" in libs, "the cuda build does not link cuBLAS (ldd)",
          " ".join(l.split()[0] for l in libs.splitlines() if "cu" in l))
    check(", cuBLAS;" in p.stdout, "version opens cuBLAS at run time and says so", p.stdout.strip())
# ---------------------------------------------------------------------------
# Issue 18: help, did-you-mean, unknown options, check's file/backend checks and
# summary, overwrite refusal, the progress line, run.h5 for tools, prep from stdin.
import re  # noqa: E402

import h5py  # noqa: E402
import numpy as np  # noqa: E402

p = run(["help", "train"])
check("usage:" in p.stdout and "[train] " not in p.stdout and "micro_batch" in p.stdout and "= 4" in p.stdout,
      "`partita help train` shows the usage and the deck keys with their defaults")
p2 = run(["train", "--help"])
check(p2.returncode == 0 and p2.stdout == p.stdout, "`partita train --help` prints the same")
p = run(["trian", "x.deck"], check_rc=False)
check(p.returncode == 2 and "did you mean `partita train`" in p.stderr, "a mistyped command gets a did-you-mean",
      p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "")
ok_deck = os.path.join(d, "ok.deck")
p = run(["train", ok_deck, "--stpes", "5"], check_rc=False)
check(p.returncode == 2 and "unknown option '--stpes'" in p.stderr and "hint:" in p.stderr, "an unknown option is refused",
      p.stderr.strip()[:120])
p = run(["check", "--keys", "model"])
check("dropout" in p.stdout and "init_std" in p.stdout and "[train]" not in p.stdout, "check --keys SECTION lists one section")
p = run(["check", ok_deck])
last = p.stdout.strip().splitlines()[-1]
check(p.returncode == 0 and last.startswith("check: ") and " ok " in last, "check ends with one summary line", last)
bad = write_deck(os.path.join(d, "bad.deck"), base.replace(f"train = {tok}", "train = nowhere.h5")
                 + "[generate]\nweights = " + tok + ".txt\n")
open(tok + ".txt", "w").write("not hdf5")
p = run(["check", bad], check_rc=False)
check(p.returncode == 2 and "nowhere.h5" in p.stderr and "not an HDF5 file" in p.stderr
      and p.stdout.strip().splitlines()[-1].endswith("2 problems (above)"),
      "check names a missing token file and a weights file that is not HDF5, and counts them",
      p.stdout.strip().splitlines()[-1])
p = run(["check", ok_deck, "--set", "run.backend=cuda"], check_rc=False)
check(p.returncode == 2 and "cuda" in p.stderr, "check says when the backend asked for is not available")
p = run(["ckpt", "info", os.path.join(d, "nope.h5")], check_rc=False)
q = run(["prep", os.path.join(d, "x.h5"), "/nonexistent/text"], check_rc=False)
check("MPI_Abort" not in p.stderr + q.stderr and "Abort(" not in q.stderr and q.returncode == 1,
      "one-process commands report errors without MPI_Abort noise", q.stderr.strip().splitlines()[-1])

# Overwrite: the ok run above wrote {d}/out/run.h5 and final.h5, without checkpoints.
p = run(["train", ok_deck, "--set", "train.steps=1"], np=2, check_rc=False)
check(p.returncode == 2 and f"{d}/out" in p.stderr and "overwrite = true" in p.stderr,
      "train refuses to overwrite an earlier run without a checkpoint, naming the directory and [run] overwrite",
      (p.stderr.strip().splitlines() or [""])[0][:140])
p = run(["train", ok_deck, "--set", "train.steps=6", "--set", "train.log_interval=3", "--set", "run.overwrite=true"], np=2)
lines = [l for l in p.stdout.splitlines() if l.startswith("step ") and "tok/s" in l]
check(len(lines) == 2 and all(re.search(r"\| elapsed \d+:\d\d:\d\d \| mem \d+ MiB \| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", l)
                              for l in lines), "progress lines end with elapsed time, memory in use and a timestamp",
      lines[-1][-60:] if lines else "none")

with h5py.File(f"{d}/out/run.h5", "r") as f:
    m = f["metrics"]
    check(m["step"].dtype == np.int64 and m["tokens"].dtype == np.int64 and list(m["step"][:]) == [1, 2, 3, 4, 5, 6],
          "step and tokens are int64", f"{m['step'].dtype}, {m['tokens'].dtype}")
    missing = [k for k in m if k != "rank" and not ("units" in m[k].attrs and "description" in m[k].attrs)]
    check(not missing, "every metric has units and a description", ",".join(missing))
    check("fraction" in m["mfu"].attrs["description"] and m["mfu"].attrs["units"] == "1", "mfu says it is a fraction")
    # dimension scales, as xarray/h5netcdf reads them: step on every column, (step, rank) on peak_rss_mb
    dims_ok = all(m[k].dims[0].keys() == ["step"] for k in m if k not in ("step", "rank"))
    rss = m["peak_rss_mb"]
    check(dims_ok and h5py.h5ds.is_scale(m["step"].id) and rss.dims[1].keys() == ["rank"] and list(rss.dims[1][0][:]) == [0, 1],
          "step and rank are dimension scales attached to every column", str([rss.dims[0].keys(), rss.dims[1].keys()]))
    a = f.attrs
    check(all(k in a for k in ("start_time", "partita_version", "hosts")) and "git" in str(a["partita_version"]),
          "run.h5 records the start time, the version (git describe) and the hosts", str(a.get("partita_version")))
p = run(["train", ok_deck, "--set", "train.steps=2", "--set", "run.overwrite=true"], np=1, env={"SLURM_JOB_ID": "4242"})
with h5py.File(f"{d}/out/run.h5", "r") as f:
    check(str(f.attrs.get("slurm_job_id")) == "4242", "and the Slurm job id where there is one", str(f.attrs.get("slurm_job_id")))

# prep from standard input: text, and JSON lines with --jsonl, equal to the same from a file
txt = "stdin document one\nsecond line\n"
with open(os.path.join(d, "in.txt"), "w") as f:
    f.write(txt)
import subprocess  # noqa: E402
from common import PARTITA, ROOT  # noqa: E402
sp_ = subprocess.run([PARTITA, "prep", os.path.join(d, "stdin.h5"), "-"], input=txt, text=True, capture_output=True,
                     cwd=ROOT)
run(["prep", os.path.join(d, "file.h5"), os.path.join(d, "in.txt")])
with h5py.File(os.path.join(d, "stdin.h5")) as a, h5py.File(os.path.join(d, "file.h5")) as b:
    same = list(a["tokens"][:]) == list(b["tokens"][:])
check(sp_.returncode == 0 and same and not os.path.exists(os.path.join(d, "stdin.h5.stdin")),
      "prep - reads standard input (the same tokens as from a file; its copy removed)", sp_.stdout.strip()[-80:])
jl = '{"text": "a"}\n{"text": "bc", "meta": 1}\n'
sp_ = subprocess.run([MPIEXEC, "-np", "2", PARTITA, "prep", "--jsonl", os.path.join(d, "jl.h5"), "-"], input=jl,
                     text=True, capture_output=True, cwd=ROOT)
with h5py.File(os.path.join(d, "jl.h5")) as a:
    toks = list(a["tokens"][:])
    docs = int(a["tokens"].attrs["documents"])
check(sp_.returncode == 0 and docs == 2 and toks == [97, 256, 98, 99, 256], "prep --jsonl - takes JSON lines from stdin",
      f"{docs} documents, {toks}")

finish()
