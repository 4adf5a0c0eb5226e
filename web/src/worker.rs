//! The Evaluate view's model runs in a Web Worker, so the page never freezes. The worker is a second
//! wasm binary (`src/bin/tpv-eval-worker.rs`, built by trunk next to the app as
//! `tpv-eval-worker.js` + `tpv-eval-worker_bg.wasm`), so the page's module carries no model code
//! and the model code is downloaded only when the Evaluate view is used. A small module script
//! imports the worker's glue and instantiates it. It holds one model and answers one batch of
//! examples per message; the page drives the evaluation batch by batch, so progress and
//! cancelling need no shared memory and a cancelled run stops after the batches in flight.
//!
//! The page runs a pool of such workers, one per core up to [`MAX_WORKERS`], each holding its own
//! copy of the model, and gives each idle worker the next batch. This uses the cores on any host:
//! wasm threads would need shared memory, which browsers allow only on cross-origin-isolated pages
//! (COOP/COEP headers a static host cannot send).
//!
//! Messages are typed: [`Request`] (page → worker) and [`Reply`] (worker → page), serde enums
//! tagged by `op`, sent as `{json: "<the message as JSON>"}` with the bulk data beside it as
//! transferred typed arrays (`files` with a load, `prompt` with an evaluation: an ATTEMPT run's module
//! follows its target prompt there). A message that is
//! not one of them (the bootstrap's own `{op: "error", message}`) reads as an error.

use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use tpv_shared::eval::{EncodeOptions, ExampleResult, Scoring};
use tpv_shared::nearest::NearToken;
use tpv_shared::tasks::{Record, TaskSpec};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

/// What the worker says about the model it loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub family: String,
    pub hidden_size: usize,
    pub vocab_size: usize,
    pub chat_template: bool,
    pub load_ms: f64,
}

/// One batch of an evaluation: how to encode it and its records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Batch {
    pub task: TaskSpec,
    pub encode: EncodeOptions,
    pub max_new_tokens: usize,
    /// Generation or rank classification (an eval set's own).
    #[serde(default)]
    pub scoring: Scoring,
    pub records: Vec<Record>,
    /// The prompt's shape [R, d] (R = 0: the model alone).
    pub rows: usize,
    pub cols: usize,
    /// An ATTEMPT run: the transferred `prompt` holds its target prompt's R·d values, then its
    /// module's ([`tpv_shared::attempt::Module::to_flat`]); each example gets its own mixed prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptShape>,
}

/// What an ATTEMPT module is besides its values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptShape {
    pub sources: Vec<String>,
    pub rank: usize,
    pub temperature: f64,
}

impl AttemptShape {
    pub fn of(m: &tpv_shared::attempt::Module) -> Self {
        Self {
            sources: m.source_labels.clone(),
            rank: m.w_down.dim(),
            temperature: m.temperature,
        }
    }
}

/// A message to the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Load a model from files: `names` name the transferred `files` buffers, in order.
    Load { names: Vec<String> },
    /// Evaluate one batch under the transferred `prompt` (none: the model alone).
    Eval { run: u32, index: u32, batch: Box<Batch> },
    /// The `k` vocabulary tokens nearest each row of the transferred `prompt` ([rows, cols]).
    Nearest {
        run: u32,
        rows: usize,
        cols: usize,
        k: usize,
    },
}

/// A message from the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    Ready,
    Loaded(ModelInfo),
    Result {
        run: u32,
        index: u32,
        results: Vec<ExampleResult>,
        ms: f64,
    },
    /// Per virtual token, its nearest vocabulary tokens, best first.
    Nearest {
        run: u32,
        tokens: Vec<Vec<NearToken>>,
    },
    Error {
        run: Option<u32>,
        message: String,
    },
}

/// A typed message on the wire: `{json, …extra}` (the extra parts: transferable typed arrays).
pub fn to_message(message: &impl Serialize, extra: &[(&str, JsValue)]) -> Result<JsValue, String> {
    let json = serde_json::to_string(message).map_err(|e| e.to_string())?;
    let mut pairs = vec![("json", JsValue::from_str(&json))];
    pairs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Ok(object(&pairs))
}

/// The typed message of a `{json, …}` object.
pub fn from_message<T: serde::de::DeserializeOwned>(data: &JsValue) -> Result<T, String> {
    let json = get(data, "json").as_string().ok_or("a message without its JSON part")?;
    serde_json::from_str(&json).map_err(|e| format!("a malformed message: {e}"))
}

/// A property of a message.
pub fn get(obj: &JsValue, key: &str) -> JsValue {
    js_sys::Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// A message: a plain object of `pairs`.
pub fn object(pairs: &[(&str, JsValue)]) -> JsValue {
    let o = js_sys::Object::new();
    for (k, v) in pairs {
        let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), v);
    }
    o.into()
}

fn js_err(e: &JsValue) -> String {
    e.as_string()
        .or_else(|| js_sys::Reflect::get(e, &"message".into()).ok()?.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

// ---------------------------------------------------------------- page side

/// The worker's glue, next to the app's (trunk's dist; a report folder).
const WORKER_GLUE: &str = "tpv-eval-worker.js";

/// Imports the worker's glue and instantiates it (its `main` answers messages from then on).
const BOOTSTRAP: &str = r#"
self.onmessage = async (event) => {
  self.onmessage = null;
  try {
    const glue = await import(event.data.glue);
    await glue.default();
  } catch (e) {
    self.postMessage({ op: "error", message: "the worker could not start: " + e });
  }
};
"#;

#[wasm_bindgen]
extern "C" {
    /// The URL of the app's wasm-bindgen glue (the worker's sits beside it).
    #[wasm_bindgen(thread_local_v2, js_namespace = ["import", "meta"], js_name = url)]
    static GLUE_URL: String;
}

/// One worker of the pool.
struct Slot {
    worker: web_sys::Worker,
    ready: bool,
    /// Messages sent before the worker was ready (it would drop them).
    pending: Vec<(JsValue, js_sys::Array)>,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
    _on_error: Closure<dyn FnMut(web_sys::ErrorEvent)>,
}

/// Where a worker's replies go: its index in the pool and the reply.
type Handler = Rc<dyn Fn(usize, Reply)>;

thread_local! {
    static POOL: RefCell<Vec<Slot>> = const { RefCell::new(Vec::new()) };
    static HANDLER: RefCell<Option<Handler>> = RefCell::new(None);
}

/// The most workers a pool starts: each holds its own copy of the model (SmolLM2-135M: ≈ 0.6 GB
/// as f32), so more cores than this would cost memory for little more speed.
pub const MAX_WORKERS: usize = 4;

/// The pool size the device suggests: one worker per logical core, at most [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    let cores = web_sys::window().map_or(1.0, |w| w.navigator().hardware_concurrency());
    (cores as usize).clamp(1, MAX_WORKERS)
}

/// Where the workers' replies go (the Evaluate view sets it).
pub fn set_handler(f: impl Fn(usize, Reply) + 'static) {
    HANDLER.with(|h| *h.borrow_mut() = Some(Rc::new(f)));
}

fn parse_reply(data: &JsValue) -> Reply {
    from_message(data).unwrap_or_else(|e| {
        // A reply that does not decode still belongs to its run (else the view would take it for
        // a failed model load); the bootstrap's and the error event's own `{op: "error", message}`
        // have none.
        let run = get(data, "json")
            .as_string()
            .and_then(|j| serde_json::from_str::<serde_json::Value>(&j).ok())
            .and_then(|v| v.get("run")?.as_u64())
            .and_then(|r| u32::try_from(r).ok());
        Reply::Error {
            run,
            message: get(data, "message").as_string().unwrap_or(e),
        }
    })
}

fn on_reply(slot: usize, data: JsValue) {
    let reply = parse_reply(&data);
    if matches!(reply, Reply::Ready) {
        POOL.with(|p| {
            if let Some(s) = p.borrow_mut().get_mut(slot) {
                s.ready = true;
                for (msg, transfer) in s.pending.drain(..) {
                    let _ = s.worker.post_message_with_transfer(&msg, &transfer);
                }
            }
        });
    }
    let handler = HANDLER.with(|h| h.borrow().clone());
    if let Some(h) = handler {
        h(slot, reply);
    }
}

fn spawn(slot: usize) -> Result<Slot, String> {
    let parts = js_sys::Array::of1(&JsValue::from_str(BOOTSTRAP));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("text/javascript");
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts).map_err(|e| js_err(&e))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| js_err(&e))?;
    let options = web_sys::WorkerOptions::new();
    options.set_type(web_sys::WorkerType::Module);
    options.set_name(&format!("tpv-eval-{slot}"));
    let worker = web_sys::Worker::new_with_options(&url, &options).map_err(|e| js_err(&e))?;
    let _ = web_sys::Url::revoke_object_url(&url);
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
        on_reply(slot, ev.data());
    });
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let on_error = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |ev: web_sys::ErrorEvent| {
        on_reply(
            slot,
            object(&[
                ("op", "error".into()),
                ("message", format!("the worker failed: {}", ev.message()).into()),
            ]),
        );
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    let glue = GLUE_URL.with(|base| web_sys::Url::new_with_base(WORKER_GLUE, base).map(|u| u.href()));
    let glue = glue.map_err(|e| js_err(&e))?;
    worker
        .post_message(&object(&[("glue", glue.into())]))
        .map_err(|e| js_err(&e))?;
    Ok(Slot {
        worker,
        ready: false,
        pending: Vec::new(),
        _on_message: on_message,
        _on_error: on_error,
    })
}

/// Sends a message to worker `slot` of the pool, transferring `transfer`'s buffers.
fn send(slot: usize, msg: JsValue, transfer: js_sys::Array) -> Result<(), String> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let Some(s) = p.get_mut(slot) else {
            return Err(format!("no worker {slot}: load a model first"));
        };
        if s.ready {
            s.worker
                .post_message_with_transfer(&msg, &transfer)
                .map_err(|e| js_err(&e))
        } else {
            s.pending.push((msg, transfer));
            Ok(())
        }
    })
}

/// Stops the workers (and the models they hold); the next load starts fresh ones.
pub fn terminate() {
    POOL.with(|p| {
        for s in p.borrow_mut().drain(..) {
            s.worker.terminate();
        }
    });
}

/// How many workers the pool holds.
pub fn workers() -> usize {
    POOL.with(|p| p.borrow().len())
}

/// Loads a model from its files (name, bytes) in each of `workers` workers (the pool is started,
/// or restarted at that size); each replies `Loaded` or `Error`.
pub fn load_model(files: Vec<(String, Vec<u8>)>, workers: usize) -> Result<(), String> {
    let workers = workers.clamp(1, MAX_WORKERS);
    if self::workers() != workers {
        terminate();
        let slots = (0..workers).map(spawn).collect::<Result<Vec<_>, _>>()?;
        POOL.with(|p| *p.borrow_mut() = slots);
    }
    let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
    for slot in 0..workers {
        // Each worker gets its own copy of the bytes (a transferred buffer is gone from the page).
        let buffers = js_sys::Array::new();
        for (_, bytes) in &files {
            buffers.push(&js_sys::Uint8Array::from(bytes.as_slice()).buffer());
        }
        let msg = to_message(
            &Request::Load { names: names.clone() },
            &[("files", buffers.clone().into())],
        )?;
        send(slot, msg, buffers)?;
    }
    Ok(())
}

/// Evaluates one batch in worker `slot`; the reply is `Result` or `Error` with the same run.
pub fn eval_batch(slot: usize, run: u32, index: u32, batch: &Batch, prompt: &[f32]) -> Result<(), String> {
    let values = js_sys::Float32Array::from(prompt);
    let transfer = js_sys::Array::of1(&values.buffer());
    let request = Request::Eval {
        run,
        index,
        batch: Box::new(batch.clone()),
    };
    let msg = to_message(&request, &[("prompt", values.into())])?;
    send(slot, msg, transfer)
}

/// Asks the first worker for the `k` tokens nearest each virtual token of `prompt` ([rows, cols]); the
/// reply is `Nearest` or `Error` with the same run.
pub fn nearest(run: u32, prompt: &[f32], rows: usize, cols: usize, k: usize) -> Result<(), String> {
    let values = js_sys::Float32Array::from(prompt);
    let transfer = js_sys::Array::of1(&values.buffer());
    let msg = to_message(&Request::Nearest { run, rows, cols, k }, &[("prompt", values.into())])?;
    send(0, msg, transfer)
}
