#!/usr/bin/env bash
# Runs every test:
#   1. the Rust policies (plugins/): unit tests of their logic, and their
#      harness tests (each policy built for wasm32-wasip2, run on the
#      sidecar's policy host, no server);
#   2. the Python policy (plugins-py/): unit tests of its logic, then its build;
#   3. the JavaScript policy (plugins-js/): its build (node and npm installed
#      if missing), then the unit tests of its logic;
#   4. the host, the harness, the services and the end-to-end tests (the
#      Python and JavaScript policies through the harness and in a chain
#      included);
#   5. the Python and JavaScript policies' table-driven cases through
#      `sidecar policy test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh
install_redis_server
install_chromium
install_protocol_clients

echo "==> Rust policies: unit and harness tests (plugins/)"
cargo test --manifest-path plugins/Cargo.toml

echo "==> Python policy: unit tests and build (plugins-py/)"
python3 -m unittest discover -s plugins-py/acl
bash scripts/build-python-policies.sh

echo "==> JavaScript policy: build and unit tests (plugins-js/)"
# The build first: it installs node and npm when they are missing.
bash scripts/build-js-policies.sh
(cd plugins-js/ratelimit && node --test)

echo "==> host, harness, services and end-to-end tests (the Python and JavaScript policies' included)"
# Release: the same build as the demo, and wasm compiles fast in it. Every
# cargo command here says --workspace: with `-p` cargo resolves features for
# that package alone, and would rebuild tokio, hyper and all above them.
# The ignored tests need the Python and JavaScript policies, built just above.
#
# Some tests race real timing (a Redis outage, 200 faulty upstream exchanges,
# collectors going away) and can lose it when the whole suite shares two busy
# cores. A test that fails is run once more on its own and named either way:
# one that fails alone too fails the run; any other failure (a build error,
# a crash) fails it at once.
log="$(mktemp)"
if ! cargo test --release --workspace --no-fail-fast -- --include-ignored 2>&1 | tee "$log"; then
  failed="$(grep -E '^test .* \.\.\. FAILED$' "$log" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/' | sort -u)"
  if [ -z "$failed" ]; then
    exit 1
  fi
  echo "==> these failed with the suite; running each once more, alone:"
  echo "$failed"
  for t in $failed; do
    cargo test --release --workspace -- --include-ignored --exact "$t"
  done
  echo "==> they passed alone: flaky under load, not fixed (see the list above)"
fi
rm -f "$log"
# The call benchmark in test mode: each case once, checking it measures the
# path its name says (timing is `cargo bench`, see BENCHMARKS.md).
cargo test --release --workspace --bench policy_calls

echo "==> Python policy: table-driven cases"
target/release/sidecar policy test plugins-py/target/acl.wasm plugins-py/acl/cases.toml

echo "==> JavaScript policy: table-driven cases"
target/release/sidecar policy test plugins-js/ratelimit/dist/ratelimit.wasm plugins-js/ratelimit/cases.toml
