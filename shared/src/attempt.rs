//! ATTEMPT (Asai et al., EMNLP 2022), the paper's multi-task transfer baseline: frozen source
//! prompts P₁…P_K, a trainable target prompt P_t and a small attention module mix one prompt per
//! input x (its token embeddings E_x):
//!
//! ```text
//! h    = LayerNorm(W_upᵀ · SiLU(W_downᵀ · maxpool_tokens(E_x)))   [d]    W_down d×r, W_up r×d
//! q_j  = maxpool_rows(P_j)  for j ∈ {1…K, t}                       [d]
//! a    = softmax(q · h / T)                                         [K+1]
//! P(x) = P_t + Σ_j a_j P_j                                          [R, d]
//! ```
//!
//! as the replication the paper ran (DisAI-Replication-Challenge/ATTEMPT, `cpeft/attempt/model.py`)
//! computes it: r = R (the prompt's rows), no biases, LayerNorm with eps 1e-5 and a learned
//! scale and shift, the target prompt also among the attended prompts, and T = d·e (its 2087 for
//! T5-base's d = 768). One deliberate difference: the input's max-pool runs over its own tokens,
//! not over the batch's padding, so an input gets the same prompt in every batch.
//!
//! Values live in [`Module`] (what a run file stores besides the target prompt); the forward
//! pass is [`mix`] on candle tensors, differentiable in the target prompt and the module
//! (docs/method.md §9).

use candle_core::{D, DType, Device, Tensor};

pub use crate::attempt_params::{Module, default_temperature};
use crate::eval::Encoded;
use crate::model::load::Model;
use crate::tensor::PromptTensor;

/// torch's `nn.LayerNorm` default.
pub const LAYER_NORM_EPS: f64 = 1e-5;

/// The model-side methods of the plain [`Module`].
impl Module {
    /// The target prompt and this module's trained values as tensors on `device`.
    pub fn parts(&self, target: &PromptTensor, device: &Device) -> candle_core::Result<Parts> {
        let d = target.dim();
        Ok(Parts {
            target: on(target, device)?,
            w_down: on(&self.w_down, device)?,
            w_up: on(&self.w_up, device)?,
            ln_weight: on(&self.ln_weight, device)?.reshape(d)?,
            ln_bias: on(&self.ln_bias, device)?.reshape(d)?,
        })
    }

    /// The sources on `device`, [K, R, d].
    pub fn sources_on(&self, device: &Device) -> candle_core::Result<Tensor> {
        let k = self.source_count();
        let rows = self.sources.rows() / k.max(1);
        on(&self.sources, device)?.reshape((k, rows, self.sources.dim()))
    }
}

fn on(p: &PromptTensor, device: &Device) -> candle_core::Result<Tensor> {
    Tensor::from_slice(p.as_slice(), (p.rows(), p.dim()), device)
}

/// The trained parts as tensors (variables while training): target [R, d], W_down [d, r],
/// W_up [r, d], LayerNorm scale and shift [d].
#[derive(Debug, Clone)]
pub struct Parts {
    pub target: Tensor,
    pub w_down: Tensor,
    pub w_up: Tensor,
    pub ln_weight: Tensor,
    pub ln_bias: Tensor,
}

impl Parts {
    /// In the order of a flat parameter vector: target, W_down, W_up, scale, shift.
    pub fn all(&self) -> [&Tensor; 5] {
        [&self.target, &self.w_down, &self.w_up, &self.ln_weight, &self.ln_bias]
    }

    /// Each part through `f` (e.g. into a variable).
    pub fn try_map(&self, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Self> {
        Ok(Self {
            target: f(&self.target)?,
            w_down: f(&self.w_down)?,
            w_up: f(&self.w_up)?,
            ln_weight: f(&self.ln_weight)?,
            ln_bias: f(&self.ln_bias)?,
        })
    }
}

/// Each example's input max-pooled over its tokens' embeddings, [B, d] in f32 (constant: no
/// gradient reaches the model).
pub fn pooled_inputs(model: &Model, batch: &[&Encoded]) -> candle_core::Result<Tensor> {
    let emb = model.embeddings();
    let rows = batch
        .iter()
        .map(|e| {
            let ids = e.input();
            if ids.is_empty() {
                candle_core::bail!("ATTEMPT needs an input to attend from; an example has none");
            }
            let idx = Tensor::from_slice(ids, ids.len(), emb.device())?;
            emb.index_select(&idx, 0)?.to_dtype(DType::F32)?.max(0)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::stack(&rows, 0)
}

/// The per-input prompts [B, R, d] and the attention [B, K+1] (the target prompt last) for
/// inputs pooled as [`pooled_inputs`] does, `sources` [K, R, d].
pub fn mix(
    parts: &Parts,
    sources: &Tensor,
    pooled: &Tensor,
    temperature: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let (rows, d) = parts.target.dims2()?;
    let down = pooled.matmul(&parts.w_down)?.silu()?;
    let up = down.matmul(&parts.w_up)?;
    let h = layer_norm(&up, &parts.ln_weight, &parts.ln_bias)?;
    let stacked = Tensor::cat(&[sources, &parts.target.unsqueeze(0)?], 0)?;
    let keys = stacked.max(1)?; // [K+1, d]
    let scores = (h.matmul(&keys.t()?)? / temperature)?;
    let attention = crate::model::ops::softmax_last_composed(&scores)?;
    let n = stacked.dim(0)?;
    let mixed = attention
        .matmul(&stacked.reshape((n, rows * d))?)?
        .reshape((pooled.dim(0)?, rows, d))?
        .broadcast_add(&parts.target)?;
    Ok((mixed, attention))
}

/// The per-row prompts of `batch` under the target prompt and module `parts` (variables while
/// training: the gradient reaches them through [`mix`]).
pub fn prompts(
    model: &Model,
    parts: &Parts,
    sources: &Tensor,
    temperature: f64,
    batch: &[&Encoded],
) -> candle_core::Result<(Vec<Tensor>, Tensor)> {
    let pooled = pooled_inputs(model, batch)?.to_device(parts.target.device())?;
    let (mixed, attention) = mix(parts, sources, &pooled, temperature)?;
    let rows = (0..batch.len())
        .map(|i| mixed.get(i))
        .collect::<candle_core::Result<_>>()?;
    Ok((rows, attention))
}

/// Every example scored under its own mixed prompt (batches of `batch_size` rows ordered by input
/// length, as [`crate::eval::Loaded::evaluate_prompts`] orders them), and the mean attention over
/// the examples, one weight per source and the target prompt last.
pub fn evaluate(
    loaded: &crate::eval::Loaded,
    target: &PromptTensor,
    module: &Module,
    examples: &[&Encoded],
    scorer: &crate::eval::Scorer,
    batch_size: usize,
) -> std::result::Result<(Vec<crate::eval::ExampleResult>, Vec<f64>), crate::eval::EvalError> {
    let device = loaded.model.embeddings().device().clone();
    let (parts, sources) = (module.parts(target, &device)?, module.sources_on(&device)?);
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].input().len());
    let mut out: Vec<Option<crate::eval::ExampleResult>> = vec![None; examples.len()];
    let mut attention_sum = vec![0f64; module.source_count() + 1];
    for chunk in order.chunks(batch_size.max(1)) {
        let batch: Vec<&Encoded> = chunk.iter().map(|&i| examples[i]).collect();
        let (rows, attention) = prompts(&loaded.model, &parts, &sources, module.temperature, &batch)?;
        for row in crate::model::host::vec2::<f32>(&attention)? {
            for (s, a) in attention_sum.iter_mut().zip(row) {
                *s += f64::from(a);
            }
        }
        let pairs: Vec<(&Tensor, &Encoded)> = rows.iter().zip(batch.iter().copied()).collect();
        for (&i, r) in chunk.iter().zip(loaded.evaluate_rows(&pairs, scorer)?) {
            out[i] = Some(r);
        }
    }
    let n = examples.len().max(1) as f64;
    Ok((
        out.into_iter().flatten().collect(),
        attention_sum.into_iter().map(|s| s / n).collect(),
    ))
}

/// torch's LayerNorm over the last dimension (biased variance), of differentiable ops.
fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor) -> candle_core::Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered
        .broadcast_div(&(var + LAYER_NORM_EPS)?.sqrt()?)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn tensor(rows: usize, dim: usize, f: impl Fn(usize) -> f32) -> PromptTensor {
        PromptTensor::new(rows, dim, (0..rows * dim).map(f).collect()).unwrap()
    }

    #[test]
    fn trained_values_round_trip_and_shapes_are_checked() {
        let a = tensor(3, 4, |i| i as f32);
        let b = tensor(3, 4, |i| -(i as f32));
        let m = Module::init(&[&a, &b], vec!["a".into(), "b".into()], 7).unwrap();
        m.validate(3, 4).unwrap();
        assert_eq!(m.trained().len(), 4 * 3 + 3 * 4 + 4 + 4);
        assert_eq!(m.trained_len(), m.trained().len());
        // Every draw is inside the bound and the two projections differ.
        assert!(m.w_down.as_slice().iter().all(|v| v.abs() <= 0.5));
        assert!(m.w_up.as_slice().iter().all(|v| v.abs() <= 1.0 / 3f32.sqrt()));
        let again = m.with_trained(&m.trained()).unwrap();
        assert_eq!(again, m);
        let flat = m.to_flat();
        assert_eq!(
            Module::from_flat(m.source_labels.clone(), 3, m.temperature, (3, 4), &flat).unwrap(),
            m
        );
        assert!(Module::from_flat(m.source_labels.clone(), 3, m.temperature, (3, 4), &flat[1..]).is_err());
        assert!(Module::from_flat(m.source_labels.clone(), 3, m.temperature, (3, 4), &flat[..20]).is_err());
        assert!(m.with_trained(&[0.0; 3]).is_err());
        assert!(m.validate(4, 4).is_err(), "sources are 2·3 rows, not 2·4");
        let mut hot = m.clone();
        hot.ln_bias.as_mut_slice()[1] = f32::NAN;
        assert!(matches!(hot.validate(3, 4), Err(Error::NonFinite { .. })));
        assert!(Module::init(&[&a], vec![], 7).is_err());
        assert!(Module::init(&[&a, &tensor(2, 4, |_| 0.0)], vec!["a".into(), "b".into()], 7).is_err());
    }
}
