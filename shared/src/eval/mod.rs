//! Evaluating a prompt: records → model inputs (the training code's encoding), per-example loss and
//! greedy prediction, the task's metrics and a confusion matrix. The CLI (`tpv eval`, the training
//! loop's validation and test) and the web app's Evaluate view run this same code, so their
//! numbers agree.
//!
//! An [`EvalSet`] is a task's examples with everything needed to encode them as training did (the
//! task spec, chat or raw input, truncation, generation length): `tpv sweep` writes one per task
//! into the study and `tpv report` bundles them with the site.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::model::load::{self, Model};
use crate::model::{causal, t5};
use crate::prompt::TaskType;
use crate::tasks::{Record, Style, TaskError, TaskSpec};
use crate::text::{TextCodec, TextError};

pub mod set;
pub mod summary;

pub use set::*;
pub use summary::*;

/// Why an example could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("an example of the wrong family for a {0} model")]
    WrongFamily(&'static str),
    #[error(transparent)]
    Set(#[from] SetError),
    #[error("model files: {0}")]
    Files(String),
    #[error("rank scoring needs a task with a label set; {0} has none (use generation)")]
    NoLabels(String),
}

/// How a batch is scored: the scoring, the generation length and, for rank classification, the
/// label set tokenized as answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Scorer {
    pub scoring: Scoring,
    pub max_new: usize,
    /// Generation only: also compute each example's loss (a second forward pass; NaN without).
    pub with_loss: bool,
    labels: Vec<String>,
    candidates: Vec<Vec<u32>>,
}

impl Scorer {
    /// The label words rank classification chooses among.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }
}

/// A frozen model with its tokenizer and end-of-sequence ids.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub model: Model,
    pub codec: TextCodec,
    pub eos: Vec<u32>,
}

/// One example, tokenized for its model family.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    Causal {
        example: causal::Example,
        /// The prompt part (input ids) for generation.
        input: Vec<u32>,
        target: String,
    },
    Seq2Seq {
        example: t5::Example,
        target: String,
    },
}

impl Encoded {
    /// Whether the example fits the model with `prompt_rows` in front of it: its whole sequence
    /// (input and answer, as the loss reads it) and its input followed by `max_new` generated
    /// tokens (0 when scoring by rank) — checked before a run spends hours on the examples that
    /// do fit.
    pub fn check_fits(&self, model: &Model, prompt_rows: usize, max_new: usize) -> Result<(), EvalError> {
        let max = model.max_positions();
        match self {
            Self::Causal { example, input, .. } => {
                crate::model::check_positions(prompt_rows, example.ids.len(), 0, max)?;
                crate::model::check_positions(prompt_rows, input.len(), max_new, max)?;
            }
            Self::Seq2Seq { example, .. } => {
                crate::model::check_positions(prompt_rows, example.input.len(), 0, max)?;
                crate::model::check_positions(0, example.target.len(), 0, max)?;
                crate::model::check_positions(0, 0, max_new, max)?;
            }
        }
        Ok(())
    }

    pub fn target(&self) -> &str {
        match self {
            Self::Causal { target, .. } | Self::Seq2Seq { target, .. } => target,
        }
    }

    /// How many target tokens the loss covers.
    pub fn target_count(&self) -> usize {
        match self {
            Self::Causal { example, .. } => example
                .ids
                .len()
                .saturating_sub(example.target_start.min(example.ids.len())),
            Self::Seq2Seq { example, .. } => example.target.len(),
        }
    }

    /// The input ids generation starts from.
    pub fn input(&self) -> &[u32] {
        match self {
            Self::Causal { input, .. } => input,
            Self::Seq2Seq { example, .. } => &example.input,
        }
    }
}

impl Loaded {
    /// A GGUF file (LLaMA architecture, tokenizer and chat template embedded); also returns the
    /// model's name from its metadata.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        reader: &mut R,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, Option<String>), EvalError> {
        let (model, cfg, extras) = load::from_gguf(reader, dtype, device)?;
        let codec = TextCodec::from_gguf(&extras)?;
        let eos = cfg.eos_token_id.map(|e| e.to_vec()).unwrap_or_default();
        Ok((Self { model, codec, eos }, extras.name))
    }

    /// An HF model: `config.json`, its safetensors shards, `tokenizer.json` and (optional)
    /// `tokenizer_config.json`. End-of-sequence ids: config.json's, then the tokenizer's.
    pub fn from_hf<B: AsRef<[u8]>>(
        config_json: &str,
        shards: &[B],
        tokenizer_json: &[u8],
        tokenizer_config: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, EvalError> {
        let model = load::from_safetensors(config_json, shards, dtype, device)?;
        let codec = TextCodec::from_hf(tokenizer_json, tokenizer_config)?;
        #[derive(Deserialize)]
        struct Ids {
            #[serde(default)]
            eos_token_id: Option<crate::model::decoder::TokenIds>,
        }
        let ids: Ids = serde_json::from_str(config_json).map_err(|e| EvalError::Files(format!("config.json: {e}")))?;
        let mut eos = ids.eos_token_id.map(|e| e.to_vec()).unwrap_or_default();
        if let Some(e) = codec.eos_token().and_then(|t| codec.token_id(t))
            && !eos.contains(&e)
        {
            eos.push(e);
        }
        Ok(Self { model, codec, eos })
    }

    /// A model from its files by name (the browser's file picker or downloads): one `.gguf`
    /// file, or `config.json` + `model.safetensors` (or `model.safetensors.index.json` and the
    /// shards it names) + `tokenizer.json` (+ `tokenizer_config.json`).
    pub fn from_files(files: &BTreeMap<String, Vec<u8>>, dtype: DType, device: &Device) -> Result<Self, EvalError> {
        let ggufs: Vec<&String> = files.keys().filter(|k| k.ends_with(".gguf")).collect();
        if let [name] = ggufs.as_slice() {
            let bytes = &files[*name];
            return Ok(Self::from_gguf(&mut std::io::Cursor::new(bytes), dtype, device)?.0);
        }
        if ggufs.len() > 1 {
            return Err(EvalError::Files(format!("{} .gguf files; give one", ggufs.len())));
        }
        let get = |name: &str| {
            files.get(name).ok_or_else(|| {
                EvalError::Files(format!(
                    "{name} is missing (have: {}); give a .gguf file, or config.json, model.safetensors and tokenizer.json",
                    files.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })
        };
        let text = |name: &str| {
            get(name).and_then(|b| {
                String::from_utf8(b.clone()).map_err(|_| EvalError::Files(format!("{name} is not UTF-8 text")))
            })
        };
        let config = text(hf_files::CONFIG)?;
        let shards: Vec<Vec<u8>> = if let Some(one) = files.get(hf_files::WEIGHTS) {
            vec![one.clone()]
        } else if files.contains_key(hf_files::INDEX) {
            shard_files(&text(hf_files::INDEX)?)?
                .iter()
                .map(|n| get(n).cloned())
                .collect::<Result<_, _>>()?
        } else {
            return Err(EvalError::Files(
                "model.safetensors is missing (pytorch_model.bin is a pickle, which tpv does not execute)".into(),
            ));
        };
        let tokenizer_config = files
            .get(hf_files::TOKENIZER_CONFIG)
            .map(|b| String::from_utf8_lossy(b).into_owned());
        Self::from_hf(
            &config,
            &shards,
            get(hf_files::TOKENIZER)?,
            tokenizer_config.as_deref(),
            dtype,
            device,
        )
    }

    /// Tokenizes a record as training does: the task's template (chat models: instruction and
    /// fields in a user turn of the chat template when `opts.chat` and the model has one), the answer followed by the first end-of-sequence id (so a tuned
    /// chat model stops after it), inputs truncated to `max_source_tokens` (T5 keeps its `</s>`).
    pub fn encode(&self, task: &TaskSpec, rec: &Record, opts: &EncodeOptions) -> Result<Encoded, EvalError> {
        let codec = &self.codec;
        let target = task.target(rec)?;
        match self.model.task_type() {
            TaskType::CausalLm => {
                let chat = opts.chat && codec.chat_template().is_some();
                let style = if chat { Style::Chat } else { Style::T5 };
                let render = |rec: &Record| -> Result<Vec<u32>, EvalError> {
                    let text = task.render(rec, style)?;
                    Ok(if chat {
                        codec.encode(&codec.chat_with_system(opts.system.as_deref(), &text, true)?, false)?
                    } else {
                        codec.encode(&text, true)?
                    })
                };
                let mut input = render(rec)?;
                if let Some(max) = opts.max_source_tokens
                    && input.len() > max
                {
                    if chat {
                        // Shorten the longest field, so the instruction, the `label:` cue and
                        // the template's assistant turn stay (cutting the templated text's end
                        // would drop the turn the answer follows).
                        let mut shortened = rec.clone();
                        let columns: Vec<&str> = if task.is_plain() {
                            vec!["input"]
                        } else {
                            task.fields.iter().map(|(_, c)| c.as_str()).collect()
                        };
                        for _ in 0..4 {
                            let over = input.len().saturating_sub(max);
                            if over == 0 {
                                break;
                            }
                            let mut longest: Option<(String, Vec<u32>)> = None;
                            for &c in &columns {
                                let ids = codec.encode(shortened.get(c).map_or("", |v| v.trim()), false)?;
                                if longest.as_ref().is_none_or(|(_, l)| ids.len() > l.len()) {
                                    longest = Some((c.to_owned(), ids));
                                }
                            }
                            let Some((column, ids)) = longest.filter(|(_, ids)| !ids.is_empty()) else {
                                break;
                            };
                            let keep = ids.len().saturating_sub(over);
                            shortened.insert(column, codec.decode(&ids[..keep])?);
                            input = render(&shortened)?;
                        }
                    }
                    input.truncate(max);
                }
                let answer = self.answer_ids(&target)?;
                let example = match opts.loss_on {
                    LossOn::Answer => causal::Example::answer(&input, &answer),
                    LossOn::Sequence => causal::Example::whole(&[input.as_slice(), &answer].concat()),
                };
                Ok(Encoded::Causal { example, input, target })
            }
            TaskType::Seq2SeqLm => {
                let text = task.render(rec, Style::T5)?;
                let mut input = codec.encode(&text, true)?;
                if let Some(max) = opts.max_source_tokens
                    && input.len() > max
                    && let Some(&last) = input.last()
                {
                    // Keep the closing </s>, as HF truncation does.
                    input.truncate(max.saturating_sub(1));
                    input.push(last);
                }
                let target_ids = self.answer_ids(&target)?;
                Ok(Encoded::Seq2Seq {
                    example: t5::Example {
                        input,
                        target: target_ids,
                    },
                    target,
                })
            }
        }
    }

    /// The tokens a target is trained and scored as: a causal model's answer followed by the
    /// first end-of-sequence id, a T5 target with its `</s>`.
    pub fn answer_ids(&self, target: &str) -> Result<Vec<u32>, EvalError> {
        Ok(match self.model.task_type() {
            TaskType::CausalLm => {
                let mut answer = self.codec.encode(target, false)?;
                answer.extend(self.eos.first().copied());
                answer
            }
            TaskType::Seq2SeqLm => self.codec.encode(target, true)?,
        })
    }

    /// How to score `task`: rank classification tokenizes its labels (an error for a task
    /// without a label set).
    pub fn scorer(
        &self,
        task: &TaskSpec,
        scoring: Scoring,
        max_new: usize,
        with_loss: bool,
    ) -> Result<Scorer, EvalError> {
        let (labels, candidates) = match scoring {
            Scoring::Generate => (Vec::new(), Vec::new()),
            Scoring::Rank => {
                if task.labels.is_empty() {
                    return Err(EvalError::NoLabels(task.name.clone()));
                }
                let ids = task
                    .labels
                    .iter()
                    .map(|l| self.answer_ids(l))
                    .collect::<Result<Vec<_>, _>>()?;
                (task.labels.clone(), ids)
            }
        };
        Ok(Scorer {
            scoring,
            max_new,
            with_loss,
            labels,
            candidates,
        })
    }

    /// Scores rows that may each carry their own prompt (`rows[i] = (θ_i [R_i, d], example)`; R_i
    /// may be 0): loss, target-token count and prediction per row, as each row alone gives them.
    pub fn evaluate_rows(
        &self,
        rows: &[(&Tensor, &Encoded)],
        scorer: &Scorer,
    ) -> Result<Vec<ExampleResult>, EvalError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let prompts: Vec<&Tensor> = rows.iter().map(|(p, _)| *p).collect();
        let batch: Vec<&Encoded> = rows.iter().map(|(_, e)| *e).collect();
        match scorer.scoring {
            Scoring::Generate => {
                let (losses, counts, generated) = if scorer.with_loss {
                    // The loss and the greedy prefill from one forward pass (decoder-only).
                    self.check_family(&batch)?;
                    let (out, generated) =
                        self.model
                            .loss_and_greedy_rows(&prompts, &batch, scorer.max_new, &self.eos)?;
                    (out.per_example()?, out.counts, generated)
                } else {
                    let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input().to_vec()).collect();
                    (
                        vec![f32::NAN; batch.len()],
                        batch.iter().map(|e| e.target_count()).collect(),
                        self.model.greedy_rows(&prompts, &inputs, scorer.max_new, &self.eos)?,
                    )
                };
                generated
                    .iter()
                    .zip(losses.into_iter().zip(counts))
                    .map(|(ids, (loss, tokens))| {
                        Ok(ExampleResult {
                            loss,
                            tokens,
                            prediction: self.codec.decode(ids)?.trim().to_owned(),
                            scores: Vec::new(),
                        })
                    })
                    .collect()
            }
            Scoring::Rank => {
                let inputs: Vec<&[u32]> = batch.iter().map(|e| e.input()).collect();
                self.check_family(&batch)?;
                let scores = self.model.rank(&prompts, &inputs, &scorer.candidates)?;
                // A target outside the label set has no candidate: its loss takes its own pass.
                let outside: Vec<usize> = (0..batch.len())
                    .filter(|&i| !scorer.labels.iter().any(|l| l == batch[i].target()))
                    .collect();
                let mut extra = BTreeMap::new();
                if !outside.is_empty() {
                    let p: Vec<&Tensor> = outside.iter().map(|&i| prompts[i]).collect();
                    let b: Vec<&Encoded> = outside.iter().map(|&i| batch[i]).collect();
                    let (l, c) = self.losses_rows(&p, &b)?;
                    for (k, &i) in outside.iter().enumerate() {
                        extra.insert(i, (l[k], c[k]));
                    }
                }
                Ok(scores
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| {
                        // The most likely label (lowest summed NLL); ties go to the first.
                        let best = s.iter().enumerate().fold(0, |b, (j, v)| if *v < s[b] { j } else { b });
                        let (loss, tokens) = match extra.get(&i) {
                            Some(&lc) => lc,
                            None => {
                                let j = scorer.labels.iter().position(|l| l == batch[i].target()).unwrap_or(0);
                                let n = scorer.candidates[j].len();
                                (s[j] / n as f32, n)
                            }
                        };
                        ExampleResult {
                            loss,
                            tokens,
                            prediction: scorer.labels[best].clone(),
                            scores: s,
                        }
                    })
                    .collect())
            }
        }
    }

    /// Every prompt on every example, in batches of `batch_size` rows that mix prompts: rows
    /// are ordered by input length (little padding), and an example's rows under all prompts
    /// sit side by side. `out[p][e]`; `progress(rows done, rows)` after each batch.
    pub fn evaluate_prompts(
        &self,
        prompts: &[&Tensor],
        examples: &[&Encoded],
        scorer: &Scorer,
        batch_size: usize,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<Vec<ExampleResult>>, EvalError> {
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].input().len());
        let rows: Vec<(usize, usize)> = order
            .iter()
            .flat_map(|&e| (0..prompts.len()).map(move |p| (p, e)))
            .collect();
        let mut out: Vec<Vec<Option<ExampleResult>>> = vec![vec![None; examples.len()]; prompts.len()];
        let mut done = 0;
        for chunk in rows.chunks(batch_size.max(1)) {
            let batch: Vec<(&Tensor, &Encoded)> = chunk.iter().map(|&(p, e)| (prompts[p], examples[e])).collect();
            for (&(p, e), r) in chunk.iter().zip(self.evaluate_rows(&batch, scorer)?) {
                out[p][e] = Some(r);
            }
            done += chunk.len();
            progress(done, rows.len());
        }
        Ok(out.into_iter().map(|per| per.into_iter().flatten().collect()).collect())
    }

    fn check_family(&self, batch: &[&Encoded]) -> Result<(), EvalError> {
        let causal = self.model.task_type() == TaskType::CausalLm;
        for e in batch {
            if matches!(e, Encoded::Causal { .. }) != causal {
                return Err(EvalError::WrongFamily(if causal { "causal" } else { "seq2seq" }));
            }
        }
        Ok(())
    }

    /// Greedy generations (token ids) of a batch under `theta` ([R, d]).
    pub fn generate(&self, theta: &Tensor, batch: &[&Encoded], max_new: usize) -> candle_core::Result<Vec<Vec<u32>>> {
        generate(&self.model, &self.eos, theta, batch, max_new)
    }

    /// Per-example mean NLL over the target tokens (no dropout) and the target-token counts.
    pub fn losses(&self, theta: &Tensor, batch: &[&Encoded]) -> Result<(Vec<f32>, Vec<usize>), EvalError> {
        self.losses_rows(&vec![theta; batch.len()], batch)
    }

    /// [`Self::losses`] with a prompt per example.
    pub fn losses_rows(&self, prompts: &[&Tensor], batch: &[&Encoded]) -> Result<(Vec<f32>, Vec<usize>), EvalError> {
        self.check_family(batch)?;
        let out = self.model.loss_rows(prompts, batch, None)?;
        Ok((out.per_example()?, out.counts))
    }

    /// Loss, target-token count and decoded greedy prediction (trimmed) of each example of a batch.
    pub fn evaluate_batch(
        &self,
        theta: &Tensor,
        batch: &[&Encoded],
        max_new: usize,
    ) -> Result<Vec<ExampleResult>, EvalError> {
        let scorer = Scorer {
            scoring: Scoring::Generate,
            max_new,
            with_loss: true,
            labels: Vec::new(),
            candidates: Vec::new(),
        };
        let rows: Vec<(&Tensor, &Encoded)> = batch.iter().map(|e| (theta, *e)).collect();
        self.evaluate_rows(&rows, &scorer)
    }
}

/// The files of an HF model folder that tpv reads — one description for loading from disk, the
/// hub download, the report's bundled copy and the browser's fetch.
pub mod hf_files {
    pub const CONFIG: &str = "config.json";
    pub const TOKENIZER: &str = "tokenizer.json";
    /// Optional: the chat template and special tokens.
    pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
    /// The weights in one file, or …
    pub const WEIGHTS: &str = "model.safetensors";
    /// … the index of the shards (`model-00001-of-00004.safetensors`, …).
    pub const INDEX: &str = "model.safetensors.index.json";
    /// Optional, downloaded for the record (generation defaults); tpv does not read it.
    pub const GENERATION_CONFIG: &str = "generation_config.json";

    /// Whether a file of a hub repo's listing is one tpv needs: the set above and the shards.
    pub fn is_needed(name: &str) -> bool {
        [CONFIG, TOKENIZER, TOKENIZER_CONFIG, WEIGHTS, INDEX, GENERATION_CONFIG].contains(&name)
            || (name.starts_with("model-") && name.ends_with(".safetensors"))
    }

    /// The files to read from a folder, in order: config, tokenizer, the tokenizer config when
    /// `exists` says it is there, then the weights — the single file when it exists, else the
    /// index and the shards it names (`read_index` reads the index).
    pub fn to_read<E: From<super::EvalError>>(
        exists: impl Fn(&str) -> bool,
        read_index: impl FnOnce() -> Result<String, E>,
    ) -> Result<Vec<String>, E> {
        let mut files = vec![CONFIG.to_owned(), TOKENIZER.to_owned()];
        if exists(TOKENIZER_CONFIG) {
            files.push(TOKENIZER_CONFIG.to_owned());
        }
        if exists(WEIGHTS) {
            files.push(WEIGHTS.to_owned());
        } else {
            let shards = super::shard_files(&read_index()?)?;
            files.push(INDEX.to_owned());
            files.extend(shards);
        }
        Ok(files)
    }
}

/// The shard files a `model.safetensors.index.json` names, sorted, each once.
pub fn shard_files(index_json: &str) -> Result<Vec<String>, EvalError> {
    #[derive(Deserialize)]
    struct ShardIndex {
        weight_map: BTreeMap<String, String>,
    }
    let index: ShardIndex =
        serde_json::from_str(index_json).map_err(|e| EvalError::Files(format!("model.safetensors.index.json: {e}")))?;
    let mut names: Vec<String> = index.weight_map.into_values().collect();
    names.sort();
    names.dedup();
    // The names come from a file and are joined to the model's folder: plain names only.
    if let Some(bad) = names.iter().find(|n| {
        n.is_empty() || n.contains(['/', '\\', '\0']) || n.starts_with('.') || n.chars().any(char::is_control)
    }) {
        return Err(EvalError::Files(format!(
            "model.safetensors.index.json names the shard {bad:?}, not a file name beside it"
        )));
    }
    Ok(names)
}

/// Greedy generations (token ids) of a batch under `theta` ([R, d]); causal models stop at `eos`.
pub fn generate(
    model: &Model,
    eos: &[u32],
    theta: &Tensor,
    batch: &[&Encoded],
    max_new: usize,
) -> candle_core::Result<Vec<Vec<u32>>> {
    let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input().to_vec()).collect();
    model.greedy_rows(&vec![theta; inputs.len()], &inputs, max_new, eos)
}

/// Rank classification over any number of candidates: each candidate answer's summed
/// log-probability per row. The candidates go through the model in groups of at most
/// [`RANK_TOKENS_PER_PASS`] tokens (one pass when they fit, as a task's few labels do): a pass's
/// tree mask and logits grow with the square of its candidate tokens, so 10,000 labels in one
/// pass asked for 14.4 GB.
impl Model {
    pub fn rank(
        &self,
        prompts: &[&Tensor],
        inputs: &[&[u32]],
        candidates: &[Vec<u32>],
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        if candidates.is_empty() {
            candle_core::bail!("rank scoring needs candidates");
        }
        let mut scores: Vec<Vec<f32>> = vec![Vec::with_capacity(candidates.len()); inputs.len()];
        for group in rank_groups(candidates) {
            for (row, p) in scores.iter_mut().zip(self.rank_pass(prompts, inputs, group)?) {
                row.extend(p);
            }
        }
        Ok(scores)
    }
}

/// The most candidate tokens (each candidate's answer and end tokens) that rank classification
/// scores in one pass.
pub const RANK_TOKENS_PER_PASS: usize = 512;

/// `candidates` in consecutive groups of at most [`RANK_TOKENS_PER_PASS`] tokens (a longer
/// candidate alone in its group); none when there are none.
fn rank_groups(candidates: &[Vec<u32>]) -> Vec<&[Vec<u32>]> {
    let mut groups = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, c) in candidates.iter().enumerate() {
        let n = c.len();
        if i > start && tokens + n > RANK_TOKENS_PER_PASS {
            groups.push(&candidates[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += n;
    }
    if start < candidates.len() {
        groups.push(&candidates[start..]);
    }
    groups
}

/// The decoder-only examples of a batch (an error if one is not).
pub(crate) fn causal_examples(batch: &[&Encoded]) -> candle_core::Result<Vec<causal::Example>> {
    family_examples(batch, "causal", |e| match e {
        Encoded::Causal { example, .. } => Some(example),
        Encoded::Seq2Seq { .. } => None,
    })
}

/// The seq2seq examples of a batch (an error if one is not).
pub(crate) fn seq2seq_examples(batch: &[&Encoded]) -> candle_core::Result<Vec<t5::Example>> {
    family_examples(batch, "seq2seq", |e| match e {
        Encoded::Seq2Seq { example, .. } => Some(example),
        Encoded::Causal { .. } => None,
    })
}

/// The examples of a batch for one model family; an example of the other family is an error.
fn family_examples<T: Clone>(
    batch: &[&Encoded],
    family: &str,
    pick: impl Fn(&Encoded) -> Option<&T>,
) -> candle_core::Result<Vec<T>> {
    batch
        .iter()
        .map(|e| {
            pick(e)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("an example of the wrong family for a {family} model")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| (*x).to_owned()).collect()
    }

    #[test]
    fn rank_groups_cover_the_candidates_in_order_within_the_pass_size() {
        let candidates: Vec<Vec<u32>> = (0..1000u32)
            .map(|i| vec![i; if i == 500 { 700 } else { 1 + (i % 3) as usize }])
            .collect();
        let groups = rank_groups(&candidates);
        assert!(groups.len() > 3);
        assert_eq!(groups.concat(), candidates);
        for g in &groups {
            let tokens: usize = g.iter().map(Vec::len).sum();
            assert!(
                tokens <= RANK_TOKENS_PER_PASS || g.len() == 1,
                "{tokens} tokens in {} candidates",
                g.len()
            );
        }
        assert!(
            groups.iter().any(|g| g.len() == 1 && g[0].len() == 700),
            "a long candidate alone"
        );
        assert!(rank_groups(&[]).is_empty());
        assert_eq!(
            rank_groups(&[vec![1], vec![2]]).len(),
            1,
            "a task's few labels: one pass"
        );
    }

    /// Issue 32 (7): 16,000 distinct targets made a 16,000² matrix (2.0 GB; 705 MB of JSON at 8,000).
    #[test]
    fn no_confusion_matrix_over_the_class_cap() {
        let refs: Vec<String> = (0..16_000).map(|i| format!("answer {i}")).collect();
        let c = Confusion::new(&[], &refs, &refs);
        assert_eq!(c.omitted, Some(16_000));
        assert!(c.classes.is_empty() && c.counts.is_empty());
        assert!(serde_json::to_string(&c).unwrap().len() < 100);
        let few: Vec<String> = (0..CONFUSION_MAX_CLASSES).map(|i| format!("l{i}")).collect();
        let c = Confusion::new(&[], &few, &few);
        assert_eq!((c.classes.len(), c.omitted), (CONFUSION_MAX_CLASSES, None));
    }

    #[test]
    fn confusion_counts_references_by_predictions_with_an_other_column() {
        let c = Confusion::new(
            &s(&["negative", "positive"]),
            &s(&["positive", " Negative", "maybe", "positive"]),
            &s(&["positive", "negative", "negative", "negative"]),
        );
        assert_eq!(c.classes, s(&["negative", "positive"]));
        assert_eq!(c.counts, vec![vec![1, 1, 1], vec![0, 1, 0]]);
        // Without label words the classes are the distinct references.
        let c = Confusion::new(&[], &s(&["w1", "w2"]), &s(&["w2", "w2"]));
        assert_eq!(c.classes, s(&["w2"]));
        assert_eq!(c.counts, vec![vec![1, 1]]);
    }

    #[test]
    fn summary_weights_the_loss_by_target_tokens() {
        let r = |loss, tokens, p: &str| ExampleResult {
            loss,
            tokens,
            prediction: p.into(),
            scores: Vec::new(),
        };
        let res = [r(1.0, 1, "a"), r(4.0, 3, "b")];
        let sum = summarize(&crate::tasks::plain(), &res, &s(&["a", "c"]));
        assert!((sum.loss - 13.0 / 4.0).abs() < 1e-12);
        assert!((sum.mean_example_loss - 2.5).abs() < 1e-12);
        assert_eq!(sum.metrics["exact_match"], 0.5);
    }

    #[test]
    fn shard_files_are_the_index_files_sorted_once_each() {
        let index = r#"{"metadata": {}, "weight_map": {"a.w": "m-00002.safetensors", "b.w": "m-00001.safetensors", "c.w": "m-00002.safetensors"}}"#;
        assert_eq!(
            shard_files(index).unwrap(),
            s(&["m-00001.safetensors", "m-00002.safetensors"])
        );
        assert!(shard_files("{}").unwrap_err().to_string().contains("index.json"));
        for bad in ["../x.safetensors", "/etc/passwd", "a/b.safetensors", ".hidden"] {
            let index = format!("{{\"weight_map\": {{\"w\": {bad:?}}}}}");
            assert!(shard_files(&index).is_err(), "{bad}");
        }
    }

    #[test]
    fn eval_sets_refuse_other_formats_and_newer_versions() {
        let set = plain_set(Vec::new(), true, 4);
        let mut v = serde_json::to_value(&set).unwrap();
        assert_eq!(EvalSet::from_json(v.to_string().as_bytes()).unwrap(), set);
        v["version"] = 9.into();
        let e = EvalSet::from_json(v.to_string().as_bytes()).unwrap_err().to_string();
        assert!(e.contains("version 9"), "{e}");
        v["version"] = 1.into();
        v["format"] = "x".into();
        assert!(EvalSet::from_json(v.to_string().as_bytes()).is_err());
        assert!(EvalSet::from_json(b"{").is_err());
    }
}
