//! Soft-prompt tuning on a decoder-only model, as peft's CAUSAL_LM prompt tuning does it: the R
//! prompt rows go in front of the input embeddings, the R positions carry no label, and each
//! target token is predicted from the column before it.
//!
//! Batches are left-padded: `[pads][prompt][tokens]`, with rotary positions counted from the
//! first prompt row, so a padded example computes exactly what it computes alone, and greedy
//! decoding appends every sequence's next token in the same column.

use candle_core::{Result, Tensor};

use super::decoder::{Decoder, KvCache, select_rows};
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

/// Loss of a batch: the family-neutral [`super::Loss`].
pub type LossOutput = super::Loss;

/// Left-padded layout of a batch.
struct Packed {
    embeds: Tensor,
    positions: Vec<Vec<u32>>,
    valid: Vec<Vec<bool>>,
    /// Column where each example's tokens start.
    starts: Vec<usize>,
    width: usize,
    /// The column after every row's head ([`pack_tails`]; `width` when there are no tails).
    head_width: usize,
}

/// `[pads][prompt of the row][tokens]` for every row; rows may carry different prompts (of any
/// length, none included), and each is laid out exactly as it would be alone.
fn pack(model: &Decoder, prompts: &[&Tensor], seqs: &[&[u32]]) -> Result<Packed> {
    pack_tails(model, prompts, seqs, &vec![0; seqs.len()])
}

/// [`pack`] with the last `tails[b]` ids of each row after a column all rows share:
/// `[pads][prompt][head][tail][pads]`, the heads' ends aligned at `head_width` and the tails
/// right-padded. Causal attention never lets a real column see the padding after it, so each row
/// still computes what it computes alone; the columns before `head_width` are what a pass over
/// the heads alone computes (teacher-forced answers after inputs that decoding continues).
fn pack_tails(model: &Decoder, prompts: &[&Tensor], seqs: &[&[u32]], tails: &[usize]) -> Result<Packed> {
    let (lens, _) = super::row_lengths(prompts, seqs, model.max_positions())?;
    if tails.len() != seqs.len() || tails.iter().zip(seqs).any(|(t, s)| *t > s.len()) {
        candle_core::bail!("a row's tail is longer than its tokens");
    }
    let head_width = lens.iter().zip(tails).map(|(l, t)| l - t).max().unwrap_or(0);
    let tail_width = tails.iter().copied().max().unwrap_or(0);
    let width = head_width + tail_width;
    let d = model.hidden_size();
    let (mut rows, mut positions, mut valid, mut starts) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (((ids, prompt), len), tail) in seqs.iter().zip(prompts).zip(&lens).zip(tails) {
        let pad = head_width - (len - tail);
        let after = tail_width - tail;
        let r = prompt.dim(0)?;
        let mut parts = Vec::with_capacity(4);
        if pad > 0 {
            parts.push(Tensor::zeros((pad, d), model.dtype(), model.device())?);
        }
        if r > 0 {
            parts.push(prompt.to_dtype(model.dtype())?);
        }
        if !ids.is_empty() {
            parts.push(model.embed(&Tensor::from_slice(ids, ids.len(), model.device())?)?);
        }
        if after > 0 {
            parts.push(Tensor::zeros((after, d), model.dtype(), model.device())?);
        }
        rows.push(Tensor::cat(&parts, 0)?);
        positions.push(
            std::iter::repeat_n(0, pad)
                .chain(0..*len as u32)
                .chain(std::iter::repeat_n(0, after))
                .collect(),
        );
        valid.push((0..width).map(|c| c >= pad && c < pad + len).collect());
        starts.push(pad + r);
    }
    Ok(Packed {
        embeds: Tensor::stack(&rows, 0)?,
        positions,
        valid,
        starts,
        width,
        head_width,
    })
}

/// Fewest shared tokens worth a separate prefix pass.
const MIN_SHARED: usize = 4;

/// The distinct prompts of a batch (by tensor identity) and each row's index among them.
fn distinct<'a>(prompts: &[&'a Tensor]) -> (Vec<&'a Tensor>, Vec<u32>) {
    let mut groups: Vec<&Tensor> = Vec::new();
    let mut rows = Vec::with_capacity(prompts.len());
    for p in prompts {
        let g = match groups.iter().position(|g| g.id() == p.id()) {
            Some(g) => g,
            None => {
                groups.push(p);
                groups.len() - 1
            }
        };
        rows.push(g as u32);
    }
    (groups, rows)
}

/// The rows' prompts without gradient tracking, each distinct prompt detached once (the copies
/// share its storage and identity, so [`distinct`] still groups them).
fn detach_rows(prompts: &[&Tensor]) -> Vec<Tensor> {
    let (groups, row_group) = distinct(prompts);
    let detached: Vec<Tensor> = groups.iter().map(|p| p.detach()).collect();
    row_group.iter().map(|&g| detached[g as usize].clone()).collect()
}

/// The beginning every row of a batch shares (its prompt and the first `tokens` ids, e.g. a
/// chat template and a task's instruction), computed once per distinct prompt.
struct Shared {
    /// The prefix's keys and values, one row per batch row.
    cache: KvCache,
    /// The rotary position of each row's first unshared token.
    next: Vec<u32>,
    tokens: usize,
}

/// Computes the longest common prefix of `seqs` (at most `limit` ids) once per distinct prompt,
/// when that saves work: at least [`MIN_SHARED`] ids, and fewer distinct prompts than rows.
/// Exact: a row that continues the shared keys and values computes what it computes alone, and
/// gradients reach the prompt through them.
fn share_prefix(model: &Decoder, prompts: &[&Tensor], seqs: &[&[u32]], limit: usize) -> Result<Option<Shared>> {
    let Some(first) = seqs.first() else { return Ok(None) };
    let mut p = first.len().min(limit);
    for s in &seqs[1..] {
        p = first.iter().zip(s.iter()).take(p).take_while(|(a, b)| a == b).count();
    }
    let (groups, row_group) = distinct(prompts);
    if p < MIN_SHARED || groups.len() == seqs.len() {
        return Ok(None);
    }
    let shared = &first[..p];
    let packed = pack(model, &groups, &vec![shared; groups.len()])?;
    let mut cache = KvCache::new(model.num_layers(), groups.len());
    model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, Some(&mut cache))?;
    let next = row_group
        .iter()
        .map(|&g| Ok((groups[g as usize].dim(0)? + p) as u32))
        .collect::<Result<_>>()?;
    Ok(Some(Shared {
        cache: cache.select_rows(&row_group)?,
        next,
        tokens: p,
    }))
}

/// The rows' tokens after a shared prefix, laid out as [`pack_tails`] does, positions continuing
/// the prefix's.
fn pack_rest(model: &Decoder, shared: &Shared, seqs: &[&[u32]], tails: &[usize]) -> Result<Packed> {
    let empty = Tensor::zeros((0, model.hidden_size()), model.dtype(), model.device())?;
    let rest: Vec<&[u32]> = seqs.iter().map(|s| &s[shared.tokens..]).collect();
    let mut packed = pack_tails(model, &vec![&empty; seqs.len()], &rest, tails)?;
    for ((pos, valid), next) in packed.positions.iter_mut().zip(&packed.valid).zip(&shared.next) {
        for (p, ok) in pos.iter_mut().zip(valid) {
            if *ok {
                *p += next;
            }
        }
    }
    Ok(packed)
}

/// Hidden states of a batch (laid out by [`pack_tails`]), the shared prefix computed once when
/// that pays: the packing of the columns computed, how many leading ids of every row the prefix
/// covered, and the cache (prefix + rows) when `keep_cache`.
fn run(
    model: &Decoder,
    prompts: &[&Tensor],
    seqs: &[&[u32]],
    (limit, tails): (usize, &[usize]),
    keep_cache: bool,
) -> Result<(Tensor, Packed, usize, Option<KvCache>)> {
    match share_prefix(model, prompts, seqs, limit)? {
        Some(shared) => {
            let packed = pack_rest(model, &shared, seqs, tails)?;
            let tokens = shared.tokens;
            let mut cache = shared.cache;
            let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, Some(&mut cache))?;
            Ok((hidden, packed, tokens, Some(cache)))
        }
        None => {
            let packed = pack_tails(model, prompts, seqs, tails)?;
            let mut cache = keep_cache.then(|| KvCache::new(model.num_layers(), seqs.len()));
            let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, cache.as_mut())?;
            Ok((hidden, packed, 0, cache))
        }
    }
}

/// The mean NLL of the targets of `examples` under θ = `prompt` ([R, d]; a `Var` for training).
pub fn loss(model: &Decoder, prompt: &Tensor, examples: &[Example]) -> Result<LossOutput> {
    loss_rows(model, &vec![prompt; examples.len()], examples)
}

/// [`loss`] with a prompt per example (a batch that mixes prompts; each row computes what it
/// computes alone).
pub fn loss_rows(model: &Decoder, prompts: &[&Tensor], examples: &[Example]) -> Result<LossOutput> {
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    // A prefix may be shared up to the column before the first target (its hidden state is read).
    let limit = examples
        .iter()
        .map(|e| e.target_start.min(e.ids.len()))
        .min()
        .unwrap_or(0)
        .saturating_sub(1);
    let (hidden, packed, shared, _) = run(model, prompts, &seqs, (limit, &vec![0; seqs.len()]), false)?;
    let targets = Targets::of(examples, &packed, shared)?;
    let (loss, per_row) = targets.nll(model, &hidden)?;
    Ok(LossOutput {
        loss,
        per_token: per_row,
        counts: targets.counts,
    })
}

/// [`loss_rows`] and [`greedy_rows`] of the same rows from one forward pass, for evaluation: each
/// row is `[pads][prompt][input][answer][pads]` with the inputs' ends aligned, so the pass gives
/// the teacher-forced loss of the answers, and its keys and values up to the inputs' ends (the
/// answers' dropped) are the prefill that greedy decoding continues. `examples[b].ids` must begin
/// with `inputs[b]`; where one does not, the two passes run separately. No gradient.
pub fn loss_and_greedy_rows(
    model: &Decoder,
    prompts: &[&Tensor],
    examples: &[Example],
    inputs: &[&[u32]],
    (max_new, eos): (usize, &[u32]),
) -> Result<(LossOutput, Vec<Vec<u32>>)> {
    if prompts.len() != examples.len() || inputs.len() != examples.len() {
        candle_core::bail!(
            "{} prompts, {} examples, {} inputs",
            prompts.len(),
            examples.len(),
            inputs.len()
        );
    }
    let detached = detach_rows(prompts);
    let prompts: Vec<&Tensor> = detached.iter().collect();
    if examples
        .iter()
        .zip(inputs)
        .any(|(e, i)| !e.ids.starts_with(i) || i.is_empty())
    {
        let owned: Vec<Vec<u32>> = inputs.iter().map(|i| i.to_vec()).collect();
        return Ok((
            loss_rows(model, &prompts, examples)?,
            greedy_rows(model, &prompts, &owned, max_new, eos)?,
        ));
    }
    for (p, s) in prompts.iter().zip(inputs) {
        super::check_positions(p.dim(0)?, s.len(), max_new, model.max_positions())?;
    }
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let tails: Vec<usize> = examples
        .iter()
        .zip(inputs)
        .map(|(e, i)| e.ids.len() - i.len())
        .collect();
    // A prefix may be shared up to the column before the first target and before every input's
    // last token (greedy decoding starts from its hidden state).
    let limit = examples
        .iter()
        .zip(inputs)
        .map(|(e, i)| e.target_start.min(e.ids.len()).min(i.len()))
        .min()
        .unwrap_or(0)
        .saturating_sub(1);
    let (hidden, packed, shared, cache) = run(model, &prompts, &seqs, (limit, &tails), true)?;
    let targets = Targets::of(examples, &packed, shared)?;
    let (loss, per_row) = targets.nll(model, &hidden)?;
    let loss = LossOutput {
        loss,
        per_token: per_row,
        counts: targets.counts,
    };
    let mut cache = cache.ok_or_else(|| candle_core::Error::Msg("no decoding cache".into()))?;
    let head = packed.head_width;
    cache.truncate(cache.len() - (packed.width - head))?;
    let last = hidden.narrow(1, head - 1, 1)?;
    let next_pos: Vec<u32> = packed.positions.iter().map(|p| p[head - 1] + 1).collect();
    Ok((loss, decode(model, cache, last, next_pos, (max_new, eos))?))
}

/// [`loss_rows`] with gradient checkpointing ([`Decoder::checkpointed_grad`]): the activations of
/// one layer at a time instead of all of them, for one more forward pass of compute. Returns the
/// loss (detached) and the gradients of `scale` × the loss w.r.t. the prompts' variables. No
/// prefix is shared between rows: the prefix's keys and values would tie the layers together.
pub fn loss_grad_checkpointed(
    model: &Decoder,
    prompts: &[&Tensor],
    examples: &[Example],
    scale: f64,
) -> Result<(LossOutput, candle_core::backprop::GradStore)> {
    let seqs: Vec<&[u32]> = examples.iter().map(|e| e.ids.as_slice()).collect();
    let packed = pack(model, prompts, &seqs)?;
    let targets = Targets::of(examples, &packed, 0)?;
    let mut kept = None;
    let (_, grad) = model.checkpointed_grad(&packed.embeds, &packed.positions, &packed.valid, &mut |hidden| {
        let (loss, rows) = targets.nll(model, hidden)?;
        kept = Some((loss.detach(), rows.detach()));
        loss * scale
    })?;
    let Some((loss, per_row)) = kept else {
        candle_core::bail!("the loss was not computed")
    };
    // The prompts reach the layers through the packed embeddings: Σ embeds·g carries g to them.
    let grads = (&packed.embeds * grad)?.sum_all()?.backward()?;
    Ok((
        LossOutput {
            loss,
            per_token: per_row,
            counts: targets.counts,
        },
        grads,
    ))
}

/// The columns of a packed batch that predict a target token, the targets, and each example's
/// target count.
struct Targets {
    rows: Vec<u32>,
    ids: Vec<u32>,
    counts: Vec<usize>,
}

impl Targets {
    /// For hidden states of `packed`'s columns after the first `shared` (a shared prefix).
    fn of(examples: &[Example], packed: &Packed, shared: usize) -> Result<Self> {
        let (mut rows, mut ids, mut counts) = (Vec::new(), Vec::new(), Vec::new());
        for (b, (ex, start)) in examples.iter().zip(&packed.starts).enumerate() {
            let first = ex.target_start.min(ex.ids.len());
            for j in first..ex.ids.len() {
                if start + j < shared + 1 {
                    candle_core::bail!("a target token without a column before it (an empty prompt and input)");
                }
                rows.push((b * packed.width + start + j - shared - 1) as u32);
                ids.push(ex.ids[j]);
            }
            counts.push(ex.ids.len() - first);
        }
        if rows.is_empty() {
            candle_core::bail!("the batch has no target tokens");
        }
        Ok(Self { rows, ids, counts })
    }

    /// The mean NLL and the NLL of every target; only the columns that predict a target go
    /// through the LM head.
    fn nll(&self, model: &Decoder, hidden: &Tensor) -> Result<(Tensor, Tensor)> {
        let logits = model.logits(&select_rows(hidden, &self.rows)?)?;
        let targets = Tensor::from_slice(&self.ids, self.ids.len(), model.device())?;
        ops::nll(&logits, &targets)
    }
}

/// Logits at every position of one unpadded sequence, [len, V] (for checks against HF).
pub fn sequence_logits(model: &Decoder, prompt: &Tensor, ids: &[u32]) -> Result<Tensor> {
    let packed = pack(model, &[prompt], &[ids])?;
    let hidden = model.forward_embeds(&packed.embeds, &packed.positions, &packed.valid, None)?;
    let r = prompt.dim(0)?;
    model.logits(&hidden.squeeze(0)?.narrow(0, r, ids.len())?)
}

/// Greedy continuations of `inputs` under the prompt, with a KV cache: at most `max_new` tokens
/// each, stopping after any of `eos` (not included in the result).
pub fn greedy(
    model: &Decoder,
    prompt: &Tensor,
    inputs: &[Vec<u32>],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    greedy_rows(model, &vec![prompt; inputs.len()], inputs, max_new, eos)
}

/// [`greedy`] with a prompt per input.
pub fn greedy_rows(
    model: &Decoder,
    prompts: &[&Tensor],
    inputs: &[Vec<u32>],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<Vec<u32>>> {
    for (p, s) in prompts.iter().zip(inputs) {
        super::check_positions(p.dim(0)?, s.len(), max_new, model.max_positions())?;
    }
    let detached = detach_rows(prompts);
    let prompts: Vec<&Tensor> = detached.iter().collect();
    let seqs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let limit = seqs.iter().map(|s| s.len()).min().unwrap_or(0).saturating_sub(1);
    let (hidden, packed, _, cache) = run(model, &prompts, &seqs, (limit, &vec![0; seqs.len()]), true)?;
    let cache = cache.ok_or_else(|| candle_core::Error::Msg("no decoding cache".into()))?;
    let last = hidden.narrow(1, packed.width - 1, 1)?;
    let next_pos: Vec<u32> = packed.positions.iter().map(|p| p.last().map_or(0, |x| x + 1)).collect();
    decode(model, cache, last, next_pos, (max_new, eos))
}

/// Greedy decoding from a prefill: `last` [B, 1, d] the hidden state of each row's last column,
/// `cache` its keys and values, `next_pos` the next rotary position of each row.
fn decode(
    model: &Decoder,
    mut cache: KvCache,
    mut last: Tensor,
    mut next_pos: Vec<u32>,
    (max_new, eos): (usize, &[u32]),
) -> Result<Vec<Vec<u32>>> {
    let n = next_pos.len();
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut done = vec![false; n];
    for step in 0..max_new {
        let next: Vec<u32> = super::host::vec1(&model.logits(&last)?.squeeze(1)?.argmax(candle_core::D::Minus1)?)?;
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
        let valid = vec![vec![true]; n];
        last = model.forward_embeds(&embeds, &positions, &valid, Some(&mut cache))?;
        next_pos.iter_mut().for_each(|p| *p += 1);
    }
    Ok(out)
}

/// Rank classification in one forward pass: the summed NLL of every candidate continuation
/// (`candidates[j]`, e.g. a label's answer tokens and the end-of-turn id) after each input under
/// its row's prompt; `out[b][j]`.
///
/// Each row is `[pads][prompt][input][candidate 0]…[candidate L-1]`: a candidate's tokens see
/// the prompt, the input and the candidate's own earlier tokens (not the other candidates), at
/// the positions they would have right after the input, so the pass computes what L separate
/// teacher-forced passes over `input + candidate` compute.
pub fn rank(model: &Decoder, prompts: &[&Tensor], inputs: &[&[u32]], candidates: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    if prompts.len() != inputs.len() {
        candle_core::bail!("{} prompts for {} inputs", prompts.len(), inputs.len());
    }
    if candidates.is_empty() || candidates.iter().any(Vec::is_empty) {
        candle_core::bail!("rank scoring needs candidates with at least one token each");
    }
    let longest_candidate = candidates.iter().map(Vec::len).max().unwrap_or(0);
    for (p, i) in prompts.iter().zip(inputs) {
        super::check_positions(p.dim(0)?, i.len(), longest_candidate, model.max_positions())?;
    }
    let detached = detach_rows(prompts);
    let prompts: Vec<&Tensor> = detached.iter().collect();
    // The shared beginning (prompt, chat template, instruction) once per prompt; the last input
    // column stays in the pass below (the first candidate token is predicted from it).
    let limit = inputs.iter().map(|i| i.len()).min().unwrap_or(0).saturating_sub(1);
    let shared = share_prefix(model, &prompts, inputs, limit)?;
    let skip = shared.as_ref().map_or(0, |s| s.tokens);
    let past = shared.as_ref().map_or(0, |s| s.cache.len());
    let tail: usize = candidates.iter().map(Vec::len).sum();
    let all_candidates: Vec<u32> = candidates.iter().flatten().copied().collect();
    // Columns of each row before its candidates in this pass (its prompt too without sharing).
    let prefixes: Vec<usize> = prompts
        .iter()
        .zip(inputs)
        .map(|(p, i)| Ok(if shared.is_some() { 0 } else { p.dim(0)? } + i.len() - skip))
        .collect::<Result<_>>()?;
    if prefixes.contains(&0) {
        candle_core::bail!("rank scoring needs a prompt or input before the candidates");
    }
    let longest = prefixes.iter().copied().max().unwrap_or(0);
    let width = longest + tail;
    let d = model.hidden_size();
    let dev = model.device();
    let (mut rows, mut positions, mut valid) = (Vec::new(), Vec::new(), Vec::new());
    let mut mask = Vec::with_capacity(inputs.len() * width * (past + width));
    let (mut picked, mut targets) = (Vec::new(), Vec::new());
    for (b, ((prompt, input), &prefix)) in prompts.iter().zip(inputs).zip(&prefixes).enumerate() {
        let pad = longest - prefix;
        let mut parts = Vec::with_capacity(3);
        if pad > 0 {
            parts.push(Tensor::zeros((pad, d), model.dtype(), dev)?);
        }
        if shared.is_none() && prompt.dim(0)? > 0 {
            parts.push(prompt.to_dtype(model.dtype())?);
        }
        let ids: Vec<u32> = input[skip..].iter().chain(&all_candidates).copied().collect();
        parts.push(model.embed(&Tensor::from_slice(&ids, ids.len(), dev)?)?);
        rows.push(Tensor::cat(&parts, 0)?);
        // Which candidate each column belongs to (None: the row's own prefix or padding).
        let base = shared.as_ref().map_or(0, |s| s.next[b]);
        let mut owner: Vec<Option<usize>> = vec![None; longest];
        let mut pos: Vec<u32> = (0..pad)
            .map(|_| 0)
            .chain((0..prefix as u32).map(|i| base + i))
            .collect();
        for (j, c) in candidates.iter().enumerate() {
            owner.extend(std::iter::repeat_n(Some(j), c.len()));
            pos.extend((0..c.len() as u32).map(|k| base + prefix as u32 + k));
        }
        let cached: &[bool] = shared.as_ref().map_or(&[], |s| s.cache.valid(b));
        for q in 0..width {
            mask.extend(cached.iter().map(|&ok| if ok && q >= pad { 0f32 } else { f32::MIN }));
            mask.extend((0..width).map(|k| {
                let visible = k >= pad
                    && k <= q
                    && match (owner[q], owner[k]) {
                        (_, None) => true,
                        (Some(a), Some(b)) => a == b,
                        (None, Some(_)) => false,
                    };
                if visible { 0f32 } else { f32::MIN }
            }));
        }
        positions.push(pos);
        valid.push((0..width).map(|c| c >= pad).collect::<Vec<_>>());
        // Token k of candidate j is predicted from the column before it: the last input column
        // for k = 0, the candidate's own column k-1 after that.
        let mut col = longest;
        for c in candidates {
            for (k, &tok) in c.iter().enumerate() {
                let from = if k == 0 { longest - 1 } else { col + k - 1 };
                picked.push((b * width + from) as u32);
                targets.push(tok);
            }
            col += c.len();
        }
    }
    let embeds = Tensor::stack(&rows, 0)?;
    let mut cache = shared.map(|s| s.cache);
    let hidden = model.forward_masked(&embeds, &positions, mask, cache.as_mut(), &valid)?;
    let logits = model.logits(&select_rows(&hidden, &picked)?)?;
    let (_, per_row) = ops::nll(&logits, &Tensor::from_slice(&targets, targets.len(), dev)?)?;
    let per_row: Vec<f32> = super::host::vec1(&per_row)?;
    let mut out = Vec::with_capacity(inputs.len());
    let mut offset = 0;
    for _ in inputs {
        let mut scores = Vec::with_capacity(candidates.len());
        for c in candidates {
            scores.push(per_row[offset..offset + c.len()].iter().sum());
            offset += c.len();
        }
        out.push(scores);
    }
    Ok(out)
}

/// Greedy continuation by full recomputation at every step (no cache), to check [`greedy`].
pub fn greedy_recompute(
    model: &Decoder,
    prompt: &Tensor,
    input: &[u32],
    max_new: usize,
    eos: &[u32],
) -> Result<Vec<u32>> {
    let mut ids = input.to_vec();
    let mut out = Vec::new();
    for _ in 0..max_new {
        let logits = sequence_logits(model, &prompt.detach(), &ids)?;
        let tok: u32 = super::host::scalar(&logits.get(ids.len() - 1)?.argmax(0)?)?;
        if eos.contains(&tok) {
            break;
        }
        out.push(tok);
        ids.push(tok);
    }
    Ok(out)
}
