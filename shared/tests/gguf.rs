//! GGUF loading end to end on tiny models with HF reference numbers: a model fixture is written as
//! a GGUF file the way llama.cpp's converter (`convert_hf_to_gguf.py`) writes it — LLaMA's Q/K
//! rows permuted and llama3 rope scaling as `rope_freqs.weight`; Qwen2's and Qwen3's tensors as
//! they are, Qwen3's head_dim as `qwen3.attention.key_length` — read back with `from_gguf`, and
//! must give the losses, logits, prompt gradients and greedy tokens transformers gave for the
//! original (`tests/reference/model_fixtures.py`; tolerances as `tests/models.rs`).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::gguf_file::Value as V;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use serde_json::Value;
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::llama::{RopeScaling, inv_freq};
use tpv_shared::model::load::{Model, from_gguf};
use tpv_shared::model::{DType, Device, Tensor};

#[path = "common/gguf_names.rs"]
mod gguf_names;
#[path = "common/reference.rs"]
mod reference;
use gguf_names::{gguf_name, permute};
use reference::assert_decoder_matches_hf;

/// A model fixture's weights, config.json and expected.json.
fn fixture(name: &str) -> (HashMap<String, Tensor>, Value, Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name);
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let hf = candle_core::safetensors::load_buffer(&weights, &Device::Cpu).unwrap();
    let json =
        |file: &str| -> Value { serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap() };
    (hf, json("config.json"), json("expected.json"))
}

/// HF tensors under their GGUF names, as F32; Q/K weights and biases permuted with
/// `heads` (query, key/value head counts) when given, as the converter does for LLaMA.
fn gguf_tensors(hf: &HashMap<String, Tensor>, heads: Option<(usize, usize)>) -> Vec<(String, QTensor)> {
    let mut out: Vec<(String, QTensor)> = hf
        .iter()
        .map(|(name, t)| {
            let Some(g) = gguf_name(name) else {
                panic!("unmapped tensor {name}")
            };
            let t = match heads {
                Some((q, _)) if name.contains("q_proj.") => permute(t, q),
                Some((_, kv)) if name.contains("k_proj.") => permute(t, kv),
                _ => t.clone(),
            };
            (g, QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The metadata llama.cpp's converter writes for a config.json under `arch` (its
/// `TextModel.set_gguf_parameters`: `key_length` where the config gives head_dim, and the
/// vocabulary as `tokenizer.ggml.tokens`, padded to vocab_size; LLaMA's `vocab_size` too).
fn gguf_metadata(arch: &str, config: &Value) -> Vec<(String, V)> {
    let u = |field: &str| V::U32(config[field].as_u64().unwrap() as u32);
    let theta = config
        .get("rope_theta")
        .or_else(|| config["rope_parameters"].get("rope_theta"))
        .unwrap()
        .as_f64()
        .unwrap();
    let mut md = vec![
        ("general.architecture".to_owned(), V::String(arch.into())),
        (format!("{arch}.context_length"), u("max_position_embeddings")),
        (format!("{arch}.embedding_length"), u("hidden_size")),
        (format!("{arch}.feed_forward_length"), u("intermediate_size")),
        (format!("{arch}.block_count"), u("num_hidden_layers")),
        (format!("{arch}.attention.head_count"), u("num_attention_heads")),
        (format!("{arch}.attention.head_count_kv"), u("num_key_value_heads")),
        (format!("{arch}.rope.freq_base"), V::F32(theta as f32)),
        (
            format!("{arch}.attention.layer_norm_rms_epsilon"),
            V::F32(config["rms_norm_eps"].as_f64().unwrap() as f32),
        ),
    ];
    if config.get("head_dim").is_some() {
        md.push((format!("{arch}.attention.key_length"), u("head_dim")));
        md.push((format!("{arch}.attention.value_length"), u("head_dim")));
    }
    if arch == "llama" {
        md.push((format!("{arch}.vocab_size"), u("vocab_size")));
    }
    let vocab = config["vocab_size"].as_u64().unwrap();
    let tokens = (0..vocab).map(|i| V::String(format!("[PAD{i}]"))).collect();
    md.push(("tokenizer.ggml.tokens".to_owned(), V::Array(tokens)));
    md
}

/// A GGUF file of `metadata` (each key's value replaced by `changes`, or added) and `tensors`.
fn write_gguf(metadata: &[(String, V)], changes: &[(&str, V)], tensors: &[(String, QTensor)]) -> Vec<u8> {
    let mut metadata = metadata.to_vec();
    for (key, value) in changes {
        match metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => metadata.push(((*key).to_owned(), value.clone())),
        }
    }
    let md: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = Cursor::new(Vec::new());
    gguf_file::write(&mut file, &md, &ts).unwrap();
    file.into_inner()
}

fn load(bytes: &[u8]) -> Model {
    from_gguf(&mut Cursor::new(bytes), DType::F32, &Device::Cpu).unwrap().0
}

fn load_error(bytes: &[u8]) -> String {
    match from_gguf(&mut Cursor::new(bytes), DType::F32, &Device::Cpu) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

/// A Qwen fixture as llama.cpp writes it under `arch` (tensors as they are), metadata `changes`d.
fn qwen_gguf(name: &str, arch: &str, changes: &[(&str, V)]) -> (Vec<u8>, Value) {
    let (hf, config, expected) = fixture(name);
    let bytes = write_gguf(&gguf_metadata(arch, &config), changes, &gguf_tensors(&hf, None));
    (bytes, expected)
}

/// A GGUF-loaded model against the fixture's HF numbers ([`reference::assert_decoder_matches_hf`]).
#[track_caller]
fn assert_matches_hf(model: &Model, expected: &Value) {
    let model = model.downcast_ref::<Decoder>().expect("a decoder-only model");
    assert_decoder_matches_hf(model, expected);
}

#[test]
fn a_llama_gguf_with_rope_freqs_matches_hf() {
    let (hf, config, expected) = fixture("llama_gqa_rope3");

    // The config: 4 heads, 2 kv heads, head_dim 4, theta 500000, llama3 scaling.
    let scaling = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8,
    };
    let base = inv_freq(4, 500000.0, &RopeScaling::None);
    let scaled = inv_freq(4, 500000.0, &scaling);
    let factors: Vec<f32> = base.iter().zip(&scaled).map(|(b, s)| b / s).collect();
    assert!(
        factors.iter().any(|&f| f > 1.0),
        "the fixture's scaling changes some frequency"
    );

    let mut tensors = gguf_tensors(&hf, Some((4, 2)));
    let freqs = Tensor::new(factors.as_slice(), &Device::Cpu).unwrap();
    tensors.push((
        "rope_freqs.weight".into(),
        QTensor::quantize(&freqs, GgmlDType::F32).unwrap(),
    ));
    let model = load(&write_gguf(&gguf_metadata("llama", &config), &[], &tensors));
    assert_eq!(model.family(), "llama");
    assert_matches_hf(&model, &expected);
}

#[test]
fn a_qwen2_gguf_with_qkv_biases_and_an_untied_head_matches_hf() {
    let (bytes, expected) = qwen_gguf("qwen2_bias", "qwen2", &[]);
    let (model, cfg, _) = from_gguf(&mut Cursor::new(&bytes), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.family(), "qwen2");
    assert!(!cfg.tie_word_embeddings);
    assert_eq!(
        cfg.vocab_size, 64,
        "from tokenizer.ggml.tokens (qwen2 writes no vocab_size)"
    );
    assert_matches_hf(&model, &expected);
}

#[test]
fn a_qwen3_gguf_with_qk_norms_head_dim_and_a_tied_head_matches_hf() {
    let (bytes, expected) = qwen_gguf("qwen3_qknorm_tied", "qwen3", &[]);
    let (model, cfg, _) = from_gguf(&mut Cursor::new(&bytes), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.family(), "qwen3");
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.head_dim(), 8, "qwen3.attention.key_length, not 16 / 4");
    assert_matches_hf(&model, &expected);
}

/// LLaMA with `attention_bias`: Qwen2's weights with a zero o_proj bias compute what Qwen2 does;
/// llama.cpp's converter permutes the Q/K biases' rows as their weights'.
#[test]
fn a_llama_gguf_with_attention_biases_unpermutes_them() {
    let (mut hf, config, expected) = fixture("qwen2_bias");
    for layer in 0..2 {
        let zero = Tensor::zeros(16, DType::F32, &Device::Cpu).unwrap();
        hf.insert(format!("model.layers.{layer}.self_attn.o_proj.bias"), zero);
    }
    let bytes = write_gguf(&gguf_metadata("llama", &config), &[], &gguf_tensors(&hf, Some((4, 2))));
    let (model, cfg, _) = from_gguf(&mut Cursor::new(&bytes), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.family(), "llama");
    assert!(cfg.attention_bias);
    assert_matches_hf(&model, &expected);
}

#[test]
fn an_unsupported_gguf_architecture_is_named_with_the_supported_ones() {
    let (bytes, _) = qwen_gguf("qwen3_qknorm_tied", "gemma3", &[]);
    let err = load_error(&bytes);
    assert!(err.contains("\"gemma3\"") && err.contains("not supported"), "{err}");
    for arch in ["llama", "qwen2", "qwen3"] {
        assert!(err.contains(arch), "{err} does not name {arch}");
    }
}

/// Errors in a Qwen file's metadata name its keys, under its architecture's prefix.
#[test]
fn qwen_gguf_metadata_errors_name_the_files_keys() {
    for (fixture, arch, key, value) in [
        ("qwen2_bias", "qwen2", "qwen2.attention.head_count", V::U32(0)),
        ("qwen2_bias", "qwen2", "qwen2.attention.head_count_kv", V::U32(3)),
        ("qwen2_bias", "qwen2", "qwen2.rope.freq_base", V::F32(f32::NAN)),
        ("qwen2_bias", "qwen2", "qwen2.embedding_length", V::U32(32)),
        ("qwen3_qknorm_tied", "qwen3", "qwen3.attention.key_length", V::U32(0)),
        // Agrees with itself, not with q_proj [32, 16].
        ("qwen3_qknorm_tied", "qwen3", "qwen3.attention.key_length", V::U32(4)),
        (
            "qwen3_qknorm_tied",
            "qwen3",
            "qwen3.attention.layer_norm_rms_epsilon",
            V::F32(-1.0),
        ),
        ("qwen3_qknorm_tied", "qwen3", "qwen3.block_count", V::U32(3)),
    ] {
        let (bytes, _) = qwen_gguf(fixture, arch, &[(key, value.clone())]);
        let err = load_error(&bytes);
        assert!(err.contains("GGUF") && err.contains(key), "{key} = {value:?}: {err}");
    }
}

/// llama.cpp's `rope.scaling.type` and `.factor`: a linear-scaled GGUF computes what the same
/// weights compute from a config.json with `rope_parameters = {rope_type: linear, factor}`
/// (transformers' linear scaling, checked against HF by the gemma3_text fixture), not what the
/// unscaled model computes; a type tpv does not implement is refused naming the key.
#[test]
fn a_gguf_with_linear_rope_scaling_computes_what_its_config_json_does() {
    let (_, mut config, expected) = fixture("qwen2_bias");
    let linear = [
        ("qwen2.rope.scaling.type", V::String("linear".into())),
        ("qwen2.rope.scaling.factor", V::F32(4.0)),
    ];
    let (bytes, _) = qwen_gguf("qwen2_bias", "qwen2", &linear);
    let gguf = load(&bytes);
    config["rope_scaling"] = serde_json::json!({ "type": "linear", "factor": 4.0 });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen2_bias");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let from_config =
        tpv_shared::model::load::from_safetensors(&config.to_string(), &[&weights], DType::F32, &Device::Cpu).unwrap();
    let (unscaled, _) = qwen_gguf("qwen2_bias", "qwen2", &[]);
    let unscaled = load(&unscaled);
    let example = &expected["examples"][0];
    let ids: Vec<u32> = reference::ids(&example["input_ids"]);
    let logits = |m: &Model| {
        let d = m.downcast_ref::<Decoder>().unwrap();
        let prompt = reference::prompt_var(&expected, d.hidden_size());
        tpv_shared::model::causal::sequence_logits(d, prompt.as_tensor(), &ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (g, c, u) = (logits(&gguf), logits(&from_config), logits(&unscaled));
    assert!(max_diff(&g, &c) < 1e-6, "GGUF vs config.json: {}", max_diff(&g, &c));
    assert!(
        max_diff(&g, &u) > 1e-3,
        "the scaling changed nothing: {}",
        max_diff(&g, &u)
    );
    let (yarn, _) = qwen_gguf(
        "qwen2_bias",
        "qwen2",
        &[("qwen2.rope.scaling.type", V::String("yarn".into()))],
    );
    let err = load_error(&yarn);
    assert!(
        err.contains("qwen2.rope.scaling.type") && err.contains("linear"),
        "{err}"
    );
}
