//! [`SoftPrompt`]: one structure for origins, task prompts, task prompt vectors and combinations,
//! with the metadata a run file carries.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::PromptTensor;

/// What a prompt is. Prompts (origins, task prompts, combinations) are points in embedding space;
/// task prompt vectors are displacements between two of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptKind {
    /// θ₀: a random initialization sampled from the vocabulary embeddings.
    Origin,
    /// θ_t: a prompt tuned on a task, starting from an origin.
    TaskPrompt,
    /// τ_t = θ_t − θ₀.
    TaskPromptVector,
    /// θ₀ + λ·merge(τ…), or any other arithmetic that yields a prompt.
    Combination,
    /// An ATTEMPT run: a target prompt and an attention module that mixes it with frozen source
    /// prompts per input ([`crate::attempt`]); the values are the target prompt.
    Attempt,
}

impl PromptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::TaskPrompt => "task-prompt",
            Self::TaskPromptVector => "task-prompt-vector",
            Self::Combination => "combination",
            Self::Attempt => "attempt",
        }
    }

    /// True for the kinds that are points (usable as a prompt), false for vectors and ATTEMPT
    /// runs (a prompt per input).
    pub fn is_prompt(self) -> bool {
        matches!(self, Self::Origin | Self::TaskPrompt | Self::Combination)
    }
}

impl std::fmt::Display for PromptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The frozen base model a prompt belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Hub id or local name, e.g. `t5-base`.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// Where an origin came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginRef {
    /// A stable name, e.g. `origin0`.
    pub id: String,
    /// Seed of the sampling stream (the paper: numpy seed 1024).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Position in that stream (origin 0, 1, 2, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u32>,
    /// How it was sampled, e.g. `vocab-below-5000` or `peft-sample-vocab`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<String>,
}

/// The peft task type, which decides how many prompt blocks an adapter stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskType {
    /// Encoder-decoder (T5): peft stores two blocks, only the first (encoder) one is used.
    #[serde(rename = "SEQ_2_SEQ_LM")]
    Seq2SeqLm,
    /// Decoder-only (LLaMA, Qwen, Gemma, …): one block in front of the whole input.
    #[serde(rename = "CAUSAL_LM")]
    CausalLm,
}

// The words of `tpv peft export --task-type`; files carry peft's own (`as_peft_str`).
crate::named!(TaskType, "task type", { Seq2SeqLm => "seq2seq", CausalLm => "causal" });

impl TaskType {
    pub fn as_peft_str(self) -> &'static str {
        match self {
            Self::Seq2SeqLm => "SEQ_2_SEQ_LM",
            Self::CausalLm => "CAUSAL_LM",
        }
    }

    /// peft's default `num_transformer_submodules` for this task type.
    pub fn default_submodules(self) -> usize {
        match self {
            Self::Seq2SeqLm => 2,
            Self::CausalLm => 1,
        }
    }
}

/// How the stored rows map to the model's submodules. Run files store only the rows the model
/// reads (R rows); `num_transformer_submodules` is what a peft export must lay out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<TaskType>,
    pub num_transformer_submodules: usize,
}

impl Layout {
    /// peft lays a prompt out for 1 submodule (its default for decoder-only models) or 2 (for
    /// encoder-decoder ones; a config may set either explicitly): any other count (e.g. from a
    /// crafted file) would size an export's allocation, so it is refused.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_transformer_submodules;
        if matches!(n, 1 | 2) {
            Ok(())
        } else {
            Err(Error::BadMetadata(format!(
                "layout.num_transformer_submodules is {n}; peft lays prompts out for 1 or 2"
            )))
        }
    }
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            task_type: None,
            num_transformer_submodules: 1,
        }
    }
}

/// One input of a combination, as recorded in the result's metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operand {
    pub label: String,
    pub kind: PromptKind,
    pub weight: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
}

/// Everything a run file says about its prompt besides the numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromptMeta {
    pub kind: PromptKind,
    /// A human label; defaults to `task@origin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<OriginRef>,
    pub virtual_tokens: usize,
    pub token_dim: usize,
    #[serde(default)]
    pub layout: Layout,
    /// The dtype the values had where they came from (a peft file may be BF16); stored as F32.
    pub dtype: String,
    /// For combinations: the expression that produced them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operands: Vec<Operand>,
    /// True when the operands came from different origins (θ₀⁽¹⁾ + τ⁽²⁾).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mixed_origins: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// The fully resolved configuration that produced the prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
    /// Fingerprint of the data split the prompt was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_fingerprint: Option<String>,
    /// The adapter_config.json of an imported peft adapter, kept for a faithful export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peft_config: Option<serde_json::Value>,
    pub tool_version: String,
    pub created_at: String,
}

impl PromptMeta {
    /// Metadata for a fresh `rows`×`dim` prompt of `kind`, stamped with this tool's version and now.
    pub fn new(kind: PromptKind, rows: usize, dim: usize) -> Self {
        Self {
            kind,
            name: None,
            model: None,
            tasks: Vec::new(),
            origin: None,
            virtual_tokens: rows,
            token_dim: dim,
            layout: Layout::default(),
            dtype: "F32".into(),
            expression: None,
            operands: Vec::new(),
            mixed_origins: false,
            metrics: BTreeMap::new(),
            config: None,
            data_fingerprint: None,
            peft_config: None,
            tool_version: crate::VERSION.into(),
            created_at: crate::time::now_rfc3339(),
        }
    }
}

/// A training or validation curve: (step, value) pairs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Curve {
    pub steps: Vec<f32>,
    pub values: Vec<f32>,
}

/// A soft prompt of any kind, with its origin when known and its metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct SoftPrompt {
    /// The R×d values: θ for prompts, τ for vectors.
    pub values: PromptTensor,
    /// θ₀ when known: the origin a task prompt started from, or the one a combination was built on.
    pub origin: Option<PromptTensor>,
    pub meta: PromptMeta,
    pub curves: BTreeMap<String, Curve>,
    /// The attention module and sources of an ATTEMPT run (kind [`PromptKind::Attempt`]).
    pub attempt: Option<Box<crate::attempt_params::Module>>,
}

impl SoftPrompt {
    /// A prompt with fresh metadata; `origin` must have the shape of `values`.
    pub fn new(kind: PromptKind, values: PromptTensor, origin: Option<PromptTensor>) -> Result<Self> {
        if let Some(o) = &origin {
            values.check_same_shape(o)?;
        }
        let meta = PromptMeta::new(kind, values.rows(), values.dim());
        Ok(Self {
            values,
            origin,
            meta,
            curves: BTreeMap::new(),
            attempt: None,
        })
    }

    /// An origin θ₀ (its own origin).
    pub fn origin(values: PromptTensor, origin: OriginRef) -> Self {
        let mut meta = PromptMeta::new(PromptKind::Origin, values.rows(), values.dim());
        meta.origin = Some(origin);
        Self {
            values,
            origin: None,
            meta,
            curves: BTreeMap::new(),
            attempt: None,
        }
    }

    pub fn kind(&self) -> PromptKind {
        self.meta.kind
    }

    pub fn shape(&self) -> [usize; 2] {
        self.values.shape()
    }

    /// A short label: the name; for a combination its expression; else `tasks@origin`
    /// (`tau[tasks@origin]` for a vector), or the kind.
    pub fn label(&self) -> String {
        if let Some(name) = &self.meta.name {
            return name.clone();
        }
        if let (PromptKind::Combination, Some(expr)) = (self.kind(), &self.meta.expression) {
            return expr.clone();
        }
        let tasks = self.meta.tasks.join("+");
        let origin = self.meta.origin.as_ref().map(|o| o.id.as_str());
        let label = match (tasks.is_empty(), origin) {
            (false, Some(o)) => format!("{tasks}@{o}"),
            (false, None) => tasks,
            (true, Some(o)) => o.to_string(),
            (true, None) => return self.kind().to_string(),
        };
        match self.kind() {
            PromptKind::TaskPromptVector => format!("tau[{label}]"),
            _ => label,
        }
    }

    /// The origin id, when recorded.
    pub fn origin_id(&self) -> Option<&str> {
        self.meta.origin.as_ref().map(|o| o.id.as_str())
    }

    /// θ₀ of this prompt: the stored origin, or the values themselves for an origin.
    pub fn origin_values(&self) -> Option<&PromptTensor> {
        match self.kind() {
            PromptKind::Origin => Some(&self.values),
            _ => self.origin.as_ref(),
        }
    }

    /// τ = θ − θ₀ for task prompts and combinations with a stored origin; τ itself for vectors.
    pub fn vector_values(&self) -> Result<PromptTensor> {
        match self.kind() {
            PromptKind::TaskPromptVector => Ok(self.values.clone()),
            PromptKind::Attempt => Err(Error::AttemptRun {
                label: self.label(),
                what: "take a vector of",
            }),
            PromptKind::Origin => Err(Error::NotAVector {
                label: self.label(),
                kind: "an origin",
            }),
            PromptKind::TaskPrompt | PromptKind::Combination => {
                let origin = self
                    .origin
                    .as_ref()
                    .ok_or_else(|| Error::NoOrigin { label: self.label() })?;
                // θ and θ₀ are finite, but their difference can overflow f32 (both near ±3e38):
                // refused, as arithmetic refuses a non-finite result.
                let vector = self.values.zip_map(origin, |t, o| t - o)?;
                check_finite(&format!("{} − its origin", self.label()), &vector)?;
                Ok(vector)
            }
        }
    }

    /// This prompt as a task prompt vector (keeping the origin, so θ can be rebuilt).
    pub fn to_vector(&self) -> Result<SoftPrompt> {
        if self.kind() == PromptKind::TaskPromptVector {
            return Ok(self.clone());
        }
        let values = self.vector_values()?;
        let mut meta = self.meta.clone();
        meta.kind = PromptKind::TaskPromptVector;
        meta.name = self.meta.name.as_ref().map(|n| format!("tau[{n}]"));
        Ok(SoftPrompt {
            values,
            origin: self.origin.clone(),
            meta,
            curves: BTreeMap::new(),
            attempt: None,
        })
    }

    /// Refuses operands that cannot be combined: different shapes or different base models.
    pub fn check_compatible(&self, other: &SoftPrompt) -> Result<()> {
        self.values.check_same_shape(&other.values)?;
        if let (Some(a), Some(b)) = (&self.meta.model, &other.meta.model)
            && a.id != b.id
        {
            return Err(Error::ModelMismatch {
                left: a.id.clone(),
                right: b.id.clone(),
            });
        }
        Ok(())
    }

    /// Checks that the metadata agrees with the tensors and that every value is finite.
    pub fn validate(&self) -> Result<()> {
        let [rows, dim] = self.values.shape();
        if rows == 0 || dim == 0 {
            return Err(Error::BadMetadata(format!(
                "the prompt is {rows}×{dim}: a prompt needs at least one row and one column"
            )));
        }
        self.meta.layout.validate()?;
        if self.meta.virtual_tokens != rows {
            return Err(Error::MetadataMismatch {
                field: "virtual_tokens",
                meta: self.meta.virtual_tokens,
                actual: rows,
            });
        }
        if self.meta.token_dim != dim {
            return Err(Error::MetadataMismatch {
                field: "token_dim",
                meta: self.meta.token_dim,
                actual: dim,
            });
        }
        check_finite("prompt", &self.values)?;
        if let Some(o) = &self.origin {
            self.values.check_same_shape(o)?;
            check_finite("origin", o)?;
        }
        match (&self.attempt, self.kind()) {
            (Some(m), PromptKind::Attempt) => m.validate(rows, dim),
            (None, PromptKind::Attempt) => Err(Error::BadMetadata(
                "an ATTEMPT run without its module (attempt.* tensors)".into(),
            )),
            (Some(_), kind) => Err(Error::BadMetadata(format!("a {kind} with an ATTEMPT module"))),
            (None, _) => Ok(()),
        }
    }
}

pub(crate) fn check_finite(name: &str, t: &PromptTensor) -> Result<()> {
    match t.non_finite() {
        None => Ok(()),
        Some((count, first)) => Err(Error::NonFinite {
            tensor: name.into(),
            count,
            first,
        }),
    }
}
