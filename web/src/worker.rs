//! The Evaluate view's model runs in a Web Worker, so the page never freezes. The worker is a second
//! wasm binary (`src/bin/tpv-eval-worker.rs`, built by trunk next to the app as
//! `tpv-eval-worker.js` + `tpv-eval-worker_bg.wasm`), so the page's module carries no model code
//! and the model code is downloaded only when the Evaluate view is used. A small module script
//! imports the worker's glue and instantiates it. It holds one model and answers one batch of
//! examples per message; the page drives the evaluation batch by batch, so progress and
//! cancelling need no shared memory and a cancelled run stops after the batch in flight.
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

struct Client {
    worker: web_sys::Worker,
    ready: bool,
    /// Messages sent before the worker was ready (it would drop them).
    pending: Vec<(JsValue, js_sys::Array)>,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
}

type Handler = Rc<dyn Fn(Reply)>;

thread_local! {
    static CLIENT: RefCell<Option<Client>> = const { RefCell::new(None) };
    static HANDLER: RefCell<Option<Handler>> = RefCell::new(None);
}

/// Where the worker's replies go (the Evaluate view sets it).
pub fn set_handler(f: impl Fn(Reply) + 'static) {
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

fn on_reply(data: JsValue) {
    let reply = parse_reply(&data);
    if matches!(reply, Reply::Ready) {
        CLIENT.with(|c| {
            if let Some(c) = c.borrow_mut().as_mut() {
                c.ready = true;
                for (msg, transfer) in c.pending.drain(..) {
                    let _ = c.worker.post_message_with_transfer(&msg, &transfer);
                }
            }
        });
    }
    let handler = HANDLER.with(|h| h.borrow().clone());
    if let Some(h) = handler {
        h(reply);
    }
}

fn spawn() -> Result<Client, String> {
    let parts = js_sys::Array::of1(&JsValue::from_str(BOOTSTRAP));
    let opts = web_sys::BlobPropertyBag::new();
    opts.set_type("text/javascript");
    let blob = web_sys::Blob::new_with_str_sequence_and_options(&parts, &opts).map_err(|e| js_err(&e))?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(|e| js_err(&e))?;
    let options = web_sys::WorkerOptions::new();
    options.set_type(web_sys::WorkerType::Module);
    options.set_name("tpv-eval");
    let worker = web_sys::Worker::new_with_options(&url, &options).map_err(|e| js_err(&e))?;
    let _ = web_sys::Url::revoke_object_url(&url);
    let on_message =
        Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| on_reply(ev.data()));
    worker.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    let on_error = Closure::<dyn FnMut(web_sys::ErrorEvent)>::new(move |ev: web_sys::ErrorEvent| {
        on_reply(object(&[
            ("op", "error".into()),
            ("message", format!("the worker failed: {}", ev.message()).into()),
        ]));
    });
    worker.set_onerror(Some(on_error.as_ref().unchecked_ref()));
    on_error.forget();
    let glue = GLUE_URL.with(|base| web_sys::Url::new_with_base(WORKER_GLUE, base).map(|u| u.href()));
    let glue = glue.map_err(|e| js_err(&e))?;
    worker
        .post_message(&object(&[("glue", glue.into())]))
        .map_err(|e| js_err(&e))?;
    Ok(Client {
        worker,
        ready: false,
        pending: Vec::new(),
        _on_message: on_message,
    })
}

/// Sends a message to the worker (started on first use), transferring `transfer`'s buffers.
fn send(msg: JsValue, transfer: js_sys::Array) -> Result<(), String> {
    CLIENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = Some(spawn()?);
        }
        let Some(client) = c.as_mut() else {
            return Err("the worker did not start".to_owned());
        };
        if client.ready {
            client
                .worker
                .post_message_with_transfer(&msg, &transfer)
                .map_err(|e| js_err(&e))
        } else {
            client.pending.push((msg, transfer));
            Ok(())
        }
    })
}

/// Stops the worker (and the model it holds); the next message starts a fresh one.
pub fn terminate() {
    CLIENT.with(|c| {
        if let Some(client) = c.borrow_mut().take() {
            client.worker.terminate();
        }
    });
}

/// Loads a model from its files (name, bytes) in the worker; the reply is `Loaded` or `Error`.
pub fn load_model(files: Vec<(String, Vec<u8>)>) -> Result<(), String> {
    let mut name_list = Vec::new();
    let buffers = js_sys::Array::new();
    for (name, bytes) in files {
        name_list.push(name);
        buffers.push(&js_sys::Uint8Array::from(bytes.as_slice()).buffer());
    }
    let msg = to_message(
        &Request::Load { names: name_list },
        &[("files", buffers.clone().into())],
    )?;
    send(msg, buffers)
}

/// Evaluates one batch in the worker; the reply is `Result` or `Error` with the same run.
pub fn eval_batch(run: u32, index: u32, batch: &Batch, prompt: &[f32]) -> Result<(), String> {
    let values = js_sys::Float32Array::from(prompt);
    let transfer = js_sys::Array::of1(&values.buffer());
    let request = Request::Eval {
        run,
        index,
        batch: Box::new(batch.clone()),
    };
    let msg = to_message(&request, &[("prompt", values.into())])?;
    send(msg, transfer)
}

/// Asks the worker for the `k` tokens nearest each virtual token of `prompt` ([rows, cols]); the
/// reply is `Nearest` or `Error` with the same run.
pub fn nearest(run: u32, prompt: &[f32], rows: usize, cols: usize, k: usize) -> Result<(), String> {
    let values = js_sys::Float32Array::from(prompt);
    let transfer = js_sys::Array::of1(&values.buffer());
    let msg = to_message(&Request::Nearest { run, rows, cols, k }, &[("prompt", values.into())])?;
    send(msg, transfer)
}
