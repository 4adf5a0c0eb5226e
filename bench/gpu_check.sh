#!/usr/bin/env bash
# The GPU check (issue 34), one script for a GPU machine without network (no cargo there), from
# the binaries `bash bench/gpu_build.sh` built elsewhere (.gpu/: tpv, and the tests train_parity
# and cuda_kernels, with `--features cuda`). Everything it measures goes under $OUT: `log` (every
# step, timed), `bench/*.json` (one file per benchmark, tpv's and torch's), `gpu_mem/*.txt` (the
# GPU's memory sampled every 200 ms during each benchmark: its peak is the run's).
#   1. each fused kernel against its CPU twin (trainer/tests/cuda_kernels.rs);
#   2. the kernels' self-test as tpv runs it when a device opens (the preflight's device row);
#   3. train parity with torch + peft on the device: with the kernels, without them
#      (TPV_CUDA_KERNELS=0), and in bf16; the zero-host-read step test is part of it;
#   4. the fixture study swept on the device, and its tables;
#   5. the benchmarks, tpv against torch + peft on the same device: T5-base-shaped at the paper's
#      batch (32 × 256, 50 virtual tokens) in f32 and bf16, SmolLM2-135M-shaped and
#      LLaMA-3.1-8B-shaped in bf16 at the paper's LLM batch (4 × 256, 100 virtual tokens); tpv
#      also with candle's composed ops for what the kernels change.
# Budget on a GPU: under 8 minutes end to end (each step has its own timeout).
#
#   OUT=/path bash bench/gpu_check.sh                                  # on the GPU machine
#   GPU_CHECK_DEVICE=cpu OUT=/tmp/rehearsal bash bench/gpu_check.sh    # the rehearsal here, after
#       `bash bench/gpu_build.sh --cpu`: every step on the CPU at small sizes (1–2 layers,
#       2 × 16 tokens), to prove the script and its outputs before a GPU's minutes are spent
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT/bench" "$OUT/gpu_mem"
DEV=${GPU_CHECK_DEVICE:-cuda:0}
start=$(date +%s)
log() { echo "== [$(($(date +%s) - start)) s] $*" | tee -a "$OUT/log"; }
if [ "$DEV" = cpu ]; then
  BIN=${GPU_CHECK_BIN:-.gpu-cpu}; TORCH_DEV=cpu; PY=${TORCH_PYTHON:-$HOME/.cache/tpv/refenv/bin/python}
  STEPS=(--short 1 --long 2 --repeats 1); T5=(--layers 1 --batch 2 --tokens 16); LLM=(--layers 1 --batch 2 --tokens 16)
  SLOW=300
else
  BIN=${GPU_CHECK_BIN:-.gpu}; TORCH_DEV=cuda; PY=${TORCH_PYTHON:-python3}
  STEPS=(--short 3 --long 13 --repeats 2); T5=(--batch 32 --tokens 256); LLM=(--batch 4 --tokens 256)
  SLOW=1
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log"
  lib=$(dirname "$(find /opt /usr/local /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)")
  export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
  log "libraries from $lib"
fi
# The test binary reads fixtures from the path it was built in.
mkdir -p /work && { [ -e /work/main ] || ln -s "$PWD" /work/main; }
mkdir -p .gpu-run
python3 -c "import lzma,shutil,sys,os
for n in os.listdir('$BIN'):
    if n.endswith('.xz'):
        with lzma.open('$BIN/'+n) as f, open('.gpu-run/'+n[:-3],'wb') as g: shutil.copyfileobj(f,g)"
chmod +x .gpu-run/*
# t SECONDS CMD…: CMD under a timeout scaled for the rehearsal's CPU.
t() { local s=$(($1 * SLOW)); shift; timeout "$s" "$@"; }

if [ -x .gpu-run/cuda_kernels ]; then
  log "1. fused kernels on $DEV against their CPU twins"
  t 60 .gpu-run/cuda_kernels --test-threads 1 --nocapture 2>&1 | tail -25 | tee -a "$OUT/log"
else
  log "1. (no cuda_kernels binary: a CPU rehearsal)"
fi
log "2. the kernels' self-test when $DEV opens (the preflight's device row)"
t 60 .gpu-run/tpv --json sweep tests/fixtures/study/study.toml --check --set 'study.output="/tmp/gpu-study"' \
  --set "model.device=\"$DEV\"" 2>"$OUT/selftest.stderr" >"$OUT/preflight.json"
grep -i warning "$OUT/selftest.stderr" | tee -a "$OUT/log"
python3 -c "import json; [print(c['what'], '|', c['detail']) for c in json.load(open('$OUT/preflight.json')) if c['what'].startswith('device')]" | tee -a "$OUT/log"
log "3. train parity on $DEV (the kernels as the self-test left them)"
TPV_TEST_DEVICE=$DEV t 120 .gpu-run/train_parity --test-threads 1 2>&1 | grep -E "^test |test result|panicked|differs" | tee -a "$OUT/log"
log "3. train parity on $DEV with candle's composed ops (TPV_CUDA_KERNELS=0)"
TPV_CUDA_KERNELS=0 TPV_TEST_DEVICE=$DEV t 120 .gpu-run/train_parity --test-threads 1 2>&1 | grep -E "test result|panicked" | tee -a "$OUT/log"
log "3. train parity on $DEV in bf16"
TPV_TEST_DTYPE=bf16 TPV_TEST_DEVICE=$DEV t 120 .gpu-run/train_parity --test-threads 1 2>&1 | grep -E "test result|panicked|differs" | tee -a "$OUT/log"
log "4. the fixture study on $DEV (sweep + aggregate)"
rm -rf /tmp/gpu-study
t 120 .gpu-run/tpv sweep tests/fixtures/study/study.toml --set 'study.output="/tmp/gpu-study"' --set "model.device=\"$DEV\"" 2>&1 | tail -3 | tee -a "$OUT/log"
t 30 .gpu-run/tpv aggregate /tmp/gpu-study 2>/dev/null | head -12 | tee -a "$OUT/log"

# bench LABEL SECONDS CMD…: CMD's JSON into bench/LABEL.json, the GPU's memory sampled meanwhile.
bench() {
  local label=$1 secs=$2; shift 2
  log "5. $label"
  local sampler=
  if [ "$DEV" != cpu ]; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$OUT/gpu_mem/$label.txt" 2>/dev/null &
    sampler=$!
  fi
  t "$secs" "$@" >"$OUT/bench/$label.json" 2>>"$OUT/bench/$label.stderr"
  local rc=$?
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
  local peak=
  [ -s "$OUT/gpu_mem/$label.txt" ] && peak=" peak GPU memory $(sort -n "$OUT/gpu_mem/$label.txt" | tail -1) MiB"
  echo "   rc $rc;$peak $(head -c 400 "$OUT/bench/$label.json" | tr '\n' ' ')" | tee -a "$OUT/log"
}
for dt in f32 bf16; do
  bench "t5-base-$dt-tpv" 45 .gpu-run/tpv bench --model t5-base-shaped --device "$DEV" --dtype $dt --virtual-tokens 50 "${T5[@]}" "${STEPS[@]}" --json
  bench "t5-base-$dt-torch" 45 "$PY" bench/torch_bench.py --model t5-base-shaped --device $TORCH_DEV --dtype $dt --virtual-tokens 50 "${T5[@]}" "${STEPS[@]}" --json
  [ "$DEV" != cpu ] && TPV_CUDA_KERNELS=0 bench "t5-base-$dt-tpv-composed" 45 .gpu-run/tpv bench --model t5-base-shaped --device "$DEV" --dtype $dt --virtual-tokens 50 "${T5[@]}" "${STEPS[@]}" --json
done
for m in smollm2-shaped llama31-8b-shaped; do
  bench "$m-bf16-tpv" 60 .gpu-run/tpv bench --model $m --device "$DEV" --dtype bf16 --virtual-tokens 100 "${LLM[@]}" "${STEPS[@]}" --json
  bench "$m-bf16-torch" 60 "$PY" bench/torch_bench.py --model $m --device $TORCH_DEV --dtype bf16 --virtual-tokens 100 "${LLM[@]}" "${STEPS[@]}" --json
done
[ "$DEV" != cpu ] && TPV_CUDA_KERNELS=0 bench "smollm2-shaped-bf16-tpv-composed" 60 .gpu-run/tpv bench --model smollm2-shaped --device "$DEV" --dtype bf16 --virtual-tokens 100 "${LLM[@]}" "${STEPS[@]}" --json
log "summary: step and greedy-evaluation time, torch / tpv (above 1: tpv faster)"
python3 - "$OUT" <<'PY' | tee -a "$OUT/log"
import json, pathlib, sys
b = pathlib.Path(sys.argv[1]) / "bench"
def load(n):
    try:
        return json.loads((b / f"{n}.json").read_text())
    except Exception:
        return None
for tpv in sorted(p.stem for p in b.glob("*-tpv*.json")):
    torch = load(tpv.split("-tpv")[0] + "-torch")
    t = load(tpv)
    if not t:
        print(f"{tpv}: no result"); continue
    line = f"{tpv}: step {t['step_s']:.4f} s, {t.get('achieved_gflops', 0) / 1e3:.2f} TFLOP/s of a {t.get('matmul_peak_gflops', 0) / 1e3:.1f} TFLOP/s matmul peak, eval {t['eval_batch_s']:.4f} s"
    if torch and "-composed" not in tpv:
        line += f"; torch step {torch['step_s']:.4f} s ({torch['step_s'] / t['step_s']:.2f}x), eval {torch['eval_batch_s']:.4f} s ({torch['eval_batch_s'] / t['eval_batch_s']:.2f}x)"
    print(line)
PY
log "done"
