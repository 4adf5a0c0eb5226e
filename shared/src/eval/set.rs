//! The eval-set file format (`examples/TASK.json` of a study: a task's examples and how to
//! encode and score them, [`EvalSet`]), the options it carries and one example's result: plain
//! data, read and written by the study, `tpv eval` and the web app without the model layer.

use serde::{Deserialize, Serialize};

use crate::tasks::{Record, TaskError, TaskSpec};

/// An eval set that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("eval set: {0}")]
pub struct SetError(pub String);

/// Which tokens of a causal example the loss covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossOn {
    /// The answer tokens only (default).
    #[default]
    Answer,
    /// Every token of the sequence (trl's default).
    Sequence,
}

/// How records become model inputs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncodeOptions {
    /// Chat models: the input is a user turn of the chat template, when the model has one (else
    /// raw text).
    pub chat: bool,
    #[serde(default)]
    pub loss_on: LossOn,
    /// Truncate inputs to this many tokens.
    #[serde(default)]
    pub max_source_tokens: Option<usize>,
    /// Chat models: the system turn before the input (`Some("")`: an empty one). `None` leaves
    /// it to the chat template, which may insert a default (SmolLM2's is ~20 tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            chat: true,
            loss_on: LossOn::Answer,
            max_source_tokens: None,
            system: None,
        }
    }
}

/// How an example's prediction is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// Greedy generation of at most `max_new_tokens` tokens (the paper's evaluation).
    #[default]
    Generate,
    /// Rank classification over the task's label set: every label's answer tokens (with the end
    /// token) scored in one forward pass, the most likely label is the prediction. The loss is
    /// the target label's, as training computes it.
    Rank,
}

crate::named!(Scoring, "scoring", { Generate => "generate", Rank => "rank" });

impl Scoring {
    pub fn as_str(self) -> &'static str {
        crate::names::Named::name(self)
    }
}

/// A number JSON may have written as `null` (serde_json writes NaN so).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
    Ok(Option::<f32>::deserialize(d)?.unwrap_or(f32::NAN))
}

/// What the evaluation of one example gives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleResult {
    /// Mean NLL over the example's target tokens (NaN when not computed: JSON writes it `null`,
    /// and `null` reads back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f32,
    /// How many target tokens the loss covers.
    pub tokens: usize,
    pub prediction: String,
    /// Rank classification: the summed NLL of each label, in the task's label order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scores: Vec<f32>,
}

/// A task's examples and how to encode and decode them (the `examples/TASK.json` of a study).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSet {
    /// `tpv-eval-set`.
    pub format: String,
    pub version: u32,
    /// The task's name in the study (run files' task).
    pub name: String,
    /// Which split the records are (`test`).
    pub split: String,
    /// How many records the split has (the set may hold the first `records.len()` of them).
    pub split_size: usize,
    pub task: TaskSpec,
    pub encode: EncodeOptions,
    pub max_new_tokens: usize,
    /// How the study scored its runs (version 2; version 1 sets generate).
    #[serde(default)]
    pub scoring: Scoring,
    pub records: Vec<Record>,
}

impl EvalSet {
    pub const FORMAT: &'static str = "tpv-eval-set";
    /// 2: `scoring` and `encode.system`.
    pub const VERSION: u32 = 2;

    /// Parses and checks an eval set (format and version first, so a newer set is refused by
    /// its version, not by a field this reader does not know).
    pub fn from_json(bytes: &[u8]) -> Result<Self, SetError> {
        #[derive(Deserialize)]
        struct Head {
            format: Option<String>,
            version: Option<u32>,
        }
        let head: Head = serde_json::from_slice(bytes).map_err(|e| SetError(e.to_string()))?;
        if head.format.as_deref() != Some(Self::FORMAT) {
            return Err(SetError(format!(
                "format is {:?}, expected {:?}",
                head.format.unwrap_or_default(),
                Self::FORMAT
            )));
        }
        if let Some(v) = head.version
            && v > Self::VERSION
        {
            return Err(SetError(format!(
                "version {v} is newer than this tpv reads ({}); upgrade tpv",
                Self::VERSION
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| SetError(e.to_string()))
    }

    /// The targets of the records (the references of the metrics).
    pub fn targets(&self) -> Result<Vec<String>, TaskError> {
        self.records.iter().map(|r| self.task.target(r)).collect()
    }
}

/// The model of a report (`manifest.json`'s `model`): where the Evaluate view fetches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportModel {
    /// A `.gguf` file or an HF folder (ending in `/`), relative to the manifest or absolute.
    pub url: String,
    /// How the study named it (`smollm2`, `org/name`, a path).
    pub name: String,
    /// The files' total size, when bundled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// True when the files are in the report (`SITE/model/`).
    #[serde(default)]
    pub bundled: bool,
}

/// Plain examples (`{"input": …, "target": …}` lines) as an eval set of the `plain` task.
pub fn plain_set(records: Vec<Record>, chat: bool, max_new_tokens: usize) -> EvalSet {
    EvalSet {
        format: EvalSet::FORMAT.into(),
        version: EvalSet::VERSION,
        name: "plain".into(),
        split: "given".into(),
        split_size: records.len(),
        task: crate::tasks::plain(),
        encode: EncodeOptions {
            chat,
            ..EncodeOptions::default()
        },
        max_new_tokens,
        scoring: Scoring::Generate,
        records,
    }
}
