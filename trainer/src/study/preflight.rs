//! The preflight of a study (`tpv sweep STUDY --check`, and the start of every sweep and Slurm
//! emission): before the first of possibly thousands of GPU hours, every model and every task's
//! data is resolved (downloaded into the caches unless `HF_HUB_OFFLINE=1`; with `--check
//! --no-download` a hub model is read from its config and safetensors headers instead), the devices are
//! opened, each job's memory (weights + activations at its batch size and dtype) is estimated
//! against the device's, and the disk the unfinished runs need against what is free. One table;
//! anything missing fails the sweep before it starts.

use std::collections::BTreeSet;
use std::path::Path;
use tpv_shared::model::family::Spec;

use serde::Serialize;
use tpv_shared::study::NAME_MAX;

use super::{Job, JobKind, Study};
use crate::config::Config;
use crate::{data, models};

/// One line of the preflight's table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// The configs whose data and model a study's job reads: its training config, and its
/// evaluated task's.
fn job_configs(study: &Study, job: &Job) -> anyhow::Result<Vec<Config>> {
    let mut out: Vec<Config> = study.train_config(job, None)?.into_iter().collect();
    let task = match &job.kind {
        JobKind::PromptTuning { task, .. } => Some(task),
        JobKind::Transfer { target, .. } => Some(target),
        _ => None,
    };
    if let Some(t) = task {
        out.push(study.task_config(t, job)?);
    }
    Ok(out)
}

/// What a preflight checks: everything before a sweep runs here; before Slurm scripts are
/// written, not the devices and their memory (a login node has no GPU: the array tasks check
/// their own device when they start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Everything,
    NoDevices,
}

/// How the preflight resolves a hub model that is not in the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// Download it (the sweep's jobs then find it; what every sweep and emission does).
    Download,
    /// Read its config.json and safetensors headers from the hub (a few KB) and say what the
    /// download will take (`tpv sweep --check --no-download`).
    HeadersOnly,
}

/// Runs every check; the table is in the order the user acts on it (data, models, devices,
/// memory, disk).
pub fn preflight(study: &Study, scope: Scope, weights: Weights) -> Vec<Check> {
    let jobs = study.jobs();
    let mut checks = Vec::new();
    let (mut data_seen, mut models_seen, mut devices_seen) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut configs: Vec<Config> = Vec::new();
    for job in &jobs {
        match job_configs(study, job) {
            Ok(cs) => configs.extend(cs),
            Err(e) => checks.push(Check {
                what: format!("config of {}", job.id),
                ok: false,
                detail: format!("{e:#}"),
            }),
        }
    }
    checks.extend(paths_check(study, &jobs));
    for c in &configs {
        // Whether the data is there does not depend on the shots or caps a job takes of it.
        let d = &c.data;
        let key =
            serde_json::to_string(&(&d.train, &d.dataset_dir, &d.validation, &d.test, &d.task)).unwrap_or_default();
        if data_seen.insert(key) {
            checks.push(data_check(c));
        }
    }
    let mut facts = std::collections::BTreeMap::new();
    for c in &configs {
        if models_seen.insert(c.model.path.clone()) {
            let f = facts
                .entry(c.model.path.clone())
                .or_insert_with(|| model_facts(&c.model.path, weights));
            checks.push(model_check(c, f));
        }
        if scope == Scope::Everything && devices_seen.insert(c.model.device.clone()) {
            checks.push(device_check(&c.model.device));
        }
    }
    let mut memory_seen = BTreeSet::new();
    for c in configs.iter().filter(|_| scope == Scope::Everything) {
        // Everything the estimate depends on: the sequence length too.
        let key = (
            (c.model.path.clone(), c.model.dtype.clone(), c.model.device.clone()),
            (c.optim.batch_size, c.prompt.virtual_tokens, c.data.max_source_tokens),
            c.train.gradient_checkpointing,
        );
        if memory_seen.insert(key)
            && let Some(f) = facts.get(&c.model.path)
        {
            checks.push(memory_check(c, f));
        }
    }
    checks.push(disk_check(study, &jobs, &configs));
    checks
}

/// The longest path a job directory may have: PATH_MAX less room for the files a job writes in it.
const PATH_ROOM: usize = 4096 - 128;

/// Every job's run directory is a path the file system can hold: task names join into job ids
/// (an addition of two 200-byte names is one 401-byte component), which failed with "File name
/// too long" only when the job ran, after everything before it. One check per failing job.
fn paths_check(study: &Study, jobs: &[Job]) -> Vec<Check> {
    let base = std::path::absolute(study.output()).unwrap_or_else(|_| study.output().to_path_buf());
    let failed: Vec<Check> = jobs
        .iter()
        .filter_map(|job| {
            let dir = base.join(&job.id);
            let long = job.id.split('/').find(|part| part.len() > NAME_MAX);
            let detail = match long {
                Some(part) => format!(
                    "its directory's component {part:?} is {} bytes; file systems allow {NAME_MAX} (shorten the task names)",
                    part.len()
                ),
                None if dir.as_os_str().len() > PATH_ROOM => format!(
                    "its directory {} is {} bytes long; paths are limited to 4096 (move study.output or shorten the task names)",
                    dir.display(),
                    dir.as_os_str().len()
                ),
                None => return None,
            };
            Some(Check {
                what: format!("path of {}", job.id),
                ok: false,
                detail,
            })
        })
        .collect();
    // Each tuned task's eval set is `examples/TASK.json`.
    let long_sets = study
        .tuned_tasks()
        .into_iter()
        .filter(|t| t.len() + ".json".len() > NAME_MAX)
        .map(|t| Check {
            what: format!("eval set of {t}"),
            ok: false,
            detail: format!(
                "examples/{t}.json: a file name of {} bytes; file systems allow {NAME_MAX} (shorten the task name)",
                t.len() + 5
            ),
        });
    let failed: Vec<Check> = failed.into_iter().chain(long_sets).collect();
    if !failed.is_empty() {
        return failed;
    }
    vec![Check {
        what: format!("paths under {}", study.output().display()),
        ok: true,
        detail: format!(
            "{} job directories within the file system's name and path limits",
            jobs.len()
        ),
    }]
}

fn data_check(c: &Config) -> Check {
    let name = &c.data.train;
    match data::load_all(&c.data) {
        Ok(all) => {
            let counts: Vec<String> = all
                .iter()
                .map(|s| {
                    format!(
                        "{} {}/{}/{}",
                        s.task.name,
                        s.train.len(),
                        s.validation.len(),
                        s.test.len()
                    )
                })
                .collect();
            Check {
                what: format!("data {name}"),
                ok: true,
                detail: format!("train/validation/test: {}", counts.join(", ")),
            }
        }
        Err(e) => Check {
            what: format!("data {name}"),
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

/// What the preflight knows of a model: where it is (or what downloading it takes), and, from
/// its config.json through the families' registry, its spec and parameter count.
struct ModelFacts {
    detail: String,
    spec: Option<Box<dyn Spec>>,
    params: Option<f64>,
}

/// [`ModelFacts`] of a model path: resolved (downloaded if need be), or with
/// [`Weights::HeadersOnly`] a hub model not in the cache read from the hub's config and headers
/// (its family must read the config and agree with the headers' shapes). The error is the
/// check's detail.
fn model_facts(spec: &str, weights: Weights) -> Result<ModelFacts, String> {
    if weights == Weights::HeadersOnly && models::is_hub_id(spec) && models::resolve_local(spec).is_err() {
        let m = crate::hub::model_metadata(spec, "main").map_err(|e| format!("{e:#}"))?;
        let family = tpv_shared::model::families::parse(&m.config_json)
            .map_err(|e| format!("{spec} on the hub: config.json: {e}"))?;
        family
            .check_tensors(&m.shapes)
            .map_err(|e| format!("{spec} on the hub: config.json against its weights' headers: {e}"))?;
        let params = tpv_shared::model::load::parameter_count(&m.shapes) as f64;
        return Ok(ModelFacts {
            detail: format!(
                "{spec} at {} on the hub: {}, {:.2} B parameters; {} to download when the sweep starts",
                &m.commit[..m.commit.len().min(7)],
                family.model_type(),
                params / 1e9,
                gb(m.download_bytes as f64)
            ),
            spec: Some(family),
            params: Some(params),
        });
    }
    let path = models::resolve(spec).map_err(|e| format!("{e:#}"))?;
    let family = model_spec(&path);
    // The headers' count; without weights yet (a config looked at before downloading them),
    // the family's count from the config.
    let params = safetensors_params(&path).or_else(|| family.as_ref().map(|f| f.parameters() as f64));
    Ok(ModelFacts {
        detail: format!("{} ({})", path.display(), gb(dir_size(&path))),
        spec: family,
        params,
    })
}

fn model_check(c: &Config, facts: &Result<ModelFacts, String>) -> Check {
    Check {
        what: format!("model {}", c.model.path),
        ok: facts.is_ok(),
        detail: match facts {
            Ok(f) => f.detail.clone(),
            Err(e) => e.clone(),
        },
    }
}

fn device_check(spec: &str) -> Check {
    match models::device(spec) {
        Ok(_) => Check {
            what: format!("device {spec}"),
            ok: true,
            detail: match models::kernel_summary(spec) {
                Some(kernels) => format!("opens; {kernels}"),
                None => "opens".into(),
            },
        },
        Err(e) => Check {
            what: format!("device {spec}"),
            ok: false,
            detail: format!("{e:#}"),
        },
    }
}

/// The preflight's estimate in bytes: weights (`params` × `bytes` per value) and the
/// activations a training step keeps for its backward pass, for `batch` rows of `seq` positions
/// (prompt + source tokens): per layer ≈ batch·seq·(k·d + 5·heads·seq) half-precision bytes (k
/// the family's measured [`Spec::activation_bytes_per_d`]) scaled to the dtype; with gradient
/// checkpointing each layer's input (batch·seq·d values) and one layer's activations.
pub fn memory_estimate(
    spec: &dyn Spec,
    params: f64,
    bytes: f64,
    (batch, seq): (usize, usize),
    checkpointing: bool,
) -> (f64, f64) {
    let dims = spec.dims();
    let (d, layers, heads) = (dims.hidden as f64, dims.layers as f64, dims.heads as f64);
    let (batch, seq) = (batch as f64, seq as f64);
    let per_layer = batch * seq * (spec.activation_bytes_per_d() * d + 5.0 * heads * seq) * bytes / 2.0;
    let activations = if checkpointing {
        layers * batch * seq * d * bytes + per_layer
    } else {
        layers * per_layer
    };
    (params * bytes, activations)
}

/// [`memory_estimate`] (parameters from the safetensors headers, or from the config) against the
/// device's memory.
fn memory_check(c: &Config, facts: &Result<ModelFacts, String>) -> Check {
    let what = format!(
        "memory {} ({}, batch {}, {})",
        c.model.path, c.model.dtype, c.optim.batch_size, c.model.device
    );
    let Ok(facts) = facts else {
        return Check {
            what,
            ok: false,
            detail: "the model is missing (above)".into(),
        };
    };
    let bytes = if c.model.dtype == "f32" { 4.0 } else { 2.0 };
    let (Some(spec), Some(params)) = (&facts.spec, facts.params) else {
        return Check {
            what,
            ok: true,
            detail: "not estimated (a GGUF file, or a folder without a config.json tpv reads)".into(),
        };
    };
    let seq = c.prompt.virtual_tokens + c.data.max_source_tokens.unwrap_or(256);
    let checkpointing = c.train.gradient_checkpointing;
    let (weights, activations) = memory_estimate(&**spec, params, bytes, (c.optim.batch_size, seq), checkpointing);
    let need = weights + activations;
    let detail = format!(
        "needs ≈ {} (weights {}, activations {}{})",
        gb(need),
        gb(weights),
        gb(activations),
        if checkpointing {
            " with gradient checkpointing"
        } else {
            ""
        }
    );
    match device_memory(&c.model.device) {
        Some(have) if need > have => Check {
            what,
            ok: false,
            detail: format!(
                "{detail}; the device has {} (lower optim.batch_size, use bf16{})",
                gb(have),
                if checkpointing {
                    ""
                } else {
                    ", or set train.gradient_checkpointing = true (decoder-only models)"
                }
            ),
        },
        Some(have) => Check {
            what,
            ok: true,
            detail: format!("{detail} of {}", gb(have)),
        },
        None => Check {
            what,
            ok: true,
            detail: format!("{detail}; the device's memory is unknown"),
        },
    }
}

/// The space the unfinished runs write (each: its run file ≈ 2 prompts, its checkpoint ≈ 5)
/// against what is free where the study writes.
fn disk_check(study: &Study, jobs: &[Job], configs: &[Config]) -> Check {
    let prompt = configs
        .iter()
        .map(|c| c.prompt.virtual_tokens * 8192 * 4)
        .max()
        .unwrap_or(0) as f64;
    let todo = jobs.iter().filter(|j| !study.finished(j)).count() as f64;
    let need = todo * (7.0 * prompt + 65536.0);
    let what = format!("disk {}", study.output().display());
    match free_space(study.output()) {
        Some(free) => Check {
            what,
            ok: need < free,
            detail: format!(
                "{} unfinished runs need ≤ {}; {} free",
                todo as usize,
                gb(need),
                gb(free)
            ),
        },
        None => Check {
            what,
            ok: true,
            detail: format!(
                "{} unfinished runs need ≤ {}; free space unknown",
                todo as usize,
                gb(need)
            ),
        },
    }
}

fn gb(bytes: f64) -> String {
    if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.0} MB", bytes / 1e6)
    }
}

fn dir_size(path: &Path) -> f64 {
    if path.is_file() {
        return std::fs::metadata(path).map_or(0.0, |m| m.len() as f64);
    }
    std::fs::read_dir(path).map_or(0.0, |entries| {
        entries
            .flatten()
            .map(|e| std::fs::metadata(e.path()).map_or(0.0, |m| m.len() as f64))
            .sum()
    })
}

/// The parameter count of a model folder's safetensors files, from their headers alone.
fn safetensors_params(path: &Path) -> Option<f64> {
    let files: Vec<_> = std::fs::read_dir(path)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    if files.is_empty() {
        return None;
    }
    let mut total = 0.0;
    for f in files {
        use std::io::Read;
        let mut file = std::fs::File::open(&f).ok()?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).ok()?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 {
            return None;
        }
        let mut header = vec![0u8; usize::try_from(n).ok()?];
        file.read_exact(&mut header).ok()?;
        let (shapes, _) = tpv_shared::model::load::header_json_shapes(&header).ok()?;
        total += tpv_shared::model::load::parameter_count(&shapes) as f64;
    }
    Some(total)
}

/// The model's family spec from its config.json (hidden size, layers, heads, and the family's
/// activation footprint), through the same registry loading uses.
fn model_spec(path: &Path) -> Option<Box<dyn Spec>> {
    let text = std::fs::read_to_string(path.join("config.json")).ok()?;
    tpv_shared::model::families::parse(&text).ok()
}

/// The device's memory: the host's available memory for `cpu`, the GPU's from nvidia-smi for
/// `cuda:N`; `None` when it cannot be read.
fn device_memory(spec: &str) -> Option<f64> {
    match spec.parse::<tpv_shared::DeviceSpec>().ok()? {
        tpv_shared::DeviceSpec::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let kb: f64 = info
                .lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))?
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            Some(kb * 1024.0)
        }
        tpv_shared::DeviceSpec::Cuda(n) => Some(models::nvidia_smi_query(n, "memory.total")? * 1024.0 * 1024.0),
    }
}

/// Free bytes on the file system of `dir` (its nearest existing ancestor), from `df`.
fn free_space(dir: &Path) -> Option<f64> {
    let mut at = dir;
    while !at.exists() {
        at = at.parent()?;
    }
    let at = if at.as_os_str().is_empty() { Path::new(".") } else { at };
    let out = std::process::Command::new("df").arg("-Pk").arg(at).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kb: f64 = text.lines().nth(1)?.split_whitespace().nth(3)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The table as text.
pub fn table(checks: &[Check]) -> String {
    let mut s = String::from("preflight:\n");
    for c in checks {
        s.push_str(&format!(
            "  {} {:<44} {}\n",
            if c.ok { "ok     " } else { "MISSING" },
            c.what,
            c.detail
        ));
    }
    s
}
