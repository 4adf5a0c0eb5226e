//! The run-file format: one safetensors file per prompt.
//!
//! Tensors (all F32):
//! - `prompt` [R, d]: θ for origins, task prompts and combinations; τ for task prompt vectors.
//! - `origin` [R, d] (optional): θ₀, when known.
//! - `curve.<name>` [n, 2] (optional): (step, value) rows of a training or validation curve.
//! - ATTEMPT runs (kind `attempt`, format version 2) add `attempt.sources` [K·R, d] (the frozen
//!   source prompts stacked), `attempt.w_down` [d, r], `attempt.w_up` [r, d],
//!   `attempt.ln_weight` and `attempt.ln_bias` [1, d]; the `attempt` metadata key holds
//!   `{"sources": [labels], "temperature": T}` ([`crate::attempt`]).
//!
//! `__metadata__` (all values are strings, as safetensors requires):
//! - `format` = `tpv-run`, `format_version` = the integer [`FORMAT_VERSION`];
//! - `tpv` = the JSON of [`PromptMeta`] (kind, model, tasks, origin, shapes, layout, dtype,
//!   expression, operands, metrics, config, data fingerprint, tool version, creation time).
//!
//! Python reads it with `safetensors.safe_open(path, "np")`: `f.get_tensor("prompt")` and
//! `json.loads(f.metadata()["tpv"])`.
//!
//! Versioning: a reader accepts every version up to its own and refuses newer files with
//! [`Error::NewerFormat`]. Fields added without a version bump must be optional. A file is
//! written with the lowest version that holds it: version 1 for every prompt and vector,
//! version 2 only for ATTEMPT runs, so a reader of version 1 refuses those naming both versions
//! and keeps reading everything else.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::prompt::{Curve, PromptKind, PromptMeta, SoftPrompt};
use crate::st::{self, Loaded};
use crate::tensor::PromptTensor;

pub const FORMAT_NAME: &str = "tpv-run";
pub const FORMAT_VERSION: u32 = 2;
/// The version of runs without an ATTEMPT module.
const PROMPT_VERSION: u32 = 1;

const KEY_FORMAT: &str = "format";
const KEY_VERSION: &str = "format_version";
const KEY_META: &str = "tpv";
const KEY_ATTEMPT: &str = "attempt";
const CURVE_PREFIX: &str = "curve.";

/// What a safetensors buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A tpv run file.
    Run,
    /// A peft `adapter_model.safetensors` (tensor `prompt_embeddings`).
    PeftWeights,
}

/// Tells a run file from a peft adapter's weights without converting any tensor.
pub fn sniff(bytes: &[u8]) -> Result<FileKind> {
    let loaded = Loaded::parse(bytes)?;
    if loaded.metadata.get(KEY_FORMAT).map(String::as_str) == Some(FORMAT_NAME) {
        Ok(FileKind::Run)
    } else if loaded.has(crate::peft::WEIGHTS_KEY) {
        Ok(FileKind::PeftWeights)
    } else {
        Err(Error::NotARunFile(format!(
            "no `format = {FORMAT_NAME}` in the metadata and no `{}` tensor (tensors: {})",
            crate::peft::WEIGHTS_KEY,
            loaded.names().join(", ")
        )))
    }
}

/// The format version a prompt is written with: the lowest that holds it (2 for ATTEMPT runs, 1
/// for everything else).
pub fn version_of(prompt: &SoftPrompt) -> u32 {
    if prompt.attempt.is_some() {
        FORMAT_VERSION
    } else {
        PROMPT_VERSION
    }
}

/// Serializes a prompt as a run file (after checking it is consistent and finite).
pub fn write_run(prompt: &SoftPrompt) -> Result<Vec<u8>> {
    prompt.validate()?;
    let mut tensors: Vec<(String, &PromptTensor)> = vec![("prompt".into(), &prompt.values)];
    if let Some(o) = &prompt.origin {
        tensors.push(("origin".into(), o));
    }
    let curves: Vec<(String, PromptTensor)> = prompt
        .curves
        .iter()
        .map(|(name, c)| {
            let data = c.steps.iter().zip(&c.values).flat_map(|(&s, &v)| [s, v]).collect();
            Ok((
                format!("{CURVE_PREFIX}{name}"),
                PromptTensor::new(c.steps.len(), 2, data)?,
            ))
        })
        .collect::<Result<_>>()?;
    tensors.extend(curves.iter().map(|(n, t)| (n.clone(), t)));

    let meta_json = serde_json::to_string(&prompt.meta).map_err(|e| Error::BadMetadata(e.to_string()))?;
    let mut metadata = BTreeMap::from([
        (KEY_FORMAT.to_owned(), FORMAT_NAME.to_owned()),
        (KEY_VERSION.to_owned(), version_of(prompt).to_string()),
        (KEY_META.to_owned(), meta_json),
    ]);
    if let Some(m) = &prompt.attempt {
        tensors.extend(m.tensors().into_iter().map(|(n, t)| (n.to_owned(), t)));
        let head = AttemptHead {
            sources: m.source_labels.clone(),
            temperature: m.temperature,
        };
        let json = serde_json::to_string(&head).map_err(|e| Error::BadMetadata(e.to_string()))?;
        metadata.insert(KEY_ATTEMPT.to_owned(), json);
    }
    st::write(&tensors, metadata)
}

/// Parses a run file. Refuses newer format versions, inconsistent metadata and NaN/inf values.
pub fn read_run(bytes: &[u8]) -> Result<SoftPrompt> {
    let loaded = Loaded::parse(bytes)?;
    let format = loaded.metadata.get(KEY_FORMAT).map(String::as_str);
    if format != Some(FORMAT_NAME) {
        return Err(Error::NotARunFile(match format {
            Some(f) => format!("metadata `format` is {f:?}, expected {FORMAT_NAME:?}"),
            None => "no `format` key in the safetensors metadata".into(),
        }));
    }
    let version: u32 = loaded
        .metadata
        .get(KEY_VERSION)
        .ok_or_else(|| Error::BadMetadata(format!("no `{KEY_VERSION}` key")))?
        .parse()
        .map_err(|_| Error::BadMetadata(format!("`{KEY_VERSION}` is not an integer")))?;
    if version > FORMAT_VERSION {
        return Err(Error::NewerFormat {
            what: "run-file",
            file: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(Error::BadMetadata("format version 0 does not exist".into()));
    }
    let meta_json = loaded
        .metadata
        .get(KEY_META)
        .ok_or_else(|| Error::BadMetadata(format!("no `{KEY_META}` key")))?;
    let meta: PromptMeta = serde_json::from_str(meta_json).map_err(|e| Error::BadMetadata(e.to_string()))?;

    let (values, _) = loaded.matrix("prompt")?;
    let origin = if loaded.has("origin") {
        Some(loaded.matrix("origin")?.0)
    } else {
        None
    };
    let mut curves = BTreeMap::new();
    for name in loaded.names() {
        let Some(curve_name) = name.strip_prefix(CURVE_PREFIX) else {
            continue;
        };
        let (t, _) = loaded.matrix(&name)?;
        if t.dim() != 2 {
            return Err(Error::WrongShape {
                tensor: name.clone(),
                shape: t.shape().to_vec(),
                expected: "[n, 2] (step, value)",
            });
        }
        let (steps, values) = t.as_slice().chunks_exact(2).map(|c| (c[0], c[1])).unzip();
        curves.insert(curve_name.to_owned(), Curve { steps, values });
    }
    let attempt = match meta.kind {
        PromptKind::Attempt => Some(Box::new(read_attempt(&loaded)?)),
        _ => None,
    };
    let prompt = SoftPrompt {
        values,
        origin,
        meta,
        curves,
        attempt,
    };
    prompt.validate()?;
    Ok(prompt)
}

/// The `attempt` metadata of an ATTEMPT run.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AttemptHead {
    sources: Vec<String>,
    temperature: f64,
}

/// The module of an ATTEMPT run file (its shapes are checked by `SoftPrompt::validate`).
fn read_attempt(loaded: &Loaded<'_>) -> Result<crate::attempt_params::Module> {
    let json = loaded
        .metadata
        .get(KEY_ATTEMPT)
        .ok_or_else(|| Error::BadMetadata(format!("an ATTEMPT run without the `{KEY_ATTEMPT}` metadata key")))?;
    let head: AttemptHead =
        serde_json::from_str(json).map_err(|e| Error::BadMetadata(format!("`{KEY_ATTEMPT}`: {e}")))?;
    let m = |name: &str| -> Result<PromptTensor> { Ok(loaded.matrix(name)?.0) };
    Ok(crate::attempt_params::Module {
        sources: m("attempt.sources")?,
        source_labels: head.sources,
        w_down: m("attempt.w_down")?,
        w_up: m("attempt.w_up")?,
        ln_weight: m("attempt.ln_weight")?,
        ln_bias: m("attempt.ln_bias")?,
        temperature: head.temperature,
    })
}
