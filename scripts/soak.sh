#!/usr/bin/env bash
# The long soak: the sidecar binary under concurrent load for SECONDS
# (default 600), a reload every 3 s (config rewrite, POST /reload, policy
# file swap in turn) and hostile policies (loop, trap, alloc, recurse) on
# other routes. Fails on any failed healthy request, any hostile answer but
# 503 policy_failed, a sidecar panic or exit, RSS growth beyond 1.5x the
# post-warm-up size + 32 MiB, or an unclean SIGTERM exit. Prints requests,
# reloads and RSS (start, after warm-up, peak, end, and every 10 s).
# The test suite (scripts/test.sh) runs the same test for 60 s.
#
#   scripts/soak.sh [SECONDS]       SOAK_CLIENTS=N sets the healthy clients (16)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh

SECONDS_ARG="${1:-600}"
if ! [[ "$SECONDS_ARG" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/soak.sh [SECONDS]   (a positive whole number; default 600)" >&2
  exit 2
fi

echo "==> soak for ${SECONDS_ARG} s (builds the release test binary first)"
SOAK_SECONDS="$SECONDS_ARG" exec cargo test --release -p sidecar --test all \
  soak::soak_under_load -- --nocapture
