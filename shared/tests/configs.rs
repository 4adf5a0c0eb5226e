//! Model configurations that describe no model (issue items 5 and 6): every value of a
//! `config.json` or of GGUF metadata is checked when the model loads, for every family, and a bad
//! one is an error that names it — never a panic (a division by zero), an abort (a rotary table
//! of 2^40 columns) or a model that computes NaN (rope θ 0, a negative epsilon).
//!
//! The crafted configs are the committed corpus `tests/fixtures/hostile/config`
//! (`tests/reference/hostile_corpus.py`), named `FIXTURE.FIELD=VALUE.json`: each is the tiny
//! fixture's config.json with one value changed, loaded here with that fixture's weights, and
//! must be refused with an error naming FIELD. `trainer/tests/corpus.rs` replays the same files
//! through `tpv eval`.
#![allow(
    clippy::disallowed_methods,
    reason = "native code: tests and tools read and write files (the library does not)"
)]
// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use tpv_shared::model::llama::LlamaConfig;
use tpv_shared::model::load::{from_gguf, from_safetensors};
use tpv_shared::model::t5::T5Config;
use tpv_shared::model::{DType, Device, Tensor};

#[path = "common/gguf_names.rs"]
mod gguf_names;
use gguf_names::{gguf_name, permute};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn weights(fixture: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("models").join(fixture).join("model.safetensors")).unwrap()
}

/// Loads `tests/fixtures/hostile/config/STEM.json` with its fixture's weights; the error it must
/// give names the field of the file's name.
#[track_caller]
fn refused(stem: &str) {
    let (fixture, rest) = stem.split_once('.').unwrap();
    let (field, _) = rest.rsplit_once('=').unwrap();
    let named = field.rsplit('.').next().unwrap();
    let path = fixtures().join("hostile/config").join(format!("{stem}.json"));
    let config = std::fs::read_to_string(&path).unwrap();
    match from_safetensors(&config, &[weights(fixture)], DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{stem}: loaded"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("config.json") && msg.contains(named),
                "{stem}: the error does not name config.json's {named}: {msg}"
            );
        }
    }
}

macro_rules! refused {
    ($($name:ident => $stem:literal,)*) => {
        /// Every crafted config this file replays.
        const STEMS: &[&str] = &[$($stem),*];
        $(
            #[test]
            fn $name() {
                refused($stem);
            }
        )*
    };
}

refused! {
    llama_vocab_size_0 => "llama_tied.vocab_size=0",
    llama_hidden_size_0 => "llama_tied.hidden_size=0",
    llama_intermediate_size_0 => "llama_tied.intermediate_size=0",
    llama_num_hidden_layers_0 => "llama_tied.num_hidden_layers=0",
    llama_num_attention_heads_0 => "llama_tied.num_attention_heads=0",
    llama_num_attention_heads_not_dividing_hidden_size => "llama_tied.num_attention_heads=3",
    llama_num_key_value_heads_0 => "llama_tied.num_key_value_heads=0",
    llama_num_key_value_heads_not_dividing_heads => "llama_tied.num_key_value_heads=3",
    llama_num_key_value_heads_over_heads => "llama_tied.num_key_value_heads=8",
    llama_head_dim_2e40_no_layers => "llama_tied.head_dim=1099511627776",
    llama_head_dim_2e31_no_layers => "llama_tied.head_dim=2147483648",
    llama_head_dim_2e29_no_layers => "llama_tied.head_dim=536870912",
    llama_head_dim_odd => "llama_tied.head_dim=5",
    llama_rms_norm_eps_negative => "llama_tied.rms_norm_eps=-1",
    llama_rms_norm_eps_0 => "llama_tied.rms_norm_eps=0",
    llama_rms_norm_eps_0_in_f32 => "llama_tied.rms_norm_eps=1e-320",
    llama_max_position_embeddings_0 => "llama_tied.max_position_embeddings=0",
    llama_max_position_embeddings_2e62 => "llama_tied.max_position_embeddings=4611686018427387904",
    llama_rope_theta_negative => "llama_tied.rope_theta=-1",
    llama_rope_theta_0 => "llama_tied.rope_theta=0",
    llama_rope_theta_infinite_in_f32 => "llama_tied.rope_theta=1e+300",
    llama_linear_rope_factor_0 => "llama_tied.rope_scaling.factor=0",
    llama_linear_rope_factor_negative => "llama_tied.rope_scaling.factor=-2",
    llama3_rope_theta_negative => "llama_gqa_rope3.rope_parameters.rope_theta=-1",
    llama3_rope_factor_0 => "llama_gqa_rope3.rope_parameters.factor=0",
    llama3_rope_low_freq_factor_0 => "llama_gqa_rope3.rope_parameters.low_freq_factor=0",
    llama3_rope_high_freq_factor_0 => "llama_gqa_rope3.rope_parameters.high_freq_factor=0",
    llama3_rope_high_freq_factor_not_above_low => "llama_gqa_rope3.rope_parameters.high_freq_factor=1",
    llama3_rope_original_max_positions_0 => "llama_gqa_rope3.rope_parameters.original_max_position_embeddings=0",
    llama3_rope_all_zeros => "llama_gqa_rope3.rope_parameters.factor=zeros",
    t5_vocab_size_0 => "t5_relu_tied.vocab_size=0",
    t5_d_model_0 => "t5_relu_tied.d_model=0",
    t5_d_kv_0 => "t5_relu_tied.d_kv=0",
    t5_d_kv_2e40 => "t5_gated_untied.d_kv=1099511627776",
    t5_d_ff_0 => "t5_relu_tied.d_ff=0",
    t5_num_layers_0 => "t5_relu_tied.num_layers=0",
    t5_num_decoder_layers_0 => "t5_relu_tied.num_decoder_layers=0",
    t5_num_heads_0 => "t5_relu_tied.num_heads=0",
    t5_one_relative_attention_bucket => "t5_relu_tied.relative_attention_num_buckets=1",
    t5_relative_attention_max_distance_within_exact_buckets => "t5_relu_tied.relative_attention_max_distance=4",
    t5_layer_norm_epsilon_negative => "t5_relu_tied.layer_norm_epsilon=-1",
    t5_layer_norm_epsilon_0 => "t5_gated_untied.layer_norm_epsilon=0",
    t5_dropout_rate_1 => "t5_relu_tied.dropout_rate=1",
}

#[test]
fn every_crafted_config_is_replayed() {
    let mut stems: Vec<String> = std::fs::read_dir(fixtures().join("hostile/config"))
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json").unwrap().to_owned()
        })
        .collect();
    stems.sort();
    let mut listed: Vec<String> = STEMS.iter().map(|s| (*s).to_owned()).collect();
    listed.sort();
    assert_eq!(stems, listed);
}

#[test]
fn the_fixture_configs_are_valid() {
    for name in ["llama_tied", "llama_gqa_rope3"] {
        let config = std::fs::read_to_string(fixtures().join("models").join(name).join("config.json")).unwrap();
        let cfg: LlamaConfig = serde_json::from_str(&config).unwrap();
        cfg.validate().unwrap();
        from_safetensors(&config, &[weights(name)], DType::F32, &Device::Cpu).unwrap();
    }
    for name in ["t5_relu_tied", "t5_gated_untied"] {
        let config = std::fs::read_to_string(fixtures().join("models").join(name).join("config.json")).unwrap();
        let cfg: T5Config = serde_json::from_str(&config).unwrap();
        cfg.validate().unwrap();
        from_safetensors(&config, &[weights(name)], DType::F32, &Device::Cpu).unwrap();
    }
}

/// The counts that agree with themselves but not with the weights: named with the tensor.
#[test]
fn dimensions_that_disagree_with_the_tensors_name_the_field_and_the_tensor() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/llama_tied/config.json")).unwrap())
            .unwrap();
    for (field, value, tensor) in [
        ("hidden_size", 32, "model.embed_tokens.weight"),
        ("vocab_size", 65, "model.embed_tokens.weight"),
        ("intermediate_size", 48, "mlp.gate_proj.weight"),
        ("num_hidden_layers", 3, "model.layers.2"),
        ("head_dim", 8, "self_attn.q_proj.weight"),
    ] {
        let mut config = base.clone();
        config[field] = value.into();
        let err = from_safetensors(&config.to_string(), &[weights("llama_tied")], DType::F32, &Device::Cpu)
            .err()
            .unwrap_or_else(|| panic!("{field} = {value} loaded"))
            .to_string();
        assert!(err.contains(field) && err.contains(tensor), "{field}: {err}");
    }
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("models/t5_relu_tied/config.json")).unwrap())
            .unwrap();
    for (field, value, tensor) in [
        ("d_model", 32, "shared.weight"),
        ("d_ff", 64, "DenseReluDense.wi.weight"),
        ("num_heads", 2, "SelfAttention.q.weight"),
        ("relative_attention_num_buckets", 16, "relative_attention_bias.weight"),
        ("num_layers", 3, "encoder.block.2"),
        ("num_decoder_layers", 3, "decoder.block.2"),
    ] {
        let mut config = base.clone();
        config[field] = value.into();
        let err = from_safetensors(
            &config.to_string(),
            &[weights("t5_relu_tied")],
            DType::F32,
            &Device::Cpu,
        )
        .err()
        .unwrap_or_else(|| panic!("{field} = {value} loaded"))
        .to_string();
        assert!(err.contains(field) && err.contains(tensor), "{field}: {err}");
    }
}

// ---------------------------------------------------------------- GGUF metadata

/// The `llama_gqa_rope3` fixture as a GGUF file (as gguf.rs writes it, which checks it against
/// transformers), with metadata values replaced and, if given, `rope_freqs.weight`.
fn gguf_with(changes: &[(&str, gguf_file::Value)], rope_freqs: Option<&[f32]>) -> Vec<u8> {
    use gguf_file::Value as V;
    let hf = candle_core::safetensors::load_buffer(&weights("llama_gqa_rope3"), &Device::Cpu).unwrap();
    let mut qtensors: Vec<(String, QTensor)> = hf
        .iter()
        .map(|(name, t)| {
            let t = if name.ends_with("q_proj.weight") {
                permute(t, 4)
            } else if name.ends_with("k_proj.weight") {
                permute(t, 2)
            } else {
                t.clone()
            };
            (gguf_name(name).unwrap(), QTensor::quantize(&t, GgmlDType::F32).unwrap())
        })
        .collect();
    if let Some(f) = rope_freqs {
        let t = Tensor::new(f, &Device::Cpu).unwrap();
        qtensors.push((
            "rope_freqs.weight".into(),
            QTensor::quantize(&t, GgmlDType::F32).unwrap(),
        ));
    }
    let mut metadata: Vec<(&str, V)> = vec![
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
    for (key, value) in changes {
        match metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => metadata.push((key, value.clone())),
        }
    }
    let md: Vec<(&str, &V)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = Cursor::new(Vec::new());
    gguf_file::write(&mut file, &md, &ts).unwrap();
    file.into_inner()
}

fn gguf_error(bytes: &[u8]) -> String {
    match from_gguf(&mut Cursor::new(bytes), DType::F32, &Device::Cpu) {
        Ok(_) => "loaded".into(),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_gguf_sample_loads() {
    let (model, cfg, _) = from_gguf(&mut Cursor::new(gguf_with(&[], None)), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(model.family(), "llama");
    cfg.validate().unwrap();
}

#[test]
fn gguf_metadata_is_validated_and_named_by_its_key() {
    use gguf_file::Value as V;
    for (key, value) in [
        ("llama.attention.head_count", V::U32(0)),
        ("llama.attention.head_count_kv", V::U32(0)),
        ("llama.attention.head_count_kv", V::U32(3)),
        ("llama.block_count", V::U32(0)),
        ("llama.block_count", V::U32(u32::MAX)),
        ("llama.feed_forward_length", V::U32(0)),
        ("llama.rope.freq_base", V::F32(0.0)),
        ("llama.rope.freq_base", V::F32(-1.0)),
        ("llama.rope.freq_base", V::F32(f32::NAN)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(-1.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(f32::INFINITY)),
        ("llama.context_length", V::U32(0)),
        ("llama.vocab_size", V::U32(0)),
        // Agrees with itself (16 heads of 2), not with token_embd.weight [64, 16].
        ("llama.embedding_length", V::U32(32)),
    ] {
        let err = gguf_error(&gguf_with(&[(key, value.clone())], None));
        assert!(err.contains("GGUF") && err.contains(key), "{key} = {value:?}: {err}");
    }
}

#[test]
fn gguf_rope_freqs_must_be_finite_and_positive() {
    for bad in [[1.0, 0.0], [1.0, -2.0], [f32::NAN, 1.0], [1.0, f32::INFINITY]] {
        let err = gguf_error(&gguf_with(&[], Some(&bad)));
        assert!(err.contains("rope_freqs"), "{bad:?}: {err}");
    }
    let err = gguf_error(&gguf_with(&[], Some(&[1.0, 2.0, 3.0])));
    assert!(err.contains("rope_freqs"), "{err}");
    assert_eq!(gguf_error(&gguf_with(&[], Some(&[1.0, 8.0]))), "loaded");
}

/// The crafted GGUF files of the corpus that divided by a zero head count.
#[test]
fn crafted_ggufs_with_zero_heads_are_refused() {
    for (name, key) in [
        ("head-count-zero.gguf", "llama.attention.head_count"),
        ("head-count-kv-zero.gguf", "llama.attention.head_count_kv"),
    ] {
        let bytes = std::fs::read(fixtures().join("hostile/gguf").join(name)).unwrap();
        let err = gguf_error(&bytes);
        assert!(err.contains(key), "{name}: {err}");
    }
}
