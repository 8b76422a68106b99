#!/usr/bin/env bash
# Builds the JavaScript policies: plugins-js/<name>/src/policy.js ->
# plugins-js/<name>/dist/<name>.wasm, by each package's own `npm run build`
# (so `npm run build` by hand and this script make the same file).
#
# Self-installing and idempotent:
#   - without node or npm, installs Debian's `nodejs` and `npm` (apt-get);
#     node 20 or later is needed (componentize-js's dependencies ask for it);
#   - `npm ci` installs the exact versions of package-lock.json (the pinned
#     componentize-js among them) into the package's node_modules, only when
#     the lock file changed since the last install (a hash stamp inside
#     node_modules) or node_modules is missing;
#   - componentize-js generates the bindings for wit/ (world `policy`) while
#     it builds: `--wit ../../wit` reads the package of wit/*.wit
#     (sidecar:policy@0.2.1) and wit/deps/, not the frozen wit/0.1.0/ or
#     wit/0.2.0/;
#   - a policy is rebuilt only when its sources (src/, package.json,
#     package-lock.json), the WIT that `--wit` reads, or the node version
#     changed (a hash stamp beside the .wasm);
#   - the package's build writes a temporary file and renames it, so a failed
#     build leaves no half-written .wasm (and no stamp: the next run retries).
# Every plugins-js/*/ with a package.json is built, except plugins-js/template
# (the starting point of `sidecar policy new --lang js`, not a policy).
# The policies' unit tests are not run here: `node --test` in each package.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
JS_DIR="$ROOT/plugins-js"
WIT="$ROOT/wit"
NODE_MAJOR_MIN=20
source "$ROOT/scripts/apt.sh"

# --- node and npm ----------------------------------------------------------
if ! command -v node >/dev/null 2>&1; then
  apt_install nodejs "the JavaScript policies are built with node" \
    "install Node.js $NODE_MAJOR_MIN or later (with npm) first"
fi
if ! command -v npm >/dev/null 2>&1; then
  apt_install npm "the JavaScript policies' build tools are installed with npm" \
    "install npm first"
fi
node_version="$(node --version)"
node_major="${node_version#v}"
node_major="${node_major%%.*}"
if [ "$node_major" -lt "$NODE_MAJOR_MIN" ]; then
  echo "error: node $node_version is too old: componentize-js needs node $NODE_MAJOR_MIN or later" >&2
  echo "       (Debian 12's nodejs is 18; install a newer Node.js, e.g. from Debian 13 or nodejs.org)" >&2
  exit 1
fi

# The hash of what a package's build depends on: its sources, its lock file,
# the WIT files `--wit` reads (the top-level *.wit: one package; and deps/,
# not the frozen contracts in other folders), and node's version.
build_hash() { # package-dir -> prints the hash
  local dir="$1"
  {
    echo "node $node_version"
    (
      cd "$dir"
      find src package.json package-lock.json -type f -print0 | LC_ALL=C sort -z |
        xargs -0 sha256sum
    )
    (
      cd "$WIT"
      {
        find . -maxdepth 1 -name '*.wit' -type f -print0
        if [ -d deps ]; then find deps -type f -print0; fi
      } | LC_ALL=C sort -z | xargs -0 sha256sum
    )
  } | sha256sum | cut -d' ' -f1
}

# The package of wit/*.wit, for the log line.
PACKAGE="$(sed -n '/^package /{s/^package \([^;]*\);.*/\1/p;q;}' "$WIT"/*.wit)"

built=0
for dir in "$JS_DIR"/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  [ -f "$dir/package.json" ] || continue
  [ "$name" = template ] && continue
  rel="${dir#"$ROOT"/}"
  if [ ! -f "$dir/package-lock.json" ]; then
    echo "error: $rel has no package-lock.json (run \`npm install\` there and commit it)" >&2
    exit 1
  fi

  # npm ci wipes node_modules and installs exactly the lock file: only when
  # the lock file changed since the last one.
  lock_hash="$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)"
  lock_stamp="$dir/node_modules/.ci-stamp"
  if [ "$(cat "$lock_stamp" 2>/dev/null)" = "$lock_hash" ]; then
    echo "==> $rel: node_modules up to date"
  else
    echo "==> $rel: npm ci"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    echo "$lock_hash" >"$lock_stamp"
  fi

  out="$dir/dist/$name.wasm"
  stamp="$out.stamp"
  hash="$(build_hash "$dir")"
  if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "==> ${out#"$ROOT"/} is up to date"
    continue
  fi
  echo "==> building ${out#"$ROOT"/} from $rel (world \`policy\` of $PACKAGE)"
  start=$SECONDS
  rm -f "$stamp"
  if ! (cd "$dir" && npm run --silent build); then
    echo "error: the build of $rel failed (see above)" >&2
    exit 1
  fi
  if [ ! -f "$out" ]; then
    echo "error: $rel's \`npm run build\` did not write dist/$name.wasm" >&2
    exit 1
  fi
  echo "$hash" >"$stamp"
  echo "    $(wc -c <"$out" | tr -d ' ') bytes in $((SECONDS - start)) s"
  built=$((built + 1))
done
echo "==> javascript policies: $built built"
