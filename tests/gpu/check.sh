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
#    the tool is there and time is left;
# 4. TODO sections for what needs the trainer on the cuda backend;
# 5. a summary table. Logs: build/gpu_check/ (and $OUT/ when $OUT is set).
# Exit: 0 all passed, 1 a test failed, 2 could not build, 77 no GPU.
set -u
cd "$(dirname "$0")/../.." || exit 2
LOG=build/gpu_check
mkdir -p "$LOG"
BUDGET=${CHECK_BUDGET_S:-560}   # seconds for the whole script; sanitizers use what is left
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
SAN=$(command -v compute-sanitizer || ls "$CUDA_HOME"/bin/compute-sanitizer 2>/dev/null || true)
if [ $rc = 0 ] || [ $rc = 1 ]; then
  if [ -z "$SAN" ]; then
    memcheck="skipped: compute-sanitizer not found"; racecheck=$memcheck
  else
    t=$(( $(left) / 2 ))
    if [ $t -ge 30 ]; then
      say "== compute-sanitizer memcheck --quick (${t} s max, log: $LOG/memcheck.log)"
      timeout $t "$SAN" --tool memcheck --error-exitcode 3 build/test_kernels_gpu --quick >"$LOG/memcheck.log" 2>&1
      m=$?
      case $m in
        0) memcheck="clean" ;; 3) memcheck="ERRORS: see $LOG/memcheck.log"; rc=1 ;;
        124) memcheck="timed out after $t s (inconclusive)" ;; *) memcheck="exit $m: see $LOG/memcheck.log" ;;
      esac
      grep -m5 -E "Invalid|ERROR SUMMARY" "$LOG/memcheck.log"
    else memcheck="skipped: out of time"; fi
    t=$(left)
    if [ $t -ge 30 ]; then
      say "== compute-sanitizer racecheck --quick attention (${t} s max, log: $LOG/racecheck.log)"
      timeout $t "$SAN" --tool racecheck --error-exitcode 3 build/test_kernels_gpu --quick attention >"$LOG/racecheck.log" 2>&1
      m=$?
      case $m in
        0) racecheck="clean" ;; 3) racecheck="HAZARDS: see $LOG/racecheck.log"; rc=1 ;;
        124) racecheck="timed out after $t s (inconclusive)" ;; *) racecheck="exit $m: see $LOG/racecheck.log" ;;
      esac
      grep -m5 -E "hazard|RACECHECK SUMMARY" "$LOG/racecheck.log"
    else racecheck="skipped: out of time"; fi
  fi
fi

# ---------------------------------------------------------------- 4. TODO: needs the trainer on the cuda backend
# TODO(integration): tiny deck on cuda vs cpu loss curves.
#   build/partita train on inputs/gpt-tiny.deck once with the cpu backend and
#   once with the cuda backend (fp32), same seed; compare the loss curves
#   step by step (expect rel diff ~1e-5 in fp32, ~1e-2 in bf16).
tiny="not yet integrated"
# TODO(integration): ZeRO stages 0-3 at np=2 on one GPU.
#   mpiexec -np 2 build/partita train with zero.stage = 0, 1, 2, 3 (both ranks on
#   device 0, NCCL or host staging); the four loss curves must match bitwise.
zero="not yet integrated"
# TODO(integration): 124M B=8 T=1024 bf16 tokens/s and MFU.
#   build/partita train inputs/gpt2-124m.deck with B=8 T=1024 precision=bf16 for
#   ~20 steps; tokens/s from the log, MFU = 6 * params * tokens/s / peak (the
#   bf16 GEMM peak measured above, and the datasheet's 989 TFLOP/s).
perf="not yet integrated"
say "== trainer on the cuda backend"
say "tiny deck cuda vs cpu loss curves: $tiny"
say "ZeRO stages 0-3 at np=2 on one GPU: $zero"
say "124M B=8 T=1024 bf16 tokens/s and MFU: $perf"

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
  printf '%-40s %s\n' "tiny deck cuda vs cpu loss curves" "$tiny"
  printf '%-40s %s\n' "ZeRO stages 0-3 np=2 one GPU" "$zero"
  printf '%-40s %s\n' "124M B=8 T=1024 bf16 tokens/s, MFU" "$perf"
} | tee "$LOG/summary.txt"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$LOG"/*.log "$LOG/summary.txt" "$OUT"/ 2>/dev/null || true
fi
exit $rc
