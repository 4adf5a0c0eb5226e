#!/usr/bin/env bash
# A CUDA 13.0 build toolchain from PyPI wheels, for building `tpv --features cuda` on a machine
# without the CUDA toolkit (no GPU needed to build): nvcc, headers, libraries to link against, and a
# link-time libcuda.so that only names the driver's symbols (the driver's own libcuda.so.1 is the one
# loaded at run time on the GPU machine). 13.0 matches driver 580.
#
#   source scripts/cuda-toolchain.sh            # installs into ~/.cache/tpv/cuda13 once, sets env
#   cargo build --release -p tpv-trainer --features cuda
#
# On the GPU machine, LD_LIBRARY_PATH must reach libcublas.so.13, libcurand.so.10, libcudart.so.13
# and libnvrtc.so.13 (e.g. a PyTorch cu130 environment's nvidia/cu13/lib), see bench/gpu_check.sh.
root=${TPV_CUDA_ROOT:-$HOME/.cache/tpv/cuda13}
if [ ! -x "$root/x/nvidia/cu13/bin/nvcc" ]; then
  mkdir -p "$root/whl" "$root/x"
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$root/whl" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.0.2.14 nvidia-cuda-cccl==13.0.85 \
    || { echo "cuda-toolchain: pip download failed" >&2; return 1; }
  for w in "$root"/whl/*.whl; do python3 -m zipfile -e "$w" "$root/x"; done
  cu="$root/x/nvidia/cu13"
  chmod +x "$cu"/bin/* "$cu"/nvvm/bin/*
  (cd "$cu/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf lib$l.so.13 lib$l.so; done && ln -sf libcurand.so.10 libcurand.so)
  # Link-time libcuda.so: every driver entry point cudarc declares (so the linker resolves them),
  # soname libcuda.so.1 (so the binary loads the driver's library at run time).
  src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs | head -1)
  mkdir -p "$cu/lib/link"
  grep -oE '^ +fn cu[A-Za-z0-9_]*\(' "$src" | sed 's/ *fn //; s/(//' | sort -u | sed 's/.*/void &(void){}/' > "$root/libcuda-symbols.c"
  gcc -shared -fPIC -o "$cu/lib/link/libcuda.so" -Wl,-soname,libcuda.so.1 "$root/libcuda-symbols.c"
fi
export CUDA_ROOT="$root/x/nvidia/cu13" CUDA_PATH="$root/x/nvidia/cu13"
export PATH="$CUDA_ROOT/bin:$PATH" LIBRARY_PATH="$CUDA_ROOT/lib/link:$CUDA_ROOT/lib"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
