//! The one error type of the core library.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    // ---- shapes and operands ----
    #[error("shape {rows}x{dim} does not fit in memory")]
    ShapeOverflow { rows: usize, dim: usize },
    #[error("a {rows}x{dim} tensor needs {} values, got {len}", rows * dim)]
    DataLength { rows: usize, dim: usize, len: usize },
    #[error("needed {needed} rows, the tensor has {have}")]
    TooFewRows { needed: usize, have: usize },
    #[error("shapes differ: {left:?} vs {right:?}")]
    ShapeMismatch { left: [usize; 2], right: [usize; 2] },
    #[error("prompts of different base models: {left:?} vs {right:?}")]
    ModelMismatch { left: String, right: String },
    #[error("{label}: a task prompt without a stored origin has no task prompt vector")]
    NoOrigin { label: String },
    #[error("{label}: is {kind}, not a task prompt or a task prompt vector")]
    NotAVector { label: String, kind: &'static str },
    #[error("{label}: a task prompt vector is not a prompt; apply it to an origin first (tpv combine)")]
    VectorIsNotAPrompt { label: String },
    #[error("no operands given")]
    NoOperands,
    #[error(
        "{label}: an ATTEMPT run mixes its target prompt with its sources per input, so it is not one prompt to {what}; evaluate it with tpv eval"
    )]
    AttemptRun { label: String, what: &'static str },
    #[error("{weights} weights for {vectors} vectors: give one weight per vector or none")]
    WeightCount { weights: usize, vectors: usize },
    #[error("unknown {what} {value:?}: use one of {known}")]
    UnknownName {
        what: &'static str,
        value: String,
        known: String,
    },
    #[error("the {method} merge needs {name}")]
    MissingParameter { name: &'static str, method: &'static str },
    #[error("{name} has no effect with the {method} merge")]
    UnusedParameter { name: &'static str, method: &'static str },
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        name: &'static str,
        value: String,
        reason: &'static str,
    },

    // ---- files ----
    #[error("not a valid safetensors file (truncated, or another format): {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    #[error("not a tpv run file: {0}")]
    NotARunFile(String),
    #[error("the file has {what} format version {file}, this tpv reads versions up to {supported}; upgrade tpv")]
    NewerFormat {
        /// "run-file", "report manifest", "study file".
        what: &'static str,
        file: u32,
        supported: u32,
    },
    #[error("run-file metadata is invalid: {0}")]
    BadMetadata(String),
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {tensor:?} has dtype {dtype}; expected a float (F32, F16, BF16 or F64)")]
    WrongDtype { tensor: String, dtype: String },
    #[error("tensor {tensor:?} has shape {shape:?}; expected {expected}")]
    WrongShape {
        tensor: String,
        shape: Vec<usize>,
        expected: &'static str,
    },
    #[error("tensor {tensor:?} holds {count} NaN/inf values (first at flat index {first})")]
    NonFinite { tensor: String, count: usize, first: usize },
    #[error("metadata says {field} = {meta}, the tensor has {actual}")]
    MetadataMismatch {
        field: &'static str,
        meta: usize,
        actual: usize,
    },

    // ---- records ----
    #[error("{}{reason}", line.map_or(String::new(), |l| format!("line {l}: ")))]
    BadRecords { line: Option<usize>, reason: String },

    // ---- peft ----
    #[error("adapter_config.json is invalid: {0}")]
    PeftConfig(String),
    #[error("peft adapter is {0}, not PROMPT_TUNING")]
    NotPromptTuning(String),
    #[error(
        "prompt_embeddings has shape {shape:?}; adapter_config.json wants [{num_virtual_tokens} x {submodules}, {token_dim}]"
    )]
    PeftShape {
        shape: [usize; 2],
        num_virtual_tokens: usize,
        submodules: usize,
        token_dim: usize,
    },
}
