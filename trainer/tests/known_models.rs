//! The released models of docs/models.md's "Known models" table: each one's config.json, copied
//! from the public source `tests/fixtures/known_models/SOURCES.md` names, is read and checked by
//! its family in the registry, and the table's family, parameter count and preflight memory
//! estimate are what tpv computes from it (so the table cannot drift from the code).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests read the fixtures and the docs"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use tpv_shared::model::families;
use tpv_trainer::study::preflight::memory_estimate;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The paper's LLM recipe (configs/paper/llama31_8b.toml): 100 virtual tokens, sources of up to
/// 512 tokens, batch 4, bf16, gradient checkpointing.
const BATCH: usize = 4;
const SEQ: usize = 100 + 512;

/// The table row tpv computes for a known model's config.
fn row(hub_id: &str, config_json: &str) -> String {
    let spec = families::parse(config_json).unwrap_or_else(|e| panic!("{hub_id}: {e}"));
    let params = spec.parameters();
    let (weights, activations) = memory_estimate(&*spec, params as f64, 2.0, (BATCH, SEQ), true);
    format!(
        "| `{hub_id}` | `{}` | {:.2} B | {:.1} GB |",
        spec.model_type(),
        params as f64 / 1e9,
        (weights + activations) / 1e9
    )
}

#[test]
fn every_known_model_is_read_by_its_family_and_the_docs_table_is_what_tpv_computes() {
    let dir = root().join("tests/fixtures/known_models");
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.is_dir() {
            continue;
        }
        let hub_id = path.file_name().unwrap().to_string_lossy().replacen("--", "/", 1);
        rows.push(row(
            &hub_id,
            &std::fs::read_to_string(path.join("config.json")).unwrap(),
        ));
    }
    assert!(!rows.is_empty(), "no known models in {}", dir.display());
    rows.sort();
    let docs = std::fs::read_to_string(root().join("docs/models.md")).unwrap();
    let missing: Vec<&String> = rows.iter().filter(|r| !docs.contains(r.as_str())).collect();
    assert!(
        missing.is_empty(),
        "docs/models.md's known-models table differs from what tpv computes; its rows are:\n{}",
        rows.join("\n")
    );
}
