#!/usr/bin/env bash
# The end-to-end load benchmark in one command: installs wrk and nginx
# (Debian packages) if missing, builds everything in release mode, then runs
# scripts/bench_load.py (direct vs nginx vs the sidecar, side by side).
# Needs 2+ CPUs; about 3 minutes once built, with the defaults (BENCH_SECONDS=10,
# BENCH_CONNS="32 64"). The table is printed and kept in target/bench-load.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing ${missing[*]} (Debian packages)"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if [ "$(nproc)" -lt 2 ]; then
  echo "error: the benchmark pins wrk and the servers to different CPUs; this machine has one" >&2
  exit 1
fi

build_plugins
PROFILE="${BENCH_PROFILE:-release}"
echo "==> building the sidecar and user-service (profile $PROFILE)"
if [ "$PROFILE" = release ]; then
  # The whole workspace, as scripts/test.sh builds it: nothing rebuilt after the tests.
  cargo build --release --workspace
else
  cargo build --profile "$PROFILE" -p sidecar -p user-service
fi
echo "==> running (BENCH_SECONDS=${BENCH_SECONDS:-10}, BENCH_CONNS=\"${BENCH_CONNS:-32 64}\", BENCH_PROFILE=$PROFILE)"
python3 scripts/bench_load.py
