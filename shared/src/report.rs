//! A report folder's `manifest.json`: written by `tpv report`, read by the web app. One typed,
//! versioned definition for both; a newer version is refused naming both versions.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::eval::set::ReportModel;

/// `format` of a report manifest.
pub const FORMAT: &str = "tpv-report";
/// The manifest version this build writes and the newest it reads.
pub const VERSION: u32 = 1;

/// `SITE/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    /// The study's name.
    pub name: String,
    #[serde(default)]
    pub tool_version: String,
    #[serde(default)]
    pub origins: Vec<usize>,
    /// Jobs of the study, finished ones, and the ids of the rest.
    #[serde(default)]
    pub jobs: usize,
    #[serde(default)]
    pub finished: usize,
    #[serde(default)]
    pub missing: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<Tables>,
    #[serde(default)]
    pub runs: Vec<ManifestRun>,
    /// Each task's bundled test examples.
    #[serde(default)]
    pub examples: Vec<ExampleSet>,
    /// The study's model, bundled or linked.
    #[serde(default)]
    pub model: Option<ReportModel>,
}

/// The tables' files, relative to the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tables {
    pub markdown: String,
    pub csv: String,
    pub json: String,
    pub html: String,
}

/// One finished run of the study: its job (the experiment and its parameters) and what its run
/// file says (kind, model, tasks, metrics).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRun {
    pub id: String,
    /// The run file, relative to the manifest.
    pub file: String,
    /// prompt_tuning, multi_task, addition, cross_origin or transfer.
    pub experiment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<String>,
    /// A transfer run's target task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<usize>,
    /// A cross-origin run's source origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<usize>,
    /// A transfer run's init (random, spot, multi, tpv_sum) and a SPoT init's source task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shots: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deps: Vec<String>,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub origin_id: Option<String>,
    /// Metric values; `null` for a value that is not a number (JSON has no NaN).
    #[serde(default)]
    pub metrics: BTreeMap<String, Option<f64>>,
}

/// A task's bundled examples (`examples/TASK.json`, an [`crate::eval::set::EvalSet`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleSet {
    pub task: String,
    /// Relative to the manifest in the manifest; absolute once the web app loaded it.
    pub file: String,
    #[serde(default)]
    pub split: String,
    #[serde(default)]
    pub records: usize,
    #[serde(default)]
    pub split_size: usize,
}

impl Manifest {
    /// Parses a manifest: the right format, a version this build reads.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        crate::versioned::from_json(bytes, FORMAT, VERSION, "report manifest")
    }

    /// Pretty JSON, as `tpv report` writes it.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::BadMetadata(e.to_string()))
    }
}
