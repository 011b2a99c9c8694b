#!/usr/bin/env bash
# tests/gpu/emu/run_emu.sh: builds the real kernels/cuda sources and
# tests/gpu/test_kernels_gpu.cu against the CPU emulation in emu_cuda.h
# (g++, AddressSanitizer + UBSan) and runs the kernel test, on a machine
# with no GPU. It checks indexing, tiling, masking, shared-memory sizes and
# bounds, barriers and the cuBLAS argument conventions; not GPU timing, not
# the real compiler's code, not real warp scheduling.
#   usage: tests/gpu/emu/run_emu.sh [--quick]     (from anywhere)
#   The emulated threads of a block are fibers (emu_cuda.h); SANITIZE=thread makes
#   them OS threads and runs ThreadSanitizer instead (shared-memory races); give it
#   a few groups only (e.g. attention layernorm): 512-thread blocks crawl under it.
#   Extra arguments go to the test (--quick, group names).
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=build/emu
mkdir -p "$OUT/cpu"
SAN=${SANITIZE:-address,undefined}
BLAS_INC=/usr/include/x86_64-linux-gnu/openblas-pthread
BLAS_LIB=/usr/lib/x86_64-linux-gnu/openblas-openmp
if [ -f "$BLAS_LIB/libopenblas.so.0" ] && [ -f "$BLAS_INC/cblas.h" ]; then
  BINC="-I$BLAS_INC"; BLIBS="-L$BLAS_LIB -l:libopenblas.so.0 -Wl,-rpath,$BLAS_LIB"; BOBJ=""
else
  echo "run_emu: libopenblas not found: using tests/gpu/fallback"
  BINC="-Itests/gpu/fallback"; BLIBS=""; BOBJ="$OUT/cpu/cblas_fallback.o"
  gcc -O2 -fopenmp -c -o "$BOBJ" tests/gpu/fallback/cblas_fallback.c
fi

# CUDA launch syntax and extern shared arrays into plain C++ (shared with build_partita_emu.sh).
python3 tests/gpu/emu/translate.py "$OUT" kernels/cuda/*.cu tests/gpu/test_kernels_gpu.cu

CXXFLAGS="-std=c++20 -DPARTITA_CUDA_EMU -O1 -g -fno-omit-frame-pointer -fsanitize=$SAN -pthread -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas -Itests/gpu/emu/include -Ikernels -Ikernels/cuda"
objs=()
pids=()
for f in "$OUT"/*.cpp; do
  o="${f%.cpp}.o"; objs+=("$o")
  g++ $CXXFLAGS -c -o "$o" "$f" & pids+=($!)
done
for c in kernels/cpu/*.c; do
  o="$OUT/cpu/$(basename "${c%.c}").o"; objs+=("$o")
  gcc -O2 -march=native -fopenmp -std=c11 -D_GNU_SOURCE -Ikernels $BINC -c -o "$o" "$c" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
g++ -fsanitize=$SAN -pthread -o "$OUT/test_kernels_emu" "${objs[@]}" $BOBJ $BLIBS -fopenmp -lm
echo "run_emu: built $OUT/test_kernels_emu (sanitizer: $SAN)"
# one OpenMP thread under ThreadSanitizer: libgomp is not instrumented (false reports)
case "$SAN" in *thread*) omp=1 ;; *) omp=${OMP_NUM_THREADS:-2} ;; esac
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} OMP_NUM_THREADS=$omp \
  "$OUT/test_kernels_emu" "$@"
