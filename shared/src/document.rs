//! Any file tpv reads, as one [`Document`]: a run file, or a peft adapter's weights (with its
//! config when available). The CLI's `inspect` and the web app's file list both show its
//! [`Summary`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Result;
use crate::peft::PeftAdapter;
use crate::prompt::{PromptKind, PromptMeta, SoftPrompt};
use crate::runfile::{self, FileKind};
use crate::tensor::PromptTensor;

/// A prompt and, when it came from peft, the adapter as stored.
#[derive(Debug, Clone)]
pub struct Document {
    pub prompt: SoftPrompt,
    pub peft: Option<PeftAdapter>,
}

impl Document {
    /// Reads a run file or a peft `adapter_model.safetensors`; `peft_config` is the adapter's
    /// `adapter_config.json`, used only for peft weights. Peft adapters become task prompts
    /// without an origin.
    pub fn read(bytes: &[u8], peft_config: Option<&str>) -> Result<Self> {
        match runfile::sniff(bytes)? {
            FileKind::Run => Ok(Self {
                prompt: runfile::read_run(bytes)?,
                peft: None,
            }),
            FileKind::PeftWeights => {
                let adapter = PeftAdapter::from_parts(peft_config, bytes)?;
                Ok(Self {
                    prompt: adapter.to_prompt(PromptKind::TaskPrompt, None)?,
                    peft: Some(adapter),
                })
            }
        }
    }

    /// The format, e.g. `tpv-run v1` or `peft PROMPT_TUNING adapter (SEQ_2_SEQ_LM)`.
    pub fn format(&self) -> String {
        match &self.peft {
            None => format!("{} v{}", runfile::FORMAT_NAME, runfile::version_of(&self.prompt)),
            Some(a) => format!(
                "peft {} adapter ({})",
                a.config.peft_type,
                a.config.task_type.as_deref().unwrap_or("task type unknown")
            ),
        }
    }

    pub fn summary(&self) -> Summary {
        let p = &self.prompt;
        Summary {
            format: self.format(),
            kind: p.kind(),
            label: p.label(),
            shape: p.shape(),
            norms: Norms::of(&p.values),
            origin_norms: p.origin.as_ref().map(Norms::of),
            vector_norms: match (p.kind().is_prompt(), &p.origin) {
                (true, Some(_)) => p.vector_values().ok().as_ref().map(Norms::of),
                _ => None,
            },
            curves: p.curves.iter().map(|(k, c)| (k.clone(), c.steps.len())).collect(),
            stored_shape: self.peft.as_ref().map(|a| a.embeddings.shape()),
            stored_dtype: self.peft.as_ref().map(|a| a.dtype.clone()),
            attempt: p.attempt.as_ref().map(|m| AttemptSummary {
                sources: m.source_labels.clone(),
                rank: m.w_down.dim(),
                temperature: m.temperature,
            }),
            metadata: p.meta.clone(),
        }
    }
}

/// Norms of a prompt or vector.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Norms {
    /// Frobenius norm of the R×d values.
    pub frobenius: f64,
    /// Mean Euclidean norm of the rows.
    pub mean_row: f64,
    pub max_abs: f32,
    /// Norm of the token-mean (the d-vector the paper's cosine compares).
    pub token_mean: f64,
}

impl Norms {
    pub fn of(t: &PromptTensor) -> Self {
        Self {
            frobenius: t.norm(),
            mean_row: t.mean_row_norm(),
            max_abs: t.max_abs(),
            token_mean: t.token_mean().iter().map(|x| x * x).sum::<f64>().sqrt(),
        }
    }
}

/// What `tpv inspect` and the web app show of a file.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub format: String,
    pub kind: PromptKind,
    pub label: String,
    /// [R, d] of the rows the model reads.
    pub shape: [usize; 2],
    pub norms: Norms,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin_norms: Option<Norms>,
    /// Norms of τ = θ − θ₀ for prompts with a stored origin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_norms: Option<Norms>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub curves: BTreeMap<String, usize>,
    /// Shape as peft stores it (seq2seq: two blocks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_shape: Option<[usize; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stored_dtype: Option<String>,
    /// An ATTEMPT run's module.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptSummary>,
    pub metadata: PromptMeta,
}

/// What an ATTEMPT run mixes: its sources, the attention's rank r and temperature.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttemptSummary {
    pub sources: Vec<String>,
    pub rank: usize,
    pub temperature: f64,
}
