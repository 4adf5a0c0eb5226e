//! `tpv demo`: the paper's studies in miniature on the embedded default, end to end — fetch
//! SmolLM2-135M-Instruct and the offline datasets the study reads, run the demo study
//! (configs/demo/study.toml: prompt tuning of four tasks of two kinds from three origins with
//! baselines, addition, cross-origin, transfer, similarity), write the report (with the web app
//! and the model) and serve it.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::assets;
use crate::cli::DemoArgs;
use crate::study::jobs::{SweepOptions, run_all};
use crate::study::{Study, aggregate, report};

/// The demo study (configs/demo/study.toml), embedded so the demo runs from anywhere.
pub const DEMO_STUDY: &str = include_str!("../../../configs/demo/study.toml");

/// `--quick`: every experiment and table, smaller — three of the tasks (two kinds), two origins,
/// 8 virtual tokens, 8 steps, 8 validation and 16 test examples, one transfer target (a few
/// minutes on two cores, measured in the README; its numbers show the pipeline, not the method).
const QUICK: &[&str] = &[
    "study.origins=[0, 1]",
    "study.tasks=[\"uci_imdb\", \"uci_yelp\", \"bbc_news\"]",
    "study.addition.sets=[[\"uci_imdb\", \"uci_yelp\"], [\"uci_imdb\", \"bbc_news\"]]",
    "study.addition.lambdas=[1.0]",
    "study.transfer.sources=[\"uci_imdb\", \"uci_yelp\"]",
    "study.transfer.targets=[\"uci_amazon\"]",
    "study.transfer.shots=[0, 8]",
    "study.transfer.set.optim.max_steps=2",
    "study.transfer.combination_steps=2",
    "study.transfer.set.train.eval_every=2",
    "study.transfer.set.data.max_validation=8",
    "study.overrides={}",
    "prompt.virtual_tokens=8",
    "optim.max_steps=8",
    "train.eval_every=8",
    "data.max_validation=8",
    "data.max_test=16",
];

pub fn run(args: &DemoArgs) -> Result<()> {
    let start = Instant::now();
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let config_path = args.out.join("study.toml");
    crate::io::write_atomic(&config_path, DEMO_STUDY.as_bytes())?;
    let mut sets: Vec<String> = Vec::new();
    if args.quick {
        sets.extend(QUICK.iter().map(|s| (*s).to_owned()));
    }
    let study_dir = args.out.join(if args.quick { "study-quick" } else { "study" });
    sets.push(format!("study.output={:?}", study_dir.display().to_string()));
    sets.extend(args.sets.iter().cloned());

    let study = Study::load(&config_path, &sets)?;
    eprintln!("== fetching the embedded default model and the demo datasets (pinned, sha256-checked)");
    for asset in needed_assets(&study) {
        assets::ensure(asset).with_context(|| format!("fetching {}", asset.name))?;
    }
    eprintln!("== running the demo study ({} jobs)", study.jobs().len());
    let (ran, skipped, failed) = run_all(
        &study,
        &SweepOptions {
            jobs: args.jobs.unwrap_or_else(default_jobs),
            gpus: Vec::new(),
            sets: sets.clone(),
            max_jobs: None,
            abort_in_job: None,
        },
    )?;
    let agg = aggregate::aggregate(study.output())?;
    agg.write(study.output())?;
    let site = args.out.join("site");
    let r = report::write_with(
        study.output(),
        &site,
        &report::ReportOptions {
            web: args.web.clone(),
            require_web: args.web.is_some(),
            bundle_model: args.bundle_model.into(),
            ..Default::default()
        },
    )?;
    if args.json {
        super::print_json(&serde_json::json!({
            "study": study.output().display().to_string(),
            "ran": ran,
            "skipped": skipped,
            "failed": failed,
            "seconds": start.elapsed().as_secs_f64(),
            "report": serde_json::to_value(&r)?,
            "tables": serde_json::to_value(&agg)?,
        }))?;
    } else {
        print_summary(&agg, &r, ran, skipped, &failed, start.elapsed().as_secs_f64())?;
    }
    if !failed.is_empty() {
        anyhow::bail!("{} demo jobs failed: {}", failed.len(), failed.join(", "));
    }
    if !args.no_serve {
        report::serve(&r.site, args.port)?;
    }
    Ok(())
}

fn print_summary(
    agg: &aggregate::Aggregate,
    r: &report::Report,
    ran: usize,
    skipped: usize,
    failed: &[String],
    seconds: f64,
) -> Result<()> {
    out!("{}", agg.markdown());
    out!(
        "demo: ran {ran} jobs, skipped {skipped} finished, {} failed, in {:.0} s; report: {}{}",
        failed.len(),
        seconds,
        r.site.join("index.html").display(),
        if r.web_app {
            ""
        } else {
            " (tables only: no built web app found; scripts/run.sh builds it)"
        }
    );
    Ok(())
}

/// One job per core, at most 8 (each holds its own copy of the model, ≈ 1 GB with activations).
fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(8)
}

/// The offline assets a study reads: its model (when it is one of them) and its tasks' data.
fn needed_assets(study: &Study) -> Vec<&'static assets::Asset> {
    let s = &study.study;
    let mut tasks: Vec<&String> = s.tasks.iter().collect();
    if let Some(a) = &s.addition {
        tasks.extend(a.sets.iter().flatten().flatten());
    }
    if let Some(c) = &s.cross_origin {
        tasks.extend(c.tasks.iter().flatten());
    }
    if let Some(t) = &s.transfer {
        tasks.extend(t.sources.iter().chain(&t.targets));
    }
    let model = study
        .base
        .get("model")
        .and_then(|m| m.get("path"))
        .and_then(|p| p.as_str());
    let mut out: Vec<&'static assets::Asset> = assets::ALL.iter().copied().filter(|a| Some(a.name) == model).collect();
    for t in tasks {
        // A task with its own files (`[study.data.TASK] train = …`) needs no asset.
        let own_files = s.data.get(t.as_str()).is_some_and(|d| d.contains_key("train"));
        if let Some(a) = assets::for_task(t)
            && !own_files
            && !out.iter().any(|o| std::ptr::eq(*o, a))
        {
            out.push(a);
        }
    }
    out
}
