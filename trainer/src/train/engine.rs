//! The training step and evaluation on top of the shared forward passes: one loss for both model
//! families, AdamW on the host, losses normalized over all target tokens of an optimizer step.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use tpv_shared::eval::{Loaded, Scoring, summarize};
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::Loss;
use tpv_shared::model::load::Model;
use tpv_shared::model::t5;
use tpv_shared::tasks::TaskSpec;
use tpv_shared::text::TextCodec;

use crate::optim::{AdamW, Schedule, clip_grad_norm, grad_norm};

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
        let train = match rng {
            Some(rng) if self.dropout > 0.0 => Some(t5::Train {
                dropout: self.dropout,
                rng,
            }),
            _ => None,
        };
        self.model.loss_rows(&vec![theta; batch.len()], batch, train)
    }

    /// `share` × the loss of `batch` under the variable `theta`, and its gradients: with gradient
    /// checkpointing when the engine has it on (then without dropout: LLaMA-family models have
    /// none).
    pub fn scaled_loss_grads(
        &self,
        theta: &Var,
        batch: &[&Encoded],
        share: f64,
        rng: Option<&mut SplitMix64>,
    ) -> candle_core::Result<(f32, candle_core::backprop::GradStore)> {
        if self.checkpointing {
            let rows = vec![theta.as_tensor(); batch.len()];
            let (out, grads) = self.model.loss_grad_checkpointed(&rows, batch, share)?;
            return Ok(((out.loss.to_dtype(DType::F32)? * share)?.to_scalar::<f32>()?, grads));
        }
        let out = self.loss(theta.as_tensor(), batch, rng)?;
        let scaled = (out.loss.to_dtype(DType::F32)? * share)?;
        Ok((scaled.to_scalar::<f32>()?, scaled.backward()?))
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

/// One optimizer step over `micro_batches` (gradient accumulation): each micro-batch's mean loss
/// is weighted by its share of the step's target tokens, so the step minimizes the mean NLL over
/// all of them (as transformers' Trainer with `num_items_in_batch`); then clipping, the LR of
/// this step, and AdamW.
pub fn train_step(
    engine: &Engine<'_>,
    state: &mut State,
    micro_batches: &[Vec<&Encoded>],
    schedule: &Schedule,
    max_grad_norm: Option<f64>,
    shape: (usize, usize),
) -> Result<StepStats, StepError> {
    let var = Var::from_tensor(&Tensor::from_slice(&state.params, shape, &engine.device)?)?;
    let mut rng = SplitMix64::new(state.rng);
    let mut grads = vec![0f32; state.params.len()];
    let total: usize = micro_batches.iter().flatten().map(|e| e.target_count()).sum();
    let mut loss = 0f32;
    for mb in micro_batches {
        // Each micro-batch's share of the step's target tokens.
        let share = mb.iter().map(|e| e.target_count()).sum::<usize>() as f64 / total.max(1) as f64;
        let (value, g) = engine.scaled_loss_grads(&var, mb, share, Some(&mut rng))?;
        loss += value;
        if let Some(g) = g.get(&var) {
            for (a, b) in grads
                .iter_mut()
                .zip(g.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
            {
                *a += b;
            }
        }
    }
    if !loss.is_finite() {
        return Err(StepError::NonFiniteLoss {
            step: state.step + 1,
            value: loss,
        });
    }
    if grads.iter().any(|g| !g.is_finite()) {
        return Err(StepError::NonFiniteGrad { step: state.step + 1 });
    }
    let norm = match max_grad_norm {
        Some(max) => clip_grad_norm(&mut grads, max),
        None => grad_norm(&grads),
    };
    let lr = schedule.lr(state.step);
    state.adam.step(&mut state.params, &grads, lr);
    state.step += 1;
    state.rng = rng.state();
    Ok(StepStats {
        loss,
        lr,
        grad_norm: norm,
    })
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
    let targets: Vec<String> = examples.iter().map(|e| e.target().to_owned()).collect();
    Ok(per_prompt
        .into_iter()
        .map(|results| {
            let summary = summarize(task, &results, &targets);
            EvalResult {
                loss: summary.loss,
                metrics: summary.metrics,
                predictions: results.into_iter().map(|r| r.prediction).collect(),
            }
        })
        .collect())
}
