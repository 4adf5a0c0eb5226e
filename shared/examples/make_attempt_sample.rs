//! Writes the committed ATTEMPT sample of run-file format v2 (`tests/fixtures/runs/v2/`): the
//! v1 samples' sst2 and mnli prompts of origin 0 as sources, origin 0 as the target prompt, and a
//! fresh module (seed 5). Written once and never regenerated: tests re-read it so ATTEMPT runs
//! keep opening.
//!
//!     cargo run -p tpv-shared --example make_attempt_sample -- tests/fixtures/runs
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]

use std::path::PathBuf;

use tpv_shared::attempt::Module;
use tpv_shared::{PromptKind, SoftPrompt, runfile};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: make_attempt_sample DIR (tests/fixtures/runs)")?,
    );
    let read = |name: &str| -> Result<SoftPrompt, Box<dyn std::error::Error>> {
        Ok(runfile::read_run(&std::fs::read(dir.join("v1").join(name))?)?)
    };
    let (sst2, mnli, origin) = (
        read("sst2-origin0.safetensors")?,
        read("mnli-origin0.safetensors")?,
        read("origin0.safetensors")?,
    );
    let module = Module::init(&[&sst2.values, &mnli.values], vec![sst2.label(), mnli.label()], 5)?;
    let mut p = SoftPrompt::new(PromptKind::Attempt, origin.values.clone(), Some(origin.values.clone()))?;
    p.meta.model.clone_from(&origin.meta.model);
    p.meta.layout = origin.meta.layout;
    p.meta.origin.clone_from(&origin.meta.origin);
    p.meta.tasks = vec!["rte".into()];
    p.meta.created_at = "2026-12-06T00:00:00Z".into();
    p.attempt = Some(Box::new(module));
    let out = dir.join("v2").join("attempt-origin0.safetensors");
    std::fs::create_dir_all(dir.join("v2"))?;
    std::fs::write(&out, runfile::write_run(&p)?)?;
    println!("wrote {}", out.display());
    Ok(())
}
