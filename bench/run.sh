#!/usr/bin/env bash
# `make bench`: figures, never pass/fail.
#  1. training throughput: the 124M GPT-2 shape at B=4, T=256 on one rank with
#     all cores, tokens/s and MFU against the measured sgemm peak, next to
#     PyTorch on the same model, batch and threads;
#  2. ZeRO stages 0-3 at np=2 on the 124M deck: step time, tokens/s, bytes per
#     step and the fraction of communication hidden behind compute;
#  3. checkpoint write/read bandwidth of the 124M deck at np=1, 2, 4 against a
#     plain sequential write of the same bytes to the same disk.
#  4. generation with the 124M shape (random weights), 2 threads: decode tokens/s
#     at batch 1 and 8, prefill tokens/s of a 512-token prompt, and p99
#     inter-token latency under Poisson arrivals, SplitFuse against static.
# BENCH_ONLY=train|zero|ckpt|gen runs one part; BENCH_STEPS sets the steps timed.
set -eu
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/usr/bin/python3}
MPIEXEC=${MPIEXEC:-mpiexec.mpich}
STEPS=${BENCH_STEPS:-4}
ONLY=${BENCH_ONLY:-all}
THREADS=$(nproc)
out=build/bench
mkdir -p "$out" data
[ -f data/licenses.h5 ] || build/partita prep data/licenses.h5 /usr/share/common-licenses > /dev/null
DECK=inputs/gpt2-124m.deck
COMMON="--set optimizer.warmup=0 --set train.save_weights=false --set train.seq_len=256 --set train.eval_batches=1 --set checkpoint.resume=none"

if [ "$ONLY" = all ] || [ "$ONLY" = train ]; then
  echo "== 1. training throughput: 124M GPT-2 shape, B=4, T=256, fp32, 1 rank x $THREADS threads, $STEPS steps"
  $MPIEXEC -np 1 build/partita train $DECK $COMMON --set train.steps=$STEPS --set run.out_dir=$out/124m \
    --set run.threads=$THREADS --set train.micro_batch=4 > $out/124m.log
  grep -E '^step|sgemm' $out/124m.log | sed 's/^/  /'
  $PYTHON bench/torch_gpt.py 12 768 12 50304 256 4 $THREADS $STEPS > $out/torch.log
  $PYTHON bench/report.py train $out/124m/run.h5 $out/torch.log
fi

if [ "$ONLY" = all ] || [ "$ONLY" = zero ]; then
  echo "== 2. ZeRO stages at np=2 (1 thread per rank), 124M, B=2 per rank, T=256, $STEPS steps; overlap on and off"
  for st in 0 1 2 3; do
    for ov in true false; do
      $MPIEXEC -np 2 build/partita train $DECK $COMMON --set train.steps=$STEPS --set run.out_dir=$out/zero-$st-$ov \
        --set zero.stage=$st --set zero.overlap=$ov --set train.micro_batch=2 --set train.batch=4 > $out/zero-$st-$ov.log
    done
  done
  $PYTHON bench/report.py zero $out
fi

if [ "$ONLY" = all ] || [ "$ONLY" = ckpt ]; then
  echo "== 3. checkpoint bandwidth, 124M (parameters + AdamW moments, fp32), ZeRO-1"
  for np in 1 2 4; do
    rm -rf $out/ckpt-$np
    $MPIEXEC -np $np build/partita train $DECK $COMMON --set train.steps=1 --set train.micro_batch=1 \
      --set train.batch=$np --set zero.stage=1 --set run.out_dir=$out/ckpt-$np --set checkpoint.interval=1 > $out/ckpt-$np-w.log
    $MPIEXEC -np $np build/partita train $DECK $COMMON --set train.steps=2 --set train.stop_at=1 --set train.micro_batch=1 \
      --set train.batch=$np --set zero.stage=1 --set run.out_dir=$out/ckpt-$np \
      --set checkpoint.resume=$out/ckpt-$np/ckpt/step-000001.h5 > $out/ckpt-$np-r.log || true
  done
  bytes=$(stat -c %s $out/ckpt-1/ckpt/step-000001.h5)
  sync
  t0=$(date +%s.%N)
  dd if=/dev/zero of=$out/plain.bin bs=16M count=$((bytes / 16777216 + 1)) conv=fsync status=none
  t1=$(date +%s.%N)
  rm -f $out/plain.bin
  $PYTHON bench/report.py ckpt $out "$bytes" "$(awk -v a=$t0 -v b=$t1 'BEGIN{print b-a}')"
  rm -rf $out/ckpt-1 $out/ckpt-2 $out/ckpt-4
fi

if [ "$ONLY" = all ] || [ "$ONLY" = gen ]; then
  echo "== 4. generation, 124M GPT-2 shape (random weights), 1 rank x $THREADS threads"
  g=$out/gen
  mkdir -p $g
  [ -f $g/w/init.h5 ] || $MPIEXEC -np 1 build/partita train $DECK --set train.steps=1 --set optimizer.warmup=0 --set run.out_dir=$g/w \
    --set train.seq_len=64 --set train.micro_batch=1 --set train.eval_batches=1 --set checkpoint.resume=none > $g/w.log
  $PYTHON bench/gen_requests.py $g
  GEN="--set generate.weights=$g/w/init.h5 --set run.threads=$THREADS --set generate.kv_blocks=1024 --set generate.kv_block=16"
  for case in decode1 decode8 prefill; do
    rm -rf $g/$case
    $MPIEXEC -np 1 build/partita generate $DECK $GEN --set generate.requests=$g/$case.jsonl \
      --set run.out_dir=$g/$case --set generate.token_budget=512 > $g/$case.log
  done
  for mode in splitfuse static; do
    rm -rf $g/poisson-$mode
    $MPIEXEC -np 1 build/partita generate $DECK $GEN --set generate.requests=$g/poisson.jsonl \
      --set run.out_dir=$g/poisson-$mode --set generate.mode=$mode --set generate.token_budget=128 \
      --set generate.max_batch=8 --set "generate.arrivals=poisson:${BENCH_RATE:-0.5}" > $g/poisson-$mode.log
  done
  $PYTHON bench/report.py gen $g
fi
