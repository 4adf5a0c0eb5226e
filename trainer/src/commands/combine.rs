//! `tpv combine`: θ₀ + λ·merge(w₁τ₁, …).

use anyhow::{Context, Result};
use serde_json::json;
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::{MergeMethod, MergeParams, Norms, SoftPrompt, arith};

use super::print_json;
use crate::cli::CombineArgs;
use crate::io;

pub fn run(args: &CombineArgs) -> Result<()> {
    let method = method(args)?;
    let vectors: Vec<SoftPrompt> = args.vectors.iter().map(|p| io::load_prompt(p)).collect::<Result<_>>()?;
    let refs: Vec<&SoftPrompt> = vectors.iter().collect();
    let mut result = match &args.origin {
        Some(path) => {
            let origin = io::load_prompt(path)?;
            arith::combine(&origin, &refs, &args.weights, args.lambda, &method)
        }
        None => arith::merge_vectors(&refs, &args.weights, args.lambda, &method),
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
    });
    if args.json {
        print_json(&summary)?;
    } else {
        out!("wrote {} ({})", args.output.display(), result.kind());
        out!("  {}", result.meta.expression.as_deref().unwrap_or(""));
        if result.meta.mixed_origins {
            out!("  note: the operands come from different origins");
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
