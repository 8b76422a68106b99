#!/usr/bin/env bash
# Builds the Python policies: plugins-py/<name>/app.py -> plugins-py/target/<name>.wasm
#
# Self-installing and idempotent; only python3 (with venv + pip) is assumed:
#   - a venv in plugins-py/.venv holds the pinned componentize-py (installed
#     only when that exact version is not there yet);
#   - componentize-py generates the bindings for wit/ (world `policy`) while
#     it builds, so there is no separate bindings step (its `bindings`
#     command only writes stubs for editors:
#     `componentize-py -d wit -w policy bindings DIR`);
#   - `-d wit` reads the package of wit/*.wit (sidecar:policy@0.2.0) and
#     wit/deps/, nothing else: older contracts frozen in subfolders such as
#     wit/0.1.0/ are not part of the build;
#   - a policy is rebuilt only when its sources, the WIT that `-d wit` reads
#     or the componentize-py version changed (a hash stamp beside the .wasm).
# The policies' unit tests are not run here:
#   python3 -m unittest discover -s plugins-py/acl
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_DIR="$ROOT/plugins-py"
VENV="$PY_DIR/.venv"
TARGET="$PY_DIR/target"
WIT="$ROOT/wit"
WORLD="policy"
# Pinned: a new version may change the bundled CPython, the generated
# bindings' API or the WASI imports of the component.
COMPONENTIZE_PY_VERSION="0.25.1"

if ! command -v python3 >/dev/null 2>&1; then
  echo "error: python3 not found; the Python policies need python3 (3.9+) with venv and pip" >&2
  echo "       (Debian/Ubuntu: apt-get install python3 python3-venv python3-pip)" >&2
  exit 1
fi

# --- the pinned componentize-py, in a venv of its own --------------------
# Without the venv module (Debian's python3-venv), pip installs it into a
# plain folder instead (pip --target), run through python3.
SITE="$VENV/site"
if [ ! -x "$VENV/bin/python" ] && [ ! -d "$SITE" ]; then
  echo "==> creating a venv in ${VENV#"$ROOT"/}"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    echo "    (python3 -m venv is unavailable: using pip --target ${SITE#"$ROOT"/} instead)"
    mkdir -p "$SITE"
  fi
fi
cpy() {
  # VIRTUAL_ENV is unset so that an activated venv's site-packages are not
  # bundled into the component.
  if [ -x "$VENV/bin/python" ]; then
    env -u VIRTUAL_ENV "$VENV/bin/componentize-py" "$@"
  else
    env -u VIRTUAL_ENV PYTHONPATH="$SITE" python3 -c \
      'import sys; from componentize_py import script; sys.argv[0] = "componentize-py"; sys.exit(script())' "$@"
  fi
}
installed="$(cpy --version 2>/dev/null || true)"
if [ "$installed" = "componentize-py $COMPONENTIZE_PY_VERSION" ]; then
  echo "==> componentize-py $COMPONENTIZE_PY_VERSION already installed"
else
  echo "==> installing componentize-py==$COMPONENTIZE_PY_VERSION into ${VENV#"$ROOT"/}"
  if [ -x "$VENV/bin/python" ]; then
    pip=("$VENV/bin/python" -m pip install)
  else
    pip=(python3 -m pip install --upgrade --target "$SITE")
  fi
  if ! "${pip[@]}" --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY_VERSION"; then
    echo "error: could not install componentize-py==$COMPONENTIZE_PY_VERSION with pip" >&2
    echo "       (is pip installed? Debian/Ubuntu: apt-get install python3-pip python3-venv)" >&2
    exit 1
  fi
fi

# The hash of everything a build depends on. The component only gets the
# policy's non-test modules, copied to a staging folder, so tests and
# __pycache__ never end up inside it (componentize-py bundles the folder).
stage_and_hash() { # policy-dir stage-dir -> prints the hash
  python3 - "$1" "$2" "$WIT" "$COMPONENTIZE_PY_VERSION" <<'PY'
import hashlib, pathlib, shutil, sys
src, stage, wit = (pathlib.Path(a) for a in sys.argv[1:4])
version = sys.argv[4]
h = hashlib.sha256(f"componentize-py {version}\n".encode())
shutil.rmtree(stage, ignore_errors=True)
stage.mkdir(parents=True)
# Nor a venv or a build of the policy's own (plugins-py/template's README
# makes `.venv` and `dist/` in it).
def bundled(p):
    parts = p.relative_to(src).parts
    return (not p.name.startswith("test_") and "__pycache__" not in parts
            and parts[0] != "dist" and not any(d.startswith(".") for d in parts[:-1]))
for f in sorted(p for p in src.rglob("*.py") if bundled(p)):
    rel = f.relative_to(src)
    (stage / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(f, stage / rel)
    h.update(f"src/{rel}\n".encode() + f.read_bytes())
# What `-d wit` reads: the top-level *.wit files (one package) and all of
# deps/ (packages as folders, .wit or .wasm files). Other folders, such as a
# frozen wit/0.1.0/, are ignored by componentize-py, so they must not
# invalidate the stamp either.
wit_files = [p for p in wit.glob("*.wit") if p.is_file()]
wit_files += [p for p in (wit / "deps").rglob("*") if p.is_file()]
for f in sorted(wit_files):
    h.update(f"wit/{f.relative_to(wit).as_posix()}\n".encode() + f.read_bytes())
print(h.hexdigest())
PY
}

# The package `-d wit` builds against, for the log line.
PACKAGE="$(sed -n '/^package /{s/^package \([^;]*\);.*/\1/p;q;}' "$WIT"/*.wit)"

mkdir -p "$TARGET"
built=0
for dir in "$PY_DIR"/*/; do
  dir="${dir%/}"
  name="$(basename "$dir")"
  [ -f "$dir/app.py" ] || continue
  out="$TARGET/$name.wasm"
  stamp="$TARGET/$name.wasm.stamp"
  stage="$TARGET/build/$name"
  hash="$(stage_and_hash "$dir" "$stage")"
  if [ -f "$out" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ]; then
    echo "==> ${out#"$ROOT"/} is up to date"
    continue
  fi
  echo "==> building ${out#"$ROOT"/} from plugins-py/$name (world \`$WORLD\` of $PACKAGE)"
  start=$SECONDS
  # Into a temporary file first: a failed build leaves no half-written
  # .wasm, and no stamp, so the next run tries again.
  rm -f "$stamp" "$out.tmp"
  if ! cpy --quiet -d "$WIT" -w "$WORLD" componentize -p "$stage" -o "$out.tmp" app; then
    rm -f "$out.tmp"
    echo "error: componentize-py failed to build plugins-py/$name (see above)" >&2
    exit 1
  fi
  mv "$out.tmp" "$out"
  echo "$hash" >"$stamp"
  echo "    $(wc -c <"$out" | tr -d ' ') bytes in $((SECONDS - start)) s"
  built=$((built + 1))
done
echo "==> python policies: $built built"
