//! Differentiable building blocks. candle's fused `softmax_last_dim`, `rms_norm`, `rope*` and sdpa
//! have no backward pass (gradients silently stop); these are written with ops that have one, so
//! the gradient of the loss reaches the soft prompt through every layer.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, D, DType, Layout, Result, Shape, Tensor};
use candle_nn::Linear;

use super::gpu::FusedOp;
use crate::merge::SplitMix64;

/// f32 on the CPU (native and wasm): where the CPU's layouts of frozen layers (Wᵀ, panels) and
/// its attention kernel ([`super::attention`]) apply.
fn cpu_f32(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// Whether the fused op `op` of [`super::fused`] applies: f32 on the CPU, or f32 and bf16 on a
/// CUDA device whose kernels for it the trainer installed and its self-test passed
/// ([`super::gpu`]).
fn fused(xs: &Tensor, op: FusedOp) -> bool {
    cpu_f32(xs)
        || (xs.device().is_cuda() && matches!(xs.dtype(), DType::F32 | DType::BF16) && super::gpu::uses_kernel(op))
}

/// An additive attention mask of `shape` from host data (0 where a query may see a key, f32::MIN
/// where not), in `dtype` on `device`. f32::MIN does not fit bf16 or f16 (it rounds to −∞, and a
/// row with every key blocked — a padding query — then gives NaN); blocked cells take the
/// dtype's own finite minimum instead, as transformers' `torch.finfo(dtype).min`.
pub fn additive_mask(
    mut data: Vec<f32>,
    shape: impl Into<Shape>,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let floor = match dtype {
        DType::BF16 => half::bf16::MIN.to_f32(),
        DType::F16 => half::f16::MIN.to_f32(),
        _ => f32::MIN,
    };
    if floor > f32::MIN {
        for v in &mut data {
            *v = v.max(floor);
        }
    }
    Tensor::from_vec(data, shape, device)?.to_dtype(dtype)
}

/// Softmax over the last dimension.
pub fn softmax_last(xs: &Tensor) -> Result<Tensor> {
    if fused(xs, FusedOp::Softmax) {
        return super::fused::softmax(xs, 1.0, None);
    }
    softmax_last_composed(xs)
}

/// softmax(x · scale + bias) over the last dimension of an `x` of [B, H, T, S], with a frozen
/// `bias` broadcast to it (an attention mask, T5's position bias).
pub fn attention_softmax(xs: &Tensor, scale: f64, bias: &Tensor) -> Result<Tensor> {
    if fused(xs, FusedOp::Softmax)
        && bias.dtype() == xs.dtype()
        && !bias.track_op()
        && super::fused::bias_fits(xs, bias)
    {
        return super::fused::softmax(xs, scale as f32, Some(bias));
    }
    let scaled = if scale == 1.0 { xs.clone() } else { (xs * scale)? };
    softmax_last_composed(&scaled.broadcast_add(bias)?)
}

/// Softmax over the last dimension of candle ops. The max is detached: subtracting a constant
/// does not change the result, so no gradient needs to flow through it.
pub fn softmax_last_composed(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    let sum = exp.sum_keepdim(D::Minus1)?;
    exp.broadcast_div(&sum)
}

/// log-softmax over the last dimension.
pub fn log_softmax_last(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&lse)
}

/// RMS normalization as LLaMA and T5 compute it: x · rsqrt(mean(x²) + eps) · w, in f32. The
/// weight is frozen.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(xs, FusedOp::RmsNorm) && weight.dtype() == xs.dtype() && !weight.track_op() {
        return super::fused::rms_norm(xs, weight, eps);
    }
    rms_norm_composed(xs, weight, eps)
}

/// [`rms_norm`] of candle ops.
pub fn rms_norm_composed(xs: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xs.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.to_dtype(dtype)?.broadcast_mul(weight)
}

/// Rotary embedding in the HF (non-interleaved, "rotate half") layout: x·cos + rotate_half(x)·sin,
/// with `cos`/`sin` broadcastable to `xs` ([.., T, head_dim]).
pub fn rope(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let tables_fit = xs.rank() == 4
        && cos.rank() == 4
        && cos.dims() == sin.dims()
        && cos.dim(1)? == 1
        && (cos.dim(0)? == 1 || cos.dim(0)? == xs.dim(0)?)
        && cos.dims()[2..] == xs.dims()[2..];
    if fused(xs, FusedOp::Rope) && tables_fit && cos.dtype() == xs.dtype() && sin.dtype() == xs.dtype() {
        return super::fused::rope(xs, cos, sin);
    }
    rope_composed(xs, cos, sin)
}

/// [`rope`] of candle ops.
pub fn rope_composed(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?
}

/// silu(gate) ⊙ up, LLaMA's gated MLP activation.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(gate, FusedOp::Swiglu) && up.dtype() == gate.dtype() {
        return super::fused::swiglu(gate, up);
    }
    gate.silu()? * up
}

/// GELU with the tanh approximation (`gelu_new` in transformers; T5 v1.1's activation).
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    // 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    let inner = ((xs.powf(3.0)? * 0.044715)? + xs)?;
    let t = (inner * (2.0f64 / std::f64::consts::PI).sqrt())?.tanh()?;
    ((t + 1.0)? * 0.5)?.mul(xs)
}

/// Inverted dropout with keep-probability 1 − p, as torch does it in training mode, with masks
/// drawn from a seeded [`SplitMix64`] so a run is reproducible (and resumable) on every platform.
/// `p == 0` returns the input unchanged.
pub fn dropout(xs: &Tensor, p: f32, rng: &mut SplitMix64) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs.clone());
    }
    xs * dropout_mask(xs.shape(), xs, p, rng)?
}

/// The multipliers of [`dropout`] for a tensor of `shape`, on the device and in the dtype of
/// `like`: 0 with probability `p`, else 1/(1 − p), one draw of `rng` per element in order (made
/// in parallel, [`super::fused::dropout_multipliers`]; on a GPU with the trainer's kernels, there).
fn dropout_mask(shape: &Shape, like: &Tensor, p: f32, rng: &mut SplitMix64) -> Result<Tensor> {
    let (n, state) = (shape.elem_count(), rng.state());
    rng.skip(n as u64);
    if like.device().is_cuda() && fused(like, FusedOp::Dropout) {
        return super::fused::dropout_mask(like, shape, state, p);
    }
    Tensor::from_vec(super::fused::dropout_multipliers(state, p, n), shape, like.device())?.to_dtype(like.dtype())
}

/// Attention: softmax(scale · q·kᵀ + bias), dropped out with probability `dropout.0` in training,
/// times v. q is `[B, H, Tq, D]`, k and v `[B, Hkv, Tk, D]` with H a multiple of Hkv (the query
/// heads sharing a key/value head consecutive, as HF's `repeat_kv` orders them); the frozen `bias`
/// is `[B or 1, H or 1, Tq or 1, Tk]`. Returns `[B, H, Tq, D]`. On the CPU in f32 this is
/// [`super::attention::attention`], which never writes the scores to memory; the dropout draws
/// are the same either way, so a seeded run is too.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    dropout: Option<(f32, &mut SplitMix64)>,
) -> Result<Tensor> {
    let (b, h, tq, _) = q.dims4()?;
    let tk = k.dim(2)?;
    let mask = match dropout {
        Some((p, rng)) if p > 0.0 => Some(dropout_mask(&(b, h, tq, tk).into(), q, p, rng)?),
        _ => None,
    };
    let bias_ok = bias
        .is_none_or(|t| t.dtype() == DType::F32 && !t.track_op() && super::fused::dims_fit(&[b, h, tq, tk], t.dims()));
    if cpu_f32(q) && k.dtype() == DType::F32 && v.dtype() == DType::F32 && bias_ok {
        return super::attention::attention(q, k, v, scale as f32, bias, mask.as_ref());
    }
    attention_composed(q, k, v, scale, bias, mask.as_ref())
}

/// [`attention`] of candle ops, with the dropout multipliers `mask` ([B, H, Tq, Tk]) given.
pub fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    grouped(q, k, v, |scores| {
        let probs = match bias {
            Some(bias) => attention_softmax(&scores, scale, bias)?,
            None => softmax_last(&(scores * scale)?)?,
        };
        match mask {
            Some(m) => probs * m,
            None => Ok(probs),
        }
    })
}

/// [`attention`] with Gemma 2's soft-capped scores: softmax(cap · tanh(scale · q·kᵀ / cap) +
/// mask) · v, of candle ops (the capping sits between the product and the mask, where the CPU
/// kernel has no place for it). `mask` is `[B or 1, 1, Tq, Tk]`.
pub fn attention_softcapped(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, cap: f64, mask: &Tensor) -> Result<Tensor> {
    grouped(q, k, v, |scores| {
        let capped = ((scores * (scale / cap))?.tanh()? * cap)?;
        softmax_last(&capped.broadcast_add(&mask.to_dtype(capped.dtype())?)?)
    })
}

/// Attention of candle ops with grouped query heads: `probs` turns the scores q·kᵀ `[B, H, Tq,
/// Tk]` into attention weights, which then weigh v. The n_rep query heads that share a key/value
/// head form one `[n_rep·Tq, D]` block against that head's keys, so keys and values are not
/// repeated.
fn grouped(q: &Tensor, k: &Tensor, v: &Tensor, probs: impl FnOnce(Tensor) -> Result<Tensor>) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    let (_, hkv, tk, _) = k.dims4()?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads over {hkv} key/value heads");
    }
    let n_rep = h / hkv;
    let q = q.contiguous()?.reshape((b, hkv, n_rep * tq, d))?;
    let scores = q.matmul(&k.contiguous()?.t()?)?.reshape((b, h, tq, tk))?;
    probs(scores)?
        .reshape((b, hkv, n_rep * tq, tk))?
        .matmul(&v.contiguous()?)?
        .reshape((b, h, tq, d))
}

/// Mean of the negative log-likelihood of `targets` ([N], u32) under `logits` ([N, V]), and the
/// per-row NLL ([N]).
pub fn nll(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let logits = logits.to_dtype(DType::F32)?;
    if fused(&logits, FusedOp::Nll) {
        let picked = super::fused::nll(&logits, targets)?;
        return Ok((picked.mean_all()?, picked));
    }
    nll_composed(&logits, targets)
}

/// [`nll`] of candle ops.
pub fn nll_composed(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let logp = log_softmax_last(&logits.to_dtype(DType::F32)?)?;
    let picked = logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    Ok((picked.mean_all()?, picked))
}

/// A value `y` computed from `x` without a graph (x detached), made differentiable w.r.t. `x`
/// alone: the forward pass copies `y` (a custom op makes its own storage), the backward gives `x`
/// the gradient `grad_x(dy)` and nothing else. For a product with a frozen weight that is dx =
/// dy·W: candle's matmul backward also computes (and accumulates, in a weight-sized buffer) the
/// gradient of the frozen weight — a third of a training step's matmul work and most of its
/// memory, spent on a gradient nobody reads. For a block ([`relu_ff`], [`swiglu_ff`]) it is one
/// node in place of the many its ops would record.
struct InputGrad(Box<GradFn>);

/// dy ↦ dx.
type GradFn = dyn Fn(&Tensor) -> Result<Tensor> + Send + Sync;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "input-gradient"
    }

    // `y` is a fresh contiguous result: cloning its storage is cloning the value.
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, y: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn cuda_fwd(&self, _: &CudaStorage, _: &Layout, y: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        Ok((y.try_clone(l)?, l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some((self.0)(grad)?), None))
    }
}

/// `y` as a function of `x` whose gradient is `grad_x(dy)` ([`InputGrad`]); `y` itself when `x`
/// needs no gradient.
fn with_input_grad(
    x: &Tensor,
    y: Tensor,
    grad_x: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !x.track_op() {
        return Ok(y);
    }
    x.apply_op2(&y.contiguous()?, InputGrad(Box::new(grad_x)))
}

/// `x` ([.., K]) times a 2-D `m` ([K, N]) as one matrix product over all of `x`'s rows, rather
/// than one per leading index (candle's broadcast matmul): a few large products keep a CPU's
/// cores busier than many small ones.
fn rows_matmul(x: &Tensor, m: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    if dims.len() <= 2 {
        return x.matmul(m);
    }
    let k = dims[dims.len() - 1];
    let mut out = dims[..dims.len() - 1].to_vec();
    out.push(m.dim(1)?);
    x.contiguous()?.reshape(((), k))?.matmul(m)?.reshape(out)
}

/// A frozen linear layer y = x·Wᵀ (+ b): weight and bias receive no gradient. On the CPU in f32
/// a layer with at least as many inputs as outputs (attention's projections, the down
/// projection) keeps Wᵀ ([in, out], row-major) instead of W, in the same memory: gemm computes
/// x·Wᵀ faster from a row-major right operand than from a transposed one, and the backward's
/// dx = dy·W loses less reading it the other way; a widening layer (up projection) gains little
/// forward and loses more backward, so it keeps W (the rates per shape: bench/README.md). In
/// wasm every f32 layer keeps Wᵀ in panels for [`super::panel`]'s kernel instead.
#[derive(Debug, Clone)]
pub struct FrozenLinear {
    weight: Tensor,
    stored: Stored,
    bias: Option<Tensor>,
}

/// What [`FrozenLinear::weight`] holds.
#[derive(Debug, Clone, Copy)]
enum Stored {
    /// W `[out, in]`.
    W,
    /// Wᵀ `[in, out]`.
    Transposed,
    /// Wᵀ in panels (of [`super::panel::pack`]) for an `out` × `inp` W.
    Panels { out: usize, inp: usize },
}

impl FrozenLinear {
    pub fn new(layer: &Linear) -> Result<Self> {
        let w = layer.weight();
        if cfg!(target_arch = "wasm32") && cpu_f32(w) {
            return Self::with_panels(layer);
        }
        let (out, inp) = w.dims2()?;
        let transposed = cpu_f32(w) && inp >= out;
        Ok(Self {
            weight: if transposed { transpose_f32(w)? } else { w.clone() },
            stored: if transposed { Stored::Transposed } else { Stored::W },
            bias: layer.bias().cloned(),
        })
    }

    /// The browser's layout, which [`Self::new`] picks in wasm for f32 on the CPU: Wᵀ packed
    /// in panels for [`super::panel`]'s kernel (native builds may ask for it, as its tests do).
    pub fn with_panels(layer: &Linear) -> Result<Self> {
        let w = layer.weight();
        if !cpu_f32(w) {
            candle_core::bail!(
                "panel layout: the weight is {:?} on {:?}, not f32 on the CPU",
                w.dtype(),
                w.device()
            );
        }
        let (out, inp) = w.dims2()?;
        let w = w.contiguous()?;
        let panels = {
            let (storage, layout) = w.storage_and_layout();
            let src = super::fused::contiguous::<f32>(super::fused::cpu_storage(&storage)?, layout)?;
            super::panel::pack(src, out, inp)
        };
        let len = panels.len();
        Ok(Self {
            weight: Tensor::from_vec(panels, len, w.device())?,
            stored: Stored::Panels { out, inp },
            bias: layer.bias().cloned(),
        })
    }

    /// Whether W is held as a plain tensor (either way round) and there is no bias: what the
    /// fused blocks ([`relu_ff`], [`swiglu_ff`]) take.
    fn dense(&self) -> bool {
        self.bias.is_none() && !matches!(self.stored, Stored::Panels { .. })
    }

    /// W, `[out, in]` (a view when Wᵀ is stored) of a [`Self::dense`] layer.
    fn w(&self) -> Result<Tensor> {
        match self.stored {
            Stored::W => Ok(self.weight.clone()),
            Stored::Transposed => self.weight.t(),
            Stored::Panels { .. } => candle_core::bail!("a layer in panels has no W to hand out"),
        }
    }

    /// Loads `weight` (and `bias` when `bias`) of an `inp` → `out` layer.
    pub fn load(inp: usize, out: usize, bias: bool, vb: candle_nn::VarBuilder) -> Result<Self> {
        Self::new(&candle_nn::linear_b(inp, out, bias, vb)?)
    }
}

/// The transpose of a 2-D f32 tensor on the CPU, contiguous: in 32 × 32 tiles, on the pool's
/// threads (candle's strided copy, element by element, added half again to a model's loading).
fn transpose_f32(w: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    let (rows, cols) = w.dims2()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let src = super::fused::contiguous::<f32>(super::fused::cpu_storage(&storage)?, layout)?;
    let mut dst = vec![0f32; rows * cols];
    // Output rows j0..j0 + TILE (input columns) per task; none when the weight is empty.
    let chunk = (TILE * rows).max(1);
    dst.par_chunks_mut(chunk).enumerate().for_each(|(jb, out)| {
        let j0 = jb * TILE;
        let jn = out.len() / rows;
        for i0 in (0..rows).step_by(TILE) {
            for j in 0..jn {
                for i in i0..(i0 + TILE).min(rows) {
                    out[j * rows + i] = src[i * cols + j0 + j];
                }
            }
        }
    });
    Tensor::from_vec(dst, (cols, rows), w.device())
}

/// A frozen linear layer: the gradient flows to `x` only.
pub fn linear(layer: &FrozenLinear, x: &Tensor) -> Result<Tensor> {
    let y = match layer.stored {
        Stored::W => rows_matmul(&x.detach(), &layer.weight.t()?)?,
        Stored::Transposed => rows_matmul(&x.detach(), &layer.weight)?,
        Stored::Panels { out, inp } => x.contiguous()?.apply_op1(PanelProduct {
            panels: layer.weight.clone(),
            out,
            inp,
            transposed: false,
        })?,
    };
    let y = match &layer.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    match layer.stored {
        Stored::W | Stored::Transposed => {
            let w = layer.w()?;
            with_input_grad(x, y, move |dy| rows_matmul(dy, &w))
        }
        // The product's own backward gives x its gradient.
        Stored::Panels { .. } => Ok(y),
    }
}

/// T5's feed-forward block, y = dropout(relu(x·Wiᵀ))·Woᵀ, with `dropout` = (p, draws) in
/// training. On the CPU in f32, when x needs a gradient, the block is one node of the graph whose
/// backward is dy·Wo, masked where the hidden activation is positive (times 1/(1 − p)), times Wi.
/// Composed, candle's backward passes over the `[.., d_ff]` activations a dozen times (relu's
/// comparison, conversion and product, dropout's product, and a zeroed buffer plus an addition
/// for each of three gradients) and keeps three or four copies of them alive; this keeps one.
/// The values and the dropout draws are the composed ones.
pub fn relu_ff(
    wi: &FrozenLinear,
    wo: &FrozenLinear,
    x: &Tensor,
    dropout: Option<(f32, &mut SplitMix64)>,
) -> Result<Tensor> {
    if !(fused(x, FusedOp::ReluGrad) && x.track_op() && wi.dense() && wo.dense()) {
        let h = linear(wi, x)?.relu()?;
        let h = match dropout {
            Some((p, rng)) => self::dropout(&h, p, rng)?,
            None => h,
        };
        return linear(wo, &h);
    }
    // The forward without a graph (x detached); the gradient is attached below.
    let h = linear(wi, &x.detach())?.relu()?;
    let (h, keep) = match dropout {
        Some((p, rng)) if p > 0.0 => (self::dropout(&h, p, rng)?, 1.0 / (1.0 - p)),
        _ => (h, 1.0),
    };
    let y = linear(wo, &h)?;
    let (wi, wo) = (wi.w()?, wo.w()?);
    with_input_grad(x, y, move |dy| {
        let da = rows_matmul(dy, &wo)?.apply_op2_no_bwd(&h, &super::fused::ReluGrad { keep })?;
        rows_matmul(&da, &wi)
    })
}

/// LLaMA's feed-forward block, y = (silu(x·Wgᵀ) ⊙ x·Wuᵀ)·Wdᵀ. On the CPU in f32, when x needs a
/// gradient, one node of the graph (as [`relu_ff`]) whose backward is dy·Wd through SwiGLU's
/// gradient, times Wg and Wu: candle's composed backward would zero and add a buffer for each of
/// the three `[.., d_ff]` gradients, and keep the gated product alive besides its two inputs.
pub fn swiglu_ff(gate: &FrozenLinear, up: &FrozenLinear, down: &FrozenLinear, x: &Tensor) -> Result<Tensor> {
    if !(fused(x, FusedOp::Swiglu) && x.track_op() && [gate, up, down].iter().all(|l| l.dense())) {
        return linear(down, &swiglu(&linear(gate, x)?, &linear(up, x)?)?);
    }
    // The forward without a graph (x detached); the gradient is attached below.
    let x0 = x.detach();
    let (a, b) = (linear(gate, &x0)?, linear(up, &x0)?);
    let y = linear(down, &swiglu(&a, &b)?)?;
    let (wg, wu, wd) = (gate.w()?, up.w()?, down.w()?);
    with_input_grad(x, y, move |dy| {
        let (da, db) = super::fused::swiglu_grad(&rows_matmul(dy, &wd)?, &a, &b)?;
        rows_matmul(&da, &wg)? + rows_matmul(&db, &wu)?
    })
}

/// Gemma's feed-forward block, y = (gelu_tanh(x·Wgᵀ) ⊙ x·Wuᵀ)·Wdᵀ: on the CPU in f32 one node
/// of the graph as [`swiglu_ff`] (the fused GeGLU and its gradient), elsewhere candle ops.
pub fn geglu_ff(gate: &FrozenLinear, up: &FrozenLinear, down: &FrozenLinear, x: &Tensor) -> Result<Tensor> {
    if !cpu_f32(x) {
        return linear(down, &(gelu_tanh(&linear(gate, x)?)? * linear(up, x)?)?);
    }
    if !(x.track_op() && [gate, up, down].iter().all(|l| l.dense())) {
        return linear(down, &super::fused::geglu(&linear(gate, x)?, &linear(up, x)?)?);
    }
    let x0 = x.detach();
    let (a, b) = (linear(gate, &x0)?, linear(up, &x0)?);
    let y = linear(down, &super::fused::geglu(&a, &b)?)?;
    let (wg, wu, wd) = (gate.w()?, up.w()?, down.w()?);
    with_input_grad(x, y, move |dy| {
        let (da, db) = super::fused::geglu_grad(&rows_matmul(dy, &wd)?, &a, &b)?;
        rows_matmul(&da, &wg)? + rows_matmul(&db, &wu)?
    })
}

/// x `[.., inp]` times Wᵀ held in panels: `[.., out]`, with dx = dy·W as its backward; or, when
/// `transposed`, that backward: dy `[.., out]` times W, `[.., inp]`.
#[derive(Clone)]
struct PanelProduct {
    panels: Tensor,
    out: usize,
    inp: usize,
    transposed: bool,
}

/// Runs `f` on a contiguous f32 `x` whose last dimension is `k` (its row count, its data) and
/// `panels`' data, giving a result whose last dimension is `n`.
fn with_panels(
    panels: &Tensor,
    s: &CpuStorage,
    l: &Layout,
    (k, n): (usize, usize),
    f: impl FnOnce(&[f32], usize, &[f32]) -> Vec<f32>,
) -> Result<(CpuStorage, Shape)> {
    let x = super::fused::contiguous::<f32>(s, l)?;
    let mut dims = l.dims().to_vec();
    match dims.last_mut() {
        Some(last) if *last == k => *last = n,
        _ => candle_core::bail!("panel product: a [.., {k}] operand expected, got {:?}", l.dims()),
    }
    let (storage, layout) = panels.storage_and_layout();
    let p = super::fused::contiguous::<f32>(super::fused::cpu_storage(&storage)?, layout)?;
    Ok((CpuStorage::F32(f(x, x.len() / k.max(1), p)), Shape::from(dims)))
}

impl candle_core::CustomOp1 for PanelProduct {
    fn name(&self) -> &'static str {
        "panel-product"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (k, n) = (self.inp, self.out);
        if self.transposed {
            with_panels(&self.panels, s, l, (n, k), |dy, m, p| {
                super::panel::product_t(dy, m, n, p, k)
            })
        } else {
            with_panels(&self.panels, s, l, (k, n), |x, m, p| {
                super::panel::product(x, m, k, p, n)
            })
        }
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let op = PanelProduct {
            transposed: true,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}
