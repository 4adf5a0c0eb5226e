//! `tpv combine`: θ₀ + λ·merge(w₁τ₁, …).

use anyhow::{Context, Result, bail};
use serde_json::json;
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::{MergeMethod, Norms, SignElection, SoftPrompt, arith};

use super::print_json;
use crate::cli::{CombineArgs, MethodArg, SignArg};
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
    let sign = match args.sign {
        None | Some(SignArg::Mass) => SignElection::Mass,
        Some(SignArg::Count) => SignElection::Count,
    };
    let uses = |flag: &str, used: bool, given: bool| -> Result<()> {
        if given && !used {
            bail!("{flag} has no effect with --method {:?}", args.method);
        }
        Ok(())
    };
    let m = args.method;
    let takes_density = matches!(m, MethodArg::Ties | MethodArg::Magnitude);
    let takes_drop = matches!(m, MethodArg::Dare | MethodArg::DareTies);
    uses("--density", takes_density, args.density.is_some())?;
    uses("--drop", takes_drop, args.drop.is_some())?;
    uses("--seed", takes_drop, args.seed.is_some())?;
    uses(
        "--sign",
        matches!(m, MethodArg::Ties | MethodArg::DareTies),
        args.sign.is_some(),
    )?;
    let density = || args.density.context("--density is required with this --method");
    let drop = || args.drop.context("--drop is required with this --method");
    let seed = args.seed.unwrap_or(0);
    let method = match m {
        MethodArg::Sum => MergeMethod::Sum,
        MethodArg::Mean => MergeMethod::Mean,
        MethodArg::Ties => MergeMethod::Ties {
            density: density()?,
            sign,
        },
        MethodArg::Magnitude => MergeMethod::Magnitude { density: density()? },
        MethodArg::Dare => MergeMethod::Dare { drop: drop()?, seed },
        MethodArg::DareTies => MergeMethod::DareTies {
            drop: drop()?,
            seed,
            sign,
        },
    };
    method.validate()?;
    Ok(method)
}
