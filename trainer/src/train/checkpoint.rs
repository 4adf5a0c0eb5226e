//! Training checkpoints: the prompt, AdamW's moments, the step, the dropout generator, the best
//! prompt so far and the curves, in one safetensors file written atomically. A run resumed from a
//! checkpoint computes exactly what the uninterrupted run computes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use tpv_shared::Curve;

use crate::io;

pub const FORMAT: &str = "tpv-checkpoint";
pub const VERSION: u32 = 1;

/// The best prompt seen at an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Best {
    pub step: u64,
    pub score: f64,
    pub params: Vec<f32>,
    pub metrics: BTreeMap<String, f64>,
}

/// Everything a resumed run needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub step: u64,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub adam_t: u64,
    pub rng: u64,
    pub best: Option<Best>,
    pub evals_without_improvement: u32,
    pub curves: BTreeMap<String, Curve>,
    /// The resolved config of the run; a resume with another config is refused.
    pub config: serde_json::Value,
    pub fingerprint: String,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    step: u64,
    adam_t: u64,
    rng: String,
    best_step: Option<u64>,
    best_score: Option<f64>,
    best_metrics: Option<BTreeMap<String, f64>>,
    evals_without_improvement: u32,
    config: serde_json::Value,
    fingerprint: String,
}

fn f32_bytes(xs: &[f32]) -> Vec<u8> {
    xs.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn write(path: &Path, c: &Checkpoint) -> Result<()> {
    let mut buffers: Vec<(String, Vec<u8>, Vec<usize>)> = vec![
        ("params".into(), f32_bytes(&c.params), vec![c.params.len()]),
        ("adam.m".into(), f32_bytes(&c.adam_m), vec![c.adam_m.len()]),
        ("adam.v".into(), f32_bytes(&c.adam_v), vec![c.adam_v.len()]),
    ];
    if let Some(b) = &c.best {
        buffers.push(("best.params".into(), f32_bytes(&b.params), vec![b.params.len()]));
    }
    for (name, curve) in &c.curves {
        let data: Vec<f32> = curve
            .steps
            .iter()
            .zip(&curve.values)
            .flat_map(|(s, v)| [*s, *v])
            .collect();
        buffers.push((format!("curve.{name}"), f32_bytes(&data), vec![curve.steps.len(), 2]));
    }
    let meta = Meta {
        step: c.step,
        adam_t: c.adam_t,
        // u64 as a string: JSON numbers lose precision above 2^53.
        rng: c.rng.to_string(),
        best_step: c.best.as_ref().map(|b| b.step),
        best_score: c.best.as_ref().map(|b| b.score),
        best_metrics: c.best.as_ref().map(|b| b.metrics.clone()),
        evals_without_improvement: c.evals_without_improvement,
        config: c.config.clone(),
        fingerprint: c.fingerprint.clone(),
    };
    let mut metadata = HashMap::new();
    metadata.insert("format".to_owned(), FORMAT.to_owned());
    metadata.insert("format_version".to_owned(), VERSION.to_string());
    metadata.insert("state".to_owned(), serde_json::to_string(&meta)?);
    let views: Vec<(String, TensorView<'_>)> = buffers
        .iter()
        .map(|(n, b, s)| Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))?;
    io::write_atomic(path, &bytes)
}

pub fn read(path: &Path) -> Result<Checkpoint> {
    let bytes = crate::io::read_bytes(path)?;
    // Through the shared reader: its header-size and tensor-count limits hold for checkpoints too.
    let loaded = tpv_shared::st::Loaded::parse(&bytes)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    let md = &loaded.metadata;
    if md.get("format").map(String::as_str) != Some(FORMAT) {
        bail!("{} is not a tpv checkpoint", path.display());
    }
    let version: u32 = md.get("format_version").and_then(|v| v.parse().ok()).unwrap_or(0);
    if version != VERSION {
        bail!(
            "{} is checkpoint format {version}; this tpv reads {VERSION}",
            path.display()
        );
    }
    let meta: Meta = serde_json::from_str(md.get("state").map(String::as_str).unwrap_or(""))
        .with_context(|| format!("{}: bad checkpoint state", path.display()))?;
    let st = &loaded.tensors;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st
            .tensor(name)
            .with_context(|| format!("{}: no tensor {name}", path.display()))?;
        if t.dtype() != Dtype::F32 {
            bail!("{}: {name} is not F32", path.display());
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let mut curves = BTreeMap::new();
    for name in st.names() {
        if let Some(curve) = name.strip_prefix("curve.") {
            let data = get(name)?;
            curves.insert(
                curve.to_owned(),
                Curve {
                    steps: data.iter().step_by(2).copied().collect(),
                    values: data.iter().skip(1).step_by(2).copied().collect(),
                },
            );
        }
    }
    let best = match (meta.best_step, meta.best_score) {
        (Some(step), Some(score)) => Some(Best {
            step,
            score,
            params: get("best.params")?,
            metrics: meta.best_metrics.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Checkpoint {
        step: meta.step,
        params: get("params")?,
        adam_m: get("adam.m")?,
        adam_v: get("adam.v")?,
        adam_t: meta.adam_t,
        rng: meta
            .rng
            .parse()
            .with_context(|| format!("{}: bad rng state", path.display()))?,
        best,
        evals_without_improvement: meta.evals_without_improvement,
        curves,
        config: meta.config,
        fingerprint: meta.fingerprint,
    })
}
