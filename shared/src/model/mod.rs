//! Soft-prompt forward passes on candle, shared by the trainer and the browser: T5 (encoder-
//! decoder, prompt in front of the encoder input) and the decoder-only families (LLaMA, Mistral,
//! Qwen2/3, Phi-3, Gemma 2/3: prompt in front of the whole input), one folder each under
//! `families/` behind the interface of `family`. Verified against HF transformers + peft on tiny
//! random models (`tests/fixtures/models`, `shared/tests/models.rs`).

pub mod attention;
pub mod causal;
pub mod decoder;
pub mod families;
pub mod family;
pub mod fused;
pub mod gpu;
pub mod host;
pub mod kernel_check;
pub mod load;
pub mod ops;
pub mod panel;

pub use families::{llama, t5};

pub use candle_core::{DType, Device, Tensor, Var};

/// A batch's loss, for either family: the mean NLL over all its target tokens (differentiable),
/// the NLL of every target token (examples in order, each `counts[i]` long) and each example's
/// target count. The per-token values stay where they were computed: [`Self::per_example`]
/// reads them (a training step never does).
#[derive(Debug, Clone)]
pub struct Loss {
    pub loss: Tensor,
    pub per_token: Tensor,
    pub counts: Vec<usize>,
}

impl Loss {
    /// Each example's mean NLL (NaN for one without targets): one read of the device.
    pub fn per_example(&self) -> candle_core::Result<Vec<f32>> {
        per_example_means(&self.per_token, &self.counts)
    }
}

/// The sum of each run of `counts[i]` consecutive values.
pub(crate) fn group_sums(values: &[f32], counts: &[usize]) -> Vec<f32> {
    let mut offset = 0;
    counts
        .iter()
        .map(|&n| {
            let sum = values.iter().skip(offset).take(n).sum();
            offset += n;
            sum
        })
        .collect()
}

/// Each example's mean of its `counts[i]` per-token values (NaN for none), read from the device.
pub(crate) fn per_example_means(per_token: &Tensor, counts: &[usize]) -> candle_core::Result<Vec<f32>> {
    let values = host::flat_f32(per_token)?;
    Ok(group_sums(&values, counts)
        .into_iter()
        .zip(counts)
        .map(|(s, &n)| if n == 0 { f32::NAN } else { s / n as f32 })
        .collect())
}

/// The length of every row of a batch whose rows each carry a prompt (`prompts[i]` [R_i, d],
/// R_i may be 0) before their tokens, and the longest: the width the batch is padded to.
pub(crate) fn row_lengths(
    prompts: &[&candle_core::Tensor],
    seqs: &[&[u32]],
    max_positions: usize,
) -> candle_core::Result<(Vec<usize>, usize)> {
    if prompts.len() != seqs.len() {
        candle_core::bail!("{} prompts for {} sequences", prompts.len(), seqs.len());
    }
    let lens: Vec<usize> = prompts
        .iter()
        .zip(seqs)
        .map(|(p, s)| {
            let (r, n) = (p.dim(0)?, s.len());
            check_positions(r, n, 0, max_positions)?;
            Ok(r + n)
        })
        .collect::<candle_core::Result<_>>()?;
    let width = lens.iter().copied().max().unwrap_or(0);
    Ok((lens, width))
}

/// A sequence of `prompt` rows, `tokens` ids and `new` generated ids must fit the model's
/// positions: checked before anything is allocated for it (a crafted 100,000-row prompt or a
/// 10 MB input line would otherwise ask for hundreds of GB).
pub fn check_positions(prompt: usize, tokens: usize, new: usize, max_positions: usize) -> candle_core::Result<()> {
    let total = prompt.saturating_add(tokens).saturating_add(new);
    if total > max_positions {
        candle_core::bail!(
            "a sequence of {total} positions ({prompt} prompt rows + {tokens} tokens{}) exceeds the model's {max_positions} \
             (shorten the prompt, set data.max_source_tokens or --max-source-tokens, or lower max_new_tokens)",
            if new > 0 {
                format!(" + {new} to generate")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
