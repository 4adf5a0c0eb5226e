#!/usr/bin/env bash
# The CUDA check, run on a GPU machine with no network (no cargo there) from binaries that
# `bash bench/gpu_build.sh` built here (tpv and the tests train_parity and cuda_kernels with
# `--features cuda`, stripped and xz-compressed into .gpu/), with $OUT for the log:
#   1. the fused ops' CUDA kernels against their CPU twins (trainer/tests/cuda_kernels.rs);
#   1b. the same kernels' self-test as tpv runs it when a device opens (the preflight's device row);
#   2. the training parity test (torch + peft fixtures) on cuda:0, with the kernels, then without;
#   3. the tiny fixture study (tests/fixtures/study) swept on cuda:0;
#   4. `tpv bench` and bench/torch_bench.py on the same GPU, f32 and bf16, both model shapes, and
#      tpv with candle's composed ops (TPV_CUDA_KERNELS=0) for what the kernels change.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/log"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee -a "$OUT/log"
# The test binary reads fixtures from the path it was built in.
mkdir -p /work && [ -e /work/main ] || ln -s "$PWD" /work/main
python3 -c "import lzma,shutil,sys
for n in ['tpv','train_parity','cuda_kernels']:
    with lzma.open('.gpu/'+n+'.xz') as f, open('.gpu/'+n,'wb') as g: shutil.copyfileobj(f,g)"
lib=$(dirname "$(find /opt /usr/local /usr/lib -name 'libcublas.so.13' 2>/dev/null | head -1)")
export LD_LIBRARY_PATH="$lib:${LD_LIBRARY_PATH:-}"
log "libraries from $lib"
chmod +x .gpu/*
log "fused kernels on cuda:0 against their CPU twins"
timeout 60 .gpu/cuda_kernels --test-threads 1 --nocapture 2>&1 | tee -a "$OUT/log"
log "the self-test when cuda:0 opens (tpv sweep --check: the device row)"
timeout 60 .gpu/tpv sweep tests/fixtures/study/study.toml --check --set 'study.output="/tmp/gpu-study"' --set 'model.device="cuda:0"' 2>&1 | grep -E "device|warning" | tee -a "$OUT/log"
log "parity on cuda:0"
TPV_TEST_DEVICE=cuda:0 timeout 90 .gpu/train_parity --test-threads 1 2>&1 | tee -a "$OUT/log"
log "parity on cuda:0 with candle's composed ops (TPV_CUDA_KERNELS=0)"
TPV_CUDA_KERNELS=0 TPV_TEST_DEVICE=cuda:0 timeout 60 .gpu/train_parity --test-threads 1 2>&1 | tail -3 | tee -a "$OUT/log"
log "the tiny fixture study on cuda:0 (sweep + aggregate)"
timeout 60 .gpu/tpv sweep tests/fixtures/study/study.toml --set 'study.output="/tmp/gpu-study"' --set 'model.device="cuda:0"' 2>&1 | tail -3 | tee -a "$OUT/log"
timeout 30 .gpu/tpv aggregate /tmp/gpu-study 2>/dev/null | head -12 | tee -a "$OUT/log"
for m in smollm2-shaped t5-base-shaped; do
  for dt in f32 bf16; do
    log "tpv bench $m $dt"
    timeout 55 .gpu/tpv bench --model $m --device cuda:0 --dtype $dt --short 5 --long 25 --repeats 3 --json 2>&1 | tee -a "$OUT/log"
    log "tpv bench $m $dt, composed ops (TPV_CUDA_KERNELS=0)"
    TPV_CUDA_KERNELS=0 timeout 55 .gpu/tpv bench --model $m --device cuda:0 --dtype $dt --short 5 --long 25 --repeats 3 --json 2>&1 | tee -a "$OUT/log"
    log "torch bench $m $dt"
    timeout 55 python3 bench/torch_bench.py --model $m --device cuda --dtype $dt --short 5 --long 25 --repeats 3 --json 2>&1 | tee -a "$OUT/log"
  done
done
log done
