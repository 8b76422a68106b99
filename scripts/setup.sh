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

# The kv store's Redis backend is tested against a real redis-server, which
# those tests start themselves on free ports; only the binary is needed.
install_redis_server() {
  if command -v redis-server >/dev/null 2>&1; then
    return
  fi
  echo "==> installing redis-server (the Redis backend's tests run it)"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: redis-server not found and no apt-get to install it; install Redis (redis-server) first" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
  # The package may start a system instance on 6379: the tests do not use it.
}
