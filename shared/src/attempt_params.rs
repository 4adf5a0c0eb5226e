//! ATTEMPT's parameters as a run file stores them ([`Module`]: the frozen source prompts and the
//! attention module's trained weights), plain data: the core's file formats and arithmetic read
//! and write them without the model layer. The per-input mixing on a model is
//! [`crate::attempt`].

use crate::error::{Error, Result};
use crate::merge::SplitMix64;
use crate::tensor::PromptTensor;

/// The original's softmax temperature for hidden size `d`: d·e.
pub fn default_temperature(d: usize) -> f64 {
    d as f64 * std::f64::consts::E
}

/// An ATTEMPT module: the frozen sources and the attention's trained weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Module {
    /// The source prompts stacked, [K·R, d]: source k is rows k·R … (k+1)·R.
    pub sources: PromptTensor,
    /// One label per source (e.g. `mnli@origin0`).
    pub source_labels: Vec<String>,
    /// [d, r].
    pub w_down: PromptTensor,
    /// [r, d].
    pub w_up: PromptTensor,
    /// LayerNorm scale and shift, [1, d] each.
    pub ln_weight: PromptTensor,
    pub ln_bias: PromptTensor,
    pub temperature: f64,
}

impl Module {
    /// A fresh module over `sources` (each [R, d], the target prompt's shape): the projections
    /// drawn as torch's `nn.Linear` draws them (uniform in ±1/√fan_in; here from SplitMix64 seeded
    /// with `seed`, in order W_down then W_up, row-major), the LayerNorm at identity.
    pub fn init(sources: &[&PromptTensor], source_labels: Vec<String>, seed: u64) -> Result<Self> {
        let first = sources.first().ok_or(Error::NoOperands)?;
        let (rows, d) = (first.rows(), first.dim());
        let mut stacked = Vec::with_capacity(sources.len() * rows * d);
        for s in sources {
            first.check_same_shape(s)?;
            stacked.extend_from_slice(s.as_slice());
        }
        if source_labels.len() != sources.len() {
            return Err(Error::BadMetadata(format!(
                "{} labels for {} ATTEMPT sources",
                source_labels.len(),
                sources.len()
            )));
        }
        let r = rows;
        let mut rng = SplitMix64::new(seed);
        let mut uniform = |n: usize, fan_in: usize| -> Vec<f32> {
            let bound = 1.0 / (fan_in as f64).sqrt();
            (0..n).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect()
        };
        let w_down = uniform(d * r, d);
        let w_up = uniform(r * d, r);
        Ok(Self {
            sources: PromptTensor::new(sources.len() * rows, d, stacked)?,
            source_labels,
            w_down: PromptTensor::new(d, r, w_down)?,
            w_up: PromptTensor::new(r, d, w_up)?,
            ln_weight: PromptTensor::new(1, d, vec![1.0; d])?,
            ln_bias: PromptTensor::zeros(1, d),
            temperature: default_temperature(d),
        })
    }

    /// K, the number of sources.
    pub fn source_count(&self) -> usize {
        self.source_labels.len()
    }

    /// The labels of the attention's weights, in its order: each source's, then `target`.
    pub fn attention_labels(&self) -> Vec<&str> {
        self.source_labels
            .iter()
            .map(String::as_str)
            .chain(["target"])
            .collect()
    }

    /// How many values [`Self::trained`] has: 2·d·r + 2·d.
    pub fn trained_len(&self) -> usize {
        let (d, r) = (self.w_down.rows(), self.w_down.dim());
        2 * d * r + 2 * d
    }

    /// The trained values after the target prompt's, flat: W_down, W_up, LayerNorm scale, shift.
    pub fn trained(&self) -> Vec<f32> {
        [&self.w_down, &self.w_up, &self.ln_weight, &self.ln_bias]
            .iter()
            .flat_map(|t| t.as_slice().iter().copied())
            .collect()
    }

    /// This module with the trained values of `flat` (laid out as [`Self::trained`]).
    pub fn with_trained(&self, flat: &[f32]) -> Result<Self> {
        let (d, r) = (self.w_down.rows(), self.w_down.dim());
        let sizes = [d * r, r * d, d, d];
        if flat.len() != self.trained_len() {
            return Err(Error::DataLength {
                rows: 2 * r + 2,
                dim: d,
                len: flat.len(),
            });
        }
        let (down, rest) = flat.split_at(sizes[0]);
        let (up, rest) = rest.split_at(sizes[1]);
        let (lw, lb) = rest.split_at(d);
        Ok(Self {
            w_down: PromptTensor::new(d, r, down.to_vec())?,
            w_up: PromptTensor::new(r, d, up.to_vec())?,
            ln_weight: PromptTensor::new(1, d, lw.to_vec())?,
            ln_bias: PromptTensor::new(1, d, lb.to_vec())?,
            ..self.clone()
        })
    }

    /// The sources' values, then the trained ones ([`Self::trained`]): how the web app hands a
    /// module to its evaluation worker.
    pub fn to_flat(&self) -> Vec<f32> {
        let mut flat = self.sources.as_slice().to_vec();
        flat.extend(self.trained());
        flat
    }

    /// The module of [`Self::to_flat`]'s values over a target prompt of `rows` × `dim`, with its
    /// K `source_labels`, attention rank and temperature; checked as [`Self::validate`] checks.
    pub fn from_flat(
        source_labels: Vec<String>,
        rank: usize,
        temperature: f64,
        (rows, dim): (usize, usize),
        flat: &[f32],
    ) -> Result<Self> {
        let k = source_labels.len();
        let n_sources = k
            .checked_mul(rows)
            .and_then(|n| n.checked_mul(dim))
            .ok_or(Error::ShapeOverflow { rows, dim })?;
        if flat.len() < n_sources {
            return Err(Error::DataLength {
                rows: k * rows,
                dim,
                len: flat.len(),
            });
        }
        let (sources, trained) = flat.split_at(n_sources);
        let template = Self {
            sources: PromptTensor::new(k * rows, dim, sources.to_vec())?,
            source_labels,
            w_down: PromptTensor::zeros(dim, rank),
            w_up: PromptTensor::zeros(rank, dim),
            ln_weight: PromptTensor::zeros(1, dim),
            ln_bias: PromptTensor::zeros(1, dim),
            temperature,
        };
        let module = template.with_trained(trained)?;
        module.validate(rows, dim)?;
        Ok(module)
    }

    /// Checks the shapes against each other and a target prompt of `rows` × `dim`, and that
    /// every value is finite (a run file's module is untrusted).
    pub fn validate(&self, rows: usize, dim: usize) -> Result<()> {
        let k = self.source_labels.len();
        let r = self.w_down.dim();
        let bad = |tensor: &str, shape: [usize; 2], expected: &'static str| Error::WrongShape {
            tensor: format!("attempt.{tensor}"),
            shape: shape.to_vec(),
            expected,
        };
        if k == 0 || self.sources.shape() != [k * rows, dim] {
            return Err(bad("sources", self.sources.shape(), "[K·R, d], K ≥ 1 sources"));
        }
        if self.w_down.rows() != dim || r == 0 {
            return Err(bad("w_down", self.w_down.shape(), "[d, r]"));
        }
        if self.w_up.shape() != [r, dim] {
            return Err(bad("w_up", self.w_up.shape(), "[r, d]"));
        }
        for (name, t) in [("ln_weight", &self.ln_weight), ("ln_bias", &self.ln_bias)] {
            if t.shape() != [1, dim] {
                return Err(bad(name, t.shape(), "[1, d]"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::BadMetadata(format!(
                "the ATTEMPT temperature is {}",
                self.temperature
            )));
        }
        for (name, t) in self.tensors() {
            if let Some((count, first)) = t.non_finite() {
                return Err(Error::NonFinite {
                    tensor: name.to_owned(),
                    count,
                    first,
                });
            }
        }
        Ok(())
    }

    /// The stored tensors with their run-file names.
    pub fn tensors(&self) -> [(&'static str, &PromptTensor); 5] {
        [
            ("attempt.sources", &self.sources),
            ("attempt.w_down", &self.w_down),
            ("attempt.w_up", &self.w_up),
            ("attempt.ln_weight", &self.ln_weight),
            ("attempt.ln_bias", &self.ln_bias),
        ]
    }
}
