//! `tpv report STUDY_DIR -o SITE_DIR`: a folder any static host can serve — the web app
//! (`index.html`, which loads `manifest.json` beside it), `results.html` (the tables as plain HTML,
//! readable without JavaScript; the front page when no built web app is found), the run files in
//! `runs/`, `manifest.json` (what each run is) and the tables as Markdown, CSV and JSON. Also a
//! small static file server for `--serve` and `tpv demo`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{DType, Device};
use serde_json::json;

use tpv_shared::eval::{ReportModel, hf_files};
use tpv_shared::report::{self, ExampleSet, Manifest, ManifestRun, Tables};
use tpv_shared::stats::TestKind;
use tpv_shared::study::StudyFile;

use super::aggregate::{Aggregate, aggregate_with};
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
    /// The t-test of the tables' comparisons.
    pub test: TestKind,
    /// kgCO₂eq per kWh for the energy statement (default: the paper's).
    pub grid_intensity: Option<f64>,
}

/// The files of a model as the browser loads them: one `.gguf`, or an HF folder's files. Each
/// must be a regular file inside the folder (or, for a hub cache snapshot, in its repo's
/// `blobs/`): a link from a model folder to any other file is refused, not published. Each comes
/// as (its name in the site, the file it resolved to), and is copied from the latter, so a link
/// swapped after this check is not followed.
fn model_files(path: &Path) -> Result<Vec<(String, PathBuf)>> {
    if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.ends_with(".gguf") {
            bail!("{} is neither a model folder nor a .gguf file", path.display());
        }
        let real = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
        return Ok(vec![(name, real)]);
    }
    let read_index = || {
        let index = path.join(hf_files::INDEX);
        std::fs::read_to_string(&index).with_context(|| format!("cannot read {}", index.display()))
    };
    let names = hf_files::to_read(|f| path.join(f).exists(), read_index)?;
    let folder = std::fs::canonicalize(path).with_context(|| format!("resolving {}", path.display()))?;
    // huggingface_hub's cache: snapshots/REV/NAME links to ../../blobs/SHA.
    let blobs = (folder.parent().and_then(Path::file_name) == Some("snapshots".as_ref()))
        .then(|| folder.parent().and_then(Path::parent).map(|repo| repo.join("blobs")))
        .flatten();
    names
        .iter()
        .map(|f| {
            let file = path.join(f);
            let real = std::fs::canonicalize(&file).with_context(|| format!("resolving {}", file.display()))?;
            let inside = real.starts_with(&folder) || blobs.as_ref().is_some_and(|b| real.starts_with(b));
            if !inside || !real.is_file() {
                bail!(
                    "{} leads to {}, outside the model folder: a report publishes only the model's own files",
                    file.display(),
                    real.display()
                );
            }
            Ok((f.clone(), real))
        })
        .collect()
}

/// Copies `from` (a resolved path: its last component is not followed if it became a link) to
/// `to`, replacing it.
fn copy_resolved(from: &Path, to: &Path) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    let mut src = options
        .open(from)
        .with_context(|| format!("opening {}", from.display()))?;
    if to.exists() {
        std::fs::remove_file(to).with_context(|| format!("removing {}", to.display()))?;
    }
    // A copy, never a hard link: a reader who edits or overwrites the site's file must not change
    // the model in the cache.
    let mut dst = std::fs::File::create(to).with_context(|| format!("creating {}", to.display()))?;
    std::io::copy(&mut src, &mut dst).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// A model's name as a published report shows it: a hub id or a registry name as it is, a local
/// path by its last component (the site is shared; the layout of this machine's disk is not).
pub(crate) fn public_model_name(spec: &str) -> String {
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
    let path = match crate::models::resolve_local(spec) {
        Ok(p) => p,
        Err(e) if how == BundleModel::Auto => return Ok(linked(&format!("{e:#}"))),
        Err(e) => return Err(e.context(format!("bundling the model {spec}"))),
    };
    let files = match model_files(&path) {
        Ok(files) => files,
        Err(e) if how == BundleModel::Auto => return Ok(linked(&format!("{e:#}"))),
        Err(e) => return Err(e.context(format!("bundling the model {spec}"))),
    };
    let bytes: u64 = files
        .iter()
        .map(|(_, f)| {
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
    // Only a model that loads (by the loader `tpv eval` uses) is published: a study.json from
    // someone else may name any file.
    let check_dtype = if bytes > BUNDLE_AUTO_MAX {
        DType::BF16
    } else {
        DType::F32
    };
    if let Err(e) = crate::models::load(&path.to_string_lossy(), check_dtype, &Device::Cpu) {
        let e = e.context(format!(
            "the model {spec} does not load, so the report does not copy it"
        ));
        return match how {
            BundleModel::Auto => Ok(linked(&format!("{e:#}"))),
            _ => Err(e),
        };
    }
    let dir = site.join("model");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, real) in &files {
        copy_resolved(real, &dir.join(name))?;
    }
    let url = if path.is_file() {
        format!("model/{}", files.first().map_or("", |(name, _)| name.as_str()))
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
    let agg = aggregate_with(
        study_dir,
        opts.test,
        opts.grid_intensity.unwrap_or(super::aggregate::DEFAULT_GRID_INTENSITY),
    )?;
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
    let html = results_html(&agg, web_app)?;
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

/// A block of the Markdown that `Aggregate::markdown` writes: what the results page shows.
#[derive(Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Block {
    H1 { text: String },
    H2 { text: String },
    P { text: String },
    List { items: Vec<String> },
    Table { head: Vec<String>, rows: Vec<Vec<String>> },
}

/// The Markdown subset `Aggregate::markdown` writes (headings, paragraphs, pipe tables, lists),
/// read into blocks.
fn blocks(md: &str) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for line in md.lines().map(str::trim) {
        if let Some(h) = line.strip_prefix("## ") {
            out.push(Block::H2 { text: h.to_owned() });
        } else if let Some(h) = line.strip_prefix("# ") {
            out.push(Block::H1 { text: h.to_owned() });
        } else if line.starts_with('|') {
            let cells = table_cells(line);
            if cells.iter().all(|c| c.chars().all(|ch| ch == '-')) {
                continue;
            }
            match out.last_mut() {
                Some(Block::Table { rows, .. }) => rows.push(cells),
                _ => out.push(Block::Table {
                    head: cells,
                    rows: Vec::new(),
                }),
            }
        } else if let Some(item) = line.strip_prefix("- ") {
            match out.last_mut() {
                Some(Block::List { items }) => items.push(item.to_owned()),
                _ => out.push(Block::List {
                    items: vec![item.to_owned()],
                }),
            }
        } else if !line.is_empty() {
            out.push(Block::P { text: line.to_owned() });
        } else if matches!(out.last(), Some(Block::Table { .. } | Block::List { .. })) {
            // A blank line ends a table or a list: the next one starts anew.
            out.push(Block::P { text: String::new() });
        }
    }
    out.retain(|b| !matches!(b, Block::P { text } if text.is_empty()));
    out
}

/// The cells of a pipe-table row: split at each `|` that is not backslash-escaped (a name's
/// `\|`, `aggregate::md`), escapes kept for [`inline_html`].
fn table_cells(line: &str) -> Vec<String> {
    let inner = line.strip_prefix('|').unwrap_or(line);
    let (mut cells, mut cell) = (Vec::new(), String::new());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                cell.push(c);
                cell.extend(chars.next());
            }
            '|' => cells.push(std::mem::take(&mut cell)),
            c => cell.push(c),
        }
    }
    // A row ends with `|`, which leaves nothing after it; text after the last `|` is a cell.
    if !cell.trim().is_empty() || cells.is_empty() {
        cells.push(cell);
    }
    cells.into_iter().map(|c| c.trim().to_owned()).collect()
}

/// A Markdown text of the tables as HTML: backslash escapes read as the character they escape,
/// everything HTML-escaped, and `**bold**` (the only inline markup the tables use) as `<strong>`.
fn inline_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut bold = false;
    let mut chars = text.chars().peekable();
    let mut buf = [0u8; 4];
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_punctuation) => {
                let escaped = chars.next().unwrap_or('\\');
                out.push_str(&minijinja::HtmlEscape(escaped.encode_utf8(&mut buf)).to_string());
            }
            '*' if chars.peek() == Some(&'*') => {
                chars.next();
                out.push_str(if bold { "</strong>" } else { "<strong>" });
                bold = !bold;
            }
            c => out.push_str(&minijinja::HtmlEscape(c.encode_utf8(&mut buf)).to_string()),
        }
    }
    if bold {
        out.push_str("</strong>");
    }
    out
}

/// The results page's template (`study/results.html`).
const RESULTS_TEMPLATE: &str = include_str!("results.html");

/// The tables as a self-contained HTML page, rendered from [`RESULTS_TEMPLATE`].
pub fn results_html(agg: &Aggregate, web_app: bool) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_filter("bold", |s: String| minijinja::Value::from_safe_string(inline_html(&s)));
    env.add_template("results.html", RESULTS_TEMPLATE)
        .context("the results page's template")?;
    let page = env
        .get_template("results.html")
        .and_then(|t| {
            t.render(minijinja::context! {
                title => agg.name,
                blocks => blocks(&agg.markdown()),
                web_app => web_app,
            })
        })
        .context("rendering the results page")?;
    Ok(page + "\n")
}

/// Serves `root` on 127.0.0.1:`port` until the process is stopped (see [`crate::serve`]).
pub fn serve(root: &Path, port: u16) -> Result<()> {
    crate::serve::serve(root, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Item 11 of issue 32: a task named like a row's cells shifted the columns, and names went
    /// into tables.md as raw HTML.
    #[test]
    fn names_with_table_syntax_and_markup_stay_one_cell_of_text() {
        use super::super::aggregate::md;
        let name = "x | 99.9 ± 0.0 | fake";
        let tag = "<img src=x onerror=alert(1)>**b**\\|";
        let table = format!(
            "| task | metric | tuned |\n|---|---|---|\n| {} | acc | 77.7 |\n| {} | acc | 1.0 |\n",
            md(name),
            md(tag)
        );
        // No raw markup in tables.md: every `<` is escaped.
        assert!(
            table.match_indices('<').all(|(i, _)| table[..i].ends_with('\\')),
            "{table}"
        );
        let Block::Table { head, rows } = &blocks(&table)[0] else {
            panic!("{table}")
        };
        assert_eq!(head.len(), 3);
        assert_eq!(rows.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3], "{rows:?}");
        assert_eq!(rows[0][2], "77.7");
        assert_eq!(inline_html(&rows[0][0]), "x | 99.9 ± 0.0 | fake");
        assert_eq!(inline_html(&rows[1][0]), "&lt;img src=x onerror=alert(1)&gt;**b**\\|");
        assert_eq!(inline_html("**bold** & <i>"), "<strong>bold</strong> &amp; &lt;i&gt;");
    }

    #[test]
    fn the_tables_markdown_reads_into_blocks() {
        let md = "# Study s\n\nScores **in percent**.\n\n## A\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n| c |\n|---|\n| 3 |\n\n## Missing runs (2)\n\n- x\n- y\n";
        assert_eq!(
            blocks(md),
            vec![
                Block::H1 { text: "Study s".into() },
                Block::P {
                    text: "Scores **in percent**.".into()
                },
                Block::H2 { text: "A".into() },
                Block::Table {
                    head: vec!["a".into(), "b".into()],
                    rows: vec![vec!["1".into(), "<2>".into()]]
                },
                Block::Table {
                    head: vec!["c".into()],
                    rows: vec![vec!["3".into()]]
                },
                Block::H2 {
                    text: "Missing runs (2)".into()
                },
                Block::List {
                    items: vec!["x".into(), "y".into()]
                },
            ]
        );
    }
}
