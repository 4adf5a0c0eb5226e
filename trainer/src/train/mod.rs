//! `tpv train`: prompt tuning of a frozen model, as the paper does it (docs/method.md §4).
//!
//! The sample stream is deterministic: sample k of the run is example `k mod n` of epoch `k / n`
//! (in a seeded shuffled order per epoch when `data.shuffle`), an optimizer step takes
//! `batch_size × gradient_accumulation` consecutive samples. With the checkpointed AdamW state and
//! dropout generator, a resumed run therefore repeats the uninterrupted one exactly.
//!
//! This module holds the run itself ([`run`], its loop, the `Trainer` and the output's guards);
//! its parts: the examples and the sample stream (`batches`), the progress a checkpoint holds and
//! its display (`progress`), where a run directory stands (`run_state`) and the starting
//! parameters, origin and ATTEMPT module (`attempt`).

mod attempt;
mod batches;
pub mod checkpoint;
pub mod combination;
pub mod engine;
mod progress;
mod run_state;
pub mod step;
pub mod stop;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde_json::json;
use tpv_shared::tasks::TaskSpec;
use tpv_shared::{Curve, Layout, ModelRef, OriginRef, PromptKind, PromptTensor, SoftPrompt, TaskType};

pub use self::attempt::{attempt_module, attention_json, origin};
use self::batches::Examples;
pub use self::batches::{encode, encode_options, step_batches, step_counts};
use self::checkpoint::Best;
use self::engine::{AttemptSetup, Encoded, Engine, EvalOptions, EvalResult, StepError, Trainable};
pub use self::progress::NO_PROGRESS_BAR;
use self::progress::{Progress, fmt_metrics, progress_bar, say};
use self::run_state::last_checkpoint;
pub use self::run_state::{RunState, checkpoint_path, is_damage, prompt_path, run_state};
use self::step::DeviceTraining;
use crate::config::{Config, Select};
use crate::models::{self, LoadedModel};
use crate::optim::Schedule;
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

/// The evaluation options of a config (`with_loss`: generation also computes the loss).
pub fn eval_options(config: &Config, with_loss: bool) -> EvalOptions {
    EvalOptions {
        scoring: config.train.scoring,
        batch_size: config.train.eval_batch_size,
        max_new: config.train.max_new_tokens,
        with_loss,
    }
}

fn score(select: Select, task: &TaskSpec, r: &EvalResult) -> f64 {
    match select {
        Select::Loss => -r.loss,
        Select::Metric => task.primary_score(&r.metrics),
    }
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
    let trainable = match &t.attempt {
        Some(a) => Trainable::Attempt(a),
        None => Trainable::Prompt((r, d)),
    };
    // The values, AdamW's moments and each step's statistics stay on the device; read below.
    let mut dev = DeviceTraining::new(&p.state, &trainable, &engine.device).context("the training state")?;
    let mut last_read = std::time::Instant::now();
    // SIGTERM/SIGINT (where installed) stop the loop between steps, with a checkpoint.
    let _armed = stop::arm();
    while dev.step_count() < total {
        let idx = step_batches(
            examples.train.len(),
            dev.step_count(),
            config.optim.batch_size,
            config.optim.gradient_accumulation,
            config.data.shuffle,
            config.train.seed,
        );
        let micro = examples.train_batches(&idx)?;
        dev.step(engine, &micro, schedule, config.optim.max_grad_norm, &trainable)
            .with_context(|| format!("training step {}", dev.step_count()))?;
        let step = dev.step_count();
        let due = step.is_multiple_of(config.train.eval_every) || step == total;
        let save = step.is_multiple_of(config.save_every()) || step == total;
        let signal = stop::requested().filter(|_| step < total);
        let abort = opts.abort_after_step == Some(step);
        // The values come back for a validation, a checkpoint or a stop; the statistics then too,
        // and at least every READ_INTERVAL for the curves and the progress bar.
        let sync = due || save || signal.is_some() || abort;
        if sync || last_read.elapsed() >= READ_INTERVAL {
            record_steps(p, &mut dev, &bar, ckpt_file)?;
            last_read = std::time::Instant::now();
        }
        if !sync {
            continue;
        }
        dev.sync(&mut p.state).context("reading the training state")?;
        let stop = due && !examples.validation.is_empty() && t.validate(p, &examples.validation, &bar)?;
        // At the last step too: the test pass that follows may be long, and a run stopped in it
        // (a scheduler's time limit) then resumes with the test pass alone.
        if (save || signal.is_some()) && !stop {
            checkpoint::write(ckpt_file, &p.checkpoint(t))
                .with_context(|| format!("writing checkpoint {}", ckpt_file.display()))?;
        }
        if abort {
            // Test hook: die as a killed process would, without cleanup.
            std::process::abort();
        }
        if let Some(signal) = signal.filter(|_| !stop) {
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

/// How often, at most, the loop reads the steps' statistics back (a GPU's stream runs on
/// between reads).
const READ_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads the statistics of the steps since the last read into the curves, the event log and the
/// progress bar; a non-finite loss or gradient stops the run, naming its step.
fn record_steps(
    p: &mut Progress,
    dev: &mut DeviceTraining,
    bar: &indicatif::ProgressBar,
    ckpt_file: &Path,
) -> Result<()> {
    let stats = match dev.read_stats() {
        Ok(s) => s,
        Err(e @ (StepError::NonFiniteLoss { .. } | StepError::NonFiniteGrad { .. })) => {
            bar.abandon();
            bail!(
                "training stopped: {e}; lower optim.learning_rate or set optim.max_grad_norm; {}",
                last_checkpoint(ckpt_file)
            );
        }
        Err(e) => return Err(e).context("reading the steps' losses"),
    };
    for (step, s) in stats {
        p.record("train_loss", step, f64::from(s.loss))?;
        p.record("lr", step, s.lr)?;
        p.event("grad_norm", step, s.grad_norm)?;
        bar.set_position(step);
        bar.set_message(format!("loss {:.4} lr {:.3e}", s.loss, s.lr));
        tracing::debug!(step, loss = s.loss, lr = s.lr, grad_norm = s.grad_norm, "step");
    }
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
