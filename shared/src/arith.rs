//! Arithmetic on soft prompts, with metadata that records what was done.
//!
//! Prompts (origins, task prompts, combinations) are points and task prompt vectors are
//! displacements, so a linear combination Σ cᵢxᵢ is meaningful when the coefficients of its point
//! operands add up to 1 (a prompt: θ₀ + τ, a mean of prompts) or to 0 (a vector: θ − θ₀, τ_A + τ_B).
//! Anything else (θ_A + θ_B, 2·θ) is refused with [`Error::InvalidParameter`].
//!
//! The main entry point is [`combine`]: θ₀ + λ·merge(w₁τ₁, …, wₙτₙ).

use crate::error::{Error, Result};
use crate::merge::{MergeMethod, merge};
use crate::prompt::{Operand, PromptKind, PromptMeta, SoftPrompt};
use crate::tensor::PromptTensor;

/// Σ cᵢxᵢ over prompts and vectors (see the module docs for which combinations are allowed).
pub fn linear_combination(terms: &[(f64, &SoftPrompt)]) -> Result<SoftPrompt> {
    let (_, first) = terms.first().ok_or(Error::NoOperands)?;
    for (_, p) in terms {
        refuse_attempt(p, "combine")?;
    }
    for (_, p) in &terms[1..] {
        first.check_compatible(p)?;
    }
    let point_weight: f64 = terms.iter().filter(|(_, p)| p.kind().is_prompt()).map(|(c, _)| c).sum();
    let kind = if point_weight.abs() < 1e-9 {
        PromptKind::TaskPromptVector
    } else if (point_weight - 1.0).abs() < 1e-9 {
        PromptKind::Combination
    } else {
        return Err(Error::InvalidParameter {
            name: "coefficients",
            value: format!("{point_weight} (sum over the prompt operands)"),
            reason: "prompts are points: their coefficients must sum to 1 (a prompt) or 0 (a vector)",
        });
    };

    let (rows, dim) = (first.values.rows(), first.values.dim());
    let mut acc = vec![0.0f64; rows * dim];
    for (c, p) in terms {
        for (a, &x) in acc.iter_mut().zip(p.values.as_slice()) {
            *a += c * f64::from(x);
        }
    }
    let values = PromptTensor::new(rows, dim, acc.into_iter().map(|x| x as f32).collect())?;

    // A prompt result keeps the origin all its prompt operands share; a vector result keeps the
    // origin all operands with a known origin share (θ − θ₀ remembers θ₀).
    let voters: Vec<Option<&PromptTensor>> = terms
        .iter()
        .filter(|(_, p)| kind == PromptKind::TaskPromptVector || p.kind().is_prompt())
        .map(|(_, p)| p.origin_values())
        .filter(|o| kind == PromptKind::Combination || o.is_some())
        .collect();
    let common_origin = match voters.first() {
        Some(Some(o)) if voters.iter().all(|x| x.is_some_and(|y| y == *o)) => Some((*o).clone()),
        _ => None,
    };
    let mut meta = combined_meta(kind, terms, rows, dim);
    meta.expression = Some(linear_expression(terms));
    if common_origin.is_none() {
        meta.origin = None;
    }
    Ok(SoftPrompt {
        values,
        origin: common_origin,
        meta,
        curves: Default::default(),
        attempt: None,
    })
}

/// An ATTEMPT run in arithmetic is an error naming it.
fn refuse_attempt(p: &SoftPrompt, what: &'static str) -> Result<()> {
    if p.kind() == PromptKind::Attempt {
        return Err(Error::AttemptRun { label: p.label(), what });
    }
    Ok(())
}

/// a + b.
pub fn add(a: &SoftPrompt, b: &SoftPrompt) -> Result<SoftPrompt> {
    linear_combination(&[(1.0, a), (1.0, b)])
}

/// a − b (θ − θ₀ gives the task prompt vector).
pub fn sub(a: &SoftPrompt, b: &SoftPrompt) -> Result<SoftPrompt> {
    linear_combination(&[(1.0, a), (-1.0, b)])
}

/// −τ.
pub fn neg(a: &SoftPrompt) -> Result<SoftPrompt> {
    linear_combination(&[(-1.0, a)])
}

/// c·τ.
pub fn scale(a: &SoftPrompt, c: f64) -> Result<SoftPrompt> {
    linear_combination(&[(c, a)])
}

/// Σ xᵢ.
pub fn sum(xs: &[&SoftPrompt]) -> Result<SoftPrompt> {
    linear_combination(&xs.iter().map(|x| (1.0, *x)).collect::<Vec<_>>())
}

/// (1/n) Σ xᵢ: divides by the number of operands.
pub fn mean(xs: &[&SoftPrompt]) -> Result<SoftPrompt> {
    let c = 1.0 / xs.len().max(1) as f64;
    linear_combination(&xs.iter().map(|x| (c, *x)).collect::<Vec<_>>())
}

/// θ₀ + λ·merge(w₁τ₁, …, wₙτₙ): applies task prompt vectors to an origin.
///
/// `origin` is usually an origin; any prompt works as the base (θ_A + τ_B), and the result keeps
/// the base's own origin, so its vector is the base's vector plus the merged one. `vectors` are task prompt vectors, or task prompts / combinations with a stored origin (their
/// vector is derived). `weights` is empty (all 1) or one per vector. Vectors whose origin differs
/// from `origin` are allowed (the cross-origin experiment) and flagged as `mixed_origins`.
pub fn combine(
    origin: &SoftPrompt,
    vectors: &[&SoftPrompt],
    weights: &[f64],
    lambda: f64,
    method: &MergeMethod,
) -> Result<SoftPrompt> {
    refuse_attempt(origin, "combine")?;
    if !origin.kind().is_prompt() {
        return Err(Error::VectorIsNotAPrompt { label: origin.label() });
    }
    let merged = merge_vectors(vectors, weights, lambda, method)?;
    origin.check_compatible(&merged)?;
    let values = origin
        .values
        .zip_map(&merged.values, |o, t| (f64::from(o) + f64::from(t)) as f32)?;

    let mut meta = merged.meta;
    meta.kind = PromptKind::Combination;
    meta.origin = origin.meta.origin.clone();
    meta.mixed_origins |= vectors.iter().any(|v| origins_differ(origin, v));
    if meta.model.is_none() {
        meta.model = origin.meta.model.clone();
    }
    meta.layout = origin.meta.layout;
    meta.expression = Some(format!("{} + {}", origin.label(), meta.expression.unwrap_or_default()));
    meta.operands.insert(
        0,
        Operand {
            label: origin.label(),
            kind: origin.kind(),
            weight: 1.0,
            origin: origin.origin_id().map(str::to_owned),
        },
    );
    Ok(SoftPrompt {
        values,
        origin: origin.origin_values().cloned(),
        meta,
        curves: Default::default(),
        attempt: None,
    })
}

/// λ·merge(w₁τ₁, …, wₙτₙ) as a task prompt vector, without an origin. Its expression reads
/// `method(w₁*τ₁, …)`, prefixed by `λ*` when λ ≠ 1.
pub fn merge_vectors(
    vectors: &[&SoftPrompt],
    weights: &[f64],
    lambda: f64,
    method: &MergeMethod,
) -> Result<SoftPrompt> {
    let first = vectors.first().ok_or(Error::NoOperands)?;
    let weights: Vec<f64> = match weights.len() {
        0 => vec![1.0; vectors.len()],
        n if n == vectors.len() => weights.to_vec(),
        n => {
            return Err(Error::WeightCount {
                weights: n,
                vectors: vectors.len(),
            });
        }
    };
    for v in &vectors[1..] {
        first.check_compatible(v)?;
    }
    let taus = vectors.iter().map(|v| v.vector_values()).collect::<Result<Vec<_>>>()?;
    let merged = merge(&taus.iter().collect::<Vec<_>>(), &weights, method)?;
    let merged = if lambda == 1.0 {
        merged
    } else {
        merged.map(|x| (lambda * f64::from(x)) as f32)
    };
    let (rows, dim) = (merged.rows(), merged.dim());

    let weighted: Vec<(f64, &SoftPrompt)> = weights.iter().copied().zip(vectors.iter().copied()).collect();
    let mut meta = combined_meta(PromptKind::TaskPromptVector, &weighted, rows, dim);
    if meta.mixed_origins {
        meta.origin = None;
    }
    let terms = vectors
        .iter()
        .zip(&weights)
        .map(|(v, w)| term(*w, &vector_label(v)))
        .collect::<Vec<_>>()
        .join(", ");
    meta.expression = Some(term(lambda, &format!("{}({terms})", method.describe())));
    Ok(SoftPrompt {
        values: merged,
        origin: None,
        meta,
        curves: Default::default(),
        attempt: None,
    })
}

/// True when two prompts are known to start from different origins: their origin tensors differ,
/// or, where a tensor is missing, their origin ids differ. Unknown is not different.
fn origins_differ(a: &SoftPrompt, b: &SoftPrompt) -> bool {
    match (a.origin_values(), b.origin_values()) {
        (Some(x), Some(y)) => x != y,
        _ => matches!((a.origin_id(), b.origin_id()), (Some(x), Some(y)) if x != y),
    }
}

/// The label of a prompt's vector: `tau[label]` (vectors are labelled that way already).
fn vector_label(p: &SoftPrompt) -> String {
    match p.kind() {
        PromptKind::TaskPromptVector => p.label(),
        _ => format!("tau[{}]", p.label()),
    }
}

/// Metadata of a result built from weighted operands: shared model and layout, union of tasks,
/// and `mixed_origins` when the operands are known to start from different origins.
fn combined_meta(kind: PromptKind, terms: &[(f64, &SoftPrompt)], rows: usize, dim: usize) -> PromptMeta {
    let mut meta = PromptMeta::new(kind, rows, dim);
    for &(weight, p) in terms {
        if meta.model.is_none() {
            meta.model = p.meta.model.clone();
            meta.layout = p.meta.layout;
            meta.origin = p.meta.origin.clone();
        }
        for t in &p.meta.tasks {
            if !meta.tasks.contains(t) {
                meta.tasks.push(t.clone());
            }
        }
        meta.mixed_origins |= p.meta.mixed_origins || origins_differ(terms[0].1, p);
        meta.operands.push(Operand {
            label: p.label(),
            kind: p.kind(),
            weight,
            origin: p.origin_id().map(str::to_owned),
        });
    }
    meta
}

fn linear_expression(terms: &[(f64, &SoftPrompt)]) -> String {
    let mut out = String::new();
    for (i, (c, p)) in terms.iter().enumerate() {
        let label = p.label();
        let (sign, mag) = if *c < 0.0 { ("-", -c) } else { ("+", *c) };
        match (i, sign) {
            (0, "-") => out.push('-'),
            (0, _) => {}
            _ => {
                out.push(' ');
                out.push_str(sign);
                out.push(' ');
            }
        }
        out.push_str(&term(mag, &label));
    }
    out
}

fn term(c: f64, label: &str) -> String {
    if c == 1.0 {
        label.to_owned()
    } else {
        format!("{}*{label}", fmt_num(c))
    }
}

/// Shortest form that reads back as the same f64.
fn fmt_num(x: f64) -> String {
    format!("{x}")
}
