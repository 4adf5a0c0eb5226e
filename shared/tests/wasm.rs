//! The forward passes compiled to wasm32 and run in headless Chromium, checked against the same
//! HF reference numbers and tolerances as the native tests (`tests/models.rs`):
//!
//!     CHROMEDRIVER=/usr/bin/chromedriver cargo test -p tpv-shared --target wasm32-unknown-unknown --test wasm
#![cfg(target_arch = "wasm32")]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/reference.rs"]
mod reference;
#[path = "common/similarity_bits.rs"]
mod similarity_bits;
use reference::{assert_decoder_matches_hf, assert_max_abs, assert_rel, floats, ids, prompt_var};

use serde_json::Value;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::load::from_safetensors;
use tpv_shared::model::t5::{self, T5};
use tpv_shared::model::{DType, Device, Tensor, Var};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// A decoder-only fixture (config.json, model.safetensors, expected.json) against HF
/// ([`reference::assert_decoder_matches_hf`]).
fn decoder_case(config: &str, weights: &[u8], expected: &str) {
    let expected: Value = serde_json::from_str(expected).unwrap();
    let model = from_safetensors(config, &[weights], DType::F32, &Device::Cpu).unwrap();
    assert_decoder_matches_hf(
        model.downcast_ref::<Decoder>().expect("a decoder-only model"),
        &expected,
    );
}

/// `decoder_case` on `tests/fixtures/models/NAME`.
macro_rules! decoder_fixture {
    ($name:literal) => {
        decoder_case(
            include_str!(concat!("../../tests/fixtures/models/", $name, "/config.json")),
            include_bytes!(concat!("../../tests/fixtures/models/", $name, "/model.safetensors")),
            include_str!(concat!("../../tests/fixtures/models/", $name, "/expected.json")),
        )
    };
}

#[wasm_bindgen_test]
fn llama_in_the_browser_matches_hf() {
    decoder_fixture!("llama_gqa_rope3");
}

/// Every newer family's code in the browser (windows, soft-capping, fused projections, q/k
/// norms, the fused GeGLU) against the same reference values.
#[wasm_bindgen_test]
fn the_other_decoder_families_in_the_browser_match_hf() {
    decoder_fixture!("qwen2_bias");
    decoder_fixture!("qwen3_qknorm_tied");
    decoder_fixture!("mistral_window");
    decoder_fixture!("phi3_fused");
    decoder_fixture!("gemma2_softcap");
    decoder_fixture!("gemma3_text");
}

#[wasm_bindgen_test]
fn t5_in_the_browser_matches_hf() {
    let config = include_str!("../../tests/fixtures/models/t5_gated_untied/config.json");
    let weights = include_bytes!("../../tests/fixtures/models/t5_gated_untied/model.safetensors").to_vec();
    let expected: Value = serde_json::from_str(include_str!(
        "../../tests/fixtures/models/t5_gated_untied/expected.json"
    ))
    .unwrap();
    let model = from_safetensors(config, &[weights], DType::F32, &Device::Cpu).unwrap();
    let model = model.downcast_ref::<T5>().expect("a t5");
    let p = prompt_var(&expected, model.hidden_size());
    for ex in expected["examples"].as_array().unwrap() {
        let example = t5::Example {
            input: ids(&ex["input_ids"]),
            target: ids(&ex["labels"]),
        };
        let out = t5::loss(model, p.as_tensor(), std::slice::from_ref(&example), None).unwrap();
        assert_rel(
            out.loss.to_scalar().unwrap(),
            ex["loss"].as_f64().unwrap(),
            1e-5,
            "loss",
        );
        assert_max_abs(&out.logits, &floats(&ex["logits"]), 1e-4, "logits");
        let grads = out.loss.backward().unwrap();
        assert_max_abs(
            grads.get(p.as_tensor()).unwrap(),
            &floats(&ex["grad"]),
            1e-4,
            "gradient",
        );
        let mut want = ids(&ex["greedy"])[1..].to_vec();
        if want.last() == Some(&1) {
            want.pop();
        }
        assert_eq!(
            t5::greedy(model, p.as_tensor(), &[example.input.clone()], 6).unwrap()[0],
            want
        );
    }
}

/// Not a check of speed (nothing here is timed against a bound): the across-origins view of 60
/// prompts of 100 × 768 (12 tasks × 5 origins, the size of a T5 study's heatmap), computed in the
/// browser, with the time it took printed for the notes. The view is checked for its shape and
/// symmetry.
#[wasm_bindgen_test]
fn a_matrix_gives_each_pair_the_bits_of_its_own_similarity() {
    similarity_bits::assert_matrix_bits_equal_pairs();
}

#[wasm_bindgen_test]
fn across_origins_of_60_prompts() {
    use tpv_shared::merge::SplitMix64;
    use tpv_shared::similarity::{Labelled, Measure, across_origins};
    use tpv_shared::tensor::PromptTensor;
    let mut rng = SplitMix64::new(7);
    let tensors: Vec<PromptTensor> = (0..60)
        .map(|_| PromptTensor::new(100, 768, (0..100 * 768).map(|_| rng.next_f64() as f32 - 0.5).collect()).unwrap())
        .collect();
    let items: Vec<Labelled<'_>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| Labelled {
            task: format!("task{}", i / 5),
            origin: format!("origin{}", i % 5),
            values: t,
        })
        .collect();
    for measure in [Measure::CosineMean, Measure::CosineFlat] {
        let start = web_time::Instant::now();
        let view = across_origins(&items, measure).unwrap();
        let ms = start.elapsed().as_secs_f64() * 1e3;
        wasm_bindgen_test::console_log!(
            "across-origins view of 60 prompts of 100×768, {}: {ms:.1} ms",
            measure.as_str()
        );
        assert_eq!((view.tasks.len(), view.origins.len()), (12, 5));
        for i in 0..12 {
            for j in 0..12 {
                let (a, b) = (view.matrix[i][j].unwrap(), view.matrix[j][i].unwrap());
                assert!((a - b).abs() < 1e-12, "{a} vs {b}");
            }
        }
    }
}
