//! Shared by `tests/models.rs`, `tests/gguf.rs` and `tests/wasm.rs`: reading a fixture's
//! expected.json (transformers + peft's numbers, `tests/reference/*_fixtures.py`) and comparing a
//! model with it at the tolerances of issue 3 (logits and gradients 1e-4 absolute, losses 1e-5
//! relative).
#![allow(clippy::unwrap_used, dead_code)]

use serde_json::Value;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::{Device, Tensor, Var};

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// expected.json's prompt ([virtual_tokens, d]) as a variable.
pub fn prompt_var(expected: &Value, d: usize) -> Var {
    let r = expected["virtual_tokens"].as_u64().unwrap() as usize;
    Var::from_tensor(&Tensor::from_vec(floats(&expected["prompt"]), (r, d), &Device::Cpu).unwrap()).unwrap()
}

#[track_caller]
pub fn assert_max_abs(got: &Tensor, want: &[f32], tol: f32, what: &str) {
    let got: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: max abs diff {worst} > {tol}");
}

#[track_caller]
pub fn assert_rel(got: f32, want: f64, tol: f64, what: &str) {
    let rel = (f64::from(got) - want).abs() / want.abs().max(1e-12);
    assert!(rel <= tol, "{what}: {got} vs {want} (relative {rel:e})");
}

/// A decoder-only model against its expected.json: per example the answer's loss, the prompt's
/// gradient, the logits and the greedy tokens; then the padded batch's loss and gradient.
#[track_caller]
pub fn assert_decoder_matches_hf(model: &Decoder, expected: &Value) {
    let prompt = prompt_var(expected, model.hidden_size());
    let mut batch = Vec::new();
    for (i, ex) in expected["examples"].as_array().unwrap().iter().enumerate() {
        let input = ids(&ex["input_ids"]);
        let example = Example::answer(&input, &ids(&ex["answer_ids"]));
        let out = causal::loss(model, prompt.as_tensor(), std::slice::from_ref(&example)).unwrap();
        let loss: f32 = out.loss.to_scalar().unwrap();
        assert_rel(loss, ex["loss"].as_f64().unwrap(), 1e-5, &format!("example {i}: loss"));
        let grads = out.loss.backward().unwrap();
        let grad = grads.get(prompt.as_tensor()).unwrap();
        assert_max_abs(grad, &floats(&ex["grad"]), 1e-4, &format!("example {i}: gradient"));
        let logits = causal::sequence_logits(model, prompt.as_tensor(), &example.ids).unwrap();
        assert_max_abs(&logits, &floats(&ex["logits"]), 1e-4, &format!("example {i}: logits"));
        let want = ids(&ex["greedy"]);
        let greedy = causal::greedy(model, prompt.as_tensor(), std::slice::from_ref(&input), want.len(), &[]).unwrap();
        assert_eq!(greedy[0], want, "example {i}: greedy tokens");
        batch.push(example);
    }
    let out = causal::loss(model, prompt.as_tensor(), &batch).unwrap();
    let want = &expected["batch"];
    assert_rel(
        out.loss.to_scalar().unwrap(),
        want["loss"].as_f64().unwrap(),
        1e-5,
        "batch loss",
    );
    let grads = out.loss.backward().unwrap();
    assert_max_abs(
        grads.get(prompt.as_tensor()).unwrap(),
        &floats(&want["grad"]),
        1e-4,
        "batch gradient",
    );
}
