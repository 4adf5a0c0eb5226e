//! `tpv train`: prompt tuning of a frozen model, as the paper does it (docs/method.md §4).
//!
//! The sample stream is deterministic: sample k of the run is example `k mod n` of epoch `k / n`
//! (in a seeded shuffled order per epoch when `data.shuffle`), an optimizer step takes
//! `batch_size × gradient_accumulation` consecutive samples. With the checkpointed AdamW state and
//! dropout generator, a resumed run therefore repeats the uninterrupted one exactly.

pub mod checkpoint;
pub mod combination;
pub mod engine;
pub mod stop;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde_json::json;
use tpv_shared::eval::EncodeOptions;
use tpv_shared::merge::SplitMix64;
use tpv_shared::origins::{Sampling, origin_token_ids};
use tpv_shared::tasks::{Record, TaskSpec};
use tpv_shared::{Curve, Layout, ModelRef, OriginRef, PromptKind, PromptTensor, SoftPrompt, TaskType};

use self::checkpoint::{Best, Checkpoint};
use self::engine::{
    AttemptSetup, Encoded, Engine, EvalOptions, EvalResult, State, StepError, Trainable, train_step_with,
};
use crate::config::{Config, Init, Select};
use crate::models::{self, LoadedModel};
use crate::optim::{AdamW, Schedule};
use crate::{data, io};

/// Options of one training invocation besides the config.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Continue from the checkpoint if there is one; skip a finished run.
    pub resume: bool,
    /// Start over even if the output directory has a run.
    pub overwrite: bool,
    /// Test hook: abort the process (as a kill would) right after this step.
    pub abort_after_step: Option<u64>,
}

/// Where a run writes.
pub fn prompt_path(output: &Path) -> PathBuf {
    output.join("prompt.safetensors")
}
pub fn checkpoint_path(output: &Path) -> PathBuf {
    output.join("checkpoint.safetensors")
}

/// Where a run directory stands: finished (its run file reads and no checkpoint is beside it),
/// not finished, damaged (a run file that does not parse: truncated, corrupted; it is trained or
/// computed again, and replaced), or unreadable for a reason that is no fault of the file (an I/O
/// error, a newer format version): never replaced.
#[derive(Debug, Clone)]
pub enum RunState {
    /// The run file, read.
    Finished(Box<tpv_shared::SoftPrompt>),
    Unfinished,
    Damaged(String),
    Unreadable(String),
}

impl RunState {
    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Finished(_))
    }
}

/// The one test of "finished" (training, studies, aggregation and reports use it).
pub fn run_state(output: &Path) -> RunState {
    let prompt = prompt_path(output);
    if !prompt.exists() || checkpoint_path(output).exists() {
        return RunState::Unfinished;
    }
    match io::load_prompt(&prompt) {
        Ok(prompt) => RunState::Finished(Box::new(prompt)),
        Err(e) if is_damage(&e) => RunState::Damaged(format!("{e:#}")),
        Err(e) => RunState::Unreadable(format!("{e:#}")),
    }
}

/// Whether a run file's read error is the file's own fault (it does not parse), as opposed to an
/// I/O error or a format version newer than this build.
pub fn is_damage(e: &anyhow::Error) -> bool {
    !e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some()
            || matches!(
                c.downcast_ref::<tpv_shared::Error>(),
                Some(tpv_shared::Error::NewerFormat { .. })
            )
    })
}

/// A resolved config without the keys that only decide what is scored after training (baselines,
/// the test pass) or how memory is spent (gradient checkpointing: the same gradient): a
/// checkpoint resumes when everything that shapes training is the same, so a study whose later
/// version scores other baselines, or a run restarted with checkpointing after running out of
/// memory, still resumes.
fn training_part(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(t) = c.get_mut("train").and_then(serde_json::Value::as_object_mut) {
        for key in ["baselines", "zero_shot_baseline", "test", "gradient_checkpointing"] {
            t.remove(key);
        }
    }
    c
}

/// How a config's records become model inputs (chat template, system turn, loss, truncation).
pub fn encode_options(config: &Config) -> EncodeOptions {
    EncodeOptions {
        chat: config.model.chat_template,
        loss_on: config.train.loss,
        max_source_tokens: config.data.max_source_tokens,
        system: config.model.system_prompt.clone(),
    }
}

/// Tokenizes records for the model family.
pub fn encode(loaded: &LoadedModel, task: &TaskSpec, records: &[Record], opts: &EncodeOptions) -> Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let e = loaded
            .encode(task, rec, opts)
            .with_context(|| format!("tokenizing example {}", i + 1))?;
        out.push(e);
    }
    Ok(out)
}

/// The evaluation options of a config (`with_loss`: generation also computes the loss).
pub fn eval_options(config: &Config, with_loss: bool) -> EvalOptions {
    EvalOptions {
        scoring: config.train.scoring,
        batch_size: config.train.eval_batch_size,
        max_new: config.train.max_new_tokens,
        with_loss,
    }
}

/// The origin θ₀ of a run: from a run file, or sampled from the model's vocabulary embeddings.
pub fn origin(config: &Config, loaded: &LoadedModel, d: usize) -> Result<(PromptTensor, Option<OriginRef>)> {
    let r = config.prompt.virtual_tokens;
    match &config.prompt.init {
        Init::File(path) => {
            let p = load_run_prompt("prompt.init", path, (r, d))?;
            let origin_ref = p.meta.origin.clone();
            Ok((p.values, origin_ref))
        }
        Init::Sampled(t) => {
            let s = &t.sample_vocab;
            let embeddings = loaded.model.embeddings();
            let vocab = embeddings.dim(0)?;
            let sampling = match s.below {
                Some(below) => Sampling::VocabBelow { below, draw: 200 },
                None => Sampling::SampleVocab,
            };
            let ids = origin_token_ids(sampling, s.index + 1, r, s.seed, vocab)?;
            let ids = &ids[s.index];
            let index = Tensor::from_slice(ids, ids.len(), embeddings.device())?;
            let rows: Vec<f32> = embeddings
                .index_select(&index, 0)?
                .to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1()?;
            Ok((
                PromptTensor::new(r, d, rows)?,
                Some(OriginRef {
                    id: format!("origin{}", s.index),
                    seed: Some(s.seed),
                    index: Some(s.index as u32),
                    sampling: Some(sampling.describe()),
                }),
            ))
        }
    }
}

/// Joins the tasks of a multi-task run split by split, alternating between tasks (example i of
/// every task, then example i+1, …) so that batches mix them; one task is left as it is.
fn interleave<T: Clone>(parts: Vec<[Vec<T>; 3]>) -> [Vec<T>; 3] {
    let mut out: [Vec<T>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (k, split) in out.iter_mut().enumerate() {
        let lists: Vec<&Vec<T>> = parts.iter().map(|p| &p[k]).collect();
        let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        for i in 0..longest {
            split.extend(lists.iter().filter_map(|l| l.get(i)).cloned());
        }
    }
    out
}

/// Total optimizer steps and warmup steps of a config for `n_train` examples.
pub fn step_counts(config: &Config, n_train: usize) -> (u64, u64) {
    let o = &config.optim;
    let per_step = (o.batch_size * o.gradient_accumulation) as f64;
    let total = match (o.max_steps, o.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * n_train as f64) / per_step).ceil().max(1.0) as u64,
        (None, None) => 1,
    };
    let warmup = match (o.warmup_steps, o.warmup_ratio) {
        (Some(w), _) => w,
        (None, Some(r)) => (r * total as f64).ceil() as u64,
        (None, None) => 0,
    };
    (total, warmup)
}

/// The order of the training examples in `epoch`.
fn epoch_order(n: usize, epoch: u64, shuffle: bool, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::new(seed ^ (epoch + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.shuffle(&mut order);
    }
    order
}

/// Indices of the micro-batches of optimizer step `step`.
pub fn step_batches(
    n: usize,
    step: u64,
    batch: usize,
    accumulation: usize,
    shuffle: bool,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut cached: Option<(u64, Vec<usize>)> = None;
    let first = step as usize * batch * accumulation;
    (0..accumulation)
        .map(|a| {
            (0..batch)
                .map(|j| {
                    let k = first + a * batch + j;
                    let epoch = (k / n) as u64;
                    if cached.as_ref().map(|c| c.0) != Some(epoch) {
                        cached = Some((epoch, epoch_order(n, epoch, shuffle, seed)));
                    }
                    cached.as_ref().map_or(0, |c| c.1[k % n])
                })
                .collect()
        })
        .collect()
}

fn score(select: Select, task: &TaskSpec, r: &EvalResult) -> f64 {
    match select {
        Select::Loss => -r.loss,
        Select::Metric => task.primary_score(&r.metrics),
    }
}

fn push(curves: &mut BTreeMap<String, Curve>, name: &str, step: u64, value: f64) {
    let c = curves.entry(name.to_owned()).or_default();
    c.steps.push(step as f32);
    c.values.push(value as f32);
}

/// Trains one prompt as `config` says; returns the run file written. The parts: the output's
/// guards ([`check_output`]), the examples ([`Examples`]), the progress a checkpoint holds
/// ([`Progress`]), one optimizer step ([`train_step`]), validation with best-prompt selection and
/// early stopping ([`Trainer::validate`]), the test pass with baselines ([`Trainer::test_metrics`])
/// and the run file ([`Trainer::run_file`]).
pub fn run(config: &Config, opts: &RunOptions) -> Result<PathBuf> {
    let out_dir = &config.train.output;
    let prompt_file = prompt_path(out_dir);
    let ckpt_file = checkpoint_path(out_dir);
    if !check_output(config, opts)? {
        return Ok(prompt_file);
    }
    let device = models::device(&config.model.device)?;
    let dtype = models::dtype(&config.model.dtype)?;
    let loaded = models::load_cached(&config.model.path, dtype, &device)
        .with_context(|| format!("loading model {}", config.model.path))?;
    let (r, d) = (config.prompt.virtual_tokens, loaded.model.hidden_size());
    let max_positions = loaded.model.max_positions();
    if r >= max_positions {
        bail!("prompt.virtual_tokens is {r}: it leaves no room for the input in the model's {max_positions} positions");
    }
    if config.train.gradient_checkpointing && loaded.model.task_type() == TaskType::Seq2SeqLm {
        bail!(
            "train.gradient_checkpointing is implemented for decoder-only models; {} is an encoder-decoder ({}, whose activations fit without it): remove the setting",
            config.model.path,
            loaded.model.family().to_uppercase()
        );
    }
    let all = data::load_all(&config.data).context("loading data")?;
    let t = Trainer {
        config,
        resolved: serde_json::to_value(config)?,
        splits: data::describe(&all),
        loaded: &loaded,
        device: device.clone(),
        shape: (r, d),
        attempt: attempt_module(config, (r, d))?
            .map(|m| AttemptSetup::new(m, (r, d), &device))
            .transpose()?,
    };
    let mut examples = Examples::new(&t, &all)?;
    let (total, warmup) = step_counts(config, examples.train.len());
    let schedule = Schedule {
        kind: config.optim.scheduler,
        base_lr: config.optim.learning_rate,
        warmup,
        total,
    };
    tracing::info!(
        task = %t.splits.task.name, train = examples.train.len(), validation = examples.validation.len(),
        test = examples.test.len(), total, warmup, fingerprint = %t.splits.fingerprint, "data ready"
    );
    // This process's share of the run (a resumed run measures from its resume).
    let meter = crate::energy::Meter::start(&config.model.device);
    let (theta0, origin_ref) = origin(config, &loaded, d)?;
    let engine = Engine {
        model: &loaded.model,
        codec: Some(&loaded.codec),
        eos: loaded.eos.clone(),
        dropout: config.train.dropout.unwrap_or_else(|| loaded.model.config_dropout()),
        device: device.clone(),
        checkpointing: config.train.gradient_checkpointing,
    };
    let mut p = if opts.resume && ckpt_file.exists() {
        let p = Progress::resume(&ckpt_file, &t)?;
        tracing::info!("resuming {} at step {}", out_dir.display(), p.state.step);
        p
    } else {
        Progress::start(
            config,
            match &t.attempt {
                Some(a) => a.initial(theta0.as_slice()),
                None => theta0.as_slice().to_vec(),
            },
        )
    };
    // Live curves: `tensorboard --logdir` on the run's (or the study's) directory.
    p.events = Some(crate::events::EventWriter::create(out_dir)?);

    train_loop(&t, &engine, &mut examples, &mut p, (&schedule, &ckpt_file), opts)?;

    // The kept prompt: the best on validation, or the last one without validation data.
    let (params, kept_step, valid_metrics) = match &p.best {
        Some(b) => (b.params.clone(), b.step, b.metrics.clone()),
        None => (p.state.params.clone(), p.state.step, BTreeMap::new()),
    };
    let mut metrics: BTreeMap<String, f64> = valid_metrics
        .iter()
        .map(|(k, v)| (format!("validation_{k}"), *v))
        .collect();
    let (test, attention) = t.test_metrics(&examples.test, &params, theta0.as_slice())?;
    metrics.extend(test);
    metrics.insert("best_step".into(), kept_step as f64);
    metrics.insert("steps".into(), p.state.step as f64);
    // Not among the metrics (those are the run's results, the same when it is repeated).
    let energy = meter.finish();
    let counts = [examples.train.len(), examples.validation.len(), examples.test.len()];
    let mut extra = json!({
        "splits": { "train": counts[0], "validation": counts[1], "test": counts[2] },
        "total_steps": total,
        "warmup_steps": warmup,
        "energy": { "device_hours": energy.device_hours, "kwh": energy.kwh, "method": energy.method },
    });
    if let (Some(a), Some(att)) = (&t.attempt, &attention) {
        extra["attempt"] = json!({ "test_attention": attention_json(&a.module, att) });
    }
    let prompt = t.run_file(params, theta0, origin_ref, metrics, p.curves, extra)?;
    io::write_run(&prompt_file, &prompt).with_context(|| format!("writing {}", prompt_file.display()))?;
    if ckpt_file.exists() {
        std::fs::remove_file(&ckpt_file).with_context(|| format!("removing {}", ckpt_file.display()))?;
    }
    Ok(prompt_file)
}

/// The optimizer steps from where `p` stands to the end (or early stopping): validation every
/// `eval_every` steps, a checkpoint every `save_every`.
fn train_loop(
    t: &Trainer<'_>,
    engine: &Engine<'_>,
    examples: &mut Examples<'_>,
    p: &mut Progress,
    (schedule, ckpt_file): (&Schedule, &Path),
    opts: &RunOptions,
) -> Result<()> {
    let (config, (r, d), total) = (t.config, t.shape, schedule.total);
    let bar = progress_bar(total, p.state.step);
    // SIGTERM/SIGINT (where installed) stop the loop between steps, with a checkpoint.
    let _armed = stop::arm();
    while p.state.step < total {
        let idx = step_batches(
            examples.train.len(),
            p.state.step,
            config.optim.batch_size,
            config.optim.gradient_accumulation,
            config.data.shuffle,
            config.train.seed,
        );
        let micro = examples.train_batches(&idx)?;
        let trainable = match &t.attempt {
            Some(a) => Trainable::Attempt(a),
            None => Trainable::Prompt((r, d)),
        };
        let stats = match train_step_with(
            engine,
            &mut p.state,
            &micro,
            schedule,
            config.optim.max_grad_norm,
            &trainable,
        ) {
            Ok(s) => s,
            Err(e @ (StepError::NonFiniteLoss { .. } | StepError::NonFiniteGrad { .. })) => {
                bar.abandon();
                bail!(
                    "training stopped: {e}; lower optim.learning_rate or set optim.max_grad_norm; {}",
                    last_checkpoint(ckpt_file)
                );
            }
            Err(e) => return Err(e).context(format!("training step {}", p.state.step)),
        };
        let step = p.state.step;
        p.record("train_loss", step, f64::from(stats.loss))?;
        p.record("lr", step, stats.lr)?;
        p.event("grad_norm", step, stats.grad_norm)?;
        bar.set_position(step);
        bar.set_message(format!("loss {:.4} lr {:.3e}", stats.loss, stats.lr));
        tracing::debug!(
            step,
            loss = stats.loss,
            lr = stats.lr,
            grad_norm = stats.grad_norm,
            "step"
        );

        let due = step.is_multiple_of(config.train.eval_every) || step == total;
        let stop = due && !examples.validation.is_empty() && t.validate(p, &examples.validation, &bar)?;
        // At the last step too: the test pass that follows may be long, and a run stopped in it
        // (a scheduler's time limit) then resumes with the test pass alone.
        if (step.is_multiple_of(config.save_every()) || step == total) && !stop {
            checkpoint::write(ckpt_file, &p.checkpoint(t))
                .with_context(|| format!("writing checkpoint {}", ckpt_file.display()))?;
        }
        if opts.abort_after_step == Some(step) {
            // Test hook: die as a killed process would, without cleanup.
            std::process::abort();
        }
        if let Some(signal) = stop::requested().filter(|_| step < total && !stop) {
            if !step.is_multiple_of(config.save_every()) {
                checkpoint::write(ckpt_file, &p.checkpoint(t))
                    .with_context(|| format!("writing checkpoint {}", ckpt_file.display()))?;
            }
            bar.abandon();
            return Err(stop::Interrupted { signal, step }.into());
        }
        if stop {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The output directory's guards before any work: an unfinished run needs --resume or
/// --overwrite, a finished one is kept (--resume: nothing to do, `false`) or replaced only at the
/// end (--overwrite), a damaged one is trained again; the directory must take files.
fn check_output(config: &Config, opts: &RunOptions) -> Result<bool> {
    let out_dir = &config.train.output;
    let (prompt_file, ckpt_file) = (prompt_path(out_dir), checkpoint_path(out_dir));
    if opts.overwrite {
        // A finished result stays until its replacement is written (atomically, at the end): a
        // kill or a full disk meanwhile loses nothing. Only a checkpoint of an earlier run goes.
        if ckpt_file.exists() {
            std::fs::remove_file(&ckpt_file).with_context(|| format!("removing {}", ckpt_file.display()))?;
        }
    } else {
        if ckpt_file.exists() && !opts.resume {
            bail!(
                "{} has an unfinished run ({}); pass --resume to continue it or --overwrite to start over",
                out_dir.display(),
                ckpt_file.display()
            );
        }
        match run_state(out_dir) {
            RunState::Finished(_) if opts.resume => {
                tracing::info!("{} is finished; nothing to do", prompt_file.display());
                return Ok(false);
            }
            RunState::Finished(_) => bail!(
                "{} already exists; pass --resume to keep it or --overwrite to train again",
                prompt_file.display()
            ),
            RunState::Damaged(e) => {
                eprintln!("{} does not read ({e}); training it again", prompt_file.display());
            }
            RunState::Unreadable(e) => bail!("{e}; the run is left as it is"),
            RunState::Unfinished => {}
        }
    }
    // Before any work: the output directory must take files (else a whole run trains for
    // nothing when `save_every ≥ max_steps`).
    io::check_writable(out_dir)?;
    io::remove_stale_temp_files(out_dir);
    Ok(true)
}

/// What a failed run keeps, for its error message.
fn last_checkpoint(ckpt_file: &Path) -> String {
    if ckpt_file.exists() {
        format!(
            "the last good checkpoint is {} (step {})",
            ckpt_file.display(),
            checkpoint::read(ckpt_file).map(|c| c.step).unwrap_or(0)
        )
    } else {
        "no checkpoint was written yet".to_owned()
    }
}

/// What a run's parts share: the config (and its resolved JSON, which checkpoints and run files
/// record), the data's description, the model, and the prompt's shape (R, d).
struct Trainer<'a> {
    config: &'a Config,
    resolved: serde_json::Value,
    splits: data::DataInfo,
    loaded: &'a LoadedModel,
    device: candle_core::Device,
    shape: (usize, usize),
    /// An ATTEMPT run's sources and module (`[attempt]`): the parameters are its target prompt
    /// and module.
    attempt: Option<AttemptSetup>,
}

impl Trainer<'_> {
    fn theta(&self, params: &[f32]) -> Result<Tensor> {
        Ok(Tensor::from_slice(params, self.shape, &self.device)?)
    }

    /// How many values the trained parameters have.
    fn param_count(&self) -> usize {
        self.attempt
            .as_ref()
            .map_or(self.shape.0 * self.shape.1, AttemptSetup::param_count)
    }

    /// The parameters scored on `examples` (a prompt, or ATTEMPT's prompt per input; then also
    /// the mean attention).
    fn evaluate(
        &self,
        params: &[f32],
        examples: &[Encoded],
        opts: EvalOptions,
    ) -> Result<(EvalResult, Option<Vec<f64>>)> {
        match &self.attempt {
            Some(a) => {
                let (target, module) = a.split(params)?;
                let (res, attention) =
                    engine::evaluate_attempt(self.loaded, &target, &module, examples, &self.splits.task, opts)?;
                Ok((res, Some(attention)))
            }
            None => {
                let res = engine::evaluate(self.loaded, &[&self.theta(params)?], examples, &self.splits.task, opts)?;
                Ok((res.into_iter().next().context("no evaluation result")?, None))
            }
        }
    }

    /// Scores the current prompt on the validation split: curves, the best prompt so far, early
    /// stopping (returns whether to stop).
    fn validate(&self, p: &mut Progress, validation: &[Encoded], bar: &indicatif::ProgressBar) -> Result<bool> {
        let (config, step) = (self.config, p.state.step);
        let (res, _) = self
            .evaluate(
                &p.state.params,
                validation,
                eval_options(config, config.train.eval_loss || config.train.select == Select::Loss),
            )
            .with_context(|| format!("evaluating on the validation split at step {step}"))?;
        if res.loss.is_finite() {
            p.record("valid_loss", step, res.loss)?;
        }
        for (k, v) in &res.metrics {
            p.record(&format!("valid_{k}"), step, *v)?;
        }
        let s = score(config.train.select, &self.splits.task, &res);
        let improved = p.best.as_ref().is_none_or(|b| s > b.score || b.score.is_nan());
        let loss = if res.loss.is_finite() {
            format!("loss {:.4}, ", res.loss)
        } else {
            String::new()
        };
        let best = if improved { " (best)" } else { "" };
        say(
            bar,
            format!("step {step}: validation {loss}{}{best}", fmt_metrics(&res.metrics)),
        );
        if improved {
            p.best = Some(Best {
                step,
                score: s,
                params: p.state.params.clone(),
                metrics: res.metrics,
            });
            p.stale = 0;
            return Ok(false);
        }
        p.stale += 1;
        let stop = config.train.early_stopping_patience.is_some_and(|n| p.stale >= n);
        if stop {
            let stale = p.stale;
            say(
                bar,
                format!("early stopping at step {step}: no improvement in {stale} evaluations"),
            );
        }
        Ok(stop)
    }

    /// The kept prompt on test, and with `baselines` the untrained origin θ₀ and the model with no
    /// prompt at all (zero-shot, instruction only): one pass over rows that mix the three. Keys
    /// as the run file stores them (`test_…`, `origin_test_…`, `zero_shot_test_…`).
    fn test_metrics(&self, test: &[Encoded], kept: &[f32], theta0: &[f32]) -> Result<TestScores> {
        let train = &self.config.train;
        let mut metrics = BTreeMap::new();
        let mut attention = None;
        let mut scored: Vec<(&str, Tensor)> = Vec::new();
        if train.test && !test.is_empty() {
            if self.attempt.is_some() {
                // A prompt per input: its own pass; the baselines below are plain prompts.
                let (res, att) = self
                    .evaluate(kept, test, eval_options(self.config, train.eval_loss))
                    .context("evaluating the kept ATTEMPT module on the test split")?;
                insert_metrics(&mut metrics, "", &res);
                attention = att;
            } else {
                scored.push(("", self.theta(kept)?));
            }
        }
        if train.baselines && !test.is_empty() {
            scored.push(("origin_", self.theta(theta0)?));
            if train.zero_shot_baseline {
                scored.push((
                    "zero_shot_",
                    Tensor::zeros((0, self.shape.1), DType::F32, &self.device)?,
                ));
            }
        }
        if scored.is_empty() {
            return Ok((metrics, attention));
        }
        let prompts: Vec<&Tensor> = scored.iter().map(|(_, t)| t).collect();
        let results = engine::evaluate(
            self.loaded,
            &prompts,
            test,
            &self.splits.task,
            eval_options(self.config, train.eval_loss),
        )
        .context("evaluating the kept prompt (and baselines) on the test split")?;
        for ((name, _), res) in scored.iter().zip(results) {
            insert_metrics(&mut metrics, name, &res);
        }
        Ok((metrics, attention))
    }

    /// The run file of the kept parameters (a task prompt, or an ATTEMPT run: its target prompt
    /// and module): its origin, model, tasks, layout, metrics, curves and the resolved config
    /// with `extra` (split sizes, step counts).
    fn run_file(
        &self,
        params: Vec<f32>,
        theta0: PromptTensor,
        origin_ref: Option<OriginRef>,
        metrics: BTreeMap<String, f64>,
        curves: BTreeMap<String, Curve>,
        extra: serde_json::Value,
    ) -> Result<SoftPrompt> {
        let mut prompt = match &self.attempt {
            Some(a) => {
                let (target, module) = a.split(&params)?;
                let mut p = SoftPrompt::new(PromptKind::Attempt, target, Some(theta0))?;
                p.attempt = Some(Box::new(module));
                p
            }
            None => {
                let values = PromptTensor::new(self.shape.0, self.shape.1, params)?;
                SoftPrompt::new(PromptKind::TaskPrompt, values, Some(theta0))?
            }
        };
        let task_type = self.loaded.model.task_type();
        prompt.meta.model = Some(ModelRef {
            id: self.loaded.id.clone(),
            revision: None,
        });
        prompt.meta.tasks = self.splits.tasks.clone();
        prompt.meta.origin = origin_ref;
        prompt.meta.layout = Layout {
            task_type: Some(task_type),
            num_transformer_submodules: task_type.default_submodules(),
        };
        prompt.meta.metrics = metrics;
        let mut config = json!({
            "config": self.resolved,
            "chat_template": self.config.model.chat_template,
            "scoring": self.config.train.scoring.as_str(),
        });
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        prompt.meta.config = Some(config);
        prompt.meta.data_fingerprint = Some(self.splits.fingerprint.clone());
        prompt.curves = curves;
        Ok(prompt)
    }
}

/// A run's examples: validation and test tokenized (and checked against the model's positions)
/// up front; training examples when the sample stream first reaches them (a short run on a large
/// dataset tokenizes the examples it uses, not the whole set). Records of several tasks are
/// interleaved split by split.
struct Examples<'a> {
    loaded: &'a LoadedModel,
    all: &'a [data::Splits],
    opts: EncodeOptions,
    rows: usize,
    train_records: Vec<(usize, &'a Record)>,
    train: Vec<Option<Encoded>>,
    validation: Vec<Encoded>,
    test: Vec<Encoded>,
}

impl<'a> Examples<'a> {
    fn new(t: &Trainer<'a>, all: &'a [data::Splits]) -> Result<Self> {
        let records: Vec<[Vec<(usize, &Record)>; 3]> = all
            .iter()
            .enumerate()
            .map(|(i, s)| {
                [&s.train, &s.validation, &s.test].map(|recs| recs.iter().map(|r| (i, r)).collect::<Vec<_>>())
            })
            .collect();
        let [train_records, valid, test] = interleave(records);
        let mut ex = Self {
            loaded: t.loaded,
            all,
            opts: encode_options(t.config),
            rows: t.shape.0,
            train: vec![None; train_records.len()],
            train_records,
            validation: Vec::new(),
            test: Vec::new(),
        };
        ex.validation = valid.iter().map(|&p| ex.encode(p)).collect::<Result<_>>()?;
        ex.test = test.iter().map(|&p| ex.encode(p)).collect::<Result<_>>()?;
        // Every scored example must fit the model with the prompt in front (and the tokens to
        // generate), before any training: not a failure at the end of a long run.
        let new_tokens = match t.config.train.scoring {
            tpv_shared::eval::Scoring::Generate => t.config.train.max_new_tokens,
            tpv_shared::eval::Scoring::Rank => 0,
        };
        for (split, examples) in [("validation", &ex.validation), ("test", &ex.test)] {
            for (i, e) in examples.iter().enumerate() {
                e.check_fits(&t.loaded.model, ex.rows, new_tokens)
                    .with_context(|| format!("{split} example {}", i + 1))?;
            }
        }
        Ok(ex)
    }

    fn encode(&self, (t, rec): (usize, &Record)) -> Result<Encoded> {
        let task = &self.all[t].task;
        encode(self.loaded, task, std::slice::from_ref(rec), &self.opts)
            .with_context(|| format!("task {}", task.name))?
            .pop()
            .context("an example was lost in tokenization")
    }

    /// The micro-batches of one step (indexes into the training split), tokenized on first use.
    fn train_batches(&mut self, idx: &[Vec<usize>]) -> Result<Vec<Vec<&Encoded>>> {
        for &i in idx.iter().flatten() {
            if self.train[i].is_none() {
                let e = self
                    .encode(self.train_records[i])
                    .with_context(|| format!("tokenizing training example {}", i + 1))?;
                e.check_fits(&self.loaded.model, self.rows, 0)
                    .with_context(|| format!("training example {}", i + 1))?;
                self.train[i] = Some(e);
            }
        }
        Ok(idx
            .iter()
            .map(|mb| mb.iter().filter_map(|&i| self.train[i].as_ref()).collect())
            .collect())
    }
}

/// Where a run stands: the optimizer's state and what the loop keeps (the best prompt on
/// validation, the curves, evaluations without improvement) — what a checkpoint holds besides the
/// config and the data fingerprint.
struct Progress {
    state: State,
    best: Option<Best>,
    curves: BTreeMap<String, Curve>,
    stale: u32,
    /// The live copy of the curves for TensorBoard (not in checkpoints: a resumed run starts a
    /// new event file).
    events: Option<crate::events::EventWriter>,
}

impl Progress {
    /// A point of curve `name`, also written to the event file.
    fn record(&mut self, name: &str, step: u64, value: f64) -> Result<()> {
        push(&mut self.curves, name, step, value);
        self.event(name, step, value)
    }

    /// A value for TensorBoard only (the gradient norm).
    fn event(&mut self, name: &str, step: u64, value: f64) -> Result<()> {
        match &mut self.events {
            Some(w) => w.scalar(name, step, value),
            None => Ok(()),
        }
    }

    fn start(config: &Config, params: Vec<f32>) -> Self {
        let mut adam = AdamW::new(params.len(), config.optim.weight_decay);
        adam.beta1 = config.optim.beta1;
        adam.beta2 = config.optim.beta2;
        adam.eps = config.optim.eps;
        Self {
            state: State {
                step: 0,
                params,
                adam,
                rng: config.train.seed,
            },
            best: None,
            curves: BTreeMap::new(),
            stale: 0,
            events: None,
        }
    }

    /// The progress a checkpoint holds, refused when what shapes training, the data or the
    /// prompt's size changed since it was written.
    fn resume(path: &Path, t: &Trainer<'_>) -> Result<Self> {
        let c = checkpoint::read(path)?;
        if training_part(&c.config) != training_part(&t.resolved) {
            bail!(
                "{} was written by a different configuration; resume with the same config or pass --overwrite",
                path.display()
            );
        }
        if c.fingerprint != t.splits.fingerprint {
            bail!(
                "{}: the data changed since the checkpoint (fingerprint {} → {})",
                path.display(),
                c.fingerprint,
                t.splits.fingerprint
            );
        }
        let n = t.param_count();
        if c.params.len() != n {
            bail!(
                "{}: the checkpoint's parameters have {} values, expected {n}",
                path.display(),
                c.params.len()
            );
        }
        let mut p = Self::start(t.config, c.params);
        p.state.step = c.step;
        p.state.adam.m = c.adam_m;
        p.state.adam.v = c.adam_v;
        p.state.adam.t = c.adam_t;
        p.state.rng = c.rng;
        p.best = c.best;
        p.curves = c.curves;
        p.stale = c.evals_without_improvement;
        Ok(p)
    }

    fn checkpoint(&self, t: &Trainer<'_>) -> Checkpoint {
        Checkpoint {
            step: self.state.step,
            params: self.state.params.clone(),
            adam_m: self.state.adam.m.clone(),
            adam_v: self.state.adam.v.clone(),
            adam_t: self.state.adam.t,
            rng: self.state.rng,
            best: self.best.clone(),
            evals_without_improvement: self.stale,
            curves: self.curves.clone(),
            config: t.resolved.clone(),
            fingerprint: t.splits.fingerprint.clone(),
        }
    }
}

/// The test metrics of a run, and an ATTEMPT run's mean attention on the test split.
type TestScores = (BTreeMap<String, f64>, Option<Vec<f64>>);

/// `{prefix}test_loss` and `{prefix}test_METRIC` of a test result.
fn insert_metrics(metrics: &mut BTreeMap<String, f64>, prefix: &str, res: &EvalResult) {
    if res.loss.is_finite() {
        metrics.insert(format!("{prefix}test_loss"), res.loss);
    }
    for (k, v) in &res.metrics {
        metrics.insert(format!("{prefix}test_{k}"), *v);
    }
}

/// The seed of an ATTEMPT module's initial weights: the run's seed, on a stream of its own.
const ATTEMPT_SEED: u64 = 0x4154_5445_4d50_5400;

/// The prompt of the run file `path` that the config's `key` names: a prompt (not a vector or an
/// ATTEMPT run) of the run's shape.
fn load_run_prompt(key: &str, path: &Path, (r, d): (usize, usize)) -> Result<SoftPrompt> {
    let p = io::load_prompt(path).with_context(|| key.to_owned())?;
    if !p.kind().is_prompt() {
        bail!("{key}: {} is a {}, not a prompt", path.display(), p.kind());
    }
    if p.shape() != [r, d] {
        bail!(
            "{key}: {} is {}×{}, the run needs {r}×{d} (virtual_tokens × hidden size)",
            path.display(),
            p.shape()[0],
            p.shape()[1]
        );
    }
    Ok(p)
}

/// The fresh ATTEMPT module of `[attempt]` over its sources (the module a run of this config
/// starts from), or `None`.
pub fn attempt_module(config: &Config, (r, d): (usize, usize)) -> Result<Option<tpv_shared::attempt::Module>> {
    let Some(a) = &config.attempt else {
        return Ok(None);
    };
    if a.sources.is_empty() {
        bail!("attempt.sources is empty: ATTEMPT mixes at least one source prompt");
    }
    let mut values = Vec::new();
    let mut labels = Vec::new();
    for path in &a.sources {
        let p = load_run_prompt("attempt.sources", path, (r, d))?;
        // Labels name the attention's weights: two sources with one label are told apart.
        let mut label = p.label();
        if labels.contains(&label) {
            label = format!("{label} ({})", labels.len() + 1);
        }
        labels.push(label);
        values.push(p.values);
    }
    let refs: Vec<&PromptTensor> = values.iter().collect();
    let mut module = tpv_shared::attempt::Module::init(&refs, labels, config.train.seed ^ ATTEMPT_SEED)?;
    if let Some(temperature) = a.temperature {
        module.temperature = temperature;
    }
    module
        .validate(r, d)
        .context("attempt.temperature must be a positive number")?;
    Ok(Some(module))
}

/// ATTEMPT's mean attention as `{source label: weight, "target": weight}`.
pub fn attention_json(module: &tpv_shared::attempt::Module, attention: &[f64]) -> serde_json::Value {
    let labels = module.attention_labels();
    serde_json::Value::Object(
        labels
            .into_iter()
            .zip(attention)
            .map(|(l, a)| (l.to_owned(), json!(a)))
            .collect(),
    )
}

fn fmt_metrics(m: &BTreeMap<String, f64>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {:.2}%", 100.0 * v))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A line above the progress bar, or on stderr when the bar is hidden (not a terminal).
fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// Set in the environment of a study's parallel jobs: no progress bar (validation lines still
/// print), so that the slots' bars do not overwrite each other.
pub const NO_PROGRESS_BAR: &str = "TPV_NO_PROGRESS_BAR";

fn progress_bar(total: u64, at: u64) -> indicatif::ProgressBar {
    let target = if std::env::var_os(NO_PROGRESS_BAR).is_some() {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:30} {pos}/{len} steps  {msg}  {per_sec}  [{elapsed_precise} < {eta_precise}]",
    ) {
        bar.set_style(style);
    }
    bar.set_position(at);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_stream_wraps_epochs_and_is_deterministic() {
        let b = step_batches(5, 1, 2, 2, false, 1);
        assert_eq!(b, vec![vec![4, 0], vec![1, 2]]);
        let s1 = step_batches(5, 3, 2, 1, true, 7);
        let s2 = step_batches(5, 3, 2, 1, true, 7);
        assert_eq!(s1, s2);
    }
}
