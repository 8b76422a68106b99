#!/usr/bin/env bash
# The template policy in Rust, Python and JavaScript side by side, in one run
# (the per-language table of BENCHMARKS.md): component size, load time and
# memory cold and from the compile cache, a request end to end through a fresh
# and a reused instance. Builds what it needs (the sidecar, the three
# templates: plugins/template, plugins-py/template, plugins-js/template) and
# installs wrk if missing; then runs scripts/bench_languages.py. About 4
# minutes once built (BENCH_SECONDS=5 per route, BENCH_ROUNDS=2).
#
# The call cost alone (no HTTP), fresh and reused, for the same three builds:
#   cargo bench --workspace --bench policy_calls -- template
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
command -v wrk >/dev/null 2>&1 || apt_install wrk "the benchmark drives the sidecar with it" "install wrk first"
rustup target add wasm32-wasip2 >/dev/null

cargo build --release --workspace --bin sidecar
cargo build --release --manifest-path plugins/Cargo.toml --target wasm32-wasip2 -p template
bash scripts/build-python-policies.sh
(cd plugins-js/template && { [ -d node_modules ] || npm ci --no-audit --no-fund; } && npm run build)

python3 scripts/bench_languages.py target/release/sidecar \
  "$ROOT/plugins/target/wasm32-wasip2/release/template.wasm" \
  "$ROOT/plugins-py/target/template.wasm" \
  "$ROOT/plugins-js/template/dist/template.wasm"
