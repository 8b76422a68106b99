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
  cargo build --release --target wasm32-wasip2 --manifest-path "$ROOT/plugins/Cargo.toml"
}
