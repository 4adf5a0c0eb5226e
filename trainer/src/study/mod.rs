//! Studies: the paper's experiments as independent, resumable jobs over tasks × origins × methods ×
//! shot counts (`tpv sweep`), their aggregation (`tpv aggregate`) and static report (`tpv report`).
//!
//! A study config is a training config (the `tpv train` sections, minus `data.train`, are the base
//! of every run) plus a `[study]` table naming the tasks, origins and experiments. Every job writes
//! one run file, `OUTPUT/JOB_ID/prompt.safetensors`, atomically and last; a job is finished when that
//! file exists and no checkpoint does, so an interrupted study re-run skips what finished and resumes
//! what was cut off. `OUTPUT/study.json` lists every job, so aggregation can say what is missing.

pub mod aggregate;
pub mod jobs;
pub mod latex;
pub mod preflight;
pub mod report;
pub mod slurm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tpv_shared::MergeMethod;
// The job kinds, their ids and study.json are defined in shared (one definition for every reader).
pub use tpv_shared::study::{InitMethod, Job, JobKind, prompt_tuning_id};

use crate::config::{self, Config};
use crate::train;

/// The paper's λ grid: 0, 0.05, …, 1.
pub fn paper_lambdas() -> Vec<f64> {
    (0..=20).map(|i| f64::from(i) / 20.0).collect()
}

/// The paper's shot counts for transfer.
pub const PAPER_SHOTS: [usize; 10] = [0, 5, 10, 25, 50, 100, 250, 500, 750, 1000];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudySection {
    pub name: String,
    /// The study directory (relative to the working directory).
    pub output: PathBuf,
    /// Origin indices of the base config's `prompt.init.sample_vocab` stream.
    #[serde(default = "default_origins")]
    pub origins: Vec<usize>,
    /// Tasks tuned from every origin (the sources of the other experiments are added to them).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Per-task `[data]` keys, e.g. `[study.data.my_task] train = "my.jsonl"` for a task that
    /// is not in the registry, or different caps for one task.
    #[serde(default)]
    pub data: BTreeMap<String, toml::Table>,
    /// Per-task overrides of any key (dotted), e.g. `[study.overrides.trec] optim.epochs = 50`;
    /// they apply to every job that reads the task.
    #[serde(default)]
    pub overrides: BTreeMap<String, toml::Table>,
    /// Overrides (dotted keys) of the prompt-tuning runs only.
    #[serde(default)]
    pub set: toml::Table,
    #[serde(default)]
    pub addition: Option<Addition>,
    #[serde(default)]
    pub cross_origin: Option<CrossOrigin>,
    #[serde(default)]
    pub transfer: Option<Transfer>,
}

fn default_origins() -> Vec<usize> {
    vec![0, 1, 2]
}

/// Addition of task prompt vectors: θ₀ + λ·merge(τ₁, …), λ chosen on validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Addition {
    /// The task sets to add (pairs or more); default: every pair of `study.tasks`.
    #[serde(default)]
    pub sets: Option<Vec<Vec<String>>>,
    /// The λ grid; default the paper's 0, 0.05, …, 1.
    #[serde(default)]
    pub lambdas: Option<Vec<f64>>,
    /// One λ per vector (the grid's product) instead of one shared λ.
    #[serde(default)]
    pub per_vector: bool,
    /// The merge of the vectors before scaling (default: the sum, as in the paper).
    #[serde(default)]
    pub merge: Option<MergeMethod>,
}

/// Cross-origin: θ₀ of one origin plus τ of another, against the original prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrossOrigin {
    /// Default: `study.tasks`.
    #[serde(default)]
    pub tasks: Option<Vec<String>>,
}

/// Few-shot transfer of source prompts to target tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    pub sources: Vec<String>,
    pub targets: Vec<String>,
    /// Default: the paper's 0, 5, …, 1000.
    #[serde(default)]
    pub shots: Option<Vec<usize>>,
    #[serde(default = "all_inits")]
    pub inits: Vec<InitMethod>,
    /// Apply the paper's few-shot recipe (docs/method.md §4: 1000 steps, 500 warmup, batch 2/8/16 by shots,
    /// ≤250 validation examples, best by validation loss) before `set`.
    #[serde(default = "yes")]
    pub paper_recipe: bool,
    /// Overrides (dotted keys) of the transfer runs, applied last.
    #[serde(default)]
    pub set: toml::Table,
    /// The `learned_combination` init: Adam steps on the combination's weights before the job
    /// trains (each a forward and backward pass over the shots), and their learning rate.
    #[serde(default = "default_combination_steps")]
    pub combination_steps: usize,
    #[serde(default = "default_combination_learning_rate")]
    pub combination_learning_rate: f64,
}

fn default_combination_steps() -> usize {
    crate::train::combination::STUDY_STEPS
}

fn default_combination_learning_rate() -> f64 {
    crate::train::combination::STUDY_LEARNING_RATE
}

fn all_inits() -> Vec<InitMethod> {
    vec![
        InitMethod::Random,
        InitMethod::Spot,
        InitMethod::Multi,
        InitMethod::TpvSum,
    ]
}

fn yes() -> bool {
    true
}

/// A study config: the base training config and the `[study]` table.
#[derive(Debug, Clone)]
pub struct Study {
    pub study: StudySection,
    /// The base config as a TOML table (without `study`), with `--set` overrides applied.
    pub base: toml::Table,
    /// The config file's directory (relative paths in it are read from there).
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl Study {
    /// Reads a study config and applies `--set` overrides (dotted keys, `study.…` included).
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let text = crate::io::read_text(path, crate::io::MAX_CONFIG_BYTES)?;
        Self::from_str(&text, path, sets)
    }

    pub fn from_str(text: &str, path: &Path, sets: &[String]) -> Result<Self> {
        let mut table: toml::Table =
            toml::from_str(text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        for set in sets {
            config::apply_set(&mut table, set).with_context(|| format!("--set {set}"))?;
        }
        let raw = table.remove("study").with_context(|| {
            format!(
                "{}: no [study] table (a training config? use tpv train)",
                path.display()
            )
        })?;
        let study: StudySection = serde_path_to_error::deserialize(raw).map_err(|e| {
            let at = e.path().to_string();
            anyhow::anyhow!("{}: study.{at}: {}", path.display(), e.into_inner())
        })?;
        let s = Self {
            study,
            base: table,
            dir: path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            path: path.to_path_buf(),
        };
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<()> {
        let s = &self.study;
        if s.origins.is_empty() {
            bail!("study.origins is empty");
        }
        if let Some(o) = s
            .origins
            .iter()
            .enumerate()
            .find_map(|(i, o)| s.origins[..i].contains(o).then_some(o))
        {
            bail!("study.origins lists origin {o} twice (its jobs would run twice)");
        }
        // Task names become directories (job ids, eval sets): one plain path component each.
        let mut names: Vec<&String> = s.tasks.iter().chain(s.data.keys()).chain(s.overrides.keys()).collect();
        if let Some(a) = &s.addition {
            names.extend(a.sets.iter().flatten().flatten());
            if let Some(l) = a.lambdas.iter().flatten().find(|l| !l.is_finite()) {
                bail!("study.addition.lambdas: {l} is not a finite number");
            }
        }
        if let Some(c) = &s.cross_origin {
            names.extend(c.tasks.iter().flatten());
        }
        if let Some(t) = &s.transfer {
            names.extend(t.sources.iter().chain(&t.targets));
        }
        for name in names {
            crate::io::check_file_name(name, "task name")
                .map_err(|e| anyhow::anyhow!("{e}: a task name becomes a directory name (one path component: no `/`, `..`, backslash or control character)"))?;
        }
        if s.tasks.iter().enumerate().any(|(i, t)| s.tasks[..i].contains(t)) {
            bail!("study.tasks lists a task twice");
        }
        if let Some(a) = &s.addition {
            for set in self.addition_sets() {
                if set.len() < 2 {
                    bail!("study.addition.sets: {set:?} needs at least two tasks");
                }
            }
            if a.lambdas.as_ref().is_some_and(|l| l.is_empty()) {
                bail!("study.addition.lambdas is empty");
            }
        }
        if let Some(t) = &s.transfer {
            if t.sources.is_empty() || t.targets.is_empty() {
                bail!("study.transfer needs sources and targets");
            }
            if t.combination_steps == 0 {
                bail!("study.transfer.combination_steps is 0: the learned combination needs at least one step");
            }
            if !(t.combination_learning_rate.is_finite() && t.combination_learning_rate > 0.0) {
                bail!(
                    "study.transfer.combination_learning_rate is {}: it must be a positive number",
                    t.combination_learning_rate
                );
            }
            if t.inits.is_empty() {
                bail!("study.transfer.inits is empty");
            }
        }
        // Every run's config must be valid before anything starts.
        for job in self.jobs() {
            if let Some(c) = self.train_config(&job, None)? {
                drop(c);
            }
        }
        Ok(())
    }

    pub fn output(&self) -> &Path {
        &self.study.output
    }

    fn addition_sets(&self) -> Vec<Vec<String>> {
        let Some(a) = &self.study.addition else {
            return Vec::new();
        };
        a.sets.clone().unwrap_or_else(|| {
            let t = &self.study.tasks;
            let mut sets = Vec::new();
            for i in 0..t.len() {
                for j in i + 1..t.len() {
                    sets.push(vec![t[i].clone(), t[j].clone()]);
                }
            }
            sets
        })
    }

    /// Every task tuned from every origin: `study.tasks`, the addition and cross-origin tasks,
    /// and the transfer sources.
    pub fn tuned_tasks(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |t: &String| {
            if !out.contains(t) {
                out.push(t.clone());
            }
        };
        self.study.tasks.iter().for_each(&mut add);
        self.addition_sets().iter().flatten().for_each(&mut add);
        if let Some(c) = &self.study.cross_origin {
            c.tasks.iter().flatten().for_each(&mut add);
        }
        if let Some(t) = &self.study.transfer
            && t.inits.iter().any(|i| {
                matches!(
                    i,
                    InitMethod::Spot | InitMethod::TpvSum | InitMethod::LearnedCombination | InitMethod::Attempt
                )
            })
        {
            t.sources.iter().for_each(&mut add);
        }
        out
    }

    /// All jobs, dependencies first.
    pub fn jobs(&self) -> Vec<Job> {
        let s = &self.study;
        let mut jobs = Vec::new();
        for &o in &s.origins {
            for t in self.tuned_tasks() {
                jobs.push(Job::new(JobKind::PromptTuning { task: t, origin: o }, vec![]));
            }
        }
        if let Some(tr) = &s.transfer
            && tr.inits.contains(&InitMethod::Multi)
        {
            for &o in &s.origins {
                jobs.push(Job::new(
                    JobKind::MultiTask {
                        tasks: tr.sources.clone(),
                        origin: o,
                    },
                    vec![],
                ));
            }
        }
        for set in self.addition_sets() {
            for &o in &s.origins {
                jobs.push(Job::new(
                    JobKind::Addition {
                        tasks: set.clone(),
                        origin: o,
                    },
                    set.iter().map(|t| prompt_tuning_id(t, o)).collect(),
                ));
            }
        }
        if let Some(c) = &s.cross_origin {
            for t in c.tasks.as_ref().unwrap_or(&s.tasks) {
                for &o in &s.origins {
                    for &from in s.origins.iter().filter(|&&f| f != o) {
                        jobs.push(Job::new(
                            JobKind::CrossOrigin {
                                task: t.clone(),
                                origin: o,
                                from,
                            },
                            vec![prompt_tuning_id(t, o), prompt_tuning_id(t, from)],
                        ));
                    }
                }
            }
        }
        if let Some(tr) = &s.transfer {
            let shots = tr.shots.clone().unwrap_or_else(|| PAPER_SHOTS.to_vec());
            for target in &tr.targets {
                for &init in &tr.inits {
                    let sources: Vec<Option<&String>> = match init {
                        InitMethod::Spot => tr.sources.iter().map(Some).collect(),
                        _ => vec![None],
                    };
                    for source in sources {
                        for &k in &shots {
                            for &o in &s.origins {
                                let multi = JobKind::MultiTask {
                                    tasks: tr.sources.clone(),
                                    origin: o,
                                };
                                let deps = match init {
                                    InitMethod::Random => vec![],
                                    InitMethod::Spot => {
                                        vec![prompt_tuning_id(source.map_or("", |s| s.as_str()), o)]
                                    }
                                    InitMethod::Multi => vec![multi.id()],
                                    InitMethod::TpvSum | InitMethod::LearnedCombination | InitMethod::Attempt => {
                                        tr.sources.iter().map(|t| prompt_tuning_id(t, o)).collect()
                                    }
                                };
                                jobs.push(Job::new(
                                    JobKind::Transfer {
                                        target: target.clone(),
                                        init,
                                        source: source.cloned(),
                                        shots: k,
                                        origin: o,
                                    },
                                    deps,
                                ));
                            }
                        }
                    }
                }
            }
        }
        jobs
    }

    /// A job's work for the progress line's time estimate, in scored examples: a training example
    /// (a forward and a backward pass) counts [`TRAIN_WORK`], a scored example 1. Split sizes are
    /// the configs' caps (1,000 where none is set), so the estimate needs no data loaded.
    pub fn work(&self, job: &Job) -> f64 {
        let base = self.plain_work(job);
        match job.kind {
            JobKind::Transfer {
                init: InitMethod::Attempt,
                ..
            } => ATTEMPT_WORK * base,
            JobKind::Transfer {
                init: InitMethod::LearnedCombination,
                shots,
                ..
            } if shots > 0 => {
                let steps = self.study.transfer.as_ref().map_or(0, |t| t.combination_steps);
                base + TRAIN_WORK * (steps * shots) as f64
            }
            _ => base,
        }
    }

    /// [`Self::work`] of a job whose rows share their prompt.
    fn plain_work(&self, job: &Job) -> f64 {
        let cap = |n: Option<usize>| n.unwrap_or(1000) as f64;
        if let Ok(Some(c)) = self.train_config(job, None) {
            let per_step = (c.optim.batch_size * c.optim.gradient_accumulation) as f64;
            let steps = match (c.optim.max_steps, c.optim.epochs) {
                (Some(s), _) => s as f64,
                (_, Some(e)) => e * cap(c.data.max_train) / per_step,
                _ => 1.0,
            };
            let validations = (steps / c.train.eval_every as f64).ceil();
            let baselines = match (c.train.baselines, c.train.zero_shot_baseline) {
                (false, _) => 0.0,
                (true, false) => 1.0,
                (true, true) => 2.0,
            };
            let tests = baselines + f64::from(u8::from(c.train.test));
            return TRAIN_WORK * steps * per_step
                + validations * cap(c.data.max_validation)
                + tests * cap(c.data.max_test);
        }
        match &job.kind {
            JobKind::Addition { tasks, .. } => {
                let grid = self
                    .study
                    .addition
                    .as_ref()
                    .and_then(|a| a.lambdas.as_ref().map(|l| l.len()))
                    .unwrap_or(21) as f64;
                // Every λ on every task's validation split, the chosen one on its test split.
                tasks
                    .iter()
                    .map(|t| {
                        self.task_config(t, job)
                            .map_or(0.0, |c| grid * cap(c.data.max_validation) + cap(c.data.max_test))
                    })
                    .sum()
            }
            JobKind::CrossOrigin { task, .. } | JobKind::Transfer { target: task, .. } => {
                self.task_config(task, job).map_or(0.0, |c| cap(c.data.max_test))
            }
            _ => 0.0,
        }
    }

    /// The directory of a job.
    pub fn job_dir(&self, job: &Job) -> PathBuf {
        self.study.output.join(&job.id)
    }

    /// True when the job's run file is complete (written last, with no checkpoint beside it) and
    /// reads; a damaged one is run again, one this build cannot read (a newer format, an I/O
    /// error) is left alone.
    pub fn finished(&self, job: &Job) -> bool {
        let dir = self.job_dir(job);
        matches!(
            train::run_state(&dir),
            train::RunState::Finished(_) | train::RunState::Unreadable(_)
        )
    }

    /// The base table with the data of `task` (registry name, or the study's per-task data).
    fn task_table(&self, task: &str) -> Result<toml::Table> {
        let mut t = self.base.clone();
        let data = t
            .entry("data")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .context("data is not a table")?;
        data.insert("train".into(), toml::Value::String(task.to_owned()));
        data.insert("name".into(), toml::Value::String(task.to_owned()));
        if let Some(extra) = self.study.data.get(task) {
            for (k, v) in extra {
                data.insert(k.clone(), v.clone());
            }
        }
        if let Some(o) = self.study.overrides.get(task) {
            apply_table(&mut t, o)?;
        }
        Ok(t)
    }

    /// Sets `prompt.init` to origin `o` of the base config's sample_vocab stream.
    fn set_origin(&self, t: &mut toml::Table, o: usize) -> Result<()> {
        config::set_value(t, "prompt.init.sample_vocab.index", o as i64)?;
        if !matches!(t.get("prompt").and_then(|p| p.get("init")), Some(toml::Value::Table(_))) {
            bail!("a study's prompt.init must be a sample_vocab table (origins are sampled by index)");
        }
        Ok(())
    }

    fn finish(&self, mut t: toml::Table, job: &Job, sets: &toml::Table) -> Result<Config> {
        apply_table(&mut t, sets)?;
        config::set_value(&mut t, "train.output", "")?;
        let mut c = config::from_table(t, &self.dir, &format!("{} (job {})", self.path.display(), job.id))?;
        c.train.output = self.job_dir(job);
        Ok(c)
    }

    /// The config of the evaluation data of a job's `task` (model, data, caps): a transfer job's
    /// target gets the transfer runs' overrides, so 0 shots and k shots are scored on the same test
    /// examples.
    pub fn task_config(&self, task: &str, job: &Job) -> Result<Config> {
        if let JobKind::Transfer { target, origin, .. } = &job.kind {
            return self.transfer_config(target, 0, *origin, job);
        }
        let mut t = self.task_table(task)?;
        self.set_origin(&mut t, job.origin())?;
        self.finish(t, job, &self.study.set)
    }

    fn transfer_config(&self, target: &str, shots: usize, origin: usize, job: &Job) -> Result<Config> {
        let tr = self.study.transfer.as_ref().context("no [study.transfer]")?;
        let mut t = self.task_table(target)?;
        self.set_origin(&mut t, origin)?;
        if shots > 0 {
            config::set_value(&mut t, "data.shots", shots as i64)?;
        }
        if tr.paper_recipe {
            for (key, value) in paper_few_shot(shots) {
                config::set_value(&mut t, key, value)?;
            }
        }
        let mut c = self.finish(t, job, &tr.set)?;
        if let JobKind::Transfer {
            init: InitMethod::Attempt,
            ..
        } = job.kind
        {
            // The study's own source prompts from this origin, frozen; the target prompt starts
            // from the origin itself.
            c.attempt = Some(config::AttemptSection {
                sources: tr
                    .sources
                    .iter()
                    .map(|s| crate::train::prompt_path(&self.output().join(prompt_tuning_id(s, origin))))
                    .collect(),
                temperature: None,
            });
        }
        Ok(c)
    }

    /// The training config of a job that trains (`init`: the init prompt file of a transfer run,
    /// required for those that start from another prompt); `None` for evaluation-only jobs.
    pub fn train_config(&self, job: &Job, init: Option<&Path>) -> Result<Option<Config>> {
        match &job.kind {
            JobKind::PromptTuning { task, origin } => {
                let mut t = self.task_table(task)?;
                self.set_origin(&mut t, *origin)?;
                // The bare model's zero-shot baseline is the same from every origin: scored once,
                // in the first origin's run.
                let mut c = self.finish(t, job, &self.study.set)?;
                if c.train.baselines && self.study.origins.first() != Some(origin) {
                    c.train.zero_shot_baseline = false;
                }
                Ok(Some(c))
            }
            JobKind::MultiTask { tasks, origin } => {
                let mut t = self.task_table(&tasks[0])?;
                self.set_origin(&mut t, *origin)?;
                // A registry task by name (read with this run's caps); a task with its own
                // `[study.data.TASK]` keys as a data table of its own.
                let also: Vec<toml::Value> = tasks[1..]
                    .iter()
                    .map(|s| {
                        if self.study.data.contains_key(s) {
                            let t = self.task_table(s)?;
                            let data = t.get("data").cloned().context("no data table")?;
                            Ok(data)
                        } else {
                            Ok(toml::Value::String(s.clone()))
                        }
                    })
                    .collect::<Result<_>>()?;
                if let Some(d) = t.get_mut("data").and_then(|d| d.as_table_mut()) {
                    d.insert("also".into(), toml::Value::Array(also));
                }
                let mut c = self.finish(t, job, &self.study.set)?;
                // The baselines belong to the single-task tables; a multi-task run is an init.
                c.train.baselines = false;
                Ok(Some(c))
            }
            JobKind::Transfer {
                target, shots, origin, ..
            } if *shots > 0 => {
                let mut c = self.transfer_config(target, *shots, *origin, job)?;
                if let Some(p) = init {
                    c.prompt.init = config::Init::File(p.to_path_buf());
                }
                Ok(Some(c))
            }
            _ => Ok(None),
        }
    }
}

/// A training example's work relative to a scored one in [`Study::work`] (forward + backward
/// against a forward pass; measured ≈ 4 on CPU for the demo's runs).
pub const TRAIN_WORK: f64 = 4.0;

/// An ATTEMPT job's work relative to the same job with one prompt: every row carries its own
/// mixed prompt, so no prefix is computed once for all rows (measured in the demo: 19 against 8 s
/// at 0 shots, 39 against 19 s at 16).
pub const ATTEMPT_WORK: f64 = 2.0;

/// The paper's few-shot recipe (docs/method.md §4) as overrides.
pub fn paper_few_shot(shots: usize) -> Vec<(&'static str, toml::Value)> {
    let batch = match shots {
        0..=25 => 2,
        26..=250 => 8,
        _ => 16,
    };
    vec![
        ("optim.max_steps", 1000.into()),
        ("optim.warmup_steps", 500.into()),
        ("optim.batch_size", toml::Value::Integer(batch)),
        ("data.max_validation", 250.into()),
        ("train.select", "loss".into()),
    ]
}

/// Applies a table of dotted-key overrides.
fn apply_table(t: &mut toml::Table, sets: &toml::Table) -> Result<()> {
    for (k, v) in flatten(sets, "") {
        config::set_value(t, &k, v)?;
    }
    Ok(())
}

fn flatten(t: &toml::Table, prefix: &str) -> Vec<(String, toml::Value)> {
    let mut out = Vec::new();
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(inner) if !is_value_table(inner) => out.extend(flatten(inner, &key)),
            _ => out.push((key, v.clone())),
        }
    }
    out
}

/// Tables that are values (an init's sample_vocab, a custom task) rather than nested keys.
fn is_value_table(t: &toml::Table) -> bool {
    t.contains_key("sample_vocab") || t.contains_key("template")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlsoTask;

    fn demo() -> Study {
        Study::from_str(
            crate::commands::demo::DEMO_STUDY,
            Path::new("configs/demo/study.toml"),
            &[],
        )
        .unwrap()
    }

    fn job(study: &Study, id: &str) -> Job {
        study.jobs().into_iter().find(|j| j.id == id).unwrap()
    }

    #[test]
    fn work_counts_training_and_scored_examples_from_the_caps() {
        let s = demo();
        let work = |id: &str| s.work(&job(&s, id));
        // 100 steps × 4 examples × 4, one validation of 50, test: tuned + origin + zero-shot.
        assert_eq!(work("prompt_tuning/rt_polarity/origin0"), 1600.0 + 50.0 + 300.0);
        // Later origins leave the zero-shot baseline to the first.
        assert_eq!(work("prompt_tuning/rt_polarity/origin1"), 1600.0 + 50.0 + 200.0);
        // Multi-task runs have no baselines.
        assert_eq!(work("multi_task/rt_polarity+uci_imdb/origin0"), 1600.0 + 50.0 + 100.0);
        // Three λ on both tasks' validation, the chosen one on both tests.
        assert_eq!(work("addition/rt_polarity+uci_imdb/origin0"), 3.0 * 2.0 * 50.0 + 200.0);
        assert_eq!(work("transfer/uci_amazon/random/0shot/origin0"), 100.0);
        assert_eq!(
            work("transfer/uci_amazon/tpv_sum/16shot/origin0"),
            4.0 * 8.0 * 4.0 + 32.0 + 100.0
        );
        // ATTEMPT: twice the work (no shared prefix); the learned combination: its steps over the
        // shots before the job trains.
        assert_eq!(work("transfer/uci_amazon/attempt/0shot/origin0"), 200.0);
        assert_eq!(
            work("transfer/uci_amazon/attempt/16shot/origin0"),
            2.0 * (4.0 * 8.0 * 4.0 + 32.0 + 100.0)
        );
        assert_eq!(work("transfer/uci_amazon/learned_combination/0shot/origin0"), 100.0);
        assert_eq!(
            work("transfer/uci_amazon/learned_combination/16shot/origin0"),
            4.0 * 8.0 * 4.0 + 32.0 + 100.0 + 4.0 * 10.0 * 16.0
        );
    }

    #[test]
    fn the_zero_shot_baseline_is_scored_in_the_first_origins_run_only() {
        let s = demo();
        let config = |id: &str| s.train_config(&job(&s, id), None).unwrap().unwrap();
        let first = config("prompt_tuning/uci_yelp/origin0");
        assert!(first.train.baselines && first.train.zero_shot_baseline);
        let later = config("prompt_tuning/uci_yelp/origin2");
        assert!(later.train.baselines && !later.train.zero_shot_baseline);
        assert!(!config("multi_task/rt_polarity+uci_imdb/origin1").train.baselines);
    }

    #[test]
    fn attempt_jobs_mix_the_studys_source_prompts_and_learning_settings_are_checked() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/study/study.toml");
        let s = Study::load(&path, &["study.transfer.inits=[\"attempt\"]".to_owned()]).unwrap();
        let jobs = s.jobs();
        let attempt = jobs
            .iter()
            .find(|j| matches!(j.kind, JobKind::Transfer { shots, .. } if shots > 0))
            .unwrap();
        let c = s.train_config(attempt, None).unwrap().unwrap();
        let sources = c.attempt.unwrap().sources;
        let tr = s.study.transfer.as_ref().unwrap();
        assert_eq!(sources.len(), tr.sources.len());
        for (dep, source) in attempt.deps.iter().zip(&sources) {
            assert_eq!(*source, crate::train::prompt_path(&s.output().join(dep)));
        }
        for bad in [
            "study.transfer.combination_steps=0",
            "study.transfer.combination_learning_rate=-1",
        ] {
            let err = Study::load(&path, &[bad.to_owned()]).unwrap_err();
            let key = bad.split('=').next().unwrap();
            assert!(format!("{err:#}").contains(key), "{err:#}");
        }
    }

    #[test]
    fn a_multi_task_run_reads_a_file_task_with_its_own_data_section() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/study/study.toml");
        let s = Study::load(&path, &["study.transfer.inits=[\"multi\"]".to_owned()]).unwrap();
        let multi = job(&s, "multi_task/a+b/origin0");
        let c = s.train_config(&multi, None).unwrap().unwrap();
        assert!(c.data.train.ends_with("a-train.jsonl"), "{}", c.data.train);
        let [AlsoTask::Data(b)] = c.data.also.as_slice() else {
            panic!("{:?}", c.data.also)
        };
        assert!(b.train.ends_with("b-train.jsonl"), "{}", b.train);
        assert_eq!(b.name.as_deref(), Some("b"));
        // A registry task stays a name (read with the run's own caps).
        let demo = demo();
        let c = demo
            .train_config(&job(&demo, "multi_task/rt_polarity+uci_imdb/origin0"), None)
            .unwrap()
            .unwrap();
        assert_eq!(c.data.also, vec![AlsoTask::Name("uci_imdb".into())]);
    }
}
