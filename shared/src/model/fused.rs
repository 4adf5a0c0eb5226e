//! Fused CPU kernels (f32) with hand-written backward passes, for the ops a training step repeats
//! in every layer: softmax with a scale and an additive bias (the attention mask / T5's position
//! bias), RMS normalization, rotary embedding, SwiGLU, and the token-level cross-entropy; and
//! dropout's multipliers, drawn in parallel.
//!
//! Composed of candle ops, each of these is 4–8 passes over a tensor in the forward pass (each
//! allocating a fresh tensor) and about twice that in the backward pass; on a CPU a training step
//! is dominated by that memory traffic rather than by its matmuls. Here each is one pass forward
//! and one backward. [`super::ops`] uses them on the CPU in f32, and on a CUDA GPU in f32 or bf16
//! where the trainer installed their CUDA twins ([`super::gpu`]: each op's `cuda_fwd` runs the
//! twin, the backward passes are this file's, built from the same ops); elsewhere it falls back to
//! the composed ops. `shared/tests/fused.rs` checks values and gradients against the composed
//! versions, `trainer/tests/cuda_kernels.rs` each CUDA twin against its CPU kernel.
//!
//! The frozen operands (norm weights, rotary tables, the attention bias) receive no gradient: only
//! the activations do, which is all prompt tuning needs.

use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::gpu::cuda_kernels;
use rayon::prelude::*;

/// Below this many output elements a kernel runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

pub(crate) fn contiguous<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("fused kernel: the input is not contiguous"),
    }
}

/// The data of a tensor's storage on the CPU (for a tensor a kernel holds rather than receives).
pub(crate) fn cpu_storage(s: &candle_core::Storage) -> Result<&CpuStorage> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(c),
        _ => bail!("fused kernel: the tensor is not on the CPU"),
    }
}

fn last_dim(l: &Layout) -> Result<usize> {
    match l.dims().last() {
        Some(&n) if n > 0 => Ok(n),
        _ => bail!("fused kernel: empty last dimension"),
    }
}

/// Calls `f(row, out_row)` for each `n`-long row of `out`, on several threads when `out` is large.
fn for_rows(out: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN {
        let min_rows = (PAR_MIN / 4 / n).max(1);
        out.par_chunks_mut(n)
            .with_min_len(min_rows)
            .enumerate()
            .for_each(|(i, r)| f(i, r));
    } else {
        out.chunks_mut(n).enumerate().for_each(|(i, r)| f(i, r));
    }
}

// ---------------------------------------------------------------------------------------------
// e^x that vectorizes

/// e^x in f32 without a call or a branch, so that a loop over a slice vectorizes (`f32::exp` calls
/// libm once per element: 6% of the browser's evaluation time went there). Cephes' `expf`: x is
/// n·ln 2 plus r (ln 2 in two parts), e^r is a degree-7 polynomial, and 2^n goes into the exponent
/// bits. Within 3e-7 relative of the exact value on [−87.33, 88.0] (`shared/tests/fused.rs`); 0
/// below that range (where e^x is subnormal), +∞ above it, NaN for NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4; // 0.693359375, exact in f32
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 · 2^23: adding it rounds a float of magnitude < 2^22 to an integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(LO, HI);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // 2^n: n + 127 (in [1, 254]) in the exponent field, read from the low mantissa bits of
    // 2^23 + n + 127 (integer operations only, so this vectorizes too).
    let scale = f32::from_bits((n + (127.0 + 8_388_608.0)).to_bits() << 23);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y * scale
    }
}

// ---------------------------------------------------------------------------------------------
// softmax(x · scale + bias) over the last dimension

/// The broadcast of an additive bias over the rows of a `[B, H, T, S]` input: the bias itself is
/// `[B or 1, H or 1, T or 1, S]`.
#[derive(Clone, Copy)]
pub(crate) struct BiasShape {
    b: usize,
    h: usize,
    t: usize,
}

impl BiasShape {
    /// The broadcast of a bias of `dims` (rank 4, checked by [`dims_fit`]).
    pub(crate) fn of(dims: &[usize]) -> Self {
        Self {
            b: dims[0],
            h: dims[1],
            t: dims[2],
        }
    }

    /// Offset of the bias row for input row `i` of a `[B, H, T, S]` tensor.
    fn row(&self, i: usize, heads: usize, t: usize, s: usize) -> usize {
        self.at(i / (heads * t), (i / t) % heads, i % t, s)
    }

    /// Offset of the bias row for example `bi`, head `hi`, query `ti` (rows `s` long).
    pub(crate) fn at(&self, bi: usize, hi: usize, ti: usize, s: usize) -> usize {
        let bi = if self.b == 1 { 0 } else { bi };
        let hi = if self.h == 1 { 0 } else { hi };
        let ti = if self.t == 1 { 0 } else { ti };
        ((bi * self.h + hi) * self.t + ti) * s
    }
}

/// Whether `bias` broadcasts to `x` the way [`softmax`] reads it: both rank 4, each of the first
/// three dimensions 1 or equal, the last equal.
pub fn bias_fits(x: &Tensor, bias: &Tensor) -> bool {
    dims_fit(x.dims(), bias.dims())
}

pub(crate) fn dims_fit(xd: &[usize], bd: &[usize]) -> bool {
    xd.len() == 4 && bd.len() == 4 && bd[3] == xd[3] && (0..3).all(|i| bd[i] == 1 || bd[i] == xd[i])
}

/// That a bias of layout `bl` broadcasts to an input of layout `l` ([`dims_fit`]).
fn check_bias(l: &Layout, bl: &Layout) -> Result<()> {
    if !dims_fit(l.dims(), bl.dims()) {
        bail!(
            "softmax: a bias of {:?} does not broadcast to {:?}",
            bl.dims(),
            l.dims()
        );
    }
    Ok(())
}

/// Row-wise softmax(x · scale + bias) of a contiguous `x` whose rows are `n` long.
fn softmax_rows(x: &[f32], l: &Layout, scale: f32, bias: Option<(&[f32], &Layout)>) -> Result<Vec<f32>> {
    let n = last_dim(l)?;
    let bias = match bias {
        None => None,
        Some((data, bl)) => {
            check_bias(l, bl)?;
            Some((data, BiasShape::of(bl.dims()), l.dims()[1], l.dims()[2]))
        }
    };
    let mut y = vec![0f32; x.len()];
    for_rows(&mut y, n, |i, row| {
        row.copy_from_slice(&x[i * n..(i + 1) * n]);
        let bias = bias.map(|(data, shape, h, t)| {
            let off = shape.row(i, h, t, n);
            &data[off..off + n]
        });
        softmax_row(row, scale, bias);
    });
    Ok(y)
}

/// `row` ← softmax(row · scale + bias) in place (`bias` as long as `row`).
pub(crate) fn softmax_row(row: &mut [f32], scale: f32, bias: Option<&[f32]>) {
    match bias {
        Some(bias) => {
            for (o, &c) in row.iter_mut().zip(bias) {
                *o = *o * scale + c;
            }
        }
        None => row.iter_mut().for_each(|o| *o *= scale),
    }
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Two loops: the first vectorizes; the sum keeps its order.
    for o in row.iter_mut() {
        *o = exp(*o - max);
    }
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|o| *o *= inv);
}

/// softmax(x · scale) over the last dimension.
struct Softmax {
    scale: f32,
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "fused-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = softmax_rows(contiguous::<f32>(s, l)?, l, self.scale, None)?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        last_dim(l)?;
        let y = cuda_kernels(self.name())?.softmax((s, l), None, self.scale)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(grad.apply_op2_no_bwd(res, &SoftmaxGrad { scale: self.scale })?))
    }
}

/// softmax(x · scale + bias) over the last dimension; the bias (second argument) gets no gradient.
struct BiasedSoftmax {
    scale: f32,
}

impl CustomOp2 for BiasedSoftmax {
    fn name(&self) -> &'static str {
        "fused-biased-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, bs: &CpuStorage, bl: &Layout) -> Result<(CpuStorage, Shape)> {
        let bias = contiguous::<f32>(bs, bl)?;
        let y = softmax_rows(contiguous::<f32>(s, l)?, l, self.scale, Some((bias, bl)))?;
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout, bs: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
        last_dim(l)?;
        check_bias(l, bl)?;
        let y = cuda_kernels(self.name())?.softmax((s, l), Some((bs, bl)), self.scale)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((
            Some(grad.apply_op2_no_bwd(res, &SoftmaxGrad { scale: self.scale })?),
            None,
        ))
    }
}

/// That two operands of an element-wise op have one shape.
fn same_shape(op: &str, a: &Layout, b: &Layout) -> Result<()> {
    if a.shape() != b.shape() {
        bail!("{op}: shapes {:?} and {:?}", a.dims(), b.dims());
    }
    Ok(())
}

/// dx = scale · y ⊙ (g − Σ g ⊙ y), rows of the last dimension.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, ys: &CpuStorage, yl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), gl, yl)?;
        let (g, y) = (contiguous::<f32>(gs, gl)?, contiguous::<f32>(ys, yl)?);
        let n = last_dim(gl)?;
        let mut dx = vec![0f32; g.len()];
        for_rows(&mut dx, n, |i, row| {
            let (g, y) = (&g[i * n..(i + 1) * n], &y[i * n..(i + 1) * n]);
            let dot: f32 = g.iter().zip(y).map(|(a, b)| a * b).sum();
            for ((o, &gi), &yi) in row.iter_mut().zip(g).zip(y) {
                *o = self.scale * yi * (gi - dot);
            }
        });
        Ok((CpuStorage::F32(dx), gl.shape().clone()))
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout, ys: &CudaStorage, yl: &Layout) -> Result<(CudaStorage, Shape)> {
        same_shape(self.name(), gl, yl)?;
        last_dim(gl)?;
        let dx = cuda_kernels(self.name())?.softmax_grad((gs, gl), (ys, yl), self.scale)?;
        Ok((dx, gl.shape().clone()))
    }
}

/// softmax(x · scale + bias) over the last dimension; `bias` is `[B or 1, H or 1, T or 1, S]` for
/// an `x` of `[B, H, T, S]`, and receives no gradient.
pub fn softmax(x: &Tensor, scale: f32, bias: Option<&Tensor>) -> Result<Tensor> {
    let x = x.contiguous()?;
    match bias {
        None => x.apply_op1(Softmax { scale }),
        Some(b) => x.apply_op2(&b.contiguous()?, BiasedSoftmax { scale }),
    }
}

// ---------------------------------------------------------------------------------------------
// RMS normalization: y = x · rsqrt(mean(x²) + eps) · w

/// RMS normalization of the first operand by the second, a frozen weight (no gradient).
#[derive(Clone, Copy)]
struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn rsqrt(self, x: &[f32]) -> f32 {
        let ms = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
        1.0 / (ms + self.eps).sqrt()
    }
}

/// The row length of an input of layout `l` normalized with a weight of layout `wl`.
fn norm_width(l: &Layout, wl: &Layout) -> Result<usize> {
    let n = last_dim(l)?;
    if wl.shape().elem_count() != n {
        bail!("rms norm: last dimension {n}, weight {:?}", wl.dims());
    }
    Ok(n)
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout, ws: &CpuStorage, wl: &Layout) -> Result<(CpuStorage, Shape)> {
        let n = norm_width(l, wl)?;
        let (x, w) = (contiguous::<f32>(s, l)?, contiguous::<f32>(ws, wl)?);
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, n, |i, row| {
            let xs = &x[i * n..(i + 1) * n];
            let r = self.rsqrt(xs);
            for ((o, &v), &w) in row.iter_mut().zip(xs).zip(w) {
                *o = v * r * w;
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        norm_width(l, wl)?;
        let y = cuda_kernels(self.name())?.rms_norm((s, l), (ws, wl), self.eps)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((Some(grad.apply_op3_no_bwd(x, w, &RmsNormGrad(*self))?), None))
    }
}

/// dx = r · (g ⊙ w) − x · r³ · Σ(g ⊙ w ⊙ x) / n, with r = rsqrt(mean(x²) + eps); operands g, x, w.
struct RmsNormGrad(RmsNorm);

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), gl, xl)?;
        let n = norm_width(gl, wl)?;
        let (g, x, w) = (
            contiguous::<f32>(gs, gl)?,
            contiguous::<f32>(xs, xl)?,
            contiguous::<f32>(ws, wl)?,
        );
        let mut dx = vec![0f32; g.len()];
        for_rows(&mut dx, n, |i, row| {
            let (g, x) = (&g[i * n..(i + 1) * n], &x[i * n..(i + 1) * n]);
            let r = self.0.rsqrt(x);
            let dot: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
            let c = r * r * r * dot / n as f32;
            for (((o, &gi), &wi), &xi) in row.iter_mut().zip(g).zip(w).zip(x) {
                *o = r * gi * wi - xi * c;
            }
        });
        Ok((CpuStorage::F32(dx), gl.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape(self.name(), gl, xl)?;
        norm_width(gl, wl)?;
        let dx = cuda_kernels(self.name())?.rms_norm_grad((gs, gl), (xs, xl), (ws, wl), self.0.eps)?;
        Ok((dx, gl.shape().clone()))
    }
}

/// RMS normalization over the last dimension with a frozen weight.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Rotary embedding, HF "rotate half" layout: y = x·cos + rotate_half(x)·sin

/// The rotary embedding of the first operand ([B, H, T, D]) with the tables cos and sin (the
/// second and third, [B or 1, 1, T, D], no gradient).
#[derive(Clone, Copy)]
struct Rope {
    /// The backward pass: dx = g·cos + rotate_halfᵀ(g·sin).
    transposed: bool,
}

/// (H, T, D, the tables' leading size) of a rotary embedding of `l` with tables `cl` and `sl`.
fn rope_dims(l: &Layout, cl: &Layout, sl: &Layout) -> Result<(usize, usize, usize, usize)> {
    let &[b, h, t, d] = l.dims() else {
        bail!("rope needs [B, H, T, D], got {:?}", l.dims());
    };
    let table_batch = cl.dims().first().copied().unwrap_or(0);
    let fits = cl.shape() == sl.shape()
        && (table_batch == 1 || table_batch == b)
        && cl.shape().elem_count() == table_batch * t * d;
    if d % 2 != 0 || !fits {
        bail!("rope: tables of {:?} for x of {:?}", cl.dims(), l.dims());
    }
    Ok((h, t, d, table_batch))
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "fused-rope"
    }

    fn cpu_fwd(
        &self,
        s: &CpuStorage,
        l: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (h, t, d, table_batch) = rope_dims(l, cl, sl)?;
        let (x, cos, sin) = (
            contiguous::<f32>(s, l)?,
            contiguous::<f32>(cs, cl)?,
            contiguous::<f32>(ss, sl)?,
        );
        let half = d / 2;
        let mut y = vec![0f32; x.len()];
        for_rows(&mut y, d, |i, row| {
            let xs = &x[i * d..(i + 1) * d];
            let b = if table_batch == 1 { 0 } else { i / (h * t) };
            let off = (b * t + i % t) * d;
            let (cos, sin) = (&cos[off..off + d], &sin[off..off + d]);
            for j in 0..half {
                let (x1, x2) = (xs[j], xs[j + half]);
                if self.transposed {
                    row[j] = x1 * cos[j] + x2 * sin[j + half];
                    row[j + half] = x2 * cos[j + half] - x1 * sin[j];
                } else {
                    row[j] = x1 * cos[j] - x2 * sin[j];
                    row[j + half] = x2 * cos[j + half] + x1 * sin[j + half];
                }
            }
        });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        s: &CudaStorage,
        l: &Layout,
        cs: &CudaStorage,
        cl: &Layout,
        ss: &CudaStorage,
        sl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        rope_dims(l, cl, sl)?;
        let y = cuda_kernels(self.name())?.rope((s, l), (cs, cl), (ss, sl), self.transposed)?;
        Ok((y, l.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let op = Rope {
            transposed: !self.transposed,
        };
        Ok((Some(grad.contiguous()?.apply_op3_no_bwd(cos, sin, &op)?), None, None))
    }
}

/// Rotary embedding of `x` ([B, H, T, D]) with tables `cos`/`sin` of [B or 1, 1, T, D].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, Rope { transposed: false })
}

// ---------------------------------------------------------------------------------------------
// SwiGLU: y = silu(a) ⊙ b

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp(-v))
}

/// A gated product act(a) ⊙ b on the CPU, `f(a, b)` per element (rows in parallel when large):
/// [`Swiglu`] and [`Geglu`].
fn gated(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    same_shape(name, l1, l2)?;
    let (a, b) = (contiguous::<f32>(s1, l1)?, contiguous::<f32>(s2, l2)?);
    let n = last_dim(l1)?;
    let mut y = vec![0f32; a.len()];
    for_rows(&mut y, n, |i, row| {
        let (a, b) = (&a[i * n..(i + 1) * n], &b[i * n..(i + 1) * n]);
        for ((o, &ai), &bi) in row.iter_mut().zip(a).zip(b) {
            *o = f(ai, bi);
        }
    });
    Ok((CpuStorage::F32(y), l1.shape().clone()))
}

struct Swiglu;

impl CustomOp2 for Swiglu {
    fn name(&self) -> &'static str {
        "fused-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        gated(self.name(), (s1, l1), (s2, l2), |a, b| a * sigmoid(a) * b)
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        same_shape(self.name(), l1, l2)?;
        let y = cuda_kernels(self.name())?.swiglu((s1, l1), (s2, l2))?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = swiglu_grad(grad, a, b)?;
        Ok((Some(da), Some(db)))
    }
}

/// The gradients of silu(a) ⊙ b with respect to `a` and `b`, given the output's `grad`.
pub fn swiglu_grad(grad: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let both = grad.contiguous()?.apply_op3_no_bwd(a, b, &SwigluGrad)?;
    Ok((both.get(0)?, both.get(1)?))
}

/// The gradient through `h = dropout(relu(a))` given `h`: `g · keep` where `h > 0`, else 0 (a
/// kept unit's `h` is positive exactly where `a` is; a dropped one's is 0). `keep` is the kept
/// units' multiplier, 1/(1 − p). No backward: it runs inside one.
pub(crate) struct ReluGrad {
    pub(crate) keep: f32,
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "fused-relu-grad"
    }

    fn cpu_fwd(&self, gs: &CpuStorage, gl: &Layout, hs: &CpuStorage, hl: &Layout) -> Result<(CpuStorage, Shape)> {
        same_shape(self.name(), gl, hl)?;
        let (g, h) = (contiguous::<f32>(gs, gl)?, contiguous::<f32>(hs, hl)?);
        let n = last_dim(gl)?;
        let keep = self.keep;
        let mut out = vec![0f32; g.len()];
        for_rows(&mut out, n, |i, row| {
            let (g, h) = (&g[i * n..(i + 1) * n], &h[i * n..(i + 1) * n]);
            for ((o, &gi), &hi) in row.iter_mut().zip(g).zip(h) {
                *o = if hi > 0.0 { gi * keep } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), gl.shape().clone()))
    }

    fn cuda_fwd(&self, gs: &CudaStorage, gl: &Layout, hs: &CudaStorage, hl: &Layout) -> Result<(CudaStorage, Shape)> {
        same_shape(self.name(), gl, hl)?;
        let out = cuda_kernels(self.name())?.relu_grad((gs, gl), (hs, hl), self.keep)?;
        Ok((out, gl.shape().clone()))
    }
}

/// [`ReluGrad`] of `grad` given `h` = dropout(relu(a)) with kept units multiplied by `keep`.
pub fn relu_grad(grad: &Tensor, h: &Tensor, keep: f32) -> Result<Tensor> {
    grad.contiguous()?
        .apply_op2_no_bwd(&h.contiguous()?, &ReluGrad { keep })
}

/// [da; db] stacked on a new leading dimension: da = g ⊙ b ⊙ silu'(a), db = g ⊙ silu(a), with
/// silu'(a) = σ(a) · (1 + a · (1 − σ(a))).
struct SwigluGrad;

/// The output shape of [`SwigluGrad`]: `[2, ..g]`.
fn stacked(gl: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(gl.dims());
    Shape::from(dims)
}

/// [da; db] of a gated product act(a) ⊙ b on the CPU, `f(g, a, b)` giving both for one element
/// (rows in parallel when large): [`SwigluGrad`] and [`GegluGrad`].
fn gated_grad(
    name: &str,
    (gs, gl): (&CpuStorage, &Layout),
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f: impl Fn(f32, f32, f32) -> (f32, f32) + Sync,
) -> Result<(CpuStorage, Shape)> {
    same_shape(name, gl, l1)?;
    same_shape(name, gl, l2)?;
    let (g, a, b) = (
        contiguous::<f32>(gs, gl)?,
        contiguous::<f32>(s1, l1)?,
        contiguous::<f32>(s2, l2)?,
    );
    let len = g.len();
    let mut out = vec![0f32; 2 * len];
    let (da, db) = out.split_at_mut(len);
    let n = last_dim(gl)?;
    let kernel = |(i, (da, db)): (usize, (&mut [f32], &mut [f32]))| {
        let r = i * n..(i + 1) * n;
        let (g, a, b) = (&g[r.clone()], &a[r.clone()], &b[r]);
        for j in 0..n {
            (da[j], db[j]) = f(g[j], a[j], b[j]);
        }
    };
    if len >= PAR_MIN {
        da.par_chunks_mut(n)
            .zip(db.par_chunks_mut(n))
            .with_min_len((PAR_MIN / 4 / n).max(1))
            .enumerate()
            .for_each(kernel);
    } else {
        da.chunks_mut(n).zip(db.chunks_mut(n)).enumerate().for_each(kernel);
    }
    Ok((CpuStorage::F32(out), stacked(gl)))
}

impl CustomOp3 for SwigluGrad {
    fn name(&self) -> &'static str {
        "fused-swiglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gated_grad(self.name(), (gs, gl), (s1, l1), (s2, l2), |g, a, b| {
            let s = sigmoid(a);
            (g * b * s * (1.0 + a * (1.0 - s)), g * a * s)
        })
    }

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        s1: &CudaStorage,
        l1: &Layout,
        s2: &CudaStorage,
        l2: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        same_shape(self.name(), gl, l1)?;
        same_shape(self.name(), gl, l2)?;
        let out = cuda_kernels(self.name())?.swiglu_grad((gs, gl), (s1, l1), (s2, l2))?;
        Ok((out, stacked(gl)))
    }
}

/// silu(a) ⊙ b.
pub fn swiglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Swiglu)
}

// ---------------------------------------------------------------------------------------------
// GeGLU (Gemma's feed-forward gate): gelu_tanh(a) ⊙ b, f32 on the CPU

/// √(2/π), transformers' `gelu_pytorch_tanh` constant.
const GELU_C: f32 = 0.797_884_6;

/// gelu_tanh(a) and its derivative at a: 0.5·a·(1 + tanh u), u = √(2/π)·(a + 0.044715·a³).
#[inline(always)]
fn gelu_tanh(a: f32) -> (f32, f32) {
    let t = (GELU_C * (a + 0.044_715 * a * a * a)).tanh();
    let y = 0.5 * a * (1.0 + t);
    let dy = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * 0.044_715 * a * a);
    (y, dy)
}

struct Geglu;

impl CustomOp2 for Geglu {
    fn name(&self) -> &'static str {
        "fused-geglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        gated(self.name(), (s1, l1), (s2, l2), |a, b| gelu_tanh(a).0 * b)
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (da, db) = geglu_grad(grad, a, b)?;
        Ok((Some(da), Some(db)))
    }
}

/// [da; db] of gelu_tanh(a) ⊙ b: da = g ⊙ b ⊙ gelu_tanh'(a), db = g ⊙ gelu_tanh(a).
struct GegluGrad;

impl CustomOp3 for GegluGrad {
    fn name(&self) -> &'static str {
        "fused-geglu-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        gated_grad(self.name(), (gs, gl), (s1, l1), (s2, l2), |g, a, b| {
            let (y, dy) = gelu_tanh(a);
            (g * b * dy, g * y)
        })
    }
}

/// gelu_tanh(a) ⊙ b (f32 on the CPU).
pub fn geglu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?.apply_op2(&b.contiguous()?, Geglu)
}

/// The gradients of gelu_tanh(a) ⊙ b with respect to `a` and `b`, given the output's `grad`
/// (f32 on the CPU).
pub fn geglu_grad(grad: &Tensor, a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let both = grad.contiguous()?.apply_op3_no_bwd(a, b, &GegluGrad)?;
    Ok((both.get(0)?, both.get(1)?))
}

// ---------------------------------------------------------------------------------------------
// Token-level cross-entropy: nll_i = logsumexp(x_i) − x_i[t_i]

fn logsumexp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + x.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

/// (rows, vocabulary) of logits of layout `xl` with targets of layout `tl`.
fn nll_dims(xl: &Layout, tl: &Layout) -> Result<(usize, usize)> {
    let &[rows, v] = xl.dims() else {
        bail!("nll needs logits [N, V], got {:?}", xl.dims());
    };
    if tl.shape().elem_count() != rows || v == 0 {
        bail!("nll: {:?} targets for {rows} rows of {v} logits", tl.dims());
    }
    Ok((rows, v))
}

struct Nll;

impl CustomOp2 for Nll {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout, ts: &CpuStorage, tl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (rows, v) = nll_dims(xl, tl)?;
        let (x, t) = (contiguous::<f32>(xs, xl)?, contiguous::<u32>(ts, tl)?);
        if t.iter().any(|&t| t as usize >= v) {
            bail!("nll: a target out of range for {v} logits");
        }
        let nll: Vec<f32> = (0..rows)
            .into_par_iter()
            .map(|i| {
                let row = &x[i * v..(i + 1) * v];
                logsumexp(row) - row[t[i] as usize]
            })
            .collect();
        Ok((CpuStorage::F32(nll), Shape::from(rows)))
    }

    // A target out of range gives NaN here (checking it would read the targets back to the host).
    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ts: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (rows, _) = nll_dims(xl, tl)?;
        let out = cuda_kernels(self.name())?.nll((xs, xl), (ts, tl))?;
        Ok((out, Shape::from(rows)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = grad.contiguous()?.apply_op3_no_bwd(logits, targets, &NllGrad)?;
        Ok((Some(d), None))
    }
}

/// dlogits_i = g_i · (softmax(x_i) − onehot(t_i)).
struct NllGrad;

impl CustomOp3 for NllGrad {
    fn name(&self) -> &'static str {
        "fused-nll-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
        ts: &CpuStorage,
        tl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, v) = nll_dims(xl, tl)?;
        let (g, x, t) = (
            contiguous::<f32>(gs, gl)?,
            contiguous::<f32>(xs, xl)?,
            contiguous::<u32>(ts, tl)?,
        );
        let mut dx = vec![0f32; x.len()];
        for_rows(&mut dx, v, |i, row| {
            let xs = &x[i * v..(i + 1) * v];
            let lse = logsumexp(xs);
            for (o, &xi) in row.iter_mut().zip(xs) {
                *o = g[i] * (xi - lse).exp();
            }
            row[t[i] as usize] -= g[i];
        });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }

    fn cuda_fwd(
        &self,
        gs: &CudaStorage,
        gl: &Layout,
        xs: &CudaStorage,
        xl: &Layout,
        ts: &CudaStorage,
        tl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (rows, _) = nll_dims(xl, tl)?;
        if gl.shape().elem_count() != rows {
            bail!("nll gradient: {:?} for {rows} rows", gl.dims());
        }
        let dx = cuda_kernels(self.name())?.nll_grad((gs, gl), (xs, xl), (ts, tl))?;
        Ok((dx, xl.shape().clone()))
    }
}

/// Per-row negative log-likelihood of `targets` ([N], u32) under `logits` ([N, V], f32).
pub fn nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, Nll)
}

// ---------------------------------------------------------------------------------------------
// Dropout's multipliers: 0 with probability p, else 1/(1 − p)

/// Elements per parallel task of [`dropout_multipliers`].
const DROPOUT_CHUNK: usize = 1 << 14;

/// The multipliers of inverted dropout for `len` elements from a [`SplitMix64`] at `state`:
/// element i is 0 where the generator's draw i is below `p` ([`SplitMix64::draw_at`]), else
/// 1/(1 − p) — the values of drawing them one by one, computed in parallel.
///
/// [`SplitMix64`]: crate::merge::SplitMix64
pub fn dropout_multipliers(state: u64, p: f32, len: usize) -> Vec<f32> {
    let scale = 1.0 / (1.0 - p);
    // A draw's uniform is k·2⁻⁵³ with k = draw >> 11 (`SplitMix64::unit`), so it is below p
    // exactly when the integer k is below ⌈p·2⁵³⌉ (p·2⁵³ is exact in f64): no conversion per draw.
    let below = (f64::from(p) * (1u64 << 53) as f64).ceil() as u64;
    let mut out = vec![0f32; len];
    let fill = |(c, chunk): (usize, &mut [f32])| {
        fill_multipliers(chunk, (c * DROPOUT_CHUNK) as u64, state, below, scale);
    };
    if len >= PAR_MIN {
        out.par_chunks_mut(DROPOUT_CHUNK).enumerate().for_each(fill);
    } else {
        out.chunks_mut(DROPOUT_CHUNK).enumerate().for_each(fill);
    }
    out
}

/// `out[j]` = 0 where draw `first + j` of a generator at `state` is below `below` (in 2⁻⁵³
/// units), else `scale`. With AVX-512DQ where the CPU has it (64-bit products in vectors; the
/// portable build has none), else as written.
fn fill_multipliers(out: &mut [f32], first: u64, state: u64, below: u64, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx512dq") {
        // SAFETY: the CPU has the features `fill_avx512` is compiled for (checked above).
        #[allow(unsafe_code)]
        unsafe {
            fill_avx512(out, first, state, below, scale);
        }
        return;
    }
    fill_portable(out, first, state, below, scale);
}

#[inline(always)]
fn fill_portable(out: &mut [f32], first: u64, state: u64, below: u64, scale: f32) {
    use crate::merge::SplitMix64;
    for (j, o) in out.iter_mut().enumerate() {
        *o = if SplitMix64::draw_at(state, first + j as u64) >> 11 < below {
            0.0
        } else {
            scale
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq")]
fn fill_avx512(out: &mut [f32], first: u64, state: u64, below: u64, scale: f32) {
    fill_portable(out, first, state, below, scale);
}

/// [`dropout_multipliers`] of a `shape`, in the device and dtype of the tensor it is applied to
/// (whose values it does not read).
struct DropoutMask {
    state: u64,
    p: f32,
    shape: Shape,
}

impl CustomOp1 for DropoutMask {
    fn name(&self) -> &'static str {
        "dropout-mask"
    }

    fn cpu_fwd(&self, s: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        if !matches!(s, CpuStorage::F32(_)) {
            bail!("dropout mask on the CPU: f32 only");
        }
        let mask = dropout_multipliers(self.state, self.p, self.shape.elem_count());
        Ok((CpuStorage::F32(mask), self.shape.clone()))
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let n = self.shape.elem_count();
        let mask = cuda_kernels(self.name())?.dropout_mask((s, l), n, self.state, self.p)?;
        Ok((mask, self.shape.clone()))
    }
}

/// Dropout's multipliers for a tensor of `shape` (drawn from a generator at `state`, as
/// [`dropout_multipliers`]), made where `like` is and of its dtype: on a GPU by a kernel, with
/// the values the CPU gives.
pub fn dropout_mask(like: &Tensor, shape: &Shape, state: u64, p: f32) -> Result<Tensor> {
    like.apply_op1_no_bwd(&DropoutMask {
        state,
        p,
        shape: shape.clone(),
    })
}
