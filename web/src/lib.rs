//! The tpv web app (Leptos, client-side only). Files and studies are parsed in the browser by
//! `tpv-shared`, the same code the `tpv` CLI runs, so every number equals the CLI's.
//!
//! Views: Runs (a sortable, filterable table), Similarity (heatmaps across origins), Compose
//! (prompt arithmetic = `tpv combine`), Curves (training curves, few-shot curves), Evaluate (a
//! model in a Web Worker scoring a prompt on examples = `tpv eval`), Files (opened run files and
//! adapters). A study loads from `?manifest=URL` (on another site, only after the user confirms
//! that origin: `origin`), or from the `manifest.json` beside the page when it is served from a
//! report folder (`tpv report`). Every view keeps its state in the URL.

mod components;
mod download;
mod files;
mod origin;
mod study;
mod url;
pub mod worker;

use std::collections::BTreeMap;

use leptos::prelude::*;
use leptos::task::spawn_local;

use components::compose::Compose;
use components::curves::Curves;
use components::evaluate::{EvalState, Evaluate};
use components::file_list::FileList;
use components::file_picker::FilePicker;
use components::runs::Runs;
use components::similarity::Similarity;
use files::Entry;
use origin::Confirm;
use study::{Run, Study};

/// The query string as a signal: views read their parameters from it and write them back.
pub type Query = RwSignal<BTreeMap<String, String>>;

/// A parameter of the query, or `default`.
pub fn param(q: Query, key: &str, default: &str) -> String {
    q.with(|m| m.get(key).cloned().unwrap_or_else(|| default.to_owned()))
}

/// Sets a parameter (an empty value removes it).
pub fn set_param(q: Query, key: &str, value: impl Into<String>) {
    let value = value.into();
    q.update(|m| {
        if value.is_empty() {
            m.remove(key);
        } else {
            m.insert(key.to_owned(), value);
        }
    });
}

/// Loads a study into the page, saying how it went.
#[derive(Clone, Copy)]
struct Loader {
    query: Query,
    study: RwSignal<Option<Study>>,
    status: RwSignal<Option<Result<String, String>>>,
}

impl Loader {
    /// Loads the study at `url` (`explicit`: the link named it, so a failure is shown; the
    /// `manifest.json` probed beside the page is quietly absent outside a report folder).
    fn load(self, url: String, explicit: bool) {
        let Self { query, study, status } = self;
        spawn_local(async move {
            status.set(Some(Ok(format!("Loading {url}…"))));
            match study::load(&url).await {
                Ok(s) => {
                    let msg = format!("Study {}: {} runs", s.name, s.runs.len());
                    let errors = s.errors.clone();
                    study.set(Some(s));
                    status.set(Some(if errors.is_empty() {
                        Ok(msg)
                    } else {
                        Err(format!("{msg}; could not read: {}", errors.join("; ")))
                    }));
                    if query.with_untracked(|m| !m.contains_key("view")) {
                        set_param(query, "view", "runs");
                    }
                }
                Err(e) if explicit => status.set(Some(Err(format!("could not load the study: {e}")))),
                Err(_) => status.set(None),
            }
        });
    }
}

const VIEWS: [(&str, &str); 6] = [
    ("runs", "Runs"),
    ("similarity", "Similarity"),
    ("compose", "Compose"),
    ("curves", "Curves"),
    ("evaluate", "Evaluate"),
    ("files", "Files"),
];

/// The page: study loading, the view tabs and the current view.
#[component]
pub fn App() -> impl IntoView {
    let query: Query = RwSignal::new(url::read());
    Effect::new(move |_| query.with(url::write));

    let entries = RwSignal::new(Vec::<Entry>::new());
    let study = RwSignal::new(None::<Study>);
    let status = RwSignal::new(None::<Result<String, String>>);
    let eval_state = EvalState::new();

    // A study: ?manifest=URL (another site's only once the user says so), else manifest.json
    // beside the page when there is one.
    let loader = Loader { query, study, status };
    let ask = RwSignal::new(None::<origin::Ask>);
    match query.with_untracked(|m| m.get("manifest").cloned()) {
        None => loader.load("manifest.json".into(), false),
        Some(url) => match origin::classify(&url) {
            Err(e) => status.set(Some(Err(format!("could not load the study: {e}")))),
            Ok(place) => match origin::Ask::of(&url, place, "This link", "a study") {
                None => loader.load(url, true),
                Some(a) => ask.set(Some(a)),
            },
        },
    }
    let on_load = Callback::new(move |url: String| {
        ask.set(None);
        loader.load(url, true);
    });
    let on_cancel = Callback::new(move |()| {
        ask.set(None);
        status.set(Some(Ok("The linked study was not loaded.".into())));
    });

    // Every prompt the views can use: the study's runs and the opened files.
    let runs = Memo::new(move |_| {
        let mut all: Vec<Run> = study.with(|s| s.as_ref().map(|s| s.runs.clone()).unwrap_or_default());
        entries.with(|es| {
            for e in es {
                if let Some(doc) = &e.document {
                    all.push(study::from_document(e.name.clone(), doc));
                }
            }
        });
        all
    });

    // A memo: views re-render when the view changes, not on every change of the query.
    let view_memo = Memo::new(move |_| param(query, "view", "files"));
    let view = move || view_memo.get();
    let tabs = VIEWS
        .iter()
        .map(|&(key, label)| {
            view! {
                <button
                    type="button"
                    role="tab"
                    id=format!("tab-{key}")
                    data-testid=format!("tab-{key}")
                    aria-selected=move || (view() == key).to_string()
                    on:click=move |_| set_param(query, "view", key)
                >
                    {label}
                </button>
            }
        })
        .collect_view();

    view! {
        <header>
            <h1>"tpv"</h1>
            <p class="tagline">"Task prompt vectors: explore a study, compose prompts, open run files and peft adapters. Nothing leaves your browser."</p>
            {move || ask.get().map(|ask| view! { <Confirm ask on_load on_cancel /> })}
            {move || status.get().map(|s| match s {
                Ok(m) => view! { <p role="status" data-testid="study-status">{m}</p> }.into_any(),
                Err(m) => view! { <p class="error" role="alert" data-testid="study-error">{m}</p> }.into_any(),
            })}
            {move || study.with(|s| s.as_ref().map(|s| {
                let link = |f: &str| study::resolve(f, &s.url).unwrap_or_default();
                view! {
                    <p class="links">
                        <a href=link("results.html")>"Tables"</a>" · "
                        <a href=link("tables.csv")>"tables.csv"</a>" · "
                        <a href=s.url.clone()>"manifest.json"</a>
                    </p>
                }
            }))}
        </header>
        <nav role="tablist" aria-label="Views">{tabs}</nav>
        <main role="tabpanel" aria-labelledby=move || format!("tab-{}", view())>
            {move || match view().as_str() {
                "runs" => view! { <Runs runs query /> }.into_any(),
                "similarity" => view! { <Similarity runs query /> }.into_any(),
                "compose" => view! { <Compose runs query /> }.into_any(),
                "curves" => view! { <Curves runs query /> }.into_any(),
                "evaluate" => view! { <Evaluate runs study query state=eval_state /> }.into_any(),
                _ => view! { <FilePicker entries /> <FileList entries /> }.into_any(),
            }}
        </main>
    }
}
