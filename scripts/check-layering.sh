#!/usr/bin/env bash
# The dependency rule, checked: `shared` (native and wasm32) pulls in no CLI, GPU or UI crate, and
# `web` never depends on `trainer`.
set -euo pipefail
cd "$(dirname "$0")/.."

forbidden='^(clap|clap_builder|indicatif|tracing-subscriber|anyhow|leptos|leptos_.*|web-sys|gloo-.*|cudarc|candle-kernels|bindgen_cuda|tokio|reqwest|tpv-trainer|tpv-web)$'
status=0
for target in x86_64-unknown-linux-gnu wasm32-unknown-unknown; do
  deps=$(cargo tree --offline -p tpv-shared -e normal,build --target "$target" --prefix none --format '{p}' | awk '{print $1}' | sort -u)
  bad=$(grep -E "$forbidden" <<<"$deps" || true)
  if [ -n "$bad" ]; then
    echo "layering: tpv-shared ($target) depends on forbidden crates:" $bad >&2
    status=1
  fi
done
if cargo tree --offline -p tpv-web -e normal --target wasm32-unknown-unknown --prefix none --format '{p}' | grep -q '^tpv-trainer '; then
  echo "layering: tpv-web depends on tpv-trainer" >&2
  status=1
fi
[ $status -eq 0 ] && echo "layering: ok (shared has no CLI/GPU/UI dependency; web does not use trainer)"
exit $status
