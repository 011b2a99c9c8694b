"""partita_h5.py: reading Partita's HDF5 outputs for the analysis tools.

One concern: turn run.h5, checkpoints and weights files into plain numpy arrays,
Python values and deck entries, tolerating older files that lack some fields.
Used by plot_run.py, summary.py and inspect_ckpt.py (Debian's /usr/bin/python3,
h5py and numpy only).
"""
import os
import signal
import sys

import h5py
import numpy as np

# A tool piped into `head` (or anything that stops reading) ends quietly, as Unix
# tools do, instead of a BrokenPipeError traceback: every tool imports this module.
if hasattr(signal, "SIGPIPE"):
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

# Job-wide per-step columns of /metrics, in the order metrics.c writes them.
RUN_COLUMNS = ["step", "loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu", "step_time",
               "tokens", "comm_bytes_all_reduce", "comm_bytes_reduce_scatter", "comm_bytes_all_gather",
               "comm_wait", "gflops", "skipped", "ranks", "data_rows", "comm_bytes_all_to_all", "checkpoint_time"]
COMM_OPS = ["all_reduce", "reduce_scatter", "all_gather"]
# Names older run.h5 files used for the same figures.
OLD_NAMES = {"comm_bytes_allreduce": "comm_bytes_all_reduce", "comm_time": "comm_wait"}
MIB = 1024.0 * 1024.0


def die(msg, hint=None, code=2):
    """One clear message (and what to do next) on stderr, then exit."""
    print(f"error: {msg}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)
    sys.exit(code)


def open_h5(path):
    """Opens path read-only. File locking is off so that a live run (partita holds
    run.h5 open and flushes it every log interval) can be read."""
    if not os.path.exists(path):
        die(f"'{path}' does not exist", "give the path of a run.h5, checkpoint or weights file")
    try:
        try:
            return h5py.File(path, "r", locking=False)
        except (TypeError, ValueError):  # an h5py/HDF5 without the locking switch
            return h5py.File(path, "r")
    except OSError as e:
        die(f"cannot open '{path}' as HDF5: {e}", "is it a Partita output file (run.h5, ckpt/step-*.h5, final.h5)?")


def py(v):
    """An HDF5 attribute value as a plain Python value (str, int, float, list)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.ndarray):
        if v.shape == ():
            return py(v[()])
        return [py(x) for x in v.tolist()] if v.dtype.kind in "SOU" else v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def attr(obj, name, default=None):
    return py(obj.attrs[name]) if name in obj.attrs else default


# ---------------------------------------------------------------------------
# The deck: "[section]" and "key = value  # comment" lines.

def _split_comment(line):
    """Splits 'value  # comment' at the first '#' outside double quotes."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i], line[i + 1:].strip()
    return line, ""


def deck_entries(text):
    """[(section, key, value, comment)] for every key = value line of a deck."""
    out, section = [], ""
    for raw in (text or "").splitlines():
        body, comment = _split_comment(raw)
        body = body.strip()
        if not body:
            continue
        if body.startswith("[") and body.endswith("]"):
            section = body[1:-1].strip()
        elif "=" in body:
            k, v = body.split("=", 1)
            v = v.strip()
            if len(v) >= 2 and v[0] == v[-1] == '"':
                v = v[1:-1]
            out.append((section, k.strip(), v, comment))
    return out


def deck_get(text, section, key, default=None):
    for s, k, v, _ in deck_entries(text):
        if s == section and k == key:
            return v
    return default


def deck_compact(text, width=100):
    """The deck, one line per section, leaving out keys at their default value.
    Returns (lines, number of defaults left out)."""
    sections, order, hidden = {}, [], 0
    for s, k, v, comment in deck_entries(text):
        if comment == "default":
            hidden += 1
            continue
        if s not in sections:
            sections[s] = []
            order.append(s)
        sections[s].append(f"{k}={v if v != '' else chr(34) * 2}")
    lines = []
    for s in order:
        head, cur = f"[{s}]", f"[{s}]"
        for item in sections[s]:
            if len(cur) + 1 + len(item) > width and cur != head:
                lines.append(cur)
                cur = " " * len(head)
            cur += " " + item
        lines.append(cur)
    return lines, hidden


# ---------------------------------------------------------------------------
# run.h5

def read_run(path):
    """A run.h5 as {'path', 'attrs', 'deck', 'n', 'm': {column: float64 array},
    'rss': (n, ranks) array or None}. Columns the file lacks are absent from 'm';
    columns are cut to a common length (a live run may be mid-append)."""
    with open_h5(path) as f:
        if "metrics" not in f:
            die(f"'{path}' has no /metrics group: not a run.h5",
                "run.h5 is written to the run's out_dir by `partita train`")
        g = f["metrics"]
        m = {}
        for name in g:
            ds = g[name]
            # rank: the dimension scale of peak_rss_mb's ranks, not a per-step column
            if not isinstance(ds, h5py.Dataset) or name in ("peak_rss_mb", "rank"):
                continue
            m[OLD_NAMES.get(name, name)] = np.asarray(ds[()], dtype=np.float64).reshape(-1)
        rss = None
        if "peak_rss_mb" in g:
            rss = np.asarray(g["peak_rss_mb"][()], dtype=np.float64)
            if rss.ndim == 1:  # one rank: a 1-D series
                rss = rss[:, None]
        attrs = {k: py(v) for k, v in f.attrs.items()}
    lengths = [len(a) for a in m.values()] + ([rss.shape[0]] if rss is not None else [])
    n = min(lengths) if lengths else 0
    m = {k: a[:n] for k, a in m.items()}
    if "step" not in m:
        m["step"] = np.arange(1, n + 1, dtype=np.float64)
    if rss is not None:
        rss = rss[:n]
    return {"path": path, "attrs": attrs, "deck": attrs.get("deck", "") or "", "n": n, "m": m, "rss": rss}


def run_label(run):
    """The run's directory name, e.g. 'gpt-tiny' for runs/gpt-tiny/run.h5."""
    return os.path.basename(os.path.dirname(os.path.abspath(run["path"]))) or run["path"]


def run_name(run):
    """run.name from the deck, or None."""
    return deck_get(run["deck"], "run", "name")


def human_count(n):
    """124672 -> '125K', 124439808 -> '124M'."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            v = n / div
            return f"{v:.3g}{unit}"
    return str(int(n))


def run_title(run):
    """'0.12M params, 2 ranks, ZeRO-1, cpu': what the run was, from run.h5's attributes
    (the deck where an older file lacks them)."""
    a, deck = run["attrs"], run["deck"]
    parts = []
    if a.get("nparams"):
        parts.append(f"{human_count(float(a['nparams']))} params")
    else:
        layers, width = deck_get(deck, "model", "layers"), deck_get(deck, "model", "d_model")
        if layers and width:
            parts.append(f"L={layers} C={width}")
    ranks = a.get("ranks")
    if ranks is not None:
        parts.append(f"{ranks} rank{'s' if int(ranks) != 1 else ''}")
    stage = a.get("zero_stage", deck_get(deck, "zero", "stage"))
    if stage is not None:
        parts.append(f"ZeRO-{stage}")
    backend = None
    for tok in str(a.get("machine", "")).split():
        if tok.startswith("backend="):
            backend = tok.split("=", 1)[1]
    backend = backend or deck_get(deck, "run", "backend")
    if backend:
        parts.append(backend)
    return ", ".join(parts)


def checkpoint_steps(run):
    """Steps after which a checkpoint was written: the checkpoint_time column where
    run.h5 has it, else every [checkpoint] interval of the deck (and the last step)."""
    m = run["m"]
    if "checkpoint_time" in m:
        ct = m["checkpoint_time"]
        return m["step"][np.isfinite(ct) & (ct > 0)]
    try:
        every = int(deck_get(run["deck"], "checkpoint", "interval", "0") or 0)
    except ValueError:
        every = 0
    s = m["step"]
    if every <= 0 or s.size == 0:
        return s[:0]
    return s[(s % every == 0) | (s == s[-1])]


# ---------------------------------------------------------------------------
# Checkpoint checksums and tensor statistics.

_K0 = np.uint64(0x9E3779B97F4A7C15)
_K1 = np.uint64(0xBF58476D1CE4E5B9)
_K2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S32 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(32)


def checksum_part(x, first):
    """The order-independent checksum (ckpt.c) of the fp32 values x, which are the
    elements first, first+1, ... of their dataset: sum over i of
    mix64((i << 32) ^ bits(x_i)) mod 2^64, mix64 the splitmix64 finalizer."""
    b = np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    with np.errstate(over="ignore"):
        i = np.arange(first, first + b.size, dtype=np.uint64)
        z = ((i << _S32) ^ b) + _K0
        z = (z ^ (z >> _S30)) * _K1
        z = (z ^ (z >> _S27)) * _K2
        z ^= z >> _S31
        return int(np.sum(z, dtype=np.uint64))


def tensor_stats(ds, want_checksum=True, chunk_elems=1 << 22):
    """Reads a dataset in slabs along its first axis; returns {'n', 'l2', 'mean',
    'std', 'min', 'max', 'nonfinite', 'checksum'} (checksum None unless fp32).
    mean and std merge per-slab moments in float64 (Chan et al.), so they stay
    accurate for large tensors without holding a float64 copy."""
    shape = ds.shape or ()
    n = int(np.prod(shape)) if shape else 1
    st = {"n": n, "l2": float("nan"), "mean": float("nan"), "std": float("nan"), "min": float("nan"),
          "max": float("nan"), "nonfinite": 0, "checksum": None}
    fp32 = ds.dtype.kind == "f" and ds.dtype.itemsize == 4
    numeric = ds.dtype.kind in "fiub"
    if n == 0 or not numeric:
        if fp32 and want_checksum:
            st["checksum"] = 0
        return st
    row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    rows = shape[0] if shape else 1
    step = max(1, chunk_elems // max(row, 1))
    cnt, mean, m2, ss, lo, hi, csum, bad = 0, 0.0, 0.0, 0.0, np.inf, -np.inf, 0, 0
    for r0 in range(0, rows, step):
        part = ds[()] if not shape else ds[r0:min(rows, r0 + step)]
        if fp32 and want_checksum:
            csum = (csum + checksum_part(part, r0 * row)) & 0xFFFFFFFFFFFFFFFF
        a = np.asarray(part, dtype=np.float64).reshape(-1)
        fin = np.isfinite(a)
        if not fin.all():
            bad += int(a.size - fin.sum())
            a = a[fin]
        if a.size == 0:
            continue
        k = a.size
        mk = float(a.mean())
        d = a - mk
        m2k = float(np.dot(d, d))
        delta = mk - mean
        tot = cnt + k
        mean += delta * k / tot
        m2 += m2k + delta * delta * cnt * k / tot
        cnt = tot
        ss += float(np.dot(a, a))
        lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if cnt:
        st.update(l2=float(np.sqrt(ss)), mean=mean, std=float(np.sqrt(m2 / cnt)), min=lo, max=hi)
    st["nonfinite"] = bad
    if fp32 and want_checksum:
        st["checksum"] = csum
    return st


def natural_key(name):
    """Sorts h.2 before h.10."""
    import re
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def datasets_under(group):
    """Every dataset below group, as h5py Dataset objects in natural name order."""
    found = []
    group.visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=lambda d: natural_key(d.name))
