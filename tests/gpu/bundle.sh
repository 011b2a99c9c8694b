#!/usr/bin/env bash
# tests/gpu/bundle.sh: packs what the GPU machine lacks, for tests/gpu/check.sh.
#
#   make && bash tests/gpu/bundle.sh        here (Debian 12), from anywhere
#
# The GPU machine has CUDA, gcc and python3 but no MPI, HDF5 or OpenBLAS, and
# no package registry. This script makes build/gpu-bundle/:
#   payload.tar.xz   everything below, compressed (the libraries are ~100 MB
#                    unpacked; only the compressed form fits the 64 MiB carry)
#   MANIFEST.txt     what is in it: file, size, Debian package, glibc needed
# The payload, unpacked by check.sh into build/gpu-env/, holds:
#   partita          a copy of build/partita
#   bin/             mpiexec.hydra, hydra_pmi_proxy (mpich), mpiexec (a copy), and
#                    mpicc (a gcc wrapper with the bundle's MPICH, for a rebuild there)
#   lib/             the ldd closure of build/partita and of the two hydra tools,
#                    less glibc (the libc6 package: libc, libm, libpthread, libdl,
#                    librt, libresolv, ld-linux, ...) and less the CUDA libraries
#                    (cudart, cublas, cublasLt, nccl: the GPU machine has its own);
#                    link names (libmpich.so, libhdf5.so, ...) to rebuild with;
#                    lib/ucx/: UCX's cma module (MPICH here is ch4:ucx)
#   lib/gcc/         libstdc++, libgcc_s, libgomp: used there only if missing
#                    (the machine's own are newer and its nvcc/g++ need them)
#   include/         mpich/ (mpi.h...), hdf5/ (the mpich flavour's C headers),
#                    openblas/ (cblas.h, openblas_config.h), nccl/ (nccl.h, a
#                    fallback for a machine whose CUDA lacks it)
#   bundle.env       facts about this build machine for check.sh's messages
# Prints what it bundled and the sizes. Needs: ldd, readelf, strip, tar, xz
# (or python3), dpkg-query (to know glibc's files; a fixed list otherwise).
set -euo pipefail
cd "$(dirname "$0")/../.."

BIN=${PARTITA:-build/partita}
OUTD=build/gpu-bundle
STAGE=build/gpu-bundle.stage
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
LIMIT_MIB=64

die() { echo "bundle: $*" >&2; exit 1; }
[ -x "$BIN" ] || die "$BIN not found: run make first"
for t in ldd readelf tar; do command -v $t >/dev/null || die "$t not found (apt-get install binutils tar)"; done
HYDRA=$(command -v mpiexec.hydra || true); [ -n "$HYDRA" ] || HYDRA=/usr/bin/mpiexec.hydra
PROXY=$(command -v hydra_pmi_proxy || true); [ -n "$PROXY" ] || PROXY=/usr/bin/hydra_pmi_proxy
[ -x "$HYDRA" ] && [ -x "$PROXY" ] || die "mpiexec.hydra/hydra_pmi_proxy not found (make deps installs mpich)"

# The Makefile's include and library folders (it is the one truth for them).
mkvar() { sed -n "s/^$1 *:\?= *//p" Makefile | head -1; }
HDF5_INC=${HDF5_INC:-$(mkvar HDF5_INC)}; HDF5_INC=${HDF5_INC:-/usr/include/hdf5/mpich}
BLAS_INC=${BLAS_INC:-$(mkvar BLAS_INC)}; BLAS_INC=${BLAS_INC:-/usr/include/x86_64-linux-gnu/openblas-pthread}
MPI_INC=$({ mpicc.mpich -show 2>/dev/null || true; } | tr ' ' '\n' | sed -n 's/^-I//p' | head -1)
MPI_INC=${MPI_INC:-/usr/include/x86_64-linux-gnu/mpich}
for f in "$MPI_INC/mpi.h" "$HDF5_INC/hdf5.h" "$BLAS_INC/cblas.h"; do
  [ -f "$f" ] || die "$f not found (make deps installs libmpich-dev, libhdf5-mpich-dev, libopenblas-dev)"
done

# glibc's own libraries: whatever the libc6 package holds (a fixed list without dpkg).
GLIBC_RE='^(ld-linux.*|libc|libm|libmvec|libpthread|libdl|librt|libresolv|libutil|libanl|libnsl|libBrokenLocale|libthread_db|libc_malloc_debug|libmemusage|libpcprofile|libnss_[a-z]*)\.so(\..*)?$'
GLIBC_SET=" "
if command -v dpkg-query >/dev/null; then
  GLIBC_SET=" $(dpkg-query -L libc6 2>/dev/null | grep '\.so' | xargs -r -n1 basename | tr '\n' ' ') "
fi
is_glibc() { [[ "$GLIBC_SET" == *" $1 "* ]] || [[ "$1" =~ $GLIBC_RE ]]; }
# The CUDA libraries: the GPU machine's own toolkit (and python's nvidia-* wheels) has them.
CUDA_RE='^lib(cuda|cudart|cublas|cublasLt|nccl|nvJitLink|nvrtc|nvidia-.*|cudnn.*|cufft.*|curand|cusolver.*|cusparse.*|cupti|nvToolsExt)\.so(\..*)?$'
CUDA_REAL=$(readlink -f "$CUDA_HOME" 2>/dev/null || echo "$CUDA_HOME")
is_cuda() { [[ "$1" =~ $CUDA_RE ]] || [[ "$2" == "$CUDA_HOME"/* ]] || [[ "$(readlink -f "$2")" == "$CUDA_REAL"/* ]]; }
GCCRT_RE='^(libstdc\+\+\.so\.6|libgcc_s\.so\.1|libgomp\.so\.1)$'

pkg_of() {   # the Debian package that holds a file (usrmerge: try /usr too)
  local p=$1 r
  command -v dpkg-query >/dev/null || { echo "-"; return; }
  r=$(dpkg-query -S "$p" 2>/dev/null || dpkg-query -S "/usr$p" 2>/dev/null || dpkg-query -S "$(readlink -f "$p")" 2>/dev/null || true)
  r=${r%%:*}; [ -n "$r" ] || { echo "-"; return; }
  echo "$r $(dpkg-query -W -f='${Version}' "$r" 2>/dev/null)"
}

rm -rf "$STAGE" "$OUTD"
mkdir -p "$STAGE"/{bin,lib/gcc,lib/ucx,include/mpich,include/hdf5,include/openblas} "$OUTD"

# ---------------------------------------------------------------- the closure
declare -A SRC=()        # soname -> path on this machine
skipped=()
while read -r name path; do
  if [ "$path" = "not" ]; then
    is_cuda "$name" "" && { skipped+=("$name (cuda, not found here)"); continue; }
    die "ldd: $name not found (needed by $BIN or the hydra tools)"
  fi
  if is_glibc "$name"; then continue; fi
  if is_cuda "$name" "$path"; then skipped+=("$name (cuda: $path)"); continue; fi
  SRC[$name]=$path
done < <(ldd "$BIN" "$HYDRA" "$PROXY" | awk '$2 == "=>" && $3 != "" {print $1, $3}' | sort -u)

manifest=()   # "size<TAB>file<TAB>package<TAB>glibc"
glibc_of() { { readelf -V --wide "$1" 2>/dev/null || true; } | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1; }
add() {   # add SRC DEST: copy (dereferenced), strip if it still has symbols, note it
  local src=$1 dst=$STAGE/$2
  cp -L "$src" "$dst"; chmod u+w "$dst"
  if command -v strip >/dev/null && readelf -S --wide "$dst" 2>/dev/null | grep -q '\.symtab'; then
    strip --strip-unneeded "$dst" 2>/dev/null || true
  fi
  manifest+=("$(stat -c %s "$dst")	$2	$(pkg_of "$src")	$(glibc_of "$dst")")
}
for name in "${!SRC[@]}"; do
  if [[ "$name" =~ $GCCRT_RE ]]; then add "${SRC[$name]}" "lib/gcc/$name"; else add "${SRC[$name]}" "lib/$name"; fi
done
# UCX loads its transports from <dir of libucs>/ucx; cma needs only libucs/libuct.
UCXDIR=$(dirname "$(readlink -f "${SRC[libucs.so.0]:-/usr/lib/x86_64-linux-gnu/libucs.so.0}")")/ucx
[ -e "$UCXDIR/libuct_cma.so.0" ] && add "$UCXDIR/libuct_cma.so.0" lib/ucx/libuct_cma.so.0
# link names for a rebuild there (-lmpich, -lhdf5 of the Makefile, ...)
( cd "$STAGE/lib"
  for f in lib*.so.*; do ln -sf "$f" "${f%%.so.*}.so"; done
  if [ -e libhdf5_mpich.so ]; then ln -sf libhdf5_mpich.so libhdf5.so; fi
  if [ -e ucx/libuct_cma.so.0 ]; then ln -sf libuct_cma.so.0 ucx/libuct_cma.so; fi )

# ---------------------------------------------------------------- the programs
cp "$BIN" "$STAGE/partita"
manifest+=("$(stat -c %s "$STAGE/partita")	partita	(build/partita, $(sha256sum "$BIN" | cut -c1-12))	$(glibc_of "$BIN")")
add "$HYDRA" bin/mpiexec.hydra
add "$PROXY" bin/hydra_pmi_proxy
cp "$STAGE/bin/mpiexec.hydra" "$STAGE/bin/mpiexec"   # a copy: hydra finds its proxy beside argv[0]
# mpicc: what `mpicc.mpich -show` does, relocated to wherever the bundle is unpacked
cat > "$STAGE/bin/mpicc" <<'EOF_MPICC'
#!/bin/sh
# mpicc of build/gpu-bundle: ${MPICH_CC:-gcc} with the bundle's MPICH headers and libmpich.
B=$(cd "$(dirname "$0")/.." && pwd)
for a in "$@"; do
  case $a in -c|-E|-S|-M|-MM) exec ${MPICH_CC:-gcc} -I"$B/include/mpich" "$@" ;; esac
done
exec ${MPICH_CC:-gcc} -I"$B/include/mpich" "$@" -L"$B/lib" -Wl,-rpath,"$B/lib" -Wl,-rpath-link,"$B/lib" -lmpich
EOF_MPICC
chmod +x "$STAGE/bin/mpicc"

# ---------------------------------------------------------------- headers
cp "$MPI_INC"/*.h "$STAGE/include/mpich/"
cp "$HDF5_INC"/*.h "$STAGE/include/hdf5/"
cp "$BLAS_INC/cblas.h" "$BLAS_INC/openblas_config.h" "$STAGE/include/openblas/"
if [ -f "$CUDA_HOME/include/nccl.h" ]; then
  mkdir -p "$STAGE/include/nccl"; cp "$CUDA_HOME/include/nccl.h" "$STAGE/include/nccl/"
fi
for d in mpich hdf5 openblas nccl; do
  [ -d "$STAGE/include/$d" ] || continue
  manifest+=("$(du -sb "$STAGE/include/$d" | cut -f1)	include/$d/ ($(ls "$STAGE/include/$d" | wc -l) headers)	-	-")
done

# ---------------------------------------------------------------- facts for check.sh
# lib/gcc/ is used there only where the machine lacks those libraries: left out of the figure
need=$(printf '%s\n' "${manifest[@]}" | awk -F'\t' '$2 !~ /^lib\/gcc\// && $4 != "-" && $4 != "" {print $4}' | sort -V | tail -1)
march=$(gcc -march=native -Q --help=target 2>/dev/null | awk '$1 == "-march=" {print $2; exit}' || true)
cat > "$STAGE/bundle.env" <<EOF
# written by tests/gpu/bundle.sh; read by tests/gpu/check.sh
BUNDLE_DATE='$(date -u +%Y-%m-%dT%H:%M:%SZ)'
BUNDLE_OS='$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-?}")'
BUNDLE_GLIBC_HERE='$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')'
BUNDLE_GLIBC_NEEDED='${need:-?}'
BUNDLE_MARCH='${march:-?}'
BUNDLE_PARTITA_SHA256='$(sha256sum "$BIN" | cut -d' ' -f1)'
BUNDLE_CUDA='$("$CUDA_HOME/bin/nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p')'
EOF

# ---------------------------------------------------------------- pack and report
unpacked=$(du -sb "$STAGE" | cut -f1)
if command -v xz >/dev/null; then
  tar -C "$STAGE" -cf - . | xz -T0 -6 > "$OUTD/payload.tar.xz"
else
  python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[2], "w:xz", preset=6) as t: t.add(sys.argv[1], arcname=".")' "$STAGE" "$OUTD/payload.tar.xz"
fi
{
  echo "# build/gpu-bundle: made by tests/gpu/bundle.sh; unpacked by tests/gpu/check.sh into build/gpu-env/"
  sed -n 's/^\(BUNDLE_[A-Z_0-9]*\)=/\1=/p' "$STAGE/bundle.env"
  echo "# left out (the GPU machine has its own): glibc's libraries; ${skipped[*]:-no CUDA library}"
  echo "#"
  printf '%10s  %-36s %-42s %s\n' bytes file "debian package" glibc
  printf '%s\n' "${manifest[@]}" | sort -t$'\t' -k2 | awk -F'\t' '{printf "%10d  %-36s %-42s %s\n", $1, $2, $3, ($4 == "" ? "-" : $4)}'
} > "$OUTD/MANIFEST.txt"
rm -rf "$STAGE"
cat "$OUTD/MANIFEST.txt"
packed=$(du -sb "$OUTD" | cut -f1)
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo
echo "bundle: $OUTD: $(mib "$packed") to carry ($(mib "$unpacked") unpacked; limit $LIMIT_MIB MiB with the working tree)"
echo "bundle: glibc needed there >= ${need:-?} (here $(getconf GNU_LIBC_VERSION 2>/dev/null)); built for -march=${march:-?}"
echo "bundle: on the GPU machine: bash tests/gpu/check.sh, carrying build/gpu-bundle (see docs/gpu.md)"
[ "$packed" -lt $((LIMIT_MIB * 1048576 * 3 / 4)) ] || die "the bundle is $(mib "$packed"): over 3/4 of the $LIMIT_MIB MiB carry limit"
