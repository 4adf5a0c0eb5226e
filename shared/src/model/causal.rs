//! Soft-prompt tuning on a decoder-only model, as peft's CAUSAL_LM prompt tuning does it: the R
//! prompt rows go in front of the input embeddings, the R positions carry no label, and each
//! target token is predicted from the column before it.
//!
//! Batches are left-padded: `[pads][prompt][tokens]`, with rotary positions counted from the
//! first prompt row, so a padded example computes exactly what it computes alone, and greedy
//! decoding appends every sequence's next token in the same column.

use candle_core::{Result, Tensor};

use super::llama::{KvCache, Llama, select_rows};
use super::ops;

/// One sequence: token ids, and the index of the first target token (the loss covers
/// `ids[target_start..]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub target_start: usize,
}

impl Example {
    /// Loss on the answer only: `input` then `answer`.
    pub fn answer(input: &[u32], answer: &[u32]) -> Self {
        Self {
            ids: [input, answer].concat(),
            target_start: input.len(),
        }
    }

    /// Loss on every token (trl's default): the first token is predicted from the prompt.
    pub fn whole(ids: &[u32]) -> Self {
        Self {
            ids: ids.to_vec(),
            target_start: 0,
        }
    }
}

/// Loss of a batch: the mean NLL over all its target tokens (differentiable), and each example's
/// own mean and target count.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub loss: Tensor,
    pub per_example: Vec<f32>,
    pub counts: Vec<usize>,
}

/// Left-padded layout of a batch.
struct Packed {
    embeds: Tensor,
    positions: Vec<Vec<u32>>,
    valid: Vec<Vec<bool>>,
    /// Column where each example's tokens start.
    starts: Vec<usize>,
    width: usize,
}

fn pack(model: &Llama, prompt: &Tensor, seqs: &[&[u32]]) -> Result<Packed> {
    let r = prompt.dim(0)?;
    let longest = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    let width = r + longest;
    let d = model.hidden_size();
    let (mut rows, mut positions, mut valid, mut starts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ids in seqs {
        let pad = longest - ids.len();
        let mut parts = Vec::with_capacity(3);
        if pad > 0 {
            parts.push(Tensor::zeros((pad, d), model.dtype(), model.device())?);
        }
        parts.push(prompt.to_dtype(model.dtype())?);
        if !ids.is_empty() {
            parts.push(model.embed(&Tensor::from_slice(ids, ids.len(), model.device())?)?);
        }
        rows.push(Tensor::cat(&parts, 0)?);
        positions.push((0..pad as u32).map(|_| 0).chain(0..(r + ids.len()) as u32).collect());
        valid.push((0..width).map(|c| c >= pad).collect());
        starts.push(pad + r);
    }
    Ok(Packed {
        embeds: Tensor::stack(&rows, 0)?,
        positions,
        valid,
        starts,
        width,
    })
}

/// The mean NLL of the targets of `examples` under θ = `prompt` ([R, d]; a `Var` for training).
pub fn loss(model: &Llama, prompt: &Tensor, examples: &[Example]) -> Result<LossOutput> {
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let packed = pack(model, prompt, &seqs)?;
    let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, None)?;
    // Only the columns that predict a target go through the LM head.
    let (mut rows, mut targets, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (b, (ex, start)) in examples.iter().zip(&packed.starts).enumerate() {
        let first = ex.target_start.min(ex.ids.len());
        for j in first..ex.ids.len() {
            rows.push((b * packed.width + start + j - 1) as u32);
            targets.push(ex.ids[j]);
        }
        counts.push(ex.ids.len() - first);
    }
    if rows.is_empty() {
        candle_core::bail!("the batch has no target tokens");
    }
    let logits = model.logits(&select_rows(&hidden, &rows)?)?;
    let targets = Tensor::from_slice(&targets, targets.len(), model.device())?;
    let (loss, per_row) = ops::nll(&logits, &targets)?;
    let per_row: Vec<f32> = per_row.to_vec1()?;
    let mut per_example = Vec::with_capacity(counts.len());
    let mut offset = 0;
    for &n in &counts {
        let sum: f32 = per_row[offset..offset + n].iter().sum();
        per_example.push(if n == 0 { f32::NAN } else { sum / n as f32 });
        offset += n;
    }
    Ok(LossOutput {
        loss,
        per_example,
        counts,
    })
}

/// Logits at every position of one unpadded sequence, [len, V] (for checks against HF).
pub fn sequence_logits(model: &Llama, prompt: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let packed = pack(model, prompt, &[ids])?;
    let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, None)?;
    let r = prompt.dim(0)?;
    model.logits(&hidden.squeeze(0)?.narrow(0, r, ids.len())?)
}

/// Greedy continuations of `inputs` under the prompt, with a KV cache: at most `max_new` tokens
/// each, stopping after any of `eos` (not included in the result).
pub fn greedy(
    model: &Llama,
    prompt: &Tensor,
    inputs: &[Vec<u32>],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    let prompt = prompt.detach();
    let seqs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let packed = pack(model, &prompt, &seqs)?;
    let mut cache = KvCache::new(model.cfg.num_hidden_layers, inputs.len());
    let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, Some(&mut cache))?;
    let mut last = hidden.narrow(1, packed.width - 1, 1)?;
    let mut next_pos: Vec<u32> = packed.positions.iter().map(|p| p.last().map_or(0, |x| x + 1)).collect();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); inputs.len()];
    let mut done = vec![false; inputs.len()];
    for step in 0..max_new {
        let next: Vec<u32> = model
            .logits(&last)?
            .squeeze(1)?
            .argmax(candle_core::D::Minus1)?
            .to_vec1()?;
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                continue;
            }
            if eos.contains(&tok) {
                done[i] = true;
            } else {
                out[i].push(tok);
            }
        }
        if done.iter().all(|d| *d) || step + 1 == max_new {
            break;
        }
        let ids = Tensor::from_slice(&next, (next.len(), 1), model.device())?;
        let embeds = model.embed(&ids)?;
        let positions: Vec<Vec<u32>> = next_pos.iter().map(|&p| vec![p]).collect();
        let valid = vec![vec![true]; inputs.len()];
        last = model.forward_embeds(&embeds, &positions, &valid, Some(&mut cache))?;
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    Ok(out)
}

/// Greedy continuation by full recomputation at every step (no cache), to check [`greedy`].
pub fn greedy_recompute(
    model: &Llama,
    prompt: &Tensor,
    input: &[u32],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<u32>> {
    let mut ids = input.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = sequence_logits(model, &prompt.detach(), &ids)?;
        let tok: u32 = logits.get(ids.len() - 1)?.argmax(0)?.to_scalar()?;
        if eos.contains(&tok) {
            break;
        }
        out.push(tok);
        ids.push(tok);
    }
    Ok(out)
}
