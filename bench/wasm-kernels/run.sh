#!/usr/bin/env bash
# Builds the probe for wasm32 (simd128, as the web app is built) and times it in node's V8.
#   bash bench/wasm-kernels/run.sh
set -euo pipefail
cd "$(dirname "$0")"
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --target wasm32-unknown-unknown -q
echo "node $(node --version), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) (cpu family $(grep -m1 'cpu family' /proc/cpuinfo | cut -d: -f2 | xargs), model $(grep -m1 '^model\s' /proc/cpuinfo | cut -d: -f2 | xargs))"
node --no-liftoff bench.mjs target/wasm32-unknown-unknown/release/wasm_kernels.wasm
