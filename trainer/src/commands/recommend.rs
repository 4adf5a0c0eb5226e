//! `tpv recommend`: which of a library's task prompt vectors (a study's tuned prompts, and the sums
//! of two) to start a new task from, judged on a handful of its examples two ways, averaged over
//! the library's origins:
//! - loss: the examples' mean loss under θ₀ + τ (lower first) — the candidate as a prompt;
//! - cosine: SPoT's signal (Vu et al. 2022): a prompt tuned briefly from θ₀ on the examples, and
//!   the cosine (mean over virtual tokens) between its vector and τ.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use candle_core::DType;
use serde::Serialize;
use tpv_shared::PromptTensor;
use tpv_shared::eval::Encoded;
use tpv_shared::similarity::{Measure, similarity};
use tpv_shared::stats;

use super::print_json;
use crate::cli::RecommendArgs;
use crate::config::Config;
use crate::models;
use crate::optim::{AdamW, Schedule, ScheduleKind};
use crate::train::combination::mean_loss;
use crate::train::engine::{Engine, State, Trainable};
use crate::train::step::DeviceTraining;
use crate::train::{self, RunState};

/// One candidate's scores, averaged over the origins.
#[derive(Debug, Clone, Serialize)]
struct Candidate {
    /// `task` or `task_a+task_b`.
    name: String,
    loss: f64,
    loss_std: f64,
    cosine: f64,
    cosine_std: f64,
    loss_rank: usize,
    cosine_rank: usize,
}

/// The library of one origin: θ₀ and each task's τ.
struct Library {
    origin: usize,
    theta0: PromptTensor,
    taus: BTreeMap<String, PromptTensor>,
}

/// Where a library's finished prompt-tuning runs are: a study directory, or a hub repo `tpv
/// push` wrote (its `runs/prompt_tuning/TASK/originN.safetensors`, downloaded into the hub cache).
enum Source {
    Study(std::path::PathBuf),
    Hub {
        snapshot: std::path::PathBuf,
        present: Vec<String>,
    },
}

impl Source {
    fn open(library: &Path) -> Result<(Self, tpv_shared::study::StudyFile)> {
        let hub_id = library.to_str().filter(|s| models::is_hub_id(s));
        let (source, study_json) = match hub_id {
            // One listing: study.json and every prompt-tuning run the library holds.
            Some(repo) => {
                let (snapshot, present) =
                    crate::hub::library_files(repo, &["study.json".to_owned()], Some("runs/prompt_tuning/"))?;
                let study_json = snapshot.join("study.json");
                (Self::Hub { snapshot, present }, study_json)
            }
            None => (Self::Study(library.to_owned()), library.join("study.json")),
        };
        let study = tpv_shared::study::StudyFile::from_json(&crate::io::read_bytes(&study_json)?)
            .with_context(|| format!("reading {}", study_json.display()))?;
        Ok((source, study))
    }

    /// The finished run of job `id`, and where it is (for messages).
    fn run(&self, id: &str) -> Result<Option<(tpv_shared::SoftPrompt, std::path::PathBuf)>> {
        match self {
            Self::Study(dir) => {
                let out = dir.join(id);
                Ok(match train::run_state(&out) {
                    RunState::Finished(run) => Some((*run, out)),
                    _ => None,
                })
            }
            Self::Hub { snapshot, present } => {
                let file = format!("runs/{id}.safetensors");
                if !present.contains(&file) {
                    return Ok(None);
                }
                let path = snapshot.join(&file);
                Ok(Some((crate::io::load_prompt(&path)?, path)))
            }
        }
    }
}

/// The finished prompt-tuning runs of a library (a study directory or a published repo), by
/// origin; and the config one of them ran with.
fn libraries(library: &Path) -> Result<(Vec<Library>, Config)> {
    let (source, study) = Source::open(library)?;
    let dir = library;
    let (mut libs, mut config) = (Vec::new(), None);
    for &o in &study.origins {
        let (mut theta0, mut taus) = (None, BTreeMap::new());
        for task in &study.tasks {
            let Some((run, out)) = source.run(&tpv_shared::study::prompt_tuning_id(task, o))? else {
                continue;
            };
            if theta0.is_none() {
                theta0 = run.origin_values().cloned();
            }
            if config.is_none()
                && let Some(c) = run.meta.config.as_ref()
            {
                config = Some(crate::config::from_stored_json(
                    &c["config"],
                    &format!("the config stored in {}", out.display()),
                )?);
            }
            taus.insert(task.clone(), run.vector_values()?);
        }
        if let Some(theta0) = theta0.filter(|_| !taus.is_empty()) {
            libs.push(Library {
                origin: o,
                theta0,
                taus,
            });
        }
    }
    let config = config.context("no finished prompt-tuning run with its config in the study")?;
    if libs.is_empty() {
        bail!("{} has no finished prompt-tuning runs", dir.display());
    }
    Ok((libs, config))
}

/// A prompt tuned from θ₀ on the examples for `steps` AdamW steps (batches of 4, constant rate).
fn tune(
    engine: &Engine<'_>,
    theta0: &PromptTensor,
    examples: &[Encoded],
    steps: usize,
    lr: f64,
) -> Result<PromptTensor> {
    let mut state = State {
        step: 0,
        params: theta0.as_slice().to_vec(),
        adam: AdamW::new(theta0.len(), 0.0),
        rng: 0,
    };
    let schedule = Schedule {
        kind: ScheduleKind::Constant,
        base_lr: lr,
        warmup: 0,
        total: steps as u64,
    };
    let batches: Vec<Vec<&Encoded>> = examples.chunks(4).map(|c| c.iter().collect()).collect();
    // On the device throughout (as `tpv train` steps), read once at the end.
    let trainable = Trainable::Prompt((theta0.rows(), theta0.dim()));
    let mut dev = DeviceTraining::new(&state, &trainable, &engine.device)?;
    for s in 0..steps {
        let batch = &batches[s % batches.len()];
        dev.step(engine, std::slice::from_ref(batch), &schedule, Some(1.0), &trainable)?;
    }
    dev.read_stats()?;
    dev.sync(&mut state)?;
    Ok(PromptTensor::new(theta0.rows(), theta0.dim(), state.params)?)
}

/// The candidates' mean ± std over the origins, ordered by loss, with both ranks.
fn ranked(scores: BTreeMap<String, (Vec<f64>, Vec<f64>)>) -> Vec<Candidate> {
    let mut out: Vec<Candidate> = scores
        .into_iter()
        .map(|(name, (l, c))| {
            let (loss, loss_std) = (stats::mean(&l), stats::std(&l, 0));
            let (cosine, cosine_std) = (stats::mean(&c), stats::std(&c, 0));
            Candidate {
                name,
                loss,
                loss_std,
                cosine,
                cosine_std,
                loss_rank: 0,
                cosine_rank: 0,
            }
        })
        .collect();
    out.sort_by(|a, b| b.cosine.total_cmp(&a.cosine));
    for (i, c) in out.iter_mut().enumerate() {
        c.cosine_rank = i + 1;
    }
    out.sort_by(|a, b| a.loss.total_cmp(&b.loss));
    for (i, c) in out.iter_mut().enumerate() {
        c.loss_rank = i + 1;
    }
    out
}

pub fn run(args: &RecommendArgs) -> Result<()> {
    let (libs, config) = libraries(&args.library)?;
    let set = super::eval::read_set(&args.data, args.task.as_deref())?;
    let published = !args.library.exists();
    let theirs = &config.model.path;
    let spec = match &args.model {
        // A library is used with its own base model: two hub ids must be the same one.
        Some(m) if published && models::is_hub_id(m) && models::is_hub_id(theirs) && m != theirs => {
            bail!(
                "{} was tuned on {theirs}; --model {m} is another model",
                args.library.display()
            )
        }
        Some(m) => m.clone(),
        None if published && !models::is_hub_id(theirs) => bail!(
            "{}'s runs were tuned on {} (a path on the publisher's machine): pass --model with that model",
            args.library.display(),
            super::push::public_name(theirs)
        ),
        None => theirs.clone(),
    };
    let device = models::device(&args.device)?;
    let loaded = models::load(&spec, DType::F32, &device).with_context(|| format!("loading {spec}"))?;
    // A records file is encoded as the library's runs encoded theirs; an eval set as it says.
    let encode = if args.data.extension().is_some_and(|e| e == "json") && args.task.is_none() {
        set.encode.clone()
    } else {
        train::encode_options(&config)
    };
    let n = set.records.len().min(args.max_examples);
    let examples = super::eval::encode_records(&loaded, &set.records[..n], &set.task, &encode, &args.data)?;
    if examples.is_empty() {
        bail!("{} has no examples", args.data.display());
    }
    let engine = Engine::frozen(&loaded, &device, config.train.gradient_checkpointing);
    let lr = args.learning_rate.unwrap_or(config.optim.learning_rate);
    let mut scores: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for lib in &libs {
        let tuned = tune(&engine, &lib.theta0, &examples, args.tune_steps, lr)?;
        let tuned_tau = tuned.zip_map(&lib.theta0, |a, b| a - b)?;
        let names: Vec<&String> = lib.taus.keys().collect();
        let mut candidates: Vec<(String, PromptTensor)> =
            names.iter().map(|n| ((*n).clone(), lib.taus[*n].clone())).collect();
        if !args.no_pairs {
            for (i, a) in names.iter().enumerate() {
                for b in &names[i + 1..] {
                    candidates.push((format!("{a}+{b}"), lib.taus[*a].zip_map(&lib.taus[*b], |x, y| x + y)?));
                }
            }
        }
        for (name, tau) in candidates {
            let theta = lib.theta0.zip_map(&tau, |o, t| o + t)?;
            let loss = f64::from(mean_loss(
                &engine,
                theta.as_slice(),
                (theta.rows(), theta.dim()),
                &examples,
            )?);
            let cosine = similarity(&tuned_tau, &tau, Measure::CosineMean)?;
            let e = scores.entry(name).or_default();
            e.0.push(loss);
            e.1.push(cosine);
        }
        tracing::info!(origin = lib.origin, "scored the library");
    }
    let out = ranked(scores);
    if args.json {
        return print_json(&serde_json::json!({
            "library": args.library.display().to_string(),
            "data": args.data.display().to_string(),
            "examples": examples.len(),
            "origins": libs.iter().map(|l| l.origin).collect::<Vec<_>>(),
            "tune_steps": args.tune_steps,
            "learning_rate": lr,
            "candidates": out,
        }));
    }
    out!(
        "{} examples of {}, {} origins; loss of θ₀ + τ (lower first) and cosine of a prompt tuned {} steps to τ:",
        examples.len(),
        args.data.display(),
        libs.len(),
        args.tune_steps
    );
    out!("{:<40} {:>16} {:>16}", "candidate", "loss", "cosine");
    for c in &out {
        out!(
            "{:<40} {:>9.4} ± {:<5.3} {:>8.3} ± {:<5.3} (#{})",
            c.name,
            c.loss,
            c.loss_std,
            c.cosine,
            c.cosine_std,
            c.cosine_rank
        );
    }
    Ok(())
}
