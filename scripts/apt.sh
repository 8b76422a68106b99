# Sourced by the scripts that install Debian packages (setup.sh, and
# build-js-policies.sh, which needs no Rust): one apt_install for all.

# Installs Debian package $1 with apt-get (as root, or with sudo), for the
# reason $2; $3 says what to do where there is no apt-get. The package lists
# are updated once per run.
apt_updated="${apt_updated:-}"  # kept if sourced twice
apt_install() {
  local package="$1" why="$2" otherwise="$3"
  echo "==> installing $package ($why)"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $package not found and no apt-get to install it; $otherwise" >&2
    exit 1
  fi
  if [ -z "$apt_updated" ]; then
    $sudo apt-get update -qq
    apt_updated=1
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"
}
