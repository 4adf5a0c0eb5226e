//! GGUF loading end to end on a tiny model with HF reference numbers: the `llama_gqa_rope3`
//! fixture is written as a GGUF file the way llama.cpp's converter writes it (Q/K rows permuted,
//! llama3 rope scaling as `rope_freqs.weight`), read back with `from_gguf`, and must give the
//! logits and losses transformers gave for the original (`tests/reference/model_fixtures.py`).
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::Path;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use serde_json::Value;
use tpv_shared::model::causal::{self, Example};
use tpv_shared::model::decoder::Decoder;
use tpv_shared::model::llama::{RopeScaling, inv_freq};
use tpv_shared::model::load::from_gguf;
use tpv_shared::model::{DType, Device, Tensor};

#[path = "common/gguf_names.rs"]
mod gguf_names;
use gguf_names::{gguf_name, permute};

#[test]
fn a_llama_gguf_with_rope_freqs_matches_hf() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama_gqa_rope3");
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let hf = candle_core::safetensors::load_buffer(&weights, &Device::Cpu).unwrap();
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();

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

    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &hf {
        let Some(g) = gguf_name(name) else {
            panic!("unmapped tensor {name}")
        };
        let t = if name.ends_with("q_proj.weight") {
            permute(t, 4)
        } else if name.ends_with("k_proj.weight") {
            permute(t, 2)
        } else {
            t.clone()
        };
        qtensors.push((g, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let freqs = Tensor::new(factors.as_slice(), &Device::Cpu).unwrap();
    qtensors.push((
        "rope_freqs.weight".into(),
        QTensor::quantize(&freqs, GgmlDType::F32).unwrap(),
    ));

    use gguf_file::Value as V;
    let metadata: Vec<(&str, V)> = vec![
        ("general.architecture", V::String("llama".into())),
        ("llama.embedding_length", V::U32(16)),
        ("llama.feed_forward_length", V::U32(32)),
        ("llama.block_count", V::U32(2)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(2)),
        ("llama.rope.freq_base", V::F32(500000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("llama.context_length", V::U32(64)),
        ("llama.vocab_size", V::U32(64)),
    ];
    let md: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = Cursor::new(Vec::new());
    gguf_file::write(&mut file, &md, &ts).unwrap();
    file.set_position(0);

    let (model, _, _) = from_gguf(&mut file, DType::F32, &Device::Cpu).unwrap();
    let model = model.downcast_ref::<Decoder>().expect("a decoder-only model");
    let r = expected["virtual_tokens"].as_u64().unwrap() as usize;
    let floats = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect::<Vec<_>>()
    };
    let ids = |v: &Value| {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    let prompt = Tensor::from_vec(floats(&expected["prompt"]), (r, 16), &Device::Cpu).unwrap();
    for ex in expected["examples"].as_array().unwrap() {
        let example = Example::answer(&ids(&ex["input_ids"]), &ids(&ex["answer_ids"]));
        let logits: Vec<f32> = causal::sequence_logits(model, &prompt, &example.ids)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let worst = logits
            .iter()
            .zip(floats(&ex["logits"]))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst <= 1e-4, "logits differ by {worst}");
        let loss: f32 = causal::loss(model, &prompt, &[example])
            .unwrap()
            .loss
            .to_scalar()
            .unwrap();
        let want = ex["loss"].as_f64().unwrap();
        assert!((f64::from(loss) - want).abs() / want <= 1e-5, "{loss} vs {want}");
    }
}
