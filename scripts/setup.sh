#!/usr/bin/env bash
# Set up VSO Lab on a fresh Debian/Ubuntu machine: system packages, Go, Python packages, lab binaries.
# Safe to run again: every step skips what is already there. Honours VSOLAB_CACHE and VSOLAB_INSTALL_SOURCE.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\n== %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

apt_install() {
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "Debian packages: ${missing[*]}"
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}" || { $SUDO apt-get update && $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; }
}

if command -v apt-get >/dev/null; then
  # python3-psycopg: under root, pods run as `nobody`, who cannot use a Python in root's home (the example app needs psycopg)
  pkgs=(postgresql python3 python3-psycopg ca-certificates curl unzip)
  # the emoji font: the checks' ✅/❌ and the widgets' marks in headless screenshots (scripts/screenshots.py)
  [ "${VSOLAB_BROWSER:-1}" = "1" ] && pkgs+=(chromium fonts-noto-color-emoji)
  apt_install "${pkgs[@]}"
fi

# Go 1.26+: the machine's own, or the official toolchain from the Go module proxy (the same zip GOTOOLCHAIN uses).
GO_WANT=1.26.8
if ! command -v go >/dev/null || ! go version | grep -Eq 'go1\.(2[6-9]|[3-9][0-9])'; then
  say "Go $GO_WANT from the Go module proxy"
  dest="${VSOLAB_CACHE:-$HOME/.cache/vsolab}/go-$GO_WANT"
  if [ ! -x "$dest/bin/go" ]; then
    mkdir -p "$dest.tmp"
    curl -fsSL "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go$GO_WANT.linux-amd64.zip" -o "$dest.zip"
    unzip -q -o "$dest.zip" -d "$dest.tmp" && rm -f "$dest.zip"
    rm -rf "$dest" && mv "$dest.tmp/golang.org/toolchain@v0.0.1-go$GO_WANT.linux-amd64" "$dest" && rm -rf "$dest.tmp"
  fi
  export PATH="$dest/bin:$PATH"
fi
go version

say "Python packages (pip install -e .[test])"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

# The JupyterHub test's proxy (tests/test_jupyterhub.py runs a hub with jupyterhub/jupyterhub_config.py): from npm, pinned,
# into a prefix of its own (not -g), put on the hub's PATH by the test. Without npm the test is skipped.
CHP_VERSION=5.3.0
npm_prefix="${VSOLAB_NPM_PREFIX:-$HOME/.cache/vsolab-npm}"
if command -v npm >/dev/null; then
  if [ "$("$npm_prefix/node_modules/.bin/configurable-http-proxy" --version 2>/dev/null)" != "$CHP_VERSION" ]; then
    say "configurable-http-proxy $CHP_VERSION from npm (into $npm_prefix)"
    npm install --prefix "$npm_prefix" --no-fund --no-audit --loglevel=error "configurable-http-proxy@$CHP_VERSION"
  fi
else
  echo "npm is missing: tests/test_jupyterhub.py (a real JupyterHub) will be skipped (apt-get install npm)" >&2
fi

say "Lab binaries (the official release binaries when their hosts answer, else built from the Go module proxy; cached)"
python3 -m labkit install --source "${VSOLAB_INSTALL_SOURCE:-auto}"
