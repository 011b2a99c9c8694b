#!/usr/bin/env bash
# `make bench`: figures, never pass/fail. The 124M GPT-2 shape at B=4, T=256 on
# one rank with all cores: partita's tokens/s and MFU against its measured sgemm
# peak, next to PyTorch on the same model, batch and threads.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
STEPS=${BENCH_STEPS:-4}
THREADS=$(nproc)
out=build/bench
mkdir -p "$out" data
[ -f data/licenses.h5 ] || build/partita prep data/licenses.h5 /usr/share/common-licenses > /dev/null

echo "== training throughput: 124M GPT-2 shape, B=4, T=256, fp32, 1 rank x $THREADS threads, $STEPS steps"
$MPIEXEC -np 1 build/partita train inputs/gpt2-124m.deck --set train.steps=$STEPS \
  --set run.out_dir=$out/124m --set train.save_weights=false --set run.threads=$THREADS \
  --set train.seq_len=256 --set train.micro_batch=4 > $out/124m.log
grep -E '^step|sgemm' $out/124m.log | sed 's/^/  /'
$PYTHON bench/torch_gpt.py 12 768 12 50304 256 4 $THREADS $STEPS > $out/torch.log
$PYTHON bench/report.py $out/124m/run.h5 $out/torch.log
