//! `tpv eval`: per-example loss and greedy prediction of a prompt, the task's metrics and a
//! confusion matrix. Examples are encoded exactly as training encodes them
//! (`tpv_shared::eval`, also what the web app's Evaluate view runs).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use candle_core::{DType, Tensor};
use serde_json::json;
use tpv_shared::eval::{self, Confusion, EvalSet, ExampleResult};
use tpv_shared::{attempt, tasks};

use super::print_json;
use crate::cli::EvalArgs;
use crate::models;
use crate::{data, io};

/// The default of `--max-new-tokens` for record files (an eval set carries its own).
const MAX_NEW_TOKENS: usize = 16;

pub fn run(args: &EvalArgs) -> Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let mut set = read_set(&args.data, args.task.as_deref())?;
    if let Some(n) = args.max_new_tokens {
        set.max_new_tokens = n;
    }
    if args.no_chat_template {
        set.encode.chat = false;
    }
    if args.max_source_tokens.is_some() {
        set.encode.max_source_tokens = args.max_source_tokens;
    }
    if let Some(s) = &args.system_prompt {
        set.encode.system = Some(s.clone());
    }
    if let Some(s) = args.scoring {
        set.scoring = s;
    }
    let device = models::device(&args.device)?;
    let t_load = Instant::now();
    let loaded = models::load(&args.model, DType::F32, &device)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let d = loaded.model.hidden_size();
    let prompt = args.prompt.as_deref().map(io::load_prompt).transpose()?;
    let theta = prompt_theta(prompt.as_ref(), args.prompt.as_deref(), d, &device)?;
    let t_eval = Instant::now();
    let encoded = encode_records(&loaded, &set.records, &set.task, &set.encode, &args.data)?;
    let refs: Vec<String> = encoded.iter().map(|e| e.target().to_owned()).collect();

    let scorer = loaded
        .scorer(&set.task, set.scoring, set.max_new_tokens, true)
        .with_context(|| format!("scoring {}", args.data.display()))?;
    let refs_enc: Vec<&eval::Encoded> = encoded.iter().collect();
    let mut attention = None;
    let results: Vec<ExampleResult> = match prompt.as_ref().and_then(|p| Some((p, p.attempt.as_deref()?))) {
        // ATTEMPT: each example under its own mixed prompt.
        Some((p, module)) => {
            let (results, att) = attempt::evaluate(&loaded, &p.values, module, &refs_enc, &scorer, args.batch_size)
                .with_context(|| format!("evaluating the examples of {}", args.data.display()))?;
            let labels = module.attention_labels().into_iter().map(str::to_owned);
            attention = Some(labels.zip(att).collect::<Vec<_>>());
            results
        }
        None => loaded
            .evaluate_prompts(&[&theta], &refs_enc, &scorer, args.batch_size, &mut |_, _| {})
            .with_context(|| format!("evaluating the examples of {}", args.data.display()))?
            .pop()
            .unwrap_or_default(),
    };
    let eval_s = t_eval.elapsed().as_secs_f64();
    let rate = results.len() as f64 / eval_s.max(1e-9);
    let summary = eval::summarize(&set.task, &results, &refs);
    let preds: Vec<String> = results.iter().map(|r| r.prediction.clone()).collect();
    let confusion = Confusion::new(&set.task.labels, &preds, &refs);
    let timing = json!({ "load_s": load_s, "eval_s": eval_s, "examples_per_s": rate });
    if args.json {
        let mut report = report_json(&set, &results, &refs, &summary, &confusion, timing);
        if let Some(att) = &attention {
            report["attempt_attention"] = json!(att.iter().cloned().collect::<std::collections::BTreeMap<_, _>>());
        }
        return print_json(&report);
    }
    for (r, target) in results.iter().zip(&refs) {
        out!(
            "{:>8.4}  {:<24}  (target {target:?})",
            r.loss,
            format!("{:?}", r.prediction)
        );
    }
    let metrics: Vec<String> = summary
        .metrics
        .iter()
        .map(|(k, v)| format!("{k} {:.2}%", 100.0 * v))
        .collect();
    out!(
        "{} examples of {}: loss {:.4} (per token), {}",
        results.len(),
        set.name,
        summary.loss,
        metrics.join(", ")
    );
    if let Some(att) = &attention {
        let parts: Vec<String> = att.iter().map(|(l, a)| format!("{l} {a:.3}")).collect();
        out!("ATTEMPT mean attention: {}", parts.join(", "));
    }
    out!("model loaded in {load_s:.2} s; {eval_s:.2} s for the examples ({rate:.2} examples/s)");
    Ok(())
}

/// The prompt `--prompt` names as a tensor on `device` (none: zero rows, the model alone; an
/// ATTEMPT run: its target prompt, which it mixes per input).
fn prompt_theta(
    prompt: Option<&tpv_shared::SoftPrompt>,
    path: Option<&Path>,
    d: usize,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let (Some(prompt), Some(path)) = (prompt, path) else {
        return Ok(Tensor::zeros((0, d), DType::F32, device)?);
    };
    if !prompt.kind().is_prompt() && prompt.attempt.is_none() {
        bail!(
            "{} holds a task prompt vector; apply it to an origin first (tpv combine)",
            path.display()
        );
    }
    let [r, pd] = prompt.shape();
    if pd != d {
        bail!("{} has token dim {pd}, the model's hidden size is {d}", path.display());
    }
    Ok(Tensor::from_slice(prompt.values.as_slice(), (r, d), device)?)
}

/// `tpv eval --json`: every example, the summary, the confusion matrix and the timing.
fn report_json(
    set: &EvalSet,
    results: &[ExampleResult],
    refs: &[String],
    summary: &eval::Summary,
    confusion: &Confusion,
    timing: serde_json::Value,
) -> serde_json::Value {
    let examples: Vec<_> = results
        .iter()
        .zip(refs)
        .map(|(r, t)| {
            let mut e = json!({ "loss": r.loss, "tokens": r.tokens, "prediction": r.prediction, "target": t });
            if !r.scores.is_empty() {
                e["label_nll"] = json!(r.scores);
            }
            e
        })
        .collect();
    json!({
        "task": set.name,
        "scoring": set.scoring.as_str(),
        "examples": examples,
        "loss": summary.loss,
        "mean_loss": summary.mean_example_loss,
        "exact_match": summary.metrics.get("exact_match").copied().unwrap_or(0.0),
        "metrics": summary.metrics,
        "confusion": confusion,
        "timing": timing,
    })
}

/// `records` (of the file `from`) encoded as `task` and `encode` say; errors name the example.
pub(crate) fn encode_records(
    loaded: &tpv_shared::eval::Loaded,
    records: &[tpv_shared::tasks::Record],
    task: &tpv_shared::tasks::TaskSpec,
    encode: &tpv_shared::eval::EncodeOptions,
    from: &Path,
) -> Result<Vec<eval::Encoded>> {
    records
        .iter()
        .enumerate()
        .map(|(i, rec)| {
            loaded
                .encode(task, rec, encode)
                .with_context(|| format!("{} example {}", from.display(), i + 1))
        })
        .collect()
}

/// An eval set (`examples/TASK.json` of a study or report) as it is, or a records file (JSONL,
/// JSON, CSV, TSV) under `--task` (default: `plain`, with `input` and `target` columns).
pub(crate) fn read_set(path: &Path, task: Option<&str>) -> Result<EvalSet> {
    let bytes = io::read_bytes(path)?;
    let is_set = path.extension().is_some_and(|e| e == "json")
        && serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .is_some_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(EvalSet::FORMAT));
    if is_set {
        if task.is_some() {
            bail!("{} is an eval set with its own task; drop --task", path.display());
        }
        let set = EvalSet::from_json(&bytes).with_context(|| format!("reading {}", path.display()))?;
        if set.records.is_empty() {
            bail!("{} holds no examples: nothing to evaluate", path.display());
        }
        return Ok(set);
    }
    let records = data::read_records(path)?;
    // An empty file scored "0 examples, loss NaN" with exit 0.
    if records.is_empty() {
        bail!("{} holds no examples: nothing to evaluate", path.display());
    }
    let mut set = eval::plain_set(records, true, MAX_NEW_TOKENS);
    if let Some(name) = task {
        set.task = tasks::get(name)?;
        set.name = name.to_owned();
    }
    Ok(set)
}
