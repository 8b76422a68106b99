#!/usr/bin/env bash
# Runs every test:
#   1. the Rust policies (plugins/): unit tests of their logic, and their
#      harness tests (each policy built for wasm32-wasip2, run on the
#      sidecar's policy host, no server);
#   2. the Python policy (plugins-py/): unit tests of its logic, then its build;
#   3. the host, the harness, the services and the end-to-end tests;
#   4. the Python policy through the harness, in the demo chain, and its
#      table-driven cases through `sidecar policy test`.
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

echo "==> host, harness, services and end-to-end tests"
# Release: the same build as the demo, and wasm compiles fast in it.
cargo test --release --workspace
# The call benchmark in test mode: each case once, checking it measures the
# path its name says (timing is `cargo bench`, see BENCHMARKS.md).
cargo test --release -p sidecar --bench policy_calls

echo "==> Python policy in the harness and in the demo chain"
cargo test --release -p e2e -- --ignored

echo "==> Python policy: table-driven cases"
target/release/sidecar policy test plugins-py/target/acl.wasm plugins-py/acl/cases.toml
