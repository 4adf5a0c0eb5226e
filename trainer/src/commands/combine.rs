//! `tpv combine`: θ₀ + λ·merge(w₁τ₁, …).

use anyhow::{Context, Result};
use serde_json::json;
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::{MergeMethod, MergeParams, Norms, SoftPrompt, arith};

use super::print_json;
use crate::cli::CombineArgs;
use crate::train::combination::{compose, learn_weights, search_weights};
use crate::train::engine::Engine;
use crate::{io, models};

/// `--learn DATA`: the weights of the sum learned on DATA's examples through the frozen model;
/// the combination (its expression names the data) and what the learning did.
fn learn(
    args: &CombineArgs,
    data: &std::path::Path,
    origin: &SoftPrompt,
    vectors: &[&SoftPrompt],
    method: &MergeMethod,
) -> Result<(SoftPrompt, serde_json::Value)> {
    let l = &args.learn;
    if !matches!(method, MergeMethod::Sum) {
        anyhow::bail!("--learn learns the weights of a sum: drop --method");
    }
    let set = super::eval::read_set(data, l.task.as_deref())?;
    let device = models::device(&l.device)?;
    let spec = l.model.as_deref().context("--learn needs --model")?;
    let loaded = models::load(spec, candle_core::DType::F32, &device).with_context(|| format!("loading {spec}"))?;
    let examples = super::eval::encode_records(&loaded, &set.records, &set.task, &set.encode, data)?;
    let taus = vectors
        .iter()
        .map(|v| v.vector_values())
        .collect::<tpv_shared::Result<Vec<_>>>()?;
    let init: Vec<f64> = if args.weights.is_empty() {
        vec![args.lambda; vectors.len()]
    } else if args.weights.len() == vectors.len() {
        args.weights.iter().map(|w| w * args.lambda).collect()
    } else {
        anyhow::bail!("{} weights for {} vectors", args.weights.len(), vectors.len());
    };
    let engine = Engine::frozen(&loaded, &device, false);
    let learned = if l.gradient_free {
        search_weights(
            &engine,
            &examples,
            &origin.values,
            &taus,
            &init,
            (l.steps, l.population, 0),
        )
    } else {
        learn_weights(
            &engine,
            &examples,
            &origin.values,
            &taus,
            &init,
            l.per_token,
            (l.steps, l.learning_rate),
        )
    }
    .with_context(|| format!("learning the weights on {}", data.display()))?;
    let r = origin.values.rows();
    // One weight per vector: the combination's own expression; per virtual token: each vector's
    // mean weight in the operands, the values from all of them.
    let per_vector: Vec<f64> = learned
        .weights
        .chunks(if l.per_token { r } else { 1 })
        .map(|c| c.iter().map(|&x| f64::from(x)).sum::<f64>() / c.len() as f64)
        .collect();
    let mut result = arith::combine(origin, vectors, &per_vector, 1.0, method)?;
    let how = format!(
        "weights learned{}{} on {} ({} examples, {} steps)",
        if l.per_token { " per virtual token" } else { "" },
        if l.gradient_free { " without gradients" } else { "" },
        data.display(),
        examples.len(),
        l.steps
    );
    if l.per_token {
        let values = compose(&origin.values, &taus, &learned.weights, true);
        result.values = tpv_shared::PromptTensor::new(r, origin.values.dim(), values)?;
    }
    result.meta.expression = result.meta.expression.map(|e| format!("{e} [{how}]"));
    let summary = json!({
        "data": data.display().to_string(),
        "examples": examples.len(),
        "weights": learned.weights,
        "per_token": l.per_token,
        "losses": learned.losses,
        "best_step": learned.best_step,
        "loss": learned.losses.get(learned.best_step),
        "steps": l.steps,
        "learning_rate": l.learning_rate,
        "gradient_free": l.gradient_free.then_some(l.population),
    });
    result.meta.config = Some(json!({ "learned_combination": summary }));
    Ok((result, summary))
}

/// A `--vector` naming a prompt published with `tpv push`: `ORG/NAME:TASK` or
/// `ORG/NAME:TASK@originN` (when no such file exists here).
struct LibraryRef<'a> {
    repo: &'a str,
    task: &'a str,
    origin: Option<&'a str>,
}

fn library_ref(arg: &std::path::Path) -> Option<LibraryRef<'_>> {
    if arg.exists() {
        return None;
    }
    let (repo, rest) = arg.to_str()?.split_once(':')?;
    if !models::is_hub_id(repo) {
        return None;
    }
    let (task, origin) = match rest.split_once('@') {
        Some((t, o)) => (t, Some(o)),
        None => (rest, None),
    };
    Some(LibraryRef { repo, task, origin })
}

/// The `--vector`s: run files, or task prompts of a published library (downloaded into the hub
/// cache). A library's prompt is used only with its base model and its own origin: against
/// `--origin` (when given, else the first library prompt's) a prompt of another model or
/// origin is refused, naming both.
fn load_vectors(args: &CombineArgs, origin: Option<&SoftPrompt>) -> Result<Vec<SoftPrompt>> {
    let mut out: Vec<SoftPrompt> = Vec::new();
    let mut anchor: Option<(String, SoftPrompt)> = origin.map(|o| ("--origin".to_owned(), o.clone()));
    for arg in &args.vectors {
        let Some(lib) = library_ref(arg) else {
            out.push(io::load_prompt(arg)?);
            continue;
        };
        let origin_id = match (lib.origin, anchor.as_ref().and_then(|(_, a)| a.origin_id())) {
            (Some(o), _) => o.to_owned(),
            (None, Some(o)) => o.to_owned(),
            (None, None) => "origin0".to_owned(),
        };
        let file = format!("runs/prompt_tuning/{}/{origin_id}.safetensors", lib.task);
        let (snapshot, _) = crate::hub::library_files(lib.repo, &[file.clone(), "study.json".into()], None)
            .with_context(|| format!("--vector {}", arg.display()))?;
        let prompt = io::load_prompt(&snapshot.join(&file))?;
        let published: serde_json::Value = serde_json::from_slice(&io::read_bytes(&snapshot.join("study.json"))?)?;
        let name = format!("{}:{}@{origin_id}", lib.repo, lib.task);
        if let Some((what, a)) = &anchor {
            let (theirs, ours) = (
                published["model"].as_str().unwrap_or("an unrecorded model").to_owned(),
                a.meta.model.as_ref().map(|m| super::push::public_name(&m.id)),
            );
            if let Some(ours) = ours.filter(|o| *o != theirs) {
                anyhow::bail!(
                    "{name} was tuned on {theirs}; {what} is of {ours}: a library is used with its own base model"
                );
            }
            let same_origin = match (a.kind(), a.origin_values(), prompt.origin_values()) {
                (tpv_shared::PromptKind::Origin, _, Some(p)) => a.values == *p,
                (_, Some(x), Some(p)) => x == p,
                _ => true,
            };
            if !same_origin {
                anyhow::bail!(
                    "{name} was tuned from the library's {origin_id}, and {what} is another origin: use its origins/{origin_id}.safetensors (or name the origin: {}:{}@originN)",
                    lib.repo,
                    lib.task
                );
            }
        } else {
            anchor = Some((name.clone(), prompt.clone()));
        }
        out.push(prompt);
    }
    Ok(out)
}

pub fn run(args: &CombineArgs) -> Result<()> {
    let method = method(args)?;
    let given_origin = args.origin.as_deref().map(io::load_prompt).transpose()?;
    let vectors = load_vectors(args, given_origin.as_ref())?;
    let refs: Vec<&SoftPrompt> = vectors.iter().collect();
    let mut learned = None;
    let mut result = match (&args.origin, &args.learn.learn) {
        (Some(_), Some(data)) => {
            let origin = given_origin.clone().context("the origin")?;
            let (result, summary) = learn(args, data, &origin, &refs, &method)?;
            learned = Some(summary);
            Ok(result)
        }
        (Some(_), None) => {
            let origin = given_origin.clone().context("the origin")?;
            arith::combine(&origin, &refs, &args.weights, args.lambda, &method)
        }
        (None, _) => arith::merge_vectors(&refs, &args.weights, args.lambda, &method),
    }
    .context("combining")?;
    result.meta.name.clone_from(&args.name);
    io::write_run(&args.output, &result)?;

    let tau = result.vector_values().ok();
    let mut sources = Vec::new();
    for v in &vectors {
        let cosine = match (&tau, v.vector_values()) {
            (Some(t), Ok(s)) => Some(similarity(t, &s, Measure::CosineMean)?),
            _ => None,
        };
        sources.push(json!({ "label": v.label(), "cosine_mean_to_result_vector": cosine }));
    }
    let summary = json!({
        "output": args.output.display().to_string(),
        "kind": result.kind().as_str(),
        "expression": result.meta.expression,
        "mixed_origins": result.meta.mixed_origins,
        "norms": Norms::of(&result.values),
        "vector_norms": tau.as_ref().map(Norms::of),
        "sources": sources,
        "learned": learned,
    });
    if args.json {
        print_json(&summary)?;
    } else {
        out!("wrote {} ({})", args.output.display(), result.kind());
        out!("  {}", result.meta.expression.as_deref().unwrap_or(""));
        if result.meta.mixed_origins {
            out!("  note: the operands come from different origins");
        }
        if let Some(l) = &summary["learned"].as_object() {
            out!(
                "  learned on {} examples: loss {:.4} at the initial weights, {:.4} kept (step {})",
                l["examples"],
                l["losses"][0].as_f64().unwrap_or(f64::NAN),
                l["loss"].as_f64().unwrap_or(f64::NAN),
                l["best_step"]
            );
        }
    }
    Ok(())
}

fn method(args: &CombineArgs) -> Result<MergeMethod> {
    let params = MergeParams {
        density: args.density,
        drop: args.drop,
        seed: args.seed,
        sign: args.sign,
    };
    // The shared rules, with the errors in terms of the flags.
    MergeMethod::build(args.method, &params).map_err(|e| match e {
        tpv_shared::Error::MissingParameter { name, method } => {
            anyhow::anyhow!("--{name} is required with --method {method}")
        }
        tpv_shared::Error::UnusedParameter { name, method } => {
            anyhow::anyhow!("--{name} has no effect with --method {method}")
        }
        e => e.into(),
    })
}
