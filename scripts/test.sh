#!/usr/bin/env bash
# Runs every test: the policies' own unit tests, then the host, the services
# and the end-to-end tests (which build the policies for wasm32-wasip2 first).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh

echo "==> policy unit tests (plugins/, native)"
cargo test --manifest-path plugins/Cargo.toml

echo "==> host, services and end-to-end tests"
# Release: the same build as the demo, and wasm compiles fast in it.
cargo test --release --workspace
