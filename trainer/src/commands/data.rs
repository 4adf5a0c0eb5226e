//! `tpv data CONFIG`: what a config's data section yields (task, split sizes, fingerprint, rendered
//! examples), and a split exported as `{"input", "target"}` JSONL for `tpv eval`.

use anyhow::{Context, Result};
use serde_json::json;
use tpv_shared::tasks::Style;

use super::print_json;
use crate::cli::{DataArgs, InputStyle};
use crate::{config, data, io};

pub fn run(args: &DataArgs) -> Result<()> {
    let cfg = config::load(&args.config, &args.sets)?;
    let splits = data::load(&cfg.data).context("loading data")?;
    let style = match args.style {
        InputStyle::Chat => Style::Chat,
        InputStyle::T5 => Style::T5,
    };
    let render = |r: &tpv_shared::tasks::Record| -> Result<serde_json::Value> {
        Ok(json!({ "input": splits.task.render(r, style)?, "target": splits.task.target(r)? }))
    };
    if let Some(split) = &args.export {
        let records = match split.as_str() {
            "train" => &splits.train,
            "validation" => &splits.validation,
            "test" => &splits.test,
            other => anyhow::bail!("unknown split {other:?} (train, validation, test)"),
        };
        let mut text = String::new();
        for r in records {
            text.push_str(&serde_json::to_string(&render(r)?)?);
            text.push('\n');
        }
        let out = args.output.as_ref().context("--export needs -o FILE")?;
        io::write_atomic(out, text.as_bytes())?;
        out!("wrote {} {split} examples to {}", records.len(), out.display());
        return Ok(());
    }
    let examples: Vec<serde_json::Value> = splits.train.iter().take(3).map(render).collect::<Result<_>>()?;
    let summary = json!({
        "task": splits.task.name,
        "labels": splits.task.labels,
        "metrics": splits.task.metrics,
        "train": splits.train.len(),
        "validation": splits.validation.len(),
        "test": splits.test.len(),
        "fingerprint": splits.fingerprint,
        "examples": examples,
    });
    if args.json {
        return print_json(&summary);
    }
    out!(
        "task {}: train {}, validation {}, test {} (fingerprint {})",
        splits.task.name,
        splits.train.len(),
        splits.validation.len(),
        splits.test.len(),
        splits.fingerprint
    );
    for e in &examples {
        out!(
            "---\n{}\n→ {}",
            e["input"].as_str().unwrap_or(""),
            e["target"].as_str().unwrap_or("")
        );
    }
    Ok(())
}
