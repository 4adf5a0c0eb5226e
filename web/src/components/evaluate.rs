//! Evaluate: a model (files or URL) in a Web Worker, a prompt (a run, the Compose view's result,
//! or none), examples (a task's bundled test examples, or pasted `{"input", "target"}` lines);
//! accuracy and the task's metrics, a confusion matrix and each example's prediction and loss,
//! with progress and cancel. The worker runs `tpv_shared::eval`, the code of `tpv eval`. "Nearest
//! tokens" reads the chosen prompt: the model's vocabulary tokens nearest each virtual token
//! (`tpv_shared::nearest`, as `tpv inspect --nearest-tokens`).
//!
//! Query: `view=evaluate&model=URL&prompt=RUN|@compose&examples=TASK|@paste&n=50&batch=8&workers=N`.

use leptos::prelude::*;
use leptos::task::spawn_local;
use tpv_shared::eval::{self, CONFUSION_MAX_CLASSES, Confusion, EvalSet, ExampleResult, ReportModel, hf_files};
use tpv_shared::nearest::NearToken;
use tpv_shared::records;
use tpv_shared::report::ExampleSet;
use tpv_shared::tasks::{Record, Style, TaskSpec};
use web_sys::HtmlInputElement;

use super::compose::composition;
use crate::origin::{self, Ask, Confirm};
use crate::study::{self, Run, Study};
use crate::worker::{self, Batch, ModelInfo, Reply};
use crate::{Query, param, set_param};

/// The model the worker holds.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelState {
    None,
    Loading(String),
    Loaded { info: ModelInfo, source: String },
    Failed(String),
}

/// An evaluation: what it runs and what came back so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    pub run: u32,
    pub label: String,
    pub task: TaskSpec,
    pub records: Vec<Record>,
    pub refs: Vec<String>,
    /// The results so far, by example index (the pool's workers answer out of order).
    pub results: Vec<(usize, ExampleResult)>,
    /// Examples per batch (batch `i` starts at example `i · batch`).
    pub batch: usize,
    pub running: bool,
    pub cancelled: bool,
    pub error: Option<String>,
    pub started_ms: f64,
    pub elapsed_ms: f64,
    /// Time the workers spent computing, summed (without messaging and waiting).
    pub compute_ms: f64,
    /// How many workers ran it.
    pub workers: usize,
}

impl Progress {
    /// The results so far in example order, with their references.
    fn in_order(&self) -> (Vec<usize>, Vec<ExampleResult>, Vec<String>) {
        let index = self.results.iter().map(|(i, _)| *i).collect();
        let results = self.results.iter().map(|(_, r)| r.clone()).collect();
        let refs = self
            .results
            .iter()
            .map(|(i, _)| self.refs.get(*i).cloned().unwrap_or_default())
            .collect();
        (index, results, refs)
    }
}

/// "1 worker", "3 workers".
fn workers_text(n: usize) -> String {
    if n == 1 {
        "1 worker".to_owned()
    } else {
        format!("{n} workers")
    }
}

/// How many vocabulary tokens "Nearest tokens" lists per virtual token.
const NEAREST_K: usize = 5;

/// A prompt read as its nearest vocabulary tokens: asked for (`result` None) or answered.
#[derive(Debug, Clone, PartialEq)]
pub struct NearestView {
    pub run: u32,
    pub label: String,
    pub result: Option<Result<Vec<Vec<NearToken>>, String>>,
}

/// Batches still to send, and the prompt they use.
#[derive(Debug, Clone, Default)]
struct Pending {
    run: u32,
    batches: Vec<Batch>,
    next: usize,
    prompt: Vec<f32>,
}

/// The Evaluate view's state; it lives in the app, so an evaluation goes on while another view
/// is shown.
#[derive(Clone, Copy)]
pub struct EvalState {
    model: RwSignal<ModelState>,
    progress: RwSignal<Option<Progress>>,
    sets: RwSignal<Vec<(String, Result<EvalSet, String>)>>,
    /// The pasted examples (kept while other views are shown).
    pasted: RwSignal<String>,
    pending: StoredValue<Pending>,
    next_run: StoredValue<u32>,
    nearest: RwSignal<Option<NearestView>>,
    /// The pool size the next load starts (the query's `workers`, else one per core).
    workers: StoredValue<usize>,
    /// A load in progress: the workers yet to answer, and the slowest load time so far.
    loading: StoredValue<(usize, f64)>,
    /// A model on another site, waiting for the user's yes (nothing is fetched from it before).
    ask: RwSignal<Option<Ask>>,
}

impl EvalState {
    /// Creates the state and routes the worker's replies to it.
    pub fn new() -> Self {
        let s = Self {
            model: RwSignal::new(ModelState::None),
            progress: RwSignal::new(None),
            sets: RwSignal::new(Vec::new()),
            pasted: RwSignal::new(String::new()),
            pending: StoredValue::new(Pending::default()),
            next_run: StoredValue::new(1),
            nearest: RwSignal::new(None),
            workers: StoredValue::new(worker::default_workers()),
            loading: StoredValue::new((0, 0.0)),
            ask: RwSignal::new(None),
        };
        worker::set_handler(move |slot, reply| s.on_reply(slot, reply));
        s
    }

    fn on_reply(self, slot: usize, reply: Reply) {
        match reply {
            Reply::Ready => {}
            Reply::Loaded(info) => {
                // Loaded once every worker of the pool is; the time is the slowest one's.
                let (left, ms) = self.loading.get_value();
                let (left, ms) = (left.saturating_sub(1), ms.max(info.load_ms));
                self.loading.set_value((left, ms));
                if left == 0 {
                    self.model.update(|m| {
                        let source = match m {
                            ModelState::Loading(s) => s.clone(),
                            _ => String::new(),
                        };
                        let info = ModelInfo { load_ms: ms, ..info };
                        *m = ModelState::Loaded { info, source };
                    });
                }
            }
            Reply::Result {
                run,
                index,
                results,
                ms,
            } => {
                let mut finished = false;
                self.progress.update(|p| {
                    let Some(p) = p.as_mut().filter(|p| p.run == run && p.running) else {
                        return;
                    };
                    let first = index as usize * p.batch;
                    p.results
                        .extend(results.into_iter().enumerate().map(|(j, r)| (first + j, r)));
                    p.results.sort_by_key(|(i, _)| *i);
                    p.compute_ms += ms;
                    p.elapsed_ms = now_ms() - p.started_ms;
                    finished = p.cancelled || p.results.len() >= p.records.len();
                    if finished {
                        p.running = false;
                    }
                });
                if !finished {
                    self.send_next(run, slot);
                }
            }
            Reply::Nearest { run, tokens } => self.answer_nearest(run, Ok(tokens)),
            Reply::Error {
                run: Some(run),
                message,
            } => {
                self.answer_nearest(run, Err(message.clone()));
                // An evaluation's batch failed (a stale run's reply is dropped).
                self.progress.update(|p| {
                    if let Some(p) = p.as_mut().filter(|p| p.run == run) {
                        p.running = false;
                        p.error = Some(message);
                    }
                });
            }
            Reply::Error { run: None, message } => {
                // Loading failed, or the worker itself did: a running evaluation cannot finish.
                self.progress.update(|p| {
                    if let Some(p) = p.as_mut().filter(|p| p.running) {
                        p.running = false;
                        p.error = Some(message.clone());
                    }
                });
                self.model.set(ModelState::Failed(message));
            }
        }
    }

    /// The worker's answer to a "Nearest tokens" request (a stale one is dropped).
    fn answer_nearest(self, run: u32, result: Result<Vec<Vec<NearToken>>, String>) {
        self.nearest.update(|n| {
            if let Some(n) = n.as_mut().filter(|n| n.run == run) {
                n.result = Some(result);
            }
        });
    }

    /// "Nearest tokens": reads the view's chosen prompt in the loaded model's vocabulary.
    fn read_prompt(self, runs: &[Run], query: Query, task: &str) -> Result<(), String> {
        if !self.model.with_untracked(|m| matches!(m, ModelState::Loaded { .. })) {
            return Err("Load a model first: the tokens are its vocabulary's.".into());
        }
        let chosen = chosen_prompt(runs, query, task)?.ok_or("Choose a prompt to read.")?;
        self.ask_nearest(chosen);
        Ok(())
    }

    /// Asks the worker for the vocabulary tokens nearest each virtual token of `chosen`.
    fn ask_nearest(self, chosen: Chosen) {
        let run = self.next_run.get_value();
        self.next_run.set_value(run + 1);
        self.nearest.set(Some(NearestView {
            run,
            label: chosen.label,
            result: None,
        }));
        // An ATTEMPT run's target prompt (its module follows in `values`).
        let n = chosen.shape[0] * chosen.shape[1];
        let values = &chosen.values[..n.min(chosen.values.len())];
        if let Err(e) = worker::nearest(run, values, chosen.shape[0], chosen.shape[1], NEAREST_K) {
            self.answer_nearest(run, Err(e));
        }
    }

    /// Starts an evaluation: every worker of the pool gets a batch, and each answer brings its
    /// worker the next one.
    fn begin(self, batches: Vec<Batch>, prompt: Vec<f32>, progress: Progress) {
        let run = self.next_run.get_value();
        self.next_run.set_value(run + 1);
        self.pending.set_value(Pending {
            run,
            batches,
            next: 0,
            prompt,
        });
        let workers = worker::workers().max(1);
        self.progress.set(Some(Progress {
            run,
            workers,
            ..progress
        }));
        for slot in 0..workers {
            self.send_next(run, slot);
        }
    }

    /// Gives worker `slot` the run's next batch, if any is left.
    fn send_next(self, run: u32, slot: usize) {
        let next = self.pending.try_update_value(|p| {
            if p.run != run || p.next >= p.batches.len() {
                return None;
            }
            p.next += 1;
            Some((p.next - 1, p.batches[p.next - 1].clone(), p.prompt.clone()))
        });
        if let Some(Some((index, batch, prompt))) = next
            && let Err(e) = worker::eval_batch(slot, run, index as u32, &batch, &prompt)
        {
            self.progress.update(|p| {
                if let Some(p) = p.as_mut() {
                    p.running = false;
                    p.error = Some(e);
                }
            });
        }
    }

    fn load_files(self, source: String, files: Vec<(String, Vec<u8>)>) {
        self.model.set(ModelState::Loading(source));
        let workers = self.workers.get_value();
        self.loading.set_value((workers, 0.0));
        if let Err(e) = worker::load_model(files, workers) {
            self.model.set(ModelState::Failed(e));
        }
    }

    /// Loads the model at `url` when it is on the page's site or a confirmed one, or the user
    /// `typed` it (their own entry confirms its origin); a model on another site is asked about
    /// first (`by`: who asks), and a URL that is not http(s) is refused with a message.
    fn request_url(self, url: String, by: &'static str, typed: bool) {
        self.ask.set(None);
        match origin::classify(&url) {
            Err(e) => self.model.set(ModelState::Failed(e)),
            Ok(origin::Place::Foreign { origin, .. }) if typed => {
                origin::confirm(&origin);
                self.load_url(url);
            }
            Ok(place) => match Ask::of(&url, place, by, "a model") {
                None => self.load_url(url),
                Some(a) => self.ask.set(Some(a)),
            },
        }
    }

    /// Fetches a model from `url` (a `.gguf` file, or a directory with config.json,
    /// model.safetensors or its shards, tokenizer.json and tokenizer_config.json) into the worker.
    fn load_url(self, url: String) {
        self.model.set(ModelState::Loading(url.clone()));
        spawn_local(async move {
            match fetch_model(&url).await {
                Ok(files) => self.load_files(url, files),
                Err(e) => self.model.set(ModelState::Failed(e)),
            }
        });
    }

    fn cancel(self) {
        self.progress.update(|p| {
            if let Some(p) = p.as_mut()
                && p.running
            {
                p.cancelled = true;
            }
        });
    }
}

impl Default for EvalState {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> f64 {
    js_sys::Date::now()
}

async fn fetch_model(url: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
    let abs = study::resolve(url, &study::page_url())?;
    let path = abs.split(['?', '#']).next().unwrap_or(&abs);
    if path.ends_with(".gguf") {
        let name = path.rsplit('/').next().unwrap_or("model.gguf").to_owned();
        return Ok(vec![(name, study::fetch_bytes(&abs).await?)]);
    }
    let base = if abs.ends_with('/') {
        abs.clone()
    } else {
        format!("{abs}/")
    };
    let get = |name: &str| {
        let u = study::resolve(name, &base);
        async move { study::fetch_bytes(&u?).await }
    };
    // The folder's files as `tpv_shared::eval::hf_files` describes them (fetched: whether the
    // single weights file exists is known by asking for it).
    let mut files = vec![
        (hf_files::CONFIG.to_owned(), get(hf_files::CONFIG).await?),
        (hf_files::TOKENIZER.to_owned(), get(hf_files::TOKENIZER).await?),
    ];
    if let Ok(b) = get(hf_files::TOKENIZER_CONFIG).await {
        files.push((hf_files::TOKENIZER_CONFIG.into(), b));
    }
    match get(hf_files::WEIGHTS).await {
        Ok(b) => files.push((hf_files::WEIGHTS.into(), b)),
        Err(single) => {
            let index = get(hf_files::INDEX)
                .await
                .map_err(|e| format!("{single}; and no shard index: {e}"))?;
            let shards = eval::shard_files(&String::from_utf8_lossy(&index)).map_err(|e| e.to_string())?;
            files.push((hf_files::INDEX.into(), index));
            for s in shards {
                let bytes = get(&s).await?;
                files.push((s, bytes));
            }
        }
    }
    Ok(files)
}

/// Loads the URL field's model: the user's own entry loads from any http(s) site; a URL that came
/// with the link or the study, from another site, is asked about first.
fn model_loader(
    state: EvalState,
    query: Query,
    typed: RwSignal<Option<String>>,
    study_model: Memo<Option<ReportModel>>,
) -> Callback<String> {
    Callback::new(move |url: String| {
        let by_user = typed.with_untracked(|t| t.as_deref() == Some(url.as_str()));
        let from_study = study_model.with_untracked(|m| m.as_ref().is_some_and(|m| m.url == url));
        let by = if from_study { "The study" } else { "This link" };
        set_param(query, "model", url.clone());
        state.request_url(url, by, by_user);
    })
}

/// Pasted examples: one JSON object per line with `input` and `target`, parsed by the same code
/// as `tpv eval`'s JSONL files (`tpv_shared::records`).
fn parse_pasted(text: &str) -> Result<Vec<Record>, String> {
    records::parse_jsonl_requiring(text, &["input", "target"]).map_err(|e| e.to_string())
}

/// The prompt an evaluation uses (an ATTEMPT run: its target prompt's values, then its module's).
struct Chosen {
    label: String,
    values: Vec<f32>,
    shape: [usize; 2],
    attempt: Option<worker::AttemptShape>,
}

/// A prompt for the query's `prompt`: a run (a prompt, not a vector), the composition, or none.
/// The prompt an empty choice means: the first-origin prompt-tuning run of the examples' task.
fn default_prompt<'a>(runs: &'a [Run], task: &str) -> Option<&'a Run> {
    runs.iter()
        .filter(|r| r.experiment == "prompt_tuning" && r.tasks.iter().any(|t| t == task))
        .min_by_key(|r| r.origin.unwrap_or(usize::MAX))
}

fn chosen_prompt(runs: &[Run], query: Query, task: &str) -> Result<Option<Chosen>, String> {
    let id = param(query, "prompt", "");
    if id == "@none" {
        return Ok(None);
    }
    let prompt = if id.is_empty() {
        match default_prompt(runs, task) {
            Some(r) => r.prompt.clone(),
            None => return Ok(None),
        }
    } else if id == "@compose" {
        composition(runs, query)?
            .map(|(p, _)| p)
            .ok_or("the Compose view has no result yet")?
    } else {
        runs.iter()
            .find(|r| r.id == id)
            .map(|r| r.prompt.clone())
            .ok_or_else(|| format!("no run {id:?}"))?
    };
    if let Some(m) = &prompt.attempt {
        // The target prompt, then the module: the worker mixes a prompt per example.
        let mut values = prompt.values.as_slice().to_vec();
        values.extend(m.to_flat());
        return Ok(Some(Chosen {
            label: prompt.label(),
            values,
            shape: prompt.shape(),
            attempt: Some(worker::AttemptShape::of(m)),
        }));
    }
    if !prompt.kind().is_prompt() {
        return Err(format!(
            "{} is a task prompt vector; apply it to an origin first (Compose)",
            prompt.label()
        ));
    }
    Ok(Some(Chosen {
        label: prompt.label(),
        values: prompt.values.as_slice().to_vec(),
        shape: prompt.shape(),
        attempt: None,
    }))
}

/// What an evaluation runs, from the view's choices: its batches, the prompt's values, and the
/// progress record it starts with (`run` is set by the caller).
fn plan(
    runs: &[Run],
    query: Query,
    choice: &str,
    pasted: &str,
    sets: &[(String, Result<EvalSet, String>)],
    hidden: usize,
) -> Result<(Vec<Batch>, Vec<f32>, Progress), String> {
    let prompt = chosen_prompt(runs, query, choice)?;
    let mut set = if choice == "@paste" {
        let max_new = param(query, "max_new", "16").parse::<usize>().unwrap_or(16);
        let recs = parse_pasted(pasted)?;
        if recs.is_empty() {
            return Err("paste at least one example".to_owned());
        }
        eval::plain_set(recs, param(query, "chat", "1") == "1", max_new)
    } else {
        sets.iter()
            .find(|(t, _)| t == choice)
            .map(|(_, s)| s.clone())
            .unwrap_or_else(|| Err("choose examples".to_owned()))?
    };
    let n = param(query, "n", "50").parse::<usize>().unwrap_or(50).max(1);
    let batch_size = param(query, "batch", "8").parse::<usize>().unwrap_or(8).max(1);
    set.records.truncate(n);
    let refs = set.targets().map_err(|e| e.to_string())?;
    let Chosen {
        label,
        values,
        shape: [rows, cols],
        attempt,
    } = prompt.unwrap_or_else(|| Chosen {
        label: "the model alone".into(),
        values: Vec::new(),
        shape: [0, hidden],
        attempt: None,
    });
    let batches: Vec<Batch> = set
        .records
        .chunks(batch_size)
        .map(|c| Batch {
            task: set.task.clone(),
            encode: set.encode.clone(),
            max_new_tokens: set.max_new_tokens,
            scoring: set.scoring,
            records: c.to_vec(),
            rows,
            cols,
            attempt: attempt.clone(),
        })
        .collect();
    let progress = Progress {
        run: 0,
        label: format!("{label} on {} ({} examples)", set.name, set.records.len()),
        task: set.task.clone(),
        records: set.records,
        refs,
        results: Vec::new(),
        batch: batch_size,
        running: true,
        cancelled: false,
        error: None,
        started_ms: now_ms(),
        elapsed_ms: 0.0,
        compute_ms: 0.0,
        workers: 1,
    };
    Ok((batches, values, progress))
}

/// The bundled examples the query chooses, fetched once; the first set is the default choice.
fn fetch_examples(state: EvalState, query: Query, example_sets: Memo<Vec<ExampleSet>>) {
    // The chosen bundled set, fetched once.
    Effect::new(move |_| {
        let task = param(query, "examples", "");
        if task.is_empty() || task.starts_with('@') {
            return;
        }
        let Some(set) = example_sets.with(|s| s.iter().find(|e| e.task == task).cloned()) else {
            return;
        };
        if state.sets.with_untracked(|s| s.iter().any(|(t, _)| *t == task)) {
            return;
        }
        spawn_local(async move {
            let got = study::fetch_bytes(&set.file)
                .await
                .and_then(|b| EvalSet::from_json(&b).map_err(|e| format!("{}: {e}", set.file)));
            state.sets.update(|s| s.push((task, got)));
        });
    });
    // The default choice: the first bundled set.
    Effect::new(move |_| {
        if param(query, "examples", "").is_empty()
            && let Some(first) = example_sets.with(|s| s.first().map(|e| e.task.clone()))
        {
            set_param(query, "examples", first);
        }
    });
}

/// The prompts a run can be evaluated with: (run id, label) of every prompt and ATTEMPT run (not
/// vectors).
fn prompt_options(runs: &[Run]) -> Vec<(String, String)> {
    runs.iter()
        .filter(|r| r.prompt.kind().is_prompt() || r.prompt.attempt.is_some())
        .map(|r| (r.id.clone(), r.option_label()))
        .collect::<Vec<_>>()
}

/// The examples chosen: a bundled task, or pasted ones (the only choice without a study).
fn choice_of(query: Query, example_sets: Memo<Vec<ExampleSet>>) -> String {
    let c = param(query, "examples", "");
    if c.is_empty() && example_sets.with(Vec::is_empty) {
        "@paste".to_owned()
    } else {
        c
    }
}

#[component]
pub fn Evaluate(runs: Memo<Vec<Run>>, study: RwSignal<Option<Study>>, query: Query, state: EvalState) -> impl IntoView {
    let message = RwSignal::new(None::<String>);
    let pasted = state.pasted;
    let url_input = RwSignal::new(param(query, "model", ""));
    // What the user typed into the URL field: consent to load from its site.
    let typed = RwSignal::new(None::<String>);

    // `workers=N` sizes the pool the next load starts.
    if let Ok(n) = param(query, "workers", "").parse::<usize>() {
        state.workers.set_value(n.clamp(1, worker::MAX_WORKERS));
    }
    // Open with ?model=URL: load it unless the worker already holds it (another site's: once
    // the user says so).
    {
        let url = param(query, "model", "");
        let have = state.model.with_untracked(|m| match m {
            ModelState::Loaded { source, .. } | ModelState::Loading(source) => source.clone(),
            _ => String::new(),
        });
        if !url.is_empty() && url != have {
            state.request_url(url, "This link", false);
        }
    }

    let example_sets = Memo::new(move |_| study.with(|s| s.as_ref().map(|s| s.examples.clone()).unwrap_or_default()));
    // The examples chosen: a bundled task, or pasted ones (the only choice without a study).
    let choice = move || choice_of(query, example_sets);
    fetch_examples(state, query, example_sets);

    let prompt_options = Memo::new(move |_| runs.with(|rs| prompt_options(rs)));

    // The report's own model: the URL field starts with it, and Evaluate loads it first.
    let study_model = Memo::new(move |_| study.with(|s| s.as_ref().and_then(|s| s.model.clone())));
    Effect::new(move |_| {
        if let Some(m) = study_model.get()
            && url_input.get_untracked().is_empty()
        {
            url_input.set(m.url);
        }
    });
    let start_after_load = RwSignal::new(false);
    let load = model_loader(state, query, typed, study_model);
    let on_cancel = Callback::new(move |()| {
        state.ask.set(None);
        start_after_load.set(false);
        set_param(query, "model", "");
    });
    let on_load = Callback::new(move |url: String| state.request_url(url, "", false));

    let start = move || {
        message.set(None);
        let hidden = match state.model.get_untracked() {
            ModelState::Loaded { info, .. } => info.hidden_size,
            ModelState::Loading(_) => {
                start_after_load.set(true);
                return;
            }
            _ => {
                let url = url_input.get_untracked();
                if url.is_empty() {
                    message.set(Some("Load a model first.".into()));
                } else {
                    // One click: load the model in the URL field, then evaluate.
                    start_after_load.set(true);
                    load.run(url);
                }
                return;
            }
        };
        let planned = runs.with_untracked(|rs| {
            state
                .sets
                .with_untracked(|sets| plan(rs, query, &choice(), &pasted.get_untracked(), sets, hidden))
        });
        let (batches, values, progress) = match planned {
            Ok(p) => p,
            Err(e) => {
                message.set(Some(e));
                return;
            }
        };
        state.begin(batches, values, progress);
    };

    Effect::new(move |_| {
        let loaded = state.model.with(|m| matches!(m, ModelState::Loaded { .. }));
        let failed = state.model.with(|m| matches!(m, ModelState::Failed(_)));
        if failed {
            start_after_load.set(false);
        } else if loaded && start_after_load.get_untracked() {
            start_after_load.set(false);
            start();
        }
    });

    let running = move || state.progress.with(|p| p.as_ref().is_some_and(|p| p.running));

    let show_nearest = move || message.set(runs.with_untracked(|rs| state.read_prompt(rs, query, &choice()).err()));

    view! {
        <section class="evaluate">
            <h2>"Evaluate"</h2>
            {move || state.ask.get().map(|ask| view! { <Confirm ask on_load on_cancel /> })}
            <ModelSource state query study url_input typed load study_model />
            <Choices state query example_sets prompt_options pasted />
            <p>
                <button type="button" data-testid="eval-run" disabled=running on:click=move |_| start()>"Evaluate"</button>
                " "
                <button type="button" data-testid="eval-cancel" disabled=move || !running() on:click=move |_| state.cancel()>"Cancel"</button>
                " "
                <button type="button" data-testid="eval-nearest" title="The model's vocabulary tokens nearest each virtual token of the prompt (cosine)" on:click=move |_| show_nearest()>"Nearest tokens"</button>
            </p>
            {move || message.get().map(|m| view! { <p class="error" role="alert" data-testid="eval-error">{m}</p> })}
            {move || state.nearest.get().map(|n| view! { <Nearest n /> })}
            {move || state.progress.get().map(|p| view! { <Results p /> })}
        </section>
    }
}

/// A prompt read as vocabulary tokens: per virtual token, the nearest ones with their cosine.
#[component]
fn Nearest(n: NearestView) -> impl IntoView {
    let body = match n.result {
        None => view! { <p role="status">"Reading the prompt…"</p> }.into_any(),
        Some(Err(e)) => view! { <p class="error" role="alert" data-testid="nearest-error">{e}</p> }.into_any(),
        Some(Ok(rows)) => view! {
            <table class="nearest">
                <thead><tr><th scope="col">"virtual token"</th><th scope="col">"nearest vocabulary tokens (cosine)"</th></tr></thead>
                <tbody>
                    {rows.into_iter().enumerate().map(|(i, row)| view! {
                        <tr data-testid="nearest-row">
                            <th scope="row">{i}</th>
                            <td>{row.into_iter().map(|t| view! {
                                <span class="near" data-testid="near-token" data-token=t.token data-cosine=t.cosine>
                                    <code>{t.text}</code>" "{format!("{:.3}", t.cosine)}
                                </span>" "
                            }).collect_view()}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        }
        .into_any(),
    };
    view! {
        <section data-testid="nearest">
            <h3>"Nearest tokens of " {n.label}</h3>
            {body}
        </section>
    }
}

/// Where the model comes from: a URL (the report's own model by default) or files.
#[component]
fn ModelSource(
    state: EvalState,
    query: Query,
    study: RwSignal<Option<Study>>,
    url_input: RwSignal<String>,
    typed: RwSignal<Option<String>>,
    load: Callback<String>,
    study_model: Memo<Option<ReportModel>>,
) -> impl IntoView {
    let on_files = move |ev: leptos::ev::Event| {
        let input: HtmlInputElement = event_target(&ev);
        let Some(list) = input.files() else { return };
        let files: Vec<web_sys::File> = (0..list.length()).filter_map(|i| list.get(i)).collect();
        input.set_value("");
        if files.is_empty() {
            return;
        }
        let source = files.iter().map(web_sys::File::name).collect::<Vec<_>>().join(", ");
        state.model.set(ModelState::Loading(source.clone()));
        spawn_local(async move {
            let mut read = Vec::new();
            for f in files {
                match wasm_bindgen_futures::JsFuture::from(f.array_buffer()).await {
                    Ok(buf) => read.push((f.name(), js_sys::Uint8Array::new(&buf).to_vec())),
                    Err(e) => {
                        state.model.set(ModelState::Failed(format!(
                            "the browser could not read {}: {e:?}",
                            f.name()
                        )));
                        return;
                    }
                }
            }
            set_param(query, "model", "");
            state.load_files(source, read);
        });
    };

    view! {
    <fieldset>
        <legend>"Model"</legend>
        <label>"URL (a .gguf file or a folder with config.json, model.safetensors, tokenizer.json) "
            <input type="url" data-testid="model-url" size="48" prop:value=move || url_input.get()
                on:input=move |ev| {
                    let value = event_target_value(&ev);
                    typed.set(Some(value.clone()));
                    url_input.set(value);
                } />
        </label>
        " "
        <button type="button" data-testid="model-load" on:click=move |_| {
            let url = url_input.get_untracked();
            if !url.is_empty() {
                load.run(url);
            }
        }>"Load"</button>
        <br />
        <label>"…or open its files "
            <input type="file" multiple data-testid="model-files" accept=".gguf,.json,.safetensors" on:change=on_files />
        </label>
        <br />
        <label title="Each worker holds its own copy of the model and evaluates its own batches; the number applies at the next load">
            "Workers "
            <input type="number" min="1" max=worker::MAX_WORKERS.to_string() data-testid="model-workers"
                prop:value=move || state.workers.get_value().to_string()
                on:change=move |ev| {
                    if let Ok(n) = event_target_value(&ev).parse::<usize>() {
                        let n = n.clamp(1, worker::MAX_WORKERS);
                        state.workers.set_value(n);
                        set_param(query, "workers", n.to_string());
                    }
                } />
        </label>
        {move || match state.model.get() {
            ModelState::None => view! { <p class="hint">"No model loaded. The model runs in a background worker; nothing leaves your browser."</p> }.into_any(),
            ModelState::Loading(s) => view! { <p role="status" data-testid="model-status">{format!("Loading {s}…")}</p> }.into_any(),
            ModelState::Failed(e) => view! { <p class="error" role="alert" data-testid="model-error">{e}</p> }.into_any(),
            ModelState::Loaded { info, source } => view! {
                <p role="status" data-testid="model-status" data-loaded="true">
                    {format!("Loaded {source}: {} (hidden size {}, vocabulary {}{}) in {:.0} ms, in {}",
                        info.family, info.hidden_size, info.vocab_size,
                        if info.chat_template { ", chat template" } else { "" }, info.load_ms,
                        workers_text(worker::workers()))}
                </p>
            }.into_any(),
        }}
        {move || study.with(|s| s.as_ref().and_then(|s| s.runs.iter().find_map(|r| r.model.clone())).map(|m| view! {
            <p class="hint">"The study's runs were trained on " <code>{m}</code> "."</p>
        }))}
        {move || study_model.get().map(|m| view! {
            <p class="hint" data-testid="report-model">{if m.bundled {
                format!("This report carries the model ({}, {:.0} MB): Evaluate loads it.", m.name, m.bytes.unwrap_or(0) as f64 / 1e6)
            } else {
                format!("The study's model ({}) is linked from its hub page: Evaluate downloads it into your browser.", m.name)
            }}</p>
        })}
    </fieldset>
    }
}

/// The prompt, the examples (a bundled task's or pasted ones) and how many, in batches of what.
#[component]
fn Choices(
    state: EvalState,
    query: Query,
    example_sets: Memo<Vec<ExampleSet>>,
    prompt_options: Memo<Vec<(String, String)>>,
    pasted: RwSignal<String>,
) -> impl IntoView {
    let choice = move || choice_of(query, example_sets);
    view! {
    <fieldset>
        <legend>"Prompt and examples"</legend>
        <label>"Prompt "
            <select data-testid="eval-prompt" on:change=move |ev| set_param(query, "prompt", event_target_value(&ev))>
                <option value="" selected=move || param(query, "prompt", "").is_empty()>"the tuned prompt of the examples' task (first origin)"</option>
                <option value="@none" selected=move || param(query, "prompt", "") == "@none">"none (the model alone)"</option>
                <option value="@compose" selected=move || param(query, "prompt", "") == "@compose">"the Compose view's result"</option>
                {move || prompt_options.get().into_iter().map(|(id, label)| {
                    let key = id.clone();
                    view! { <option value=id selected=move || param(query, "prompt", "") == key>{label}</option> }
                }).collect_view()}
            </select>
        </label>
        " "
        <label>"Examples "
            <select data-testid="eval-examples" on:change=move |ev| set_param(query, "examples", event_target_value(&ev))>
                {move || example_sets.get().into_iter().map(|e| {
                    let key = e.task.clone();
                    view! { <option value=e.task.clone() selected=move || param(query, "examples", "") == key>
                        {format!("{} — {} of {} {} examples", e.task, e.records, e.split_size, e.split)}</option> }
                }).collect_view()}
                <option value="@paste" selected=move || choice() == "@paste">"pasted examples"</option>
            </select>
        </label>
        " "
        <label>"first "
            <input type="number" min="1" step="1" data-testid="eval-n" prop:value=move || param(query, "n", "50")
                on:input=move |ev| set_param(query, "n", event_target_value(&ev)) />
        </label>
        " "
        <label>"batch "
            <input type="number" min="1" step="1" data-testid="eval-batch" prop:value=move || param(query, "batch", "8")
                on:input=move |ev| set_param(query, "batch", event_target_value(&ev)) />
        </label>
        <Show when=move || choice() == "@paste">
            <label class="block">"One JSON object per line: " <code>"{\"input\": …, \"target\": …}"</code>
                <textarea data-testid="eval-paste" rows="5" cols="80" prop:value=move || pasted.get()
                    on:input=move |ev| pasted.set(event_target_value(&ev))></textarea>
            </label>
            <label><input type="checkbox" prop:checked=move || param(query, "chat", "1") == "1"
                on:change=move |ev| set_param(query, "chat", if event_target_checked(&ev) { "1" } else { "0" }) />
                " chat template (chat models)"</label>
            " "
            <label>"new tokens "
                <input type="number" min="1" step="1" prop:value=move || param(query, "max_new", "16")
                    on:input=move |ev| set_param(query, "max_new", event_target_value(&ev)) />
            </label>
        </Show>
        {move || {
            let task = param(query, "examples", "");
            state.sets.with(|s| s.iter().find(|(t, _)| *t == task).and_then(|(_, r)| r.as_ref().err().cloned()))
                .map(|e| view! { <p class="error" role="alert">{e}</p> })
        }}
    </fieldset>
    }
}

#[component]
fn Results(p: Progress) -> impl IntoView {
    let done = p.results.len();
    let total = p.records.len();
    let secs = p.elapsed_ms / 1000.0;
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let (index, results, refs) = p.in_order();
    let summary = eval::summarize(&p.task, &results, &refs);
    let preds: Vec<String> = results.iter().map(|r| r.prediction.clone()).collect();
    let confusion = Confusion::new(&p.task.labels, &preds, &refs);
    let workers = workers_text(p.workers);
    let status = if p.error.is_some() {
        format!("Failed after {done} of {total} examples:")
    } else if p.running && p.cancelled {
        format!("Cancelling after the batch in flight… ({done} of {total})")
    } else if p.running {
        format!("{done} of {total} examples…")
    } else if p.cancelled {
        format!("Cancelled after {done} of {total} examples")
    } else {
        format!("Done: {total} examples")
    };
    let accuracy = summary.metrics.get("exact_match").copied().unwrap_or(0.0);
    let metrics: Vec<(String, f64)> = summary.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let k = confusion.classes.len();
    view! {
        <div class="eval-results" data-testid="eval-results" data-done=done.to_string() data-total=total.to_string()
            data-running=p.running.to_string()>
            <p><strong>{p.label.clone()}</strong></p>
            <p role="status" data-testid="eval-status">
                <progress max=total.to_string() value=done.to_string()></progress>
                " " {status} {p.error.clone().map(|e| view! { " " <span class="error">{e}</span> })}
                " · " <span data-testid="eval-speed" data-value=rate.to_string()>
                    {format!("{rate:.2} examples/s ({:.1} s; {workers} {:.1} s)", secs, p.compute_ms / 1000.0)}</span>
            </p>
            <Show when=move || { done > 0 }>
                <table class="metrics">
                    <caption>{format!("Scores over the {done} examples evaluated")}</caption>
                    <tbody>
                        <tr><th scope="row">"accuracy (exact match)"</th>
                            <td data-testid="eval-accuracy" data-value=accuracy.to_string()>{format!("{:.2}%", 100.0 * accuracy)}</td></tr>
                        {metrics.iter().filter(|(m, _)| m != "exact_match").map(|(m, v)| view! {
                            <tr><th scope="row">{m.clone()}</th><td data-testid="eval-metric" data-metric=m.clone() data-value=v.to_string()>{format!("{v:.4}")}</td></tr>
                        }).collect_view()}
                        <tr><th scope="row">"loss (mean NLL per target token)"</th>
                            <td data-testid="eval-loss" data-value=summary.loss.to_string()>{format!("{:.4}", summary.loss)}</td></tr>
                    </tbody>
                </table>
            </Show>
            {confusion.omitted.map(|n| view! {
                <p class="note" data-testid="confusion-omitted">{format!(
                    "No confusion matrix: {n} distinct targets (it is drawn for at most {CONFUSION_MAX_CLASSES} classes)"
                )}</p>
            })}
            <Show when=move || { done > 0 && k > 0 }>
                <table class="confusion" data-testid="confusion">
                    <caption>"Confusion matrix: rows are targets, columns predictions"</caption>
                    <thead><tr><th scope="col">"target \\ prediction"</th>
                        {confusion.classes.iter().map(|c| view! { <th scope="col">{c.clone()}</th> }).collect_view()}
                        <th scope="col">"other"</th></tr></thead>
                    <tbody>
                        {confusion.classes.iter().zip(&confusion.counts).map(|(row, counts)| {
                            let cols = confusion.classes.iter().cloned().chain(std::iter::once("other".to_owned()));
                            view! {
                                <tr><th scope="row">{row.clone()}</th>
                                    {cols.zip(counts).enumerate().map(|(j, (col, n))| view! {
                                        <td data-testid="confusion-cell" data-row=row.clone() data-col=col
                                            class:diagonal=j < k && confusion.classes[j] == *row
                                            data-value=n.to_string()>{n.to_string()}</td>
                                    }).collect_view()}
                                </tr>
                            }
                        }).collect_view()}
                    </tbody>
                </table>
            </Show>
            <table class="examples">
                <caption>"Examples"</caption>
                <thead><tr><th scope="col">"#"</th><th scope="col">"input"</th><th scope="col">"target"</th>
                    <th scope="col">"prediction"</th><th scope="col">"loss"</th></tr></thead>
                <tbody>
                    {index.iter().zip(&results).zip(&refs).map(|((&i, r), target)| {
                        let input = p.records.get(i).and_then(|rec| p.task.render(rec, Style::T5).ok()).unwrap_or_default();
                        let ok = tpv_shared::metrics::normalize_label(&r.prediction) == tpv_shared::metrics::normalize_label(target);
                        view! {
                            <tr data-testid="eval-example" data-index=i.to_string() data-prediction=r.prediction.clone()
                                data-target=target.clone() data-loss=r.loss.to_string() class:correct=ok class:wrong=!ok>
                                <td>{(i + 1).to_string()}</td>
                                <td class="input">{input}</td>
                                <td>{target.clone()}</td>
                                <td>{r.prediction.clone()} {if ok { " ✓" } else { " ✗" }}</td>
                                <td>{format!("{:.4}", r.loss)}</td>
                            </tr>
                        }
                    }).collect_view()}
                </tbody>
            </table>
        </div>
    }
}
