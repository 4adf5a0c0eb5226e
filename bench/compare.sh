#!/usr/bin/env bash
# Side-by-side benchmark (not part of CI): the same soft-prompt work with tpv and with PyTorch +
# transformers + peft on this machine, in one run; prints each side's medians and the ratio
# (torch time / tpv time: above 1 means tpv is faster).
#
#   bash bench/compare.sh                 # CPU, both model shapes
#   DEVICE=cuda:0 DTYPE=bf16 bash bench/compare.sh   # a GPU build (cargo build --release --features cuda)
#   DROPOUT=0.1 MODELS=t5-base-shaped bash bench/compare.sh   # training steps with dropout (train mode)
#   MODELS=qwen3-1.7b-shaped LAYERS=4 bash bench/compare.sh    # a newer family, its first 4 layers
#
# Work (bench/torch_bench.py and `tpv bench` do the same): a SmolLM2-135M-shaped LLaMA (random
# weights) with 100 virtual tokens, batch 4 × 64 tokens, loss on every token; a T5-base-shaped model
# (random weights, relu, 12+12 layers) with 50 virtual tokens, batch 8 × 256 source tokens, 3 target
# tokens. Training step = forward + backward + clipping + AdamW, timed as (long run − short run) /
# extra steps; evaluation = greedy generation of 3 tokens for the batch. The Python side runs in
# ~/.cache/tpv/refenv (tests/reference/requirements.txt), created on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-f32}
SHORT=${SHORT:-1}
LONG=${LONG:-4}
REPEATS=${REPEATS:-3}
PY=${TPV_BENCH_PYTHON:-$HOME/.cache/tpv/refenv/bin/python}
if [ ! -x "$PY" ]; then
  python3 -m venv "$HOME/.cache/tpv/refenv"
  "$HOME/.cache/tpv/refenv/bin/pip" install -q -r tests/reference/requirements.txt
fi
if [ "$DEVICE" = cpu ]; then
  cargo build --release --locked -q -p tpv-trainer
else
  cargo build --release --locked -q -p tpv-trainer --features cuda
fi
tpv=${TPV:-target/release/tpv}
tdev=$DEVICE; [ "$DEVICE" = cpu ] || tdev=cuda
out=$(mktemp -d)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); device $DEVICE, $DTYPE"
for model in ${MODELS:-smollm2-shaped t5-base-shaped}; do
  args=(--model "$model" --dtype "$DTYPE" --short "$SHORT" --long "$LONG" --repeats "$REPEATS" --dropout "${DROPOUT:-0}" --json)
  [ -n "${LAYERS:-}" ] && args+=(--layers "$LAYERS")
  "$tpv" bench --device "$DEVICE" "${args[@]}" > "$out/tpv.json"
  "$PY" bench/torch_bench.py --device "$tdev" "${args[@]}" 2>/dev/null > "$out/torch.json"
  "$PY" - "$out/tpv.json" "$out/torch.json" <<'PY'
import json, sys
t, p = (json.load(open(f)) for f in sys.argv[1:3])
print(f"{t['model']} (R={t['virtual_tokens']}, batch {t['batch']}x{t['tokens']}):")
print(f"  train step   tpv {t['step_s']:.4f} s   torch+peft {p['step_s']:.4f} s   ratio {p['step_s']/t['step_s']:.2f}")
print(f"  eval batch   tpv {t['eval_batch_s']:.4f} s   torch+peft {p['eval_batch_s']:.4f} s   ratio {p['eval_batch_s']/t['eval_batch_s']:.2f}")
print(f"  tpv: {t['achieved_gflops']:.1f} GFLOP/s = {100*t['achieved_gflops']/t['matmul_peak_gflops']:.0f}% of the measured "
      f"{t['matmul_n']}^3 matmul peak ({t['matmul_peak_gflops']:.1f} GFLOP/s); torch+peft {t['train_gflop_per_step']/p['step_s']:.1f} GFLOP/s "
      f"({t['threads']} vs {p['threads']} threads)")
PY
done
# Loading: the SmolLM2-shaped model saved as an HF directory (safetensors), read by both sides.
"$PY" bench/torch_bench.py --model smollm2-shaped --save "$out/model" 2>/dev/null
cp tests/fixtures/models/llama_tied/tokenizer*.json "$out/model/"
for i in 1 2 3; do
  "$tpv" bench --model "$out/model" --device "$DEVICE" --dtype "$DTYPE" --load-only --json > "$out/tl$i.json"
  "$PY" bench/torch_bench.py --model "$out/model" --device "$tdev" --dtype "$DTYPE" --load-only --json 2>/dev/null > "$out/pl$i.json"
done
"$PY" - "$out" <<'PY'
import json, statistics, sys
d = sys.argv[1]
t = statistics.median(json.load(open(f"{d}/tl{i}.json"))["load_s"] for i in (1, 2, 3))
p = statistics.median(json.load(open(f"{d}/pl{i}.json"))["load_s"] for i in (1, 2, 3))
print(f"load SmolLM2-shaped safetensors: tpv {t:.3f} s   transformers {p:.3f} s   ratio {p/t:.2f}")
PY
rm -rf "$out"
