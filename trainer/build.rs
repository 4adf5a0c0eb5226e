//! With the `cuda` feature: compiles `kernels/fused.cu` to PTX with nvcc (a CUDA toolkit's, or the
//! one `scripts/cuda-toolchain.sh` puts on PATH) for `src/cuda_kernels.rs`, for the compute
//! capability in `CUDA_COMPUTE_CAP` (as candle's kernels; default 80). PTX is compiled for the GPU
//! by the driver when first loaded, so it runs on that capability and every later one. Without
//! the feature this does nothing.

use std::error::Error;
use std::path::PathBuf;
use std::process::Command;

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return Ok(());
    }
    println!("cargo:rerun-if-changed=kernels/fused.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("fused.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let cap = cap.trim().trim_start_matches("sm_").replace('.', "");
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let output = Command::new(&nvcc)
        .args([
            "--ptx",
            "-O3",
            "-std=c++17",
            &format!("--gpu-architecture=compute_{cap}"),
            "-o",
        ])
        .arg(&out)
        .arg("kernels/fused.cu")
        .output()
        .map_err(|e| format!("cannot run {nvcc} (source scripts/cuda-toolchain.sh, or set NVCC): {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{nvcc} failed on kernels/fused.cu:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}
