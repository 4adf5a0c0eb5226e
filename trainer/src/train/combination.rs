//! Learned combination weights (issue 18): θ = θ₀ + Σᵢ wᵢ·τᵢ with only the K weights trained (or
//! K·R, one per vector and virtual token) on a target's few examples, by gradient through the
//! frozen model: ∂L/∂wᵢ = ⟨∂L/∂θ, τᵢ⟩ (per virtual token: the same sum over that row only). The
//! prompt's gradient is the training step's (`Engine::loss`, the loss of every target token of
//! the examples); Adam moves the weights.

use anyhow::{Result, bail};
use candle_core::{DType, Tensor, Var};
use tpv_shared::PromptTensor;

use super::engine::{Encoded, Engine};
use crate::optim::AdamW;

/// What the learning found.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    /// K weights, or K·R (vector-major) with `per_token`.
    pub weights: Vec<f32>,
    pub per_token: bool,
    /// The examples' mean loss at each step's weights (the last after the last update); for the
    /// evolution strategy, the initial weights' and then each generation's best.
    pub losses: Vec<f32>,
    /// The step whose weights are kept: the lowest loss.
    pub best_step: usize,
}

/// θ₀ + Σᵢ wᵢ·τᵢ (`weights`: K, or K·R per virtual token).
pub fn compose(origin: &PromptTensor, taus: &[PromptTensor], weights: &[f32], per_token: bool) -> Vec<f32> {
    let (r, d) = (origin.rows(), origin.dim());
    let mut out: Vec<f32> = origin.as_slice().to_vec();
    for (i, tau) in taus.iter().enumerate() {
        for (row, chunk) in tau.as_slice().chunks_exact(d).enumerate().take(r) {
            let w = if per_token { weights[i * r + row] } else { weights[i] };
            for (o, t) in out[row * d..(row + 1) * d].iter_mut().zip(chunk) {
                *o += w * t;
            }
        }
    }
    out
}

/// The mean loss of `examples` under θ and its gradient w.r.t. θ (batches of `batch`, each
/// weighted by its share of the target tokens).
fn loss_and_grad(
    engine: &Engine<'_>,
    theta: &[f32],
    shape: (usize, usize),
    examples: &[Encoded],
    batch: usize,
) -> Result<(f32, Vec<f32>)> {
    let var = Var::from_tensor(&Tensor::from_slice(theta, shape, &engine.device)?)?;
    let total: usize = examples.iter().map(Encoded::target_count).sum();
    let (mut loss, mut grad) = (0f32, vec![0f32; theta.len()]);
    for chunk in examples.chunks(batch.max(1)) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let share = chunk.iter().map(Encoded::target_count).sum::<usize>() as f64 / total.max(1) as f64;
        let (value, grads) = engine.scaled_loss_grads(&var, &refs, share, None)?;
        loss += value;
        if let Some(g) = grads.get(&var) {
            for (a, b) in grad.iter_mut().zip(tpv_shared::model::host::flat_f32(g)?) {
                *a += b;
            }
        }
    }
    Ok((loss, grad))
}

/// Learns the weights of θ₀ + Σᵢ wᵢ·τᵢ on `examples` from `init` (one per vector) by `steps`
/// Adam steps of rate `lr`; keeps the weights of the lowest loss seen.
pub fn learn_weights(
    engine: &Engine<'_>,
    examples: &[Encoded],
    origin: &PromptTensor,
    taus: &[PromptTensor],
    init: &[f64],
    per_token: bool,
    (steps, lr): (usize, f64),
) -> Result<Learned> {
    if examples.is_empty() {
        bail!("no examples to learn the weights on");
    }
    if init.len() != taus.len() {
        bail!("{} initial weights for {} vectors", init.len(), taus.len());
    }
    let (r, d) = (origin.rows(), origin.dim());
    let per = if per_token { r } else { 1 };
    let mut w: Vec<f32> = init.iter().flat_map(|&x| std::iter::repeat_n(x as f32, per)).collect();
    let mut adam = AdamW::new(w.len(), 0.0);
    let (mut losses, mut best) = (Vec::with_capacity(steps + 1), (f32::INFINITY, 0usize, w.clone()));
    for step in 0..=steps {
        let theta = compose(origin, taus, &w, per_token);
        let (loss, g) = loss_and_grad(engine, &theta, (r, d), examples, 8)?;
        if !loss.is_finite() {
            bail!("the loss is {loss} at step {step}");
        }
        losses.push(loss);
        if loss < best.0 {
            best = (loss, step, w.clone());
        }
        if step == steps {
            break;
        }
        let mut gw = vec![0f32; w.len()];
        for (i, tau) in taus.iter().enumerate() {
            for (row, (t, gr)) in tau.as_slice().chunks_exact(d).zip(g.chunks_exact(d)).enumerate() {
                let dot: f32 = t.iter().zip(gr).map(|(a, b)| a * b).sum();
                gw[if per_token { i * r + row } else { i }] += dot;
            }
        }
        adam.step(&mut w, &gw, lr);
    }
    Ok(Learned {
        weights: best.2,
        per_token,
        losses,
        best_step: best.1,
    })
}

/// The examples' mean loss under θ (no gradient; batches of 8 weighted by their target tokens).
pub fn mean_loss(engine: &Engine<'_>, theta: &[f32], shape: (usize, usize), examples: &[Encoded]) -> Result<f32> {
    let t = Tensor::from_slice(theta, shape, &engine.device)?;
    let total: usize = examples.iter().map(Encoded::target_count).sum();
    let mut loss = 0f32;
    for chunk in examples.chunks(8) {
        let refs: Vec<&Encoded> = chunk.iter().collect();
        let share = chunk.iter().map(Encoded::target_count).sum::<usize>() as f32 / total.max(1) as f32;
        loss +=
            tpv_shared::model::host::scalar::<f32>(&engine.loss(&t, &refs, None)?.loss.to_dtype(DType::F32)?)? * share;
    }
    Ok(loss)
}

/// [`learn_weights`] without gradients, for when a backward pass is too expensive (as LoraHub
/// learns LoRA weights): an evolution strategy — each generation `population` candidates drawn
/// around the mean (Gaussian, step σ from 0.5, SplitMix64 `seed`), the better half recombined
/// with log-rank weights into the next mean, σ shrinking when no candidate beats the best. Only
/// forward passes: `generations × population + 1` evaluations of the examples' loss.
pub fn search_weights(
    engine: &Engine<'_>,
    examples: &[Encoded],
    origin: &PromptTensor,
    taus: &[PromptTensor],
    init: &[f64],
    (generations, population, seed): (usize, usize, u64),
) -> Result<Learned> {
    if examples.is_empty() {
        bail!("no examples to learn the weights on");
    }
    let shape = (origin.rows(), origin.dim());
    let eval = |w: &[f32]| mean_loss(engine, &compose(origin, taus, w, false), shape, examples);
    let mut rng = tpv_shared::merge::SplitMix64::new(seed);
    // A standard normal draw (Box–Muller).
    let mut normal = move || {
        let (u1, u2) = (rng.next_f64().max(1e-12), rng.next_f64());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    };
    let mut mean: Vec<f32> = init.iter().map(|&x| x as f32).collect();
    let first = eval(&mean)?;
    let (mut best, mut losses, mut best_step) = ((first, mean.clone()), vec![first], 0);
    let mut sigma = 0.5f32;
    let population = population.max(2);
    let parents = population / 2;
    let weights: Vec<f32> = (0..parents)
        .map(|i| ((parents as f32 + 0.5).ln() - (i as f32 + 1.0).ln()).max(0.0))
        .collect();
    let wsum: f32 = weights.iter().sum();
    for generation in 1..=generations {
        let mut scored: Vec<(f32, Vec<f32>)> = Vec::with_capacity(population);
        for _ in 0..population {
            let w: Vec<f32> = mean.iter().map(|m| m + sigma * normal()).collect();
            let loss = eval(&w)?;
            if loss.is_finite() {
                scored.push((loss, w));
            }
        }
        scored.sort_by(|a, b| a.0.total_cmp(&b.0));
        let Some((gen_best, _)) = scored.first().cloned() else {
            bail!("every candidate's loss is non-finite at generation {generation}");
        };
        if gen_best < best.0 {
            best = scored[0].clone();
            best_step = generation;
        } else {
            sigma *= 0.7;
        }
        losses.push(gen_best);
        mean = (0..mean.len())
            .map(|k| scored.iter().zip(&weights).map(|((_, w), r)| r * w[k]).sum::<f32>() / wsum)
            .collect();
    }
    Ok(Learned {
        weights: best.1,
        per_token: false,
        losses,
        best_step,
    })
}

/// Optimizer steps and Adam's rate of a study's learned combination, by default
/// (`study.transfer.combination_steps`, `combination_learning_rate`).
pub const STUDY_STEPS: usize = 50;
pub const STUDY_LEARNING_RATE: f64 = 0.05;

/// The weights of θ₀ + Σ wᵢτᵢ (one per vector, from 1: the TPV sum) learned on the training
/// examples of `config` (a transfer job's shots), through its model and encoding, in `steps` Adam
/// steps at `learning_rate`; and what the learning did, for the run file.
pub fn learn_on(
    config: &crate::config::Config,
    origin: &tpv_shared::SoftPrompt,
    vectors: &[&tpv_shared::SoftPrompt],
    (steps, learning_rate): (usize, f64),
) -> Result<(Vec<f64>, serde_json::Value)> {
    use anyhow::Context;
    let device = crate::models::device(&config.model.device)?;
    let dtype = crate::models::dtype(&config.model.dtype)?;
    let loaded = crate::models::load_cached(&config.model.path, dtype, &device)
        .with_context(|| format!("loading model {}", config.model.path))?;
    let encode = super::encode_options(config);
    let mut examples = Vec::new();
    for splits in crate::data::load_all(&config.data).context("loading the shots")? {
        for rec in &splits.train {
            examples.push(loaded.encode(&splits.task, rec, &encode)?);
        }
    }
    let taus = vectors
        .iter()
        .map(|v| v.vector_values())
        .collect::<tpv_shared::Result<Vec<_>>>()?;
    let engine = Engine::frozen(&loaded, &device, config.train.gradient_checkpointing);
    let learned = learn_weights(
        &engine,
        &examples,
        &origin.values,
        &taus,
        &vec![1.0; vectors.len()],
        false,
        (steps, learning_rate),
    )?;
    let summary = serde_json::json!({
        "examples": examples.len(),
        "weights": learned.weights,
        "losses": learned.losses,
        "best_step": learned.best_step,
        "steps": steps,
        "learning_rate": learning_rate,
    });
    Ok((learned.weights.iter().map(|&w| f64::from(w)).collect(), summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_weights_each_vector_or_each_row() {
        let o = PromptTensor::new(2, 2, vec![1.0, 1.0, 1.0, 1.0]).unwrap();
        let a = PromptTensor::new(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let b = PromptTensor::new(2, 2, vec![0.0, 2.0, 2.0, 0.0]).unwrap();
        let taus = [a, b];
        assert_eq!(compose(&o, &taus, &[1.0, 0.5], false), [2.0, 2.0, 2.0, 2.0]);
        // Per row: a's weights (1, 0), b's (0, 1).
        assert_eq!(compose(&o, &taus, &[1.0, 0.0, 0.0, 1.0], true), [2.0, 1.0, 3.0, 1.0]);
    }
}
