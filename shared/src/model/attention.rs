//! Attention on the CPU without the score tensor: softmax(scale · q·kᵀ + bias) ⊙ mask · v, one
//! block of queries of one head at a time, with a backward pass that recomputes each block's
//! probabilities instead of reading them back.
//!
//! Composed of candle ops, attention writes the `[B, H, Tq, Tk]` scores, the probabilities and
//! (backward) their gradients to memory several times per layer, each a fresh tensor (36 MB per
//! layer for T5-base at 8 × 306 tokens), and candle's backward adds every gradient into a zeroed
//! one. Here the scores of a block of query rows stay in the cache between the two products, the
//! backward's traffic is that of q, k, v and their gradients, and the products run on gemm with
//! its strides, so q, k and v are read where they lie (a head's rows `T` apart, no transposed
//! copies). Grouped-query attention (H query heads over Hkv key/value heads, the heads sharing
//! one consecutive, as HF's `repeat_kv` orders them) reads the shared keys and values in place.
//!
//! The bias (attention mask, T5's position bias) and the dropout multipliers are frozen: only q,
//! k and v receive gradients. `shared/tests/fused.rs` checks values and gradients against the
//! composed ops ([`super::ops::attention_composed`]).

use std::ops::Range;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::fused::{BiasShape, contiguous, cpu_storage, dims_fit, softmax_row};

/// Scores per block (floats): query rows against all keys, sized to stay in a core's L2 cache
/// along with the block's products.
const BLOCK: usize = 1 << 16;

/// Below this many scores in all, the heads run on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// A strided f32 matrix: element (i, j) at `data[off + i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    off: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// A contiguous `rows × cols` matrix at the start of `data`.
    fn dense(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            off: 0,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    fn rows(self, r: Range<usize>) -> Self {
        Self {
            off: self.off + r.start * self.rs,
            rows: r.len(),
            ..self
        }
    }

    /// Whether every element lies in `data`.
    fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.off + (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

/// `dst` (`a.rows × b.cols`, rows `dst_rs` apart, columns adjacent) ← `scale · a·b`, added to
/// what `dst` holds when `accumulate`. One thread: the heads are the parallelism.
fn product(dst: &mut [f32], dst_rs: usize, a: Mat<'_>, b: Mat<'_>, scale: f32, accumulate: bool) -> Result<()> {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if b.rows != k {
        bail!("attention: a product of {m}×{k} and {}×{n}", b.rows);
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if dst_rs < n || dst.len() < (m - 1) * dst_rs + n || !a.in_bounds() || !b.in_bounds() {
        bail!("attention: a product's operands are out of bounds");
    }
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return Ok(());
    }
    #[allow(unsafe_code)]
    // SAFETY: the checks above keep every element gemm reads (a: `a.off + i·rs + j·cs` for i < m,
    // j < k; b likewise for k × n) inside `a.data` and `b.data`, and every element it writes
    // (`i·dst_rs + j`, i < m, j < n) inside `dst`, which is borrowed mutably and so aliases
    // neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.off),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr().add(b.off),
            b.cs as isize,
            b.rs as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

/// A `[B, H, T, D]` f32 tensor on the CPU, any strides but a unit one along D.
struct Heads<'a> {
    data: &'a [f32],
    off: usize,
    dims: [usize; 4],
    strides: [usize; 3],
}

impl<'a> Heads<'a> {
    fn new(data: &'a [f32], l: &Layout) -> Result<Self> {
        let (d, s) = (l.dims(), l.stride());
        if d.len() != 4 || (s[3] != 1 && d[3] > 1) {
            bail!("attention: q, k and v must be [B, H, T, D] with D contiguous, got {d:?} strides {s:?}");
        }
        let heads = Self {
            data,
            off: l.start_offset(),
            dims: [d[0], d[1], d[2], d[3]],
            strides: [s[0], s[1], s[2]],
        };
        if heads.dims.iter().all(|&n| n > 0) && !heads.head(d[0] - 1, d[1] - 1).in_bounds() {
            bail!("attention: a tensor's layout reaches past its storage");
        }
        Ok(heads)
    }

    /// Head `h` of example `b`: `T × D`.
    fn head(&self, b: usize, h: usize) -> Mat<'a> {
        Mat {
            data: self.data,
            off: self.off + b * self.strides[0] + h * self.strides[1],
            rows: self.dims[2],
            cols: self.dims[3],
            rs: self.strides[2],
            cs: 1,
        }
    }
}

/// What turns a block of scores into probabilities: the scale, the bias and the dropout
/// multipliers (`[B, H, Tq, Tk]`), and the shape they index.
struct Probs<'a> {
    scale: f32,
    bias: Option<(&'a [f32], BiasShape)>,
    mask: Option<&'a [f32]>,
    heads: usize,
    tq: usize,
    tk: usize,
}

impl Probs<'_> {
    /// Rows `r0..` of head `h` of example `b`: softmax(scores · scale + bias), not yet masked.
    fn softmax(&self, scores: &mut [f32], b: usize, h: usize, r0: usize) {
        for (i, row) in scores.chunks_mut(self.tk).enumerate() {
            let bias = self.bias.map(|(data, shape)| {
                let off = shape.at(b, h, r0 + i, self.tk);
                &data[off..off + self.tk]
            });
            softmax_row(row, self.scale, bias);
        }
    }

    /// The dropout multipliers of rows `r0..r0 + n` of head `h` of example `b`.
    fn mask(&self, b: usize, h: usize, r0: usize, n: usize) -> Option<&[f32]> {
        self.mask.map(|m| {
            let off = ((b * self.heads + h) * self.tq + r0) * self.tk;
            &m[off..off + n * self.tk]
        })
    }
}

/// Query rows per block for `tk` keys, evened out over `tq` queries.
fn block_rows(tq: usize, tk: usize) -> usize {
    let rows = (BLOCK / tk.max(1)).max(16);
    let blocks = tq.div_ceil(rows).max(1);
    tq.div_ceil(blocks).max(1)
}

/// The blocks of query rows.
fn blocks(tq: usize, rows: usize) -> impl Iterator<Item = Range<usize>> {
    (0..tq).step_by(rows).map(move |r0| r0..(r0 + rows).min(tq))
}

struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    tq: usize,
    tk: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Heads<'_>, k: &Heads<'_>, v: &Heads<'_>) -> Result<Self> {
        let ([b, h, tq, d], [kb, hkv, tk, kd]) = (q.dims, k.dims);
        if k.dims != v.dims || kb != b || kd != d || hkv == 0 || h % hkv != 0 || tk == 0 {
            bail!(
                "attention: q {:?}, k {:?} and v {:?} do not fit (k and v [B, Hkv, Tk, D], Tk > 0, H a multiple of Hkv)",
                q.dims,
                k.dims,
                v.dims
            );
        }
        Ok(Self { b, h, hkv, tq, tk, d })
    }

    fn group(&self) -> usize {
        self.h / self.hkv
    }
}

/// The output `[B, H, Tq, D]`, contiguous.
fn forward(q: &Heads<'_>, k: &Heads<'_>, v: &Heads<'_>, probs: &Probs<'_>) -> Result<Vec<f32>> {
    let n = Dims::of(q, k, v)?;
    let (tq, tk, d, g) = (n.tq, n.tk, n.d, n.group());
    let rows = block_rows(tq, tk);
    let mut out = vec![0f32; n.b * n.h * tq * d];
    let chunk = (tq * d).max(1);
    let head = |i: usize, o: &mut [f32]| -> Result<()> {
        let (b, h) = (i / n.h, i % n.h);
        let (qh, kh, vh) = (q.head(b, h), k.head(b, h / g), v.head(b, h / g));
        let mut scores = vec![0f32; rows * tk];
        for r in blocks(tq, rows) {
            let s = &mut scores[..r.len() * tk];
            product(s, tk, qh.rows(r.clone()), kh.t(), 1.0, false)?;
            probs.softmax(s, b, h, r.start);
            if let Some(m) = probs.mask(b, h, r.start, r.len()) {
                s.iter_mut().zip(m).for_each(|(p, m)| *p *= m);
            }
            product(&mut o[r.start * d..], d, Mat::dense(s, r.len(), tk), vh, 1.0, false)?;
        }
        Ok(())
    };
    if n.b * n.h * tq * tk >= PAR_MIN {
        out.par_chunks_mut(chunk)
            .enumerate()
            .try_for_each(|(i, o)| head(i, o))?;
    } else {
        out.chunks_mut(chunk).enumerate().try_for_each(|(i, o)| head(i, o))?;
    }
    Ok(out)
}

/// The gradients of q (`[B, H, Tq, D]`), k and v (`[B, Hkv, Tk, D]`), contiguous, given that of
/// the output (`go`).
fn backward(
    q: &Heads<'_>,
    k: &Heads<'_>,
    v: &Heads<'_>,
    go: &Heads<'_>,
    probs: &Probs<'_>,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let n = Dims::of(q, k, v)?;
    if go.dims != q.dims {
        bail!(
            "attention: an output gradient of {:?} for queries of {:?}",
            go.dims,
            q.dims
        );
    }
    let (tq, tk, d, g) = (n.tq, n.tk, n.d, n.group());
    let rows = block_rows(tq, tk);
    let mut dq = vec![0f32; n.b * n.h * tq * d];
    let mut dk = vec![0f32; n.b * n.hkv * tk * d];
    let mut dv = vec![0f32; n.b * n.hkv * tk * d];
    let (q_chunk, kv_chunk) = ((g * tq * d).max(1), (tk * d).max(1));
    let group = |i: usize, dq: &mut [f32], dk: &mut [f32], dv: &mut [f32]| -> Result<()> {
        let (b, kvh) = (i / n.hkv, i % n.hkv);
        let (kh, vh) = (k.head(b, kvh), v.head(b, kvh));
        let mut p = vec![0f32; rows * tk];
        let mut dp = vec![0f32; rows * tk];
        let mut dropped = if probs.mask.is_some() {
            vec![0f32; rows * tk]
        } else {
            Vec::new()
        };
        let mut first = true;
        for j in 0..g {
            let h = kvh * g + j;
            let (qh, goh) = (q.head(b, h), go.head(b, h));
            for r in blocks(tq, rows) {
                let len = r.len() * tk;
                let (p, dp) = (&mut p[..len], &mut dp[..len]);
                // the probabilities again, and dP (of the dropped-out probabilities) = dO·vᵀ
                product(p, tk, qh.rows(r.clone()), kh.t(), 1.0, false)?;
                probs.softmax(p, b, h, r.start);
                product(dp, tk, goh.rows(r.clone()), vh.t(), 1.0, false)?;
                // dv += P'ᵀ·dO, P' the probabilities after dropout; dP ← dP' ⊙ mask
                let mask = probs.mask(b, h, r.start, r.len());
                let kept: &[f32] = match mask {
                    Some(m) => {
                        let kept = &mut dropped[..len];
                        for (((o, &pi), &mi), dpi) in kept.iter_mut().zip(p.iter()).zip(m).zip(dp.iter_mut()) {
                            *o = pi * mi;
                            *dpi *= mi;
                        }
                        kept
                    }
                    None => p,
                };
                product(
                    dv,
                    d,
                    Mat::dense(kept, r.len(), tk).t(),
                    goh.rows(r.clone()),
                    1.0,
                    !first,
                )?;
                // dS = scale · P ⊙ (dP − Σ P ⊙ dP), in place of dP
                for (pr, dr) in p.chunks(tk).zip(dp.chunks_mut(tk)) {
                    let dot: f32 = pr.iter().zip(dr.iter()).map(|(a, b)| a * b).sum();
                    for (o, &pi) in dr.iter_mut().zip(pr) {
                        *o = probs.scale * pi * (*o - dot);
                    }
                }
                let ds = Mat::dense(dp, r.len(), tk);
                product(&mut dq[(j * tq + r.start) * d..], d, ds, kh, 1.0, false)?;
                product(dk, d, ds.t(), qh.rows(r.clone()), 1.0, !first)?;
                first = false;
            }
        }
        Ok(())
    };
    if 3 * n.b * n.h * tq * tk >= PAR_MIN {
        dq.par_chunks_mut(q_chunk)
            .zip(dk.par_chunks_mut(kv_chunk))
            .zip(dv.par_chunks_mut(kv_chunk))
            .enumerate()
            .try_for_each(|(i, ((dq, dk), dv))| group(i, dq, dk, dv))?;
    } else {
        dq.chunks_mut(q_chunk)
            .zip(dk.chunks_mut(kv_chunk))
            .zip(dv.chunks_mut(kv_chunk))
            .enumerate()
            .try_for_each(|(i, ((dq, dk), dv))| group(i, dq, dk, dv))?;
    }
    Ok((dq, dk, dv))
}

/// A tensor's CPU f32 data.
fn cpu_f32(s: &Storage) -> Result<&[f32]> {
    cpu_storage(s)?.as_slice::<f32>()
}

/// The op: q, k, v in; the bias and the dropout multipliers held (frozen).
struct Attention {
    scale: f32,
    bias: Option<Tensor>,
    mask: Option<Tensor>,
}

impl Attention {
    /// Runs `f` with the probabilities' parameters for queries of `q_dims` against `tk` keys.
    fn with_probs<R>(&self, q_dims: [usize; 4], tk: usize, f: impl FnOnce(&Probs<'_>) -> Result<R>) -> Result<R> {
        let [b, h, tq, _] = q_dims;
        let scores = [b, h, tq, tk];
        let bias = self.bias.as_ref().map(|t| t.storage_and_layout());
        let bias = match &bias {
            Some((s, l)) => {
                if !dims_fit(&scores, l.dims()) {
                    bail!(
                        "attention: a bias of {:?} does not broadcast to the scores {scores:?}",
                        l.dims()
                    );
                }
                Some((contiguous::<f32>(cpu_storage(s)?, l)?, BiasShape::of(l.dims())))
            }
            None => None,
        };
        let mask = self.mask.as_ref().map(|t| t.storage_and_layout());
        let mask = match &mask {
            Some((s, l)) => {
                if l.dims() != scores {
                    bail!(
                        "attention: dropout multipliers of {:?} for scores of {scores:?}",
                        l.dims()
                    );
                }
                Some(contiguous::<f32>(cpu_storage(s)?, l)?)
            }
            None => None,
        };
        f(&Probs {
            scale: self.scale,
            bias,
            mask,
            heads: h,
            tq,
            tk,
        })
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let q = Heads::new(qs.as_slice::<f32>()?, ql)?;
        let k = Heads::new(ks.as_slice::<f32>()?, kl)?;
        let v = Heads::new(vs.as_slice::<f32>()?, vl)?;
        let out = self.with_probs(q.dims, k.dims[2], |p| forward(&q, &k, &v, p))?;
        Ok((CpuStorage::F32(out), Shape::from(q.dims.to_vec())))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (grads, dims) = {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = k.storage_and_layout();
            let (vs, vl) = v.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let qh = Heads::new(cpu_f32(&qs)?, ql)?;
            let kh = Heads::new(cpu_f32(&ks)?, kl)?;
            let vh = Heads::new(cpu_f32(&vs)?, vl)?;
            let gh = Heads::new(cpu_f32(&gs)?, gl)?;
            let grads = self.with_probs(qh.dims, kh.dims[2], |p| backward(&qh, &kh, &vh, &gh, p))?;
            (grads, (q.dims().to_vec(), k.dims().to_vec()))
        };
        let (dq, dk, dv) = grads;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, dims.0, dev)?),
            Some(Tensor::from_vec(dk, dims.1.clone(), dev)?),
            Some(Tensor::from_vec(dv, dims.1, dev)?),
        ))
    }
}

/// softmax(scale · q·kᵀ + bias) ⊙ mask · v for f32 tensors on the CPU: q `[B, H, Tq, D]`, k and v
/// `[B, Hkv, Tk, D]` (H a multiple of Hkv), each contiguous along D (other strides are free);
/// `bias` `[B or 1, H or 1, Tq or 1, Tk]` and `mask` (dropout multipliers) `[B, H, Tq, Tk]`,
/// frozen. Returns `[B, H, Tq, D]`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f32,
    bias: Option<&Tensor>,
    mask: Option<&Tensor>,
) -> Result<Tensor> {
    let unit_last = |t: &Tensor| -> Result<Tensor> {
        match t.stride().last() {
            Some(1) => Ok(t.clone()),
            _ => t.contiguous(),
        }
    };
    let frozen = |t: Option<&Tensor>| -> Result<Option<Tensor>> { t.map(|t| t.detach().contiguous()).transpose() };
    unit_last(q)?.apply_op3(
        &unit_last(k)?,
        &unit_last(v)?,
        Attention {
            scale,
            bias: frozen(bias)?,
            mask: frozen(mask)?,
        },
    )
}
