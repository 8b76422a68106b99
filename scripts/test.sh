#!/usr/bin/env bash
# Runs every test:
#   1. the Rust policies (plugins/): unit tests of their logic, and their
#      harness tests (each policy built for wasm32-wasip2, run on the
#      sidecar's policy host, no server);
#   2. the Python policy (plugins-py/): unit tests of its logic, then its build;
#   3. the host, the harness, the services and the end-to-end tests (the
#      Python policy through the harness and in the demo chain included);
#   4. the Python policy's table-driven cases through `sidecar policy test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
install_redis_server

echo "==> Rust policies: unit and harness tests (plugins/)"
cargo test --manifest-path plugins/Cargo.toml

echo "==> Python policy: unit tests and build (plugins-py/)"
python3 -m unittest discover -s plugins-py/acl
bash scripts/build-python-policies.sh

echo "==> host, harness, services and end-to-end tests (the Python policy's included)"
# Release: the same build as the demo, and wasm compiles fast in it. Every
# cargo command here says --workspace: with `-p` cargo resolves features for
# that package alone, and would rebuild tokio, hyper and all above them.
# The ignored tests need the Python policy, built just above.
cargo test --release --workspace -- --include-ignored
# The call benchmark in test mode: each case once, checking it measures the
# path its name says (timing is `cargo bench`, see BENCHMARKS.md).
cargo test --release --workspace --bench policy_calls

echo "==> Python policy: table-driven cases"
target/release/sidecar policy test plugins-py/target/acl.wasm plugins-py/acl/cases.toml
