//! A run's examples and its sample stream: records tokenized for the model ([`encode_options`],
//! [`encode`], [`Examples`]), the step counts of a config and the micro-batches of each optimizer
//! step ([`step_batches`]).

use anyhow::{Context, Result};
use tpv_shared::eval::EncodeOptions;
use tpv_shared::merge::SplitMix64;
use tpv_shared::tasks::{Record, TaskSpec};

use super::Trainer;
use super::engine::Encoded;
use crate::config::Config;
use crate::data;
use crate::models::LoadedModel;

/// How a config's records become model inputs (chat template, system turn, loss, truncation).
pub fn encode_options(config: &Config) -> EncodeOptions {
    EncodeOptions {
        chat: config.model.chat_template,
        loss_on: config.train.loss,
        max_source_tokens: config.data.max_source_tokens,
        system: config.model.system_prompt.clone(),
    }
}

/// Tokenizes records for the model family.
pub fn encode(loaded: &LoadedModel, task: &TaskSpec, records: &[Record], opts: &EncodeOptions) -> Result<Vec<Encoded>> {
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let e = loaded
            .encode(task, rec, opts)
            .with_context(|| format!("tokenizing example {}", i + 1))?;
        out.push(e);
    }
    Ok(out)
}

/// Joins the tasks of a multi-task run split by split, alternating between tasks (example i of
/// every task, then example i+1, …) so that batches mix them; one task is left as it is.
fn interleave<T: Clone>(parts: Vec<[Vec<T>; 3]>) -> [Vec<T>; 3] {
    let mut out: [Vec<T>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for (k, split) in out.iter_mut().enumerate() {
        let lists: Vec<&Vec<T>> = parts.iter().map(|p| &p[k]).collect();
        let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
        for i in 0..longest {
            split.extend(lists.iter().filter_map(|l| l.get(i)).cloned());
        }
    }
    out
}

/// Total optimizer steps and warmup steps of a config for `n_train` examples.
pub fn step_counts(config: &Config, n_train: usize) -> (u64, u64) {
    let o = &config.optim;
    let per_step = (o.batch_size * o.gradient_accumulation) as f64;
    let total = match (o.max_steps, o.epochs) {
        (Some(s), _) => s,
        (None, Some(e)) => ((e * n_train as f64) / per_step).ceil().max(1.0) as u64,
        (None, None) => 1,
    };
    let warmup = match (o.warmup_steps, o.warmup_ratio) {
        (Some(w), _) => w,
        (None, Some(r)) => (r * total as f64).ceil() as u64,
        (None, None) => 0,
    };
    (total, warmup)
}

/// The order of the training examples in `epoch`.
fn epoch_order(n: usize, epoch: u64, shuffle: bool, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffle {
        let mut rng = SplitMix64::new(seed ^ (epoch + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        rng.shuffle(&mut order);
    }
    order
}

/// Indices of the micro-batches of optimizer step `step`.
pub fn step_batches(
    n: usize,
    step: u64,
    batch: usize,
    accumulation: usize,
    shuffle: bool,
    seed: u64,
) -> Vec<Vec<usize>> {
    let mut cached: Option<(u64, Vec<usize>)> = None;
    let first = step as usize * batch * accumulation;
    (0..accumulation)
        .map(|a| {
            (0..batch)
                .map(|j| {
                    let k = first + a * batch + j;
                    let epoch = (k / n) as u64;
                    if cached.as_ref().map(|c| c.0) != Some(epoch) {
                        cached = Some((epoch, epoch_order(n, epoch, shuffle, seed)));
                    }
                    cached.as_ref().map_or(0, |c| c.1[k % n])
                })
                .collect()
        })
        .collect()
}

/// A run's examples: validation and test tokenized (and checked against the model's positions)
/// up front; training examples when the sample stream first reaches them (a short run on a large
/// dataset tokenizes the examples it uses, not the whole set). Records of several tasks are
/// interleaved split by split.
pub(super) struct Examples<'a> {
    loaded: &'a LoadedModel,
    all: &'a [data::Splits],
    opts: EncodeOptions,
    rows: usize,
    train_records: Vec<(usize, &'a Record)>,
    pub(super) train: Vec<Option<Encoded>>,
    pub(super) validation: Vec<Encoded>,
    pub(super) test: Vec<Encoded>,
}

impl<'a> Examples<'a> {
    pub(super) fn new(t: &Trainer<'a>, all: &'a [data::Splits]) -> Result<Self> {
        let records: Vec<[Vec<(usize, &Record)>; 3]> = all
            .iter()
            .enumerate()
            .map(|(i, s)| {
                [&s.train, &s.validation, &s.test].map(|recs| recs.iter().map(|r| (i, r)).collect::<Vec<_>>())
            })
            .collect();
        let [train_records, valid, test] = interleave(records);
        let mut ex = Self {
            loaded: t.loaded,
            all,
            opts: encode_options(t.config),
            rows: t.shape.0,
            train: vec![None; train_records.len()],
            train_records,
            validation: Vec::new(),
            test: Vec::new(),
        };
        ex.validation = valid.iter().map(|&p| ex.encode(p)).collect::<Result<_>>()?;
        ex.test = test.iter().map(|&p| ex.encode(p)).collect::<Result<_>>()?;
        // Every scored example must fit the model with the prompt in front (and the tokens to
        // generate), before any training: not a failure at the end of a long run.
        let new_tokens = match t.config.train.scoring {
            tpv_shared::eval::Scoring::Generate => t.config.train.max_new_tokens,
            tpv_shared::eval::Scoring::Rank => 0,
        };
        for (split, examples) in [("validation", &ex.validation), ("test", &ex.test)] {
            for (i, e) in examples.iter().enumerate() {
                e.check_fits(&t.loaded.model, ex.rows, new_tokens)
                    .with_context(|| format!("{split} example {}", i + 1))?;
            }
        }
        Ok(ex)
    }

    fn encode(&self, (t, rec): (usize, &Record)) -> Result<Encoded> {
        let task = &self.all[t].task;
        encode(self.loaded, task, std::slice::from_ref(rec), &self.opts)
            .with_context(|| format!("task {}", task.name))?
            .pop()
            .context("an example was lost in tokenization")
    }

    /// The micro-batches of one step (indexes into the training split), tokenized on first use.
    pub(super) fn train_batches(&mut self, idx: &[Vec<usize>]) -> Result<Vec<Vec<&Encoded>>> {
        for &i in idx.iter().flatten() {
            if self.train[i].is_none() {
                let e = self
                    .encode(self.train_records[i])
                    .with_context(|| format!("tokenizing training example {}", i + 1))?;
                e.check_fits(&self.loaded.model, self.rows, 0)
                    .with_context(|| format!("training example {}", i + 1))?;
                self.train[i] = Some(e);
            }
        }
        Ok(idx
            .iter()
            .map(|mb| mb.iter().filter_map(|&i| self.train[i].as_ref()).collect())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_stream_wraps_epochs_and_is_deterministic() {
        let b = step_batches(5, 1, 2, 2, false, 1);
        assert_eq!(b, vec![vec![4, 0], vec![1, 2]]);
        let s1 = step_batches(5, 3, 2, 1, true, 7);
        let s2 = step_batches(5, 3, 2, 1, true, 7);
        assert_eq!(s1, s2);
    }
}
