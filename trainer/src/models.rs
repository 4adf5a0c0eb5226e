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
/// installs the fused ops' CUDA kernels (`cuda_kernels`) unless `TPV_CUDA_KERNELS=0` asks for
/// candle's composed ops instead.
pub fn device(spec: &str) -> Result<Device> {
    match spec.parse::<tpv_shared::DeviceSpec>()? {
        tpv_shared::DeviceSpec::Cpu => Ok(Device::Cpu),
        tpv_shared::DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                bail!("this tpv was built without CUDA; rebuild with `cargo build --release --features cuda`");
            }
            let device = Device::new_cuda(n).with_context(|| format!("cannot open {spec}"))?;
            #[cfg(feature = "cuda")]
            if std::env::var_os("TPV_CUDA_KERNELS").is_none_or(|v| v != "0") {
                crate::cuda_kernels::install();
            }
            Ok(device)
        }
    }
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
