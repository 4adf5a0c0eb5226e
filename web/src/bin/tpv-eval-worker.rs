//! The Evaluate view's worker (a second wasm binary, built by trunk as `data-type="worker"`, so the
//! page's own module stays free of the model code): holds one model and answers one batch of
//! examples per message with `tpv_shared::eval`, the code of `tpv eval`. The protocol and the
//! page's side are in `tpv_web::worker`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use candle_core::{DType, Device, Tensor};
use tpv_shared::eval::Loaded;
use tpv_web::worker::{Batch, ModelInfo, Reply, Request, from_message, get, to_message};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// The worker's state: the model it holds (and its embedding matrix as f32, once asked for).
#[derive(Default)]
struct State {
    model: Option<Loaded>,
    embeddings: Option<Vec<f32>>,
}

/// Runs when the worker instantiates this module (wasm-bindgen's start): answers messages.
fn main() {
    console_error_panic_hook::set_once();
    let scope: web_sys::DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let state = Rc::new(RefCell::new(State::default()));
    let post_scope = scope.clone();
    let on_message = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
        let reply = handle(&state, &ev.data());
        if let Err(e) = post_scope.post_message(&reply) {
            web_sys::console::error_1(&e);
        }
    });
    scope.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    on_message.forget();
    if let Ok(ready) = to_message(&Reply::Ready, &[]) {
        let _ = scope.post_message(&ready);
    }
}

fn handle(state: &Rc<RefCell<State>>, data: &JsValue) -> JsValue {
    let (run, reply) = match from_message::<Request>(data) {
        Ok(Request::Load { names }) => (None, load(state, names, data)),
        Ok(Request::Eval { run, index, batch }) => (Some(run), eval(state, run, index, &batch, data)),
        Ok(Request::Nearest { run, rows, cols, k }) => (Some(run), nearest(state, run, (rows, cols), k, data)),
        Err(e) => (None, Err(e)),
    };
    let reply = reply.unwrap_or_else(|message| Reply::Error { run, message });
    to_message(&reply, &[]).unwrap_or_else(|e| JsValue::from_str(&e))
}

fn load(state: &Rc<RefCell<State>>, names: Vec<String>, data: &JsValue) -> Result<Reply, String> {
    let start = now_ms();
    let buffers = js_sys::Array::from(&get(data, "files"));
    if buffers.length() as usize != names.len() {
        return Err(format!("{} file names for {} files", names.len(), buffers.length()));
    }
    let mut files = BTreeMap::new();
    for (name, buf) in names.into_iter().zip(buffers.iter()) {
        files.insert(name, js_sys::Uint8Array::new(&buf).to_vec());
    }
    // Free the previous model before building the next one.
    state.borrow_mut().model = None;
    state.borrow_mut().embeddings = None;
    let loaded = Loaded::from_files(&files, DType::F32, &Device::Cpu).map_err(|e| e.to_string())?;
    drop(files);
    let (family, vocab_size) = (loaded.model.family(), loaded.model.embeddings().dim(0).unwrap_or(0));
    let info = ModelInfo {
        family: family.into(),
        hidden_size: loaded.model.hidden_size(),
        vocab_size,
        chat_template: loaded.codec.chat_template().is_some(),
        load_ms: now_ms() - start,
    };
    state.borrow_mut().model = Some(loaded);
    Ok(Reply::Loaded(info))
}

fn eval(state: &Rc<RefCell<State>>, run: u32, index: u32, batch: &Batch, data: &JsValue) -> Result<Reply, String> {
    let start = now_ms();
    let state = state.borrow();
    let loaded = state.model.as_ref().ok_or("no model is loaded")?;
    let d = loaded.model.hidden_size();
    if batch.rows > 0 && batch.cols != d {
        return Err(format!(
            "the prompt has token dim {}, the model's hidden size is {d}",
            batch.cols
        ));
    }
    let mut values = prompt_values(data)?;
    let module = match &batch.attempt {
        Some(a) => {
            let n = batch.rows.saturating_mul(batch.cols);
            if values.len() < n {
                return Err(format!(
                    "the prompt has {} values for shape {}×{}",
                    values.len(),
                    batch.rows,
                    batch.cols
                ));
            }
            let flat = values.split_off(n);
            let m = tpv_shared::attempt::Module::from_flat(
                a.sources.clone(),
                a.rank,
                a.temperature,
                (batch.rows, batch.cols),
                &flat,
            )
            .map_err(|e| format!("the ATTEMPT module: {e}"))?;
            Some(m)
        }
        None => None,
    };
    check_len(&values, batch.rows, batch.cols)?;
    let encoded = batch
        .records
        .iter()
        .map(|r| loaded.encode(&batch.task, r, &batch.encode))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let scorer = loaded
        .scorer(&batch.task, batch.scoring, batch.max_new_tokens, true)
        .map_err(|e| e.to_string())?;
    let results = match module {
        // Each example under its own mixed prompt (`tpv eval` on an ATTEMPT run).
        Some(m) => {
            let target = tpv_shared::PromptTensor::new(batch.rows, batch.cols, values).map_err(|e| e.to_string())?;
            let refs: Vec<_> = encoded.iter().collect();
            tpv_shared::attempt::evaluate(loaded, &target, &m, &refs, &scorer, refs.len())
                .map_err(|e| e.to_string())?
                .0
        }
        None => {
            let theta = Tensor::from_vec(values, (batch.rows, d), &Device::Cpu).map_err(|e| e.to_string())?;
            let rows: Vec<_> = encoded.iter().map(|e| (&theta, e)).collect();
            loaded.evaluate_rows(&rows, &scorer).map_err(|e| e.to_string())?
        }
    };
    Ok(Reply::Result {
        run,
        index,
        results,
        ms: now_ms() - start,
    })
}

/// The transferred values of a message's prompt.
fn prompt_values(data: &JsValue) -> Result<Vec<f32>, String> {
    Ok(match get(data, "prompt") {
        v if v.is_undefined() || v.is_null() => Vec::new(),
        v => js_sys::Float32Array::new(&v).to_vec(),
    })
}

/// Checks a prompt's values against the shape the message claims.
fn check_len(values: &[f32], rows: usize, cols: usize) -> Result<(), String> {
    if rows.checked_mul(cols) != Some(values.len()) {
        return Err(format!(
            "the prompt has {} values for shape {rows}×{cols}",
            values.len()
        ));
    }
    Ok(())
}

/// The nearest vocabulary tokens of each virtual token (`tpv_shared::nearest`, as `tpv inspect
/// --nearest-tokens`).
fn nearest(
    state: &Rc<RefCell<State>>,
    run: u32,
    (rows, cols): (usize, usize),
    k: usize,
    data: &JsValue,
) -> Result<Reply, String> {
    let values = prompt_values(data)?;
    check_len(&values, rows, cols)?;
    let prompt = tpv_shared::PromptTensor::new(rows, cols, values).map_err(|e| e.to_string())?;
    let mut state = state.borrow_mut();
    let State { model, embeddings } = &mut *state;
    let loaded = model.as_ref().ok_or("no model is loaded")?;
    if cols != loaded.model.hidden_size() {
        return Err(format!(
            "the prompt has token dim {cols}, the model's hidden size is {}",
            loaded.model.hidden_size()
        ));
    }
    if embeddings.is_none() {
        let e = loaded
            .model
            .embeddings()
            .to_dtype(DType::F32)
            .and_then(|e| e.flatten_all());
        *embeddings = Some(
            e.and_then(|e| tpv_shared::model::host::vec1(&e))
                .map_err(|e| e.to_string())?,
        );
    }
    let emb = embeddings.as_deref().unwrap_or_default();
    let tokens = tpv_shared::nearest::readable(&prompt, emb, k, &loaded.codec).map_err(|e| e.to_string())?;
    Ok(Reply::Nearest { run, tokens })
}
