//! The core of tpv, compiled natively and to wasm32: soft prompts and task prompt vectors
//! ([`SoftPrompt`]), their arithmetic and merges ([`arith`], [`merge`]), similarity
//! ([`similarity`]), the versioned run-file format ([`runfile`]) and HF peft interop ([`peft`]).
//!
//! No CLI, GPU or UI dependency may enter this crate (checked in CI with `cargo tree`).

pub mod arith;
pub mod attempt;
pub mod attempt_params;
pub mod diff;
pub mod document;
pub mod error;
pub mod eval;
pub mod figures;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod names;
pub mod nearest;
pub mod origins;
pub mod peft;
pub mod prompt;
pub mod records;
pub mod report;
pub mod runfile;
pub mod similarity;
pub mod st;
pub mod stats;
pub mod study;
pub mod tasks;
pub mod tensor;
pub mod text;
mod time;
mod versioned;

pub use document::{Document, Norms, Summary};
pub use error::{Error, Result};
pub use merge::{MergeKind, MergeMethod, MergeParams, SignElection};
pub use names::{DeviceSpec, Named, Precision};
pub use prompt::{Curve, Layout, ModelRef, Operand, OriginRef, PromptKind, PromptMeta, SoftPrompt, TaskType};
pub use runfile::{FORMAT_NAME, FORMAT_VERSION, FileKind};
pub use similarity::Measure;
pub use tensor::PromptTensor;

/// The version of tpv, stamped into every file it writes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
