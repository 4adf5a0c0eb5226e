//! The optimizer step on the training device. The trainable values (θ, or ATTEMPT's target prompt
//! and module), AdamW's moments, and each step's loss and gradient norm stay where the model
//! runs; a step reads nothing back (on a GPU, the host never waits for the stream inside a step:
//! `tests/train_parity.rs` counts the reads through `tpv_shared::model::host`). The loop reads
//! the pending steps' statistics once per logging interval ([`DeviceTraining::read_stats`]), and
//! the values themselves only for a checkpoint, a validation or the end ([`DeviceTraining::sync`]).
//! A non-finite loss or gradient is found at that read, naming the step it first appeared in;
//! nothing computed after it is kept.

use candle_core::{DType, Device, Tensor, Var};
use tpv_shared::attempt;
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::host;

use super::engine::{Encoded, Engine, State, StepError, StepStats, Trainable};
use crate::optim::{AdamW, Schedule};

/// A step's statistics, on the device until read.
struct Pending {
    step: u64,
    lr: f64,
    /// [loss, gradient norm], f32.
    values: Tensor,
}

/// The trainable values of a run on the training device between reads.
pub struct DeviceTraining {
    /// In the order of the flat parameters (θ; or ATTEMPT's target, W_down, W_up, scale, shift).
    vars: Vec<Var>,
    /// ATTEMPT's parts, whose tensors are `vars`' (updated in place).
    parts: Option<attempt::Parts>,
    /// AdamW's first and second moments per variable.
    moments: Vec<(Tensor, Tensor)>,
    adam: AdamW,
    step: u64,
    rng: u64,
    pending: Vec<Pending>,
}

impl DeviceTraining {
    /// Uploads `state` (parameters and AdamW's moments) to `device`.
    pub fn new(state: &State, trainable: &Trainable<'_>, device: &Device) -> candle_core::Result<Self> {
        let (vars, parts) = match trainable {
            Trainable::Prompt(shape) => {
                let theta = Tensor::from_slice(&state.params, *shape, device)?;
                (vec![Var::from_tensor(&theta)?], None)
            }
            Trainable::Attempt(setup) => {
                let parts = setup.vars(&state.params, device)?;
                // The parts are variables already: these handles share their storage.
                let vars = parts
                    .all()
                    .iter()
                    .map(|t| Var::from_tensor(t))
                    .collect::<candle_core::Result<_>>()?;
                (vars, Some(parts))
            }
        };
        let mut moments = Vec::with_capacity(vars.len());
        let mut at = 0;
        for var in &vars {
            let n = var.elem_count();
            let (m, v) = (&state.adam.m[at..at + n], &state.adam.v[at..at + n]);
            moments.push((
                Tensor::from_slice(m, var.shape(), device)?,
                Tensor::from_slice(v, var.shape(), device)?,
            ));
            at += n;
        }
        if at != state.params.len() {
            candle_core::bail!("{} parameters for variables of {at} values", state.params.len());
        }
        Ok(Self {
            vars,
            parts,
            moments,
            // The moments live on the device; the hyperparameters and the update count here.
            adam: AdamW {
                m: Vec::new(),
                v: Vec::new(),
                ..state.adam.clone()
            },
            step: state.step,
            rng: state.rng,
            pending: Vec::new(),
        })
    }

    /// The steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// One optimizer step over `micro_batches` (gradient accumulation): each micro-batch's mean
    /// loss weighted by its share of the step's target tokens (the mean NLL over all of them, as
    /// transformers' Trainer with `num_items_in_batch`); the gradient norm, clipping to
    /// `max_grad_norm`, the LR of this step and AdamW — all on the device, nothing read.
    pub fn step(
        &mut self,
        engine: &Engine<'_>,
        micro_batches: &[Vec<&Encoded>],
        schedule: &Schedule,
        max_grad_norm: Option<f64>,
        trainable: &Trainable<'_>,
    ) -> candle_core::Result<()> {
        let mut rng = SplitMix64::new(self.rng);
        let total: usize = micro_batches.iter().flatten().map(|e| e.target_count()).sum();
        let mut loss: Option<Tensor> = None;
        let mut grads: Vec<Option<Tensor>> = vec![None; self.vars.len()];
        for mb in micro_batches {
            let share = mb.iter().map(|e| e.target_count()).sum::<usize>() as f64 / total.max(1) as f64;
            let rows = match (&self.parts, trainable) {
                (Some(parts), Trainable::Attempt(setup)) => {
                    attempt::prompts(engine.model, parts, &setup.sources, setup.module.temperature, mb)?.0
                }
                _ => vec![self.vars[0].as_tensor().clone(); mb.len()],
            };
            let rows: Vec<&Tensor> = rows.iter().collect();
            let (value, g) = engine.scaled_loss_grads_rows(&rows, mb, share, Some(&mut rng))?;
            loss = Some(match loss {
                Some(l) => (l + value)?,
                None => value,
            });
            for (acc, var) in grads.iter_mut().zip(&self.vars) {
                if let Some(g) = g.get(var.as_tensor()) {
                    let g = g.to_dtype(DType::F32)?;
                    *acc = Some(match acc.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
        }
        let loss = loss.ok_or_else(|| candle_core::Error::Msg("a step without micro-batches".into()))?;
        let grads = grads
            .into_iter()
            .zip(&self.vars)
            .map(|(g, var)| g.map_or_else(|| var.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // torch's clip_grad_norm_: the L2 norm over all, coefficient max / (norm + 1e-6) clamped to 1.
        let squares = grads
            .iter()
            .map(|g| g.sqr()?.sum_all())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
        let grads = match max_grad_norm {
            Some(max) => {
                let coef = norm.affine(1.0, 1e-6)?.recip()?.affine(max, 0.0)?.minimum(1f32)?;
                grads
                    .iter()
                    .map(|g| g.broadcast_mul(&coef))
                    .collect::<candle_core::Result<Vec<_>>>()?
            }
            None => grads,
        };
        let lr = schedule.lr(self.step);
        self.adam.t += 1;
        for ((var, (m, v)), g) in self.vars.iter().zip(&mut self.moments).zip(&grads) {
            self.adam.step_on_device(self.adam.t, var, (m, v), g, lr)?;
        }
        self.step += 1;
        self.rng = rng.state();
        self.pending.push(Pending {
            step: self.step,
            lr,
            values: Tensor::stack(&[loss.to_dtype(DType::F32)?, norm], 0)?,
        });
        Ok(())
    }

    /// The statistics of the steps taken since the last read with their step numbers (from 1),
    /// in one read of the device; the first step with a non-finite loss or gradient is an error
    /// naming it.
    pub fn read_stats(&mut self) -> Result<Vec<(u64, StepStats)>, StepError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let pending = std::mem::take(&mut self.pending);
        let values: Vec<&Tensor> = pending.iter().map(|p| &p.values).collect();
        let values = host::vec2::<f32>(&Tensor::stack(&values, 0)?)?;
        let mut out = Vec::with_capacity(pending.len());
        for (p, v) in pending.iter().zip(values) {
            let (loss, norm) = (v[0], v[1]);
            if !loss.is_finite() {
                return Err(StepError::NonFiniteLoss {
                    step: p.step,
                    value: loss,
                });
            }
            if !norm.is_finite() {
                return Err(StepError::NonFiniteGrad { step: p.step });
            }
            out.push((
                p.step,
                StepStats {
                    loss,
                    lr: p.lr,
                    grad_norm: f64::from(norm),
                },
            ));
        }
        Ok(out)
    }

    /// Copies the values and AdamW's state into `state` (for a checkpoint, a validation, the end):
    /// one read. The pending statistics must have been read first (a non-finite step is never
    /// copied out).
    pub fn sync(&self, state: &mut State) -> Result<(), StepError> {
        if !self.pending.is_empty() {
            return Err(StepError::Candle(candle_core::Error::Msg(
                "the steps' statistics must be read before the values".into(),
            )));
        }
        let mut parts: Vec<Tensor> = Vec::with_capacity(3 * self.vars.len());
        for var in &self.vars {
            parts.push(var.as_tensor().flatten_all()?.to_dtype(DType::F32)?);
        }
        for (m, v) in &self.moments {
            parts.push(m.flatten_all()?);
            parts.push(v.flatten_all()?);
        }
        let all = host::vec1::<f32>(&Tensor::cat(&parts, 0)?)?;
        let n = state.params.len();
        let (params, rest) = all.split_at(n.min(all.len()));
        state.params = params.to_vec();
        let (mut m, mut v) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut at = 0;
        for var in &self.vars {
            let k = var.elem_count();
            m.extend_from_slice(&rest[at..at + k]);
            v.extend_from_slice(&rest[at + k..at + 2 * k]);
            at += 2 * k;
        }
        state.adam = AdamW {
            m,
            v,
            ..self.adam.clone()
        };
        state.step = self.step;
        state.rng = self.rng;
        Ok(())
    }
}
