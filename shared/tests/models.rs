//! The soft-prompt forward passes against HF transformers + peft on tiny random models.
//!
//! `tests/fixtures/models/*/expected.json` come from `tests/reference/model_fixtures.py` (torch
//! 2.15.0, transformers 5.24.0, peft 0.21.2, float32, eager attention, dropout 0). In short, per
//! example (LLaMA):
//!
//! ```python
//! peft_model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3))
//! emb[:3] = prompt
//! res = peft_model(input_ids=ids, attention_mask=ones, labels=[-100]*len(input) + answer)
//! res.loss.backward();  grad = emb.grad[:3];  logits = res.logits[0, 3:]
//! greedy = full recomputation with model(inputs_embeds=cat(prompt, embed(ids)))  # docs/method.md §8
//! ```
//! and for T5 the same with `TaskType.SEQ_2_SEQ_LM`, `labels=target`, `peft_model.generate(...)`.
//! Tolerances (issue 3): logits 1e-4 absolute, loss 1e-5 relative, gradient 1e-4 absolute.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use tpv_shared::merge::SplitMix64;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::{Model, from_safetensors};
use tpv_shared::model::t5::{self, T5, Train};
use tpv_shared::model::{DType, Device};

#[path = "common/reference.rs"]
mod reference;
use reference::{assert_max_abs, assert_rel, floats, ids, prompt_var};

fn fixture(name: &str) -> (Model, Value) {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name);
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let model = from_safetensors(&config, &[weights], DType::F32, &Device::Cpu).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    (model, expected)
}

fn llama_case(name: &str) {
    let (model, expected) = fixture(name);
    let model = model.downcast_ref::<Decoder>().expect("a decoder-only model");
    let d = model.hidden_size();
    let prompt = prompt_var(&expected, d);
    let mut batch = Vec::new();
    let mut singles = Vec::new();
    for ex in expected["examples"].as_array().unwrap() {
        let (input, answer) = (ids(&ex["input_ids"]), ids(&ex["answer_ids"]));
        let example = Example::answer(&input, &answer);
        let out = causal::loss(model, prompt.as_tensor(), std::slice::from_ref(&example)).unwrap();
        let loss: f32 = out.loss.to_scalar().unwrap();
        assert_rel(loss, ex["loss"].as_f64().unwrap(), 1e-5, "loss");
        let grads = out.loss.backward().unwrap();
        assert_max_abs(
            grads.get(prompt.as_tensor()).unwrap(),
            &floats(&ex["grad"]),
            1e-4,
            "gradient",
        );

        let all: Vec<u32> = [input.clone(), answer.clone()].concat();
        let logits = causal::sequence_logits(model, prompt.as_tensor(), &all).unwrap();
        assert_max_abs(&logits, &floats(&ex["logits"]), 1e-4, "logits");

        let whole = causal::loss(model, prompt.as_tensor(), &[Example::whole(&all)]).unwrap();
        assert_rel(
            whole.loss.to_scalar().unwrap(),
            ex["whole_sequence_loss"].as_f64().unwrap(),
            1e-5,
            "whole-sequence loss",
        );

        let want = ids(&ex["greedy"]);
        let cached = causal::greedy(model, prompt.as_tensor(), std::slice::from_ref(&input), want.len(), &[]).unwrap();
        assert_eq!(cached[0], want, "greedy tokens");
        let recomputed = causal::greedy_recompute(model, prompt.as_tensor(), &input, want.len(), &[]).unwrap();
        assert_eq!(recomputed, want, "greedy by recomputation");
        singles.push((loss, want));
        batch.push(example);
    }

    // The padded batch: mean over all target tokens, and every example as computed alone.
    let out = causal::loss(model, prompt.as_tensor(), &batch).unwrap();
    assert_rel(
        out.loss.to_scalar().unwrap(),
        expected["batch"]["loss"].as_f64().unwrap(),
        1e-5,
        "batch loss",
    );
    let grads = out.loss.backward().unwrap();
    assert_max_abs(
        grads.get(prompt.as_tensor()).unwrap(),
        &floats(&expected["batch"]["grad"]),
        1e-4,
        "batch gradient",
    );
    for (got, (want, _)) in out.per_example().unwrap().iter().zip(&singles) {
        assert_rel(*got, f64::from(*want), 1e-5, "padded example loss = single");
    }
    // Gradient checkpointing (layers recomputed in the backward pass): the same loss, per-example
    // losses and gradient as the plain backward pass, for any scale of the loss.
    let plain: Vec<f32> = grads
        .get(prompt.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rows = vec![prompt.as_tensor(); batch.len()];
    for scale in [1.0, 0.25] {
        let (ck, ck_grads) = causal::loss_grad_checkpointed(model, &rows, &batch, scale).unwrap();
        assert_eq!(
            ck.loss.to_scalar::<f32>().unwrap(),
            out.loss.to_scalar::<f32>().unwrap(),
            "checkpointed loss"
        );
        assert_eq!(
            ck.per_example().unwrap(),
            out.per_example().unwrap(),
            "checkpointed per-example losses"
        );
        assert_eq!(ck.counts, out.counts);
        let want: Vec<f32> = plain.iter().map(|g| g * scale as f32).collect();
        assert_max_abs(
            ck_grads.get(prompt.as_tensor()).unwrap(),
            &want,
            0.0,
            "checkpointed gradient = plain gradient",
        );
    }
    let inputs: Vec<Vec<u32>> = expected["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| ids(&e["input_ids"]))
        .collect();
    let greedy = causal::greedy(model, prompt.as_tensor(), &inputs, 6, &[]).unwrap();
    for (got, (_, want)) in greedy.iter().zip(&singles) {
        assert_eq!(got, want, "batched greedy = single");
    }
}

#[test]
fn llama_gqa_llama3_rope_matches_hf() {
    llama_case("llama_gqa_rope3");
}

#[test]
fn llama_tied_head_old_style_config_matches_hf() {
    llama_case("llama_tied");
}

// The other decoder families (`tests/reference/family_fixtures.py`, the same three examples,
// prompt and checks; each fixture's config.json as the family's hub files write it).

#[test]
fn qwen2_qkv_biases_match_hf() {
    llama_case("qwen2_bias");
}

#[test]
fn qwen3_qk_norms_head_dim_and_tied_head_match_hf() {
    llama_case("qwen3_qknorm_tied");
}

#[test]
fn mistral_sliding_window_matches_hf() {
    llama_case("mistral_window");
}

#[test]
fn phi3_fused_projections_and_window_match_hf() {
    llama_case("phi3_fused");
}

#[test]
fn gemma2_softcapping_windows_and_sandwich_norms_match_hf() {
    llama_case("gemma2_softcap");
}

#[test]
fn gemma3_text_local_and_global_rope_and_qk_norms_match_hf() {
    llama_case("gemma3_text");
}

fn t5_case(name: &str) {
    let (model, expected) = fixture(name);
    let model = model.downcast_ref::<T5>().expect("a t5");
    let prompt = prompt_var(&expected, model.hidden_size());
    let mut batch = Vec::new();
    let mut singles = Vec::new();
    for ex in expected["examples"].as_array().unwrap() {
        let example = t5::Example {
            input: ids(&ex["input_ids"]),
            target: ids(&ex["labels"]),
        };
        let out = t5::loss(model, prompt.as_tensor(), std::slice::from_ref(&example), None).unwrap();
        let loss: f32 = out.loss.to_scalar().unwrap();
        assert_rel(loss, ex["loss"].as_f64().unwrap(), 1e-5, "loss");
        assert_max_abs(&out.logits, &floats(&ex["logits"]), 1e-4, "logits");
        let grads = out.loss.backward().unwrap();
        assert_max_abs(
            grads.get(prompt.as_tensor()).unwrap(),
            &floats(&ex["grad"]),
            1e-4,
            "gradient",
        );

        // HF's output starts with the decoder start token and ends with EOS when it stopped.
        let mut want = ids(&ex["greedy"])[1..].to_vec();
        if want.last() == Some(&1) {
            want.pop();
        }
        let got = t5::greedy(model, prompt.as_tensor(), std::slice::from_ref(&example.input), 6).unwrap();
        assert_eq!(got[0], want, "greedy tokens");
        let recomputed = t5::greedy_recompute(model, prompt.as_tensor(), &example.input, 6).unwrap();
        assert_eq!(recomputed, want, "greedy by recomputation");
        singles.push((loss, want));
        batch.push(example);
    }
    let out = t5::loss(model, prompt.as_tensor(), &batch, None).unwrap();
    assert_rel(
        out.loss.to_scalar().unwrap(),
        expected["batch"]["loss"].as_f64().unwrap(),
        1e-5,
        "batch loss",
    );
    let grads = out.loss.backward().unwrap();
    assert_max_abs(
        grads.get(prompt.as_tensor()).unwrap(),
        &floats(&expected["batch"]["grad"]),
        1e-4,
        "batch gradient",
    );
    for (got, (want, _)) in out.per_example().unwrap().iter().zip(&singles) {
        assert_rel(*got, f64::from(*want), 1e-5, "padded example loss = single");
    }
    let inputs: Vec<Vec<u32>> = batch.iter().map(|e| e.input.clone()).collect();
    let greedy = t5::greedy(model, prompt.as_tensor(), &inputs, 6).unwrap();
    for (got, (_, want)) in greedy.iter().zip(&singles) {
        assert_eq!(got, want, "batched greedy = single");
    }

    // Training mode: dropout (the config's 0.1) changes the loss, reproducibly for a seed.
    let train_loss = |seed| {
        let mut rng = SplitMix64::new(seed);
        let out = t5::loss(
            model,
            prompt.as_tensor(),
            &batch,
            Some(Train {
                dropout: 0.1,
                rng: &mut rng,
            }),
        )
        .unwrap();
        out.loss.to_scalar::<f32>().unwrap()
    };
    assert_eq!(train_loss(3), train_loss(3));
    assert_ne!(train_loss(3), train_loss(4));
}

#[test]
fn t5_relu_tied_matches_hf() {
    t5_case("t5_relu_tied");
}

#[test]
fn t5_gated_gelu_untied_matches_hf() {
    t5_case("t5_gated_untied");
}

#[test]
fn a_config_without_rope_theta_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_tied");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    config.as_object_mut().unwrap().remove("rope_theta");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let err = from_safetensors(&config.to_string(), &[weights], DType::F32, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("rope_theta"), "{err}");
}
