//! Soft-prompt forward passes on candle, shared by the trainer and the browser: T5 (encoder-
//! decoder, prompt in front of the encoder input) and the LLaMA family (decoder-only, prompt in
//! front of the whole input). Verified against HF transformers + peft on tiny random models
//! (`tests/fixtures/models`, `shared/tests/models.rs`).

pub mod causal;
pub mod fused;
pub mod llama;
pub mod load;
pub mod ops;
pub mod t5;

pub use candle_core::{DType, Device, Tensor, Var};

/// The length of every row of a batch whose rows each carry a prompt (`prompts[i]` [R_i, d],
/// R_i may be 0) before their tokens, and the longest: the width the batch is padded to.
pub(crate) fn row_lengths(
    prompts: &[&candle_core::Tensor],
    seqs: &[&[u32]],
) -> candle_core::Result<(Vec<usize>, usize)> {
    if prompts.len() != seqs.len() {
        candle_core::bail!("{} prompts for {} sequences", prompts.len(), seqs.len());
    }
    let lens: Vec<usize> = prompts
        .iter()
        .zip(seqs)
        .map(|(p, s)| Ok(p.dim(0)? + s.len()))
        .collect::<candle_core::Result<_>>()?;
    let width = lens.iter().copied().max().unwrap_or(0);
    Ok((lens, width))
}
