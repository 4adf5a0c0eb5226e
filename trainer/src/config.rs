//! The training configuration (`tpv train CONFIG.toml [--set key=value …]`). Unknown keys are
//! errors naming the key; the resolved configuration is stored in every run file.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tpv_shared::tasks::TaskSpec;

use crate::optim::ScheduleKind;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelSection,
    pub prompt: PromptSection,
    pub data: DataSection,
    #[serde(default)]
    pub optim: OptimSection,
    pub train: TrainSection,
    /// Train ATTEMPT instead of a plain prompt: the prompt (from `prompt.init`) becomes the
    /// target prompt, mixed per input with these frozen source prompts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptSection>,
}

/// ATTEMPT (Asai et al. 2022; `tpv_shared::attempt`): frozen source prompts and an attention
/// module trained with the target prompt, at `optim.learning_rate`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttemptSection {
    /// Run files of the source prompts (task prompts or combinations of the run's shape).
    pub sources: Vec<PathBuf>,
    /// The softmax temperature; default d·e (the original's 2087 for T5-base).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// HF model directory, hub id in the local cache, .gguf file, or `smollm2`.
    pub path: String,
    /// `cpu` or `cuda:N`.
    #[serde(default = "default_device")]
    pub device: String,
    /// `f32` (default) or `bf16` (large models on a GPU).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Chat models: put the input in a user turn of the chat template.
    #[serde(default = "yes")]
    pub chat_template: bool,
    /// Chat models: the system turn before the input (`""`: an empty one, which drops a
    /// template's default system prompt, ~20 tokens for SmolLM2). Unset: the template decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_prompt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSection {
    pub virtual_tokens: usize,
    pub init: Init,
}

/// Where θ₀ comes from: an origin run file, or sampled from the vocabulary embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, try_from = "RawInit")]
pub enum Init {
    File(PathBuf),
    Sampled(InitTable),
}

/// `init` as written, so a mistake inside the table is reported with its key (an untagged enum
/// would only say that nothing matched).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawInit {
    File(PathBuf),
    Table(toml::Table),
}

impl TryFrom<RawInit> for Init {
    type Error = String;

    fn try_from(raw: RawInit) -> std::result::Result<Self, String> {
        match raw {
            RawInit::File(p) => Ok(Self::File(p)),
            RawInit::Table(t) => InitTable::deserialize(toml::Value::Table(t))
                .map(Self::Sampled)
                .map_err(|e| e.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitTable {
    pub sample_vocab: SampleVocab,
}

/// Origin `index` of the stream seeded with `seed`: with `below`, the paper's recipe (ids below
/// `below`, without replacement, numpy's generator); without, peft's SAMPLE_VOCAB over the vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleVocab {
    #[serde(default = "default_origin_seed")]
    pub seed: u64,
    #[serde(default)]
    pub below: Option<usize>,
    #[serde(default)]
    pub index: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// A task name from the registry, or a JSONL/CSV/TSV/parquet file.
    pub train: String,
    /// For a registry task: a directory holding its split files (`train-*.parquet`, …) instead
    /// of the HF hub cache.
    #[serde(default)]
    pub dataset_dir: Option<PathBuf>,
    #[serde(default)]
    pub validation: Option<String>,
    #[serde(default)]
    pub test: Option<String>,
    /// The task of file data: a registry name, or a table declaring a custom task. Without it,
    /// files must have `input` and `target` columns.
    #[serde(default)]
    pub task: Option<TaskRef>,
    /// Shuffle the training examples every epoch (seeded by `train.seed`).
    #[serde(default)]
    pub shuffle: bool,
    /// Seed of the splits (the paper: 42).
    #[serde(default = "default_split_seed")]
    pub split_seed: u64,
    /// k-shot training set (stratified; identical across methods and origins for a split seed).
    #[serde(default)]
    pub shots: Option<usize>,
    #[serde(default)]
    pub max_train: Option<usize>,
    #[serde(default)]
    pub max_validation: Option<usize>,
    #[serde(default)]
    pub max_test: Option<usize>,
    /// Truncate inputs to this many tokens (T5 in the paper: 256).
    #[serde(default)]
    pub max_source_tokens: Option<usize>,
    /// Multi-task training (SPoT's multi-task prompt): more tasks whose splits join this one's,
    /// each split, capped and rendered with its own template; examples are interleaved. A name is
    /// a registry task read with this section's caps; a table is a `[data]` section of its own
    /// (a task from files: `{ train = "b.jsonl", task = "sst2", name = "b" }`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<AlsoTask>,
    /// The task's name in run files and tables (default: the registry or custom task's name;
    /// `plain` for input/target files). Studies set it to the study's task name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One more task of a multi-task run (`data.also`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AlsoTask {
    /// A registry task, with the caps of the section that names it.
    Name(String),
    /// A data section of its own (its own `also` is not read).
    Data(Box<DataSection>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskRef {
    Name(String),
    Custom(Box<TaskSpec>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSection {
    #[serde(default = "default_lr")]
    pub learning_rate: f64,
    #[serde(default = "default_wd")]
    pub weight_decay: f64,
    #[serde(default)]
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the total steps (the paper's LLM recipe: 0.03).
    #[serde(default)]
    pub warmup_ratio: Option<f64>,
    #[serde(default)]
    pub scheduler: ScheduleKind,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    #[serde(default = "one")]
    pub gradient_accumulation: usize,
    #[serde(default)]
    pub max_steps: Option<u64>,
    #[serde(default)]
    pub epochs: Option<f64>,
    #[serde(default)]
    pub max_grad_norm: Option<f64>,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            learning_rate: default_lr(),
            weight_decay: default_wd(),
            warmup_steps: None,
            warmup_ratio: None,
            scheduler: ScheduleKind::Linear,
            batch_size: default_batch(),
            gradient_accumulation: 1,
            max_steps: None,
            epochs: None,
            max_grad_norm: None,
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
        }
    }
}

/// Which examples' tokens the causal loss covers (shared with the web app's evaluation).
pub use tpv_shared::eval::LossOn;

/// What "best" means when selecting the checkpoint to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Select {
    /// The task's first metric (exact match when it has none), higher is better.
    #[default]
    Metric,
    /// Validation loss, lower is better (the paper's few-shot recipe).
    Loss,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Output directory: `prompt.safetensors` (the best prompt) and `checkpoint.safetensors`.
    pub output: PathBuf,
    /// Override of the model's dropout (T5: 0.1).
    #[serde(default)]
    pub dropout: Option<f32>,
    #[serde(default = "default_eval_every")]
    pub eval_every: u64,
    /// Checkpoint interval (default: `eval_every`).
    #[serde(default)]
    pub save_every: Option<u64>,
    /// Seed of shuffling and dropout.
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default)]
    pub select: Select,
    /// Stop after this many evaluations without improvement.
    #[serde(default)]
    pub early_stopping_patience: Option<u32>,
    #[serde(default = "default_new_tokens")]
    pub max_new_tokens: usize,
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
    #[serde(default)]
    pub loss: LossOn,
    /// Evaluate the final prompt on the test split.
    #[serde(default = "yes")]
    pub test: bool,
    /// Also evaluate the untrained origin and the bare model (zero-shot) on the test split, stored
    /// as `origin_test_*` and `zero_shot_test_*` metrics.
    #[serde(default)]
    pub baselines: bool,
    /// With `baselines`: also the zero-shot one (off in a study's runs after the first origin's:
    /// the bare model scores the same whatever the origin).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub zero_shot_baseline: bool,
    /// Compute the loss in validation evaluations (a second forward pass over the examples; always
    /// on with `select = "loss"`). Off halves the cost of an evaluation and drops the valid_loss curve.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub eval_loss: bool,
    /// How validation and test predictions are made: `generate` (greedy, `max_new_tokens`; the
    /// paper's way) or `rank` (rank classification over the task's labels: one forward pass,
    /// the loss comes with it).
    #[serde(default, skip_serializing_if = "is_generate")]
    pub scoring: Scoring,
    /// Keep only each layer's input during the forward pass and recompute its activations in the
    /// backward pass (transformers' `gradient_checkpointing`): activation memory of one layer
    /// instead of all, for one more forward pass. Decoder-only models; the gradient is the same.
    #[serde(default, skip_serializing_if = "is_false")]
    pub gradient_checkpointing: bool,
}

/// Rank classification or generation (shared with `tpv eval` and the web app).
pub use tpv_shared::eval::Scoring;

fn is_generate(s: &Scoring) -> bool {
    *s == Scoring::Generate
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn default_device() -> String {
    "cpu".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn default_origin_seed() -> u64 {
    1024
}
fn default_split_seed() -> u64 {
    42
}
fn default_seed() -> u64 {
    42
}
fn default_lr() -> f64 {
    0.3
}
fn default_wd() -> f64 {
    1e-5
}
fn default_batch() -> usize {
    32
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    1e-8
}
fn default_eval_every() -> u64 {
    100
}
fn default_new_tokens() -> usize {
    16
}
fn default_eval_batch() -> usize {
    16
}

/// Reads `path`, applies `--set key=value` overrides (dotted keys; values parsed as TOML, else
/// taken as strings), resolves relative paths against the config's directory, and validates.
pub fn load(path: &Path, sets: &[String]) -> Result<Config> {
    let text = crate::io::read_text(path, crate::io::MAX_CONFIG_BYTES)?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    for set in sets {
        apply_set(&mut table, set).with_context(|| format!("--set {set}"))?;
    }
    from_table(
        table,
        path.parent().unwrap_or(Path::new(".")),
        &path.display().to_string(),
    )
}

/// A config from a TOML table: relative paths resolved against `base`; errors name `label`.
pub fn from_table(table: toml::Table, base: &Path, label: &str) -> Result<Config> {
    let de = toml::Value::Table(table);
    let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
        let at = e.path().to_string();
        anyhow::anyhow!("{label}: {at}: {}", e.into_inner())
    })?;
    config.resolve_paths(base);
    config.validate().with_context(|| label.to_owned())?;
    Ok(config)
}

/// The resolved config a run file stores (JSON, its paths already absolute) as a config again:
/// through TOML, which has no null (an unset option is left out).
pub fn from_stored_json(value: &serde_json::Value, label: &str) -> Result<Config> {
    fn strip_nulls(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .filter(|(_, x)| !x.is_null())
                .map(|(k, x)| (k.clone(), strip_nulls(x)))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            serde_json::Value::Array(a) => a.iter().map(strip_nulls).collect(),
            other => other.clone(),
        }
    }
    let table: toml::Table =
        serde_json::from_value(strip_nulls(value)).with_context(|| format!("{label}: not a config table"))?;
    from_table(table, Path::new("/"), label)
}

/// Applies one `key=value` override (dotted key; the value parsed as TOML, else a string).
pub fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let Some((key, value)) = set.split_once('=') else {
        bail!("expected key=value")
    };
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {value}")) {
        Ok(mut t) => t.remove("v").unwrap_or_else(|| toml::Value::String(value.to_owned())),
        Err(_) => toml::Value::String(value.to_owned()),
    };
    set_value(table, key, value)
}

/// Sets the dotted `key` (`optim.batch_size`) of a config table to `value`, creating the tables
/// on the way; one of two exclusive keys (max_steps/epochs, warmup_steps/warmup_ratio) replaces
/// the other. What `--set` and the studies' overrides do, with a typed value.
pub fn set_value(table: &mut toml::Table, key: &str, value: impl Into<toml::Value>) -> Result<()> {
    let value = value.into();
    let parts: Vec<&str> = key.trim().split('.').collect();
    let (last, parents) = parts.split_last().context("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry((*p).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry.as_table_mut().with_context(|| format!("{p} is not a table"))?;
    }
    // Setting one of two exclusive keys replaces the other (an override, not a conflict).
    let exclusive = match *last {
        "max_steps" => Some("epochs"),
        "epochs" => Some("max_steps"),
        "warmup_steps" => Some("warmup_ratio"),
        "warmup_ratio" => Some("warmup_steps"),
        _ => None,
    };
    if let Some(other) = exclusive
        && parents == ["optim"]
    {
        cur.remove(other);
    }
    cur.insert((*last).to_owned(), value);
    Ok(())
}

/// The largest count a config may give for a size (virtual tokens, batch sizes, tokens): far
/// above any model's use, far below an allocation that would abort.
pub const SIZE_CAP: usize = 1 << 16;

/// A data or model spec that names a file (a path or a name with an extension), not a registry name.
pub fn is_file_like(s: &str) -> bool {
    s.contains('/') || s.contains('.')
}

impl Config {
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |s: &mut String| {
            if is_file_like(s) && Path::new(s.as_str()).is_relative() && base.join(s.as_str()).exists() {
                *s = base.join(s.as_str()).display().to_string();
            }
        };
        let fix_data = |data: &mut DataSection| {
            fix(&mut data.train);
            if let Some(v) = &mut data.validation {
                fix(v);
            }
            if let Some(t) = &mut data.test {
                fix(t);
            }
            if let Some(d) = &mut data.dataset_dir
                && d.is_relative()
                && base.join(&*d).exists()
            {
                *d = base.join(&*d);
            }
        };
        fix_data(&mut self.data);
        for also in &mut self.data.also {
            if let AlsoTask::Data(d) = also {
                fix_data(d);
            }
        }
        fix(&mut self.model.path);
        if let Init::File(p) = &mut self.prompt.init
            && p.is_relative()
            && base.join(&*p).exists()
        {
            *p = base.join(&*p);
        }
    }

    fn validate(&self) -> Result<()> {
        let o = &self.optim;
        let t = &self.train;
        // Counts that size allocations and loops: at least 1, at most SIZE_CAP (the model's own
        // context bounds the sequence lengths again once it is loaded).
        for (key, n) in [
            ("prompt.virtual_tokens", self.prompt.virtual_tokens),
            ("optim.batch_size", o.batch_size),
            ("optim.gradient_accumulation", o.gradient_accumulation),
            ("train.eval_batch_size", t.eval_batch_size),
            ("train.max_new_tokens", t.max_new_tokens.max(1)),
            ("data.max_source_tokens", self.data.max_source_tokens.unwrap_or(1)),
        ] {
            if n == 0 || n > SIZE_CAP {
                bail!("{key} is {n}; it must be between 1 and {SIZE_CAP}");
            }
        }
        match (o.max_steps, o.epochs) {
            (Some(_), Some(_)) => bail!("optim: give max_steps or epochs, not both"),
            (None, None) => bail!("optim: give max_steps or epochs"),
            (Some(0), None) => bail!("optim.max_steps must be at least 1"),
            (None, Some(e)) if !(e.is_finite() && e > 0.0) => {
                bail!("optim.epochs is {e}; it must be a finite number > 0")
            }
            _ => {}
        }
        if o.warmup_steps.is_some() && o.warmup_ratio.is_some() {
            bail!("optim: give warmup_steps or warmup_ratio, not both");
        }
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, hi_open: bool| -> Result<()> {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if !ok {
                bail!(
                    "{key} is {v}; it must be in [{lo}, {hi}{}",
                    if hi_open { ")" } else { "]" }
                );
            }
            Ok(())
        };
        if !(o.learning_rate.is_finite() && o.learning_rate >= 0.0) {
            bail!("optim.learning_rate must be a finite number ≥ 0");
        }
        in_range("optim.weight_decay", o.weight_decay, 0.0, f64::MAX, false)?;
        in_range("optim.beta1", o.beta1, 0.0, 1.0, true)?;
        in_range("optim.beta2", o.beta2, 0.0, 1.0, true)?;
        if !(o.eps.is_finite() && o.eps > 0.0) {
            bail!("optim.eps is {}; it must be a finite number > 0", o.eps);
        }
        if let Some(r) = o.warmup_ratio {
            in_range("optim.warmup_ratio", r, 0.0, 1.0, false)?;
        }
        if let Some(g) = o.max_grad_norm
            && !(g.is_finite() && g > 0.0)
        {
            bail!("optim.max_grad_norm is {g}; it must be a finite number > 0");
        }
        if let Some(p) = t.dropout {
            in_range("train.dropout", f64::from(p), 0.0, 1.0, true)?;
        }
        if self.train.eval_every == 0 {
            bail!("train.eval_every must be at least 1");
        }
        self.model
            .dtype
            .parse::<tpv_shared::Precision>()
            .map_err(|e| anyhow::anyhow!("model.dtype: {e}"))?;
        self.model
            .device
            .parse::<tpv_shared::DeviceSpec>()
            .map_err(|e| anyhow::anyhow!("model.device: {e}"))?;
        Ok(())
    }

    /// The checkpoint interval.
    pub fn save_every(&self) -> u64 {
        self.train.save_every.unwrap_or(self.train.eval_every).max(1)
    }
}
