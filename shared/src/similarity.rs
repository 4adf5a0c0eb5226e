//! Similarity of prompts and vectors: the paper's token-mean cosine, the flattened cosine, mean
//! absolute difference and norm difference; matrices over a set; the across-origins view.
//!
//! Everything accumulates in f64. A cosine involving a zero vector is 0 (as scikit-learn's
//! `cosine_similarity` gives).

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

impl Measure {
    pub const ALL: [Measure; 4] = [Self::CosineMean, Self::CosineFlat, Self::MeanAbsDiff, Self::NormDiff];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CosineMean => "cosine-mean",
            Self::CosineFlat => "cosine-flat",
            Self::MeanAbsDiff => "mean-abs-diff",
            Self::NormDiff => "norm-diff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
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
    Ok(match measure {
        Measure::CosineMean => cosine(&a.token_mean(), &b.token_mean()),
        Measure::CosineFlat => {
            let f = |t: &PromptTensor| t.as_slice().iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            cosine(&f(a), &f(b))
        }
        Measure::MeanAbsDiff => {
            let total: f64 = a
                .as_slice()
                .iter()
                .zip(b.as_slice())
                .map(|(&x, &y)| (f64::from(x) - f64::from(y)).abs())
                .sum();
            total / a.len().max(1) as f64
        }
        Measure::NormDiff => (a.norm() - b.norm()).abs(),
    })
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// The n×n matrix of the measure over `items`.
pub fn matrix(items: &[&PromptTensor], measure: Measure) -> Result<Vec<Vec<f64>>> {
    if let Some(first) = items.first() {
        for t in &items[1..] {
            first.check_same_shape(t)?;
        }
    }
    // Token-means are computed once per item, not once per pair.
    let means: Vec<Vec<f64>> = match measure {
        Measure::CosineMean => items.iter().map(|t| t.token_mean()).collect(),
        _ => Vec::new(),
    };
    let n = items.len();
    let mut m = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in i..n {
            let v = if measure == Measure::CosineMean {
                cosine(&means[i], &means[j])
            } else {
                similarity(items[i], items[j], measure)?
            };
            m[i][j] = v;
            m[j][i] = v;
        }
    }
    Ok(m)
}

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
    let mut pairs = vec![vec![vec![vec![None; no]; no]; nt]; nt];
    let mut matrix = vec![vec![None; nt]; nt];
    for (ti, pair_row) in pairs.iter_mut().enumerate() {
        for (tj, cells) in pair_row.iter_mut().enumerate() {
            let (mut total, mut count) = (0.0, 0usize);
            for (oa, cell_row) in cells.iter_mut().enumerate() {
                for (ob, cell) in cell_row.iter_mut().enumerate() {
                    if ti == tj && oa == ob {
                        continue;
                    }
                    let (Some(a), Some(b)) = (by_key.get(&(ti, oa)), by_key.get(&(tj, ob))) else {
                        continue;
                    };
                    let v = similarity(a, b, measure)?;
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
