#!/usr/bin/env bash
# Installs every tool the tests need, idempotently: the wasm32 target, trunk, wasm-bindgen-cli
# (the exact version in Cargo.lock), Debian's chromium + chromedriver, the npm packages of the
# browser tests, and TensorBoard (in a venv) for the event-file test. Safe to run again: each step checks first and does nothing when already done.
#
#   bash scripts/setup.sh          # everything the tests need (scripts/test.sh calls it)
#   bash scripts/setup.sh --web    # only what the web app's build needs (scripts/run.sh calls it)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

TOOLCHAIN=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
TRUNK_VERSION=0.21.14

# 1. The pinned toolchain (rust-toolchain.toml) and its target for the browser build.
if ! rustup toolchain list | grep -q "^$TOOLCHAIN"; then
  log "installing Rust $TOOLCHAIN"
  rustup toolchain install "$TOOLCHAIN" --profile minimal -c rustfmt -c clippy -t wasm32-unknown-unknown
fi
if ! rustup target list --installed --toolchain "$TOOLCHAIN" | grep -qx wasm32-unknown-unknown; then
  log "adding wasm32-unknown-unknown to $TOOLCHAIN"
  rustup target add wasm32-unknown-unknown --toolchain "$TOOLCHAIN"
fi

# 2. trunk (0.22 needs a newer rustc than ours).
if ! trunk --version 2>/dev/null | grep -q "$TRUNK_VERSION"; then
  log "installing trunk $TRUNK_VERSION (about 9 min on 2 cores)"
  cargo install --locked "trunk@$TRUNK_VERSION"
fi

# 3. wasm-bindgen-cli, exactly the version of the wasm-bindgen crate in Cargo.lock.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock)
if ! wasm-bindgen --version 2>/dev/null | grep -q " $WB_VERSION"; then
  log "installing wasm-bindgen-cli $WB_VERSION (about 3 min)"
  # Not --locked: its lock file wants a webpki-roots release the registry mirror lacks.
  cargo install wasm-bindgen-cli --version "$WB_VERSION"
fi

if [ "${1:-}" = "--web" ]; then
  cargo fetch --locked >/dev/null
  log "web build tools ready"
  exit 0
fi

# 4. From Debian: chromium and chromedriver (never a browser a tool downloads itself), and the
#    package managers `tpv fetch` calls (pip for PyPI assets, npm for npm assets and the browser test).
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
APT=()
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then APT+=(chromium chromium-driver); fi
if ! python3 -m pip --version >/dev/null 2>&1; then APT+=(python3-pip); fi
if ! command -v npm >/dev/null; then APT+=(npm); fi
if ! python3 -c "import ensurepip" >/dev/null 2>&1; then APT+=(python3-venv); fi
if [ ${#APT[@]} -gt 0 ]; then
  log "installing ${APT[*]} from Debian"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${APT[@]}" >/dev/null
fi

# 5. npm packages of the browser tests (playwright-core only drives the Debian chromium).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  log "installing npm packages for tests/browser"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)
fi

# 6. TensorBoard (PyPI, pinned) in a venv of its own: a test reads tpv's event files with
#    TensorBoard's own reader (tests/tensorboard/read_events.py).
TBENV="${TPV_CACHE:-$HOME/.cache/tpv}/tbenv"
if ! "$TBENV/bin/python" -c "import tensorboard" >/dev/null 2>&1; then
  log "installing tensorboard 2.20.0 into $TBENV"
  python3 -m venv "$TBENV"
  "$TBENV/bin/pip" install -q "tensorboard==2.20.0"
fi

# 7. Crates, so that trunk's offline build finds them.
cargo fetch --locked >/dev/null
log "tools ready"
