#!/usr/bin/env bash
# tests/gpu/check.sh: everything a GPU session checks, in one go (under 10 minutes).
#
#   bash tests/gpu/check.sh          from anywhere; works in the repository root
#
# 1. the GPU (nvidia-smi) and the toolchain (nvcc, gcc, g++, make, OpenBLAS);
# 2. builds build/test_kernels_gpu (kernels/cuda/cuda.mk; without make, the
#    same commands by hand) and runs it: every cuda kernel against the cpu
#    kernel on the same inputs, fp32 and bf16 modes, plus GEMM and attention timings;
# 3. compute-sanitizer memcheck (small shapes) and racecheck (attention), if
#    the tool is there and time is left (TRAIN_RESERVE seconds stay for 4);
# 4. the trainer (build/partita) on the cuda backend: with build/gpu-bundle
#    (tests/gpu/bundle.sh: MPICH, HDF5, OpenBLAS from Debian) for what this
#    machine lacks; the carried build/partita, else one rebuilt here; then
#    tiny deck cpu vs cuda fp32 and bf16 loss curves, ZeRO 0-3 at np=2 on the
#    one GPU (staged) and np=1 over NCCL vs np=1, 124M bf16 tokens/s and MFU;
#    generation on cuda: tiny greedy/sampled tokens equal to cpu's (fp32 and int8
#    weights), 124M bf16-weight decode tokens/s at batch 1, 8, 64 and prefill;
#    Deep Optimizer States: placements all-CPU, all-GPU, interleaved vs no offload,
#    and a 1.3B GPT's update time (moments on the host) with the model's stride vs
#    all on the CPU, measured and predicted;
# 5. a summary table, one row per check. Logs: build/gpu_check/ (and $OUT/
#    when $OUT is set: summary.txt, gpu_check_logs.tar.gz, two main logs).
# docs/gpu.md says how to run it, what each row means and the CHECK_* knobs.
# Exit: 0 all passed, 1 a test failed, 2 could not build, 77 no GPU.
set -u
cd "$(dirname "$0")/../.." || exit 2
LOG=build/gpu_check
mkdir -p "$LOG"
BUDGET=${CHECK_BUDGET_S:-560}   # seconds for the whole script; sanitizers use what is left
TRAIN_RESERVE=${CHECK_TRAIN_S:-240}   # ... after these seconds are set aside for section 4
T0=$SECONDS
left() { echo $(( BUDGET - (SECONDS - T0) )); }
say() { printf '%s\n' "$*"; }

gpu="?"; build="not run"; kt="not run"; memcheck="skipped"; racecheck="skipped"
gemm32="-"; gemm16="-"; attn="-"
rc=0

# ---------------------------------------------------------------- 1. GPU and tools
say "== GPU"
if command -v nvidia-smi >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader 2>&1 | head -1)
  say "nvidia-smi: $gpu"
else
  gpu="nvidia-smi not found"
  say "nvidia-smi: not found (no NVIDIA driver on this machine?)"
fi

CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$CUDA_HOME/bin/nvcc}
[ -x "$NVCC" ] || NVCC=$(command -v nvcc || true)
missing=()
[ -n "$NVCC" ] && [ -x "$NVCC" ] || missing+=("nvcc (CUDA toolkit; set CUDA_HOME or NVCC)")
command -v gcc >/dev/null 2>&1 || missing+=("gcc")
command -v g++ >/dev/null 2>&1 || missing+=("g++")
for lib in libcublas.so libcublasLt.so libcudart.so; do
  [ -e "$CUDA_HOME/lib64/$lib" ] || missing+=("$CUDA_HOME/lib64/$lib")
done
say "== toolchain"
[ -n "$NVCC" ] && [ -x "$NVCC" ] && say "nvcc: $NVCC ($("$NVCC" --version | tail -2 | head -1))"
BLAS_INC=${BLAS_INC:-/usr/include/x86_64-linux-gnu/openblas-pthread}
BLAS_LIB=${BLAS_LIB:-/usr/lib/x86_64-linux-gnu/openblas-openmp}
if [ -f "$BLAS_LIB/libopenblas.so.0" ] && [ -f "$BLAS_INC/cblas.h" ]; then
  blas=openblas
  say "cpu reference: OpenBLAS ($BLAS_LIB)"
else
  blas=fallback
  say "cpu reference: libopenblas MISSING ($BLAS_LIB/libopenblas.so.0 or $BLAS_INC/cblas.h);"
  say "  using the plain-loop sgemm of tests/gpu/fallback instead (slower, same results)."
  say "  hint: apt-get install libopenblas-dev libopenblas0-openmp for the real one"
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "MISSING: ${missing[*]}"
  build="not built: missing ${missing[*]}"
  rc=2
fi

# ---------------------------------------------------------------- 2. build and run the kernel test
JOBS=$(nproc 2>/dev/null || echo 4)
build_by_hand() {
  # The rules of kernels/cuda/cuda.mk, for a machine without make.
  local flags="-O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 -Xcompiler -Wall,-Wextra -Ikernels -Ikernels/cuda"
  local cflags="-O3 -march=native -fopenmp -std=c11 -Wall -Wextra -D_GNU_SOURCE -Ikernels"
  local objs=() pids=() f o binc blibs=""
  mkdir -p build/kernels/cuda build/gputest/cpu-$blas build/gputest/fallback
  if [ $blas = openblas ]; then
    binc="-I$BLAS_INC"; blibs="-L$BLAS_LIB -l:libopenblas.so.0 -Wl,-rpath,$BLAS_LIB"
  else
    binc="-Itests/gpu/fallback"
    gcc $cflags -c -o build/gputest/fallback/cblas_fallback.o tests/gpu/fallback/cblas_fallback.c || return 1
    objs+=(build/gputest/fallback/cblas_fallback.o)
  fi
  for f in kernels/cuda/*.cu; do
    o=build/kernels/cuda/$(basename "${f%.cu}").o; objs+=("$o")
    echo "$NVCC $flags -c -o $o $f"; "$NVCC" $flags -c -o "$o" "$f" & pids+=($!)
  done
  "$NVCC" $flags -c -o build/gputest/test_kernels_gpu.o tests/gpu/test_kernels_gpu.cu & pids+=($!)
  objs+=(build/gputest/test_kernels_gpu.o)
  for f in kernels/cpu/*.c; do
    o=build/gputest/cpu-$blas/$(basename "${f%.c}").o; objs+=("$o")
    gcc $cflags $binc -c -o "$o" "$f" & pids+=($!)
  done
  local ok=0
  for p in "${pids[@]}"; do wait "$p" || ok=1; done
  [ $ok = 0 ] || return 1
  g++ -o build/test_kernels_gpu "${objs[@]}" -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" \
      -lcudart -lcublas -lcublasLt -lstdc++ $blibs -fopenmp -lm
}

if [ $rc = 0 ]; then
  say "== build (log: $LOG/build.log)"
  if command -v make >/dev/null 2>&1; then
    timeout 300 make -f kernels/cuda/cuda.mk -j"$JOBS" CUDA_HOME="$CUDA_HOME" NVCC="$NVCC" \
      GPUTEST_BLAS=$blas build/test_kernels_gpu >"$LOG/build.log" 2>&1
  else
    say "make: not found: building with the same commands by hand"
    timeout 300 bash -c "$(declare -f build_by_hand); NVCC='$NVCC' CUDA_HOME='$CUDA_HOME' blas=$blas BLAS_INC=$BLAS_INC BLAS_LIB=$BLAS_LIB build_by_hand" >"$LOG/build.log" 2>&1
  fi
  brc=$?
  nwarn=$(grep -ci "warning" "$LOG/build.log")
  if [ $brc = 0 ] && [ -x build/test_kernels_gpu ]; then
    build="ok ($nwarn warning lines, $((SECONDS - T0)) s)"
  else
    build="FAILED (exit $brc)"
    say "build FAILED; the last lines of $LOG/build.log:"; tail -25 "$LOG/build.log"
    rc=2
  fi
  say "build: $build"
fi

if [ $rc = 0 ]; then
  say "== kernel test (log: $LOG/test_kernels_gpu.log)"
  timeout 240 build/test_kernels_gpu 2>&1 | tee "$LOG/test_kernels_gpu.log"
  trc=${PIPESTATUS[0]}
  res() { grep "^RESULT $1 " "$LOG/test_kernels_gpu.log" | awk '{print $3}' | tail -1; }
  if [ "$trc" = 77 ]; then
    kt="skipped: $(grep -m1 'no CUDA device' "$LOG/test_kernels_gpu.log")"
    rc=77
  elif [ "$trc" = 124 ]; then
    kt="TIMED OUT after 240 s ($(grep -c '^ok' "$LOG/test_kernels_gpu.log") passed before)"
    rc=1
  else
    p=$(res kernel_tests_passed); f=$(res kernel_tests_failed)
    if [ -n "$p" ]; then kt="$p passed, $f failed"; else kt="CRASHED (exit $trc): see the log"; fi
    [ "$trc" = 0 ] || rc=1
    gemm32=$(res gemm_tflops_fp32); gemm16=$(res gemm_tflops_bf16)
    a1=$(res attention_fwd_ms_bf16); a2=$(res attention_bwd_ms_bf16)
    [ -n "$a1" ] && attn="fwd $a1 ms, bwd $a2 ms"
    grep "^FAIL" "$LOG/test_kernels_gpu.log" | head -20
  fi
fi

# ---------------------------------------------------------------- 3. compute-sanitizer
# sanitize TOOL PATTERN WORD SECONDS [GROUP...]: runs the kernel test (--quick)
# under compute-sanitizer's TOOL for at most SECONDS; progress and the first
# matching report lines go to stderr, the row's verdict to stdout.
sanitize() {
  local tool=$1 pat=$2 word=$3 t=$4 m; shift 4
  [ "$t" -ge 30 ] || { echo "skipped: out of time"; return; }
  say "== compute-sanitizer $tool --quick $* (${t} s max, log: $LOG/$tool.log)" >&2
  timeout "$t" "$SAN" --tool "$tool" --error-exitcode 3 build/test_kernels_gpu --quick "$@" >"$LOG/$tool.log" 2>&1
  m=$?
  grep -m5 -E "$pat" "$LOG/$tool.log" >&2
  case $m in
    0) echo "clean" ;; 3) echo "$word: see $LOG/$tool.log" ;;
    124) echo "timed out after $t s (inconclusive)" ;; *) echo "exit $m: see $LOG/$tool.log" ;;
  esac
}
SAN=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer 2>/dev/null || true)
if [ $rc = 0 ] || [ $rc = 1 ]; then
  if [ -z "$SAN" ]; then
    memcheck="skipped: compute-sanitizer not found"; racecheck=$memcheck
  else
    memcheck=$(sanitize memcheck "Invalid|ERROR SUMMARY" "ERRORS" $(( ($(left) - TRAIN_RESERVE) / 2 )))
    racecheck=$(sanitize racecheck "hazard|RACECHECK SUMMARY" "HAZARDS" $(( $(left) - TRAIN_RESERVE )) attention)
    case "$memcheck$racecheck" in *ERRORS*|*HAZARDS*) rc=1 ;; esac
  fi
fi

# ---------------------------------------------------------------- 4. the trainer on the cuda backend
# Each run is `partita train` (np=1 directly, np=2 through the bundle's mpiexec)
# with its own out_dir under $LOG/runs/, its output in $LOG/train-NAME.log,
# under a `timeout` sized to what is left of BUDGET. Loss curves are read off
# the step lines ("step   12/40 | loss 4.1234 | ..."): losses print to 4
# decimals, a resolution of about 3e-5 relative at these losses.
say "== trainer on the cuda backend (logs: $LOG/train-*.log)"
TOL_FP32=${CHECK_TOL_FP32:-1e-4}    # cuda fp32 vs cpu, and every cuda fp32 run vs np=1
TOL_BF16=${CHECK_TOL_BF16:-3e-2}    # cuda bf16 vs cpu fp32
TINY_STEPS=${CHECK_TINY_STEPS:-40}  # at least 20: the tiny deck warms up for 20 steps
PERF_STEPS=${CHECK_PERF_STEPS:-20}
PERF_SKIP=3                         # warm-up steps left out of the medians
BUNDLE=build/gpu-bundle             # tests/gpu/bundle.sh makes it (on Debian), carried here
BENV=build/gpu-env                  # ... unpacked here
DATASHEET_BF16=989                  # H100/H200 SXM dense bf16 TFLOP/s
# CHECK_DRY_CPU=1: every "cuda" run on the cpu backend (bf16 -> fp32, a small 124M
# run): exercises this section, mpiexec and the parsing on a machine with no GPU.
DRY=${CHECK_DRY_CPU:-0}
if [ "$DRY" = 1 ]; then BK=cpu; BF=fp32; else BK=cuda; BF=bf16; fi
rm -rf "$LOG/runs" "$LOG"/train-*.log "$LOG/binary.log" "$LOG/rebuild.log" "$LOG/mpi-smoke.log" "$LOG/prep.log"
mkdir -p "$LOG/runs"
envrow="not set up"; binrow="not run"; fp32row="not run"; bf16row="not run"; ncclrow="not run"; perfrow="not run"
gentokrow="not run"; genperfrow="not run"; dosrow="not run"; dosperfrow="not run"
moerow="not run"; moeeprow="not run"; prmoerow="not run"
zrow=("not run" "not run" "not run" "not run")
note_fail() { if [ $rc = 0 ]; then rc=$1; fi; }

# >>> parsing: pure functions of log files (docs/gpu.md tries them on fabricated lines)
# curve LOG: "STEP LOSS" for every step line of a train log
curve() { awk '$1 == "step" && $3 == "|" && $4 == "loss" { split($2, s, "/"); print s[1] + 0, $5 }' "$1"; }
# cmp_curves REF RUN: "MAX_REL AT_STEP COMMON REF_STEPS RUN_STEPS" (relative to REF's loss)
cmp_curves() {
  awk 'NR == FNR { ref[$1] = $2; nr++; next }
       { nx++; if (!($1 in ref)) next; n++
         d = $2 - ref[$1]; if (d < 0) d = -d; r = ref[$1]; if (r < 0) r = -r
         rel = d / (r > 1e-30 ? r : 1e-30); if (n == 1 || rel > m) { m = rel; s = $1 } }
       END { printf "%.2g %d %d %d %d\n", m + 0, s + 0, n + 0, nr + 0, nx + 0 }' "$1" "$2"
}
# within X TOL: true when X <= TOL
within() { awk -v x="$1" -v t="$2" 'BEGIN { exit !(x + 0 <= t + 0) }'; }
# judge REF_CURVE RUN_CURVE TOL STEPS: sets row; true when both curves have STEPS steps and agree within TOL
judge() {
  local r m s n nr nx
  r=$(cmp_curves "$1" "$2"); read -r m s n nr nx <<<"$r"
  if [ "$n" -lt "$4" ] || [ "$nr" != "$nx" ]; then
    row="FAILED: curves of $nr and $nx steps, $n in common ($4 expected)"; return 1
  fi
  if within "$m" "$3"; then row="ok: max rel diff $m (step $s) over $n steps, tol $3"; return 0; fi
  row="FAILED: max rel diff $m at step $s over $n steps > tol $3"; return 1
}
# steps_col LOG SKIP COL: the tok/s or MFU column of the step lines after step SKIP
steps_col() {
  awk -v skip="$2" -v col="$3" '$1 == "step" && $4 == "loss" { split($2, s, "/"); if (s[1] + 0 <= skip) next
      for (i = 2; i <= NF; i++) {
        if (col == "tok/s" && $i == "tok/s") print $(i - 1)
        if (col == "MFU" && $(i - 1) == "MFU") { v = $i; sub(/%$/, "", v); print v } } }' "$1"
}
# median: of numbers, one a line ("-" for none)
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# gflop_per_token LOG: from the header's "compute: X GFLOP per token"
gflop_per_token() { awk '$1 == "compute:" { for (i = 2; i < NF; i++) if ($(i + 1) == "GFLOP" && $(i + 2) == "per") { print $i; exit } }' "$1"; }
# header_peak LOG: the peak (TFLOP/s) the header says MFU is against: "... peak X GFLOP/s|TFLOP/s"
header_peak() {
  awk '$1 == "step" && $4 == "loss" { exit }
       { for (i = 1; i + 2 <= NF; i++) if ($i == "peak" && $(i + 1) + 0 > 0) {
           v = $(i + 1); u = $(i + 2); if (u ~ /^GFLOP/) v /= 1000; else if (u ~ /^PFLOP/) v *= 1000
           printf "%.4g\n", v; exit } }' "$1"
}
# load_error OUTPUT: why a program did not start, from the dynamic loader's words ("" if not that)
load_error() {
  local miss ver
  miss=$(printf '%s\n' "$1" | sed -n 's/.*error while loading shared libraries: \([^:]*\):.*/\1/p' | sort -u | tr '\n' ' ')
  ver=$(printf '%s\n' "$1" | sed -n "s/.*version \`\([^']*\)' not found (required by \([^)]*\)).*/\1 (by \2)/p" | sort -u | head -4 | tr '\n' ' ')
  if [ -n "$miss" ]; then echo "cannot load ${miss% }"; elif [ -n "$ver" ]; then echo "needs ${ver% }"; fi
}
# <<< parsing

# ---- 4a. the environment: build/gpu-bundle unpacked into build/gpu-env
syslib() {   # syslib NAME: the machine itself has this library (not through LD_LIBRARY_PATH)
  local lc d
  lc=$(command -v ldconfig 2>/dev/null || echo /sbin/ldconfig)
  if [ -x "$lc" ] && "$lc" -p 2>/dev/null | awk -v n="$1" '$1 == n { f = 1 } END { exit !f }'; then return 0; fi
  for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64 /usr/lib /lib; do
    [ -e "$d/$1" ] && return 0
  done
  return 1
}
ver_lt() { [ "$1" != "$2" ] && [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1)" = "$1" ]; }
glibc_here=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
B=""
if [ -f "$BUNDLE/payload.tar.xz" ]; then
  stamp=$(cksum < "$BUNDLE/payload.tar.xz")
  if [ "$(cat "$BENV/.stamp" 2>/dev/null)" != "$stamp" ]; then
    rm -rf "$BENV"; mkdir -p "$BENV"
    if command -v xz >/dev/null 2>&1; then
      tar -C "$BENV" -xJf "$BUNDLE/payload.tar.xz"
    else
      python3 -c 'import sys, tarfile
t = tarfile.open(sys.argv[1])
t.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))' "$BUNDLE/payload.tar.xz" "$BENV"
    fi && echo "$stamp" > "$BENV/.stamp" || { envrow="FAILED to unpack $BUNDLE/payload.tar.xz (tar -xJ, or python3's tarfile)"; rm -rf "$BENV"; }
  fi
fi
if [ -f "$BENV/.stamp" ] && [ -d "$BENV/lib" ]; then
  B=$PWD/$BENV
  BUNDLE_OS="?"; BUNDLE_DATE="?"; BUNDLE_GLIBC_NEEDED="?"; BUNDLE_MARCH="?"
  # shellcheck disable=SC1091
  [ -f "$B/bundle.env" ] && . "$B/bundle.env"
  export PATH="$B/bin:$PATH"
  export LD_LIBRARY_PATH="$B/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # the gcc runtime (libstdc++, libgcc_s, libgomp) only where this machine lacks it
  rm -rf "$B/lib/gcc-missing"; mkdir -p "$B/lib/gcc-missing"; rtmiss=""
  for f in "$B"/lib/gcc/*; do
    [ -e "$f" ] || continue
    syslib "$(basename "$f")" || { ln -s "../gcc/$(basename "$f")" "$B/lib/gcc-missing/"; rtmiss="$rtmiss $(basename "$f")"; }
  done
  [ -n "$rtmiss" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$B/lib/gcc-missing"
  nlib=0; for f in "$B"/lib/*.so.*; do [ -e "$f" ] && nlib=$((nlib + 1)); done
  envrow="$nlib libs + mpiexec from $BUNDLE_OS ($BUNDLE_DATE); glibc: needs $BUNDLE_GLIBC_NEEDED, has ${glibc_here:-?}"
  [ -n "$rtmiss" ] && envrow="$envrow; gcc runtime from the bundle:$rtmiss"
  if [ -n "$glibc_here" ] && [ "$BUNDLE_GLIBC_NEEDED" != "?" ] && ver_lt "$glibc_here" "$BUNDLE_GLIBC_NEEDED"; then
    envrow="$envrow (TOO OLD: the bundle's libraries will not load)"
  fi
elif [ "$envrow" = "not set up" ]; then
  envrow="no $BUNDLE (make && bash tests/gpu/bundle.sh on Debian, then carry it): this machine's own MPI/HDF5/OpenBLAS, if any"
fi
say "environment: $envrow"
# the CUDA libraries: partita's RUNPATH names /usr/local/cuda/lib64 of the build machine
[ -d "$CUDA_HOME/lib64" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$CUDA_HOME/lib64"
# NCCL: the toolkit's, the system's, else python's nvidia-nccl-cu13 wheel
NCCL_LIB=""; NCCL_INC=""
for d in "$CUDA_HOME/lib64" "$CUDA_HOME/lib" /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib; do
  if [ -e "$d/libnccl.so.2" ]; then NCCL_LIB=$d; break; fi
done
if [ -z "$NCCL_LIB" ] && command -v python3 >/dev/null 2>&1; then
  NCCL_LIB=$(python3 -c 'import glob, os, sys
dirs = []
try:
    import nvidia.nccl as m
    dirs += list(getattr(m, "__path__", [])) or [os.path.dirname(m.__file__)]
except Exception:
    pass
dirs += [os.path.join(p, "nvidia") for p in sys.path if p]
for d in dirs:
    hits = sorted(glob.glob(os.path.join(d, "**", "libnccl.so*"), recursive=True))
    if hits:
        print(os.path.dirname(hits[0])); break' 2>/dev/null)
fi
for d in "${NCCL_LIB:+$NCCL_LIB/../include}" "$CUDA_HOME/include" "${B:+$B/include/nccl}"; do
  if [ -n "$d" ] && [ -f "$d/nccl.h" ]; then NCCL_INC=$(cd "$d" && pwd); break; fi
done
if [ -n "$NCCL_LIB" ]; then
  say "NCCL: $NCCL_LIB (nccl.h: ${NCCL_INC:-none})"
  case ":$LD_LIBRARY_PATH:" in *":$NCCL_LIB:"*) ;; *) export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$NCCL_LIB" ;; esac
else
  say "NCCL: libnccl.so.2 not found (toolkit, system, python nvidia-nccl-cu13)"
fi

# ---- 4b. a partita that runs: the carried build/partita, the bundle's copy, or one rebuilt here
P=""; why_bin=""; bin_out=""
try_bin() {   # try_bin BIN: true when `BIN version` runs; else why_bin says why
  local out r lerr miss
  out=$(timeout 60 "$1" version 2>&1); r=$?
  printf '+ %s version (exit %s)\n%s\n' "$1" "$r" "$out" >> "$LOG/binary.log"
  if [ $r = 0 ]; then bin_out=$(printf '%s\n' "$out" | grep -m1 partita); return 0; fi
  lerr=$(load_error "$out")
  if [ -n "$lerr" ]; then
    why_bin="$1: $lerr"
    case $lerr in *GLIBC_*) why_bin="$why_bin; this machine has glibc ${glibc_here:-?}" ;; esac
    if command -v ldd >/dev/null 2>&1; then   # the loader names the first missing library; ldd all of them
      ldd "$1" >> "$LOG/binary.log" 2>&1
      miss=$(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 == "not" {print $1}' | sort -u | tr '\n' ' ')
      [ -n "$miss" ] && why_bin="$1: missing ${miss% }"
    fi
  else
    case $r in
      132) why_bin="$1: illegal instruction (built with -march=native for ${BUNDLE_MARCH:-another cpu})" ;;
      124) why_bin="$1: 'version' timed out after 60 s" ;;
      126|127) why_bin="$1: cannot execute (exit $r): $(printf '%s\n' "$out" | tail -1 | cut -c1-100)" ;;
      *) why_bin="$1: exit $r: $(printf '%s\n' "$out" | grep -v '^\s*$' | tail -1 | cut -c1-120)" ;;
    esac
  fi
  return 1
}
# try_bin_rt BIN: try_bin, and once more with the bundle's gcc runtime first when the machine's is too old
try_bin_rt() {
  try_bin "$1" && return 0
  case $why_bin in
    *GLIBCXX_*|*CXXABI_*|*GCC_[0-9]*|*GOMP_*)
      if [ -n "$B" ] && [ -d "$B/lib/gcc" ]; then
        local save=$LD_LIBRARY_PATH w=$why_bin
        export LD_LIBRARY_PATH="$B/lib/gcc:$LD_LIBRARY_PATH"
        if try_bin "$1"; then binnote=" (with the bundle's gcc runtime: $w)"; return 0; fi
        export LD_LIBRARY_PATH="$save"
      fi ;;
  esac
  return 1
}
rebuild() {   # rebuild: build/partita here with make (or by hand), gcc, nvcc and the bundle's headers
  local t mk=() r
  t=$(( $(left) - 90 )); [ $t -gt 240 ] && t=240
  if [ $t -lt 30 ]; then why_rebuild="out of time"; return 1; fi
  command -v gcc >/dev/null 2>&1 || { why_rebuild="no gcc"; return 1; }
  [ -n "$NVCC" ] && [ -x "$NVCC" ] || { why_rebuild="no nvcc"; return 1; }
  local cc hinc hlib binc blib nccl_link=""
  if [ -n "$B" ] && [ -f "$B/include/mpich/mpi.h" ]; then
    cc="$B/bin/mpicc"; hinc=$B/include/hdf5; hlib=$B/lib; binc=$B/include/openblas; blib=$B/lib
  elif command -v mpicc.mpich >/dev/null 2>&1; then
    cc=mpicc.mpich; hinc=/usr/include/hdf5/mpich; hlib=/usr/lib/x86_64-linux-gnu/hdf5/mpich; binc=$BLAS_INC; blib=$BLAS_LIB
  else
    why_rebuild="no MPI headers (no mpicc.mpich; carry $BUNDLE)"; return 1
  fi
  [ -f "$hinc/hdf5.h" ] || { why_rebuild="no $hinc/hdf5.h"; return 1; }
  [ -f "$binc/cblas.h" ] || { why_rebuild="no $binc/cblas.h"; return 1; }
  # NCCL outside the toolkit (python's wheel): its headers and a link name for -lnccl
  local nccl=0
  if [ -n "$NCCL_LIB" ] && [ -n "$NCCL_INC" ]; then
    nccl=1
    if [ ! -e "$NCCL_LIB/libnccl.so" ]; then
      nccl_link=$PWD/$LOG/nccl-link; mkdir -p "$nccl_link"; ln -sf "$NCCL_LIB/libnccl.so.2" "$nccl_link/libnccl.so"
    fi
    cc="$cc -isystem $NCCL_INC -L${nccl_link:-$NCCL_LIB} -Wl,-rpath,$NCCL_LIB"
  fi
  # objects from another machine (-march=native there) are not reused
  rm -f build/partita build/src/*.o build/src/infer/*.o build/kernels/cpu/*.o
  say "rebuilding build/partita here (${t} s max, log: $LOG/rebuild.log)"
  if [ "${CHECK_NO_MAKE:-0}" != 1 ] && command -v make >/dev/null 2>&1; then
    mk=(make -j"$JOBS" build/partita CUDA=1 NCCL="$nccl" NVCC="$NVCC" CUDA_HOME="$CUDA_HOME" CC="$cc"
        HDF5_INC="$hinc" HDF5_LIB="$hlib" BLAS_INC="$binc" BLAS_LIB="$blib")
    echo "+ ${mk[*]}" > "$LOG/rebuild.log"
    timeout "$t" "${mk[@]}" >> "$LOG/rebuild.log" 2>&1; r=$?
  else
    echo "make: not found: the Makefile's commands by hand" > "$LOG/rebuild.log"
    NVCC="$NVCC" CUDA_HOME="$CUDA_HOME" timeout "$t" bash -c "$(declare -f rebuild_by_hand); rebuild_by_hand \"\$@\"" _ "$cc" "$hinc" "$hlib" "$binc" "$blib" "$nccl" \
      >> "$LOG/rebuild.log" 2>&1; r=$?
  fi
  if [ $r != 0 ] || [ ! -x build/partita ]; then
    why_rebuild=$(grep -m1 -E 'error|undefined reference|not found' "$LOG/rebuild.log" || tail -1 "$LOG/rebuild.log")
    why_rebuild="build failed (exit $r): $(printf '%s' "$why_rebuild" | cut -c1-120) (log: $LOG/rebuild.log)"
    return 1
  fi
  # kept aside: a build/partita found here by a later run is then always a carried one
  mkdir -p "$(dirname "$REBUILT")" && mv -f build/partita "$REBUILT"
}
rebuild_by_hand() {   # CC HDF5_INC HDF5_LIB BLAS_INC BLAS_LIB NCCL(0/1): the Makefile's rules for build/partita
  local cc=$1 cflags objs=() pids=() f o ok=0 nl=""
  [ "$6" = 1 ] && nl=-lnccl
  cflags="-O3 -march=native -std=c11 -fopenmp -Wall -Wextra -D_GNU_SOURCE -Isrc -Isrc/infer -Ikernels -I$2 -I$4 -DPARTITA_CUDA"
  [ "$6" = 1 ] && cflags="$cflags -DPARTITA_NCCL -isystem $CUDA_HOME/include"
  for f in src/*.c src/infer/*.c kernels/cpu/*.c; do
    o=build/${f%.c}.o; objs+=("$o"); mkdir -p "$(dirname "$o")"
    echo "$cc $cflags -c -o $o $f"; $cc $cflags -c -o "$o" "$f" & pids+=($!)
  done
  for f in kernels/cuda/*.cu; do
    o=build/${f%.cu}.o; objs+=("$o"); mkdir -p "$(dirname "$o")"
    [ -f "$o" ] && [ "$o" -nt "$f" ] && continue
    echo "$NVCC ... -c -o $o $f"
    "$NVCC" -O3 -std=c++17 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
      -Ikernels -Ikernels/cuda -c -o "$o" "$f" & pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || ok=1; done
  [ $ok = 0 ] || return 1
  $cc $cflags -o build/partita "${objs[@]}" -L"$3" -Wl,-rpath,"$3" -lhdf5 -L"$5" -l:libopenblas.so.0 -Wl,-rpath,"$5" -lm \
    -L"$CUDA_HOME/lib64" -Wl,-rpath,"$CUDA_HOME/lib64" -lcudart -lcublas -lcublasLt -lstdc++ ${nl:+"$nl"}
}
binnote=""; rebuilt=0; why_rebuild=""
REBUILT=build/gpu-rebuilt/partita   # where a partita built here goes
pick_binary() {   # sets P and binrow
  local cands=() c whys=""
  [ -x build/partita ] && cands+=(build/partita)
  if [ -n "$B" ] && [ -x "$B/partita" ] && ! cmp -s build/partita "$B/partita" 2>/dev/null; then cands+=("$BENV/partita"); fi
  for c in "${cands[@]}"; do
    if try_bin_rt "$c"; then
      P=$c; binrow="$c runs$binnote: $bin_out"
      [ -n "$whys" ] && binrow="$binrow (not:$whys)"
      [ -x build/partita ] && [ -n "$B" ] && [ "$c" = build/partita ] && ! cmp -s build/partita "$B/partita" \
        && binrow="$binrow; differs from the bundle's copy"
      return 0
    fi
    whys="$whys $why_bin;"
  done
  [ ${#cands[@]} = 0 ] && whys=" no build/partita and no $BUNDLE;"
  say "no runnable partita:$whys"
  if [ "${CHECK_NO_REBUILD:-0}" = 1 ]; then why_rebuild="CHECK_NO_REBUILD=1"; binrow="not run:$whys rebuild: $why_rebuild"; return 1; fi
  if rebuild && try_bin_rt "$REBUILT"; then
    P=$REBUILT; rebuilt=1; binrow="rebuilt here$binnote: $bin_out (prebuilt:$whys)"; return 0
  fi
  [ -z "$why_rebuild" ] && why_rebuild=$why_bin
  binrow="not run:$whys rebuilt here: $why_rebuild"
  return 1
}
if [ "${CHECK_FORCE_REBUILD:-0}" = 1 ]; then
  if rebuild && try_bin_rt "$REBUILT"; then P=$REBUILT; rebuilt=1; binrow="rebuilt here (CHECK_FORCE_REBUILD=1)$binnote: $bin_out"
  else binrow="not run: rebuild (CHECK_FORCE_REBUILD=1): ${why_rebuild:-$why_bin}"; fi
else
  pick_binary
fi
say "partita: $binrow"

# ---- 4c. GPU or not; mpiexec
gpu_ok=1; gpu_why=""
if [ $rc = 77 ]; then gpu_ok=0; gpu_why="no CUDA device (${kt#skipped: })"
elif ! nvidia-smi -L 2>/dev/null | grep -q '^GPU' && [[ "$kt" != *passed* ]]; then gpu_ok=0; gpu_why="no GPU seen ($gpu)"; fi
case $bin_out in
  *" 0 CUDA device"*) gpu_ok=0; gpu_why="partita sees 0 CUDA devices: $(printf '%s' "$bin_out" | sed 's/.*0 CUDA device(s) here:* *//; s/)$//')" ;;
esac
if [ "$DRY" = 1 ]; then gpu_ok=1; say "CHECK_DRY_CPU=1: the cuda runs run on the cpu backend (fp32)"; fi
MPIEXEC=""
for m in "${B:+$B/bin/mpiexec}" mpiexec.mpich mpiexec.hydra; do
  [ -n "$m" ] && command -v "$m" >/dev/null 2>&1 && { MPIEXEC=$(command -v "$m"); break; }
done

# ---- 4d. the runs
trc=0
trun() {   # trun NAME CAP KEEP NP ARGS...: `partita train ARGS` on NP ranks; timeout min(CAP, left - KEEP); sets trc
  local name=$1 cap=$2 keep=$3 np=$4 t s lg=$LOG/train-$1.log
  shift 4
  t=$(( $(left) - keep )); [ $t -gt "$cap" ] && t=$cap
  rm -rf "$LOG/runs/$name"
  if [ $t -lt 20 ]; then echo "not run: out of time ($(left) s left)" > "$lg"; trc=125; say "  $name: not run, out of time"; return; fi
  local cmd=("$P" train "$@" --set run.out_dir="$LOG/runs/$name")
  [ "$np" -gt 1 ] && cmd=("$MPIEXEC" -launcher fork -np "$np" "${cmd[@]}")
  echo "+ timeout $t ${cmd[*]}" > "$lg"
  s=$SECONDS
  timeout -k 10 "$t" "${cmd[@]}" >> "$lg" 2>&1; trc=$?
  echo "+ exit $trc after $((SECONDS - s)) s" >> "$lg"
  curve "$lg" > "$LOG/runs/$name.curve"
  say "  $name: exit $trc, $((SECONDS - s)) s, $(wc -l < "$LOG/runs/$name.curve") steps$(backend_of "$lg")"
}
backend_of() { local b; b=$(grep -m1 '^backend' "$1"); [ -n "$b" ] && echo " ($b)"; }
run_fail() {   # run_fail NAME RC: the row for a run that did not finish
  local lg=$LOG/train-$1.log e
  case $2 in
    125) echo "not run: out of time"; return ;;
    124|137) echo "TIMED OUT (log: $lg)"; return ;;
  esac
  e=$(grep -m1 -E '^error:|Fatal error|error while loading|Illegal instruction|Segmentation fault|terminate called|CUDA error|NCCL' "$lg" | cut -c1-110)
  echo "FAILED (exit $2): ${e:-see $lg}"
}
ran_cuda() {   # ran_cuda NAME: false when the header names a backend other than cuda
  local b; b=$(grep -m1 '^backend' "$LOG/train-$1.log")
  [ "$DRY" = 1 ] || [ -z "$b" ] || [[ "$b" == *cuda* ]]
}
# compare REF NAME TOL: the row of run NAME (trc) against the finished run REF
compare() {
  if [ "$trc" != 0 ]; then row=$(run_fail "$2" "$trc"); [ "$trc" = 125 ] || note_fail 1; return; fi
  if ! ran_cuda "$2"; then row="FAILED: ran on $(grep -m1 '^backend' "$LOG/train-$2.log")"; note_fail 1; return; fi
  if [ ! -s "$LOG/runs/$1.curve" ]; then row="ran ($(wc -l < "$LOG/runs/$2.curve") steps); no $1 curve to compare"; return; fi
  judge "$LOG/runs/$1.curve" "$LOG/runs/$2.curve" "$3" "$TINY_STEPS" || note_fail 1
}

# grun NAME CAP KEEP ARGS...: `partita generate ARGS` on one rank, out_dir $LOG/runs/NAME; sets grc
grun() {
  local name=$1 cap=$2 keep=$3 t s lg=$LOG/gen-$1.log
  shift 3
  t=$(( $(left) - keep )); [ $t -gt "$cap" ] && t=$cap
  rm -rf "$LOG/runs/$name"
  if [ $t -lt 20 ]; then echo "not run: out of time" > "$lg"; grc=125; say "  $name: not run, out of time"; return; fi
  echo "+ timeout $t $P generate $*" > "$lg"
  s=$SECONDS
  timeout -k 10 "$t" "$P" generate "$@" --set run.out_dir="$LOG/runs/$name" >> "$lg" 2>&1; grc=$?
  echo "+ exit $grc after $((SECONDS - s)) s" >> "$lg"
  say "  $name: exit $grc, $((SECONDS - s)) s ($(grep -m1 '^generate: .* backend' "$lg"))"
}
# gen_requests DIR TEXTFILE: decode1 (1 x 16-token prompt, 64 new), decode8, decode64, prefill (512-token prompt, 1 new)
gen_requests() {
  python3 - "$1" "$2" <<'PY'
import json, os, sys
d, src = sys.argv[1:3]
text = open(src, "rb").read().decode("latin-1") * 4
def write(name, reqs):
    with open(os.path.join(d, name), "w") as f:
        for r in reqs: f.write(json.dumps(r) + "\n")
for n in (1, 8, 64):
    write(f"decode{n}.jsonl", [{"id": f"d{i}", "prompt": text[37 * i:37 * i + 16], "max_tokens": 64} for i in range(n)])
write("prefill.jsonl", [{"id": "p0", "prompt": text[:512], "max_tokens": 1}])
PY
}
# gen_rate CASE: tokens/s of run gen-CASE from its gen.jsonl (decode: tokens after the first over first token -> last finish)
gen_rate() {
  python3 - "$LOG/runs/gen-$1/gen.jsonl" "$1" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
if sys.argv[2] == "prefill":
    r = rs[0]; print(f"{len(r['prompt_tokens']) / (r['first_token'] - r['arrival']):.0f}")
else:
    print(f"{sum(len(r['tokens']) - 1 for r in rs) / (max(r['finish'] for r in rs) - min(r['first_token'] for r in rs)):.0f}")
PY
}

if [ -z "$P" ]; then
  r="not run: no runnable partita (see the partita row)"
  fp32row=$r; bf16row=$r; ncclrow=$r; perfrow=$r; zrow=("$r" "$r" "$r" "$r"); gentokrow=$r; genperfrow=$r
  moerow=$r; moeeprow=$r; prmoerow=$r
  note_fail 2
else
  CORPUS=$LOG/corpus.h5
  "$P" prep "$CORPUS" README.md docs src kernels inputs/*.deck > "$LOG/prep.log" 2>&1; prc=$?   # not inputs/*.jsonl: prep reads JSONL as {"text": ...} records
  say "corpus: $(tail -1 "$LOG/prep.log")"
  TINY=(inputs/gpt-tiny.deck --set data.train="$CORPUS" --set run.seed=1337 --set train.steps="$TINY_STEPS"
        --set train.log_interval=1 --set train.save_weights=false --set checkpoint.interval=0 --set checkpoint.resume=none)
  CUDA32=(--set run.backend="$BK" --set train.precision=fp32)
  # the cpu reference on one thread: a tiny model (~1 s); OpenMP threads on a busy machine crawl
  CPU=(--set run.backend=cpu --set train.precision=fp32 --set run.threads=1)
  [ "$DRY" = 1 ] && TINY+=(--set run.threads=1)
  cpu_ok=0
  if [ $prc != 0 ]; then
    r="not run: partita prep failed (exit $prc, log: $LOG/prep.log)"
    fp32row=$r; bf16row=$r; ncclrow=$r; perfrow=$r; zrow=("$r" "$r" "$r" "$r"); moerow=$r; moeeprow=$r; prmoerow=$r
    note_fail 1
  else
    trun tiny-cpu 120 150 1 "${TINY[@]}" "${CPU[@]}"
    if [ $trc = 132 ] && [ $rebuilt = 0 ]; then   # -march=native of another cpu, met only in the kernels
      say "  tiny-cpu: illegal instruction: rebuilding partita for this cpu"
      if rebuild && try_bin_rt "$REBUILT"; then
        P=$REBUILT; rebuilt=1; binrow="rebuilt here: the prebuilt one died of an illegal instruction (-march=${BUNDLE_MARCH:-native})"
        trun tiny-cpu 120 150 1 "${TINY[@]}" "${CPU[@]}"
      else binrow="$binrow; illegal instruction in training, rebuild failed: $why_rebuild"; P=""; note_fail 2; fi
    fi
    [ $trc = 0 ] && [ -s "$LOG/runs/tiny-cpu.curve" ] && cpu_ok=1
    cpunote="cpu reference: $(if [ $cpu_ok = 1 ]; then echo "ok, $(wc -l < "$LOG/runs/tiny-cpu.curve") steps, loss $(head -1 "$LOG/runs/tiny-cpu.curve" | cut -d' ' -f2) -> $(tail -1 "$LOG/runs/tiny-cpu.curve" | cut -d' ' -f2)"; else run_fail tiny-cpu $trc; fi)"
    [ $cpu_ok = 1 ] || note_fail 1
    if [ $gpu_ok = 0 ] || [ -z "$P" ]; then
      if [ -z "$P" ]; then r="not run: no runnable partita (see the partita row)"; else r="not run: $gpu_why"; fi
      fp32row="$r; $cpunote"; bf16row=$r; ncclrow=$r; perfrow=$r; zrow=("$r" "$r" "$r" "$r"); gentokrow=$r; genperfrow=$r
      moerow=$r; moeeprow=$r; prmoerow=$r
    else
      # np=1 reference on the staged path, so that the nccl row below is NCCL's own
      trun tiny-cuda-fp32 60 150 1 "${TINY[@]}" "${CUDA32[@]}" --set comm.device_path=staged
      ref32=$trc
      compare tiny-cpu tiny-cuda-fp32 "$TOL_FP32"; fp32row=$row
      [ $cpu_ok = 1 ] || fp32row="$fp32row; $cpunote"
      trun tiny-cuda-bf16 60 150 1 "${TINY[@]}" --set run.backend="$BK" --set train.precision="$BF" --set comm.device_path=staged
      compare tiny-cpu tiny-cuda-bf16 "$TOL_BF16"; bf16row=$row
      [ $ref32 = 0 ] || rm -f "$LOG/runs/tiny-cuda-fp32.curve"   # nothing to compare against
      # ZeRO 0-3 at np=2, both ranks on the one GPU, collectives staged through the host
      smoke=""
      if [ -z "$MPIEXEC" ]; then smoke="no mpiexec (carry $BUNDLE)"
      else
        timeout 60 "$MPIEXEC" -launcher fork -np 2 "$P" version > "$LOG/mpi-smoke.log" 2>&1 \
          || smoke="'mpiexec -launcher fork -np 2 partita version' failed: $(grep -v '^\s*$' "$LOG/mpi-smoke.log" | tail -1 | cut -c1-100)"
      fi
      for z in 0 1 2 3; do
        if [ -n "$smoke" ]; then zrow[z]="not run: $smoke"; note_fail 1; continue; fi
        trun zero$z-np2 60 110 2 "${TINY[@]}" "${CUDA32[@]}" --set comm.device_path=staged --set zero.stage=$z
        compare tiny-cuda-fp32 zero$z-np2 "$TOL_FP32"; zrow[z]=$row
      done
      trun nccl-np1 60 110 1 "${TINY[@]}" "${CUDA32[@]}" --set comm.device_path=nccl
      compare tiny-cuda-fp32 nccl-np1 "$TOL_FP32"; ncclrow=$row
      # MoE (issue 13): the tiny deck's layer 1 becomes an MoE layer of 4 experts. Top-2 with drops on
      # cuda vs cpu; ep = 2 at np = 2 (both ranks on the one GPU, staged all-to-alls, ZeRO-2) vs np = 1;
      # PR-MoE with the jittered gate (routing and jitter on the host, the rest on the device) vs cpu.
      MOE=(--set moe.experts=4 --set moe.top_k=2 --set moe.capacity_factor=1.0 --set moe.min_capacity=2 --set moe.aux_loss=0.1)
      PRMOE=(--set moe.experts=4 --set moe.residual=true --set moe.noisy_gate=jitter --set moe.min_capacity=2 --set moe.aux_loss=0.05)
      trun moe-cpu 60 110 1 "${TINY[@]}" "${MOE[@]}" "${CPU[@]}"; mc=$trc
      trun moe-cuda 60 110 1 "${TINY[@]}" "${MOE[@]}" "${CUDA32[@]}" --set comm.device_path=staged
      compare moe-cpu moe-cuda "$TOL_FP32"; moerow=$row
      [ $mc = 0 ] || { moerow="$moerow; cpu reference: $(run_fail moe-cpu $mc)"; note_fail 1; }
      if [ -n "$smoke" ]; then moeeprow="not run: $smoke"; note_fail 1
      else
        trun moe-ep2-np2 60 110 2 "${TINY[@]}" "${MOE[@]}" "${CUDA32[@]}" --set comm.device_path=staged \
          --set parallel.ep=2 --set zero.stage=2
        compare moe-cuda moe-ep2-np2 "$TOL_FP32"; moeeprow=$row
      fi
      trun prmoe-cpu 60 110 1 "${TINY[@]}" "${PRMOE[@]}" "${CPU[@]}"; mc=$trc
      trun prmoe-cuda 60 110 1 "${TINY[@]}" "${PRMOE[@]}" "${CUDA32[@]}" --set comm.device_path=staged
      compare prmoe-cpu prmoe-cuda "$TOL_FP32"; prmoerow=$row
      [ $mc = 0 ] || { prmoerow="$prmoerow; cpu reference: $(run_fail prmoe-cpu $mc)"; note_fail 1; }
      # 124M, B=8 T=1024 bf16
      DRYPERF=(); [ "$DRY" = 1 ] && DRYPERF=(--set train.seq_len=128 --set train.micro_batch=1 --set train.batch=1 --set train.steps=6 --set run.threads=1)
      trun perf-124m 200 3 1 inputs/gpt2-124m.deck --set data.train="$CORPUS" --set run.backend="$BK" \
        --set train.precision="$BF" --set model.seq_len=1024 --set train.seq_len=1024 --set train.micro_batch=8 \
        --set train.batch=8 --set train.steps="$PERF_STEPS" --set train.log_interval=1 --set train.save_weights=false \
        --set checkpoint.interval=0 --set checkpoint.resume=none ${DRYPERF[@]+"${DRYPERF[@]}"}
      lg=$LOG/train-perf-124m.log
      if [ $trc != 0 ]; then perfrow=$(run_fail perf-124m $trc); [ $trc = 125 ] || note_fail 1
      elif ! ran_cuda perf-124m; then perfrow="FAILED: ran on $(grep -m1 '^backend' "$lg")"; note_fail 1
      else
        n=$(steps_col "$lg" $PERF_SKIP tok/s | wc -l)
        tps=$(steps_col "$lg" $PERF_SKIP tok/s | median)
        mfu=$(steps_col "$lg" $PERF_SKIP MFU | median)
        gpt=$(gflop_per_token "$lg"); hp=$(header_peak "$lg")
        perfrow="median of $n steps: $tps tok/s, MFU $mfu% (vs partita's peak ${hp:-?} TFLOP/s)"
        if [ -n "$gpt" ] && [ "$tps" != "-" ]; then
          perfrow="$perfrow; $(awk -v t="$tps" -v g="$gpt" -v k="${gemm16:--}" -v d=$DATASHEET_BF16 'BEGIN {
            f = t * g / 1000; s = sprintf("%.0f TFLOP/s model", f)
            if (k + 0 > 0) s = s sprintf(", %.1f%% of the kernel test bf16 GEMM %s", 100 * f / k, k)
            printf "%s, %.1f%% of %d (datasheet)", s, 100 * f / d, d }')"
        fi
        [ "$n" -gt 0 ] || { perfrow="FAILED: no step lines after step $PERF_SKIP (log: $lg)"; note_fail 1; }
      fi
      # generation through the same forward: tiny greedy + sampled tokens on cuda == cpu (fp32 and int8
      # weights); 124M decode at batch 1, 8, 64 and a 512-token prefill with bf16 weights
      trun gen-tiny 60 100 1 "${TINY[@]}" "${CPU[@]}" --set train.save_weights=true
      gw=$LOG/runs/gen-tiny/final.h5
      if [ $trc != 0 ] || [ ! -f "$gw" ]; then gentokrow=$(run_fail gen-tiny $trc); note_fail 1
      else
        python3 -c 'import json,sys
for i, p in enumerate(["The cuda backend", "Partita trains", "a", "The input deck"]): print(json.dumps({"id": f"g{i}", "prompt": p, "max_tokens": 24}))
print(json.dumps({"id": "s0", "prompt": "ZeRO", "max_tokens": 24, "temperature": 0.9, "top_k": 40, "seed": 3}))' > "$LOG/gen-tiny.jsonl"
        gentokrow=""
        for wd in fp32 int8; do
          G=(inputs/generate-tiny.deck --set generate.weights="$gw" --set generate.requests="$LOG/gen-tiny.jsonl"
             --set generate.weights_dtype=$wd --set generate.token_budget=8)
          grun tok-cpu-$wd 60 80 "${G[@]}" --set run.backend=cpu --set run.threads=1; c=$grc
          grun tok-cuda-$wd 60 80 "${G[@]}" --set run.backend="$BK"; g=$grc
          if [ $c != 0 ] || [ $g != 0 ]; then gentokrow="$gentokrow $wd: FAILED (exit cpu $c, cuda $g; logs $LOG/gen-tok-*.log);"; note_fail 1
          elif cmp -s <(python3 -c 'import json,sys; print(sorted((r["id"], r["tokens"]) for r in map(json.loads, open(sys.argv[1]))))' "$LOG/runs/tok-cpu-$wd/gen.jsonl") \
                      <(python3 -c 'import json,sys; print(sorted((r["id"], r["tokens"]) for r in map(json.loads, open(sys.argv[1]))))' "$LOG/runs/tok-cuda-$wd/gen.jsonl"); then
            gentokrow="$gentokrow $wd: ok, 5 of 5 requests equal;"
          else gentokrow="$gentokrow $wd: FAILED, tokens differ (see $LOG/runs/tok-*-$wd/gen.jsonl);"; note_fail 1; fi
        done
      fi
      trun gen-w124 120 60 1 inputs/gpt2-124m.deck --set data.train="$CORPUS" --set run.backend="$BK" --set train.steps=1 --set optimizer.warmup=0 \
        --set train.seq_len=64 --set train.micro_batch=1 --set train.batch=1 --set train.eval_batches=1 \
        --set checkpoint.interval=0 --set checkpoint.resume=none
      if [ $trc != 0 ] || [ ! -f "$LOG/runs/gen-w124/init.h5" ]; then genperfrow=$(run_fail gen-w124 $trc); note_fail 1
      else
        gen_requests "$LOG" README.md
        genperfrow="bf16 weights, tokens/s:"
        for case in decode1 decode8 decode64 prefill; do
          grun gen-$case 90 30 inputs/gpt2-124m.deck --set generate.weights="$LOG/runs/gen-w124/init.h5" \
            --set generate.requests="$LOG/$case.jsonl" --set run.backend="$BK" --set generate.weights_dtype=bf16 \
            --set generate.kv_blocks=1024 --set generate.kv_block=16 --set generate.token_budget=512 --set generate.max_batch=64
          if [ $grc = 0 ]; then genperfrow="$genperfrow $case $(gen_rate $case);"
          else genperfrow="$genperfrow $case FAILED (exit $grc, $LOG/gen-gen-$case.log);"; [ $grc = 125 ] || note_fail 1; fi
        done
      fi
      # Deep Optimizer States (issue 14): the moments in pinned host memory; GPU/CPU subgroup placements
      # (all CPU, all GPU, every 3rd on the GPU) follow the run without offload within 1e-6; then a 1.3B
      # GPT whose moments (10 GB) stay off the device: the update time with the model's stride vs all on
      # the CPU (dos = false), each with the model's prediction (the log's "offload: update" line).
      dosrow=""
      for st in 0 1 3; do
        trun dos-s$st 60 80 1 "${TINY[@]}" "${CUDA32[@]}" --set offload.optimizer=host --set offload.subgroup_mb=0.05 \
          --set offload.dos_stride=$st
        compare tiny-cuda-fp32 dos-s$st 1e-6; dosrow="$dosrow stride $st: $row;"
      done
      dosperfrow=""
      for d in true false; do
        trun dos-1b3-$d 150 20 1 inputs/gpt2-124m.deck --set data.train="$CORPUS" --set run.backend="$BK" \
          --set train.precision="$BF" --set model.layers=24 --set model.d_model=2048 --set model.heads=16 \
          --set train.seq_len=256 --set train.micro_batch=1 --set train.batch=1 --set train.steps=4 \
          --set train.save_weights=false --set train.eval_interval=0 --set checkpoint.interval=0 \
          --set checkpoint.resume=none --set offload.optimizer=host --set offload.subgroup_mb=256 --set offload.dos=$d
        lg=$LOG/train-dos-1b3-$d.log
        if [ $trc != 0 ]; then dosperfrow="$dosperfrow dos=$d $(run_fail dos-1b3-$d $trc);"; [ $trc = 125 ] || note_fail 1
        else dosperfrow="$dosperfrow dos=$d: $(grep -m1 '^offload: update' "$lg" | sed 's/^offload: //; s/ on average over [0-9]* steps (rank 0)//');"; fi
      done
    fi
  fi
fi

# ---------------------------------------------------------------- 5. summary
{
  say ""
  say "== summary ($((SECONDS - T0)) s)"
  printf '%-40s %s\n' "GPU" "$gpu"
  printf '%-40s %s\n' "build (cuda.mk, cpu ref: $blas)" "$build"
  printf '%-40s %s\n' "kernel tests (cuda vs cpu, fp32+bf16)" "$kt"
  printf '%-40s %s\n' "compute-sanitizer memcheck" "$memcheck"
  printf '%-40s %s\n' "compute-sanitizer racecheck (attention)" "$racecheck"
  printf '%-40s %s\n' "GEMM 4096^3 fp32 (TFLOP/s)" "${gemm32:--}"
  printf '%-40s %s\n' "GEMM 4096^3 bf16 (TFLOP/s)" "${gemm16:--}"
  printf '%-40s %s\n' "attention 124M shape (bf16 mode)" "$attn"
  printf '%-40s %s\n' "trainer environment ($BUNDLE)" "$envrow"
  printf '%-40s %s\n' "partita binary" "$binrow"
  printf '%-40s %s\n' "tiny cuda fp32 vs cpu (tol $TOL_FP32)" "$fp32row"
  printf '%-40s %s\n' "tiny cuda bf16 vs cpu fp32 (tol $TOL_BF16)" "$bf16row"
  for z in 0 1 2 3; do
    printf '%-40s %s\n' "ZeRO-$z np=2 staged vs np=1 (tol $TOL_FP32)" "${zrow[$z]}"
  done
  printf '%-40s %s\n' "np=1 device_path=nccl vs np=1 staged" "$ncclrow"
  printf '%-40s %s\n' "MoE top-2 cuda fp32 vs cpu (tol $TOL_FP32)" "$moerow"
  printf '%-40s %s\n' "MoE ep=2 np=2 staged ZeRO-2 vs np=1" "$moeeprow"
  printf '%-40s %s\n' "PR-MoE jitter cuda fp32 vs cpu" "$prmoerow"
  printf '%-40s %s\n' "124M B=8 T=1024 bf16 tok/s, MFU" "$perfrow"
  printf '%-40s %s\n' "generate tiny: cuda tokens == cpu" "$gentokrow"
  printf '%-40s %s\n' "generate 124M cuda (b1, b8, b64, prefill)" "$genperfrow"
  printf '%-40s %s\n' "DOS placements vs no offload (tol 1e-6)" "$dosrow"
  printf '%-40s %s\n' "DOS 1.3B update s/step: model vs all-CPU" "$dosperfrow"
} | tee "$LOG/summary.txt"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  # $OUT takes 8 files at most: the summary, every log in one tarball, two logs as they are
  cp "$LOG/summary.txt" "$OUT"/ 2>/dev/null || true
  tar -C "$(dirname "$LOG")" -czf "$OUT/gpu_check_logs.tar.gz" --exclude=corpus.h5 "$(basename "$LOG")" 2>/dev/null \
    || { rm -f "$OUT/gpu_check_logs.tar.gz"   # no gzip: uncompressed
         tar -C "$(dirname "$LOG")" -cf "$OUT/gpu_check_logs.tar" --exclude=corpus.h5 "$(basename "$LOG")" 2>/dev/null || true; }
  for f in test_kernels_gpu.log train-perf-124m.log; do [ -f "$LOG/$f" ] && cp "$LOG/$f" "$OUT"/; done
fi
exit $rc
