//! `tpv push STUDY_DIR ORG/NAME`: a study's task prompts as peft prompt-tuning adapters (one
//! folder per task and origin: `PeftModel.from_pretrained(base, REPO,
//! subfolder="adapters/TASK/originN")`), every finished run file, the origins, the tables,
//! the figures, the eval sets and a model card, published in one commit ([`crate::hub::upload`]).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use tpv_shared::peft::PeftAdapter;
use tpv_shared::study::StudyFile;
use tpv_shared::{OriginRef, SoftPrompt};

use super::print_json;
use crate::cli::PushArgs;
use crate::hub::upload::{PushOptions, RepoType, Upload, push};
use crate::{io, train};

pub fn run(args: &PushArgs) -> Result<()> {
    let repo_type = RepoType::parse(&args.repo_type)?;
    let files = study_files(&args.study_dir, &args.repo)
        .with_context(|| format!("collecting {} for the hub", args.study_dir.display()))?;
    let opts = PushOptions {
        repo_id: args.repo.clone(),
        repo_type,
        message: args.message.clone().unwrap_or_else(|| {
            format!(
                "tpv push {}",
                args.study_dir.file_name().unwrap_or_default().to_string_lossy()
            )
        }),
        token: args.token.clone().or_else(|| std::env::var("HF_TOKEN").ok()),
        dry_run: args.dry_run,
        private: args.private,
        space_sdk: None,
    };
    let report =
        push(&files, &opts).with_context(|| format!("pushing {} to {}", args.study_dir.display(), args.repo))?;
    if args.json {
        return print_json(&serde_json::to_value(&report)?);
    }
    let verb = if report.dry_run { "would send" } else { "sent" };
    for f in &report.sent {
        let lfs = if report.lfs.contains(f) { " (LFS)" } else { "" };
        out!("{verb} {f}{lfs}");
    }
    out!(
        "{}: {} {} file(s), {} unchanged{}{}",
        report.url,
        verb,
        report.sent.len(),
        report.unchanged.len(),
        if report.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
        report
            .commit
            .as_deref()
            .map(|c| format!(", commit {}", &c[..c.len().min(12)]))
            .unwrap_or_default()
    );
    Ok(())
}

/// The most a site may hold to be pushed as a Space (read into memory; a bundled model is at most
/// 256 MB, the `auto` limit).
const SITE_MAX_BYTES: u64 = 1 << 30;

/// `tpv report --push ORG/NAME`: the written site, every file of it, as a static Space (the hub
/// serves it as it is: the site is relative links only) with the Space's README.
pub fn push_site(site: &Path, repo: &str, token: Option<String>) -> Result<crate::hub::upload::PushReport> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let mut stack = vec![site.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                let rel = path.strip_prefix(site)?.to_string_lossy().replace('\\', "/");
                if rel == "README.md" {
                    continue;
                }
                let bytes = io::read_bytes(&path)?;
                total += bytes.len() as u64;
                if total > SITE_MAX_BYTES {
                    anyhow::bail!(
                        "{} holds more than {SITE_MAX_BYTES} bytes: too much for a Space push",
                        site.display()
                    );
                }
                files.push(Upload { path: rel, bytes });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let name = site.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let readme = format!(
        "---\ntitle: {name}\nsdk: static\napp_file: index.html\npinned: false\ntags:\n- task-prompt-vectors\n- tpv\n---\n\nA task prompt vectors study report written by `tpv report`: the tables, heatmaps, composer, curves and in-browser evaluation.\n"
    );
    files.push(Upload {
        path: "README.md".into(),
        bytes: readme.into_bytes(),
    });
    let opts = PushOptions {
        repo_id: repo.to_owned(),
        repo_type: RepoType::Space,
        message: format!("tpv report {name}"),
        token: token.or_else(|| std::env::var("HF_TOKEN").ok()),
        dry_run: false,
        private: false,
        space_sdk: Some("static".into()),
    };
    push(&files, &opts).with_context(|| format!("pushing {} to the Space {repo}", site.display()))
}

/// Everything `tpv push` publishes from a study directory, with the model card.
pub fn study_files(dir: &Path, repo: &str) -> Result<Vec<Upload>> {
    let study_path = dir.join("study.json");
    let study = StudyFile::from_json(&io::read_bytes(&study_path)?)
        .with_context(|| format!("reading {}", study_path.display()))?;
    let mut files = Vec::new();
    let mut adapters = Vec::new();
    let mut origins: Vec<(usize, SoftPrompt)> = Vec::new();
    for job in &study.jobs {
        let id = job.id.clone();
        io::check_relative_path(&id, "a job of study.json")?;
        let run_dir = dir.join(&id);
        // Finished runs only: an unfinished or damaged one is not published.
        let train::RunState::Finished(prompt) = train::run_state(&run_dir) else {
            continue;
        };
        files.push(Upload {
            path: format!("runs/{id}.safetensors"),
            bytes: io::read_bytes(&train::prompt_path(&run_dir))?,
        });
        if job.kind.experiment() != "prompt_tuning" {
            continue;
        }
        let (config, weights) = PeftAdapter::from_prompt(&prompt)
            .and_then(|a| a.to_files())
            .with_context(|| format!("{id} as a peft adapter"))?;
        let folder = format!("adapters/{}", id.trim_start_matches("prompt_tuning/"));
        files.push(Upload {
            path: format!("{folder}/adapter_config.json"),
            bytes: config.into_bytes(),
        });
        files.push(Upload {
            path: format!("{folder}/adapter_model.safetensors"),
            bytes: weights,
        });
        adapters.push(folder);
        let index = job.origin();
        if let (Some(values), false) = (prompt.origin_values(), origins.iter().any(|(i, _)| *i == index)) {
            let reference = prompt.meta.origin.clone().unwrap_or(OriginRef {
                id: format!("origin{index}"),
                seed: None,
                index: u32::try_from(index).ok(),
                sampling: None,
            });
            let mut origin = SoftPrompt::origin(values.clone(), reference);
            origin.meta.model.clone_from(&prompt.meta.model);
            origin.meta.layout = prompt.meta.layout;
            // The run's time, not this push's: the same study publishes the same bytes.
            origin.meta.created_at.clone_from(&prompt.meta.created_at);
            origins.push((index, origin));
        }
    }
    for (index, origin) in &origins {
        files.push(Upload {
            path: format!("origins/origin{index}.safetensors"),
            bytes: tpv_shared::runfile::write_run(origin)?,
        });
    }
    // study.json as published: the model and config named without this machine's paths.
    let mut doc: serde_json::Value = serde_json::from_slice(&io::read_bytes(&study_path)?)?;
    for key in ["model", "config"] {
        if let Some(v) = doc[key].as_str() {
            doc[key] = serde_json::Value::String(public_name(v));
        }
    }
    files.push(Upload {
        path: "study.json".into(),
        bytes: serde_json::to_vec_pretty(&doc)?,
    });
    for name in ["tables.md", "tables.csv", "tables.json", "tables.tex"] {
        let path = dir.join(name);
        if path.is_file() {
            files.push(Upload {
                path: name.into(),
                bytes: io::read_bytes(&path)?,
            });
        }
    }
    for sub in ["figures", "examples"] {
        let Ok(entries) = std::fs::read_dir(dir.join(sub)) else {
            continue;
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for name in names {
            files.push(Upload {
                path: format!("{sub}/{name}"),
                bytes: io::read_bytes(&dir.join(sub).join(&name))?,
            });
        }
    }
    files.push(Upload {
        path: "README.md".into(),
        bytes: model_card(&study, dir, repo, &adapters).into_bytes(),
    });
    Ok(files)
}

/// A model or config as a public repo names it: a hub id as it is, a local path by its last
/// component (the layout of this machine's disk is not published).
pub(crate) fn public_name(spec: &str) -> String {
    if crate::models::is_hub_id(spec) {
        return spec.to_owned();
    }
    let name = crate::study::report::public_model_name(spec);
    Path::new(&name)
        .file_name()
        .map_or(name.clone(), |n| n.to_string_lossy().into_owned())
}

/// The repo's README: the hub's YAML metadata (base model when the study's is a hub id, peft,
/// the tags, the registry tasks' datasets), how to load a task prompt, and the study's first table.
fn model_card(study: &StudyFile, dir: &Path, repo: &str, adapters: &[String]) -> String {
    let model = study
        .model
        .as_deref()
        .map_or_else(|| "an unrecorded model".to_owned(), public_name);
    let base_model = study.model.as_deref().filter(|m| crate::models::is_hub_id(m));
    let mut datasets: Vec<String> = study
        .tasks
        .iter()
        .filter_map(|t| tpv_shared::tasks::get(t).ok())
        .map(|t| t.origin.dataset)
        .collect();
    datasets.sort();
    datasets.dedup();
    let mut card = String::from("---\n");
    if let Some(m) = base_model {
        let _ = writeln!(card, "base_model: {m}");
    }
    card.push_str("library_name: peft\ntags:\n- peft\n- prompt-tuning\n- task-prompt-vectors\n- tpv\n");
    if !datasets.is_empty() {
        card.push_str("datasets:\n");
        for d in &datasets {
            let _ = writeln!(card, "- {d}");
        }
    }
    card.push_str("---\n\n");
    let _ = writeln!(card, "# Task prompt vectors: {}\n", study.name);
    let _ = writeln!(
        card,
        "Soft prompts tuned with tpv on `{}` for the tasks {} from the random origins {:?} (task prompt vectors: the tuned prompt minus its origin).\n",
        model,
        study
            .tasks
            .iter()
            .map(|t| format!("`{t}`"))
            .collect::<Vec<_>>()
            .join(", "),
        study.origins
    );
    if let Some(first) = adapters.first() {
        let _ = writeln!(
            card,
            "## Use a task prompt\n\n```python\nfrom peft import PeftModel\nmodel = PeftModel.from_pretrained(base_model, \"{repo}\", subfolder=\"{first}\")\n```\n"
        );
    }
    card.push_str("## Files\n\n- `adapters/TASK/originN/`: each task prompt as a peft prompt-tuning adapter\n- `runs/`: every finished run as a tpv run file (`tpv inspect`, `tpv combine`)\n- `origins/`: the origins θ₀\n- `tables.md`, `tables.csv`, `tables.json`, `tables.tex` (LaTeX, booktabs), `figures/`: the study's results; `examples/`: its eval sets\n\n");
    if let Ok(tables) = std::fs::read_to_string(dir.join("tables.md")) {
        // The first table section (prompt tuning), as the headline.
        let mut sections = tables.split("\n## ");
        let _ = sections.next();
        if let Some(first) = sections.next() {
            let _ = writeln!(card, "## {}", first.trim_end());
        }
    }
    card
}
