#!/usr/bin/env bash
# Builds what bench/gpu_check.sh runs on a GPU machine (which has no cargo and no network), here,
# without a GPU: the CUDA toolchain from PyPI wheels (scripts/cuda-toolchain.sh), `tpv` and the two
# GPU test binaries with `--features cuda`, stripped and xz-compressed into .gpu/ (git-ignored; the
# device tool carries it: `carry: [".gpu"]`). The first build compiles candle's CUDA kernels
# (~18 min on 2 cores); later ones are incremental.
#
#   bash bench/gpu_build.sh          # then, on the GPU machine: OUT=... bash bench/gpu_check.sh
#   bash bench/gpu_build.sh --cpu    # the same binaries without CUDA into .gpu-cpu/, for the
#                                    # check's rehearsal here (GPU_CHECK_DEVICE=cpu, bench/README.md)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = --cpu ]; then
  features=(); dir=.gpu-cpu; tests=(train_parity)
else
  # shellcheck source=/dev/null
  source scripts/cuda-toolchain.sh
  features=(--features cuda); dir=.gpu; tests=(train_parity cuda_kernels)
fi
cargo build --release --locked -p tpv-trainer "${features[@]}"
built=()
for t in "${tests[@]}"; do
  exe=$(cargo test --release --locked -p tpv-trainer "${features[@]}" --test "$t" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]: print(m["executable"])' | tail -1)
  [ -x "$exe" ] || { echo "gpu_build: no test binary for $t" >&2; exit 1; }
  built+=("$t=$exe")
done
rm -rf "$dir" && mkdir -p "$dir"
pack() { strip -o "$dir/$1" "$2" && xz -T2 -6 "$dir/$1"; }
pack tpv target/release/tpv
for t in "${built[@]}"; do pack "${t%%=*}" "${t#*=}"; done
ls -la "$dir"
