//! `tpv report STUDY_DIR -o SITE_DIR`: a folder any static host can serve — the web app
//! (`index.html`, which loads `manifest.json` beside it), `results.html` (the tables as plain HTML,
//! readable without JavaScript; the front page when no built web app is found), the run files in
//! `runs/`, `manifest.json` (what each run is) and the tables as Markdown, CSV and JSON. Also a
//! small static file server for `--serve` and `tpv demo`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

use tpv_shared::eval::{ReportModel, hf_files};
use tpv_shared::report::{self, ExampleSet, Manifest, ManifestRun, Tables};
use tpv_shared::study::StudyFile;

use super::aggregate::{Aggregate, aggregate};
use crate::{io, train};

/// Where the built web app (trunk's dist) is: `--web` when given (that folder only: a wrong
/// one is never replaced by another build), else `TPV_WEB_DIST` or `target/site` next to this
/// executable's target directory (a `cargo build` in the repository).
pub fn find_web_dist(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return dir.join("index.html").is_file().then(|| dir.to_path_buf());
    }
    let candidates: Vec<PathBuf> = std::env::var_os("TPV_WEB_DIST")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent()?.parent().map(|target| target.join("site"))),
        )
        .collect();
    candidates.into_iter().find(|d| d.join("index.html").is_file())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

/// What the report folder holds (`tpv report --json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub site: PathBuf,
    pub runs: usize,
    pub web_app: bool,
    /// The study's model, bundled in the site or linked (for the Evaluate view).
    pub model: Option<ReportModel>,
}

/// Whether the report carries the study's model files (`SITE/model/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BundleModel {
    /// When the model's files add up to at most [`BUNDLE_AUTO_MAX`] bytes.
    #[default]
    Auto,
    Always,
    Never,
}

/// The largest model `--bundle-model auto` copies into a report (SmolLM2's GGUF is 98 MB).
pub const BUNDLE_AUTO_MAX: u64 = 256 << 20;

/// How the report is written.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// The built web app (trunk's dist); `None`: look for it ([`find_web_dist`]).
    pub web: Option<PathBuf>,
    /// Fail when no built web app is found, instead of writing the tables only.
    pub require_web: bool,
    pub bundle_model: BundleModel,
}

/// The files of a model as the browser loads them: one `.gguf`, or an HF folder's files.
fn model_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let read_index = || {
        let index = path.join(hf_files::INDEX);
        std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))
    };
    let names = hf_files::to_read(|f| path.join(f).exists(), read_index)?;
    Ok(names.iter().map(|f| path.join(f)).collect())
}

/// A model's name as a published report shows it: a hub id or a registry name as it is, a local
/// path by its last component (the site is shared; the layout of this machine's disk is not).
fn public_model_name(spec: &str) -> String {
    let path = Path::new(spec);
    if path.is_absolute() || spec.starts_with('.') || spec.starts_with('~') {
        path.file_name()
            .map_or_else(|| "model".to_owned(), |n| n.to_string_lossy().into_owned())
    } else {
        spec.to_owned()
    }
}

/// Copies the study's model into `SITE/model/` or links it where the browser can fetch it (the HF
/// hub for an `org/name` id).
fn bundle_model(spec: &str, site: &Path, how: BundleModel) -> Result<Option<ReportModel>> {
    let hub_url = |id: &str| format!("https://huggingface.co/{id}/resolve/main/");
    let is_hub_id = |s: &str| {
        s.split_once('/')
            .is_some_and(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
    };
    let linked = |reason: &str| -> Option<ReportModel> {
        tracing::info!("not bundling the model {spec}: {reason}");
        is_hub_id(spec).then(|| ReportModel {
            url: hub_url(spec),
            name: spec.to_owned(),
            bytes: None,
            bundled: false,
        })
    };
    if how == BundleModel::Never {
        return Ok(linked("--bundle-model never"));
    }
    let path = match crate::models::resolve(spec) {
        Ok(p) => p,
        Err(e) if how == BundleModel::Auto => return Ok(linked(&format!("{e:#}"))),
        Err(e) => return Err(e.context(format!("bundling the model {spec}"))),
    };
    let files = model_files(&path)?;
    let bytes: u64 = files
        .iter()
        .map(|f| {
            std::fs::metadata(f)
                .map(|m| m.len())
                .with_context(|| format!("reading {}", f.display()))
        })
        .sum::<Result<u64>>()?;
    if how == BundleModel::Auto && bytes > BUNDLE_AUTO_MAX {
        return Ok(linked(&format!(
            "{} MB is more than --bundle-model auto copies ({} MB); pass --bundle-model always",
            bytes >> 20,
            BUNDLE_AUTO_MAX >> 20
        )));
    }
    let dir = site.join("model");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in &files {
        let name = f.file_name().context("a model file without a name")?;
        let dest = dir.join(name);
        if dest.exists() {
            std::fs::remove_file(&dest).with_context(|| format!("removing {}", dest.display()))?;
        }
        // A copy, never a hard link: a reader who edits or overwrites the site's file must not
        // change the model in the cache.
        std::fs::copy(f, &dest).with_context(|| format!("copying {} to {}", f.display(), dest.display()))?;
    }
    let url = if path.is_file() {
        format!(
            "model/{}",
            files[0].file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        )
    } else {
        "model/".to_owned()
    };
    Ok(Some(ReportModel {
        url,
        name: public_model_name(spec),
        bytes: Some(bytes),
        bundled: true,
    }))
}

/// Writes the report folder of a study directory.
pub fn write(study_dir: &Path, site: &Path, web: Option<&Path>) -> Result<Report> {
    write_with(
        study_dir,
        site,
        &ReportOptions {
            web: web.map(Path::to_path_buf),
            ..Default::default()
        },
    )
}

/// [`write`] with every option.
pub fn write_with(study_dir: &Path, site: &Path, opts: &ReportOptions) -> Result<Report> {
    let web = opts.web.as_deref();
    let agg = aggregate(study_dir)?;
    std::fs::create_dir_all(site).with_context(|| format!("creating {}", site.display()))?;
    let study_path = study_dir.join("study.json");
    let study = StudyFile::from_json(&io::read_bytes(&study_path)?)
        .with_context(|| format!("reading {}", study_path.display()))?;

    let mut runs = Vec::new();
    for job in &study.jobs {
        let dir = study_dir.join(&job.id);
        let file = train::prompt_path(&dir);
        // Only finished runs that read (a damaged file is listed by the aggregate, not copied).
        let train::RunState::Finished(prompt) = train::run_state(&dir) else {
            continue;
        };
        let rel = format!("runs/{}.safetensors", job.id);
        let dest = site.join(&rel);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&file, &dest).with_context(|| format!("copying {}", file.display()))?;
        // The job's own fields (experiment, task, origin, init, shots, …), then the run file's.
        let mut entry = serde_json::to_value(job)?;
        if let Some(o) = entry.as_object_mut() {
            o.insert("file".into(), json!(rel));
        }
        let mut run: ManifestRun = serde_json::from_value(entry).context("a job as a manifest run")?;
        run.kind = prompt.kind().as_str().to_owned();
        run.model = prompt.meta.model.as_ref().map(|m| public_model_name(&m.id));
        run.tasks.clone_from(&prompt.meta.tasks);
        run.origin_id = prompt.origin_id().map(str::to_owned);
        run.metrics = prompt
            .meta
            .metrics
            .iter()
            .map(|(k, v)| (k.clone(), v.is_finite().then_some(*v)))
            .collect();
        runs.push(run);
    }
    let examples = copy_eval_sets(study_dir, site)?;
    let model = match &study.model {
        Some(spec) => bundle_model(spec, site, opts.bundle_model)?,
        None => None,
    };
    let tables = agg.write(site)?;
    let runs_written = runs.len();
    let manifest = Manifest {
        format: report::FORMAT.into(),
        version: report::VERSION,
        name: agg.name.clone(),
        tool_version: tpv_shared::VERSION.into(),
        origins: agg.origins.clone(),
        jobs: agg.jobs,
        finished: agg.finished,
        missing: agg.missing.clone(),
        tables: Some(Tables {
            markdown: "tables.md".into(),
            csv: "tables.csv".into(),
            json: "tables.json".into(),
            html: "results.html".into(),
        }),
        runs,
        examples,
        model: model.clone(),
    };
    io::write_atomic(&site.join("manifest.json"), manifest.to_json()?.as_bytes())?;
    let web_app = match find_web_dist(web) {
        Some(dist) => {
            copy_dir(&dist, site)?;
            true
        }
        None if opts.require_web => bail!(
            "no built web app found ({}); build it with `trunk build --release` (scripts/setup.sh installs trunk) or pass --web DIR",
            web.map_or("looked in TPV_WEB_DIST and target/site".to_owned(), |w| format!(
                "{} has no index.html",
                w.display()
            ))
        ),
        None => false,
    };
    let html = results_html(&agg, web_app);
    io::write_atomic(&site.join("results.html"), html.as_bytes())?;
    if !web_app {
        io::write_atomic(&site.join("index.html"), html.as_bytes())?;
    }
    drop(tables);
    Ok(Report {
        site: site.to_path_buf(),
        runs: runs_written,
        web_app,
        model,
    })
}

/// Copies the study's eval sets (`examples/TASK.json`, written by `tpv sweep`) into the site;
/// returns their manifest entries.
fn copy_eval_sets(study_dir: &Path, site: &Path) -> Result<Vec<ExampleSet>> {
    let dir = study_dir.join("examples");
    let mut out = Vec::new();
    if !dir.is_dir() {
        return Ok(out);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    std::fs::create_dir_all(site.join("examples"))?;
    for file in files {
        let bytes = io::read_bytes(&file)?;
        let set =
            tpv_shared::eval::EvalSet::from_json(&bytes).with_context(|| format!("reading {}", file.display()))?;
        io::check_file_name(&set.name, &format!("{}: the eval set's name", file.display()))?;
        let rel = format!("examples/{}.json", set.name);
        io::write_atomic(&site.join(&rel), &bytes)?;
        out.push(ExampleSet {
            task: set.name,
            file: rel,
            split: set.split,
            records: set.records.len(),
            split_size: set.split_size,
        });
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Inline Markdown of the tables: `**bold**` only.
fn inline(s: &str) -> String {
    let mut out = String::new();
    for (i, part) in escape(s).split("**").enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("<strong>{part}</strong>"));
        } else {
            out.push_str(part);
        }
    }
    out
}

/// The tables as a self-contained HTML page (the Markdown subset `markdown()` writes).
pub fn results_html(agg: &Aggregate, web_app: bool) -> String {
    let md = agg.markdown();
    let mut body = String::new();
    let mut in_table = false;
    let mut in_list = false;
    for line in md.lines() {
        let t = line.trim();
        if in_table && !t.starts_with('|') {
            body.push_str("</tbody></table>\n");
            in_table = false;
        }
        if in_list && !t.starts_with("- ") {
            body.push_str("</ul>\n");
            in_list = false;
        }
        if let Some(h) = t.strip_prefix("## ") {
            body.push_str(&format!("<h2>{}</h2>\n", inline(h)));
        } else if let Some(h) = t.strip_prefix("# ") {
            body.push_str(&format!("<h1>{}</h1>\n", inline(h)));
        } else if t.starts_with('|') {
            let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                continue;
            }
            if in_table {
                body.push_str("<tr>");
                for c in cells {
                    body.push_str(&format!("<td>{}</td>", inline(c)));
                }
                body.push_str("</tr>\n");
            } else {
                body.push_str("<table><thead><tr>");
                for c in cells {
                    body.push_str(&format!("<th>{}</th>", inline(c)));
                }
                body.push_str("</tr></thead><tbody>\n");
                in_table = true;
            }
        } else if let Some(item) = t.strip_prefix("- ") {
            if !in_list {
                body.push_str("<ul>\n");
                in_list = true;
            }
            body.push_str(&format!("<li>{}</li>\n", inline(item)));
        } else if !t.is_empty() {
            body.push_str(&format!("<p>{}</p>\n", inline(t)));
        }
    }
    if in_table {
        body.push_str("</tbody></table>\n");
    }
    if in_list {
        body.push_str("</ul>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{title} — tpv results</title><style>body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem;color:#222}}\
table{{border-collapse:collapse;margin:1rem 0}}th,td{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left}}th{{background:#f3f3f3}}\
td{{font-variant-numeric:tabular-nums}}</style></head><body>\n{body}<p>Files: <a href=\"manifest.json\">manifest.json</a> · \
<a href=\"tables.csv\">tables.csv</a> · <a href=\"tables.json\">tables.json</a> · <a href=\"tables.md\">tables.md</a>{app}</p>\n</body></html>\n",
        title = escape(&agg.name),
        app = if web_app {
            " · <a href=\"index.html\">the explorer (web app)</a>"
        } else {
            ""
        }
    )
}

/// Serves `root` on 127.0.0.1:`port` until the process is stopped (see [`crate::serve`]).
pub fn serve(root: &Path, port: u16) -> Result<()> {
    crate::serve::serve(root, port)
}
