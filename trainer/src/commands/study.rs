//! `tpv sweep`, `tpv aggregate`, `tpv report`.

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::print_json;
use crate::cli::{AggregateArgs, ReportArgs, SweepArgs};
use crate::study::jobs::{
    self, BUSY_EXIT, JobOutcome, SWEEP_CHILD, SweepOptions, SweepOutcome, run_locked, sweep_gpus, write_eval_sets,
    write_manifest,
};
use crate::study::preflight::{Scope, Weights};
use crate::study::slurm::{SlurmOptions, emit};
use crate::study::{Job, Study, aggregate as agg, report as rep};
use crate::train::stop::{self, Mode};

pub fn sweep(args: &SweepArgs) -> Result<()> {
    let study = Study::load(&args.config, &args.sets)?;
    if args.list {
        return list(&study, args.json);
    }
    if let Some(stage) = args.todo {
        let todo: Vec<String> = study
            .jobs()
            .iter()
            .filter(|j| j.stage() == stage)
            .enumerate()
            .filter(|(_, j)| !study.finished(j))
            .map(|(i, _)| i.to_string())
            .collect();
        out!("{}", todo.join(","));
        return Ok(());
    }
    if args.check {
        let weights = if args.no_download {
            Weights::HeadersOnly
        } else {
            Weights::Download
        };
        return preflight(&study, Scope::Everything, weights, args.json);
    }
    if let Some(scheduler) = &args.emit {
        return emit_scripts(&study, scheduler, args);
    }
    if let Some(id) = &args.job {
        let jobs = study.jobs();
        let job = jobs
            .iter()
            .find(|j| &j.id == id)
            .with_context(|| format!("no job {id} in {} (see --list)", args.config.display()))?;
        return run_one(&study, job);
    }
    if let (Some(stage), Some(index)) = (args.stage, args.index) {
        let jobs: Vec<_> = study.jobs().into_iter().filter(|j| j.stage() == stage).collect();
        let job = jobs
            .get(index)
            .with_context(|| format!("stage {stage} has {} jobs; no index {index}", jobs.len()))?;
        return run_one(&study, job);
    }
    let gpus = sweep_gpus(&study, args.gpus.as_deref())?;
    if !gpus.is_empty() && args.jobs > 1 {
        eprintln!("job slots on GPUs {} (one each, round robin)", gpus.join(", "));
    }
    preflight(&study, Scope::Everything, Weights::Download, false)?;
    let abort_in_job = match &args.abort_in_job {
        Some(s) => {
            let (n, step) = s.split_once(':').context("--abort-in-job N:S")?;
            Some((n.parse()?, step.parse()?))
        }
        None => None,
    };
    // -j N: the parent forwards SIGTERM/SIGINT to its children and waits; -j 1 runs the jobs
    // itself (a second Ctrl-C ends it at once).
    stop::install(if args.jobs > 1 {
        Mode::Parent
    } else {
        Mode::Jobs { force_on_repeat: true }
    })
    .context("tpv sweep: installing the SIGTERM/SIGINT handler")?;
    let outcome = jobs::sweep(
        &study,
        &SweepOptions {
            jobs: args.jobs,
            gpus,
            sets: args.sets.clone(),
            max_jobs: args.max_jobs,
            abort_in_job,
        },
    )?;
    if let Some(signal) = outcome.interrupted {
        let resume = format!(
            "the running jobs stopped at a checkpoint and finished runs are kept; `tpv sweep {}` again resumes",
            args.config.display()
        );
        interrupted(&format!("study {}", study.study.name), signal, &resume);
    }
    summary(&study, &outcome, args)
}

/// The end of a sweep: the aggregation if asked, the counts, an error naming the failed jobs.
fn summary(study: &Study, o: &SweepOutcome, args: &SweepArgs) -> Result<()> {
    if args.aggregate || args.json {
        agg::aggregate(study.output())?.write(study.output())?;
    }
    let (ran, skipped, failed, busy) = (o.ran, o.skipped, &o.failed, &o.busy);
    if args.json {
        print_json(&json!({
            "study": study.output().display().to_string(), "ran": ran, "skipped": skipped,
            "failed": failed, "busy": busy,
        }))?;
    } else {
        let elsewhere = if busy.is_empty() {
            String::new()
        } else {
            format!(", {} left to another process", busy.len())
        };
        out!(
            "study {}: ran {ran}, skipped {skipped} finished, {} failed{elsewhere} → {}",
            study.study.name,
            failed.len(),
            study.output().display()
        );
    }
    if !failed.is_empty() {
        bail!("{} jobs failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// `--job ID`, `--stage S --index I`: one job, under its lock. Another process running it is not
/// a failure (exit 0; a sweep's child exits [`BUSY_EXIT`] so its parent can tell). Stopped by
/// SIGTERM/SIGINT, it exits 128 + the signal, its checkpoint kept.
fn run_one(study: &Study, job: &Job) -> Result<()> {
    let child = std::env::var_os(SWEEP_CHILD).is_some();
    stop::install(Mode::Jobs {
        force_on_repeat: !child,
    })
    .with_context(|| format!("job {}: installing the SIGTERM/SIGINT handler", job.id))?;
    write_manifest(study)?;
    match run_locked(study, job, None) {
        Ok(JobOutcome::Done(file)) => {
            out!("{}", file.display());
            Ok(())
        }
        Ok(JobOutcome::Busy(why)) => {
            eprintln!("{why}");
            if child {
                std::process::exit(BUSY_EXIT);
            }
            Ok(())
        }
        Err(e) => match stop::requested() {
            Some(signal) => {
                eprintln!("{e:#}");
                if child {
                    // The sweep reports it.
                    std::process::exit(stop::exit_code(signal));
                }
                interrupted(
                    &format!("job {}", job.id),
                    signal,
                    "its checkpoint is kept; the same command again resumes it",
                )
            }
            None => Err(e),
        },
    }
}

/// Says that `what` was stopped by `signal` and how to resume, and exits 128 + the signal.
pub(crate) fn interrupted(what: &str, signal: i32, resume: &str) -> ! {
    eprintln!(
        "{what} interrupted by {}: {resume} (exit status {})",
        stop::signal_name(signal),
        stop::exit_code(signal)
    );
    std::process::exit(stop::exit_code(signal))
}

/// The study's preflight: the table on stderr (or JSON on stdout for `--check --json`), and an
/// error naming what is missing.
fn preflight(study: &Study, scope: Scope, weights: Weights, json: bool) -> Result<()> {
    let checks = crate::study::preflight::preflight(study, scope, weights);
    let missing: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.what.as_str()).collect();
    if json {
        print_json(&serde_json::to_value(&checks)?)?;
    } else {
        eprint!("{}", crate::study::preflight::table(&checks));
    }
    if !missing.is_empty() {
        bail!(
            "the preflight found {} missing: {} (nothing was started)",
            missing.len(),
            missing.join("; ")
        );
    }
    Ok(())
}

/// `--list`: every job with its stage and whether it finished.
fn list(study: &Study, json: bool) -> Result<()> {
    let jobs = study.jobs();
    if json {
        let list: Vec<_> = jobs
            .iter()
            .map(|j| json!({ "id": j.id, "stage": j.stage(), "finished": study.finished(j), "deps": j.deps }))
            .collect();
        return print_json(&json!({ "jobs": list }));
    }
    for j in &jobs {
        out!(
            "{} stage {} {}",
            if study.finished(j) { "done" } else { "todo" },
            j.stage(),
            j.id
        );
    }
    Ok(())
}

/// `--emit slurm -o DIR`: the scheduler scripts, the study file and the eval sets.
fn emit_scripts(study: &Study, scheduler: &str, args: &SweepArgs) -> Result<()> {
    if scheduler != "slurm" {
        bail!("--emit {scheduler}: only slurm is supported");
    }
    let dir = args.output.as_ref().context("--emit slurm needs -o DIR")?;
    let opts = SlurmOptions {
        sbatch: args.sbatch.clone(),
        max_parallel: args.max_parallel,
        tpv: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "tpv".into()),
        sets: args.sets.clone(),
    };
    crate::study::slurm::check_values(study, dir, &opts)?;
    preflight(study, Scope::NoDevices, Weights::Download, false)?;
    let files = emit(study, dir, &opts)?;
    write_manifest(study)?;
    // The array tasks run single jobs; the eval sets the report bundles are written here.
    write_eval_sets(study)?;
    for f in files {
        out!("wrote {}", f.display());
    }
    Ok(())
}

pub fn aggregate(args: &AggregateArgs) -> Result<()> {
    args.stats.check()?;
    let a = agg::aggregate_with(&args.study_dir, args.stats.test, args.stats.grid_intensity)?;
    let dir = args.output.clone().unwrap_or_else(|| args.study_dir.clone());
    let files = a.write(&dir)?;
    if args.json {
        return print_json(&serde_json::to_value(&a)?);
    }
    out!("{}", a.markdown());
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

pub fn report(args: &ReportArgs) -> Result<()> {
    args.stats.check()?;
    let r = rep::write_with(
        &args.study_dir,
        &args.output,
        &rep::ReportOptions {
            web: args.web.clone(),
            require_web: args.web.is_some(),
            bundle_model: args.bundle_model.into(),
            test: args.stats.test,
            grid_intensity: Some(args.stats.grid_intensity),
        },
    )?;
    let pushed = match &args.push {
        Some(repo) => Some(super::push::push_site(&r.site, repo, args.token.clone())?),
        None => None,
    };
    if args.json {
        let mut value = serde_json::to_value(&r)?;
        if let Some(p) = &pushed {
            value["pushed"] = serde_json::to_value(p)?;
        }
        print_json(&value)?;
    } else {
        print_report(&r)?;
        if let Some(p) = &pushed {
            out!(
                "pushed to the Space {}: {} file(s) sent, {} unchanged",
                p.url,
                p.sent.len(),
                p.unchanged.len()
            );
        }
    }
    if args.serve {
        rep::serve(&r.site, args.port)?;
    }
    Ok(())
}

fn print_report(r: &rep::Report) -> Result<()> {
    out!(
        "wrote {} ({} runs{}{})",
        r.site.display(),
        r.runs,
        if r.web_app {
            ", with the web app"
        } else {
            "; no built web app found (trunk build, or --web DIR): index.html shows the tables"
        },
        match &r.model {
            Some(m) if m.bundled => format!(", the model in {}", m.url),
            Some(m) => format!(", the model linked at {}", m.url),
            None => String::new(),
        }
    );
    Ok(())
}
