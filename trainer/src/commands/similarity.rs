//! `tpv similarity`: matrices of a measure over prompts or vectors.

use anyhow::{Context, Result};
use serde_json::json;
use tpv_shared::similarity::{self, Labelled};
use tpv_shared::{PromptTensor, SoftPrompt};

use super::print_json;
use crate::cli::SimilarityArgs;
use crate::io;

pub fn run(args: &SimilarityArgs) -> Result<()> {
    let measure = args.measure;
    let mut prompts: Vec<SoftPrompt> = Vec::new();
    let mut values: Vec<PromptTensor> = Vec::new();
    for path in &args.files {
        let prompt = io::load_prompt(path)?;
        let v = if args.vectors {
            prompt
                .vector_values()
                .with_context(|| format!("--vectors: {}", path.display()))?
        } else {
            prompt.values.clone()
        };
        values.push(v);
        prompts.push(prompt);
    }
    let labels = unique_labels(&prompts, &args.files);

    if args.across_origins {
        let items = prompts
            .iter()
            .zip(&values)
            .zip(&args.files)
            .map(|((p, v), path)| {
                let origin = p.origin_id().with_context(|| {
                    format!("{}: no origin id recorded (needed by --across-origins)", path.display())
                })?;
                let task = if p.meta.tasks.is_empty() {
                    p.label()
                } else {
                    p.meta.tasks.join("+")
                };
                Ok(Labelled {
                    task,
                    origin: origin.to_owned(),
                    values: v,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let view = similarity::across_origins(&items, measure)?;
        if args.json {
            return print_json(&serde_json::to_value(&view)?);
        }
        out!(
            "{} across origins ({}), tasks × tasks:",
            measure.as_str(),
            view.origins.join(", ")
        );
        print_table(&view.tasks, &view.matrix)?;
        return Ok(());
    }

    let matrix = similarity::matrix(&values.iter().collect::<Vec<_>>(), measure)?;
    if args.json {
        return print_json(&json!({
            "measure": measure.as_str(),
            "vectors": args.vectors,
            "labels": labels,
            "matrix": matrix,
        }));
    }
    out!(
        "{}{}:",
        measure.as_str(),
        if args.vectors { " of task prompt vectors" } else { "" }
    );
    let matrix: Vec<Vec<Option<f64>>> = matrix.into_iter().map(|r| r.into_iter().map(Some).collect()).collect();
    print_table(&labels, &matrix)?;
    Ok(())
}

/// Labels of the prompts; repeated labels get the file name appended.
fn unique_labels(prompts: &[SoftPrompt], paths: &[std::path::PathBuf]) -> Vec<String> {
    let labels: Vec<String> = prompts.iter().map(SoftPrompt::label).collect();
    labels
        .iter()
        .zip(paths)
        .map(|(l, path)| {
            if labels.iter().filter(|x| *x == l).count() > 1 {
                format!("{l} ({})", path.display())
            } else {
                l.clone()
            }
        })
        .collect()
}

fn print_table(labels: &[String], m: &[Vec<Option<f64>>]) -> Result<()> {
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0).min(28);
    let mut header = format!("{:width$}", "");
    for i in 0..labels.len() {
        header.push_str(&format!(" {:>8}", format!("[{i}]")));
    }
    out!("{header}");
    for (i, (label, row)) in labels.iter().zip(m).enumerate() {
        let mut line: String = label.chars().take(width).collect();
        line = format!("{line:width$}");
        for v in row {
            match v {
                Some(v) => line.push_str(&format!(" {v:>8.4}")),
                None => line.push_str(&format!(" {:>8}", "-")),
            }
        }
        out!("{line}  [{i}]");
    }
    Ok(())
}
