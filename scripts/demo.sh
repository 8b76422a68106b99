#!/usr/bin/env bash
# Builds and runs the demo trio:
#   client ──> main-service :3001 ──> sidecar :4000 ──> user-service :3002
# Ctrl-C stops all three. With --python, the sidecar also runs the Python
# `acl` policy (plugins-py/, built with componentize-py): config/demo-python.toml.
# With --js, it also runs the JavaScript `ratelimit` policy (plugins-js/, built
# with componentize-js): config/demo-js.toml.
# With --replicas, a second user-service runs on :3003 and the sidecar balances
# between the two (config/demo-replicas.toml; see `curl localhost:9901/upstreams`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/setup.sh

CONFIG=config/demo.toml
REPLICAS=1
case "${1:-}" in
  "") ;;
  --python)
    CONFIG=config/demo-python.toml
    bash scripts/build-python-policies.sh
    ;;
  --js)
    CONFIG=config/demo-js.toml
    bash scripts/build-js-policies.sh
    ;;
  --replicas)
    CONFIG=config/demo-replicas.toml
    REPLICAS=2
    ;;
  *)
    echo "usage: scripts/demo.sh [--python | --js | --replicas]" >&2
    exit 2
    ;;
esac

build_plugins
echo "==> building sidecar, user-service, main-service"
# The whole workspace, so features unify exactly as in scripts/test.sh and
# running one after the other does not rebuild wasmtime.
cargo build --release --workspace

BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
pids=()
spare=()  # the second replica: it may be killed to watch the sidecar route around it
stop() {
  trap - INT TERM EXIT
  echo
  echo "==> stopping the trio"
  for pid in "${pids[@]}" "${spare[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

wait_for() { # name host:port [tenths of a second]
  for _ in $(seq 1 "${3:-100}"); do
    if (exec 3<>"/dev/tcp/${2%:*}/${2#*:}") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "error: $1 did not start on $2" >&2
  exit 1
}

USER_SERVICE_ADDR=127.0.0.1:3002 "$BIN/user-service" & pids+=($!)
wait_for user-service 127.0.0.1:3002
if [ "$REPLICAS" = 2 ]; then
  USER_SERVICE_ADDR=127.0.0.1:3003 "$BIN/user-service" & spare+=($!)
  wait_for user-service 127.0.0.1:3003
fi
"$BIN/sidecar" run --config "$CONFIG" & pids+=($!)
# Compiling a Python policy takes seconds, a JavaScript one tens of seconds
# (once: the compile cache keeps it).
wait_for sidecar 127.0.0.1:4000 1200
MAIN_SERVICE_ADDR=127.0.0.1:3001 SIDECAR_URL=http://127.0.0.1:4000 "$BIN/main-service" & pids+=($!)
wait_for main-service 127.0.0.1:3001

cat <<MSG

==> the trio is up
  main-service  http://127.0.0.1:3001   (the client's entry point)
  sidecar       http://127.0.0.1:4000   (policies from $CONFIG)
  user-service  http://127.0.0.1:3002$([ "$REPLICAS" = 2 ] && echo " and http://127.0.0.1:3003 (balanced)")

Try the seed's commands:
  curl -X POST http://localhost:3001/user/login -H "Content-Type: application/json" -d '{"username":"admin","password":"password"}'
  curl -X GET http://localhost:3001/user/profile -H "Authorization: Bearer <TOKEN>"
With --python: curl -i http://localhost:4000/user-service/admin   (403 from the Python acl policy;
  with -H "x-role: admin" it passes the acl and auth answers 401)
With --js: the profile call a 6th time within 10 s is 429 {"code":"rate_limited"} (the JavaScript
  ratelimit policy: 5 requests per user per 10 s). Straight at the sidecar, the answer also shows
  retry-after and x-ratelimit-*:
  curl -i http://localhost:4000/user-service/profile -H "Authorization: Bearer <TOKEN>"

Watch it:  curl -s localhost:9901/metrics | grep ^sidecar_requests    (also /readyz, /policies, /upstreams)
With --replicas: curl -s localhost:9901/upstreams   (requests per replica)
  kill ${spare[0]:-PID}   stops the :3003 replica: /upstreams shows it ejected after 3 failures or one failed
    health check (GETs that hit it are retried on :3002; a login, a POST, is never retried: 502 until then);
  USER_SERVICE_ADDR=127.0.0.1:3003 $BIN/user-service &   brings it back (the health check re-admits it)

Access logs from the logging policy appear below as JSON lines. Ctrl-C stops all three.
MSG
wait -n "${pids[@]}"
echo "error: a service exited; stopping the others" >&2
exit 1
