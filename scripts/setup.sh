# Sourced by the other scripts: installs what the build needs, idempotently.
# Only the Rust toolchain (rustup + cargo) is assumed.
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found; install Rust with rustup first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "==> installing the wasm32-wasip2 target (policies are built for it)"
    rustup target add wasm32-wasip2
  fi
else
  echo "warning: rustup not found; assuming the wasm32-wasip2 target is installed" >&2
fi

build_plugins() {
  echo "==> building policies (plugins/, wasm32-wasip2)"
  # Into plugins/target whatever CARGO_TARGET_DIR says: configs name the .wasm there.
  env -u CARGO_TARGET_DIR cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/plugins/Cargo.toml"
}

# apt_install PACKAGE WHY OTHERWISE: see scripts/apt.sh.
source "$(dirname "${BASH_SOURCE[0]}")/apt.sh"

# The kv store's Redis backend is tested against a real redis-server, which
# those tests start themselves on free ports; only the binary is needed.
install_redis_server() {
  if ! command -v redis-server >/dev/null 2>&1; then
    # The package may start a system instance on 6379: the tests do not use it.
    apt_install redis-server "the Redis backend's tests run it" "install Redis (redis-server) first"
  fi
}

# The dashboard's test (host/tests/all/dashboard.rs) loads the admin page in
# a real headless browser: Debian's chromium, at /usr/bin/chromium or at
# $SIDECAR_TEST_CHROMIUM.
install_chromium() {
  if [ -z "${SIDECAR_TEST_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
    apt_install chromium "the dashboard's test renders the page in it" \
      "install Chromium, or set SIDECAR_TEST_CHROMIUM to its binary"
  fi
}

# The host's HTTP/2, gRPC and WebSocket tests spawn real clients and servers
# written in Python (host/tests/clients/, grpcio and websockets pinned in its
# requirements.txt), installed here into target/clients-venv. The tests find
# the interpreter in one variable, exported for them:
#   "$SIDECAR_TEST_PYTHON" host/tests/clients/grpc_server.py ...
# It is the venv's python; without the venv module (Debian's python3-venv)
# pip installs into target/clients-venv/site instead (pip --target), and
# SIDECAR_TEST_PYTHON is target/clients-venv/python, a small wrapper that runs
# python3 with that folder on PYTHONPATH. PYTHONPATH itself is not exported:
# the other Python steps (the policies' build) must not see these packages.
# Reinstalled only when requirements.txt or python3's version changed (a hash
# stamp in the venv).
install_protocol_clients() {
  local req="$ROOT/host/tests/clients/requirements.txt"
  local venv="$ROOT/target/clients-venv"
  local site="$venv/site"
  local wrapper="$venv/python"
  local stamp="$venv/requirements.stamp"
  if ! command -v python3 >/dev/null 2>&1; then
    echo "error: python3 not found; the protocol tests' clients need python3 (3.11+) with venv and pip" >&2
    echo "       (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip)" >&2
    exit 1
  fi
  local hash
  hash="$({ python3 --version 2>&1; cat "$req"; } | sha256sum | cut -d' ' -f1)"
  if [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] && { [ -x "$venv/bin/python" ] || [ -x "$wrapper" ]; }; then
    echo "==> protocol test clients already installed (${venv#"$ROOT"/})"
  else
    echo "==> installing the protocol test clients (${req#"$ROOT"/}) into ${venv#"$ROOT"/}"
    # From scratch: a venv made by another python3 would not run.
    rm -rf "$venv"
    local pip
    if python3 -m venv "$venv" >/dev/null 2>&1; then
      pip=("$venv/bin/python" -m pip install)
    else
      rm -rf "$venv"
      echo "    (python3 -m venv is unavailable: using pip --target ${site#"$ROOT"/} instead)"
      mkdir -p "$site"
      pip=(python3 -m pip install --target "$site")
    fi
    if ! "${pip[@]}" --quiet --disable-pip-version-check -r "$req"; then
      echo "error: could not install ${req#"$ROOT"/} with pip (grpcio and websockets need python3 3.11+)" >&2
      echo "       (is pip installed? Debian/Ubuntu: apt-get install python3-pip python3-venv)" >&2
      exit 1
    fi
    if [ ! -x "$venv/bin/python" ]; then
      printf '#!/bin/sh\nPYTHONPATH="%s${PYTHONPATH:+:$PYTHONPATH}" exec python3 "$@"\n' "$site" >"$wrapper"
      chmod +x "$wrapper"
    fi
    echo "$hash" >"$stamp"
  fi
  if [ -x "$venv/bin/python" ]; then
    SIDECAR_TEST_PYTHON="$venv/bin/python"
  else
    SIDECAR_TEST_PYTHON="$wrapper"
  fi
  export SIDECAR_TEST_PYTHON
}
