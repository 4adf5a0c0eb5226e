//! The browser's product with a frozen weight: Wᵀ packed once, at load, into panels of [`NR`]
//! columns (k-major, zero past the last column), and a [`MR`] × [`NR`] micro-kernel in 128-bit
//! SIMD whose eight accumulators, two panel vectors, broadcasts and products fit V8's sixteen
//! registers. gemm's wasm kernel (12 × 4, twelve accumulators) spills there: about 70% of this
//! one's rate at a prefill's shapes, under half at a decoding step's (`bash
//! bench/wasm-kernels/run.sh` times both per shape; bench/README.md has the numbers). Native
//! builds keep gemm, whose AVX kernels and threads are faster; this module compiles everywhere so
//! that its packing, blocking and edges are tested natively, with a portable four-lane vector in
//! place of wasm's `v128` (the same multiplies and adds, unfused, in the same order).

/// Rows of x per micro-kernel call.
pub const MR: usize = 4;
/// Columns of Wᵀ per panel (two vectors).
pub const NR: usize = 8;
/// Largest block of the inner dimension: a layer with up to this many inputs (all of SmolLM2's)
/// reads each panel once from start to end, a stream the hardware prefetches (blocks of 256
/// made an 8-row LM head almost twice as slow: bench/README.md).
const KC: usize = 1536;
/// Rows of x packed per block (at most 384 KB with KC, within L2).
const MC: usize = 64;

#[cfg(target_arch = "wasm32")]
mod lanes {
    use core::arch::wasm32::{f32x4_add, f32x4_mul, f32x4_splat, v128, v128_load, v128_store};

    #[derive(Clone, Copy)]
    pub struct V(v128);

    #[inline(always)]
    pub fn zero() -> V {
        V(f32x4_splat(0.0))
    }

    #[inline(always)]
    pub fn splat(x: f32) -> V {
        V(f32x4_splat(x))
    }

    #[inline(always)]
    pub fn load(x: &[f32; 4]) -> V {
        #[allow(unsafe_code)]
        // SAFETY: `x` is 16 readable bytes; v128.load has no alignment requirement.
        V(unsafe { v128_load(x.as_ptr().cast::<v128>()) })
    }

    #[inline(always)]
    pub fn store(v: V, x: &mut [f32; 4]) {
        #[allow(unsafe_code)]
        // SAFETY: `x` is 16 writable bytes; v128.store has no alignment requirement.
        unsafe {
            v128_store(x.as_mut_ptr().cast::<v128>(), v.0);
        }
    }

    /// acc + a·b, the product rounded first (wasm has no fused multiply-add without relaxed SIMD).
    #[inline(always)]
    pub fn mul_add(acc: V, a: V, b: V) -> V {
        V(f32x4_add(acc.0, f32x4_mul(a.0, b.0)))
    }

    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        V(f32x4_add(a.0, b.0))
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod lanes {
    #[derive(Clone, Copy)]
    pub struct V([f32; 4]);

    #[inline(always)]
    pub fn zero() -> V {
        V([0.0; 4])
    }

    #[inline(always)]
    pub fn splat(x: f32) -> V {
        V([x; 4])
    }

    #[inline(always)]
    pub fn load(x: &[f32; 4]) -> V {
        V(*x)
    }

    #[inline(always)]
    pub fn store(v: V, x: &mut [f32; 4]) {
        *x = v.0;
    }

    #[inline(always)]
    pub fn mul_add(acc: V, a: V, b: V) -> V {
        V(std::array::from_fn(|i| acc.0[i] + a.0[i] * b.0[i]))
    }

    #[inline(always)]
    pub fn add(a: V, b: V) -> V {
        V(std::array::from_fn(|i| a.0[i] + b.0[i]))
    }
}

use lanes::V;

/// Panels of Wᵀ for a W of `[n, k]` (row-major, a linear layer's `[out, in]`): panel `p` holds,
/// for each `kk < k`, `W[p·NR + j][kk]` for `j < NR` (zero where `p·NR + j ≥ n`).
pub fn pack(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    // Pushed rather than zeroed and written: a model's worth of memset is a tenth of its loading.
    let mut out = Vec::with_capacity(n.div_ceil(NR) * NR * k);
    for p0 in (0..n).step_by(NR) {
        let rows: Vec<&[f32]> = (p0..n.min(p0 + NR)).map(|j| &w[j * k..][..k]).collect();
        for kk in 0..k {
            out.extend((0..NR).map(|j| rows.get(j).map_or(0.0, |row| row[kk])));
        }
    }
    out
}

/// `x` `[m, k]` (row-major) times Wᵀ from `panels` (of [`pack`], W `[n, k]`): `[m, n]`.
pub fn product(x: &[f32], m: usize, k: usize, panels: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    if m == 0 || n == 0 || k == 0 {
        return y;
    }
    let kc_max = k.div_ceil(k.div_ceil(KC));
    let mut packed = vec![0f32; MC.min(m).div_ceil(MR) * MR * kc_max];
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        for k0 in (0..k).step_by(kc_max) {
            let kc = kc_max.min(k - k0);
            pack_rows(x, k, i0, mc, k0, kc, &mut packed);
            for (p, panel) in panels.chunks_exact(k * NR).enumerate() {
                let block = &panel[k0 * NR..(k0 + kc) * NR];
                let cols = NR.min(n - p * NR);
                for (ip, rows_block) in packed.chunks_exact(kc * MR).take(mc.div_ceil(MR)).enumerate() {
                    let acc = kernel(rows_block, block);
                    let r0 = i0 + ip * MR;
                    add_tile(&mut y[r0 * n + p * NR..], n, MR.min(m - r0), cols, &acc);
                }
            }
        }
    }
    y
}

/// Rows `i0..i0 + mc`, columns `k0..k0 + kc` of `x` into groups of [`MR`] rows, k-major (zero
/// past the last row).
fn pack_rows(x: &[f32], k: usize, i0: usize, mc: usize, k0: usize, kc: usize, out: &mut [f32]) {
    for (g, group) in out.chunks_exact_mut(kc * MR).take(mc.div_ceil(MR)).enumerate() {
        let rows = MR.min(mc - g * MR);
        let src: Vec<&[f32]> = (0..rows).map(|r| &x[(i0 + g * MR + r) * k + k0..][..kc]).collect();
        for (kk, dst) in group.chunks_exact_mut(MR).enumerate() {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = src.get(r).map_or(0.0, |row| row[kk]);
            }
        }
    }
}

/// The micro-kernel: `MR` packed rows times one panel block, over the block's `kc`.
#[inline(always)]
fn kernel(rows: &[f32], block: &[f32]) -> [[V; 2]; MR] {
    let mut acc = [[lanes::zero(); 2]; MR];
    for (a, b) in rows.chunks_exact(MR).zip(block.chunks_exact(NR)) {
        let (b0, b1) = b.split_at(4);
        let (b0, b1) = (lanes::load(four(b0)), lanes::load(four(b1)));
        for (r, acc) in acc.iter_mut().enumerate() {
            let s = lanes::splat(a[r]);
            acc[0] = lanes::mul_add(acc[0], s, b0);
            acc[1] = lanes::mul_add(acc[1], s, b1);
        }
    }
    acc
}

#[inline(always)]
fn four(x: &[f32]) -> &[f32; 4] {
    // The callers split eight floats in two: never another length.
    x.first_chunk::<4>().unwrap_or(&[0.0; 4])
}

/// Adds the accumulators' `rows` × `cols` corner to `y` (row stride `ld`).
#[inline(always)]
fn add_tile(y: &mut [f32], ld: usize, rows: usize, cols: usize, acc: &[[V; 2]; MR]) {
    if rows == MR && cols == NR {
        for (r, a) in acc.iter().enumerate() {
            let (y0, y1) = y[r * ld..][..NR].split_at_mut(4);
            for (yv, a) in [y0, y1].into_iter().zip(a) {
                if let Some(yv) = yv.first_chunk_mut::<4>() {
                    let sum = lanes::add(*a, lanes::load(yv));
                    lanes::store(sum, yv);
                }
            }
        }
        return;
    }
    let mut tile = [[0f32; NR]; MR];
    for (t, a) in tile.iter_mut().zip(acc) {
        let (t0, t1) = t.split_at_mut(4);
        lanes::store(a[0], t0.first_chunk_mut::<4>().unwrap_or(&mut [0.0; 4]));
        lanes::store(a[1], t1.first_chunk_mut::<4>().unwrap_or(&mut [0.0; 4]));
    }
    for (r, t) in tile.iter().enumerate().take(rows) {
        for (d, s) in y[r * ld..][..cols].iter_mut().zip(t) {
            *d += s;
        }
    }
}

/// `dy` `[m, n]` times W from `panels` (of [`pack`], W `[n, k]`): `[m, k]`, the input's gradient
/// of [`product`]. Plain loops: the browser only evaluates, and native training keeps W for gemm.
pub fn product_t(dy: &[f32], m: usize, n: usize, panels: &[f32], k: usize) -> Vec<f32> {
    let mut dx = vec![0f32; m * k];
    if m == 0 || n == 0 || k == 0 {
        return dx;
    }
    for (drow, dxrow) in dy.chunks_exact(n).zip(dx.chunks_exact_mut(k)) {
        for (p, panel) in panels.chunks_exact(k * NR).enumerate() {
            let cols = NR.min(n - p * NR);
            let d = &drow[p * NR..p * NR + cols];
            for (o, w) in dxrow.iter_mut().zip(panel.chunks_exact(NR)) {
                *o += d.iter().zip(w).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn product_and_its_transpose_match_plain_loops() {
        // Edges: rows and columns past the tiles, several k blocks, several row blocks.
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (9, 300, 17),
            (130, 520, 24),
            (4, 256, 8),
            (0, 3, 4),
            (2, 0, 3),
        ] {
            let (x, w, dy) = (data(m * k, 1), data(n * k, 2), data(m * n, 3));
            let panels = pack(&w, n, k);
            let y = product(&x, m, k, &panels, n);
            let dx = product_t(&dy, m, n, &panels, k);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k).map(|t| f64::from(x[i * k + t]) * f64::from(w[j * k + t])).sum();
                    assert!(
                        (f64::from(y[i * n + j]) - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "y {m}x{k}x{n} [{i},{j}]"
                    );
                }
                for t in 0..k {
                    let want: f64 = (0..n).map(|j| f64::from(dy[i * n + j]) * f64::from(w[j * k + t])).sum();
                    assert!(
                        (f64::from(dx[i * k + t]) - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "dx {m}x{k}x{n} [{i},{t}]"
                    );
                }
            }
        }
    }
}
