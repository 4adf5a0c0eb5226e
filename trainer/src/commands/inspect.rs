//! `tpv inspect`: what a file holds.

use anyhow::{Context, Result};
use serde_json::Value;

use super::print_json;
use crate::cli::InspectArgs;
use tpv_shared::nearest::NearToken;

use crate::{io, models};

/// The `k` tokens nearest each virtual token of the file's values, in the vocabulary of `model`
/// (else the model the file names).
fn nearest(loaded: &io::Loaded, model: Option<&str>, k: usize) -> Result<Vec<Vec<NearToken>>> {
    let prompt = &loaded.doc.prompt;
    let spec = match (model, &prompt.meta.model) {
        (Some(m), _) => m.to_owned(),
        (None, Some(m)) => m.id.clone(),
        (None, None) => anyhow::bail!("the file names no model: give --model"),
    };
    let m = models::load(&spec, candle_core::DType::F32, &candle_core::Device::Cpu)
        .with_context(|| format!("loading {spec}"))?;
    let emb: Vec<f32> = tpv_shared::model::host::flat_f32(m.model.embeddings())?;
    let d = m.model.hidden_size();
    if prompt.values.dim() != d {
        anyhow::bail!(
            "the file's tokens have dimension {}, {spec}'s embeddings {d}",
            prompt.values.dim()
        );
    }
    Ok(tpv_shared::nearest::readable(&prompt.values, &emb, k, &m.codec)?)
}

pub fn run(args: &InspectArgs) -> Result<()> {
    let mut reports = Vec::new();
    for path in &args.files {
        let loaded = io::load(path)?;
        let mut report = serde_json::to_value(loaded.doc.summary())?;
        report["path"] = Value::String(loaded.path.display().to_string());
        if !args.json {
            print_human(&loaded, &loaded.doc.summary())?;
        }
        if let Some(k) = args.nearest_tokens {
            let near = nearest(&loaded, args.model.as_deref(), k)
                .with_context(|| format!("nearest tokens of {}", loaded.path.display()))?;
            if !args.json {
                for (i, row) in near.iter().enumerate() {
                    let words: Vec<String> = row
                        .iter()
                        .map(|n| format!("{} {:.3}", printable(&format!("{:?}", n.text)), n.cosine))
                        .collect();
                    out!("  token {i:<4} {}", words.join(", "));
                }
            }
            report["nearest_tokens"] = serde_json::to_value(&near)?;
        }
        reports.push(report);
    }
    if args.json {
        print_json(&Value::Array(reports))?;
    }
    Ok(())
}

/// Text from a file, safe for a terminal: control characters (escape sequences that would move
/// the cursor, recolour or retitle the terminal, newlines that fake lines) shown escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_human(loaded: &io::Loaded, s: &tpv_shared::Summary) -> Result<()> {
    out!("{}", printable(&loaded.path.display().to_string()));
    out!("  format   {}", printable(&s.format));
    out!("  kind     {}   label {}", s.kind, printable(&s.label));
    out!("  shape    {:?}", s.shape);
    if let (Some(stored), Some(dtype)) = (s.stored_shape, &s.stored_dtype) {
        out!("  stored   {stored:?} {dtype} (rows used: {})", s.shape[0]);
    }
    if let Some(a) = &s.attempt {
        out!(
            "  attempt  sources {}; attention rank {}, temperature {:.1} (values: the target prompt)",
            printable(&a.sources.join(", ")),
            a.rank,
            a.temperature
        );
    }
    let norms = [
        ("values", Some(&s.norms)),
        ("origin", s.origin_norms.as_ref()),
        ("vector", s.vector_norms.as_ref()),
    ];
    for (name, n) in norms {
        let Some(n) = n else { continue };
        out!(
            "  {name:<8} ‖·‖ {:.6}  mean row {:.6}  max |x| {:.6}  ‖token-mean‖ {:.6}",
            n.frobenius,
            n.mean_row,
            n.max_abs,
            n.token_mean
        );
    }
    if let Ok(Value::Object(meta)) = serde_json::to_value(&s.metadata) {
        for (k, v) in meta {
            if matches!(k.as_str(), "kind" | "virtual_tokens" | "token_dim") {
                continue;
            }
            let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let text = if text.len() > 100 {
                format!("{}…", &text[..text.floor_char_boundary(100)])
            } else {
                text
            };
            out!("  {:<16} {}", printable(&k), printable(&text));
        }
    }
    for (k, n) in &s.curves {
        out!("  curve {}: {n} points", printable(k));
    }
    Ok(())
}
