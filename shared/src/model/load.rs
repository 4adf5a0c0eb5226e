//! Building models from bytes: HF `config.json` + safetensors (one file or shards), or GGUF
//! (dequantized, llama.cpp's Q/K row permutation undone). Works on native and wasm32; file and
//! hub handling live in the callers.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::decoder::Decoder;
use super::decoder::config::{Arch, DecoderConfig, RopeParameters};
use super::decoder::spec::DecoderSpec;
pub use super::family::Model;

/// tpv's bounds on a model's dimensions: far above every released model of the families it runs
/// (LLaMA-3.1-405B: hidden 16,384, intermediate 53,248, 126 layers, 128 heads of 128; T5-11B:
/// d_ff 65,536, 128 heads; Gemma's 262,144-token vocabulary; 10M-token contexts), and low enough
/// that nothing computed from a config (heads × head_dim, rotary frequencies, position buckets)
/// overflows a 32-bit `usize` (wasm32) or allocates much before the tensors are checked.
pub mod limits {
    /// vocab_size.
    pub const VOCAB: usize = 1 << 22;
    /// hidden_size, d_model.
    pub const HIDDEN: usize = 1 << 16;
    /// intermediate_size, d_ff.
    pub const INTERMEDIATE: usize = 1 << 20;
    /// num_hidden_layers, num_layers, num_decoder_layers.
    pub const LAYERS: usize = 1 << 10;
    /// num_attention_heads, num_heads.
    pub const HEADS: usize = 1 << 10;
    /// head_dim, d_kv.
    pub const HEAD_DIM: usize = 1 << 10;
    /// max_position_embeddings (and llama3's original_max_position_embeddings): positions are
    /// u32 and exact in f32 up to 2^24.
    pub const POSITIONS: usize = 1 << 24;
    /// relative_attention_num_buckets.
    pub const BUCKETS: usize = 1 << 16;
}

/// `config.json`, in errors.
pub const CONFIG_JSON: &str = "config.json";
/// A GGUF file's metadata, in errors.
pub const GGUF_METADATA: &str = "GGUF metadata";

/// A model configuration value that describes no model (a count of 0, a negative epsilon, a
/// head dimension of 2^40), or that disagrees with the weights: named with the file and field it
/// came from, e.g. `config.json: num_attention_heads is 0; it must be at least 1`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field} is {value}; it must be {rule}")]
pub struct ConfigError {
    /// [`CONFIG_JSON`] or [`GGUF_METADATA`].
    pub file: &'static str,
    /// The field (transformers' name in config.json, the key in GGUF metadata), or an expression
    /// of fields (`num_attention_heads × head_dim`).
    pub field: String,
    pub value: String,
    pub rule: String,
}

/// GGUF metadata keys of the `LlamaConfig` fields GGUF files carry.
const GGUF_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "llama.vocab_size"),
    ("hidden_size", "llama.embedding_length"),
    ("intermediate_size", "llama.feed_forward_length"),
    ("num_hidden_layers", "llama.block_count"),
    ("num_attention_heads", "llama.attention.head_count"),
    ("num_key_value_heads", "llama.attention.head_count_kv"),
    (
        "head_dim",
        "head_dim (llama.embedding_length / llama.attention.head_count)",
    ),
    ("rms_norm_eps", "llama.attention.layer_norm_rms_epsilon"),
    ("max_position_embeddings", "llama.context_length"),
    ("rope_parameters.rope_theta", "llama.rope.freq_base"),
];

impl ConfigError {
    /// A `config.json` value that breaks `rule`.
    pub fn new(field: impl Into<String>, value: impl std::fmt::Display, rule: impl Into<String>) -> Self {
        Self {
            file: CONFIG_JSON,
            field: field.into(),
            value: value.to_string(),
            rule: rule.into(),
        }
    }

    /// The same error about the GGUF metadata the config was built from: fields renamed to
    /// their keys (each part of an expression such as `num_attention_heads × head_dim`).
    #[must_use]
    pub fn in_gguf(self) -> Self {
        let field = self
            .field
            .split(" × ")
            .map(|part| {
                GGUF_KEYS
                    .iter()
                    .find(|(hf, _)| *hf == part)
                    .map_or(part, |(_, key)| key)
            })
            .collect::<Vec<_>>()
            .join(" × ");
        Self {
            file: GGUF_METADATA,
            field,
            ..self
        }
    }
}

impl From<ConfigError> for candle_core::Error {
    fn from(e: ConfigError) -> Self {
        // Not `Error::wrap`: its backtrace would be part of the message.
        candle_core::Error::Wrapped(Box::new(e))
    }
}

/// `value` of `field` is a count from 1 to `max`.
pub(crate) fn check_count(field: &str, value: usize, max: usize) -> std::result::Result<(), ConfigError> {
    check_range(field, value, 1, max)
}

/// `value` of `field` is from `min` to `max`.
pub(crate) fn check_range(field: &str, value: usize, min: usize, max: usize) -> std::result::Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::new(field, value, format!("at least {min}")));
    }
    if value > max {
        return Err(ConfigError::new(
            field,
            value,
            format!("at most {max} (tpv's bound, far above any released model)"),
        ));
    }
    Ok(())
}

/// `value` of `field` is a finite number from `min` (> 0) to `max` (at most `f32::MAX`: the
/// forward passes compute in f32).
pub(crate) fn check_positive(field: &str, value: f64, min: f64, max: f64) -> std::result::Result<(), ConfigError> {
    if value.is_finite() && value >= min && value <= max {
        return Ok(());
    }
    // As f32, as the forward passes use them (and as short as they print).
    let (lo, hi) = (min as f32, max as f32);
    let rule = if hi == f32::MAX {
        format!("a finite number of at least {lo:?}")
    } else {
        format!("a number from {lo:?} to {hi:?}")
    };
    Err(ConfigError::new(field, format!("{value:?}"), rule))
}

/// Every tensor's shape by name, as the file's header gives it: what the config's dimensions
/// are checked against before any tensor is loaded.
pub type Shapes = HashMap<String, Vec<usize>>;

/// The shapes of the tensors of safetensors buffers, from their headers (nothing loaded).
fn header_shapes<B: AsRef<[u8]>>(shards: &[B]) -> Result<Shapes> {
    let mut shapes = Shapes::new();
    for shard in shards {
        let (_, header) = safetensors::SafeTensors::read_metadata(shard.as_ref())?;
        shapes.extend(
            header
                .tensors()
                .into_iter()
                .map(|(name, info)| (name, info.shape.clone())),
        );
    }
    Ok(shapes)
}

/// Whether any tensor's name starts with `prefix` (e.g. `model.layers.2.`).
fn has_prefix(shapes: &Shapes, prefix: &str) -> bool {
    shapes.keys().any(|k| k.starts_with(prefix))
}

/// `tensor`, if present with as many dimensions as `want`, has the sizes `want` gives for it
/// (each with the field, or expression of fields, that sizes it). A tensor that is absent or has
/// another rank is left to the loader's own error.
pub(crate) fn check_dims(
    shapes: &Shapes,
    tensor: &str,
    want: &[(&str, usize)],
) -> std::result::Result<(), ConfigError> {
    let Some(dims) = shapes.get(tensor) else {
        return Ok(());
    };
    if dims.len() != want.len() {
        return Ok(());
    }
    for (&(field, value), &actual) in want.iter().zip(dims) {
        if value != actual {
            return Err(ConfigError::new(
                field,
                value,
                format!("{actual}, as in the weights: {tensor} has shape {dims:?}"),
            ));
        }
    }
    Ok(())
}

/// The weights hold exactly `layers` blocks `{prefix}.0.` … (`field` says how many).
pub(crate) fn check_layer_count(
    shapes: &Shapes,
    prefix: &str,
    field: &str,
    layers: usize,
) -> std::result::Result<(), ConfigError> {
    let last = layers.saturating_sub(1);
    if layers > 0 && !has_prefix(shapes, &format!("{prefix}.{last}.")) {
        return Err(ConfigError::new(
            field,
            layers,
            format!("the number of layers the weights hold ({prefix}.{last} is missing)"),
        ));
    }
    if has_prefix(shapes, &format!("{prefix}.{layers}.")) {
        return Err(ConfigError::new(
            field,
            layers,
            format!("the number of layers the weights hold (they hold {prefix}.{layers} too)"),
        ));
    }
    Ok(())
}

/// `config.json` parsed into `T` (an error naming the file).
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).map_err(|e| candle_core::Error::msg(format!("config.json: {e}")))
}

/// A [`VarBuilder`] that hands each tensor over on its first request and forgets it: a layer
/// that keeps its weight in another layout ([`super::ops::FrozenLinear`]: Wᵀ, or the browser's
/// panels) lets the original go while the rest loads, so loading peaks at about one model's
/// weights rather than two (in wasm, whose memory never shrinks, that peak is the worker's size).
fn handover(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> VarBuilder<'static> {
    VarBuilder::from_backend(
        Box::new(Handover(std::sync::Mutex::new(tensors))),
        dtype,
        device.clone(),
    )
}

struct Handover(std::sync::Mutex<HashMap<String, Tensor>>);

impl Handover {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Tensor>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, name: &str) -> Result<Tensor> {
        self.map()
            .remove(name)
            .ok_or_else(|| candle_core::Error::CannotFindTensor { path: name.to_string() }.bt())
    }
}

impl candle_nn::var_builder::SimpleBackend for Handover {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let t = self.take(name)?;
        if t.shape() != &s {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            }
            .bt());
        }
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.take(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map().contains_key(name)
    }
}

/// Parses `config.json` and builds the model from safetensors buffers (one per shard): bytes in
/// memory (the browser) or memory-mapped files (`tpv`, so a file is never read into the heap).
/// The family comes from the registry ([`super::families::FAMILIES`]).
pub fn from_safetensors<B: AsRef<[u8]>>(
    config_json: &str,
    shards: &[B],
    dtype: DType,
    device: &Device,
) -> Result<Model> {
    // Every value checked, then the dimensions against the headers' shapes, before any tensor is
    // loaded or anything built.
    let spec = super::families::parse(config_json)?;
    spec.check_tensors(&header_shapes(shards)?)?;
    let mut tensors = HashMap::new();
    for shard in shards {
        tensors.extend(candle_core::safetensors::load_buffer(shard.as_ref(), device)?);
    }
    spec.adapt(&mut tensors)?;
    spec.build(handover(tensors, dtype, device))
}

/// What a GGUF file carries besides the weights: its tokenizer and chat template.
#[derive(Debug, Clone, Default)]
pub struct GgufExtras {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub chat_template: Option<String>,
    pub tokenizer_model: Option<String>,
    pub pretokenizer: Option<String>,
    pub name: Option<String>,
}

/// Reads a LLaMA-architecture GGUF file, dequantizing every tensor to `dtype`. LLaMA-3.1's rope
/// scaling comes as `rope_freqs.weight` (per-dimension divisors of the inverse frequencies).
pub fn from_gguf<R: Read + Seek>(
    reader: &mut R,
    dtype: DType,
    device: &Device,
) -> Result<(Model, DecoderConfig, GgufExtras)> {
    let content = gguf_file::Content::read(reader)?;
    let md = &content.metadata;
    let get = |key: &str| {
        md.get(key)
            .ok_or_else(|| candle_core::Error::msg(format!("GGUF metadata has no {key}")))
    };
    let arch = get("general.architecture")?.to_string()?.clone();
    if arch != "llama" {
        candle_core::bail!("GGUF architecture {arch:?} is not supported (llama is)");
    }
    let u = |key: &str| -> Result<usize> { Ok(get(&format!("llama.{key}"))?.to_u32()? as usize) };
    let tokens: Vec<String> = match md.get("tokenizer.ggml.tokens") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_string().cloned())
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let n_head = u("attention.head_count")?;
    let n_kv = match md.get("llama.attention.head_count_kv") {
        Some(v) => v.to_u32()? as usize,
        None => n_head,
    };
    let theta = get("llama.rope.freq_base")?.to_f32()?;
    let vocab_size = match md.get("llama.vocab_size") {
        Some(v) => v.to_u32()? as usize,
        None => tokens.len(),
    };
    let has_output = content.tensor_infos.contains_key("output.weight");
    let cfg = DecoderConfig {
        vocab_size,
        hidden_size: u("embedding_length")?,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: n_head,
        num_key_value_heads: Some(n_kv),
        head_dim: None,
        rms_norm_eps: f64::from(get("llama.attention.layer_norm_rms_epsilon")?.to_f32()?),
        max_position_embeddings: u("context_length").unwrap_or(4096),
        rope_theta: None,
        rope_scaling: None,
        rope_parameters: Some(RopeParameters {
            rope_theta: Some(f64::from(theta)),
            ..Default::default()
        }),
        tie_word_embeddings: !has_output,
        hidden_act: "silu".into(),
        attention_bias: false,
        mlp_bias: false,
        bos_token_id: None,
        eos_token_id: None,
        hidden_activation: None,
        sliding_window: None,
        use_sliding_window: false,
        max_window_layers: None,
        layer_types: None,
        sliding_window_pattern: None,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        rope_local_base_freq: None,
        partial_rotary_factor: None,
    };
    // Checked, and against the header's shapes, before any tensor is dequantized (and before
    // the head counts unpermute Q/K: a count of 0 divided by zero).
    cfg.validate().map_err(ConfigError::in_gguf)?;
    let shapes: Shapes = content
        .tensor_infos
        .iter()
        .map(|(name, info)| (hf_name(name, n_head, n_kv).0, info.shape.dims().to_vec()))
        .collect();
    cfg.check_tensors(&shapes).map_err(ConfigError::in_gguf)?;
    let mut tensors = HashMap::new();
    let mut freq_factors = None;
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let t = content.tensor(reader, &name, device)?.dequantize(device)?;
        if name == "rope_freqs.weight" {
            freq_factors = Some(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
            continue;
        }
        let (hf, heads) = hf_name(&name, n_head, n_kv);
        let t = match heads {
            Some(h) => unpermute(&t, h)?,
            None => t,
        };
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    let vb = handover(tensors, dtype, device);
    let arch = Arch::llama("llama", &cfg, Arch::global)?;
    let spec = DecoderSpec { cfg, arch };
    let mut model = Decoder::load(vb, &spec)?;
    if let Some(factors) = freq_factors {
        model.set_rope_freq_factors(&factors)?;
    }

    let extras = gguf_extras(md, tokens)?;
    let mut cfg = spec.cfg;
    cfg.bos_token_id = extras.bos_token_id.map(super::decoder::TokenIds::One);
    cfg.eos_token_id = extras.eos_token_id.map(super::decoder::TokenIds::One);
    Ok((Model::new(model), cfg, extras))
}

/// The tokenizer and chat template a GGUF file's metadata carries (`tokens` already read).
fn gguf_extras(md: &HashMap<String, gguf_file::Value>, tokens: Vec<String>) -> Result<GgufExtras> {
    let strings = |key: &str| -> Result<Vec<String>> {
        match md.get(key) {
            Some(v) => v.to_vec()?.iter().map(|t| t.to_string().cloned()).collect(),
            None => Ok(Vec::new()),
        }
    };
    let id = |key: &str| md.get(key).and_then(|v| v.to_u32().ok());
    let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok().cloned());
    Ok(GgufExtras {
        merges: strings("tokenizer.ggml.merges")?,
        token_types: match md.get("tokenizer.ggml.token_type") {
            Some(v) => v.to_vec()?.iter().map(|t| t.to_i32()).collect::<Result<_>>()?,
            None => Vec::new(),
        },
        tokens,
        bos_token_id: id("tokenizer.ggml.bos_token_id"),
        eos_token_id: id("tokenizer.ggml.eos_token_id"),
        chat_template: text("tokenizer.chat_template"),
        tokenizer_model: text("tokenizer.ggml.model"),
        pretokenizer: text("tokenizer.ggml.pre"),
        name: text("general.name"),
    })
}

/// The HF name of a GGUF tensor, and the head count to unpermute Q/K rows with.
fn hf_name(gguf: &str, n_head: usize, n_kv: usize) -> (String, Option<usize>) {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return (f.to_owned(), None);
    }
    let Some(rest) = gguf.strip_prefix("blk.") else {
        return (gguf.to_owned(), None);
    };
    let Some((layer, what)) = rest.split_once('.') else {
        return (gguf.to_owned(), None);
    };
    let (hf, heads) = match what {
        "attn_q.weight" => ("self_attn.q_proj.weight", Some(n_head)),
        "attn_k.weight" => ("self_attn.k_proj.weight", Some(n_kv)),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return (gguf.to_owned(), None),
    };
    (format!("model.layers.{layer}.{hf}"), heads)
}

/// Undoes llama.cpp's conversion permutation of Q/K rows: GGUF stores
/// `w.reshape(h, 2, rows/h/2, in).swapaxes(1, 2)`; HF wants `w`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}
