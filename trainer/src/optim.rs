//! AdamW, learning-rate schedules and gradient clipping with the exact semantics of torch and
//! transformers: on the training device during a run (`AdamW::step_on_device`, so a step never
//! waits for the host), and on the host for the reference and the checkpoints' state. Checked step by step against torch + peft in `trainer/tests/train_parity.rs`.

use serde::{Deserialize, Serialize};

/// `torch.optim.AdamW` (single-tensor implementation, `amsgrad=False`, `maximize=False`).
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// First and second moments.
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    /// Updates taken so far.
    pub t: u64,
}

impl AdamW {
    pub fn new(n: usize, weight_decay: f64) -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            m: vec![0.0; n],
            v: vec![0.0; n],
            t: 0,
        }
    }

    /// One update of `params` with `grads` at learning rate `lr`, as torch computes it:
    /// `p *= 1 − lr·wd; m.lerp_(g, 1 − β₁); v = β₂v + (1 − β₂)g²;
    /// p −= lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f64) {
        self.t += 1;
        let decay = (1.0 - lr * self.weight_decay) as f32;
        let w1 = (1.0 - self.beta1) as f32;
        let b2 = self.beta2 as f32;
        let w2 = (1.0 - self.beta2) as f32;
        let bias1 = 1.0 - self.beta1.powi(self.t as i32);
        let bias2_sqrt = (1.0 - self.beta2.powi(self.t as i32)).sqrt() as f32;
        let step_size = (lr / bias1) as f32;
        let eps = self.eps as f32;
        for (((p, &g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            *p *= decay;
            // torch's lerp for weight < 0.5: self + weight * (end - self)
            *m += w1 * (g - *m);
            *v = *v * b2 + w2 * g * g;
            let denom = v.sqrt() / bias2_sqrt + eps;
            *p += -step_size * (*m / denom);
        }
    }
}

/// [`AdamW::step`] on the training device, one parameter tensor at a time: the same f32
/// arithmetic on tensors, so the prompt never leaves the device between reads.
impl AdamW {
    /// Update `t` (already counted by the caller, 1-based) of the variable `p` with its gradient
    /// `g` and moments `m`, `v` (f32, `p`'s shape), at learning rate `lr`.
    pub fn step_on_device(
        &self,
        t: u64,
        p: &candle_core::Var,
        (m, v): (&mut candle_core::Tensor, &mut candle_core::Tensor),
        g: &candle_core::Tensor,
        lr: f64,
    ) -> candle_core::Result<()> {
        let decay = f64::from((1.0 - lr * self.weight_decay) as f32);
        let w1 = f64::from((1.0 - self.beta1) as f32);
        let b2 = f64::from(self.beta2 as f32);
        let w2 = f64::from((1.0 - self.beta2) as f32);
        let bias1 = 1.0 - self.beta1.powi(t as i32);
        let bias2_sqrt = f64::from((1.0 - self.beta2.powi(t as i32)).sqrt() as f32);
        let step_size = f64::from((lr / bias1) as f32);
        let eps = f64::from(self.eps as f32);
        // torch's lerp for weight < 0.5: self + weight * (end - self)
        *m = (&*m + (g - &*m)?.affine(w1, 0.0)?)?;
        *v = (v.affine(b2, 0.0)? + g.sqr()?.affine(w2, 0.0)?)?;
        let denom = (v.sqrt()? / bias2_sqrt)?.affine(1.0, eps)?;
        let updated = (p.as_tensor().affine(decay, 0.0)? - (&*m / denom)?.affine(step_size, 0.0)?)?;
        p.set(&updated)
    }
}

/// The learning-rate schedules of transformers (`get_*_schedule_with_warmup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    #[default]
    Linear,
    Cosine,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The LR of the update made at `step` (0-based): the scheduler is stepped after each
    /// optimizer step, so the first update uses the factor of step 0 (0 with any warmup).
    pub fn lr(&self, step: u64) -> f64 {
        let (s, w, t) = (step as f64, self.warmup as f64, self.total as f64);
        let factor = if step < self.warmup {
            s / w.max(1.0)
        } else {
            match self.kind {
                ScheduleKind::Constant => 1.0,
                ScheduleKind::Linear => ((t - s) / (t - w).max(1.0)).max(0.0),
                ScheduleKind::Cosine => {
                    let progress = (s - w) / (t - w).max(1.0);
                    (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
                }
            }
        };
        self.base_lr * factor
    }
}

/// `torch.nn.utils.clip_grad_norm_`: scales `grads` so their L2 norm is at most `max_norm`
/// (coefficient `max_norm / (norm + 1e-6)`, clamped to 1); returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [f32], max_norm: f64) -> f64 {
    let norm = grad_norm(grads);
    let coef = (max_norm as f32 / (norm as f32 + 1e-6)).min(1.0);
    for g in grads.iter_mut() {
        *g *= coef;
    }
    norm
}

/// L2 norm of a gradient (accumulated in f64).
pub fn grad_norm(grads: &[f32]) -> f64 {
    grads.iter().map(|&g| f64::from(g) * f64::from(g)).sum::<f64>().sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_match_transformers() {
        // get_linear_schedule_with_warmup(opt, 2, 5) with lr 0.3: [0.0, 0.15, 0.3, 0.2, 0.1]
        let lin = Schedule {
            kind: ScheduleKind::Linear,
            base_lr: 0.3,
            warmup: 2,
            total: 5,
        };
        let got: Vec<f64> = (0..5).map(|s| lin.lr(s)).collect();
        for (g, w) in got
            .iter()
            .zip([0.0, 0.15, 0.3, 0.19999999999999998, 0.09999999999999999])
        {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
        // get_cosine_schedule_with_warmup(opt, 1, 4) with lr 0.1: [0.0, 0.1, 0.075, 0.025]
        let cos = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 0.1,
            warmup: 1,
            total: 4,
        };
        let got: Vec<f64> = (0..4).map(|s| cos.lr(s)).collect();
        for (g, w) in got.iter().zip([0.0, 0.1, 0.07500000000000001, 0.025000000000000012]) {
            assert!((g - w).abs() < 1e-15, "{got:?}");
        }
    }

    #[test]
    fn clipping_scales_to_the_max_norm() {
        let mut g = vec![3.0f32, 4.0];
        let n = clip_grad_norm(&mut g, 1.0);
        assert_eq!(n, 5.0);
        assert!((grad_norm(&g) - 1.0).abs() < 1e-6);
        let mut small = vec![0.1f32, 0.1];
        clip_grad_norm(&mut small, 1.0);
        assert_eq!(small, vec![0.1, 0.1]);
    }
}
