#!/usr/bin/env bash
# tests/gpu/emu/build_partita_emu.sh: builds build/emu-partita/partita, the real
# trainer with the real kernels/cuda sources on the CPU emulation of CUDA,
# cuBLAS and cub (emu_cuda.h), so that the cuda backend's integration (device
# buffers, the backend table, host-staged collectives, checkpoints) runs on a
# machine without a GPU. The emulated device calls itself "CPU emulation ...".
#   usage: tests/gpu/emu/build_partita_emu.sh      (from anywhere)
#   SANITIZE=address,undefined   build with those sanitizers (default: none)
#   JOBS=N                       parallel compiles (default: nproc)
# Incremental: objects newer than their sources and headers are kept (make,
# tests/gpu/emu/partita_emu.mk). Exit 0 with the binary in place, else 1.
set -uo pipefail
cd "$(dirname "$0")/../../.." || exit 1
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
OUT=build/emu-partita
mkdir -p "$OUT"
log="$OUT/build.log"
t0=$SECONDS
for tool in mpicc.mpich g++ make python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "build_partita_emu: FAILED: $tool not found (hint: make deps)" >&2
    exit 1
  fi
done
if make -j"$JOBS" -f tests/gpu/emu/partita_emu.mk OUT="$OUT" SANITIZE="${SANITIZE:-}" "$OUT/partita" > "$log" 2>&1; then
  n=$(grep -cE '^(mpicc|g\+\+)' "$log")
  if [ "$n" -eq 0 ]; then what="up to date"; else what="built ($n compile/link steps, $((SECONDS - t0)) s)"; fi
  echo "build_partita_emu: $OUT/partita $what, sanitizer: ${SANITIZE:-none}"
  grep -E 'warning:' "$log" | head -n 20
  exit 0
fi
echo "build_partita_emu: FAILED to build $OUT/partita; the errors (full log: $log):" >&2
grep -E 'error|undefined reference|Error [0-9]' "$log" | head -n 40 >&2
echo "  hint: an undefined reference to a cuda*/cublas* runtime call means tests/gpu/emu/emu_cuda.h lacks it" >&2
exit 1
