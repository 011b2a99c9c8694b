#!/usr/bin/python3
"""Every command README.md shows runs as written, in order, on a fresh copy of the
tree, so the README cannot drift from the program.

How: the tracked and untracked (not ignored) files of this checkout are copied to a
temporary directory, with build/ (so nothing is recompiled but version.o); the
```sh blocks of README.md are run there line by line with bash, in README order,
and each must exit 0; the ```python blocks run with /usr/bin/python3. Output blocks
(plain ```) are not commands.

What the test changes, and why (everything else runs exactly as written):
- A block preceded by `<!-- readme-test: skip: REASON -->` is skipped (the GPU
  commands: tests/gpu/check.sh runs them where there is a GPU).
- A block preceded by `<!-- readme-test: whole -->` runs as one bash script rather
  than line by line (the serve block: a server started with `&`, queried, stopped).
- `make deps` is left out of `make deps all demo` (it installs Debian packages and
  fetches data/gpt2 and data/gcide; the suite runs where they are installed): the
  copy gets data/gpt2 from this checkout's data/ and a 2 MB head of
  data/gcide/gcide.txt, so the BPE commands run in seconds. Lines that need them
  are skipped (and say so) where they are absent. `make test` is skipped (this is
  part of it). `make` gets CUDA=0 when this checkout's build has no cuda backend.
- Short steps: with README_TEST_STEPS=N (default 60; 0 = as written) every
  `partita train` line that does not set train.steps gets `--set train.steps=N`,
  and `make demo` gets DEMO_ARGS="--set train.steps=N" (the Makefile's hook).
  Lines that set train.steps themselves run as written.
"""
import os
import re
import shutil
import subprocess
import sys
import time

from common import ROOT, check, finish, tmpdir

STEPS = int(os.environ.get("README_TEST_STEPS", "60"))
PY = "/usr/bin/python3"


def blocks(text):
    """[(line number, language, [lines], skip reason or None)] of the fenced blocks."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        lang, start, body = m.group(1), i + 1, []
        prev = lines[i - 1].strip() if i > 0 else ""
        skip = re.match(r"<!--\s*readme-test:\s*skip:?\s*(.*?)\s*-->", prev)
        if re.match(r"<!--\s*readme-test:\s*whole\s*-->", prev):
            lang = "sh-whole"
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        out.append((start + 1, lang, body, skip.group(1) if skip else None))
    return out


def commands(first, body):
    """[(line number, command)]: one per line, backslash continuations joined, blanks and comments dropped."""
    out, cur, at = [], "", None
    for k, ln in enumerate(body):
        if at is None:
            at = first + k
        if ln.rstrip().endswith("\\"):
            cur += ln.rstrip()[:-1] + " "
            continue
        cur += ln
        if cur.strip() and not cur.strip().startswith("#"):
            out.append((at, cur.strip()))
        cur, at = "", None
    return out


def copy_tree(dst):
    """The files git would clone (tracked + untracked not ignored), then build/, mtimes kept."""
    files = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for f in files:
        if not f or f.split("/")[0] in ("data", "runs", "build", "build-asan"):
            continue
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src) and not os.path.islink(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f), follow_symlinks=False)
    shutil.copytree(os.path.join(ROOT, "build"), os.path.join(dst, "build"), symlinks=True,
                    ignore=shutil.ignore_patterns("test-logs", "*.log"))


def has_cuda_build():
    try:
        return "-DPARTITA_CUDA" in open(os.path.join(ROOT, "build", ".flags")).read()
    except OSError:
        return False


def prepare_data(dst):
    """data/gpt2 from this checkout (make deps' download) and a 2 MB head of gcide.txt."""
    have = set()
    src = os.path.join(ROOT, "data")
    os.makedirs(os.path.join(dst, "data"), exist_ok=True)
    if os.path.isfile(os.path.join(src, "gpt2", "vocab.bpe")):
        shutil.copytree(os.path.join(src, "gpt2"), os.path.join(dst, "data", "gpt2"))
        have.add("gpt2")
    g = os.path.join(src, "gcide", "gcide.txt")
    if os.path.isfile(g):
        os.makedirs(os.path.join(dst, "data", "gcide"))
        with open(g, "rb") as f, open(os.path.join(dst, "data", "gcide", "gcide.txt"), "wb") as o:
            o.write(f.read(2 << 20))
        have.add("gcide")
    return have


def rewrite(cmd, have):
    """The command to run, or (None, why) to skip it."""
    if re.match(r"^make\b.*\btest\b", cmd) and "deps" not in cmd:
        return None, "make test: this test is part of it"
    if cmd.startswith("make"):
        cmd = re.sub(r"\bdeps\b\s*", "", cmd)
        if not has_cuda_build():
            cmd = cmd.replace("make", "make CUDA=0", 1)
        if STEPS and "demo" in cmd:
            cmd += f' DEMO_ARGS="--set train.steps={STEPS}"'
    if ("gcide" in cmd and "gcide" not in have) or ("gpt2" in cmd and "gpt2" not in have):
        return None, "needs data/gcide or data/gpt2 (make deps)"
    if STEPS and re.search(r"partita train\b", cmd) and "train.steps" not in cmd:
        cmd = re.sub(r"(partita train \S+)", rf"\1 --set train.steps={STEPS}", cmd, count=1)
    return cmd, None


def main():
    readme = open(os.path.join(ROOT, "README.md")).read()
    work = tmpdir("readme")
    copy_tree(work)
    have = prepare_data(work)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PARTITA", None)
    total, ran = time.time(), 0
    for first, lang, body, skip in blocks(readme):
        if lang not in ("sh", "sh-whole", "python"):
            continue
        if skip:
            print(f"skip README.md:{first}: block ({skip})")
            continue
        if lang == "python":
            script = os.path.join(work, f"readme-{first}.py")
            with open(script, "w") as f:
                f.write("\n".join(body) + "\n")
            t0 = time.time()
            p = subprocess.run([PY, script], cwd=work, env=env, capture_output=True, text=True, timeout=300)
            check(p.returncode == 0, f"README.md:{first}: python block", f"{time.time() - t0:.1f} s; "
                  + (p.stderr.strip().splitlines() or [""])[-1][-200:])
            ran += 1
            continue
        if lang == "sh-whole":
            t0 = time.time()
            p = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(body)], cwd=work, env=env,
                               capture_output=True, text=True, timeout=300)
            detail = f"{time.time() - t0:.1f} s"
            if p.returncode != 0:
                detail += f"; rc {p.returncode}: " + " | ".join((p.stderr.strip() or p.stdout.strip()).splitlines()[-4:])[-400:]
            check(p.returncode == 0, f"README.md:{first}: block run whole", detail)
            ran += 1
            continue
        for line, cmd in commands(first, body):
            run_cmd, why = rewrite(cmd, have)
            if run_cmd is None:
                print(f"skip README.md:{line}: {cmd[:80]} ({why})")
                continue
            t0 = time.time()
            p = subprocess.run(["bash", "-o", "pipefail", "-c", run_cmd], cwd=work, env=env, capture_output=True,
                               text=True, timeout=600)
            ok = p.returncode == 0 or (p.returncode == 141 and "| head" in run_cmd)
            detail = f"{time.time() - t0:.1f} s"
            if not ok:
                detail += f"; rc {p.returncode}: " + " | ".join((p.stderr.strip() or p.stdout.strip()).splitlines()[-4:])[-400:]
            check(ok, f"README.md:{line}: {cmd[:100]}", detail)
            ran += 1
    check(ran >= 20, "the README's commands were found and run", f"{ran} commands/blocks in {time.time() - total:.0f} s")
    if not any("FAIL" in x for x in []):
        shutil.rmtree(work, ignore_errors=True)
    finish()


if __name__ == "__main__":
    main()
