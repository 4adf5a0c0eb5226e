//! `tpv eval`: per-example loss and greedy prediction of a prompt on JSONL examples.

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde::Deserialize;
use serde_json::json;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::load::Model;
use tpv_shared::model::t5;

use super::print_json;
use crate::cli::EvalArgs;
use crate::io;
use crate::models::{self, LoadedModel};

#[derive(Debug, Deserialize)]
struct Record {
    input: String,
    target: String,
}

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let device = models::device(&args.device)?;
    let loaded = models::load(&args.model, DType::F32, &device)?;
    let d = loaded.model.hidden_size();
    let theta = match &args.prompt {
        Some(path) => {
            let prompt = io::load_prompt(path)?;
            if !prompt.kind().is_prompt() {
                bail!(
                    "{} holds a task prompt vector; apply it to an origin first (tpv combine)",
                    path.display()
                );
            }
            let [r, pd] = prompt.shape();
            if pd != d {
                bail!("{} has token dim {pd}, the model's hidden size is {d}", path.display());
            }
            Tensor::from_slice(prompt.values.as_slice(), (r, d), &device)?
        }
        None => Tensor::zeros((0, d), DType::F32, &device)?,
    };
    let records = read_jsonl(&args.data)?;

    let mut results = Vec::with_capacity(records.len());
    for chunk in records.chunks(args.batch_size) {
        results.extend(evaluate(&loaded, &theta, chunk, args)?);
    }
    let n = results.len().max(1) as f64;
    let mean_loss = results.iter().map(|(l, _)| f64::from(*l)).sum::<f64>() / n;
    let exact = results
        .iter()
        .zip(&records)
        .filter(|((_, p), r)| p.trim().to_lowercase() == r.target.trim().to_lowercase())
        .count() as f64
        / n;
    if args.json {
        let examples: Vec<_> = results
            .iter()
            .map(|(l, p)| json!({ "loss": l, "prediction": p }))
            .collect();
        return print_json(&json!({ "examples": examples, "mean_loss": mean_loss, "exact_match": exact }));
    }
    for ((loss, pred), rec) in results.iter().zip(&records) {
        out!("{loss:>8.4}  {:<24}  (target {:?})", format!("{pred:?}"), rec.target);
    }
    out!(
        "{} examples: mean loss {mean_loss:.4}, exact match {:.2}%",
        results.len(),
        100.0 * exact
    );
    Ok(())
}

fn read_jsonl(path: &std::path::Path) -> Result<Vec<Record>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: expected {{\"input\": …, \"target\": …}}",
                    path.display(),
                    i + 1
                )
            })
        })
        .collect()
}

/// (loss, prediction) of each record of a batch.
fn evaluate(m: &LoadedModel, theta: &Tensor, batch: &[Record], args: &EvalArgs) -> Result<Vec<(f32, String)>> {
    let codec = &m.codec;
    match &m.model {
        Model::Llama(model) => {
            let mut examples = Vec::with_capacity(batch.len());
            let mut inputs = Vec::with_capacity(batch.len());
            for rec in batch {
                let ids = if args.no_chat_template {
                    codec.encode(&rec.input, true)?
                } else {
                    codec.encode(&codec.chat(&rec.input, true)?, false)?
                };
                let target = codec.encode(&rec.target, false)?;
                examples.push(Example::answer(&ids, &target));
                inputs.push(ids);
            }
            let loss = causal::loss(model, theta, &examples)?;
            let preds = causal::greedy(model, theta, &inputs, args.max_new_tokens, &m.eos)?;
            preds
                .iter()
                .zip(loss.per_example)
                .map(|(p, l)| Ok((l, codec.decode(p)?.trim().to_owned())))
                .collect()
        }
        Model::T5(model) => {
            let examples = batch
                .iter()
                .map(|rec| {
                    Ok(t5::Example {
                        input: codec.encode(&rec.input, true)?,
                        target: codec.encode(&rec.target, true)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let loss = t5::loss(model, theta, &examples, None)?;
            let inputs: Vec<Vec<u32>> = examples.into_iter().map(|e| e.input).collect();
            let preds = t5::greedy(model, theta, &inputs, args.max_new_tokens)?;
            preds
                .iter()
                .zip(loss.per_example)
                .map(|(p, l)| Ok((l, codec.decode(p)?.trim().to_owned())))
                .collect()
        }
    }
}
