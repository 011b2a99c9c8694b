#!/usr/bin/env bash
# `make bench`: figures, never pass/fail.
#  1. training throughput: the 124M GPT-2 shape at B=4, T=256 on one rank with
#     all cores, tokens/s and MFU against the measured sgemm peak, next to
#     PyTorch on the same model, batch and threads;
#  2. ZeRO stages 0-3 at np=2 on the 124M deck: step time, tokens/s, bytes per
#     step and the fraction of communication hidden behind compute;
#  3. checkpoint write/read bandwidth of the 124M deck at np=1, 2, 4 (and one
#     rank through the page cache, PARTITA_AIO=buffered) against dd of the same
#     bytes to the same disk (write + fsync, O_DIRECT write, O_DIRECT read),
#     BENCH_CKPT_ROUNDS (3) rounds each with its own baselines; MPI-IO writes
#     of the same bytes (bench/ckpt_mpiio.c: collective with and without
#     collective buffering, independent); step + checkpoint time with a
#     checkpoint every step, async vs synchronous vs none.
#  4. generation with the 124M shape (random weights), 2 threads: decode tokens/s
#     at batch 1 and 8, prefill tokens/s of a 512-token prompt for fp32, bf16 and
#     int8 weights (BENCH_DTYPES), the weight bytes/s of batch-1 decode against a
#     STREAM-like probe of the memory bandwidth (bench/stream.c), and p99
#     inter-token latency under Poisson arrivals, SplitFuse against static.
#  5. sequence parallelism (Ulysses): all-to-all bytes and step time at (T, sp) =
#     (2K, 1), (4K, 2), (8K, 4), peak RSS per rank at (16K, 4) vs (4K, 1) with
#     recompute, the long-seq deck, and the longest T `estimate` fits in 20 GiB.
#  6. offload (BENCH_ONLY=offload): the I/O engine's GB/s against a raw O_DIRECT probe of
#     the offload directory (BENCH_NVME_DIR, default build/bench) at queue depths 1, 4, 16;
#     the 124M deck with the optimizer on NVMe vs in memory, prefetch on and off: step
#     time, io_wait, update time, bytes per step.
#  7. infinity (BENCH_ONLY=infinity, opt-in, not in `all`): a ~2B-parameter GPT
#     (24 layers x 2560) at np=1, B=1, T=64, ZeRO-3 with params, optimizer and gradients
#     on NVMe, BENCH_INF_STEPS (2) steps: s/step, update time, NVMe bytes, io_wait, peak RSS.
#  moe. Mixture of Experts (issue 13, only with BENCH_ONLY=moe): the dense base
#     (inputs/moe-dense.deck, 6 layers x 128), MoE-8 top-1 on every other layer,
#     PR-MoE (residual, pyramid 4,8,8), a dense model of MoE-8's total parameters,
#     each BENCH_MOE_STEPS steps at np=2: validation loss, tokens/s, the FLOPs to
#     reach the dense base's final validation loss; MoE-8 at ep=2: all-to-all share.
#  8. overlap (BENCH_ONLY=overlap): per ZeRO stage at np=2 on the 124M deck, step
#     time with overlap on ([comm] progress = BENCH_PROGRESS, default poll)
#     and off, and at stages 1-3 with the parameters gathered by MPI instead of
#     node-shared (zero.node_shared=false); compute alone (the same np=2 run
#     with [comm] compute_only = alternate: every other step's collectives return
#     at once and move nothing, so each rank does its own layout's work on both
#     cores; a communicating step less the mean of its two neighbours is the
#     communication's exposed cost, drift cancelled), communication
#     alone (build/comm_alone: the bytes run.h5 recorded, no compute), fraction
#     hidden with its spread; at stages 2-3 also with [zero] fused_grads = false
#     ('rs': the two-rank reduce-scatter instead of the fused sums, whose
#     communication alone the fused rows are measured against: the same
#     gradients' reduction); BENCH_OVERLAP_ROUNDS rounds (default 2), each
#     running every configuration once, steps pooled (the machine drifts);
#     BENCH_OVERLAP_STAGES (default "0 1 2 3") the stages; BENCH_OVERLAP_KINDS
#     (default "off mpi rs") the runs beside overlap on's (a fused row's comm
#     alone then takes its bytes from a 3-step 'rs' run), so that
#     BENCH_OVERLAP_KINDS= BENCH_OVERLAP_ROUNDS=8 spends the time on more steps;
#     build/overlap_probe: ZeRO-3's gather pattern between two bare processes.
#  9. serving (BENCH_ONLY=serve): `partita serve` on the 124M shape (random weights) under
#     Poisson load from bench/loadgen.py (streamed), FastGen's experiment scaled to 2 cores:
#     prompts ~300 tokens and outputs ~30 (FastGen: ~600 and ~60 on GPUs; BENCH_SERVE_PROMPT,
#     BENCH_SERVE_OUT), token budget 128 (a prompt is ~2.3 passes, as 600 with FastGen's 256),
#     8 requests per point at BENCH_SERVE_RATES requests/s (the same seeded arrivals and lengths
#     for every mode), for splitfuse, continuous and static: throughput against mean and p95
#     latency, p95 token latency and FastGen's effective throughput (sla_prompt_tok_s = a
#     quarter of the single-request prefill rate measured in the same run), with
#     analysis/plot_serve.py's table and plot. About 8 minutes on 2 free cores.
# 10. zinf (BENCH_ONLY=zinf, opt-in, not in `all`): ZeRO-Inference, bench/zinf.py (an 8B-parameter
#     random GPT streamed from NVMe at batch 1..64 against a raw O_DIRECT probe; 124M streamed vs resident).
# BENCH_ONLY=train|zero|ckpt|gen|sp|offload|infinity|overlap|moe|serve|zinf runs one part; BENCH_STEPS sets the steps timed.
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
  $MPIEXEC -np 1 build/partita train $DECK --set run.overwrite=true $COMMON --set train.steps=$STEPS --set run.out_dir=$out/124m \
    --set run.threads=$THREADS --set train.micro_batch=4 > $out/124m.log
  grep -E '^step|sgemm' $out/124m.log | sed 's/^/  /'
  $PYTHON bench/torch_gpt.py 12 768 12 50304 256 4 $THREADS $STEPS > $out/torch.log
  $PYTHON bench/report.py train $out/124m/run.h5 $out/torch.log
fi

if [ "$ONLY" = all ] || [ "$ONLY" = zero ]; then
  echo "== 2. ZeRO stages at np=2 (1 thread per rank), 124M, B=2 per rank, T=256, $STEPS steps; overlap on and off"
  for st in 0 1 2 3; do
    for ov in true false; do
      $MPIEXEC -np 2 build/partita train $DECK --set run.overwrite=true $COMMON --set train.steps=$STEPS --set run.out_dir=$out/zero-$st-$ov \
        --set zero.stage=$st --set zero.overlap=$ov --set train.micro_batch=2 --set train.batch=4 > $out/zero-$st-$ov.log
    done
  done
  $PYTHON bench/report.py zero $out
fi

if [ "$ONLY" = all ] || [ "$ONLY" = ckpt ]; then
  ROUNDS=${BENCH_CKPT_ROUNDS:-3}
  echo "== 3. checkpoint bandwidth, 124M (parameters + AdamW moments, fp32), ZeRO-1, $ROUNDS rounds"
  make -s build/ckpt_mpiio
  CK="$COMMON --set train.micro_batch=1 --set zero.stage=1"
  # The disk's speed drifts by 2x within minutes here: every round takes its own
  # baselines next to Partita's writes, and the ratios are per round.
  for r in $(seq 1 $ROUNDS); do
    for np in 1 2 4 b; do
      n=$np; envs=""; [ $np = b ] && { n=1; envs="PARTITA_AIO=buffered"; }
      d=$out/ckpt-$r-$np
      rm -rf $d
      env $envs $MPIEXEC -np $n build/partita train $DECK --set run.overwrite=true $CK --set train.steps=1 \
        --set train.batch=$n --set run.out_dir=$d --set checkpoint.interval=1 > $d-w.log
      [ $np = b ] || $MPIEXEC -np $n build/partita train $DECK --set run.overwrite=true $CK --set train.steps=2 --set train.stop_at=1 \
        --set train.batch=$n --set run.out_dir=$d --set checkpoint.resume=$d/ckpt/step-000001.h5 > $d-r.log || true
    done
    bytes=$(stat -c %s $out/ckpt-$r-1/ckpt/step-000001.h5)
    rm -rf $out/ckpt-$r-1 $out/ckpt-$r-2 $out/ckpt-$r-4 $out/ckpt-$r-b
    blocks=$((bytes / 16777216 + 1))
    sync
    t0=$(date +%s.%N)
    dd if=/dev/zero of=$out/plain.bin bs=16M count=$blocks conv=fsync status=none
    t1=$(date +%s.%N)
    dd if=$out/plain.bin of=/dev/null bs=16M iflag=direct status=none
    t2=$(date +%s.%N)
    rm -f $out/plain.bin
    sync
    t3=$(date +%s.%N)
    dd if=/dev/zero of=$out/plain.bin bs=16M count=$blocks oflag=direct conv=fsync status=none
    t4=$(date +%s.%N)
    rm -f $out/plain.bin
    echo "$bytes $(awk -v a=$t0 -v b=$t1 'BEGIN{print b-a}') $(awk -v a=$t3 -v b=$t4 'BEGIN{print b-a}') $(awk -v a=$t1 -v b=$t2 'BEGIN{print b-a}')" > $out/ckpt-$r-dd.txt
    for np in 1 2 4; do $MPIEXEC -np $np build/ckpt_mpiio $out/mpiio.bin $bytes > $out/ckpt-$r-mpiio-$np.txt; done
  done
  $PYTHON bench/report.py ckpt $out $ROUNDS
  echo "  step time, np=2 ZeRO-1, checkpoint every step: async vs synchronous vs none ($STEPS steps)"
  for mode in none sync async; do
    rm -rf $out/ackpt-$mode
    iv=1; [ $mode = none ] && iv=0
    as=false; [ $mode = async ] && as=true
    $MPIEXEC -np 2 build/partita train $DECK --set run.overwrite=true $COMMON --set train.steps=$STEPS --set train.micro_batch=1 --set train.batch=2 \
      --set zero.stage=1 --set run.out_dir=$out/ackpt-$mode --set checkpoint.interval=$iv --set checkpoint.async=$as \
      --set checkpoint.keep=1 > $out/ackpt-$mode.log
  done
  $PYTHON bench/report.py ackpt $out
  rm -rf $out/ackpt-none $out/ackpt-sync $out/ackpt-async
fi

if [ "$ONLY" = all ] || [ "$ONLY" = overlap ]; then
  PROG=${BENCH_PROGRESS:-poll}
  echo "== 8. overlap: ZeRO stages at np=2 (1 thread per rank), 124M, B=2 per rank, T=256, $STEPS steps, progress = $PROG"
  make -s build/comm_alone
  rm -rf $out/ov-*     # the report reads every stage it finds: none from an earlier run
  OV="$COMMON --set train.steps=$STEPS --set train.micro_batch=2"
  OROUNDS=${BENCH_OVERLAP_ROUNDS:-2}
  ov_run() {  # name, then --set options: one np=2 run into $out/ov-<round>-<name>
    local name=$1; shift
    $MPIEXEC -np 2 build/partita train $DECK --set run.overwrite=true $OV --set train.batch=4 \
      --set run.out_dir=$out/ov-$r-$name "$@" > $out/ov-$r-$name.log
  }
  OSTAGES=${BENCH_OVERLAP_STAGES:-0 1 2 3}
  OKINDS=" ${BENCH_OVERLAP_KINDS-off mpi rs} "
  fused() { [ $1 = 2 ] || [ $1 = 3 ]; }
  for r in $(seq 1 $OROUNDS); do
    for st in $OSTAGES; do
      # compute alone: the same run with every other step's collectives moving nothing
      # (compute_only = alternate, 2 x STEPS steps), so each step that communicates sits
      # between two that do not and the machine's drift over minutes cancels
      ov_run $st-on --set zero.stage=$st --set comm.progress=$PROG
      ov_run $st-on-alt --set zero.stage=$st --set comm.progress=$PROG --set comm.compute_only=alternate --set train.steps=$((2 * STEPS))
      [[ $OKINDS == *" off "* ]] && ov_run $st-off --set zero.stage=$st --set zero.overlap=false
      if [ $st != 0 ] && [[ $OKINDS == *" mpi "* ]]; then
        ov_run $st-mpi --set zero.stage=$st --set comm.progress=$PROG --set zero.node_shared=false
        ov_run $st-mpi-alt --set zero.stage=$st --set comm.progress=$PROG --set zero.node_shared=false \
          --set comm.compute_only=alternate --set train.steps=$((2 * STEPS))
      fi
      if fused $st && [[ $OKINDS == *" rs "* ]]; then
        ov_run $st-rs --set zero.stage=$st --set comm.progress=$PROG --set zero.fused_grads=false
        ov_run $st-rs-alt --set zero.stage=$st --set comm.progress=$PROG --set zero.fused_grads=false \
          --set comm.compute_only=alternate --set train.steps=$((2 * STEPS))
      elif fused $st && [ $r = 1 ]; then
        # only the reduce-scatter's bytes, for the fused row's comm alone
        r=bytes ov_run $st-rs --set zero.stage=$st --set zero.fused_grads=false --set train.steps=3
      fi
    done
  done
  for st in $OSTAGES; do
    cfgs="$st-on"
    [ $st != 0 ] && [ -d $out/ov-1-$st-mpi ] && cfgs="$cfgs $st-mpi"
    [ -d $out/ov-1-$st-rs ] && cfgs="$cfgs $st-rs"
    for cfg in $cfgs; do
      # fused gradients reduce-scatter nothing: their communication alone is the
      # same gradients' reduction, the reduce-scatter of the 'rs' run's bytes
      src=ov-1-$cfg
      if [ $cfg = $st-on ] && fused $st; then
        src=ov-1-$st-rs; [ -d $out/$src ] || src=ov-bytes-$st-rs
      fi
      read ar rs ag < <($PYTHON -c "import h5py,numpy as n;m=h5py.File('$out/$src/run.h5')['metrics'];print(*[int(n.median(m[k][1:-1])) for k in ('comm_bytes_all_reduce','comm_bytes_reduce_scatter','comm_bytes_all_gather')])")
      $MPIEXEC -np 2 build/comm_alone $ar $rs $ag 4194304 $STEPS > $out/ov-$cfg-comm.txt
    done
  done
  $PYTHON bench/report.py overlap $out $OROUNDS
  make -s build/overlap_probe
  echo "  the same gather pattern between two processes without Partita (build/overlap_probe), mean wait per layer:"
  for split in even oneway; do
    for m in 0 2; do $MPIEXEC -np 2 build/overlap_probe $m 24 $split | sed 's/^/  /'; done
    UCX_CMA_SEG_SIZE=256m $MPIEXEC -np 2 build/overlap_probe 0 24 $split | sed 's/^/  UCX_CMA_SEG_SIZE=256m: /'
  done
fi

if [ "$ONLY" = all ] || [ "$ONLY" = gen ]; then
  echo "== 4. generation, 124M GPT-2 shape (random weights), 1 rank x $THREADS threads"
  g=$out/gen
  mkdir -p $g
  [ -f $g/w/init.h5 ] || $MPIEXEC -np 1 build/partita train $DECK --set run.overwrite=true --set train.steps=1 --set optimizer.warmup=0 --set run.out_dir=$g/w \
    --set train.seq_len=64 --set train.micro_batch=1 --set train.eval_batches=1 --set checkpoint.resume=none > $g/w.log
  $PYTHON bench/gen_requests.py $g
  GEN="--set generate.weights=$g/w/init.h5 --set run.threads=$THREADS --set generate.kv_blocks=1024 --set generate.kv_block=16"
  make -s build/stream_probe
  OMP_NUM_THREADS=$THREADS build/stream_probe 512 > $g/stream.txt
  cat $g/stream.txt
  for dt in ${BENCH_DTYPES:-fp32 bf16 int8}; do
    for case in decode1 decode8 prefill; do
      rm -rf $g/$case-$dt
      $MPIEXEC -np 1 build/partita generate $DECK $GEN --set generate.requests=$g/$case.jsonl \
        --set run.out_dir=$g/$case-$dt --set generate.token_budget=512 --set generate.weights_dtype=$dt > $g/$case-$dt.log
    done
  done
  for mode in splitfuse static; do
    rm -rf $g/poisson-$mode
    $MPIEXEC -np 1 build/partita generate $DECK $GEN --set generate.requests=$g/poisson.jsonl \
      --set run.out_dir=$g/poisson-$mode --set generate.mode=$mode --set generate.token_budget=128 \
      --set generate.max_batch=8 --set "generate.arrivals=poisson:${BENCH_RATE:-0.5}" > $g/poisson-$mode.log
  done
  $PYTHON bench/report.py gen $g
fi

if [ "$ONLY" = all ] || [ "$ONLY" = serve ]; then
  sv=$out/serve
  mkdir -p $sv
  PM=${BENCH_SERVE_PROMPT:-300}; OM=${BENCH_SERVE_OUT:-30}; NREQ=${BENCH_SERVE_REQUESTS:-8}; DUR=${BENCH_SERVE_DURATION:-90}
  # OpenMP threads that spin at barriers lose their core's time slices to the other
  # processes of a shared machine (a 124M decode step was 4x slower at load 10): sleep instead.
  export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
  echo "== 6. serving, 124M GPT-2 shape (random weights), 1 rank x $THREADS threads: Poisson load, prompts ~$PM, outputs ~$OM, $NREQ requests or $DUR s per point"
  echo "  load average before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores; OMP_WAIT_POLICY=$OMP_WAIT_POLICY"
  [ -f $out/gen/w/init.h5 ] || $MPIEXEC -np 1 build/partita train $DECK --set run.overwrite=true --set train.steps=1 --set optimizer.warmup=0 --set run.out_dir=$out/gen/w \
    --set train.seq_len=64 --set train.micro_batch=1 --set train.eval_batches=1 --set checkpoint.resume=none > $sv/w.log
  SV="--set generate.weights=$out/gen/w/init.h5 --set run.threads=$THREADS --set generate.kv_blocks=512 --set generate.kv_block=16
      --set generate.token_budget=${BENCH_SERVE_BUDGET:-128} --set generate.max_batch=16 --set serve.max_queue=256 --set serve.client_timeout_s=120"
  port=$($PYTHON -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  start_server() {  # mode; waits for the "listening" line
    rm -f $sv/$1.log; build/partita serve $DECK $SV --set generate.mode=$1 --set serve.port=$port --set run.out_dir=$sv/$1 > $sv/$1.log 2>&1 &
    spid=$!
    for _ in $(seq 600); do grep -q listening $sv/$1.log && return 0; sleep 0.2; done; return 1
  }
  # the single-request prefill rate: one prompt, one output token
  start_server splitfuse
  $PYTHON bench/loadgen.py --port $port --clients 1 --requests 2 --prompt-mean $PM --prompt-std 0 --out-mean 1 --out-std 0 $sv/prefill.h5 > /dev/null
  kill -TERM $spid; wait $spid || true
  SLA=$($PYTHON -c "import h5py,numpy as n; f=h5py.File('$sv/prefill.h5'); r=f['requests']; print(round(float(n.median(r['prompt_len'][:]/(r['first_token'][:]-r['send'][:])))/4, 1))")
  echo "  single-request prefill: $(awk -v s=$SLA 'BEGIN{print 4*s}') tokens/s -> sla_prompt_tok_s = $SLA"
  runs=""
  for mode in splitfuse continuous static; do
    start_server $mode
    for rate in ${BENCH_SERVE_RATES:-0.1 0.2}; do
      $PYTHON bench/loadgen.py --port $port --rate $rate --requests $NREQ --duration $DUR --prompt-mean $PM --prompt-std $((PM / 10)) \
        --out-mean $OM --out-std $((OM / 10)) --seed 7 $sv/$mode-$rate.h5 | sed 's/^/  /'
      runs="$runs $mode=$sv/$mode-$rate.h5"
    done
    kill -TERM $spid; wait $spid || true
  done
  $PYTHON analysis/plot_serve.py --sla-prompt-tok-s $SLA --png $sv/latency-throughput.png $runs | sed 's/^/  /'
  echo "  load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
fi

if [ "$ONLY" = all ] || [ "$ONLY" = sp ]; then
  echo "== 5. sequence parallelism, B=1, 1 thread per rank: weak scaling on the gpt-tiny shape (L=2 C=64 NH=4), 2 steps"
  SP="--set train.steps=2 --set optimizer.warmup=0 --set train.micro_batch=1 --set train.grad_accum=1 --set train.batch=0
      --set train.eval_batches=1 --set train.eval_interval=0 --set train.save_weights=false --set data.val_fraction=0.3
      --set run.threads=1 --set checkpoint.interval=0 --set checkpoint.resume=none --set data.train=data/licenses.h5"
  for ts in 2048:1 4096:2 8192:4; do
    T=${ts%:*}; n=${ts#*:}
    $MPIEXEC -np $n build/partita train inputs/gpt-tiny.deck --set run.overwrite=true $SP --set model.seq_len=$T --set parallel.sp=$n \
      --set run.out_dir=$out/sp/weak-$T-$n > $out/sp-weak-$T-$n.log
  done
  # Peak RSS per rank with recompute: the long-seq model (L=4 C=256 NH=4, activations
  # dominate) at (4K, sp=1, np=1) vs (16K, sp=4, np=4), one step, ZeRO-0 (every rank holds
  # all model states) and ZeRO-3 (states sharded over the 4 ranks, as DeepSpeed runs it).
  # run.h5 holds the planned parts (states, working buffers, activations) and the process
  # baseline (resident before the model is allocated); report.py prints the split.
  for st in 0 3; do
    for ts in 4096:1 16384:4; do
      T=${ts%:*}; n=${ts#*:}
      $MPIEXEC -np $n build/partita train inputs/long-seq.deck --set run.overwrite=true $SP --set train.steps=1 --set model.seq_len=$T \
        --set parallel.sp=$n --set zero.stage=$st --set train.recompute=layer \
        --set run.out_dir=$out/sp/rss-$T-$n-z$st > $out/sp-rss-$T-$n-z$st.log
    done
  done
  $MPIEXEC -np 4 build/partita train inputs/long-seq.deck --set run.overwrite=true --set data.train=data/licenses.h5 --set train.steps=2 \
    --set checkpoint.interval=0 --set checkpoint.resume=none --set run.out_dir=$out/sp/long-seq > $out/sp-long-seq.log
  $PYTHON bench/report.py sp $out/sp
  # 20 GiB per rank at the deck's ZeRO-3: sp=1 on one rank, sp=1 x dp=4 (the same ranks
  # as sp=4, model states sharded alike), sp=4.
  for lay in 1:1:1 4:4:1 4:1:4; do
    n=${lay%%:*}; rest=${lay#*:}; dp=${rest%:*}; sp=${rest#*:}
    t=$(build/partita estimate inputs/long-seq.deck --ranks $n --set parallel.dp=$dp --set parallel.sp=$sp \
        --set data.train=data/licenses.h5 --mem-per-rank 20G | awk '/^longest_T/ {print $2, $3}')
    echo "  estimate, long-seq model, 20 GiB per rank, dp=$dp x sp=$sp: longest T $t (recompute none, layer)"
  done
fi

if [ "$ONLY" = zinf ]; then
  $PYTHON bench/zinf.py
fi

NVME_DIR=${BENCH_NVME_DIR:-$out/nvme}
if [ "$ONLY" = all ] || [ "$ONLY" = offload ]; then
  mkdir -p "$NVME_DIR"
  make --no-print-directory -s build/aio_probe
  echo "== 6. offload: the I/O engine vs a raw O_DIRECT probe of $NVME_DIR (${BENCH_AIO_MIB:-256} MiB, 1 MiB requests)"
  build/aio_probe "$NVME_DIR" "${BENCH_AIO_MIB:-256}"
  echo "   124M deck, 1 rank x $THREADS threads, B=1, T=256, $STEPS steps: optimizer in memory vs on NVMe"
  for mode in none:true nvme:true nvme:false; do
    o=${mode%:*}; pf=${mode#*:}
    $MPIEXEC -np 1 build/partita train $DECK --set run.overwrite=true $COMMON --set train.steps=$STEPS --set train.micro_batch=1 \
      --set run.threads=$THREADS --set run.out_dir=$out/off-$o-$pf --set offload.optimizer=$o --set offload.prefetch=$pf \
      --set offload.nvme_dir=$NVME_DIR > $out/off-$o-$pf.log
    $PYTHON - "$out/off-$o-$pf/run.h5" "optimizer=$o prefetch=$pf" <<'PY'
import sys, h5py, numpy as np
m = h5py.File(sys.argv[1], "r")["metrics"]
s = slice(1, None) if len(m["step"]) > 1 else slice(0, None)   # the first step warms up
g = lambda k: float(np.median(np.array(m[k])[s]))
print(f"  {sys.argv[2]:28s} step {g('step_time'):.3f} s | update {g('update_time'):.3f} s | io_wait {g('io_wait'):.3f} s"
      f" | read {g('offload_read_bytes') / 2**20:.0f} MiB, written {g('offload_write_bytes') / 2**20:.0f} MiB per step")
PY
  done
fi

if [ "$ONLY" = infinity ]; then
  mkdir -p "$NVME_DIR"
  echo "== 7. beyond RAM: ~2B-parameter GPT, np=1, ZeRO-3, params + optimizer + gradients on NVMe ($NVME_DIR), B=1, T=64, ${BENCH_INF_STEPS:-2} steps"
  echo "  disk before: $(df -h --output=avail "$NVME_DIR" | tail -1) free; memory: $(free -g | awk '/Mem:/ {print $2 " GiB, " $7 " GiB available"}'); load $(cut -d' ' -f1-3 /proc/loadavg)"
  $MPIEXEC -np 1 build/partita train $DECK --set run.overwrite=true $COMMON --set train.seq_len=64 --set model.layers=24 --set model.d_model=2560 \
    --set model.heads=20 --set train.steps=${BENCH_INF_STEPS:-2} --set train.micro_batch=1 --set run.threads=$THREADS \
    --set zero.stage=3 --set offload.optimizer=nvme --set offload.params=nvme --set offload.nvme_dir=$NVME_DIR \
    --set offload.subgroup_mb=64 --set run.peak_gflops=1 --set train.eval_interval=0 --set run.out_dir=$out/infinity \
    > $out/infinity.log
  grep -E '^model|^offload|^step|^memory' $out/infinity.log | sed 's/^/  /'
  $PYTHON - "$out/infinity/run.h5" <<'PY'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r"); m = f["metrics"]
g = lambda k: np.array(m[k])
st, rd, wr, io, up = g("step_time"), g("offload_read_bytes"), g("offload_write_bytes"), g("io_wait"), g("update_time")
print(f"  {int(f.attrs['nparams'])/1e9:.2f}B parameters ({int(f.attrs['nparams'])*16/1e9:.1f} GB of fp32 params + AdamW"
      f" moments + gradients on NVMe), peak RSS {g('peak_rss_mb').max():.0f} MiB (baseline {f.attrs['baseline_rss_mb']:.0f} MiB)")
for i in range(len(st)):
    print(f"  step {i + 1}: {st[i]:.1f} s, of which update {up[i]:.1f} s; NVMe read {rd[i]/1e9:.1f} GB, written {wr[i]/1e9:.1f} GB"
          f" ({(rd[i] + wr[i])/1e9/st[i]:.2f} GB/s over the step), waited on I/O {io[i]:.1f} s")
PY
  rm -rf "$NVME_DIR"/*.offload
  echo "  disk after: $(df -h --output=avail "$NVME_DIR" | tail -1) free"
fi

if [ "$ONLY" = moe ]; then
  MS=${BENCH_MOE_STEPS:-200}
  echo "== moe. Mixture of Experts at np=2 (1 thread per rank), B=8 x T=128 per rank, $MS steps, licenses corpus"
  M=$out/moe
  mkdir -p $M
  MOESET="--set train.steps=$MS --set run.threads=1 --set checkpoint.interval=0 --set checkpoint.resume=none
          --set data.train=data/licenses.h5"
  for name in moe-dense moe-8 moe-pr moe-dense-wide; do
    build/partita estimate inputs/$name.deck --ranks 2 $MOESET > $M/$name.est
    $MPIEXEC -np 2 build/partita train inputs/$name.deck --set run.overwrite=true $MOESET --set run.out_dir=$M/$name > $M/$name.log
  done
  rm -rf $M/moe-8-ep2
  $MPIEXEC -np 2 build/partita train inputs/moe-8.deck --set run.overwrite=true $MOESET --set parallel.ep=2 --set run.out_dir=$M/moe-8-ep2 \
    > $M/moe-8-ep2.log 2>&1 || echo "  MoE-8 at ep=2 did not train: $(grep -m1 error: $M/moe-8-ep2.log)"
  $PYTHON bench/report.py moe $M
fi
