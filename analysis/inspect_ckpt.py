#!/usr/bin/python3
"""inspect_ckpt.py: statistics and checksums of a checkpoint or weights file.

    analysis/inspect_ckpt.py ckpt/step-000100.h5     /meta, then every dataset under
                                                     /params and /optim, checksums verified
    analysis/inspect_ckpt.py runs/gpt-tiny/final.h5  a weights file: attributes and statistics
    analysis/inspect_ckpt.py FILE.h5 --deck          also print the stored deck

For each dataset: shape, dtype, L2 norm, mean, std, min, max (float64 over the
finite elements; a count of NaN/Inf follows if there are any). A checkpoint (one
with /meta) stores "checksum:/params/<name>" per dataset; each is recomputed
(the order-independent sum of ckpt.c) and reported ok / MISMATCH / MISSING.
A checkpoint of format 2 also stores meta_checksum over every other attribute
of /meta (step, optim_t, the deck, the per-dataset checksums...); it is
recomputed here exactly as ckpt.c does (see src/ckpt.h) and reported ok or
MISMATCH; format 1 files have none (reported, not a failure).
Exit status: 0 all good, 1 a checksum mismatches or is missing, 2 the file
cannot be read as a checkpoint or weights file.
"""
import argparse
import os
import struct
import sys

import h5py
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from partita_h5 import datasets_under, deck_compact, die, natural_key, open_h5, py, tensor_stats  # noqa: E402

CHECKSUM_PREFIX = "checksum:"
META_CHECKSUM = "meta_checksum"
FNV_OFFSET, FNV_PRIME, MASK64 = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def fnv(h, data):
    for b in data:
        h = ((h ^ b) * FNV_PRIME) & MASK64
    return h


def meta_digest(meta):
    """ckpt.c's meta_checksum: FNV-1a 64 over every attribute of /meta but
    meta_checksum, in byte order of the names, each as u64le(len(name)) name
    tag u64le(len(value)) value. Returns (digest, None) or (None, why)."""
    h = FNV_OFFSET
    names = sorted((n for n in meta.attrs if n != META_CHECKSUM), key=lambda n: n.encode("utf-8"))
    for name in names:
        aid = meta.attrs.get_id(name)
        dt, shape = aid.dtype, aid.shape
        if shape is None or int(np.prod(shape)) != 1:
            return None, f"attribute '{name}' is not one value (shape {shape})"
        raw = np.asarray(meta.attrs[name]).reshape(-1)[0]
        if h5py.check_string_dtype(dt) is not None:
            tag = b"s"
            value = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
            value = value.split(b"\0", 1)[0]       # C reads strings to their first NUL
        elif dt.kind == "i" and dt.itemsize <= 8:
            tag, value = b"i", struct.pack("<q", int(raw))
        elif dt.kind == "u" and dt.itemsize <= 8:
            tag, value = b"u", struct.pack("<Q", int(raw))
        elif dt.kind == "f" and dt.itemsize <= 8:
            tag, value = b"f", struct.pack("<d", float(raw))
        else:
            return None, f"attribute '{name}' is of type {dt}, not a number or a string"
        key = name.encode("utf-8")
        h = fnv(h, struct.pack("<Q", len(key)) + key + tag + struct.pack("<Q", len(value)) + value)
    return h, None


FORMATS = 3     # the newest checkpoint format this script reads


def check_index(f, meta):
    """(ok, text): format 3's /meta index ("name offset numel" per tensor, packed in table order) against /params."""
    if "index" not in meta.attrs:
        return True, "none (format 1-2)"
    lines = str(py(meta.attrs["index"])).splitlines()
    at = 0
    for ln in lines:
        parts = ln.split()
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            return False, f"line '{ln[:80]}' is not 'name offset numel'"
        name, off, n = parts[0], int(parts[1]), int(parts[2])
        ds = f.get(f"params/{name}")
        if off != at or ds is None or not isinstance(ds, h5py.Dataset) or ds.size != n:
            return False, f"entry {name} (offset {off}, {n} elements) does not match /params/{name}"
        at += n
    return True, f"ok, {len(lines)} tensors, {at:,} elements in the flat layout"


def check_meta(meta):
    """(ok, text): /meta's checksum verdict."""
    if "format_version" in meta.attrs and int(py(meta.attrs["format_version"])) > FORMATS:
        return False, (f"format_version {int(py(meta.attrs['format_version']))} is newer than this script reads "
                       f"(formats 1 to {FORMATS})")
    if META_CHECKSUM not in meta.attrs:
        if "format_version" in meta.attrs and int(py(meta.attrs["format_version"])) >= 2:
            return False, "MISSING (format 2 stores one)"
        return True, "none stored (format 1: /meta is not covered)"
    want = int(py(meta.attrs[META_CHECKSUM])) & MASK64
    got, why = meta_digest(meta)
    if got is None:
        return False, f"cannot be computed: {why}"
    if got != want:
        return False, f"MISMATCH (stored {want:016x}, computed {got:016x}): an attribute of /meta was changed after the write"
    return True, "ok"


def show_attrs(obj, title, show_deck):
    """Prints the non-checksum attributes of obj; the deck as a compact summary."""
    items = sorted(((k, py(v)) for k, v in obj.attrs.items() if not k.startswith(CHECKSUM_PREFIX) and k != "index"),
                   key=lambda kv: natural_key(kv[0]))
    print(f"{title}:")
    if not items:
        print("  (none)")
    deck = None
    for k, v in items:
        if k == "deck":
            deck = v
            continue
        print(f"  {k:<18} {v}")
    if deck:
        if show_deck:
            print("  deck:")
            print("\n".join("    " + l for l in str(deck).rstrip().splitlines()))
        else:
            lines, hidden = deck_compact(str(deck))
            print(f"  deck ({hidden} keys at their default not shown; --deck prints all):")
            print("\n".join("    " + l for l in lines))


def fmt_g(x):
    return f"{x:11.4e}" if x == x else f"{'-':>11}"


def main():
    ap = argparse.ArgumentParser(description="Statistics and checksums of a Partita checkpoint or weights file.")
    ap.add_argument("file", help="a checkpoint (ckpt/step-NNNNNN.h5) or weights file (init.h5, final.h5)")
    ap.add_argument("--deck", action="store_true", help="print the whole stored deck")
    args = ap.parse_args()

    with open_h5(args.file) as f:
        if "params" not in f:
            die(f"'{args.file}' has no /params group: not a checkpoint or weights file",
                "run.h5 is read by summary.py and plot_run.py; checkpoints are <out_dir>/ckpt/step-*.h5")
        meta = f["meta"] if "meta" in f else None
        kind = "checkpoint" if meta is not None else "weights file"
        print(f"{kind} {args.file}")
        if meta is not None:
            show_attrs(meta, "meta", args.deck)
        if len(f.attrs) or meta is None:
            show_attrs(f, "attributes", args.deck)

        groups = ["params"] + (["optim"] if "optim" in f else [])
        stored = {}
        if meta is not None:
            stored = {k[len(CHECKSUM_PREFIX):]: int(py(v)) & 0xFFFFFFFFFFFFFFFF
                      for k, v in meta.attrs.items() if k.startswith(CHECKSUM_PREFIX)}
        datasets = [d for g in groups for d in datasets_under(f[g])]
        w = max([len(d.name) for d in datasets] + [8])
        head = (f"  {'dataset':<{w}} {'shape':<14} {'dtype':<8} {'l2 norm':>11} {'mean':>11} {'std':>11} "
                f"{'min':>11} {'max':>11}")
        print(f"datasets ({len(datasets)}):")
        print(head + ("  checksum" if meta is not None else ""))
        bad, nelem = [], 0
        for d in datasets:
            st = tensor_stats(d, want_checksum=meta is not None)
            nelem += st["n"]
            shape = "(" + ", ".join(str(s) for s in d.shape) + ")"
            line = (f"  {d.name:<{w}} {shape:<14} {str(d.dtype):<8} {fmt_g(st['l2'])} {fmt_g(st['mean'])} "
                    f"{fmt_g(st['std'])} {fmt_g(st['min'])} {fmt_g(st['max'])}")
            if meta is not None:
                want = stored.pop(d.name, None)
                if want is None:
                    verdict = "MISSING (no stored checksum)"
                elif st["checksum"] is None:
                    verdict = f"MISMATCH (dtype {d.dtype}, checksums cover fp32 only)"
                elif st["checksum"] != want:
                    verdict = f"MISMATCH (stored {want:016x}, read {st['checksum']:016x})"
                else:
                    verdict = "ok"
                if verdict != "ok":
                    bad.append(d.name)
                line += "  " + verdict
            if st["nonfinite"]:
                line += f"  [{st['nonfinite']} NaN/Inf]"
            print(line)
        print(f"{len(datasets)} datasets, {nelem:,} elements")
        if meta is None:
            return 0
        meta_ok, meta_text = check_meta(meta)
        print(f"meta checksum: {meta_text}")
        if not meta_ok:
            bad.append("/meta")
        index_ok, index_text = check_index(f, meta)
        print(f"index: {index_text}")
        if not index_ok:
            bad.append("/meta index")
        # A checksum with no dataset: a tensor the writer vouched for is gone.
        for name in sorted(stored, key=natural_key):
            print(f"  {name:<{w}} MISSING dataset (a checksum is stored for it)")
            bad.append(name)
        if bad:
            print(f"checksums: FAILED: {len(bad)} of {len(datasets)} datasets bad: " + ", ".join(bad))
            print("hint: the file was damaged after it was written; resume from an earlier checkpoint")
            return 1
        print(f"checksums: ok, {len(datasets)} of {len(datasets)} datasets verified")
        return 0


if __name__ == "__main__":
    sys.exit(main())
