//! `tpv demo`: the paper's studies in miniature on the embedded default, end to end — fetch
//! SmolLM2-135M-Instruct and the offline datasets, run the demo study (prompt tuning of two
//! sentiment tasks from two origins, their vector sum, cross-origin, transfer to two targets
//! against random and single-source inits, similarity), write the report and serve it.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::assets;
use crate::cli::DemoArgs;
use crate::study::jobs::{SweepOptions, run_all};
use crate::study::{Study, aggregate, report};

/// The demo study (configs/demo/study.toml), embedded so the demo runs from anywhere.
pub const DEMO_STUDY: &str = include_str!("../../../configs/demo/study.toml");

/// `--quick`: one target, fewer steps, examples and shots (a few minutes on two cores).
const QUICK: &[&str] = &[
    "study.set.optim.max_steps=8",
    "study.set.train.eval_every=8",
    "data.max_validation=8",
    "data.max_test=16",
    "study.addition.lambdas=[1.0]",
    "study.transfer.targets=[\"uci_imdb\"]",
    "study.transfer.shots=[0, 8]",
    "study.transfer.set.optim.max_steps=2",
    "study.transfer.set.train.eval_every=2",
    "study.transfer.set.data.max_test=16",
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

    eprintln!("== fetching the embedded default model and the demo datasets (pinned, sha256-checked)");
    for name in ["smollm2", "rt_polarity", "amazon_snippets", "uci_imdb", "uci_yelp"] {
        let asset = assets::ALL
            .iter()
            .find(|a| a.name == name)
            .with_context(|| format!("no asset {name}"))?;
        assets::ensure(asset).with_context(|| format!("fetching {name}"))?;
    }
    let study = Study::load(&config_path, &sets)?;
    eprintln!("== running the demo study ({} jobs)", study.jobs().len());
    let (ran, skipped, failed) = run_all(
        &study,
        &SweepOptions {
            jobs: args.jobs,
            sets: sets.clone(),
            max_jobs: None,
            abort_in_job: None,
        },
    )?;
    let agg = aggregate::aggregate(study.output())?;
    agg.write(study.output())?;
    let site = args.out.join("site");
    let r = report::write(study.output(), &site, args.web.as_deref())?;
    out!("{}", agg.markdown());
    out!(
        "demo: ran {ran} jobs, skipped {skipped} finished, {} failed, in {:.0} s; report: {}{}",
        failed.len(),
        start.elapsed().as_secs_f64(),
        r.site.join("index.html").display(),
        if r.web_app {
            ""
        } else {
            " (tables only: no built web app found)"
        }
    );
    if !failed.is_empty() {
        anyhow::bail!("{} demo jobs failed: {}", failed.len(), failed.join(", "));
    }
    if !args.no_serve {
        report::serve(&r.site, args.port)?;
    }
    Ok(())
}
