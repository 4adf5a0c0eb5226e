//! A study from a report folder: `manifest.json` (written by `tpv report`) and its run files,
//! fetched relative to the manifest's URL and parsed by `tpv-shared`.

use std::collections::BTreeMap;

use tpv_shared::eval::ReportModel;
use tpv_shared::report::Manifest;
use tpv_shared::{Document, SoftPrompt};
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::origin;

/// One run of a study or one opened file.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: String,
    /// prompt_tuning, addition, cross_origin, transfer, multi_task, or `file` for opened files.
    pub experiment: String,
    pub tasks: Vec<String>,
    pub origin: Option<usize>,
    pub init: Option<String>,
    pub shots: Option<usize>,
    pub kind: String,
    pub model: Option<String>,
    pub metrics: BTreeMap<String, f64>,
    pub prompt: SoftPrompt,
}

impl Run {
    /// How a menu lists the run: its label, with its id when they differ.
    pub fn option_label(&self) -> String {
        if self.label() == self.id {
            self.id.clone()
        } else {
            format!("{} — {}", self.label(), self.id)
        }
    }

    /// `tasks@originN` (or the file name).
    pub fn label(&self) -> String {
        match self.origin {
            Some(o) if !self.tasks.is_empty() => format!("{}@origin{o}", self.tasks.join("+")),
            _ => self.id.clone(),
        }
    }

    /// The task's main score: test exact match, else the first test metric.
    pub fn score(&self) -> Option<(String, f64)> {
        if let Some(v) = self.metrics.get("test_exact_match") {
            return Some(("test_exact_match".into(), *v));
        }
        self.metrics
            .iter()
            .find(|(k, _)| k.starts_with("test_") || k.contains(":test_"))
            .map(|(k, v)| (k.clone(), *v))
    }
}

/// A task's bundled examples (the manifest's `examples`, defined in `tpv-shared`).
pub use tpv_shared::report::ExampleSet;

/// A loaded study: its runs and the runs that could not be read (with the reason).
#[derive(Debug, Clone, Default)]
pub struct Study {
    pub name: String,
    pub url: String,
    pub runs: Vec<Run>,
    pub errors: Vec<String>,
    /// The examples bundled with the report, per task.
    pub examples: Vec<ExampleSet>,
    /// The study's model, bundled with the report or linked (its URL absolute once loaded).
    pub model: Option<ReportModel>,
}

fn js_err(e: wasm_bindgen::JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// The absolute URL of `relative` against `base`.
pub fn resolve(relative: &str, base: &str) -> Result<String, String> {
    web_sys::Url::new_with_base(relative, base)
        .map(|u| u.href())
        .map_err(js_err)
}

/// The page's own URL.
pub fn page_url() -> String {
    web_sys::window()
        .and_then(|w| w.location().href().ok())
        .unwrap_or_default()
}

/// GET `url` → its bytes; HTTP errors are errors. Only from the page's own origin or one the user
/// confirmed (`origin`): a URL on another site is an error here, and the views ask first.
pub async fn fetch_bytes(url: &str) -> Result<Vec<u8>, String> {
    let url = match origin::classify(url)? {
        origin::Place::Allowed { href } => href,
        origin::Place::Foreign { origin, .. } => {
            return Err(format!(
                "{url}: not fetched: {origin} is a site other than this report's, and loading from it was not confirmed"
            ));
        }
    };
    let url = url.as_str();
    let window = web_sys::window().ok_or("no window")?;
    let resp = JsFuture::from(window.fetch_with_str(url))
        .await
        .map_err(|e| format!("{url}: {}", js_err(e)))?;
    let resp: web_sys::Response = resp.dyn_into().map_err(|_| format!("{url}: not an HTTP response"))?;
    if !resp.ok() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let buf = JsFuture::from(resp.array_buffer().map_err(js_err)?)
        .await
        .map_err(js_err)?;
    Ok(js_sys::Uint8Array::new(&buf).to_vec())
}

/// Fetches a manifest and every run file it lists (relative to the manifest).
pub async fn load(manifest_url: &str) -> Result<Study, String> {
    let url = resolve(manifest_url, &page_url())?;
    let bytes = fetch_bytes(&url).await?;
    let manifest = Manifest::from_json(&bytes).map_err(|e| format!("{url}: {e}"))?;
    let mut study = Study {
        name: manifest.name,
        url: url.clone(),
        ..Default::default()
    };
    if let Some(mut m) = manifest.model {
        m.url = resolve(&m.url, &url)?;
        study.model = Some(m);
    }
    for mut set in manifest.examples {
        set.file = resolve(&set.file, &url)?;
        study.examples.push(set);
    }
    for r in manifest.runs {
        let file_url = resolve(&r.file, &url)?;
        let prompt = match fetch_bytes(&file_url).await {
            Ok(b) => Document::read(&b, None)
                .map(|d| d.prompt)
                .map_err(|e| format!("{}: {e}", r.file)),
            Err(e) => Err(e),
        };
        let prompt = match prompt {
            Ok(p) => p,
            Err(e) => {
                study.errors.push(e);
                continue;
            }
        };
        // A transfer run is about its target (its file may hold the init's tasks).
        let tasks = match (&r.target, &r.task) {
            (Some(t), _) => vec![t.clone()],
            (None, Some(t)) if r.tasks.is_empty() => vec![t.clone()],
            _ => r.tasks.clone(),
        };
        let init = r.init.map(|i| tpv_shared::study::init_label(&i, r.source.as_deref()));
        study.runs.push(Run {
            id: r.id,
            experiment: r.experiment,
            tasks,
            origin: r.origin,
            init,
            shots: r.shots,
            kind: r.kind,
            model: r.model,
            metrics: r.metrics.into_iter().filter_map(|(k, v)| Some((k, v?))).collect(),
            prompt,
        });
    }
    Ok(study)
}

/// A run from an opened file (no study metadata beyond the file's own).
pub fn from_document(id: String, doc: &Document) -> Run {
    let p = &doc.prompt;
    Run {
        experiment: "file".into(),
        tasks: p.meta.tasks.clone(),
        origin: p.meta.origin.as_ref().and_then(|o| {
            o.index
                .map(|i| i as usize)
                .or_else(|| o.id.strip_prefix("origin")?.parse().ok())
        }),
        init: None,
        shots: None,
        kind: p.kind().as_str().to_owned(),
        model: p.meta.model.as_ref().map(|m| m.id.clone()),
        metrics: p.meta.metrics.clone(),
        prompt: p.clone(),
        id,
    }
}
