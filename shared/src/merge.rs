//! Merging several task prompt vectors into one: weighted sum and mean, TIES, DARE, magnitude
//! pruning.
//!
//! The semantics follow peft's `peft/utils/merge_utils.py` (0.21.2), applied to the whole R×d
//! prompt as one tensor. peft's DARE takes a keep `density`; here it is the drop probability
//! p = 1 − density, and kept values are rescaled by 1/(1−p) as in peft. DARE's random draws come
//! from [`SplitMix64`] seeded by the user (one draw per element, vectors in order, elements in
//! row-major order), not from torch's generator: the browser and the CLI give the same result for
//! a seed, and the masks differ from peft's.
//!
//! Magnitude pruning keeps `floor(density · n)` values of largest magnitude (as `int(density *
//! numel)` in peft); among equal magnitudes the earlier element wins.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tensor::PromptTensor;

/// How TIES elects the sign of each element.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SignElection {
    /// Sign of the sum of the values (peft's `"total"`).
    #[default]
    Mass,
    /// Sign of the sum of the signs (peft's `"frequency"`).
    Count,
}

crate::named!(SignElection, "sign election", { Mass => "mass", Count => "count" });

impl SignElection {
    pub fn as_str(self) -> &'static str {
        crate::names::Named::name(self)
    }
}

/// A merge method by name, without its parameters: what `--method`, the Compose view's
/// `method=` and a menu list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeKind {
    Sum,
    Mean,
    Ties,
    Dare,
    DareTies,
    Magnitude,
}

crate::named!(MergeKind, "merge method", {
    Sum => "sum",
    Mean => "mean",
    Ties => "ties",
    Dare => "dare",
    DareTies => "dare-ties",
    Magnitude => "magnitude",
});

impl MergeKind {
    /// Whether the method takes a `density` (the fraction of values kept).
    pub fn takes_density(self) -> bool {
        matches!(self, Self::Ties | Self::Magnitude)
    }

    /// Whether the method takes a `drop` probability and its `seed`.
    pub fn takes_drop(self) -> bool {
        matches!(self, Self::Dare | Self::DareTies)
    }

    /// Whether the method elects a sign.
    pub fn takes_sign(self) -> bool {
        matches!(self, Self::Ties | Self::DareTies)
    }
}

/// A merge's parameters as a user gave them (flags, a URL): `None` where not given.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MergeParams {
    pub density: Option<f64>,
    pub drop: Option<f64>,
    pub seed: Option<u64>,
    pub sign: Option<SignElection>,
}

/// A way of merging vectors τ₁…τₙ with weights w₁…wₙ into one vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "kebab-case")]
pub enum MergeMethod {
    /// Σ wᵢτᵢ (task arithmetic).
    Sum,
    /// (1/n) Σ wᵢτᵢ.
    Mean,
    /// Trim each τᵢ to its `density` largest magnitudes, elect a sign per element, average the
    /// weighted values that agree with it (disjoint mean). `sign` defaults to mass, as in `tpv
    /// combine`.
    Ties {
        density: f64,
        #[serde(default)]
        sign: SignElection,
    },
    /// Drop each value with probability `drop`, rescale the rest by 1/(1−drop), weighted sum.
    /// `seed` defaults to 0, as in `tpv combine`.
    Dare {
        drop: f64,
        #[serde(default)]
        seed: u64,
    },
    /// DARE's random drop and rescale, then TIES' sign election and disjoint mean.
    DareTies {
        drop: f64,
        #[serde(default)]
        seed: u64,
        #[serde(default)]
        sign: SignElection,
    },
    /// Trim each τᵢ to its `density` largest magnitudes, weighted sum.
    Magnitude { density: f64 },
}

impl MergeMethod {
    /// The method `kind` with `params`: a parameter it does not take is an error, as is a
    /// missing density or drop; the seed defaults to 0 and the sign to mass. Validated.
    pub fn build(kind: MergeKind, params: &MergeParams) -> Result<Self> {
        let method = crate::names::Named::name(kind);
        let unused = |name: &'static str, takes: bool, given: bool| {
            if given && !takes {
                Err(Error::UnusedParameter { name, method })
            } else {
                Ok(())
            }
        };
        unused("density", kind.takes_density(), params.density.is_some())?;
        unused("drop", kind.takes_drop(), params.drop.is_some())?;
        unused("seed", kind.takes_drop(), params.seed.is_some())?;
        unused("sign", kind.takes_sign(), params.sign.is_some())?;
        let density = || {
            params.density.ok_or(Error::MissingParameter {
                name: "density",
                method,
            })
        };
        let drop = || params.drop.ok_or(Error::MissingParameter { name: "drop", method });
        let seed = params.seed.unwrap_or(0);
        let sign = params.sign.unwrap_or_default();
        let m = match kind {
            MergeKind::Sum => Self::Sum,
            MergeKind::Mean => Self::Mean,
            MergeKind::Ties => Self::Ties {
                density: density()?,
                sign,
            },
            MergeKind::Magnitude => Self::Magnitude { density: density()? },
            MergeKind::Dare => Self::Dare { drop: drop()?, seed },
            MergeKind::DareTies => Self::DareTies {
                drop: drop()?,
                seed,
                sign,
            },
        };
        m.validate()?;
        Ok(m)
    }

    /// The method's name without its parameters.
    pub fn kind(&self) -> MergeKind {
        match self {
            Self::Sum => MergeKind::Sum,
            Self::Mean => MergeKind::Mean,
            Self::Ties { .. } => MergeKind::Ties,
            Self::Dare { .. } => MergeKind::Dare,
            Self::DareTies { .. } => MergeKind::DareTies,
            Self::Magnitude { .. } => MergeKind::Magnitude,
        }
    }

    /// Rejects parameters outside their range.
    pub fn validate(&self) -> Result<()> {
        let density = |d: f64| {
            if (0.0..=1.0).contains(&d) {
                Ok(())
            } else {
                Err(Error::InvalidParameter {
                    name: "density",
                    value: d.to_string(),
                    reason: "must be in [0, 1]",
                })
            }
        };
        let drop = |p: f64| {
            if (0.0..1.0).contains(&p) {
                Ok(())
            } else {
                Err(Error::InvalidParameter {
                    name: "drop",
                    value: p.to_string(),
                    reason: "must be in [0, 1)",
                })
            }
        };
        match *self {
            Self::Sum | Self::Mean => Ok(()),
            Self::Ties { density: d, .. } | Self::Magnitude { density: d } => density(d),
            Self::Dare { drop: p, .. } | Self::DareTies { drop: p, .. } => drop(p),
        }
    }

    /// The call as written in an expression, e.g. `ties(density=0.2, sign=mass)`.
    pub fn describe(&self) -> String {
        match *self {
            Self::Sum => "sum".into(),
            Self::Mean => "mean".into(),
            Self::Ties { density, sign } => {
                format!("ties(density={}, sign={})", density, sign.as_str())
            }
            Self::Dare { drop, seed } => format!("dare(drop={drop}, seed={seed})"),
            Self::DareTies { drop, seed, sign } => {
                format!("dare_ties(drop={drop}, seed={seed}, sign={})", sign.as_str())
            }
            Self::Magnitude { density } => format!("magnitude(density={density})"),
        }
    }
}

/// Merges `vectors` (all the same shape) with `weights` (one per vector).
pub fn merge(vectors: &[&PromptTensor], weights: &[f64], method: &MergeMethod) -> Result<PromptTensor> {
    method.validate()?;
    let first = vectors.first().ok_or(Error::NoOperands)?;
    if weights.len() != vectors.len() {
        return Err(Error::WeightCount {
            weights: weights.len(),
            vectors: vectors.len(),
        });
    }
    for v in &vectors[1..] {
        first.check_same_shape(v)?;
    }
    let (rows, dim) = (first.rows(), first.dim());
    let n = first.len();
    let as_f64 = |t: &PromptTensor| t.as_slice().iter().map(|&x| f64::from(x)).collect::<Vec<_>>();

    let merged: Vec<f64> = match *method {
        MergeMethod::Sum => weighted_sum(&vectors.iter().map(|v| as_f64(v)).collect::<Vec<_>>(), weights, n),
        MergeMethod::Mean => {
            let k = vectors.len() as f64;
            weighted_sum(&vectors.iter().map(|v| as_f64(v)).collect::<Vec<_>>(), weights, n)
                .into_iter()
                .map(|x| x / k)
                .collect()
        }
        MergeMethod::Magnitude { density } => {
            let pruned: Vec<_> = vectors.iter().map(|v| magnitude_prune(&as_f64(v), density)).collect();
            weighted_sum(&pruned, weights, n)
        }
        MergeMethod::Ties { density, sign } => {
            let pruned: Vec<_> = vectors.iter().map(|v| magnitude_prune(&as_f64(v), density)).collect();
            disjoint_merge(&pruned, weights, sign, n)
        }
        MergeMethod::Dare { drop, seed } => {
            let pruned = dare_drop(vectors.iter().map(|v| as_f64(v)).collect(), drop, seed);
            weighted_sum(&pruned, weights, n)
        }
        MergeMethod::DareTies { drop, seed, sign } => {
            let pruned = dare_drop(vectors.iter().map(|v| as_f64(v)).collect(), drop, seed);
            disjoint_merge(&pruned, weights, sign, n)
        }
    };
    PromptTensor::new(rows, dim, merged.into_iter().map(|x| x as f32).collect())
}

fn weighted_sum(tensors: &[Vec<f64>], weights: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n];
    for (t, &w) in tensors.iter().zip(weights) {
        for (o, &x) in out.iter_mut().zip(t) {
            *o += w * x;
        }
    }
    out
}

/// Keeps the `floor(density · n)` largest magnitudes, zeroes the rest.
pub fn magnitude_prune(values: &[f64], density: f64) -> Vec<f64> {
    if density >= 1.0 {
        return values.to_vec();
    }
    let k = (density * values.len() as f64).floor() as usize;
    let mut order: Vec<usize> = (0..values.len()).collect();
    // Stable sort: among equal magnitudes the earlier element comes first and is kept.
    order.sort_by(|&a, &b| values[b].abs().total_cmp(&values[a].abs()));
    let mut out = vec![0.0; values.len()];
    for &i in &order[..k] {
        out[i] = values[i];
    }
    out
}

/// DARE's drop: each value is kept with probability 1−p and rescaled by 1/(1−p).
fn dare_drop(mut tensors: Vec<Vec<f64>>, drop: f64, seed: u64) -> Vec<Vec<f64>> {
    let mut rng = SplitMix64::new(seed);
    let scale = 1.0 / (1.0 - drop);
    for t in &mut tensors {
        for x in t.iter_mut() {
            *x = if rng.next_f64() < drop { 0.0 } else { *x * scale };
        }
    }
    tensors
}

/// TIES' elect-sign and disjoint mean: per element, the weighted values whose sign agrees with the
/// elected sign (computed on the unweighted values, as peft does), divided by how many agree.
fn disjoint_merge(tensors: &[Vec<f64>], weights: &[f64], sign: SignElection, n: usize) -> Vec<f64> {
    let sgn = |x: f64| {
        if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    (0..n)
        .map(|i| {
            let score: f64 = match sign {
                SignElection::Mass => tensors.iter().map(|t| t[i]).sum(),
                SignElection::Count => tensors.iter().map(|t| sgn(t[i])).sum(),
            };
            let elected = if score >= 0.0 { 1.0 } else { -1.0 };
            let (mut total, mut count) = (0.0, 0usize);
            for (t, &w) in tensors.iter().zip(weights) {
                if sgn(t[i]) == elected {
                    total += w * t[i];
                    count += 1;
                }
            }
            total / count.max(1) as f64
        })
        .collect()
}

/// SplitMix64 (Steele, Lea, Flood 2014): tiny, portable, and identical on every platform.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The increment of the state per draw.
    const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        Self::mix(self.0)
    }

    #[inline]
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        Self::unit(self.next_u64())
    }

    /// A draw as [`Self::next_f64`] makes it uniform in [0, 1).
    pub fn unit(draw: u64) -> f64 {
        (draw >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Draw `i` (from 0) of a generator whose state is `state`, as [`Self::next_u64`] would give
    /// it after `i` others, without making them: the state is a counter (state + (i + 1)·γ) that a
    /// mixing function turns into the draw, so draws can be made in parallel, or on a GPU
    /// (`trainer/kernels/fused.cu` has the same function).
    #[inline]
    pub fn draw_at(state: u64, i: u64) -> u64 {
        Self::mix(state.wrapping_add(Self::GAMMA.wrapping_mul(i.wrapping_add(1))))
    }

    /// Moves on by `n` draws, as `n` calls of [`Self::next_u64`] would.
    pub fn skip(&mut self, n: u64) {
        self.0 = self.0.wrapping_add(Self::GAMMA.wrapping_mul(n));
    }

    /// The generator's state: `SplitMix64::new(g.state())` continues where `g` stands.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// Uniform in 0..n (Lemire's multiply-shift; n ≥ 1).
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, xs: &mut [T]) {
        for i in (1..xs.len()).rev() {
            let j = self.below(i + 1);
            xs.swap(i, j);
        }
    }
}
