#!/usr/bin/env bash
# The test suite: each entry is one named test, a command that exits 0 on pass.
# Prints one line per test and ends with "N passed, N failed". Logs: build/test-logs/.
# A test that cannot run here (say, Slurm will not start) exits 77 after printing
# "SKIP: <reason>": it shows as "skip" and is counted apart, neither passed nor failed.
set -u
cd "$(dirname "$0")/.."
export PARTITA=${PARTITA:-build/partita}
export MPIEXEC=${MPIEXEC:-mpiexec.mpich}
export PYTHON=${PYTHON:-/usr/bin/python3}
# Small problems on few cores: one kernel thread per rank unless a test says otherwise.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
logs=build/test-logs
mkdir -p "$logs"

tests=(
  "kernel-encoder       build/test_kernels encoder"
  "kernel-layernorm     build/test_kernels layernorm"
  "kernel-matmul        build/test_kernels matmul"
  "kernel-gelu          build/test_kernels gelu"
  "kernel-residual      build/test_kernels residual"
  "kernel-attention     build/test_kernels attention"
  "kernel-crossentropy  build/test_kernels crossentropy"
  "kernel-adamw         build/test_kernels adamw"
  "kernel-sumsq         build/test_kernels sumsq"
  "kernel-determinism   build/test_kernels determinism"
  "kernel-paged         build/test_kernels paged"
  "kernel-held          build/test_kernels held"
  "kernel-dropout       build/test_kernels dropout"
  "sampler              build/test_sampler"
  "aio-engine           build/test_aio"
  "dos-model            build/test_dos"
  "moe-layer            build/test_moe"
  "comm-collectives     $MPIEXEC -np 3 build/test_comm"
  "comm-collectives-2   $MPIEXEC -np 2 build/test_comm"
  "overlap-progress     $PYTHON tests/test_overlap.py"
  "ckpt-async           $PYTHON tests/test_ckpt_async.py"
  "ulysses-layouts      $MPIEXEC -np 4 build/test_ulysses"
  "deck                 $PYTHON tests/test_deck.py"
  "moe-deck             $PYTHON tests/test_moe_deck.py"
  "cli-errors           $PYTHON tests/test_cli.py"
  "readme-commands      $PYTHON tests/test_readme.py"
  "deck-inputs          $PYTHON tests/test_inputs.py"
  "data-order           $PYTHON tests/test_data.py"
  "bpe-tokenizer        $PYTHON tests/test_bpe.py"
  "safetensors          $PYTHON tests/test_safetensors.py"
  "torch-reference      $PYTHON tests/test_torch_ref.py"
  "dropout              $PYTHON tests/test_dropout.py"
  "moe-torch-reference  $PYTHON tests/moe_torch.py"
  "moe-training         $PYTHON tests/test_moe.py"
  "moe-generate-eval    $PYTHON tests/test_moe_infer.py"
  "dp-equivalence       $PYTHON tests/test_dp.py"
  "zero-stages          $PYTHON tests/test_zero.py"
  "offload              $PYTHON tests/test_offload.py"
  "sequence-parallel    $PYTHON tests/test_sp.py"
  "comm-debug           $PYTHON tests/test_comm_debug.py"
  "estimate-memory      $PYTHON tests/test_estimate.py"
  "estimate-moe         $PYTHON tests/test_estimate_moe.py"
  "checkpoints          $PYTHON tests/test_ckpt.py"
  "checkpoint-faults    $PYTHON tests/test_ckpt_faults.py"
  "checkpoint-corrupt   $PYTHON tests/test_ckpt_corrupt.py"
  "input-files          $PYTHON tests/test_input_files.py"
  "analysis-tools       $PYTHON tests/test_analysis.py"
  "generate             $PYTHON tests/test_generate.py"
  "generate-inputs      $PYTHON tests/test_requests.py"
  "eval                 $PYTHON tests/test_eval.py"
  "serve                $PYTHON tests/test_serve.py"
  "zero-inference       $PYTHON tests/test_zinf.py"
  "tiny-training        $PYTHON tests/test_train_tiny.py"
  "cuda-emu             $PYTHON tests/test_cuda_emu.py"
  "offload-cuda         $PYTHON tests/test_offload_cuda.py"
  "zero-inference-cuda  $PYTHON tests/test_zinf_cuda.py"
  "moe-cuda-emu         $PYTHON tests/test_moe_cuda.py"
  "fuzz-deck            bash tests/fuzz/run.sh deck"
  "fuzz-json            bash tests/fuzz/run.sh json"
  "fuzz-stage           bash tests/fuzz/run.sh stage"
  "asan-readers         $PYTHON tests/test_fuzz.py"
  "slurm                $PYTHON tests/test_slurm.py"
  "batch-system         $PYTHON tests/test_batch.py"
)

pass=0; fail=0; skip=0; failed=()
for entry in "${tests[@]}"; do
  name=${entry%% *}
  cmd=$(echo "${entry#* }" | sed 's/^ *//')
  t0=$(date +%s.%N)
  timeout 600 bash -c "$cmd" > "$logs/$name.log" 2>&1
  rc=$?
  if [ $rc -eq 0 ]; then
    pass=$((pass + 1)); status="ok  "
  elif [ $rc -eq 77 ]; then
    skip=$((skip + 1)); status="skip"
  else
    fail=$((fail + 1)); status="FAIL"; failed+=("$name")
  fi
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{print b - a}')
  printf '%s %-22s %6.1fs  %s\n' "$status" "$name" "$dt" "$(grep -E '^(ok|FAIL|PASS|SKIP)|rel err|summary' "$logs/$name.log" | tail -n 1 | cut -c1-90)"
  if [ "$status" = "FAIL" ]; then sed 's/^/    | /' "$logs/$name.log" | tail -n 25; fi
done
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
[ "$skip" -gt 0 ] && echo "$skip skipped (see their SKIP line)"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
