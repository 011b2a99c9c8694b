#!/usr/bin/env bash
# tests/fuzz/run.sh: the libFuzzer harnesses (build-asan/fuzz_*, `make fuzz-build`).
#   run.sh deck|json    replay tests/corpus/<reader>/ (every input must pass), then a short
#                       seeded fuzzing run (-seed=1, FUZZ_RUNS inputs, at most FUZZ_SECONDS s)
#   run.sh long         `make fuzz`: FUZZ_SECONDS s per harness, then the process-level
#                       mutation loop (tests/test_fuzz.py --long); new crashers in build-asan/fuzz-out/
# A crash, a sanitizer report, a broken invariant of the harness or a hang (-timeout)
# fails the run and names the input; keep it in tests/corpus/<reader>/ once minimized
# (build-asan/fuzz_<reader> -minimize_crash=1 -runs=10000 CRASHFILE).
set -u
cd "$(dirname "$0")/../.."
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
out=build-asan/fuzz-out
mkdir -p "$out"

replay() {  # every kept input, one at a time, so each failing one is named
    local name=$1 bad=0 n=0
    for f in tests/corpus/"$name"/*; do
        n=$((n + 1))
        if ! build-asan/fuzz_"$name" -timeout=10 "$f" > "$out/replay-$name.log" 2>&1; then
            bad=$((bad + 1))
            echo "FAIL $name corpus: $f: $(grep -m1 -E "^fuzz_$name:|ALARM|SUMMARY" "$out/replay-$name.log")"
        fi
    done
    echo "$([ $bad -eq 0 ] && echo ok || echo FAIL) $name corpus: $n inputs replayed, $bad failed"
    [ $bad -eq 0 ]
}

fuzz() {  # seeded run from the kept inputs (and the example decks for deck)
    local name=$1 runs=$2 secs=$3 work seeds
    seeds=tests/corpus/$name
    work=$(mktemp -d "${TMPDIR:-/tmp}/partita-fuzz-$name-XXXXXX")
    [ "$name" = deck ] && seeds="$seeds inputs"
    build-asan/fuzz_"$name" -seed=1 -runs="$runs" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 \
        -dict=tests/fuzz/"$name".dict -artifact_prefix="$out/$name-" -print_final_stats=1 \
        "$work" $seeds > "$out/fuzz-$name.log" 2>&1
    local rc=$? execs
    execs=$(grep -m1 number_of_executed_units "$out/fuzz-$name.log" | awk '{print $2}')
    rm -rf "$work"
    if [ $rc -eq 0 ]; then
        echo "ok   $name fuzz: ${execs:-?} inputs (seed 1, at most $runs inputs / $secs s), no finding"
    else
        echo "FAIL $name fuzz: $(grep -m1 -E "^fuzz_$name:|ALARM|SUMMARY" "$out/fuzz-$name.log")"
        grep -A2 -m1 "^fuzz_$name:" "$out/fuzz-$name.log"
        echo "  the input: $(grep -o "Test unit written to .*" "$out/fuzz-$name.log")"
    fi
    return $rc
}

for h in deck json stage; do
    [ -x build-asan/fuzz_$h ] || { echo "FAIL build-asan/fuzz_$h missing (hint: make fuzz-build)"; exit 1; }
done
case "${1:-}" in
    deck) replay deck; r1=$?; fuzz deck "${FUZZ_RUNS:-30000}" "${FUZZ_SECONDS:-15}"; r2=$? ;;
    json) replay json; r1=$?; fuzz json "${FUZZ_RUNS:-60000}" "${FUZZ_SECONDS:-8}"; r2=$? ;;
    stage) replay stage; r1=$?; fuzz stage "${FUZZ_RUNS:-60000}" "${FUZZ_SECONDS:-8}"; r2=$? ;;
    long)
        r1=0; for h in deck json stage; do replay $h || r1=1; fuzz $h 0 "${FUZZ_SECONDS:-300}" || r1=1; done
        ${PYTHON:-/usr/bin/python3} tests/test_fuzz.py --long; r2=$? ;;
    *) echo "usage: tests/fuzz/run.sh deck|json|stage|long" >&2; exit 2 ;;
esac
echo "summary: corpus $([ $r1 -eq 0 ] && echo ok || echo FAILED), fuzz $([ $r2 -eq 0 ] && echo ok || echo FAILED)"
[ $r1 -eq 0 ] && [ $r2 -eq 0 ]
