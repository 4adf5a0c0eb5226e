//! [`PromptTensor`]: the R×d block of f32 values every prompt, origin and vector is made of.
//!
//! Plain row-major storage keeps the arithmetic exact, dependency-free and identical on native and
//! wasm32; the model code converts to and from candle tensors at its boundary.

use crate::error::{Error, Result};

/// An R×d matrix of f32, row-major: R virtual tokens of dimension d.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptTensor {
    rows: usize,
    dim: usize,
    data: Vec<f32>,
}

impl PromptTensor {
    /// Wraps `data` as a `rows`×`dim` matrix; the length must be `rows * dim`.
    pub fn new(rows: usize, dim: usize, data: Vec<f32>) -> Result<Self> {
        let expected = rows.checked_mul(dim).ok_or(Error::ShapeOverflow { rows, dim })?;
        if data.len() != expected {
            return Err(Error::DataLength {
                rows,
                dim,
                len: data.len(),
            });
        }
        Ok(Self { rows, dim, data })
    }

    /// A `rows`×`dim` matrix of zeros.
    pub fn zeros(rows: usize, dim: usize) -> Self {
        Self {
            rows,
            dim,
            data: vec![0.0; rows * dim],
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.dim]
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Row `i` (a virtual token), or `None` past the end.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        (i < self.rows).then(|| &self.data[i * self.dim..(i + 1) * self.dim])
    }

    /// The first `n` rows (used to drop the unused decoder block of a seq2seq peft prompt).
    pub fn first_rows(&self, n: usize) -> Result<Self> {
        if n > self.rows {
            return Err(Error::TooFewRows {
                needed: n,
                have: self.rows,
            });
        }
        Ok(Self {
            rows: n,
            dim: self.dim,
            data: self.data[..n * self.dim].to_vec(),
        })
    }

    /// The rows followed by `blocks - 1` blocks of zeros of the same size: the seq2seq peft layout,
    /// whose decoder block is stored but never read by prompt tuning.
    pub fn padded_blocks(&self, blocks: usize) -> Self {
        let mut data = Vec::with_capacity(self.data.len() * blocks.max(1));
        data.extend_from_slice(&self.data);
        data.resize(self.data.len() * blocks.max(1), 0.0);
        Self {
            rows: self.rows * blocks.max(1),
            dim: self.dim,
            data,
        }
    }

    /// Checks that both have the same shape.
    pub fn check_same_shape(&self, other: &Self) -> Result<()> {
        if self.shape() != other.shape() {
            return Err(Error::ShapeMismatch {
                left: self.shape(),
                right: other.shape(),
            });
        }
        Ok(())
    }

    /// Element-wise map.
    pub fn map(&self, f: impl Fn(f32) -> f32) -> Self {
        Self {
            rows: self.rows,
            dim: self.dim,
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    /// Element-wise combination of two tensors of the same shape.
    pub fn zip_map(&self, other: &Self, f: impl Fn(f32, f32) -> f32) -> Result<Self> {
        self.check_same_shape(other)?;
        Ok(Self {
            rows: self.rows,
            dim: self.dim,
            data: self.data.iter().zip(&other.data).map(|(&a, &b)| f(a, b)).collect(),
        })
    }

    /// Frobenius norm, accumulated in f64.
    pub fn norm(&self) -> f64 {
        self.data
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// Largest absolute value.
    pub fn max_abs(&self) -> f32 {
        self.data.iter().fold(0.0, |m, &x| m.max(x.abs()))
    }

    /// Mean over the rows (the token-mean, a d-vector), accumulated in f64.
    pub fn token_mean(&self) -> Vec<f64> {
        let mut mean = vec![0.0f64; self.dim];
        for row in self.data.chunks_exact(self.dim.max(1)) {
            for (m, &x) in mean.iter_mut().zip(row) {
                *m += f64::from(x);
            }
        }
        let n = self.rows.max(1) as f64;
        mean.iter_mut().for_each(|m| *m /= n);
        mean
    }

    /// Mean of the Euclidean norms of the rows.
    pub fn mean_row_norm(&self) -> f64 {
        if self.rows == 0 {
            return 0.0;
        }
        self.data
            .chunks_exact(self.dim.max(1))
            .map(|r| r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt())
            .sum::<f64>()
            / self.rows as f64
    }

    /// Number of NaN or infinite values and the flat index of the first one.
    pub fn non_finite(&self) -> Option<(usize, usize)> {
        let first = self.data.iter().position(|x| !x.is_finite())?;
        let count = self.data[first..].iter().filter(|x| !x.is_finite()).count();
        Some((count, first))
    }
}
