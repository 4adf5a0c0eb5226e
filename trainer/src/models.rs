//! Resolving `--model` and loading a model with its tokenizer: a local HF directory, a GGUF file,
//! an HF hub id from the local hub cache, or `smollm2` (the embedded default, fetched into the
//! cache on first use).

use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use tpv_shared::eval::{Loaded, hf_files};

use crate::assets;

/// A frozen model with its tokenizer (`tpv_shared::eval::Loaded`, the code the web app loads
/// models with) and what identifies it. Cloning shares the weights.
#[derive(Clone)]
pub struct LoadedModel {
    pub loaded: Loaded,
    pub id: String,
}

impl std::ops::Deref for LoadedModel {
    type Target = Loaded;
    fn deref(&self) -> &Loaded {
        &self.loaded
    }
}

/// `f32`, `bf16` or `f16` ([`tpv_shared::Precision`]).
pub fn dtype(spec: &str) -> Result<DType> {
    Ok(spec.parse::<tpv_shared::Precision>()?.dtype())
}

/// `cpu` or `cuda:N` ([`tpv_shared::DeviceSpec`]; CUDA needs the `cuda` feature). Opening a GPU
/// installs the fused ops' CUDA kernels (`cuda_kernels`) as [`KernelMode`] says: by default
/// each op's kernels run once against their CPU twins first and only those that agree are used.
pub fn device(spec: &str) -> Result<Device> {
    match spec.parse::<tpv_shared::DeviceSpec>()? {
        tpv_shared::DeviceSpec::Cpu => Ok(Device::Cpu),
        tpv_shared::DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!("this tpv was built without CUDA; rebuild with `cargo build --release --features cuda`");
            }
            let mode = KernelMode::from_env()?;
            let device = Device::new_cuda(n).with_context(|| format!("cannot open {spec}"))?;
            #[cfg(feature = "cuda")]
            if mode != KernelMode::Off {
                crate::cuda_kernels::install();
            }
            install_checked(spec, &device, mode, tpv_shared::model::kernel_check::self_test);
            Ok(device)
        }
    }
}

/// How a GPU uses the fused ops' kernels: `TPV_CUDA_KERNELS` = `check` (the default: each op's
/// kernels run once against their CPU twins when the device opens, and only the ops whose every
/// check passes use them), `1` (all, without the self-test), `0` (none: candle's composed ops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelMode {
    Checked,
    Trusted,
    Off,
}

impl KernelMode {
    pub fn parse(value: Option<&str>) -> Result<Self> {
        match value {
            None | Some("check") => Ok(Self::Checked),
            Some("1") => Ok(Self::Trusted),
            Some("0") => Ok(Self::Off),
            Some(v) => bail!(
                "TPV_CUDA_KERNELS={v:?}: 0 (candle's composed ops), 1 (every kernel, untested) or check (the default: the kernels that pass the self-test)"
            ),
        }
    }

    fn from_env() -> Result<Self> {
        Self::parse(std::env::var("TPV_CUDA_KERNELS").ok().as_deref())
    }
}

/// What the kernels' self-test said on each GPU this process opened (for the preflight).
static KERNEL_SUMMARY: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// The fused kernels' state on the GPU `spec` this process opened: which ops use them and why.
pub fn kernel_summary(spec: &str) -> Option<String> {
    let seen = KERNEL_SUMMARY.lock().ok()?;
    seen.iter().find(|(s, _)| s == spec).map(|(_, summary)| summary.clone())
}

/// Decides which ops use the installed kernels on `device` (`spec`) under `mode`, running
/// `self_test` (the device's kernels against their CPU twins) when asked; warns for each failed
/// kernel, and records the summary. A process with several GPUs uses an op's kernels only where
/// every one of them passed.
pub fn install_checked(
    spec: &str,
    device: &Device,
    mode: KernelMode,
    self_test: impl Fn(&Device) -> candle_core::Result<Vec<tpv_shared::model::kernel_check::KernelCheck>>,
) {
    use tpv_shared::model::gpu::{self, FusedOp};
    let Ok(mut seen) = KERNEL_SUMMARY.lock() else {
        return;
    };
    if seen.iter().any(|(s, _)| s == spec) {
        return;
    }
    let summary = match mode {
        KernelMode::Off => "fused kernels off (TPV_CUDA_KERNELS=0): candle's composed ops".to_owned(),
        KernelMode::Trusted => format!(
            "all {} fused ops' kernels in use without the self-test (TPV_CUDA_KERNELS=1)",
            FusedOp::ALL.len()
        ),
        KernelMode::Checked => {
            let verdict = match self_test(device) {
                Ok(checks) => {
                    let mut v = tpv_shared::model::kernel_check::verdict(&checks);
                    // Another GPU of this process may have turned some off already.
                    v.enabled.retain(|op| gpu::enabled(*op));
                    (v, checks.len())
                }
                Err(e) => (
                    tpv_shared::model::kernel_check::Verdict {
                        enabled: Vec::new(),
                        warnings: vec![format!(
                            "the fused kernels' self-test could not run ({e}): none is used"
                        )],
                    },
                    0,
                ),
            };
            let (v, checks) = verdict;
            gpu::set_enabled(&v.enabled);
            for w in &v.warnings {
                eprintln!("warning: {spec}: {w}");
            }
            let off: Vec<&str> = FusedOp::ALL
                .iter()
                .filter(|op| !v.enabled.contains(op))
                .map(|op| op.name())
                .collect();
            format!(
                "fused kernels: {} of {} ops passed the self-test ({checks} checks against the CPU twins){}",
                v.enabled.len(),
                FusedOp::ALL.len(),
                if off.is_empty() {
                    String::new()
                } else {
                    format!("; candle's composed ops for {}", off.join(", "))
                }
            )
        }
    };
    seen.push((spec.to_owned(), summary));
}

/// The GPUs this process sees, by their physical ids (`CUDA_VISIBLE_DEVICES`'s entries); `None`
/// when it is not set (then every GPU, numbered as nvidia-smi numbers them).
pub fn visible_gpus() -> Option<Vec<String>> {
    let v = std::env::var("CUDA_VISIBLE_DEVICES").ok()?;
    Some(
        v.split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(str::to_owned)
            .collect(),
    )
}

/// The id nvidia-smi knows the GPU `cuda:INDEX` by (its physical id, through
/// `CUDA_VISIBLE_DEVICES`).
pub fn nvidia_smi_id(index: usize) -> String {
    visible_gpus()
        .and_then(|v| v.get(index).cloned())
        .unwrap_or_else(|| index.to_string())
}

/// A number nvidia-smi reports (`--query-gpu=FIELD`, no units) for the GPU `cuda:INDEX` (an index
/// among the visible ones, asked for by its physical id); `None` when it cannot be read.
pub fn nvidia_smi_query(index: usize, field: &str) -> Option<f64> {
    let id = nvidia_smi_id(index);
    let out = std::process::Command::new("nvidia-smi")
        .args([
            &format!("--query-gpu={field}"),
            "--format=csv,noheader,nounits",
            "-i",
            &id,
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// A read-only memory map of a weights file.
#[allow(unsafe_code)]
fn map_file(path: &Path) -> Result<memmap2::Mmap> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    // SAFETY: the map is read only while the model's tensors are copied out of it (then dropped);
    // tpv never writes model files, and another program truncating one meanwhile is the same
    // hazard every memory-mapping loader (safetensors' own, candle's) accepts.
    unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))
}

/// Finds the files of `spec`: a directory, a `.gguf` file, `smollm2`, or `org/name` in the local
/// hub cache (`$HF_HUB_CACHE`, `$HF_HOME/hub`, default `~/.cache/huggingface/hub`), downloaded
/// there from the hub when it is missing.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if spec == assets::SMOLLM2.name {
        return assets::ensure(&assets::SMOLLM2);
    }
    if is_hub_id(spec) {
        return match hub_snapshot(spec) {
            Ok(snapshot) => Ok(snapshot),
            // Not cached: download it (unless HF_HUB_OFFLINE=1), naming both failures if that fails too.
            Err(cached) => crate::hub::download_model(spec, "main").map_err(|e| e.context(format!("{cached:#}"))),
        };
    }
    bail!("{spec}: no such file or directory, and not `smollm2` or an `org/name` hub id")
}

/// Whether `spec` (not a path that exists) names a hub model: `org/name`.
pub fn is_hub_id(spec: &str) -> bool {
    !Path::new(spec).exists()
        && spec
            .split_once('/')
            .is_some_and(|(org, name)| !org.is_empty() && !name.contains('/'))
}

/// [`resolve`] without downloading a hub model: a local path, `smollm2`, or a hub id already in
/// the local hub cache. For what a file from someone else names (`tpv report`'s `study.json`),
/// which must not make this machine download an arbitrary repository.
pub fn resolve_local(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if spec == assets::SMOLLM2.name {
        return assets::ensure(&assets::SMOLLM2);
    }
    hub_snapshot(spec)
}

/// The local HF hub cache: `$HF_HUB_CACHE`, `$HF_HOME/hub`, or `~/.cache/huggingface/hub`.
pub fn hub_cache() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    Ok(match std::env::var_os("HF_HOME") {
        Some(home) => PathBuf::from(home).join("hub"),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".cache/huggingface/hub"),
    })
}

/// A repo's directory in the hub cache, as huggingface_hub names it: `KIND--ORG--NAME` (`kind`:
/// `models`, `datasets`).
pub fn hub_repo_dir(kind: &str, repo_id: &str) -> Result<PathBuf> {
    Ok(hub_cache()?.join(format!("{kind}--{}", repo_id.replace('/', "--"))))
}

/// The snapshot `refs/main` points at, for a model repo in the hub cache (datasets: `hub::dataset`).
fn hub_snapshot(repo_id: &str) -> Result<PathBuf> {
    let repo = hub_repo_dir("models", repo_id)?;
    let rev = std::fs::read_to_string(repo.join("refs/main")).with_context(|| {
        format!(
            "{repo_id} is not in the local hub cache ({}); download it with `huggingface-cli download {repo_id}`",
            repo.display()
        )
    })?;
    let snapshot = repo.join("snapshots").join(rev.trim());
    if snapshot.is_dir() {
        return Ok(snapshot);
    }
    bail!("{} is missing", snapshot.display())
}

/// The model a process loaded last, kept for the next job of a study that needs it.
static LAST: std::sync::Mutex<Option<(String, LoadedModel)>> = std::sync::Mutex::new(None);

/// [`load`], reusing the model this process loaded last when `spec`, `dtype` and `device` are
/// the same (a study's jobs run one after another in one process; the weights are frozen, so
/// sharing them is safe).
pub fn load_cached(spec: &str, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let key = format!("{spec}\u{0}{dtype:?}\u{0}{:?}", device.location());
    if let Ok(last) = LAST.lock()
        && let Some((k, m)) = last.as_ref()
        && *k == key
    {
        return Ok(m.clone());
    }
    let loaded = load(spec, dtype, device)?;
    if let Ok(mut last) = LAST.lock() {
        *last = Some((key, loaded.clone()));
    }
    Ok(loaded)
}

/// Loads the model `spec` names onto `device`.
pub fn load(spec: &str, dtype: DType, device: &Device) -> Result<LoadedModel> {
    let path = resolve(spec)?;
    if path.extension().is_some_and(|e| e == "gguf") {
        let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        let (loaded, name) = Loaded::from_gguf(&mut BufReader::new(file), dtype, device)
            .with_context(|| format!("loading {}", path.display()))?;
        let id = if spec == assets::SMOLLM2.name {
            "HuggingFaceTB/SmolLM2-135M-Instruct".to_owned()
        } else {
            name.unwrap_or_else(|| spec.to_owned())
        };
        return Ok(LoadedModel { loaded, id });
    }
    if !path.is_dir() {
        bail!("{}: expected a model directory or a .gguf file", path.display());
    }
    // The folder's files as the shared description lists them; the weights memory-mapped, not
    // read: the heap holds the model's tensors once, and the file's pages stay the kernel's to
    // drop (an 8B checkpoint used to occupy its size twice).
    let read_text = |name: &str| {
        std::fs::read_to_string(path.join(name)).with_context(|| format!("cannot read {}", path.join(name).display()))
    };
    if !path.join(hf_files::WEIGHTS).exists() && !path.join(hf_files::INDEX).exists() {
        bail!(
            "{} has no model.safetensors (pytorch_model.bin is a pickle, which tpv does not execute)",
            path.display()
        );
    }
    let names = hf_files::to_read(|f| path.join(f).exists(), || read_text(hf_files::INDEX))?;
    let shards = names
        .iter()
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| map_file(&path.join(n)))
        .collect::<Result<Vec<_>>>()?;
    let tokenizer = std::fs::read(path.join(hf_files::TOKENIZER))
        .with_context(|| format!("{} has no tokenizer.json", path.display()))?;
    let tokenizer_config = read_text(hf_files::TOKENIZER_CONFIG).ok();
    let loaded = Loaded::from_hf(
        &read_text(hf_files::CONFIG)?,
        &shards,
        &tokenizer,
        tokenizer_config.as_deref(),
        dtype,
        device,
    )
    .with_context(|| format!("loading {}", path.display()))?;
    drop(shards);
    // A local directory is named by its canonical path, so `a/../m` and `m` are the same model.
    let id = if path.components().any(|c| c.as_os_str() == "snapshots") {
        spec.to_owned()
    } else {
        std::fs::canonicalize(&path).unwrap_or(path).display().to_string()
    };
    Ok(LoadedModel { loaded, id })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tpv_shared::model::gpu::{self, FusedOp};
    use tpv_shared::model::kernel_check::{Case, self_test_with};

    #[test]
    fn tpv_cuda_kernels_takes_0_1_or_check() {
        assert_eq!(KernelMode::parse(None).unwrap(), KernelMode::Checked);
        assert_eq!(KernelMode::parse(Some("check")).unwrap(), KernelMode::Checked);
        assert_eq!(KernelMode::parse(Some("1")).unwrap(), KernelMode::Trusted);
        assert_eq!(KernelMode::parse(Some("0")).unwrap(), KernelMode::Off);
        let err = KernelMode::parse(Some("yes")).unwrap_err().to_string();
        assert!(
            err.contains("TPV_CUDA_KERNELS=\"yes\"") && err.contains("check"),
            "{err}"
        );
    }

    /// Opening a GPU whose softmax kernel is wrong (here the CPU with a twin whose softmax
    /// gradient is off by a constant): the op falls back, the preflight's summary says so, and
    /// the other ops keep their kernels. Opening a second GPU never turns an op back on.
    #[test]
    fn a_gpu_whose_kernel_fails_the_self_test_uses_the_composed_op_and_the_preflight_says_so() {
        let wrong = |case: &Case, inputs: &[candle_core::Tensor], _: DType| {
            let mut out = (case.run)(inputs, DType::F32)?;
            if case.op == FusedOp::Softmax {
                out[1] = (&out[1] + 0.5)?;
            }
            Ok(out)
        };
        install_checked("cuda:7", &Device::Cpu, KernelMode::Checked, |_| self_test_with(wrong));
        let summary = kernel_summary("cuda:7").unwrap();
        assert!(
            summary.starts_with("fused kernels: 6 of 7 ops passed the self-test")
                && summary.ends_with("candle's composed ops for softmax"),
            "{summary}"
        );
        assert!(!gpu::enabled(FusedOp::Softmax) && gpu::enabled(FusedOp::RmsNorm));
        let right = |case: &Case, inputs: &[candle_core::Tensor], _: DType| (case.run)(inputs, DType::F32);
        install_checked("cuda:8", &Device::Cpu, KernelMode::Checked, |_| self_test_with(right));
        assert!(!gpu::enabled(FusedOp::Softmax), "a second GPU turned softmax back on");
        assert!(kernel_summary("cuda:8").unwrap().contains("6 of 7"));
        install_checked("cuda:9", &Device::Cpu, KernelMode::Off, |_| unreachable!());
        assert!(kernel_summary("cuda:9").unwrap().contains("TPV_CUDA_KERNELS=0"));
    }
}
