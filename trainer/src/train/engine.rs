//! The training step and evaluation on top of the shared forward passes: one loss for every model
//! family, losses normalized over all target tokens of an optimizer step (the step itself, on
//! the device: `step.rs`).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use tpv_shared::PromptTensor;
use tpv_shared::attempt;
use tpv_shared::eval::{Loaded, Scoring, summarize};
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::Loss;
use tpv_shared::model::load::Model;
use tpv_shared::model::t5;
use tpv_shared::tasks::TaskSpec;
use tpv_shared::text::TextCodec;

use super::step::DeviceTraining;
use crate::optim::{AdamW, Schedule};

pub use tpv_shared::eval::Encoded;

/// Why a training step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Steps count from 1, as in the curves.
    #[error("the loss is {value} at step {step}")]
    NonFiniteLoss { step: u64, value: f32 },
    #[error("the gradient has a non-finite value at step {step}")]
    NonFiniteGrad { step: u64 },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The model, how to decode, and the dropout of training mode.
pub struct Engine<'a> {
    pub model: &'a Model,
    pub codec: Option<&'a TextCodec>,
    pub eos: Vec<u32>,
    pub dropout: f32,
    pub device: Device,
    /// Recompute each layer's activations in the backward pass (`train.gradient_checkpointing`).
    pub checkpointing: bool,
}

impl<'a> Engine<'a> {
    /// An engine over a loaded model for work without dropout (learning weights, brief tuning).
    pub fn frozen(loaded: &'a Loaded, device: &Device, checkpointing: bool) -> Self {
        Self {
            model: &loaded.model,
            codec: Some(&loaded.codec),
            eos: loaded.eos.clone(),
            dropout: 0.0,
            device: device.clone(),
            checkpointing,
        }
    }
}

impl Engine<'_> {
    /// Loss of `batch` under `theta` ([R, d]); `rng` turns on dropout (T5, when the config has
    /// any). The family dispatch is the shared one (`Model::loss_rows`).
    pub fn loss(&self, theta: &Tensor, batch: &[&Encoded], rng: Option<&mut SplitMix64>) -> candle_core::Result<Loss> {
        self.model
            .loss_rows(&vec![theta; batch.len()], batch, self.train_mode(rng))
    }

    /// T5's dropout when `rng` is given and the engine has any.
    fn train_mode<'r>(&self, rng: Option<&'r mut SplitMix64>) -> Option<t5::Train<'r>> {
        match rng {
            Some(rng) if self.dropout > 0.0 => Some(t5::Train {
                dropout: self.dropout,
                rng,
            }),
            _ => None,
        }
    }

    /// `share` × the loss of `batch` under the variable `theta` (read), and its gradients: with
    /// gradient checkpointing when the engine has it on (then without dropout: decoder-only
    /// models have none).
    pub fn scaled_loss_grads(
        &self,
        theta: &Var,
        batch: &[&Encoded],
        share: f64,
        rng: Option<&mut SplitMix64>,
    ) -> candle_core::Result<(f32, candle_core::backprop::GradStore)> {
        let (loss, grads) = self.scaled_loss_grads_rows(&vec![theta.as_tensor(); batch.len()], batch, share, rng)?;
        Ok((tpv_shared::model::host::scalar(&loss)?, grads))
    }

    /// [`Self::scaled_loss_grads`] with a prompt per row, computed from variables (ATTEMPT's
    /// mixed prompts): the gradients reach whatever the rows were computed from. The scaled loss
    /// (f32) stays on the device.
    pub fn scaled_loss_grads_rows(
        &self,
        rows: &[&Tensor],
        batch: &[&Encoded],
        share: f64,
        rng: Option<&mut SplitMix64>,
    ) -> candle_core::Result<(Tensor, candle_core::backprop::GradStore)> {
        if self.checkpointing {
            let (out, grads) = self.model.loss_grad_checkpointed(rows, batch, share)?;
            return Ok(((out.loss.to_dtype(DType::F32)? * share)?, grads));
        }
        let out = self.model.loss_rows(rows, batch, self.train_mode(rng))?;
        let scaled = (out.loss.to_dtype(DType::F32)? * share)?;
        let grads = scaled.backward()?;
        Ok((scaled.detach(), grads))
    }

    /// Greedy generations (token ids) for a batch.
    pub fn generate(&self, theta: &Tensor, batch: &[&Encoded], max_new: usize) -> candle_core::Result<Vec<Vec<u32>>> {
        tpv_shared::eval::generate(self.model, &self.eos, theta, batch, max_new)
    }
}

/// Everything that changes during training (and is saved in a checkpoint).
#[derive(Debug, Clone, PartialEq)]
pub struct State {
    pub step: u64,
    pub params: Vec<f32>,
    pub adam: AdamW,
    /// SplitMix64 state of the dropout masks.
    pub rng: u64,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
}

/// What a step trains.
pub enum Trainable<'a> {
    /// A soft prompt: the parameters are θ, [R, d].
    Prompt((usize, usize)),
    /// ATTEMPT: the parameters are the target prompt's values, then the module's
    /// ([`attempt::Module::trained`]).
    Attempt(&'a AttemptSetup),
}

/// An ATTEMPT run's frozen parts: the module's shapes and sources, the sources on the device.
pub struct AttemptSetup {
    pub module: attempt::Module,
    pub sources: Tensor,
    /// The target prompt's shape (R, d).
    pub shape: (usize, usize),
}

impl AttemptSetup {
    pub fn new(module: attempt::Module, shape: (usize, usize), device: &Device) -> candle_core::Result<Self> {
        let sources = module.sources_on(device)?;
        Ok(Self { module, sources, shape })
    }

    /// The flat parameters of a run starting from `target` with this module's values.
    pub fn initial(&self, target: &[f32]) -> Vec<f32> {
        let mut p = target.to_vec();
        p.extend(self.module.trained());
        p
    }

    /// How many values the flat parameters have.
    pub fn param_count(&self) -> usize {
        self.shape.0 * self.shape.1 + self.module.trained_len()
    }

    /// The target prompt and the module of flat parameters.
    pub fn split(&self, params: &[f32]) -> tpv_shared::Result<(PromptTensor, attempt::Module)> {
        let n = self.shape.0 * self.shape.1;
        let (target, rest) = params.split_at(n.min(params.len()));
        Ok((
            PromptTensor::new(self.shape.0, self.shape.1, target.to_vec())?,
            self.module.with_trained(rest)?,
        ))
    }

    /// The parts of flat parameters as variables (in the flat order: [`attempt::Parts::all`]).
    pub(super) fn vars(&self, params: &[f32], device: &Device) -> candle_core::Result<attempt::Parts> {
        let (target, module) = self
            .split(params)
            .map_err(|e| candle_core::Error::Msg(format!("ATTEMPT parameters: {e}")))?;
        module
            .parts(&target, device)?
            .try_map(|t| Ok(Var::from_tensor(t)?.as_tensor().clone()))
    }
}

/// One optimizer step of a soft prompt of `shape` ([`train_step_with`]).
pub fn train_step(
    engine: &Engine<'_>,
    state: &mut State,
    micro_batches: &[Vec<&Encoded>],
    schedule: &Schedule,
    max_grad_norm: Option<f64>,
    shape: (usize, usize),
) -> Result<StepStats, StepError> {
    train_step_with(
        engine,
        state,
        micro_batches,
        schedule,
        max_grad_norm,
        &Trainable::Prompt(shape),
    )
}

/// One optimizer step over `micro_batches` on the engine's device ([`DeviceTraining::step`]),
/// its statistics read and the state copied back: for callers that step once at a time (the
/// parity tests, `tpv recommend`). A step with a non-finite loss or gradient leaves `state` as
/// it was.
pub fn train_step_with(
    engine: &Engine<'_>,
    state: &mut State,
    micro_batches: &[Vec<&Encoded>],
    schedule: &Schedule,
    max_grad_norm: Option<f64>,
    trainable: &Trainable<'_>,
) -> Result<StepStats, StepError> {
    let mut dev = DeviceTraining::new(state, trainable, &engine.device)?;
    dev.step(engine, micro_batches, schedule, max_grad_norm, trainable)?;
    let (_, stats) = dev
        .read_stats()?
        .pop()
        .ok_or_else(|| candle_core::Error::Msg("the step recorded no statistics".into()))?;
    dev.sync(state)?;
    Ok(stats)
}

/// Validation or test results.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Mean NLL over all target tokens (NaN when not computed: generation without the loss).
    pub loss: f64,
    /// exact_match and the task's metrics.
    pub metrics: BTreeMap<String, f64>,
    pub predictions: Vec<String>,
}

/// How an evaluation scores: generation (with or without the loss, a second forward pass) or
/// rank classification (loss included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvalOptions {
    pub scoring: Scoring,
    pub batch_size: usize,
    pub max_new: usize,
    pub with_loss: bool,
}

/// Scores every prompt of `prompts` on `examples` (one batched pass over rows that mix the
/// prompts, `tpv_shared::eval`: what `tpv eval` and the web app run); one result per prompt.
pub fn evaluate(
    loaded: &Loaded,
    prompts: &[&Tensor],
    examples: &[Encoded],
    task: &TaskSpec,
    opts: EvalOptions,
) -> anyhow::Result<Vec<EvalResult>> {
    let scorer = loaded.scorer(task, opts.scoring, opts.max_new, opts.with_loss)?;
    let refs: Vec<&Encoded> = examples.iter().collect();
    let per_prompt = loaded.evaluate_prompts(prompts, &refs, &scorer, opts.batch_size, &mut |_, _| {})?;
    Ok(per_prompt
        .into_iter()
        .map(|results| eval_result(task, examples, results))
        .collect())
}

/// The summary of one prompt's (or module's) results on `examples`.
fn eval_result(task: &TaskSpec, examples: &[Encoded], results: Vec<tpv_shared::eval::ExampleResult>) -> EvalResult {
    let targets: Vec<String> = examples.iter().map(|e| e.target().to_owned()).collect();
    let summary = summarize(task, &results, &targets);
    EvalResult {
        loss: summary.loss,
        metrics: summary.metrics,
        predictions: results.into_iter().map(|r| r.prediction).collect(),
    }
}

/// An ATTEMPT target prompt and module scored on `examples` (each under its own mixed prompt,
/// `tpv_shared::attempt::evaluate`), and the mean attention per source (the target prompt last).
pub fn evaluate_attempt(
    loaded: &Loaded,
    target: &PromptTensor,
    module: &attempt::Module,
    examples: &[Encoded],
    task: &TaskSpec,
    opts: EvalOptions,
) -> anyhow::Result<(EvalResult, Vec<f64>)> {
    let scorer = loaded.scorer(task, opts.scoring, opts.max_new, opts.with_loss)?;
    let refs: Vec<&Encoded> = examples.iter().collect();
    let (results, attention) = attempt::evaluate(loaded, target, module, &refs, &scorer, opts.batch_size)?;
    Ok((eval_result(task, examples, results), attention))
}
