//! LLaMA-family decoder (LLaMA 2/3/3.1, DeepSeek-LLM, SmolLM2) with an input-embedding entry point,
//! per-example positions, a padding mask, a KV cache and hidden states at every position.
//!
//! Parameter names mirror the HF checkpoint (`model.layers.N.self_attn.q_proj`, …). Every op has a
//! backward pass (see [`super::ops`]).

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use super::load::{ConfigError, Shapes, check_count, check_dims, check_layer_count, check_positive, limits};
use super::ops;
use super::ops::FrozenLinear as Linear;

/// `config.json` of a LLaMA-family model, field names as in transformers.
#[derive(Debug, Clone, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub rms_norm_eps: f64,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// transformers 4.x: top-level `rope_theta` and `rope_scaling`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers 5.x: `rope_parameters` with `rope_theta` inside.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
}

fn default_max_positions() -> usize {
    4096
}

fn default_act() -> String {
    "silu".into()
}

/// A token id or a list of them (LLaMA-3.1 lists several EOS ids).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// RoPE parameters in either transformers layout.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// How rotary frequencies are scaled.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    Linear {
        factor: f64,
    },
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
}

impl LlamaConfig {
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// `head_dim`, or hidden_size / num_attention_heads (0 for 0 heads, which
    /// [`Self::validate`] refuses).
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or_else(|| self.hidden_size.checked_div(self.num_attention_heads).unwrap_or(0))
    }

    /// Checks every value before anything is built from it: counts from 1 to tpv's bounds
    /// ([`limits`]), heads that group evenly, an even head dimension, a positive finite
    /// epsilon, θ and rope scaling as [`Self::rope`] checks them, and the activation.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        check_count("vocab_size", self.vocab_size, limits::VOCAB)?;
        check_count("hidden_size", self.hidden_size, limits::HIDDEN)?;
        check_count("intermediate_size", self.intermediate_size, limits::INTERMEDIATE)?;
        let heads = self.num_attention_heads;
        check_count("num_attention_heads", heads, limits::HEADS)?;
        match self.head_dim {
            Some(hd) => check_count("head_dim", hd, limits::HEAD_DIM)?,
            None if !self.hidden_size.is_multiple_of(heads) => {
                return Err(ConfigError::new(
                    "num_attention_heads",
                    heads,
                    format!(
                        "a divisor of hidden_size ({}) when no head_dim is given",
                        self.hidden_size
                    ),
                ));
            }
            None => check_count("head_dim", self.head_dim(), limits::HEAD_DIM)?,
        }
        if !self.head_dim().is_multiple_of(2) {
            return Err(ConfigError::new(
                "head_dim",
                self.head_dim(),
                "even (rotary embeddings rotate its columns in pairs)",
            ));
        }
        if let Some(kv) = self.num_key_value_heads {
            check_count("num_key_value_heads", kv, limits::HEADS)?;
            if !heads.is_multiple_of(kv) {
                return Err(ConfigError::new(
                    "num_key_value_heads",
                    kv,
                    format!(
                        "a divisor of num_attention_heads ({heads}): each key/value head serves a group of query heads"
                    ),
                ));
            }
        }
        check_count("num_hidden_layers", self.num_hidden_layers, limits::LAYERS)?;
        check_positive("rms_norm_eps", self.rms_norm_eps, f64::from(f32::MIN_POSITIVE), 1.0)?;
        check_count(
            "max_position_embeddings",
            self.max_position_embeddings,
            limits::POSITIONS,
        )?;
        self.rope()?;
        if self.hidden_act != "silu" {
            return Err(ConfigError::new(
                "hidden_act",
                format!("{:?}", self.hidden_act),
                "\"silu\" (the activation tpv implements)",
            ));
        }
        Ok(())
    }

    /// The dimensions against the weights' shapes (embeddings, the first layer's projections,
    /// the number of layers), before anything is built: the error names the field and the tensor.
    pub fn check_tensors(&self, shapes: &Shapes) -> std::result::Result<(), ConfigError> {
        let (d, hd) = (self.hidden_size, self.head_dim());
        let embed = [("vocab_size", self.vocab_size), ("hidden_size", d)];
        check_dims(shapes, "model.embed_tokens.weight", &embed)?;
        if !self.tie_word_embeddings {
            check_dims(shapes, "lm_head.weight", &embed)?;
        }
        let q = self.num_attention_heads.saturating_mul(hd);
        let kv = self.num_kv_heads().saturating_mul(hd);
        let layer = "model.layers.0";
        for (name, rows, field) in [
            ("self_attn.q_proj.weight", q, "num_attention_heads × head_dim"),
            ("self_attn.k_proj.weight", kv, "num_key_value_heads × head_dim"),
            ("self_attn.v_proj.weight", kv, "num_key_value_heads × head_dim"),
            ("mlp.gate_proj.weight", self.intermediate_size, "intermediate_size"),
            ("mlp.up_proj.weight", self.intermediate_size, "intermediate_size"),
        ] {
            check_dims(shapes, &format!("{layer}.{name}"), &[(field, rows), ("hidden_size", d)])?;
        }
        check_layer_count(shapes, "model.layers", "num_hidden_layers", self.num_hidden_layers)
    }

    /// θ and the scaling, from `rope_parameters` (5.x) or `rope_theta` + `rope_scaling` (4.x),
    /// checked: θ finite and at least 1 (frequencies of at most 1 radian per position), factors
    /// finite and positive, llama3's high_freq_factor above its low_freq_factor (transformers'
    /// `_validate_llama3_parameters`; the smoothing divides by their difference). A config with
    /// no θ is an error: defaulting θ silently changes every result.
    pub fn rope(&self) -> std::result::Result<(f64, RopeScaling), ConfigError> {
        let (params, at) = match (&self.rope_parameters, &self.rope_scaling) {
            (Some(p), _) => (p.clone(), "rope_parameters"),
            (None, Some(p)) => (p.clone(), "rope_scaling"),
            (None, None) => (RopeParameters::default(), "rope_parameters"),
        };
        let (theta, theta_field) = match (params.rope_theta, self.rope_theta) {
            (Some(t), _) => (t, format!("{at}.rope_theta")),
            (None, Some(t)) => (t, "rope_theta".to_owned()),
            (None, None) => {
                return Err(ConfigError::new(
                    "rope_theta",
                    "missing",
                    "given, top-level or in rope_parameters",
                ));
            }
        };
        check_positive(&theta_field, theta, 1.0, f64::from(f32::MAX))?;
        let rope = RopeFields { params: &params, at };
        let scaling = match params.rope_type.as_deref() {
            None | Some("default") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: rope.need(params.factor, "factor", MIN_ROPE_FACTOR)?,
            },
            Some("llama3") => rope.llama3()?,
            Some(other) => {
                return Err(ConfigError::new(
                    rope.field("rope_type"),
                    format!("{other:?}"),
                    "default, linear or llama3 (the rope types tpv implements)",
                ));
            }
        };
        Ok((theta, scaling))
    }
}

/// The smallest rope scaling factor accepted (transformers warns below 1; far below, positions
/// times frequencies overflow f32).
const MIN_ROPE_FACTOR: f64 = 1e-3;

/// One rope parameters object of config.json (`at`: `rope_parameters` or `rope_scaling`), its
/// values read and checked.
struct RopeFields<'a> {
    params: &'a RopeParameters,
    at: &'static str,
}

impl RopeFields<'_> {
    fn field(&self, name: &str) -> String {
        format!("{}.{name}", self.at)
    }

    /// A value the rope type needs: given, finite, from `min`.
    fn need(&self, v: Option<f64>, name: &str, min: f64) -> std::result::Result<f64, ConfigError> {
        let v = v.ok_or_else(|| ConfigError::new(self.field(name), "missing", "given for this rope type"))?;
        check_positive(&self.field(name), v, min, f64::from(f32::MAX))?;
        Ok(v)
    }

    /// llama3 scaling: positive factors, high_freq_factor above low_freq_factor (the smoothing
    /// divides by their difference), original positions from 1.
    fn llama3(&self) -> std::result::Result<RopeScaling, ConfigError> {
        let p = self.params;
        let factor = self.need(p.factor, "factor", MIN_ROPE_FACTOR)?;
        let tiny = f64::from(f32::MIN_POSITIVE);
        let low_freq_factor = self.need(p.low_freq_factor, "low_freq_factor", tiny)?;
        let high_freq_factor = self.need(p.high_freq_factor, "high_freq_factor", tiny)?;
        if high_freq_factor as f32 <= low_freq_factor as f32 {
            return Err(ConfigError::new(
                self.field("high_freq_factor"),
                format!("{high_freq_factor:?}"),
                format!("above low_freq_factor ({low_freq_factor:?})"),
            ));
        }
        let name = self.field("original_max_position_embeddings");
        let original = p
            .original_max_position_embeddings
            .ok_or_else(|| ConfigError::new(&name, "missing", "given for this rope type"))?;
        check_count(&name, original, limits::POSITIONS)?;
        Ok(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original,
        })
    }
}

/// Inverse frequencies as transformers computes them (in f32).
pub fn inv_freq(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Vec<f32> {
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim / 2)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    match *scaling {
        RopeScaling::None => inv,
        RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            let (factor, low, high) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32);
            let old = original_max_position_embeddings as f32;
            let (low_wavelen, high_wavelen) = (old / low, old / high);
            inv.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        scaled
                    } else {
                        let smooth = (old / wavelen - low) / (high - low);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect()
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let lin = |i, o, name| Linear::load(i, o, cfg.attention_bias, vb.pp(name));
        Ok(Self {
            q_proj: lin(d, h * hd, "q_proj")?,
            k_proj: lin(d, kv * hd, "k_proj")?,
            v_proj: lin(d, kv * hd, "v_proj")?,
            o_proj: lin(h * hd, d, "o_proj")?,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: hd,
        })
    }

    fn forward(&self, xs: &Tensor, rot: &Rotary, mask: &Tensor, cache: Option<&mut KvEntry>) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let heads = |proj: &Linear, n| -> Result<Tensor> {
            ops::linear(proj, xs)?
                .reshape((b, t, n, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = ops::rope(&heads(&self.q_proj, self.n_heads)?, &rot.cos, &rot.sin)?;
        let mut k = ops::rope(&heads(&self.k_proj, self.n_kv_heads)?, &rot.cos, &rot.sin)?;
        let mut v = heads(&self.v_proj, self.n_kv_heads)?;
        if let Some(entry) = cache {
            if let Some((pk, pv)) = &entry.0 {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            entry.0 = Some((k.clone(), v.clone()));
        }
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = ops::attention(&q, &k, &v, scale, Some(mask), None)?
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * self.head_dim))?;
        ops::linear(&self.o_proj, &out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(d, i, cfg.mlp_bias, vb.pp("gate_proj"))?,
            up_proj: Linear::load(d, i, cfg.mlp_bias, vb.pp("up_proj"))?,
            down_proj: Linear::load(i, d, cfg.mlp_bias, vb.pp("down_proj"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        ops::swiglu_ff(&self.gate_proj, &self.up_proj, &self.down_proj, xs)
    }
}

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: Tensor,
    post_attention_layernorm: Tensor,
    eps: f64,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        Ok(Self {
            self_attn: Attention::load(vb.pp("self_attn"), cfg)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg)?,
            input_layernorm: vb.get(cfg.hidden_size, "input_layernorm.weight")?,
            post_attention_layernorm: vb.get(cfg.hidden_size, "post_attention_layernorm.weight")?,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor, rot: &Rotary, mask: &Tensor, cache: Option<&mut KvEntry>) -> Result<Tensor> {
        let h = ops::rms_norm(xs, &self.input_layernorm, self.eps)?;
        let xs = (xs + self.self_attn.forward(&h, rot, mask, cache)?)?;
        let h = ops::rms_norm(&xs, &self.post_attention_layernorm, self.eps)?;
        xs + self.mlp.forward(&h)?
    }
}

/// cos/sin for a batch of positions, [B, 1, T, head_dim].
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

/// Keys and values of one layer for the positions seen so far.
#[derive(Debug, Clone, Default)]
pub struct KvEntry(Option<(Tensor, Tensor)>);

/// The decoding state of a batch: per-layer keys/values and which key columns are real tokens.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<KvEntry>,
    /// `valid[b][s]`: key column s of sequence b is a real token (not padding).
    valid: Vec<Vec<bool>>,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![KvEntry::default(); num_layers],
            valid: vec![Vec::new(); batch],
        }
    }

    /// Number of key columns cached.
    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Which cached key columns of sequence `b` are real tokens.
    pub fn valid(&self, b: usize) -> &[bool] {
        self.valid.get(b).map_or(&[], Vec::as_slice)
    }

    /// Keeps the first `len` key columns: decoding continues from there (what a teacher-forced
    /// pass appended after the inputs is dropped; [`super::causal::loss_and_greedy_rows`]).
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for e in &mut self.layers {
            if let Some((k, v)) = &e.0 {
                e.0 = Some((k.narrow(2, 0, len)?, v.narrow(2, 0, len)?));
            }
        }
        for v in &mut self.valid {
            v.truncate(len);
        }
        Ok(())
    }

    /// A cache for a new batch whose row i continues row `rows[i]` of this one (rows may repeat:
    /// one computed prefix shared by several sequences). Differentiable: gradients of the copies
    /// add up in the source row.
    pub fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let device = self
            .layers
            .iter()
            .find_map(|e| e.0.as_ref().map(|(k, _)| k.device().clone()))
            .unwrap_or(Device::Cpu);
        let idx = Tensor::from_slice(rows, rows.len(), &device)?;
        let layers = self
            .layers
            .iter()
            .map(|e| {
                Ok(KvEntry(match &e.0 {
                    Some((k, v)) => Some((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?)),
                    None => None,
                }))
            })
            .collect::<Result<Vec<_>>>()?;
        let valid = rows
            .iter()
            .map(|&r| self.valid.get(r as usize).cloned().unwrap_or_default())
            .collect();
        Ok(Self { layers, valid })
    }
}

/// A LLaMA-family causal LM with frozen weights.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    inv_freq: Vec<f32>,
    pub cfg: LlamaConfig,
}

impl Llama {
    /// Loads from HF-named tensors (`model.embed_tokens.weight`, …); a tied head reuses the
    /// input embeddings.
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig) -> Result<Self> {
        cfg.validate()?;
        let (theta, scaling) = cfg.rope()?;
        let m = vb.pp("model");
        let embed_tokens = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(m.pp(format!("layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = m.get(cfg.hidden_size, "norm.weight")?;
        let lm_head = if cfg.tie_word_embeddings {
            embed_tokens.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        };
        let lm_head = Linear::new(&candle_nn::Linear::new(lm_head, None))?;
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq: inv_freq(cfg.head_dim(), theta, &scaling),
            cfg: cfg.clone(),
        })
    }

    /// Divides the rotary inverse frequencies by per-dimension factors: how GGUF files store
    /// LLaMA-3.1's rope scaling (`rope_freqs.weight`, head_dim/2 values).
    pub fn set_rope_freq_factors(&mut self, factors: &[f32]) -> Result<()> {
        if factors.len() != self.inv_freq.len() {
            candle_core::bail!(
                "rope_freqs has {} values, head_dim/2 is {}",
                factors.len(),
                self.inv_freq.len()
            );
        }
        for (i, &d) in factors.iter().enumerate() {
            // Each divides a rotary frequency, as a linear rope factor does.
            check_positive(
                &format!("rope_freqs.weight[{i}]"),
                f64::from(d),
                MIN_ROPE_FACTOR,
                f64::from(f32::MAX),
            )
            .map_err(|e| ConfigError { file: "GGUF file", ..e })?;
        }
        for (f, d) in self.inv_freq.iter_mut().zip(factors) {
            *f /= d;
        }
        Ok(())
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.hidden_size
    }

    /// The input embedding matrix [V, d] (origins are sampled from it).
    pub fn embeddings(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Embeddings of token ids, any shape → shape + [d].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.cfg.hidden_size);
        self.embed_tokens.index_select(&ids.flatten_all()?, 0)?.reshape(shape)
    }

    /// Runs the decoder on `embeds` [B, T, d]. `positions[b]` are the rotary positions of the T new
    /// columns, `valid[b]` says which of them are real tokens. With a cache, the new columns attend
    /// to the cached ones too, and are appended to it. Returns the final-norm hidden states.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        valid: &[Vec<bool>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        // Key validity over past + new columns.
        let keys: Vec<Vec<bool>> = (0..b)
            .map(|i| {
                let mut k = cache.as_ref().map_or_else(Vec::new, |c| c.valid[i].clone());
                k.extend_from_slice(&valid[i]);
                k
            })
            .collect();
        let mask = causal_mask(&keys, past, t, embeds.device())?.to_dtype(embeds.dtype())?;
        self.forward_masked(embeds, positions, &mask, cache, valid)
    }

    /// Runs the decoder on `embeds` [B, T, d] with an explicit additive attention mask
    /// [B, 1, T, past + T] (0 where a query column may see a key column, `f32::MIN` elsewhere) and
    /// rotary `positions[b]` per column. With a cache, the new columns are appended to it, `valid`
    /// saying which are real tokens. For layouts a causal mask cannot express, such as several
    /// continuations of one input side by side ([`super::causal::rank`]).
    pub fn forward_masked(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        mask: &Tensor,
        mut cache: Option<&mut KvCache>,
        valid: &[Vec<bool>],
    ) -> Result<Tensor> {
        let (_, t, _) = embeds.dims3()?;
        let rot = self.rotary(positions, t)?;
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let entry = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            xs = layer.forward(&xs, &rot, mask, entry)?;
        }
        if let Some(c) = cache {
            for (row, v) in c.valid.iter_mut().zip(valid) {
                row.extend_from_slice(v);
            }
        }
        ops::rms_norm(&xs, &self.norm, self.cfg.rms_norm_eps)
    }

    /// The gradient of a scalar loss w.r.t. `embeds` [B, T, d] (mask and positions as
    /// [`Self::forward_embeds`] without a cache) with gradient checkpointing: the forward pass
    /// keeps only each layer's input (B·T·d values per layer, not its activations), `head` turns
    /// the final-norm hidden states into the loss, and the backward pass recomputes one layer at
    /// a time from its saved input to carry the gradient through it. The same operations as the
    /// plain backward pass, so the same gradient; one more forward pass of compute. Returns the
    /// loss (detached) and the gradient.
    pub fn checkpointed_grad(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        valid: &[Vec<bool>],
        head: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let (_, t, _) = embeds.dims3()?;
        let mask = causal_mask(valid, 0, t, embeds.device())?.to_dtype(embeds.dtype())?;
        let rot = self.rotary(positions, t)?;
        // Untracked inputs: no layer keeps its activations for a backward pass.
        let mut inputs = vec![embeds.detach()];
        for layer in &self.layers {
            let next = layer.forward(&inputs[inputs.len() - 1], &rot, &mask, None)?;
            inputs.push(next);
        }
        let Some(last) = inputs.pop() else {
            candle_core::bail!("no layer input")
        };
        let last = candle_core::Var::from_tensor(&last)?;
        let loss = head(&ops::rms_norm(last.as_tensor(), &self.norm, self.cfg.rms_norm_eps)?)?;
        let mut grad = gradient_of(&loss, &last)?;
        for (layer, input) in self.layers.iter().zip(&inputs).rev() {
            let x = candle_core::Var::from_tensor(input)?;
            let y = layer.forward(x.as_tensor(), &rot, &mask, None)?;
            // d(Σ y·g)/dx is the upstream gradient g carried through the layer.
            grad = gradient_of(&(y * &grad)?.sum_all()?, &x)?;
        }
        Ok((loss.detach(), grad))
    }

    /// Logits of hidden states [.., d] → [.., V].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        ops::linear(&self.lm_head, hidden)
    }

    fn rotary(&self, positions: &[Vec<u32>], t: usize) -> Result<Rotary> {
        let half = self.inv_freq.len();
        let hd = 2 * half;
        let (mut cos, mut sin) = (Vec::with_capacity(positions.len() * t * hd), Vec::new());
        sin.reserve(positions.len() * t * hd);
        for row in positions {
            for &p in row {
                let freqs: Vec<f32> = self.inv_freq.iter().map(|f| p as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(freqs.iter().map(|x| x.cos()));
                    sin.extend(freqs.iter().map(|x| x.sin()));
                }
            }
        }
        let shape = (positions.len(), 1, t, hd);
        let dev = self.device();
        Ok(Rotary {
            cos: Tensor::from_vec(cos, shape, dev)?.to_dtype(self.dtype())?,
            sin: Tensor::from_vec(sin, shape, dev)?.to_dtype(self.dtype())?,
        })
    }
}

/// Additive mask [B, 1, T, S] for T new query columns after `past` cached ones: a query may see a
/// key at or before its own column that is a real token. Blocked cells get f32::MIN (as HF), not
/// −∞, so a row with nothing visible (a padding query) stays finite.
fn causal_mask(keys: &[Vec<bool>], past: usize, t: usize, device: &Device) -> Result<Tensor> {
    let s = past + t;
    let mut data = Vec::with_capacity(keys.len() * t * s);
    for valid in keys {
        for q in 0..t {
            data.extend((0..s).map(|k| if valid[k] && k <= past + q { 0.0 } else { f32::MIN }));
        }
    }
    Tensor::from_vec(data, (keys.len(), 1, t, s), device)
}

/// d`scalar`/d`var` (zeros when the scalar does not depend on it).
fn gradient_of(scalar: &Tensor, var: &candle_core::Var) -> Result<Tensor> {
    let grads = scalar.backward()?;
    match grads.get(var) {
        Some(g) => Ok(g.clone()),
        None => var.as_tensor().zeros_like(),
    }
}

/// Rows [.., d] of `xs` at `dim`-indices, for picking the positions whose logits are needed.
pub fn select_rows(xs: &Tensor, rows: &[u32]) -> Result<Tensor> {
    let d = xs.dim(D::Minus1)?;
    let flat = xs.reshape(((), d))?;
    let idx = Tensor::from_slice(rows, rows.len(), xs.device())?;
    flat.index_select(&idx, 0)
}
