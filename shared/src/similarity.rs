//! Similarity of prompts and vectors: the paper's token-mean cosine, the flattened cosine, mean
//! absolute difference and norm difference; matrices over a set; the across-origins view.
//!
//! Everything accumulates in f64. A cosine involving a zero vector is 0 (as scikit-learn's
//! `cosine_similarity` gives). Non-finite inputs are refused (as arithmetic refuses them), so
//! every value is finite.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::PromptTensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Measure {
    /// Cosine of the token-means (mean over the R rows): the paper's measure.
    #[default]
    CosineMean,
    /// Cosine of the flattened R·d values.
    CosineFlat,
    /// Mean of |a − b| over all values.
    MeanAbsDiff,
    /// |‖a‖ − ‖b‖| with Frobenius norms.
    NormDiff,
}

crate::named!(Measure, "similarity measure", {
    CosineMean => "cosine-mean",
    CosineFlat => "cosine-flat",
    MeanAbsDiff => "mean-abs-diff",
    NormDiff => "norm-diff",
});

impl Measure {
    pub fn as_str(self) -> &'static str {
        crate::names::Named::name(self)
    }

    /// The value of the measure between a prompt and itself.
    pub fn identity(self) -> f64 {
        match self {
            Self::CosineMean | Self::CosineFlat => 1.0,
            Self::MeanAbsDiff | Self::NormDiff => 0.0,
        }
    }
}

/// The measure between two tensors of the same shape.
pub fn similarity(a: &PromptTensor, b: &PromptTensor, measure: Measure) -> Result<f64> {
    a.check_same_shape(b)?;
    crate::prompt::check_finite("a", a)?;
    crate::prompt::check_finite("b", b)?;
    Ok(Prepared::new(a, measure).measure(&Prepared::new(b, measure)))
}

/// What the measure needs of one tensor, computed once however many pairs it is in (the
/// token-mean, the flattened values in f64 with their squared norm, the norm).
enum Prepared<'a> {
    Cosine { values: Vec<f64>, norm2: f64 },
    Values(&'a [f32]),
    Norm(f64),
}

impl<'a> Prepared<'a> {
    fn new(t: &'a PromptTensor, measure: Measure) -> Self {
        let cosine = |values: Vec<f64>| {
            let norm2 = dot(&values, &values);
            Self::Cosine { values, norm2 }
        };
        match measure {
            Measure::CosineMean => cosine(t.token_mean()),
            Measure::CosineFlat => cosine(t.as_slice().iter().map(|&x| f64::from(x)).collect()),
            Measure::MeanAbsDiff => Self::Values(t.as_slice()),
            Measure::NormDiff => Self::Norm(t.norm()),
        }
    }

    /// The measure between two prepared tensors (same shape, same measure). Symmetric to the bit:
    /// every measure here gives exactly the same value for (a, b) and (b, a).
    fn measure(&self, other: &Self) -> f64 {
        match (self, other) {
            (Self::Cosine { values: a, norm2: na }, Self::Cosine { values: b, norm2: nb }) => {
                cosine(dot(a, b), *na, *nb)
            }
            (Self::Values(a), Self::Values(b)) => {
                let total: f64 = a
                    .iter()
                    .zip(*b)
                    .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
                    .sum();
                total / a.len().max(1) as f64
            }
            (Self::Norm(a), Self::Norm(b)) => (a - b).abs(),
            _ => f64::NAN,
        }
    }
}

/// Cosine from a dot product and the two squared norms; 0 when either vector is zero. The
/// product of the norms commutes, so the value is the same for (a, b) and (b, a).
fn cosine(dot: f64, na: f64, nb: f64) -> f64 {
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Values per block of [`dot`] and [`gram`].
const BLOCK: usize = 1024;

/// Dot product in f64, block by block ([`BLOCK`] values) with four independent accumulators in
/// each (the loop pipelines instead of waiting on one running sum). [`gram`] sums the same blocks
/// in the same order, so a matrix and a single pair give the same bits.
fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.chunks(BLOCK).zip(b.chunks(BLOCK)).map(|(x, y)| dot_block(x, y)).sum()
}

fn dot_block(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// [`dot_block`] of `a` with four vectors at once, each pair's arithmetic in the same order (the
/// same bits). In wasm SIMD a pair's four running sums are two f64x2 registers (lanes 0–1 and 2–3
/// of [`dot_block`]'s) and each of `a`'s values is loaded once for the four pairs. (Reading the
/// f32 prompts and widening them in the loop, instead of this f64 copy, measured slower in
/// Chromium: 188–234 ms against 109–112 ms for the 60-prompt view.)
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[allow(unsafe_code)]
fn dot_block4(a: &[f64], b: [&[f64]; 4]) -> [f64; 4] {
    use core::arch::wasm32::{f64x2_add, f64x2_extract_lane, f64x2_mul, f64x2_splat, v128, v128_load};
    let len = a.len();
    assert!(b.iter().all(|y| y.len() == len), "dot_block4: lengths differ");
    let n = len / 4 * 4;
    let mut lo = [f64x2_splat(0.0); 4];
    let mut hi = [f64x2_splat(0.0); 4];
    let mut i = 0;
    while i < n {
        // SAFETY: i + 4 <= n <= len and every slice holds len f64s, so each 16-byte (unaligned)
        // load reads two values inside its slice.
        unsafe {
            let x0 = v128_load(a.as_ptr().add(i).cast::<v128>());
            let x1 = v128_load(a.as_ptr().add(i + 2).cast::<v128>());
            for j in 0..4 {
                let y0 = v128_load(b[j].as_ptr().add(i).cast::<v128>());
                let y1 = v128_load(b[j].as_ptr().add(i + 2).cast::<v128>());
                lo[j] = f64x2_add(lo[j], f64x2_mul(x0, y0));
                hi[j] = f64x2_add(hi[j], f64x2_mul(x1, y1));
            }
        }
        i += 4;
    }
    std::array::from_fn(|j| {
        let tail: f64 = a[n..].iter().zip(&b[j][n..]).map(|(x, y)| x * y).sum();
        let (l, h) = (lo[j], hi[j]);
        (f64x2_extract_lane::<0>(l) + f64x2_extract_lane::<1>(l))
            + (f64x2_extract_lane::<0>(h) + f64x2_extract_lane::<1>(h))
            + tail
    })
}

/// [`dot_block`] of `a` with four vectors (elsewhere: four calls; the compiler vectorizes those).
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
fn dot_block4(a: &[f64], b: [&[f64]; 4]) -> [f64; 4] {
    b.map(|y| dot_block(a, y))
}

/// All pairwise dot products of `vs` (equal lengths), the upper triangle of an n×n matrix
/// (`g[i][j]`, j ≥ i), equal to [`dot`] of each pair. It goes block by block over the values:
/// one block of every vector (60 prompts of 100×768: 60 × 8 KiB) stays in cache while all pairs
/// use it, instead of streaming two whole vectors from memory per pair.
fn gram(vs: &[&[f64]]) -> Vec<Vec<f64>> {
    let n = vs.len();
    let len = vs.first().map_or(0, |v| v.len());
    let mut g = vec![vec![0.0; n]; n];
    for start in (0..len).step_by(BLOCK) {
        let end = (start + BLOCK).min(len);
        for i in 0..n {
            let a = &vs[i][start..end];
            let mut j = i;
            while j + 4 <= n {
                let four = dot_block4(a, std::array::from_fn(|k| &vs[j + k][start..end]));
                for (k, d) in four.into_iter().enumerate() {
                    g[i][j + k] += d;
                }
                j += 4;
            }
            for j in j..n {
                g[i][j] += dot_block(a, &vs[j][start..end]);
            }
        }
    }
    g
}

/// The measure over all pairs of `prepared` (one measure), as a symmetric n×n matrix.
fn pairwise(prepared: &[Prepared<'_>]) -> Vec<Vec<f64>> {
    let n = prepared.len();
    let mut m = vec![vec![0.0; n]; n];
    let cosines: Option<Vec<(&[f64], f64)>> = prepared
        .iter()
        .map(|p| match p {
            Prepared::Cosine { values, norm2 } => Some((values.as_slice(), *norm2)),
            _ => None,
        })
        .collect();
    match cosines {
        Some(cs) => {
            let g = gram(&cs.iter().map(|c| c.0).collect::<Vec<_>>());
            for i in 0..n {
                for j in i..n {
                    m[i][j] = cosine(g[i][j], cs[i].1, cs[j].1);
                    m[j][i] = m[i][j];
                }
            }
        }
        None => {
            for i in 0..n {
                for j in i..n {
                    m[i][j] = prepared[i].measure(&prepared[j]);
                    m[j][i] = m[i][j];
                }
            }
        }
    }
    m
}

/// The n×n matrix of the measure over `items`.
pub fn matrix(items: &[&PromptTensor], measure: Measure) -> Result<Vec<Vec<f64>>> {
    if let Some(first) = items.first() {
        for t in &items[1..] {
            first.check_same_shape(t)?;
        }
    }
    for (i, t) in items.iter().enumerate() {
        crate::prompt::check_finite(&format!("item {i}"), t)?;
    }
    let prepared: Vec<Prepared<'_>> = items.iter().map(|t| Prepared::new(t, measure)).collect();
    Ok(pairwise(&prepared))
}

/// (task index, origin index).
type Key = (usize, usize);

/// One prompt in an across-origins analysis.
#[derive(Debug, Clone)]
pub struct Labelled<'a> {
    pub task: String,
    pub origin: String,
    pub values: &'a PromptTensor,
}

/// The paper's across-origins view: for each pair of tasks, an origins × origins matrix of the
/// measure (cells comparing a prompt with itself omitted), averaged into one cell of a
/// tasks × tasks matrix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcrossOrigins {
    pub measure: Measure,
    pub tasks: Vec<String>,
    pub origins: Vec<String>,
    /// `matrix[i][j]`: mean of the cells of `pairs[i][j]`; `None` when no cell exists.
    pub matrix: Vec<Vec<Option<f64>>>,
    /// `pairs[i][j][a][b]`: measure between task i from origin a and task j from origin b; `None`
    /// for omitted (identical) or missing pairs.
    pub pairs: Vec<Vec<Vec<Vec<Option<f64>>>>>,
}

/// Builds the across-origins view; tasks and origins keep their first-seen order.
pub fn across_origins(items: &[Labelled<'_>], measure: Measure) -> Result<AcrossOrigins> {
    let mut tasks: Vec<String> = Vec::new();
    let mut origins: Vec<String> = Vec::new();
    let mut by_key: BTreeMap<(usize, usize), &PromptTensor> = BTreeMap::new();
    for item in items {
        let t = index_of(&mut tasks, &item.task);
        let o = index_of(&mut origins, &item.origin);
        if by_key.insert((t, o), item.values).is_some() {
            return Err(Error::InvalidParameter {
                name: "prompts",
                value: format!("{}@{}", item.task, item.origin),
                reason: "appears twice; the across-origins view needs one prompt per task and origin",
            });
        }
    }
    let (nt, no) = (tasks.len(), origins.len());
    if let Some((first, rest)) = items.split_first() {
        for item in rest {
            first.values.check_same_shape(item.values)?;
        }
    }
    for item in items {
        crate::prompt::check_finite(&format!("{}@{}", item.task, item.origin), item.values)?;
    }
    // Each prompt prepared once, each unordered pair measured once (the measures are symmetric).
    let keys: Vec<Key> = by_key.keys().copied().collect();
    let prepared: Vec<Prepared<'_>> = by_key.values().map(|t| Prepared::new(t, measure)).collect();
    let values = pairwise(&prepared);
    let lookup = |ka: Key, kb: Key| {
        let (i, j) = (keys.binary_search(&ka).ok()?, keys.binary_search(&kb).ok()?);
        (i != j).then(|| values[i][j])
    };
    let mut pairs = vec![vec![vec![vec![None; no]; no]; nt]; nt];
    let mut matrix = vec![vec![None; nt]; nt];
    for (ti, pair_row) in pairs.iter_mut().enumerate() {
        for (tj, cells) in pair_row.iter_mut().enumerate() {
            let (mut total, mut count) = (0.0, 0usize);
            for (oa, cell_row) in cells.iter_mut().enumerate() {
                for (ob, cell) in cell_row.iter_mut().enumerate() {
                    let Some(v) = lookup((ti, oa), (tj, ob)) else {
                        continue;
                    };
                    *cell = Some(v);
                    total += v;
                    count += 1;
                }
            }
            matrix[ti][tj] = (count > 0).then(|| total / count as f64);
        }
    }
    Ok(AcrossOrigins {
        measure,
        tasks,
        origins,
        matrix,
        pairs,
    })
}

fn index_of(list: &mut Vec<String>, key: &str) -> usize {
    match list.iter().position(|x| x == key) {
        Some(i) => i,
        None => {
            list.push(key.to_owned());
            list.len() - 1
        }
    }
}
