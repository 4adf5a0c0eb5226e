//! The task registry: how a dataset record becomes a model input and a target string, the label
//! words, and the metrics (docs/method.md §5, with the reference code's defects fixed: STS-B rounded to
//! 0.2, SST-5 is the real 5-class data). Custom tasks are the same structure read from TOML.
//!
//! A record is a map from column name to its text. Two input styles:
//! - T5: the task's template, e.g. `sst2 sentence: {sentence}`;
//! - chat models: the instruction naming the label set, one `name: value` line per input field,
//!   then `label: ` (the chat template is applied by the caller).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::metrics::Metric;

/// A record: column name → value as text.
pub type Record = BTreeMap<String, String>;

/// How the target string is made from the label column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LabelKind {
    /// An index into `labels` (or one of the label words itself).
    #[default]
    Class,
    /// A number rounded to a step and printed with one decimal (STS-B: step 0.2).
    Score { step: f64 },
    /// The column's text as it is (free-text answers, MATH solutions).
    Text,
}

/// Where the paper's data comes from (loading lives in the trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Origin {
    /// HF dataset repo id (`org/name`), or an offline package.
    pub dataset: String,
    /// The dataset's config (subset), e.g. `sst2` of `nyu-mll/glue`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    /// The split that plays "test" when the data is large (the original validation or test).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out_split: Option<String>,
}

/// One task: template, label words, metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    /// T5 input template; each `{column}` is replaced by that column's value.
    pub template: String,
    /// The chat models' instruction (first line of the user turn).
    #[serde(default)]
    pub instruction: String,
    /// (display name, column) of each input field, one `name: value` line each in chat inputs.
    #[serde(default)]
    pub fields: Vec<(String, String)>,
    /// Column holding the label.
    #[serde(default = "default_label_column")]
    pub label_column: String,
    /// Label words in index order (empty for text targets).
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub label_kind: LabelKind,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default)]
    pub origin: Origin,
}

fn default_label_column() -> String {
    "label".into()
}

/// Why a record cannot be made into an example.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TaskError {
    #[error("task {task}: record has no column {column:?} (it has: {have})")]
    MissingColumn { task: String, column: String, have: String },
    #[error("task {task}: label {value:?} is neither an index below {n} nor one of the label words")]
    BadLabel { task: String, value: String, n: usize },
    #[error("task {task}: label {value:?} is not a number")]
    BadScore { task: String, value: String },
    #[error("unknown task {0:?}; known: {1}")]
    Unknown(String, String),
    #[error("the task registry (tasks.toml) does not parse: {0}")]
    Registry(String),
}

/// The style of model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// `template` with the fields filled in (T5).
    T5,
    /// Instruction, `name: value` lines, `label: ` (the user turn of a chat model).
    Chat,
}

impl TaskSpec {
    /// The score a run is selected and compared by: the task's first metric, else exact match
    /// (NaN when `metrics` has neither). Training's best-prompt selection and the studies' λ
    /// and init searches use it.
    pub fn primary_score(&self, metrics: &BTreeMap<String, f64>) -> f64 {
        self.metrics
            .first()
            .and_then(|m| metrics.get(m.as_str()))
            .or_else(|| metrics.get("exact_match"))
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn column<'a>(&self, rec: &'a Record, column: &str) -> Result<&'a str, TaskError> {
        rec.get(column)
            .map(String::as_str)
            .ok_or_else(|| TaskError::MissingColumn {
                task: self.name.clone(),
                column: column.to_owned(),
                have: rec.keys().cloned().collect::<Vec<_>>().join(", "),
            })
    }

    /// The model input for a record.
    pub fn input(&self, rec: &Record, style: Style) -> Result<String, TaskError> {
        match style {
            Style::T5 => {
                let mut out = String::new();
                let mut rest = self.template.as_str();
                while let Some(open) = rest.find('{') {
                    let Some(close) = rest[open..].find('}') else { break };
                    out.push_str(&rest[..open]);
                    out.push_str(self.column(rec, &rest[open + 1..open + close])?.trim());
                    rest = &rest[open + close + 1..];
                }
                out.push_str(rest);
                Ok(out)
            }
            Style::Chat => {
                let mut out = self.instruction.clone();
                for (name, column) in &self.fields {
                    out.push('\n');
                    out.push_str(name);
                    out.push_str(": ");
                    out.push_str(self.column(rec, column)?.trim());
                }
                out.push_str("\nlabel: ");
                Ok(out)
            }
        }
    }

    /// The target string (label word, rounded score, or text) of a record.
    pub fn target(&self, rec: &Record) -> Result<String, TaskError> {
        let value = self.column(rec, &self.label_column)?.trim();
        match &self.label_kind {
            LabelKind::Class => {
                if let Ok(i) = value.parse::<usize>()
                    && let Some(word) = self.labels.get(i)
                {
                    return Ok(word.clone());
                }
                self.labels
                    .iter()
                    .find(|w| w.eq_ignore_ascii_case(value))
                    .cloned()
                    .ok_or_else(|| TaskError::BadLabel {
                        task: self.name.clone(),
                        value: value.to_owned(),
                        n: self.labels.len(),
                    })
            }
            LabelKind::Score { step } => {
                let x: f64 = value.parse().map_err(|_| TaskError::BadScore {
                    task: self.name.clone(),
                    value: value.to_owned(),
                })?;
                Ok(format!("{:.1}", (x / step).round() * step))
            }
            LabelKind::Text => Ok(value.to_owned()),
        }
    }

    /// The class index of a record's label (for stratification), if the task has classes.
    pub fn class_of(&self, rec: &Record) -> Option<usize> {
        let t = self.target(rec).ok()?;
        self.labels.iter().position(|w| *w == t)
    }
}

/// One entry of `tasks.toml`: a [`TaskSpec`] in the registry's words (the dataset as one
/// `org/name:config` string, the instruction generated from `what` and the labels).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    dataset: String,
    #[serde(default)]
    held_out: Option<String>,
    template: String,
    #[serde(default)]
    what: String,
    #[serde(default)]
    instruction: Option<String>,
    fields: Vec<(String, String)>,
    #[serde(default = "default_label_column")]
    label_column: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    label_kind: LabelKind,
    metrics: Vec<Metric>,
    /// Where the hub keeps the dataset's files, and the public page that shows it.
    #[serde(default)]
    layout: Option<String>,
}

impl From<Entry> for TaskSpec {
    fn from(e: Entry) -> Self {
        let instruction = e.instruction.unwrap_or_else(|| {
            if e.labels.is_empty() {
                String::new()
            } else {
                format!(
                    "Classify the {} into labels: {}. Reply only the corresponding label.",
                    e.what,
                    e.labels.join(", ")
                )
            }
        });
        let (dataset, config) = match e.dataset.split_once(':') {
            Some((d, c)) => (d.to_owned(), Some(c.to_owned())),
            None => (e.dataset, None),
        };
        TaskSpec {
            name: e.name,
            template: e.template,
            instruction,
            fields: e.fields,
            label_column: e.label_column,
            labels: e.labels,
            label_kind: e.label_kind,
            metrics: e.metrics,
            origin: Origin {
                dataset,
                config,
                held_out_split: e.held_out,
            },
        }
    }
}

/// The registry's text (`shared/src/tasks.toml`), embedded.
pub const REGISTRY: &str = include_str!("tasks.toml");

/// The registry's entries, in its order.
fn entries() -> Result<Vec<Entry>, TaskError> {
    #[derive(Deserialize)]
    struct Registry {
        task: Vec<Entry>,
    }
    let registry: Registry = toml::from_str(REGISTRY).map_err(|e| TaskError::Registry(e.to_string()))?;
    Ok(registry.task)
}

/// Every built-in task, in the registry's order.
pub fn builtin() -> Result<Vec<TaskSpec>, TaskError> {
    Ok(entries()?.into_iter().map(TaskSpec::from).collect())
}

/// Where the hub keeps a built-in task's dataset (revision: paths) and the public page that shows
/// it: the registry's `layout`, for messages about a download that went wrong.
pub fn hub_layout(name: &str) -> Option<String> {
    entries().ok()?.into_iter().find(|t| t.name == name)?.layout
}

/// A built-in task by name.
pub fn get(name: &str) -> Result<TaskSpec, TaskError> {
    let all = builtin()?;
    let names = all.iter().map(|t| t.name.clone()).collect::<Vec<_>>().join(", ");
    all.into_iter()
        .find(|t| t.name == name)
        .ok_or_else(|| TaskError::Unknown(name.to_owned(), names))
}

/// The plain-file task: `input` is the model input as it is, `target` the answer.
pub fn plain() -> TaskSpec {
    TaskSpec {
        name: "plain".into(),
        template: "{input}".into(),
        instruction: String::new(),
        fields: Vec::new(),
        label_column: "target".into(),
        labels: Vec::new(),
        label_kind: LabelKind::Text,
        metrics: Vec::new(),
        origin: Origin::default(),
    }
}

impl TaskSpec {
    /// True for the plain-file task, whose chat input is `input` itself.
    pub fn is_plain(&self) -> bool {
        self.fields.is_empty() && self.template == "{input}"
    }

    /// The input of a record in `style`; plain tasks use their `input` column as it is.
    pub fn render(&self, rec: &Record, style: Style) -> Result<String, TaskError> {
        if self.is_plain() {
            return self.column(rec, "input").map(str::to_owned);
        }
        self.input(rec, style)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hub_dataset_in_the_registry_says_where_its_files_are() {
        for t in builtin().unwrap() {
            let on_hub = t.origin.dataset.contains('/') && !t.origin.dataset.contains(' ');
            let layout = hub_layout(&t.name);
            assert_eq!(on_hub, layout.is_some(), "{}: layout {layout:?}", t.name);
            if let Some(l) = layout {
                assert!(
                    l.contains("https://huggingface.co/datasets/"),
                    "{}: no public source in {l}",
                    t.name
                );
            }
        }
    }

    #[test]
    fn the_registry_parses_with_unique_names_and_an_instruction_for_every_labelled_task() {
        let all = builtin().unwrap();
        assert_eq!(all.len(), 26);
        for (i, t) in all.iter().enumerate() {
            assert!(all[..i].iter().all(|u| u.name != t.name), "{} twice", t.name);
            assert!(!t.template.is_empty() && !t.fields.is_empty(), "{}", t.name);
            assert!(!t.instruction.is_empty(), "{} has no instruction", t.name);
        }
        assert_eq!(get("stsb").unwrap().label_kind, LabelKind::Score { step: 0.2 });
        assert_eq!(get("trec").unwrap().label_column, "coarse_label");
        assert!(matches!(get("nope"), Err(TaskError::Unknown(..))));
    }
}
