//! Readable prompts: the vocabulary tokens nearest each virtual token of a prompt (or of a task
//! prompt vector's direction), by cosine similarity to the model's input embedding matrix — how
//! Lester et al. (2021) read their tuned prompts. One definition for `tpv inspect
//! --nearest-tokens` and the web app's worker.

use crate::error::{Error, Result};
use crate::tensor::PromptTensor;

/// A vocabulary token near a virtual token.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Near {
    pub token: u32,
    pub cosine: f32,
}

/// A vocabulary token near a virtual token, with the token's text (the tokenizer's own piece).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NearToken {
    pub token: u32,
    pub text: String,
    pub cosine: f32,
}

/// [`nearest_tokens`] with each token's text from `codec` (empty for an id the tokenizer lacks).
pub fn readable(
    prompt: &PromptTensor,
    embeddings: &[f32],
    k: usize,
    codec: &crate::text::TextCodec,
) -> Result<Vec<Vec<NearToken>>> {
    let tokenizer = codec.tokenizer();
    Ok(nearest_tokens(prompt, embeddings, k)?
        .into_iter()
        .map(|row| {
            row.into_iter()
                .map(|n| NearToken {
                    token: n.token,
                    text: tokenizer.id_to_token(n.token).unwrap_or_default(),
                    cosine: n.cosine,
                })
                .collect()
        })
        .collect())
}

/// The `k` rows of `embeddings` ([vocab, d], row-major) nearest each row of `prompt` by cosine,
/// best first (ties by the lower token id). A zero row (of either) has cosine 0 to everything.
pub fn nearest_tokens(prompt: &PromptTensor, embeddings: &[f32], k: usize) -> Result<Vec<Vec<Near>>> {
    let d = prompt.dim();
    if d == 0 || !embeddings.len().is_multiple_of(d) {
        return Err(Error::ShapeMismatch {
            left: prompt.shape(),
            right: [embeddings.len() / d.max(1), d],
        });
    }
    let norms: Vec<f32> = embeddings.chunks_exact(d).map(|e| dot(e, e).sqrt()).collect();
    let k = k.min(norms.len());
    let mut out = Vec::with_capacity(prompt.rows());
    for i in 0..prompt.rows() {
        let row = prompt.row(i).unwrap_or_default();
        let norm = dot(row, row).sqrt();
        let mut scored: Vec<Near> = embeddings
            .chunks_exact(d)
            .zip(&norms)
            .enumerate()
            .map(|(t, (e, en))| Near {
                token: t as u32,
                cosine: if norm > 0.0 && *en > 0.0 {
                    dot(row, e) / (norm * en)
                } else {
                    0.0
                },
            })
            .collect();
        let better = |a: &Near, b: &Near| b.cosine.total_cmp(&a.cosine).then(a.token.cmp(&b.token));
        if k > 0 && k < scored.len() {
            scored.select_nth_unstable_by(k - 1, better);
        }
        scored.truncate(k);
        scored.sort_by(better);
        out.push(scored);
    }
    Ok(out)
}

/// Σ aᵢbᵢ in eight independent lanes (vectorizes; the same sum on every target).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            lanes[j] += x[j] * y[j];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_by_cosine_not_by_length() {
        // Vocabulary: 0 = x axis (long), 1 = y axis, 2 = diagonal, 3 = zero.
        let emb = [10.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let prompt = PromptTensor::new(2, 2, vec![0.1, 0.0, 0.2, 0.3]).unwrap();
        let near = nearest_tokens(&prompt, &emb, 2).unwrap();
        assert_eq!(near[0][0], Near { token: 0, cosine: 1.0 });
        assert_eq!(near[0][1].token, 2);
        assert!((near[0][1].cosine - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6);
        // (0.2, 0.3): the diagonal (0.98) before y (0.83) before x (0.55).
        assert_eq!(near[1].iter().map(|n| n.token).collect::<Vec<_>>(), [2, 1]);
        // k beyond the vocabulary: all of it, the zero row last with cosine 0.
        let all = nearest_tokens(&prompt, &emb, 10).unwrap();
        assert_eq!(all[1].len(), 4);
        assert_eq!(all[1][3], Near { token: 3, cosine: 0.0 });
        assert!(nearest_tokens(&prompt, &emb[..7], 1).is_err());
    }

    #[test]
    fn the_dot_product_matches_the_plain_sum() {
        let a: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..37).map(|i| (i as f32 * 0.11).cos()).collect();
        let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
        assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-5);
    }
}
