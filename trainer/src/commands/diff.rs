//! `tpv diff RUN_A RUN_B`: what differs between two runs (`tpv_shared::diff`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use serde_json::Value;
use tpv_shared::diff::{Delta, diff_runs};

use super::print_json;
use crate::cli::DiffArgs;
use crate::{io, train};

/// A run file, or a run directory (its `prompt.safetensors`).
fn run_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        train::prompt_path(path)
    } else {
        path.to_owned()
    }
}

fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "(absent)".to_owned(), Value::to_string)
}

fn show_delta(d: &Delta) -> String {
    let f = |x: Option<f64>| x.map_or_else(|| "(absent)".to_owned(), |x| format!("{x:.4}"));
    let change = d.b_minus_a.map(|x| format!("  ({x:+.4})")).unwrap_or_default();
    format!("{}: {} → {}{change}", d.key, f(d.a), f(d.b))
}

pub fn run(args: &DiffArgs) -> Result<()> {
    let (a, b) = (run_file(&args.a), run_file(&args.b));
    let (pa, pb) = (io::load_prompt(&a)?, io::load_prompt(&b)?);
    let diff = diff_runs(&pa, &pb);
    if args.json {
        return print_json(&serde_json::to_value(&diff)?);
    }
    out!("A: {}\nB: {}", a.display(), b.display());
    let section = |title: &str, lines: Vec<String>| -> Result<()> {
        if lines.is_empty() {
            out!("\n{title}: the same");
        } else {
            out!("\n{title}:");
            for l in lines {
                out!("  {l}");
            }
        }
        Ok(())
    };
    let changes = |c: &[tpv_shared::diff::Change]| -> Vec<String> {
        c.iter()
            .map(|c| format!("{}: {} → {}", c.key, show(c.a.as_ref()), show(c.b.as_ref())))
            .collect()
    };
    section("run", changes(&diff.meta))?;
    section("config", changes(&diff.config))?;
    section("metrics", diff.metrics.iter().map(show_delta).collect())?;
    section("curves (last value)", diff.curves.iter().map(show_delta).collect())?;
    for (what, d) in [("prompts", &diff.prompts), ("task prompt vectors", &diff.vectors)] {
        if let Some(d) = d {
            out!(
                "\n{what}: cosine of token-means {:.4}, flattened {:.4}, L2 distance {:.4}",
                d.cosine_mean,
                d.cosine_flat,
                d.l2
            );
        }
    }
    Ok(())
}
