//! Building models from bytes: HF `config.json` + safetensors (one file or shards), or GGUF
//! (LLaMA, Qwen2 or Qwen3; dequantized, llama.cpp's Q/K row permutation undone). Works on native
//! and wasm32; file and hub handling live in the callers.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::decoder::Decoder;
use super::decoder::config::{DecoderConfig, RopeParameters};
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

/// GGUF metadata keys of the [`DecoderConfig`] fields GGUF files carry, after the
/// architecture's prefix (`llama.embedding_length`, `qwen3.attention.head_count`, …). `head_dim`
/// is `attention.key_length` where the file gives it, else derived ([`gguf_head_dim`]).
const GGUF_KEYS: &[(&str, &str)] = &[
    ("vocab_size", "vocab_size"),
    ("hidden_size", "embedding_length"),
    ("intermediate_size", "feed_forward_length"),
    ("num_hidden_layers", "block_count"),
    ("num_attention_heads", "attention.head_count"),
    ("num_key_value_heads", "attention.head_count_kv"),
    ("rms_norm_eps", "attention.layer_norm_rms_epsilon"),
    ("max_position_embeddings", "context_length"),
    ("rope_parameters.rope_theta", "rope.freq_base"),
    ("rope_parameters.rope_type", "rope.scaling.type"),
    ("rope_parameters.factor", "rope.scaling.factor"),
];

/// How a GGUF file names `head_dim`: its `{arch}.attention.key_length` when it has one
/// (`key_length`), else the quotient it is derived as.
fn gguf_head_dim(arch: &str, key_length: bool) -> String {
    if key_length {
        format!("{arch}.attention.key_length")
    } else {
        format!("head_dim ({arch}.embedding_length / {arch}.attention.head_count)")
    }
}

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

    /// The same error about the metadata of a `llama` GGUF file (head_dim derived): see
    /// [`Self::in_gguf_arch`].
    #[must_use]
    pub fn in_gguf(self) -> Self {
        self.in_gguf_arch("llama", false)
    }

    /// The same error about the GGUF metadata the config was built from, the file's
    /// architecture `arch` (`llama`, `qwen2`, `qwen3`) prefixing its keys: fields renamed to
    /// their keys (each part of an expression such as `num_attention_heads × head_dim`);
    /// `key_length`: whether the file gives head_dim as `{arch}.attention.key_length`.
    #[must_use]
    pub fn in_gguf_arch(self, arch: &str, key_length: bool) -> Self {
        let field = self
            .field
            .split(" × ")
            .map(|part| match part {
                "head_dim" => gguf_head_dim(arch, key_length),
                _ => GGUF_KEYS
                    .iter()
                    .find(|(hf, _)| *hf == part)
                    .map_or_else(|| part.to_owned(), |(_, key)| format!("{arch}.{key}")),
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

/// The shapes a safetensors header names, from the header's JSON alone (the bytes after its
/// 8-byte length; no tensor data): for a file not here (the hub's headers, fetched by range) or
/// not read whole. Also the bytes the data takes (the largest end offset): the file is 8 + the
/// header + that long.
pub fn header_json_shapes(json: &[u8]) -> Result<(Shapes, u64)> {
    #[derive(serde::Deserialize)]
    struct Entry {
        shape: Vec<usize>,
        data_offsets: (u64, u64),
    }
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| candle_core::Error::msg(format!("a safetensors header: {e}")))?;
    let mut shapes = Shapes::new();
    let mut end = 0;
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let entry: Entry = serde_json::from_value(value)
            .map_err(|e| candle_core::Error::msg(format!("a safetensors header: tensor {name}: {e}")))?;
        if entry.data_offsets.0 > entry.data_offsets.1 {
            return Err(candle_core::Error::msg(format!(
                "a safetensors header: tensor {name} ends before it starts"
            )));
        }
        end = end.max(entry.data_offsets.1);
        shapes.insert(name, entry.shape);
    }
    Ok((shapes, end))
}

/// The values the tensors of `shapes` hold (saturating: a hostile header cannot overflow it).
pub fn parameter_count(shapes: &Shapes) -> u64 {
    shapes
        .values()
        .map(|s| s.iter().fold(1u64, |n, &d| n.saturating_mul(d as u64)))
        .fold(0, u64::saturating_add)
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

/// The GGUF architectures tpv reads (`general.architecture`, as llama.cpp's converter writes
/// it), each the `model_type` of the family in the registry that builds it, and whether the
/// converter permuted its Q/K rows (it does for `llama` only).
pub const GGUF_ARCHITECTURES: &[(&str, bool)] = &[("llama", true), ("qwen2", false), ("qwen3", false)];

/// Reads a GGUF file of one of [`GGUF_ARCHITECTURES`], dequantizing every tensor to `dtype`:
/// its metadata becomes the [`DecoderConfig`] that config.json would give, read by the family of
/// the registry ([`super::families::family`]) as config.json is (Qwen2's q/k/v biases, Qwen3's
/// q/k norms). LLaMA-3.1's rope scaling comes as `rope_freqs.weight` (per-dimension divisors of
/// the inverse frequencies).
pub fn from_gguf<R: Read + Seek>(
    reader: &mut R,
    dtype: DType,
    device: &Device,
) -> Result<(Model, DecoderConfig, GgufExtras)> {
    let content = gguf_file::Content::read(reader)?;
    let md = &content.metadata;
    let arch = gguf_value(md, "general.architecture")?.to_string()?.clone();
    let Some(&(model_type, permuted)) = GGUF_ARCHITECTURES.iter().find(|(a, _)| *a == arch) else {
        let known: Vec<&str> = GGUF_ARCHITECTURES.iter().map(|(a, _)| *a).collect();
        candle_core::bail!(
            "GGUF architecture {arch:?} is not supported (tpv reads {})",
            known.join(", ")
        );
    };
    let tokens: Vec<String> = match md.get("tokenizer.ggml.tokens") {
        Some(v) => v
            .to_vec()?
            .iter()
            .map(|t| t.to_string().cloned())
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let cfg = gguf_config(&content, &arch, tokens.len())?;
    let in_gguf = |e: ConfigError| e.in_gguf_arch(&arch, cfg.head_dim.is_some());
    // Checked, and against the header's shapes, before any tensor is dequantized (and before
    // the head counts unpermute Q/K: a count of 0 divided by zero).
    cfg.validate().map_err(in_gguf)?;
    let family = super::families::family(model_type)
        .ok_or_else(|| candle_core::Error::msg(format!("no family reads model_type {model_type:?}")))?;
    let spec = (family.parse)(&gguf_config_json(&cfg, model_type).to_string())?;
    let heads = permuted.then_some((cfg.num_attention_heads, cfg.num_kv_heads()));
    let shapes: Shapes = content
        .tensor_infos
        .iter()
        .map(|(name, info)| (hf_name(name, heads).0, info.shape.dims().to_vec()))
        .collect();
    spec.check_tensors(&shapes).map_err(in_gguf)?;
    let mut tensors = HashMap::new();
    let mut freq_factors = None;
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    for name in names {
        let t = content.tensor(reader, &name, device)?.dequantize(device)?;
        if name == "rope_freqs.weight" {
            freq_factors = Some(super::host::flat_f32(&t)?);
            continue;
        }
        let (hf, heads) = hf_name(&name, heads);
        let t = match heads {
            Some(h) => unpermute(&t, h)?,
            None => t,
        };
        tensors.insert(hf, t.to_dtype(dtype)?);
    }
    spec.adapt(&mut tensors)?;
    let built = spec.build(handover(tensors, dtype, device))?;
    let Some(decoder) = built.downcast_ref::<Decoder>() else {
        candle_core::bail!("GGUF architecture {arch:?} built no decoder-only model");
    };
    let mut cfg = decoder.spec.cfg.clone();
    let model = match freq_factors {
        Some(factors) => {
            let mut decoder = decoder.clone();
            decoder.set_rope_freq_factors(&factors)?;
            Model::new(decoder)
        }
        None => built,
    };

    let extras = gguf_extras(md, tokens)?;
    cfg.bos_token_id = extras.bos_token_id.map(super::decoder::TokenIds::One);
    cfg.eos_token_id = extras.eos_token_id.map(super::decoder::TokenIds::One);
    Ok((model, cfg, extras))
}

/// A GGUF metadata value, or an error naming its missing key.
fn gguf_value<'a>(md: &'a HashMap<String, gguf_file::Value>, key: &str) -> Result<&'a gguf_file::Value> {
    md.get(key)
        .ok_or_else(|| candle_core::Error::msg(format!("GGUF metadata has no {key}")))
}

/// The config a GGUF file's metadata (keys prefixed with its architecture `arch`) and tensors
/// describe, unchecked: vocab_size falls back to the tokenizer's `tokens` count, head_dim (from
/// `attention.key_length`) to hidden_size / heads, the head is tied when there is no
/// `output.weight`.
fn gguf_config(content: &gguf_file::Content, arch: &str, tokens: usize) -> Result<DecoderConfig> {
    let md = &content.metadata;
    let key = |name: &str| format!("{arch}.{name}");
    let opt_u =
        |name: &str| -> Result<Option<usize>> { md.get(&key(name)).map(|v| Ok(v.to_u32()? as usize)).transpose() };
    let u = |name: &str| -> Result<usize> { Ok(gguf_value(md, &key(name))?.to_u32()? as usize) };
    let f = |name: &str| -> Result<f64> { Ok(f64::from(gguf_value(md, &key(name))?.to_f32()?)) };
    let n_head = u("attention.head_count")?;
    let has = |tensor: &str| content.tensor_infos.contains_key(tensor);
    // llama.cpp's `rope.scaling.type` ("none", "linear", "yarn", …) and `rope.scaling.factor`:
    // the family's validation accepts the types tpv implements and names the key otherwise.
    let scaling = match md.get(&key("rope.scaling.type")) {
        Some(v) => Some(v.to_string()?.clone()).filter(|t| t != "none"),
        None => None,
    };
    let factor = match (&scaling, md.get(&key("rope.scaling.factor"))) {
        (Some(_), Some(v)) => Some(f64::from(v.to_f32()?)),
        _ => None,
    };
    Ok(DecoderConfig {
        vocab_size: opt_u("vocab_size")?.unwrap_or(tokens),
        hidden_size: u("embedding_length")?,
        intermediate_size: u("feed_forward_length")?,
        num_hidden_layers: u("block_count")?,
        num_attention_heads: n_head,
        num_key_value_heads: Some(opt_u("attention.head_count_kv")?.unwrap_or(n_head)),
        head_dim: opt_u("attention.key_length")?,
        rms_norm_eps: f("attention.layer_norm_rms_epsilon")?,
        max_position_embeddings: u("context_length").unwrap_or(4096),
        rope_theta: None,
        rope_scaling: None,
        rope_parameters: Some(RopeParameters {
            rope_theta: Some(f("rope.freq_base")?),
            rope_type: scaling,
            factor,
            ..Default::default()
        }),
        tie_word_embeddings: !has("output.weight"),
        hidden_act: "silu".into(),
        // LLaMA's and Qwen3's `attention_bias`: biases on all four projections (Qwen2's
        // family puts them on q/k/v whatever this says).
        attention_bias: has("blk.0.attn_output.bias"),
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
    })
}

/// The config.json of a config read from GGUF metadata (every field [`from_gguf`] sets), with
/// its `model_type`: what the family's parser reads.
fn gguf_config_json(cfg: &DecoderConfig, model_type: &str) -> serde_json::Value {
    serde_json::json!({
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_parameters": {
            "rope_theta": cfg.rope_parameters.as_ref().and_then(|p| p.rope_theta),
            "rope_type": cfg.rope_parameters.as_ref().and_then(|p| p.rope_type.clone()),
            "factor": cfg.rope_parameters.as_ref().and_then(|p| p.factor),
        },
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "hidden_act": cfg.hidden_act,
        "attention_bias": cfg.attention_bias,
        "mlp_bias": cfg.mlp_bias,
    })
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

/// The HF name of a GGUF tensor, and, where `heads` (query, key/value head counts) says the
/// file's Q/K rows are permuted, the head count to unpermute its rows with.
fn hf_name(gguf: &str, heads: Option<(usize, usize)>) -> (String, Option<usize>) {
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
    let q = heads.map(|(q, _)| q);
    let kv = heads.map(|(_, kv)| kv);
    let (hf, heads) = match what {
        "attn_q.weight" => ("self_attn.q_proj.weight", q),
        "attn_k.weight" => ("self_attn.k_proj.weight", kv),
        "attn_v.weight" => ("self_attn.v_proj.weight", None),
        "attn_output.weight" => ("self_attn.o_proj.weight", None),
        "attn_q.bias" => ("self_attn.q_proj.bias", q),
        "attn_k.bias" => ("self_attn.k_proj.bias", kv),
        "attn_v.bias" => ("self_attn.v_proj.bias", None),
        "attn_output.bias" => ("self_attn.o_proj.bias", None),
        "attn_q_norm.weight" => ("self_attn.q_norm.weight", None),
        "attn_k_norm.weight" => ("self_attn.k_norm.weight", None),
        "attn_norm.weight" => ("input_layernorm.weight", None),
        "ffn_norm.weight" => ("post_attention_layernorm.weight", None),
        "ffn_gate.weight" => ("mlp.gate_proj.weight", None),
        "ffn_up.weight" => ("mlp.up_proj.weight", None),
        "ffn_down.weight" => ("mlp.down_proj.weight", None),
        _ => return (gguf.to_owned(), None),
    };
    (format!("model.layers.{layer}.{hf}"), heads)
}

/// Undoes llama.cpp's conversion permutation of Q/K rows (of a weight, or of a bias as one
/// column): GGUF stores `w.reshape(h, 2, rows/h/2, in).swapaxes(1, 2)`; HF wants `w`.
fn unpermute(w: &Tensor, heads: usize) -> Result<Tensor> {
    let shape = w.shape().clone();
    let rows = shape.dims().first().copied().unwrap_or(0);
    let cols = shape.elem_count().checked_div(rows).unwrap_or(0);
    w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape(shape)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_header_read_alone_gives_shapes_and_the_data_length_and_refuses_what_cannot_be() {
        let json = br#"{"__metadata__": {"format": "pt"},
            "a": {"dtype": "BF16", "shape": [3, 4], "data_offsets": [0, 24]},
            "b": {"dtype": "F32", "shape": [5], "data_offsets": [24, 44]}}"#;
        let (shapes, end) = header_json_shapes(json).unwrap();
        assert_eq!(
            (shapes["a"].clone(), shapes["b"].clone(), end),
            (vec![3, 4], vec![5], 44)
        );
        assert_eq!(parameter_count(&shapes), 17);
        // A hostile header: an overflowing count saturates; a tensor ending before it starts, a
        // shape that is not a list of sizes, and a header that is not an object are errors.
        let huge = br#"{"a": {"dtype": "F32", "shape": [18446744073709551615, 4], "data_offsets": [0, 0]}}"#;
        assert_eq!(parameter_count(&header_json_shapes(huge).unwrap().0), u64::MAX);
        for bad in [
            &br#"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}}"#[..],
            br#"{"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}"#,
            br#"[1, 2]"#,
        ] {
            assert!(header_json_shapes(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
