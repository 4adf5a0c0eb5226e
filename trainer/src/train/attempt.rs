//! A run's starting parameters: the origin θ₀ (sampled from the vocabulary or a run file's
//! prompt) and, for ATTEMPT (`[attempt]`), the module over its source prompts.

use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;
use serde_json::json;
use tpv_shared::origins::{Sampling, origin_token_ids};
use tpv_shared::{OriginRef, PromptTensor, SoftPrompt};

use crate::config::{Config, Init};
use crate::io;
use crate::models::LoadedModel;

/// The origin θ₀ of a run: from a run file, or sampled from the model's vocabulary embeddings.
pub fn origin(config: &Config, loaded: &LoadedModel, d: usize) -> Result<(PromptTensor, Option<OriginRef>)> {
    let r = config.prompt.virtual_tokens;
    match &config.prompt.init {
        Init::File(path) => {
            let p = load_run_prompt("prompt.init", path, (r, d))?;
            let origin_ref = p.meta.origin.clone();
            Ok((p.values, origin_ref))
        }
        Init::Sampled(t) => {
            let s = &t.sample_vocab;
            let embeddings = loaded.model.embeddings();
            let vocab = embeddings.dim(0)?;
            let sampling = match s.below {
                Some(below) => Sampling::VocabBelow { below, draw: 200 },
                None => Sampling::SampleVocab,
            };
            let ids = origin_token_ids(sampling, s.index + 1, r, s.seed, vocab)?;
            let ids = &ids[s.index];
            let index = Tensor::from_slice(ids, ids.len(), embeddings.device())?;
            let rows: Vec<f32> = tpv_shared::model::host::flat_f32(&embeddings.index_select(&index, 0)?)?;
            Ok((
                PromptTensor::new(r, d, rows)?,
                Some(OriginRef {
                    id: format!("origin{}", s.index),
                    seed: Some(s.seed),
                    index: Some(s.index as u32),
                    sampling: Some(sampling.describe()),
                }),
            ))
        }
    }
}

/// The seed of an ATTEMPT module's initial weights: the run's seed, on a stream of its own.
const ATTEMPT_SEED: u64 = 0x4154_5445_4d50_5400;

/// The prompt of the run file `path` that the config's `key` names: a prompt (not a vector or an
/// ATTEMPT run) of the run's shape.
fn load_run_prompt(key: &str, path: &Path, (r, d): (usize, usize)) -> Result<SoftPrompt> {
    let p = io::load_prompt(path).with_context(|| key.to_owned())?;
    if !p.kind().is_prompt() {
        bail!("{key}: {} is a {}, not a prompt", path.display(), p.kind());
    }
    if p.shape() != [r, d] {
        bail!(
            "{key}: {} is {}×{}, the run needs {r}×{d} (virtual_tokens × hidden size)",
            path.display(),
            p.shape()[0],
            p.shape()[1]
        );
    }
    Ok(p)
}

/// The fresh ATTEMPT module of `[attempt]` over its sources (the module a run of this config
/// starts from), or `None`.
pub fn attempt_module(config: &Config, (r, d): (usize, usize)) -> Result<Option<tpv_shared::attempt::Module>> {
    let Some(a) = &config.attempt else {
        return Ok(None);
    };
    if a.sources.is_empty() {
        bail!("attempt.sources is empty: ATTEMPT mixes at least one source prompt");
    }
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for path in &a.sources {
        let p = load_run_prompt("attempt.sources", path, (r, d))?;
        // Labels name the attention's weights: two sources with one label are told apart.
        let mut label = p.label();
        if labels.contains(&label) {
            label = format!("{label} ({})", labels.len() + 1);
        }
        labels.push(label);
        values.push(p.values);
    }
    let refs: Vec<&PromptTensor> = values.iter().collect();
    let mut module = tpv_shared::attempt::Module::init(&refs, labels, config.train.seed ^ ATTEMPT_SEED)?;
    if let Some(temperature) = a.temperature {
        module.temperature = temperature;
    }
    module
        .validate(r, d)
        .context("attempt.temperature must be a positive number")?;
    Ok(Some(module))
}

/// ATTEMPT's mean attention as `{source label: weight, "target": weight}`.
pub fn attention_json(module: &tpv_shared::attempt::Module, attention: &[f64]) -> serde_json::Value {
    let labels = module.attention_labels();
    serde_json::Value::Object(
        labels
            .into_iter()
            .zip(attention)
            .map(|(l, a)| (l.to_owned(), json!(a)))
            .collect(),
    )
}
