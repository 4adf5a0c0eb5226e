//! Aggregation of a study directory (whatever has finished): mean ± std over origins, performance
//! relative to single-task prompts, t-tests (Welch's by default, Student's as the paper's script
//! with `--test student`) with the Bonferroni correction, similarity
//! matrices across origins, and the list of missing runs; written as Markdown, CSV and JSON.
//!
//! Standard deviations are numpy's default (population, ddof = 0), as the reference code computes
//! them; the t-tests use sample variances.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tpv_shared::similarity::{self, AcrossOrigins, Labelled, Measure};
use tpv_shared::stats::{TTest, TestKind, bonferroni, mean, std};
use tpv_shared::study::{StudyFile, init_label};
use tpv_shared::{SoftPrompt, tasks};

use super::JobKind;
use crate::{io, train};

/// mean ± std over the origins that finished.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub values: Vec<f64>,
    pub mean: f64,
    pub std: f64,
    pub n: usize,
}

impl Summary {
    fn of(values: Vec<f64>) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        Self {
            mean: mean(&finite),
            std: std(&finite, 0),
            n: finite.len(),
            values,
        }
    }

    /// `85.4 ± 0.1` in percent for scores in [0, 1] (`85.4` for one value).
    fn pct(&self) -> String {
        if self.n == 0 {
            return "–".into();
        }
        if self.n == 1 {
            return format!("{:.1}", 100.0 * self.mean);
        }
        format!("{:.1} ± {:.1}", 100.0 * self.mean, 100.0 * self.std)
    }
}

/// A comparison with its Bonferroni-corrected p-value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Test {
    #[serde(flatten)]
    pub test: TTest,
    pub p_bonferroni: f64,
    /// Comparisons in the family.
    pub m: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptTuningRow {
    pub task: String,
    pub metric: String,
    pub test: Summary,
    pub validation: Summary,
    /// The untrained origin θ₀ on the same test examples (`train.baselines`).
    #[serde(default)]
    pub origin: Summary,
    /// The model with no prompt, the instruction alone (`train.baselines`).
    #[serde(default)]
    pub zero_shot: Summary,
    /// Test examples per run.
    #[serde(default)]
    pub test_examples: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdditionRow {
    pub tasks: Vec<String>,
    /// The task this row scores.
    pub task: String,
    pub metric: String,
    pub single: Summary,
    pub combined: Summary,
    /// combined / single mean, in percent.
    pub relative: f64,
    /// The λ chosen on validation, per origin.
    pub lambdas: Vec<Vec<f64>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CrossOriginRow {
    pub task: String,
    pub metric: String,
    pub original: Summary,
    pub cross: Summary,
    pub test: Test,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TransferRow {
    pub target: String,
    pub metric: String,
    pub shots: usize,
    /// random, spot_<source>, multi, tpv_sum.
    pub init: String,
    pub score: Summary,
    /// TPV-sum against this init at the same shots (absent for TPV-sum itself).
    pub vs_tpv_sum: Option<Test>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Similarity {
    pub prompts: AcrossOrigins,
    pub vectors: AcrossOrigins,
    pub prompts_flat: AcrossOrigins,
    pub vectors_flat: AcrossOrigins,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Aggregate {
    pub name: String,
    pub origins: Vec<usize>,
    pub jobs: usize,
    pub finished: usize,
    /// Jobs without a finished run file.
    pub missing: Vec<String>,
    /// Run files that exist but do not read (truncated, corrupted), with the reason; they are
    /// among `missing` and the next sweep runs them again.
    #[serde(default)]
    pub damaged: Vec<String>,
    pub prompt_tuning: Vec<PromptTuningRow>,
    pub addition: Vec<AdditionRow>,
    pub cross_origin: Vec<CrossOriginRow>,
    pub transfer: Vec<TransferRow>,
    pub similarity: Option<Similarity>,
    /// How the runs' test predictions were made (`generate`, `rank`), each once.
    #[serde(default)]
    pub scoring: Vec<String>,
    /// The t-test of the cross-origin and transfer comparisons.
    #[serde(default)]
    pub test: TestKind,
    /// The study's energy (the paper's impact statement), when its runs recorded it.
    #[serde(default)]
    pub energy: Option<EnergyStatement>,
    /// Each tuned task's training and validation curves over origins (mean ± std per step).
    #[serde(default)]
    pub curves: Vec<CurveBand>,
}

/// A curve of a task's prompt-tuning runs over origins: at every step all of them recorded, the
/// mean and std (numpy's ddof 0) of their values.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurveBand {
    pub task: String,
    /// `train_loss`, `valid_loss`, `valid_exact_match`, …
    pub curve: String,
    pub steps: Vec<f64>,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// Origins averaged.
    pub n: usize,
}

/// [`CurveBand`]s of every tuned task and curve its finished runs share.
fn curve_bands(f: &Finished) -> Vec<CurveBand> {
    let mut out = Vec::new();
    for task in &f.study.tasks {
        let runs: Vec<&SoftPrompt> = f
            .study
            .origins
            .iter()
            .filter_map(|o| f.runs.get(&super::prompt_tuning_id(task, *o)))
            .collect();
        let Some(first) = runs.first() else { continue };
        for name in first.curves.keys() {
            let curves: Vec<&tpv_shared::Curve> = runs.iter().filter_map(|r| r.curves.get(name)).collect();
            if curves.len() != runs.len() {
                continue;
            }
            let (mut steps, mut mean_v, mut std_v) = (Vec::new(), Vec::new(), Vec::new());
            for &step in &curves[0].steps {
                // The value of every run at this step (a run's curve may be cut short or sparse).
                let values: Vec<f64> = curves
                    .iter()
                    .filter_map(|c| {
                        let j = c.steps.iter().position(|&s| s == step)?;
                        c.values.get(j).map(|&v| f64::from(v))
                    })
                    .filter(|v| v.is_finite())
                    .collect();
                if values.len() == curves.len() {
                    steps.push(f64::from(step));
                    mean_v.push(mean(&values));
                    std_v.push(std(&values, 0));
                }
            }
            if !steps.is_empty() {
                out.push(CurveBand {
                    task: task.clone(),
                    curve: name.clone(),
                    steps,
                    mean: mean_v,
                    std: std_v,
                    n: curves.len(),
                });
            }
        }
    }
    out
}

/// The score names of a task: exact match (accuracy; not for regression tasks scored by
/// correlation), then its registry metrics.
fn task_metrics(task: &str) -> Vec<String> {
    let listed: Vec<String> = tasks::get(task)
        .map(|spec| spec.metrics.iter().map(|m| m.as_str().to_owned()).collect())
        .unwrap_or_default();
    let regression = listed.iter().any(|m| m == "pearson" || m == "spearman");
    let mut out = Vec::new();
    if !regression {
        out.push("exact_match".to_owned());
    }
    out.extend(listed.into_iter().filter(|m| m != "exact_match"));
    out
}

/// Reads a study directory and aggregates what has finished (Welch's t-tests).
pub fn aggregate(dir: &Path) -> Result<Aggregate> {
    aggregate_with(dir, TestKind::default(), DEFAULT_GRID_INTENSITY)
}

/// The grid's carbon intensity the paper's statement used (kgCO₂eq per kWh).
pub const DEFAULT_GRID_INTENSITY: f64 = 0.432;

/// The study's energy, summed over its finished training runs (what each run file recorded).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnergyStatement {
    /// Device hours by device kind (`cpu`, `cuda`).
    pub device_hours: BTreeMap<String, f64>,
    pub kwh: f64,
    /// kgCO₂eq at `grid_intensity`.
    pub kg_co2: f64,
    pub grid_intensity: f64,
    /// Runs whose energy was measured (RAPL, sampled GPU power), and estimated; each distinct
    /// method once.
    pub measured_runs: usize,
    pub estimated_runs: usize,
    pub methods: Vec<String>,
}

fn energy_of(runs: &BTreeMap<String, SoftPrompt>, grid_intensity: f64) -> Option<EnergyStatement> {
    let mut e = EnergyStatement {
        device_hours: BTreeMap::new(),
        kwh: 0.0,
        kg_co2: 0.0,
        grid_intensity,
        measured_runs: 0,
        estimated_runs: 0,
        methods: Vec::new(),
    };
    for run in runs.values() {
        let Some(config) = run.meta.config.as_ref() else {
            continue;
        };
        let Some(energy) = config.get("energy") else { continue };
        let device = config
            .pointer("/config/model/device")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("cpu");
        let kind = device.split(':').next().unwrap_or(device).to_owned();
        *e.device_hours.entry(kind).or_default() += energy["device_hours"].as_f64().unwrap_or(0.0);
        e.kwh += energy["kwh"].as_f64().unwrap_or(0.0);
        let method = energy["method"].as_str().unwrap_or("").to_owned();
        if !method.starts_with("estimate") {
            e.measured_runs += 1;
        } else {
            e.estimated_runs += 1;
        }
        if !e.methods.contains(&method) {
            e.methods.push(method);
        }
    }
    e.kg_co2 = e.kwh * grid_intensity;
    (e.measured_runs + e.estimated_runs > 0).then_some(e)
}

/// [`aggregate`] with the t-test to use (`tpv aggregate --test student|welch`).
pub fn aggregate_with(dir: &Path, test: TestKind, grid_intensity: f64) -> Result<Aggregate> {
    let manifest_path = dir.join("study.json");
    let study = StudyFile::from_json(&io::read_bytes(&manifest_path)?)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let mut runs: BTreeMap<String, SoftPrompt> = BTreeMap::new();
    let mut missing = Vec::new();
    let mut damaged = Vec::new();
    for job in &study.jobs {
        // Finished or not by the one test (`train::run_state`); a run file that does not parse
        // is listed (and re-run by the next sweep), not fatal.
        match train::run_state(&dir.join(&job.id)) {
            train::RunState::Finished(run) => {
                runs.insert(job.id.clone(), *run);
            }
            train::RunState::Unfinished => missing.push(job.id.clone()),
            train::RunState::Damaged(e) => {
                damaged.push(format!("{}: {e}", job.id));
                missing.push(job.id.clone());
            }
            train::RunState::Unreadable(e) => bail!("{}: {e}", job.id),
        }
    }
    let f = Finished { study, runs, test };
    let similarity = similarity_of(&f.study, &f.runs)?;
    let energy = energy_of(&f.runs, grid_intensity);
    let scoring = dedup(
        f.runs
            .values()
            .filter_map(|r| r.meta.config.as_ref()?.get("scoring")?.as_str().map(str::to_owned))
            .collect(),
    );
    Ok(Aggregate {
        scoring,
        prompt_tuning: prompt_tuning_rows(&f),
        addition: addition_rows(&f),
        cross_origin: cross_origin_rows(&f),
        transfer: transfer_rows(&f),
        similarity,
        energy,
        curves: curve_bands(&f),
        test: f.test,
        name: f.study.name.clone(),
        origins: f.study.origins.clone(),
        jobs: f.study.jobs.len(),
        finished: f.runs.len(),
        missing,
        damaged,
    })
}

/// A study file and its finished runs by job id.
struct Finished {
    study: StudyFile,
    runs: BTreeMap<String, SoftPrompt>,
    test: TestKind,
}

impl Finished {
    /// A run's metric (NaN when the run or the metric is missing).
    fn metric(&self, id: &str, key: &str) -> f64 {
        self.runs
            .get(id)
            .and_then(|r| r.meta.metrics.get(key))
            .copied()
            .unwrap_or(f64::NAN)
    }
}

/// Prompt tuning: every tuned task × its metrics, over origins.
fn prompt_tuning_rows(f: &Finished) -> Vec<PromptTuningRow> {
    let origins = &f.study.origins;
    let mut prompt_tuning = Vec::new();
    for task in &f.study.tasks {
        for metric in task_metrics(task) {
            let ids: Vec<String> = origins.iter().map(|o| super::prompt_tuning_id(task, *o)).collect();
            let of = |key: String| Summary::of(ids.iter().map(|id| f.metric(id, &key)).collect());
            prompt_tuning.push(PromptTuningRow {
                task: task.clone(),
                origin: of(format!("origin_test_{metric}")),
                zero_shot: of(format!("zero_shot_test_{metric}")),
                test_examples: ids
                    .iter()
                    .filter_map(|id| f.runs.get(id))
                    .filter_map(|r| r.meta.config.as_ref()?.pointer("/splits/test")?.as_u64())
                    .max()
                    .unwrap_or(0) as usize,
                test: of(format!("test_{metric}")),
                validation: Summary::of(
                    ids.iter()
                        .map(|id| f.metric(id, &format!("validation_{metric}")))
                        .collect(),
                ),
                metric,
            });
        }
    }
    prompt_tuning
}

/// Addition: per set and task, the combined prompt's score against the single-task prompt's.
fn addition_rows(f: &Finished) -> Vec<AdditionRow> {
    let (origins, jobs) = (&f.study.origins, &f.study.jobs);
    let mut addition = Vec::new();
    let mut sets: Vec<Vec<String>> = Vec::new();
    for j in jobs {
        if let JobKind::Addition { tasks, .. } = &j.kind
            && !sets.contains(tasks)
        {
            sets.push(tasks.clone());
        }
    }
    for set in &sets {
        let ids: Vec<String> = origins
            .iter()
            .map(|&o| {
                JobKind::Addition {
                    tasks: set.clone(),
                    origin: o,
                }
                .id()
            })
            .collect();
        let lambdas: Vec<Vec<f64>> = ids
            .iter()
            .filter_map(|id| f.runs.get(id))
            .map(|r| {
                r.meta
                    .metrics
                    .iter()
                    .filter(|(k, _)| k.starts_with("lambda"))
                    .map(|(_, v)| *v)
                    .collect()
            })
            .collect();
        for task in set {
            for metric in task_metrics(task) {
                let single = Summary::of(
                    origins
                        .iter()
                        .map(|o| f.metric(&super::prompt_tuning_id(task, *o), &format!("test_{metric}")))
                        .collect(),
                );
                let combined = Summary::of(
                    ids.iter()
                        .map(|id| f.metric(id, &format!("{task}:test_{metric}")))
                        .collect(),
                );
                addition.push(AdditionRow {
                    tasks: set.clone(),
                    task: task.clone(),
                    relative: 100.0 * combined.mean / single.mean,
                    single,
                    combined,
                    metric,
                    lambdas: lambdas.clone(),
                });
            }
        }
    }
    addition
}

/// Cross-origin: per task, the original prompts against θ₀ of one origin + τ of another.
fn cross_origin_rows(f: &Finished) -> Vec<CrossOriginRow> {
    let (origins, jobs) = (&f.study.origins, &f.study.jobs);
    let mut cross_origin = Vec::new();
    let mut cross_tasks: Vec<String> = Vec::new();
    for j in jobs {
        if let JobKind::CrossOrigin { task, .. } = &j.kind
            && !cross_tasks.contains(task)
        {
            cross_tasks.push(task.clone());
        }
    }
    for task in &cross_tasks {
        for metric in task_metrics(task) {
            let key = format!("test_{metric}");
            let original = Summary::of(
                origins
                    .iter()
                    .map(|o| f.metric(&super::prompt_tuning_id(task, *o), &key))
                    .collect(),
            );
            let cross = Summary::of(
                jobs.iter()
                    .filter(|j| matches!(&j.kind, JobKind::CrossOrigin { task: t, .. } if t == task))
                    .map(|j| f.metric(&j.id, &key))
                    .collect(),
            );
            let test = f.test.run(&finite(&original.values), &finite(&cross.values));
            cross_origin.push(CrossOriginRow {
                task: task.clone(),
                metric,
                original,
                cross,
                test: Test {
                    test,
                    p_bonferroni: f64::NAN,
                    m: 0,
                },
            });
        }
    }
    correct(cross_origin.iter_mut().map(|r| &mut r.test));
    cross_origin
}

/// Transfer: per target, metric, shots and init; TPV-sum against every other init (Bonferroni
/// over each metric's comparisons).
fn transfer_rows(f: &Finished) -> Vec<TransferRow> {
    let jobs = &f.study.jobs;
    let mut transfer = Vec::new();
    let mut keys: Vec<(String, usize, String)> = Vec::new();
    for j in jobs {
        if let JobKind::Transfer {
            target,
            init,
            source,
            shots,
            ..
        } = &j.kind
        {
            let k = (target.clone(), *shots, init_label(init.as_str(), source.as_deref()));
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    let values_of = |target: &str, shots: usize, init: &str, metric: &str| -> Vec<f64> {
        jobs.iter()
            .filter(|j| match &j.kind {
                JobKind::Transfer {
                    target: t,
                    init: i,
                    source,
                    shots: k,
                    ..
                } => t == target && *k == shots && init_label(i.as_str(), source.as_deref()) == init,
                _ => false,
            })
            .map(|j| f.metric(&j.id, &format!("test_{metric}")))
            .collect()
    };
    for (target, shots, init) in &keys {
        for metric in task_metrics(target) {
            let score = Summary::of(values_of(target, *shots, init, &metric));
            let vs_tpv_sum =
                (init != "tpv_sum" && keys.contains(&(target.clone(), *shots, "tpv_sum".into()))).then(|| {
                    let sum = values_of(target, *shots, "tpv_sum", &metric);
                    Test {
                        test: f.test.run(&finite(&sum), &finite(&score.values)),
                        p_bonferroni: f64::NAN,
                        m: 0,
                    }
                });
            transfer.push(TransferRow {
                target: target.clone(),
                metric,
                shots: *shots,
                init: init.clone(),
                score,
                vs_tpv_sum,
            });
        }
    }
    // One family per metric name.
    let metric_names: Vec<String> = transfer.iter().map(|r| r.metric.clone()).collect();
    for m in dedup(metric_names) {
        correct(
            transfer
                .iter_mut()
                .filter(|r| r.metric == m)
                .filter_map(|r| r.vs_tpv_sum.as_mut()),
        );
    }
    transfer
}

fn finite(xs: &[f64]) -> Vec<f64> {
    xs.iter().copied().filter(|v| v.is_finite()).collect()
}

fn dedup(mut xs: Vec<String>) -> Vec<String> {
    xs.sort();
    xs.dedup();
    xs
}

/// Bonferroni over a family: m = the tests with a p-value.
fn correct<'a>(tests: impl Iterator<Item = &'a mut Test>) {
    let mut tests: Vec<&mut Test> = tests.collect();
    let m = tests.iter().filter(|t| t.test.p.is_finite()).count();
    for t in &mut tests {
        t.m = m;
        t.p_bonferroni = bonferroni(t.test.p, m);
    }
}

/// Similarity of the tuned prompts and their vectors across origins (tasks with runs only).
fn similarity_of(manifest: &StudyFile, runs: &BTreeMap<String, SoftPrompt>) -> Result<Option<Similarity>> {
    let mut prompts = Vec::new();
    let mut vectors = Vec::new();
    for task in &manifest.tasks {
        for o in &manifest.origins {
            if let Some(run) = runs.get(&super::prompt_tuning_id(task, *o)) {
                prompts.push((task.clone(), format!("origin{o}"), run.values.clone()));
                vectors.push((task.clone(), format!("origin{o}"), run.vector_values()?));
            }
        }
    }
    if prompts.is_empty() {
        return Ok(None);
    }
    fn labelled(xs: &[(String, String, tpv_shared::PromptTensor)]) -> Vec<Labelled<'_>> {
        xs.iter()
            .map(|(t, o, v)| Labelled {
                task: t.clone(),
                origin: o.clone(),
                values: v,
            })
            .collect()
    }
    let (p, v) = (labelled(&prompts), labelled(&vectors));
    Ok(Some(Similarity {
        prompts: similarity::across_origins(&p, Measure::CosineMean)?,
        vectors: similarity::across_origins(&v, Measure::CosineMean)?,
        prompts_flat: similarity::across_origins(&p, Measure::CosineFlat)?,
        vectors_flat: similarity::across_origins(&v, Measure::CosineFlat)?,
    }))
}

fn p_cell(t: &Test) -> String {
    if !t.test.p.is_finite() {
        return "–".into();
    }
    let star = if t.p_bonferroni < 0.05 { " *" } else { "" };
    format!("{:.3} ({:.3}){star}", t.test.p, t.p_bonferroni)
}

/// A name (task, study, job) as Markdown text: every ASCII punctuation character that Markdown
/// or HTML could read as syntax (`|` splits a table's cells, `<` opens a tag, `*` bolds) is
/// backslash-escaped, as CommonMark reads it, and line breaks become spaces. The results page
/// reads the escapes back (`report::blocks`).
pub fn md(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '\\' | '|' | '*' | '_' | '`' | '<' | '>' | '[' | ']' | '#' | '&' | '!' | '~' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn md_all(names: &[String], sep: &str) -> String {
    names.iter().map(|n| md(n)).collect::<Vec<_>>().join(sep)
}

fn matrix_md(out: &mut String, title: &str, m: &AcrossOrigins) {
    let _ = writeln!(out, "\n**{title}**\n");
    let _ = writeln!(out, "| | {} |", md_all(&m.tasks, " | "));
    let _ = writeln!(out, "|---|{}", "---|".repeat(m.tasks.len()));
    for (i, row) in m.matrix.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .map(|c| c.map_or("–".into(), |v| format!("{v:.3}")))
            .collect();
        let _ = writeln!(out, "| {} | {} |", md(&m.tasks[i]), cells.join(" | "));
    }
}

/// The impact statement: device hours by kind, kWh, kgCO₂eq, and how the figures were obtained.
fn energy_md(s: &mut String, e: &EnergyStatement) {
    // Device kinds and methods come from the run files: escaped like names.
    let hours: Vec<String> = e
        .device_hours
        .iter()
        .map(|(k, h)| format!("{} {h:.2}", md(k)))
        .collect();
    let total: f64 = e.device_hours.values().sum();
    let _ = writeln!(
        s,
        "\n## Energy (the study's finished training runs)\n\n{total:.2} device hours ({}); {:.3} kWh; {:.3} kgCO₂eq at {} kgCO₂eq/kWh. Measured (RAPL, sampled GPU power) for {} runs, estimated for {}: {}.",
        hours.join(", "),
        e.kwh,
        e.kg_co2,
        e.grid_intensity,
        e.measured_runs,
        e.estimated_runs,
        md_all(&e.methods, "; ")
    );
}

/// A prompt-tuning row's gain over the better baseline: the mean's, and the smallest of any run
/// (each run against its own origin and the zero-shot score).
fn gain_cell(r: &PromptTuningRow) -> String {
    let best = [&r.origin, &r.zero_shot]
        .iter()
        .filter(|b| b.n > 0)
        .map(|b| b.mean)
        .fold(f64::NEG_INFINITY, f64::max);
    // Each run against its own origin and the zero-shot score (one value: the
    // bare model is the same from every origin).
    let zero_shot = r.zero_shot.values.iter().copied().find(|v| v.is_finite());
    let run_gains: Vec<f64> = r
        .test
        .values
        .iter()
        .zip(&r.origin.values)
        .filter_map(|(t, o)| {
            let base = [Some(*o), zero_shot]
                .into_iter()
                .flatten()
                .filter(|b| b.is_finite())
                .fold(f64::NEG_INFINITY, f64::max);
            (t.is_finite() && base.is_finite()).then(|| t - base)
        })
        .collect();
    let smallest = run_gains.iter().copied().fold(f64::INFINITY, f64::min);
    match (r.test.n > 0 && best.is_finite(), run_gains.len()) {
        (false, _) => "–".into(),
        (true, 0 | 1) => format!("{:+.1}", 100.0 * (r.test.mean - best)),
        (true, _) => format!("{:+.1} (runs ≥ {:+.1})", 100.0 * (r.test.mean - best), 100.0 * smallest),
    }
}

impl Aggregate {
    /// The tables as Markdown (scores in percent).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Study {}\n", md(&self.name));
        let _ = writeln!(
            s,
            "{} of {} runs finished; origins {:?}. Scores in percent, mean ± std over origins (std: numpy's default, ddof 0).",
            self.finished, self.jobs, self.origins
        );
        if self.scoring.iter().any(|x| x == "rank") {
            let _ = writeln!(
                s,
                "\nPredictions by rank classification: each of the task's labels is scored (its tokens and the end token, one forward pass), the most likely one is the prediction."
            );
        }
        self.prompt_tuning_md(&mut s);
        self.comparisons_md(&mut s);
        if let Some(e) = &self.energy {
            energy_md(&mut s, e);
        }
        if let Some(sim) = &self.similarity {
            let _ = writeln!(
                s,
                "\n## Similarity across origins (cosine of token-means, identical pairs omitted)"
            );
            matrix_md(&mut s, "Task prompts", &sim.prompts);
            matrix_md(&mut s, "Task prompt vectors", &sim.vectors);
            matrix_md(&mut s, "Task prompts (flattened cosine)", &sim.prompts_flat);
            matrix_md(&mut s, "Task prompt vectors (flattened cosine)", &sim.vectors_flat);
        }
        if !self.missing.is_empty() {
            let _ = writeln!(s, "\n## Missing runs ({})\n", self.missing.len());
            for m in &self.missing {
                let _ = writeln!(s, "- {}", md(m));
            }
        }
        if !self.damaged.is_empty() {
            let _ = writeln!(
                s,
                "\n## Damaged run files ({}; `tpv sweep` runs them again)\n",
                self.damaged.len()
            );
            for m in &self.damaged {
                let _ = writeln!(s, "- {}", md(m));
            }
        }
        s
    }

    fn prompt_tuning_md(&self, s: &mut String) {
        if !self.prompt_tuning.is_empty() {
            let baselines = self.prompt_tuning.iter().any(|r| r.origin.n > 0 || r.zero_shot.n > 0);
            let (head, rule) = if baselines {
                (
                    " untrained origin | zero-shot (instruction only) | gain over the better baseline (points; smallest of a run) |",
                    "---|---|---|",
                )
            } else {
                ("", "")
            };
            let _ = writeln!(
                s,
                "\n## Prompt tuning (test)\n\n| task | metric | tuned prompt |{head} validation | origins | test examples |\n|---|---|---|{rule}---|---|---|"
            );
            for r in &self.prompt_tuning {
                let base = if baselines {
                    let gain = gain_cell(r);
                    format!(" {} | {} | {gain} |", r.origin.pct(), r.zero_shot.pct())
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |{base} {} | {} | {} |",
                    md(&r.task),
                    r.metric,
                    r.test.pct(),
                    r.validation.pct(),
                    r.test.n,
                    r.test_examples
                );
            }
        }
    }

    /// Addition, cross-origin and transfer.
    fn comparisons_md(&self, s: &mut String) {
        if !self.addition.is_empty() {
            let _ = writeln!(
                s,
                "\n## Addition of task prompt vectors (test; λ chosen on validation)\n\n| tasks | task | metric | single-task | combined | relative | λ per origin |\n|---|---|---|---|---|---|---|"
            );
            for r in &self.addition {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {:?} |",
                    md_all(&r.tasks, " + "),
                    md(&r.task),
                    r.metric,
                    r.single.pct(),
                    r.combined.pct(),
                    // A single-task score of 0 has no ratio.
                    if r.relative.is_finite() {
                        format!("{:.1}%", r.relative)
                    } else {
                        "–".into()
                    },
                    r.lambdas
                );
            }
        }
        if !self.cross_origin.is_empty() {
            let _ = writeln!(
                s,
                "\n## Cross-origin (θ₀ of one origin + τ of another; test)\n\n| task | metric | original | cross-origin | {} p (Bonferroni) |\n|---|---|---|---|---|",
                self.test.title()
            );
            for r in &self.cross_origin {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    md(&r.task),
                    r.metric,
                    r.original.pct(),
                    r.cross.pct(),
                    p_cell(&r.test)
                );
            }
        }
        if !self.transfer.is_empty() {
            let _ = writeln!(
                s,
                "\n## Transfer to target tasks (test, by shots and init)\n\n| target | metric | shots | init | score | n | TPV-sum vs this: {} p (Bonferroni) |\n|---|---|---|---|---|---|---|",
                self.test.title()
            );
            for r in &self.transfer {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    md(&r.target),
                    r.metric,
                    r.shots,
                    md(&r.init),
                    r.score.pct(),
                    r.score.n,
                    r.vs_tpv_sum.as_ref().map_or("".into(), p_cell)
                );
            }
        }
    }

    /// One row per number: table, keys, statistic, value (long format).
    pub fn csv(&self) -> Result<String> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["table", "task", "metric", "shots", "method", "statistic", "value"])?;
        let mut put = |table: &str, task: &str, metric: &str, shots: &str, method: &str, stat: &str, v: f64| {
            w.write_record([table, task, metric, shots, method, stat, &format!("{v}")])
        };
        for r in &self.prompt_tuning {
            for (stat, v) in [
                ("test_mean", r.test.mean),
                ("test_std", r.test.std),
                ("validation_mean", r.validation.mean),
                ("n", r.test.n as f64),
                ("origin_mean", r.origin.mean),
                ("origin_std", r.origin.std),
                ("zero_shot_mean", r.zero_shot.mean),
                ("test_examples", r.test_examples as f64),
            ] {
                put("prompt_tuning", &r.task, &r.metric, "", "single", stat, v)?;
            }
        }
        for r in &self.addition {
            let set = r.tasks.join("+");
            for (stat, v) in [
                ("single_mean", r.single.mean),
                ("single_std", r.single.std),
                ("combined_mean", r.combined.mean),
                ("combined_std", r.combined.std),
                ("relative_pct", r.relative),
            ] {
                put("addition", &r.task, &r.metric, "", &set, stat, v)?;
            }
        }
        // The p-value columns name their test (`welch_p`, `student_p`).
        let (p, p_bonf) = (format!("{}_p", self.test), format!("{}_p_bonferroni", self.test));
        for r in &self.cross_origin {
            for (stat, v) in [
                ("original_mean", r.original.mean),
                ("original_std", r.original.std),
                ("cross_mean", r.cross.mean),
                ("cross_std", r.cross.std),
                (p.as_str(), r.test.test.p),
                (p_bonf.as_str(), r.test.p_bonferroni),
            ] {
                put("cross_origin", &r.task, &r.metric, "", "cross", stat, v)?;
            }
        }
        for r in &self.transfer {
            let shots = r.shots.to_string();
            put("transfer", &r.target, &r.metric, &shots, &r.init, "mean", r.score.mean)?;
            put("transfer", &r.target, &r.metric, &shots, &r.init, "std", r.score.std)?;
            put("transfer", &r.target, &r.metric, &shots, &r.init, "n", r.score.n as f64)?;
            if let Some(t) = &r.vs_tpv_sum {
                put(
                    "transfer",
                    &r.target,
                    &r.metric,
                    &shots,
                    &r.init,
                    &format!("tpv_sum_{p}"),
                    t.test.p,
                )?;
                put(
                    "transfer",
                    &r.target,
                    &r.metric,
                    &shots,
                    &r.init,
                    &format!("tpv_sum_{p_bonf}"),
                    t.p_bonferroni,
                )?;
            }
        }
        if let Some(sim) = &self.similarity {
            for (name, m) in [("prompts", &sim.prompts), ("vectors", &sim.vectors)] {
                for (i, row) in m.matrix.iter().enumerate() {
                    for (j, v) in row.iter().enumerate() {
                        if let Some(v) = v {
                            put(
                                &format!("similarity_{name}"),
                                &m.tasks[i],
                                "cosine_mean",
                                "",
                                &m.tasks[j],
                                "mean_across_origins",
                                *v,
                            )?;
                        }
                    }
                }
            }
        }
        Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("{e}"))?)?)
    }

    /// Writes tables.md, tables.csv, tables.json and tables.tex into `dir`; returns their paths.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut files = vec![
            (dir.join("tables.md"), self.markdown().into_bytes()),
            (dir.join("tables.csv"), self.csv()?.into_bytes()),
            (dir.join("tables.json"), serde_json::to_vec_pretty(self)?),
            (dir.join("tables.tex"), self.latex().into_bytes()),
        ];
        files.extend(self.figures(&dir.join("figures")));
        if files.len() > 4 {
            std::fs::create_dir_all(dir.join("figures")).with_context(|| format!("creating {}", dir.display()))?;
        }
        for (path, bytes) in &files {
            io::write_atomic(path, bytes)?;
        }
        Ok(files.into_iter().map(|(p, _)| p).collect())
    }

    /// Per tuned task, its training and validation losses over steps: one line and ± std band
    /// over origins per curve (`curves_TASK.svg`).
    fn curve_figures(&self, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut tasks: Vec<&str> = self.curves.iter().map(|c| c.task.as_str()).collect();
        tasks.dedup();
        tasks
            .into_iter()
            .filter_map(|task| {
                let series: Vec<tpv_shared::figures::Series> = self
                    .curves
                    .iter()
                    .filter(|c| c.task == task && c.curve.ends_with("loss"))
                    .map(|c| tpv_shared::figures::Series {
                        name: format!("{} (n = {})", c.curve, c.n),
                        points: c.steps.iter().copied().zip(c.mean.iter().copied()).collect(),
                        band: Some(c.std.clone()),
                    })
                    .collect();
                if series.is_empty() {
                    return None;
                }
                let title = format!("{}: {task}, losses over steps (mean ± std over origins)", self.name);
                let file = dir.join(format!("curves_{task}.svg"));
                Some((
                    file,
                    tpv_shared::figures::line_chart_svg(&title, "step", &series).into_bytes(),
                ))
            })
            .collect()
    }

    /// The few-shot figures: per target, its first metric's test score against shots, one line
    /// and ± std band per init (SVG, `tpv_shared::figures::line_chart_svg`).
    fn transfer_figures(&self, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut targets: Vec<&str> = Vec::new();
        for r in &self.transfer {
            if !targets.contains(&r.target.as_str()) {
                targets.push(&r.target);
            }
        }
        targets
            .into_iter()
            .filter_map(|target| {
                let metric = &self.transfer.iter().find(|r| r.target == target)?.metric;
                let mut series: Vec<tpv_shared::figures::Series> = Vec::new();
                for r in self
                    .transfer
                    .iter()
                    .filter(|r| r.target == target && &r.metric == metric)
                {
                    let i = match series.iter().position(|s| s.name == r.init) {
                        Some(i) => i,
                        None => {
                            series.push(tpv_shared::figures::Series {
                                name: r.init.clone(),
                                points: Vec::new(),
                                band: Some(Vec::new()),
                            });
                            series.len() - 1
                        }
                    };
                    series[i].points.push((r.shots as f64, r.score.mean));
                    if let Some(b) = series[i].band.as_mut() {
                        b.push(r.score.std);
                    }
                }
                for s in &mut series {
                    let mut order: Vec<usize> = (0..s.points.len()).collect();
                    order.sort_by(|&a, &b| s.points[a].0.total_cmp(&s.points[b].0));
                    s.points = order.iter().map(|&k| s.points[k]).collect();
                    s.band = s.band.as_ref().map(|b| order.iter().map(|&k| b[k]).collect());
                }
                let title = format!(
                    "{}: few-shot transfer to {target}, test {metric} (mean ± std over origins)",
                    self.name
                );
                let svg = tpv_shared::figures::line_chart_svg(&title, "shots", &series);
                Some((dir.join(format!("transfer_{target}.svg")), svg.into_bytes()))
            })
            .collect()
    }

    /// The similarity figures (SVG, `tpv_shared::figures`): per compared kind (task prompt
    /// vectors, task prompts) and measure, the tasks × tasks map and the grid of origins × origins
    /// maps of every task pair.
    fn figures(&self, dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = self.transfer_figures(dir);
        out.extend(self.curve_figures(dir));
        let Some(sim) = &self.similarity else { return out };
        for (name, what, a) in [
            ("vectors", "task prompt vectors", &sim.vectors),
            ("prompts", "task prompts", &sim.prompts),
            ("vectors_flat", "task prompt vectors", &sim.vectors_flat),
            ("prompts_flat", "task prompts", &sim.prompts_flat),
        ] {
            let m = a.measure.as_str();
            let tasks = format!("{}: {m} of {what}, tasks × tasks (mean over origin pairs)", self.name);
            let pairs = format!("{}: {m} of {what}, origins × origins for each task pair", self.name);
            out.push((
                dir.join(format!("similarity_{name}.svg")),
                tpv_shared::figures::tasks_svg(a, &tasks).into_bytes(),
            ));
            out.push((
                dir.join(format!("similarity_{name}_pairs.svg")),
                tpv_shared::figures::pairs_svg(a, &pairs).into_bytes(),
            ));
        }
        out
    }
}
