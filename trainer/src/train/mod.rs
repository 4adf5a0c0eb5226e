//! `tpv train`: prompt tuning of a frozen model, as the paper does it (docs/method.md §4).
//!
//! The sample stream is deterministic: sample k of the run is example `k mod n` of epoch `k / n`
//! (in a seeded shuffled order per epoch when `data.shuffle`), an optimizer step takes
//! `batch_size × gradient_accumulation` consecutive samples. With the checkpointed AdamW state and
//! dropout generator, a resumed run therefore repeats the uninterrupted one exactly.

pub mod checkpoint;
pub mod engine;

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
use self::engine::{Encoded, Engine, EvalOptions, EvalResult, State, StepError, train_step};
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
/// the test pass): a checkpoint resumes when everything that shapes training is the same, so a
/// study whose later version scores other baselines still resumes its interrupted runs.
fn training_part(config: &serde_json::Value) -> serde_json::Value {
    let mut c = config.clone();
    if let Some(t) = c.get_mut("train").and_then(serde_json::Value::as_object_mut) {
        for key in ["baselines", "zero_shot_baseline", "test"] {
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
            let p = io::load_prompt(path)?;
            if !p.kind().is_prompt() {
                bail!(
                    "prompt.init {} holds a task prompt vector, not a prompt",
                    path.display()
                );
            }
            if p.shape() != [r, d] {
                bail!(
                    "prompt.init {} is {}×{}, the run needs {r}×{d} (virtual_tokens × hidden size)",
                    path.display(),
                    p.shape()[0],
                    p.shape()[1]
                );
            }
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

/// Trains one prompt as `config` says; returns the run file written.
pub fn run(config: &Config, opts: &RunOptions) -> Result<PathBuf> {
    let out_dir = &config.train.output;
    let prompt_file = prompt_path(out_dir);
    let ckpt_file = checkpoint_path(out_dir);
    let resolved = serde_json::to_value(config)?;
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
                return Ok(prompt_file);
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

    let device = models::device(&config.model.device)?;
    let dtype = models::dtype(&config.model.dtype)?;
    let loaded = models::load_cached(&config.model.path, dtype, &device)
        .with_context(|| format!("loading model {}", config.model.path))?;
    let d = loaded.model.hidden_size();
    let r = config.prompt.virtual_tokens;
    let max_positions = loaded.model.max_positions();
    if r >= max_positions {
        bail!("prompt.virtual_tokens is {r}: it leaves no room for the input in the model's {max_positions} positions");
    }
    let all = data::load_all(&config.data).context("loading data")?;
    let splits = data::describe(&all);
    // Chat models use their chat template when they have one (`Loaded::encode`).
    let chat = config.model.chat_template;
    // Records of every task, joined split by split (task index, record); validation and test are
    // tokenized now, training examples only when the sample stream reaches them (a short run on a
    // large dataset tokenizes the examples it uses, not the whole set).
    let records: Vec<[Vec<(usize, &Record)>; 3]> = all
        .iter()
        .enumerate()
        .map(|(t, s)| [&s.train, &s.validation, &s.test].map(|recs| recs.iter().map(|r| (t, r)).collect::<Vec<_>>()))
        .collect();
    let [train_recs, valid_recs, test_recs] = interleave(records);
    let enc_opts = encode_options(config);
    let encode_rec = |(t, rec): (usize, &Record)| -> Result<Encoded> {
        let task = &all[t].task;
        encode(&loaded, task, std::slice::from_ref(rec), &enc_opts)
            .with_context(|| format!("task {}", task.name))?
            .pop()
            .context("an example was lost in tokenization")
    };
    let validation: Vec<Encoded> = valid_recs.iter().map(|&p| encode_rec(p)).collect::<Result<_>>()?;
    let test: Vec<Encoded> = test_recs.iter().map(|&p| encode_rec(p)).collect::<Result<_>>()?;
    // Every scored example must fit the model with the prompt in front (and the tokens to
    // generate), before any training: not a failure at the end of a long run.
    let new_tokens = match config.train.scoring {
        tpv_shared::eval::Scoring::Generate => config.train.max_new_tokens,
        tpv_shared::eval::Scoring::Rank => 0,
    };
    for (split, examples) in [("validation", &validation), ("test", &test)] {
        for (i, e) in examples.iter().enumerate() {
            e.check_fits(&loaded.model, r, new_tokens)
                .with_context(|| format!("{split} example {}", i + 1))?;
        }
    }
    let mut train: Vec<Option<Encoded>> = vec![None; train_recs.len()];
    let (total, warmup) = step_counts(config, train.len());
    let schedule = Schedule {
        kind: config.optim.scheduler,
        base_lr: config.optim.learning_rate,
        warmup,
        total,
    };
    tracing::info!(
        task = %splits.task.name, train = train.len(), validation = validation.len(), test = test.len(),
        total, warmup, fingerprint = %splits.fingerprint, "data ready"
    );
    let (theta0, origin_ref) = origin(config, &loaded, d)?;
    let dropout = config.train.dropout.unwrap_or_else(|| loaded.model.config_dropout());
    let engine = Engine {
        model: &loaded.model,
        codec: Some(&loaded.codec),
        eos: loaded.eos.clone(),
        dropout,
        device: device.clone(),
    };

    let mut adam = AdamW::new(r * d, config.optim.weight_decay);
    adam.beta1 = config.optim.beta1;
    adam.beta2 = config.optim.beta2;
    adam.eps = config.optim.eps;
    let mut state = State {
        step: 0,
        params: theta0.as_slice().to_vec(),
        adam,
        rng: config.train.seed,
    };
    let mut best: Option<Best> = None;
    let mut curves: BTreeMap<String, Curve> = BTreeMap::new();
    let mut stale = 0u32;
    if opts.resume && ckpt_file.exists() {
        let c = checkpoint::read(&ckpt_file)?;
        if training_part(&c.config) != training_part(&resolved) {
            bail!(
                "{} was written by a different configuration; resume with the same config or pass --overwrite",
                ckpt_file.display()
            );
        }
        if c.fingerprint != splits.fingerprint {
            bail!(
                "{}: the data changed since the checkpoint (fingerprint {} → {})",
                ckpt_file.display(),
                c.fingerprint,
                splits.fingerprint
            );
        }
        if c.params.len() != r * d {
            bail!(
                "{}: the checkpoint's prompt has {} values, expected {}",
                ckpt_file.display(),
                c.params.len(),
                r * d
            );
        }
        state.step = c.step;
        state.params = c.params;
        state.adam.m = c.adam_m;
        state.adam.v = c.adam_v;
        state.adam.t = c.adam_t;
        state.rng = c.rng;
        best = c.best;
        curves = c.curves;
        stale = c.evals_without_improvement;
        tracing::info!("resuming {} at step {}", out_dir.display(), state.step);
    }

    let save = |state: &State, best: &Option<Best>, curves: &BTreeMap<String, Curve>, stale: u32| {
        checkpoint::write(
            &ckpt_file,
            &Checkpoint {
                step: state.step,
                params: state.params.clone(),
                adam_m: state.adam.m.clone(),
                adam_v: state.adam.v.clone(),
                adam_t: state.adam.t,
                rng: state.rng,
                best: best.clone(),
                evals_without_improvement: stale,
                curves: curves.clone(),
                config: resolved.clone(),
                fingerprint: splits.fingerprint.clone(),
            },
        )
        .with_context(|| format!("writing checkpoint {}", ckpt_file.display()))
    };
    let theta_of = |params: &[f32]| Tensor::from_slice(params, (r, d), &device);

    let bar = progress_bar(total, state.step);
    while state.step < total {
        let idx = step_batches(
            train.len(),
            state.step,
            config.optim.batch_size,
            config.optim.gradient_accumulation,
            config.data.shuffle,
            config.train.seed,
        );
        for &i in idx.iter().flatten() {
            if train[i].is_none() {
                let e = encode_rec(train_recs[i]).with_context(|| format!("tokenizing training example {}", i + 1))?;
                e.check_fits(&loaded.model, r, 0)
                    .with_context(|| format!("training example {}", i + 1))?;
                train[i] = Some(e);
            }
        }
        let micro: Vec<Vec<&Encoded>> = idx
            .iter()
            .map(|mb| mb.iter().filter_map(|&i| train[i].as_ref()).collect())
            .collect();
        let stats = match train_step(
            &engine,
            &mut state,
            &micro,
            &schedule,
            config.optim.max_grad_norm,
            (r, d),
        ) {
            Ok(s) => s,
            Err(e @ (StepError::NonFiniteLoss { .. } | StepError::NonFiniteGrad { .. })) => {
                bar.abandon();
                let kept = if ckpt_file.exists() {
                    format!(
                        "the last good checkpoint is {} (step {})",
                        ckpt_file.display(),
                        checkpoint::read(&ckpt_file).map(|c| c.step).unwrap_or(0)
                    )
                } else {
                    "no checkpoint was written yet".to_owned()
                };
                bail!("training stopped: {e}; lower optim.learning_rate or set optim.max_grad_norm; {kept}");
            }
            Err(e) => return Err(e).context(format!("training step {}", state.step)),
        };
        let step = state.step;
        push(&mut curves, "train_loss", step, f64::from(stats.loss));
        push(&mut curves, "lr", step, stats.lr);
        bar.set_position(step);
        bar.set_message(format!("loss {:.4} lr {:.3e}", stats.loss, stats.lr));
        tracing::debug!(
            step,
            loss = stats.loss,
            lr = stats.lr,
            grad_norm = stats.grad_norm,
            "step"
        );

        let mut stop = false;
        if (step.is_multiple_of(config.train.eval_every) || step == total) && !validation.is_empty() {
            let theta = theta_of(&state.params)?;
            let res = engine::evaluate(
                &loaded,
                &[&theta],
                &validation,
                &splits.task,
                eval_options(config, config.train.eval_loss || config.train.select == Select::Loss),
            )
            .with_context(|| format!("evaluating on the validation split at step {step}"))?
            .remove(0);
            if res.loss.is_finite() {
                push(&mut curves, "valid_loss", step, res.loss);
            }
            for (k, v) in &res.metrics {
                push(&mut curves, &format!("valid_{k}"), step, *v);
            }
            let s = score(config.train.select, &splits.task, &res);
            let improved = best.as_ref().is_none_or(|b| s > b.score || b.score.is_nan());
            say(
                &bar,
                format!(
                    "step {step}: validation {}{}{}",
                    if res.loss.is_finite() {
                        format!("loss {:.4}, ", res.loss)
                    } else {
                        String::new()
                    },
                    fmt_metrics(&res.metrics),
                    if improved { " (best)" } else { "" }
                ),
            );
            if improved {
                best = Some(Best {
                    step,
                    score: s,
                    params: state.params.clone(),
                    metrics: res.metrics.clone(),
                });
                stale = 0;
            } else {
                stale += 1;
                if config.train.early_stopping_patience.is_some_and(|p| stale >= p) {
                    say(
                        &bar,
                        format!("early stopping at step {step}: no improvement in {stale} evaluations"),
                    );
                    stop = true;
                }
            }
        }
        if step.is_multiple_of(config.save_every()) && step < total && !stop {
            save(&state, &best, &curves, stale)?;
        }
        if opts.abort_after_step == Some(step) {
            // Test hook: die as a killed process would, without cleanup.
            std::process::abort();
        }
        if stop {
            break;
        }
    }
    bar.finish_and_clear();

    // The kept prompt: the best on validation, or the last one without validation data.
    let (params, kept_step, valid_metrics) = match &best {
        Some(b) => (b.params.clone(), b.step, b.metrics.clone()),
        None => (state.params.clone(), state.step, BTreeMap::new()),
    };
    let mut metrics = BTreeMap::new();
    for (k, v) in &valid_metrics {
        metrics.insert(format!("validation_{k}"), *v);
    }
    // The kept prompt on test, and with `baselines` the untrained origin θ₀ and the model with no
    // prompt at all (zero-shot, instruction only): one pass over rows that mix the three.
    let mut scored: Vec<(&str, Tensor)> = Vec::new();
    if config.train.test && !test.is_empty() {
        scored.push(("", theta_of(&params)?));
    }
    if config.train.baselines && !test.is_empty() {
        scored.push(("origin_", theta_of(theta0.as_slice())?));
        if config.train.zero_shot_baseline {
            scored.push(("zero_shot_", Tensor::zeros((0, d), DType::F32, &device)?));
        }
    }
    if !scored.is_empty() {
        let prompts: Vec<&Tensor> = scored.iter().map(|(_, t)| t).collect();
        let results = engine::evaluate(
            &loaded,
            &prompts,
            &test,
            &splits.task,
            eval_options(config, config.train.eval_loss),
        )
        .context("evaluating the kept prompt (and baselines) on the test split")?;
        for ((name, _), res) in scored.iter().zip(results) {
            if res.loss.is_finite() {
                metrics.insert(format!("{name}test_loss"), res.loss);
            }
            for (k, v) in &res.metrics {
                metrics.insert(format!("{name}test_{k}"), *v);
            }
        }
    }
    metrics.insert("best_step".into(), kept_step as f64);
    metrics.insert("steps".into(), state.step as f64);

    let values = PromptTensor::new(r, d, params)?;
    let mut prompt = SoftPrompt::new(PromptKind::TaskPrompt, values, Some(theta0))?;
    let task_type = if loaded.model.is_seq2seq() {
        TaskType::Seq2SeqLm
    } else {
        TaskType::CausalLm
    };
    prompt.meta.model = Some(ModelRef {
        id: loaded.id.clone(),
        revision: None,
    });
    prompt.meta.tasks = splits.tasks.clone();
    prompt.meta.origin = origin_ref;
    prompt.meta.layout = Layout {
        task_type: Some(task_type),
        num_transformer_submodules: task_type.default_submodules(),
    };
    prompt.meta.metrics = metrics;
    prompt.meta.config = Some(json!({
        "config": resolved,
        "splits": { "train": train.len(), "validation": validation.len(), "test": test.len() },
        "total_steps": total,
        "warmup_steps": warmup,
        "chat_template": chat,
        "scoring": config.train.scoring.as_str(),
    }));
    prompt.meta.data_fingerprint = Some(splits.fingerprint.clone());
    prompt.curves = curves;
    io::write_run(&prompt_file, &prompt).with_context(|| format!("writing {}", prompt_file.display()))?;
    if ckpt_file.exists() {
        std::fs::remove_file(&ckpt_file).with_context(|| format!("removing {}", ckpt_file.display()))?;
    }
    Ok(prompt_file)
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
