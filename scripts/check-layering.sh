#!/usr/bin/env bash
# The dependency rule, checked: `shared` (native and wasm32) pulls in no CLI, GPU or UI crate,
# `web` never depends on `trainer`, and the core's file formats and arithmetic never reach into
# the model layer (`model`, `eval`'s loading and scoring, `attempt`'s mixing, `nearest`, `text`).
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
# The core: file formats (prompts, run files, peft adapters, documents, reports, studies, eval
# sets), arithmetic, merges, similarity, statistics, metrics and tasks. They may use each other,
# candle's types and `eval::set`/`eval::summary` (plain data), nothing of the model layer.
core=(tensor prompt attempt_params arith merge similarity stats metrics runfile peft document report diff
  study st records tasks names error versioned time eval/set eval/summary)
model_layer='crate::(model|attempt|nearest|text)\b|crate::eval::(\{|[A-Za-z_]+\b)'
for m in "${core[@]}"; do
  f="shared/src/$m.rs"
  [ -f "$f" ] || { echo "layering: $f is missing (update the core list)" >&2; status=1; continue; }
  # Code only (doc links name the model layer without depending on it).
  bad=$(grep -nE "$model_layer" "$f" | grep -vE '^[0-9]+:\s*//' | grep -vE 'crate::eval::(set|summary)\b' || true)
  if [ -n "$bad" ]; then
    echo "layering: $f (the core) uses the model layer:" >&2
    echo "$bad" >&2
    status=1
  fi
done
[ $status -eq 0 ] && echo "layering: ok (shared has no CLI/GPU/UI dependency; web does not use trainer; the core does not use the model layer)"
exit $status
