//! `config.json` of a decoder-only model, field names as in transformers: one struct for every
//! decoder family (LLaMA, Mistral, Qwen2/2.5, Qwen3, Phi-3, Gemma 2/3), the fields each family
//! reads, checked here once ([`DecoderConfig::validate`]); what a family makes of them (biases,
//! norms, windows, soft-capping) is its [`Arch`], built in its folder under `families/`.

use serde::Deserialize;

use super::super::load::{ConfigError, Shapes, check_count, check_dims, check_layer_count, check_positive, limits};

/// `config.json` of a decoder-only model, field names as in transformers (every family's fields;
/// those a family does not have are absent from its files and keep their defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct DecoderConfig {
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
    /// Gemma's name for the activation (it wins over `hidden_act` there).
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Mistral, Phi-3, Qwen2/3 and Gemma: the keys a sliding-window layer's query sees, itself
    /// included (`null`: every layer is global).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Qwen2/3: whether `sliding_window` applies at all, and from which layer on.
    #[serde(default)]
    pub use_sliding_window: bool,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// transformers ≥ 4.53: `sliding_attention` or `full_attention` per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// Gemma 3: every `sliding_window_pattern`-th layer is global.
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar`^-½, not head_dim^-½.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma 2: `cap · tanh(x / cap)` on attention scores and on the logits.
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma 3: the sliding layers' rotary θ (the global layers use `rope_theta`).
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    /// Phi-3/4: the share of each head's dimensions that rotate.
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
}

/// What a family makes of its [`DecoderConfig`]: the parts of the decoder that differ between
/// families. Built by the family's folder under `families/`, checked there.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// Biases on the q/k/v projections, on o_proj, on the feed-forward projections.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// RMSNorm over each head's queries and keys before the rotation (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// RMSNorm weights applied as (1 + w) (Gemma): stored so at load.
    pub norm_plus_one: bool,
    /// The feed-forward activation.
    pub activation: Activation,
    /// Norms on the attention and feed-forward outputs too (Gemma 2/3: four per layer).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by √hidden_size (Gemma).
    pub embed_scale: EmbedScale,
    /// The attention scores' scale.
    pub attn_scale: f64,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// Per layer: which entry of `ropes` it rotates with, and its window (None: global).
    pub layers: Vec<LayerKind>,
    /// Rotary θ and scaling of each kind of layer.
    pub ropes: Vec<(f64, RopeScaling)>,
    /// q/k/v in one `qkv_proj`, gate and up in one `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
}

/// The feed-forward block's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// silu(gate) ⊙ up (LLaMA, Mistral, Qwen, Phi-3).
    Silu,
    /// gelu_tanh(gate) ⊙ up (Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// Gemma's √d embedding scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EmbedScale {
    None,
    /// Token embeddings times the scale, in the model's dtype (Gemma 2/3's scaled embedding
    /// module): the prompt goes in as is (peft puts it after the module), and origins sampled
    /// from the vocabulary are scaled rows (as peft's initialization samples them). The tied
    /// head keeps the unscaled matrix.
    Tokens(f64),
}

/// One layer's rotary table and attention window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    pub rope: usize,
    pub window: Option<usize>,
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

impl DecoderConfig {
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
        self.activation()?;
        if let Some(w) = self.sliding_window {
            check_count("sliding_window", w, limits::POSITIONS)?;
        }
        for (field, v) in [
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            ("rope_local_base_freq", self.rope_local_base_freq),
        ] {
            if let Some(v) = v {
                check_positive(field, v, 1e-3, f64::from(f32::MAX))?;
            }
        }
        if let Some(f) = self.partial_rotary_factor
            && f != 1.0
        {
            return Err(ConfigError::new(
                "partial_rotary_factor",
                format!("{f:?}"),
                "1.0 (tpv rotates whole heads; partial rotation, as Phi-4-mini has, is not implemented)",
            ));
        }
        Ok(())
    }

    /// The feed-forward activation: Gemma's `hidden_activation`, else `hidden_act`.
    pub fn activation(&self) -> std::result::Result<Activation, ConfigError> {
        let (field, name) = match &self.hidden_activation {
            Some(a) => ("hidden_activation", a.as_str()),
            None => ("hidden_act", self.hidden_act.as_str()),
        };
        match name {
            "silu" | "swish" => Ok(Activation::Silu),
            "gelu_pytorch_tanh" | "gelu_new" => Ok(Activation::GeluTanh),
            other => Err(ConfigError::new(
                field,
                format!("{other:?}"),
                "\"silu\" or \"gelu_pytorch_tanh\" (the activations tpv implements)",
            )),
        }
    }

    /// Each layer's attention window: `layer_types` when the config has them, else
    /// `sliding(i)` says whether layer i slides (the family's default). A sliding layer needs a
    /// `sliding_window`.
    pub fn windows(&self, sliding: impl Fn(usize) -> bool) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        let n = self.num_hidden_layers;
        let kinds: Vec<bool> = match &self.layer_types {
            Some(types) => {
                if types.len() != n {
                    return Err(ConfigError::new(
                        "layer_types",
                        format!("a list of {}", types.len()),
                        format!("a list of num_hidden_layers ({n}) entries"),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(true),
                        "full_attention" => Ok(false),
                        other => Err(ConfigError::new(
                            "layer_types",
                            format!("{other:?}"),
                            "\"sliding_attention\" or \"full_attention\"",
                        )),
                    })
                    .collect::<std::result::Result<_, _>>()?
            }
            None => (0..n).map(sliding).collect(),
        };
        kinds
            .into_iter()
            .map(|slides| match (slides, self.sliding_window) {
                (false, _) => Ok(None),
                (true, Some(w)) => Ok(Some(w)),
                (true, None) => Err(ConfigError::new(
                    "sliding_window",
                    "missing",
                    "given when a layer is a sliding_attention one",
                )),
            })
            .collect()
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
pub(crate) const MIN_ROPE_FACTOR: f64 = 1e-3;

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
