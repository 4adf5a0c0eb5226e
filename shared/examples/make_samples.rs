//! Writes the committed sample study of run-file format v1 (`tests/fixtures/runs/v1/`): two tasks
//! tuned from three origins of a made-up 8-dimensional model, 4 virtual tokens each. Task prompts
//! are origin + a task direction + noise, so the samples show the paper's pattern: task prompts
//! from one origin look alike, task prompt vectors of one task look alike across origins.
//!
//! The files are written once per format version and never regenerated: tests re-read them so
//! old results keep opening.
//!
//!     cargo run -p tpv-shared --example make_samples -- tests/fixtures/runs/v1
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]

use std::path::PathBuf;

use tpv_shared::merge::SplitMix64;
use tpv_shared::{Curve, Layout, ModelRef, OriginRef, PromptKind, PromptTensor, SoftPrompt, TaskType, runfile};

const ROWS: usize = 4;
const DIM: usize = 8;

fn gaussian(rng: &mut SplitMix64, scale: f64) -> Vec<f32> {
    // Box–Muller on SplitMix64 draws.
    (0..ROWS * DIM)
        .map(|_| {
            let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
            (scale * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

fn stamp(p: &mut SoftPrompt) {
    p.meta.model = Some(ModelRef {
        id: "tpv-sample-8d".into(),
        revision: Some("v1".into()),
    });
    p.meta.layout = Layout {
        task_type: Some(TaskType::CausalLm),
        num_transformer_submodules: 1,
    };
    p.meta.created_at = "2026-11-25T00:00:00Z".into();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).ok_or("usage: make_samples DIR")?);
    std::fs::create_dir_all(&dir)?;
    let mut rng = SplitMix64::new(2024);
    let directions = [("sst2", gaussian(&mut rng, 0.5)), ("mnli", gaussian(&mut rng, 0.5))];
    for o in 0..3u32 {
        let theta0 = PromptTensor::new(ROWS, DIM, gaussian(&mut rng, 1.0))?;
        let id = format!("origin{o}");
        let mut origin = SoftPrompt::origin(
            theta0.clone(),
            OriginRef {
                id: id.clone(),
                seed: Some(1024),
                index: Some(o),
                sampling: Some("vocab-below-5000".into()),
            },
        );
        stamp(&mut origin);
        std::fs::write(dir.join(format!("{id}.safetensors")), runfile::write_run(&origin)?)?;

        for (t, (task, direction)) in directions.iter().enumerate() {
            let noise = gaussian(&mut rng, 0.1);
            let theta: Vec<f32> = theta0
                .as_slice()
                .iter()
                .zip(direction)
                .zip(&noise)
                .map(|((a, d), n)| a + d + n)
                .collect();
            let mut p = SoftPrompt::new(
                PromptKind::TaskPrompt,
                PromptTensor::new(ROWS, DIM, theta)?,
                Some(theta0.clone()),
            )?;
            stamp(&mut p);
            p.meta.tasks = vec![(*task).into()];
            p.meta.origin = origin.meta.origin.clone();
            p.meta
                .metrics
                .insert("test_accuracy".into(), 0.9 - 0.05 * f64::from(o) - 0.1 * t as f64);
            p.meta.data_fingerprint = Some(format!("sample-split-{task}"));
            p.meta.config = Some(serde_json::json!({ "optim": { "learning_rate": 0.3, "max_steps": 3 } }));
            p.curves.insert(
                "train_loss".into(),
                Curve {
                    steps: vec![1.0, 2.0, 3.0],
                    values: vec![2.0, 1.25, 0.75 + 0.01 * o as f32],
                },
            );
            std::fs::write(dir.join(format!("{task}-{id}.safetensors")), runfile::write_run(&p)?)?;
        }
    }
    println!("wrote samples to {}", dir.display());
    Ok(())
}
