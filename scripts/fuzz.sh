#!/usr/bin/env bash
# Runs each cargo-fuzz target in fuzz/ for SECONDS (default 300) under
# libFuzzer, and fails if any of them finds a crash. The same entry points
# (the sidecar-fuzzing crate, fuzzing/) run over the seed corpus and 20 000 generated inputs
# in scripts/test.sh; this is the long run, see fuzz/README.md.
#
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_SANITIZER=none scripts/fuzz.sh 60   # without AddressSanitizer
#   FUZZ_TARGETS="config_parse" scripts/fuzz.sh
#
# The first run builds an instrumented copy of every dependency (wasmtime
# included) in fuzz/target: tens of minutes on two cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

PER_TARGET="${1:-300}"
SANITIZER="${FUZZ_SANITIZER:-address}"
read -r -a TARGETS <<< "${FUZZ_TARGETS:-config_parse request_roundtrip response_roundtrip}"

if ! command -v cargo-fuzz > /dev/null; then
    cargo install --locked cargo-fuzz
fi
# cargo fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov…);
# this lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1
# -a: debug assertions and overflow checks, so an arithmetic overflow is a
# crash rather than a silently wrong limit.
FLAGS=(-a -s "$SANITIZER")

cargo fuzz build "${FLAGS[@]}"

mkdir -p target/logs
failed=()
for t in "${TARGETS[@]}"; do
    # New inputs go to the first folder (not committed); the seeds in
    # corpus/<target> are only read.
    mkdir -p "target/corpus/$t"
    echo "==> $t for ${PER_TARGET}s"
    if cargo fuzz run "${FLAGS[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -dict="dict/$t.dict" -max_total_time="$PER_TARGET" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 > "target/logs/$t.log" 2>&1; then
        result=clean
    else
        result="FAILED (see fuzz/target/logs/$t.log and fuzz/artifacts/$t/)"
        failed+=("$t")
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "target/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
    corpus=$(find "target/corpus/$t" -type f | wc -l)
    echo "    $t: $result; ${execs} executions; ${corpus} corpus entries found"
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]}" >&2
    exit 1
fi
