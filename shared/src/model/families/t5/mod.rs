//! T5 encoder-decoder (original T5: relu, tied head scaled by d_model^-½; v1.1/flan-T5:
//! gated-gelu, untied head), with the soft prompt in front of the encoder input as peft's
//! SEQ_2_SEQ_LM prompt tuning puts it, an encoder padding mask, relative attention bias,
//! full-sequence logits, dropout in training mode and greedy decoding with a KV cache.
//!
//! Parameter names mirror the HF checkpoint (`encoder.block.N.layer.0.SelfAttention.q`, …).

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use crate::model::ops::FrozenLinear as Linear;
use serde::Deserialize;

use crate::merge::SplitMix64;
use crate::model::load::{
    ConfigError, Shapes, check_count, check_dims, check_layer_count, check_positive, check_range, limits,
};
use crate::model::ops;

mod family;
pub use family::FAMILY;

/// The longest encoder input or decoder output tpv runs through T5. T5's relative position
/// buckets set no hard limit, but its attention scores grow with the square of the length: 8×
/// the 512 tokens T5 was trained on is far past the paper's 256 and still fits in memory.
pub const T5_MAX_POSITIONS: usize = 4096;

/// `config.json` of a T5 model, field names as in transformers.
#[derive(Debug, Clone, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    /// Original T5: true (shared head, decoder output scaled by d_model^-½). v1.1/flan: false.
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub decoder_start_token_id: Option<u32>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<u32>,
}

fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}
fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FeedForward {
    Relu,
    GatedGelu,
}

impl T5Config {
    /// Checks every value before anything is built from it: counts from 1 to tpv's bounds
    /// ([`limits`]), position buckets the bucketing can fill (at least 2, and a max distance
    /// past the exact buckets: `relative_bucket` divides by the log of their ratio), a dropout
    /// rate below 1, a positive finite epsilon, the feed-forward kind, and decoder token ids
    /// inside the vocabulary.
    pub fn validate(&self) -> std::result::Result<(), ConfigError> {
        check_count("vocab_size", self.vocab_size, limits::VOCAB)?;
        check_count("d_model", self.d_model, limits::HIDDEN)?;
        check_count("d_kv", self.d_kv, limits::HEAD_DIM)?;
        check_count("d_ff", self.d_ff, limits::INTERMEDIATE)?;
        check_count("num_layers", self.num_layers, limits::LAYERS)?;
        if let Some(n) = self.num_decoder_layers {
            check_count("num_decoder_layers", n, limits::LAYERS)?;
        }
        check_count("num_heads", self.num_heads, limits::HEADS)?;
        let buckets = self.relative_attention_num_buckets;
        check_range("relative_attention_num_buckets", buckets, 2, limits::BUCKETS)?;
        // Past a direction's exact buckets (buckets / 2 in the decoder, / 4 in the encoder),
        // buckets are spaced by log(distance / exact) / log(max_distance / exact).
        let distance = self.relative_attention_max_distance;
        if distance <= buckets / 2 {
            return Err(ConfigError::new(
                "relative_attention_max_distance",
                distance,
                format!(
                    "above relative_attention_num_buckets / 2 ({}), the distances given exact buckets",
                    buckets / 2
                ),
            ));
        }
        check_count("relative_attention_max_distance", distance, limits::POSITIONS)?;
        if !(0.0..1.0).contains(&self.dropout_rate) {
            return Err(ConfigError::new(
                "dropout_rate",
                format!("{:?}", self.dropout_rate),
                "from 0 to below 1",
            ));
        }
        check_positive(
            "layer_norm_epsilon",
            self.layer_norm_epsilon,
            f64::from(f32::MIN_POSITIVE),
            1.0,
        )?;
        self.feed_forward()?;
        for (field, id) in [
            ("decoder_start_token_id", self.decoder_start_token_id),
            ("pad_token_id", self.pad_token_id),
        ] {
            if let Some(id) = id
                && id as usize >= self.vocab_size
            {
                return Err(ConfigError::new(
                    field,
                    id,
                    format!("below vocab_size ({})", self.vocab_size),
                ));
            }
        }
        Ok(())
    }

    /// The dimensions against the weights' shapes (embeddings, the first blocks' attention and
    /// feed-forward, the position-bias table, the number of blocks), before anything is built:
    /// the error names the field and the tensor.
    pub fn check_tensors(&self, shapes: &Shapes) -> std::result::Result<(), ConfigError> {
        let d = self.d_model;
        let embed = [("vocab_size", self.vocab_size), ("d_model", d)];
        check_dims(shapes, "shared.weight", &embed)?;
        if !self.tie_word_embeddings {
            check_dims(shapes, "lm_head.weight", &embed)?;
        }
        let inner = ("num_heads × d_kv", self.num_heads.saturating_mul(self.d_kv));
        let ff = ("d_ff", self.d_ff);
        for stack in ["encoder", "decoder"] {
            let block = format!("{stack}.block.0.layer");
            check_dims(
                shapes,
                &format!("{block}.0.SelfAttention.q.weight"),
                &[inner, ("d_model", d)],
            )?;
            check_dims(
                shapes,
                &format!("{block}.0.SelfAttention.relative_attention_bias.weight"),
                &[
                    ("relative_attention_num_buckets", self.relative_attention_num_buckets),
                    ("num_heads", self.num_heads),
                ],
            )?;
            let at = if stack == "decoder" { 2 } else { 1 };
            for wi in ["wi", "wi_0"] {
                check_dims(
                    shapes,
                    &format!("{block}.{at}.DenseReluDense.{wi}.weight"),
                    &[ff, ("d_model", d)],
                )?;
            }
        }
        check_layer_count(shapes, "encoder.block", "num_layers", self.num_layers)?;
        let (field, n) = match self.num_decoder_layers {
            Some(n) => ("num_decoder_layers", n),
            None => ("num_layers", self.num_layers),
        };
        check_layer_count(shapes, "decoder.block", field, n)
    }

    fn feed_forward(&self) -> std::result::Result<FeedForward, ConfigError> {
        match self.feed_forward_proj.as_str() {
            "relu" => Ok(FeedForward::Relu),
            "gated-gelu" | "gated-gelu_new" => Ok(FeedForward::GatedGelu),
            other => Err(ConfigError::new(
                "feed_forward_proj",
                format!("{other:?}"),
                "relu or gated-gelu (the kinds tpv implements)",
            )),
        }
    }
}

/// Training-mode state: dropout probability and the generator of its masks. `None` = eval mode.
pub struct Train<'a> {
    pub dropout: f32,
    pub rng: &'a mut SplitMix64,
}

fn drop(xs: &Tensor, train: &mut Option<Train<'_>>) -> Result<Tensor> {
    match train {
        Some(t) => ops::dropout(xs, t.dropout, t.rng),
        None => Ok(xs.clone()),
    }
}

/// HF's `_relative_position_bucket`.
fn relative_bucket(relative: i64, bidirectional: bool, num_buckets: usize, max_distance: usize) -> u32 {
    let mut buckets = 0i64;
    let mut n = num_buckets as i64;
    let mut rel = relative;
    if bidirectional {
        n /= 2;
        if rel > 0 {
            buckets += n;
        }
        rel = rel.abs();
    } else {
        rel = -rel.min(0);
    }
    let max_exact = n / 2;
    let bucket = if rel < max_exact {
        rel
    } else {
        let large = max_exact
            + ((rel as f32 / max_exact as f32).ln() / (max_distance as f32 / max_exact as f32).ln()
                * (n - max_exact) as f32) as i64;
        large.min(n - 1)
    };
    (buckets + bucket) as u32
}

#[derive(Debug, Clone)]
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    n_heads: usize,
    d_kv: usize,
    relative_attention_bias: Option<Tensor>,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &T5Config, has_bias: bool) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        Ok(Self {
            q: Linear::load(cfg.d_model, inner, false, vb.pp("q"))?,
            k: Linear::load(cfg.d_model, inner, false, vb.pp("k"))?,
            v: Linear::load(cfg.d_model, inner, false, vb.pp("v"))?,
            o: Linear::load(inner, cfg.d_model, false, vb.pp("o"))?,
            n_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
            relative_attention_bias: if has_bias {
                Some(vb.get(
                    (cfg.relative_attention_num_buckets, cfg.num_heads),
                    "relative_attention_bias.weight",
                )?)
            } else {
                None
            },
        })
    }

    fn heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        // A view: attention reads the heads where they lie.
        xs.reshape((b, t, self.n_heads, self.d_kv))?.transpose(1, 2)
    }

    /// `kv`: the keys/values source (self: `xs`; cross: encoder output, or cached projections).
    /// `bias`: position bias + mask, [B or 1, H or 1, Tq, Tk].
    fn forward(&self, xs: &Tensor, kv: KvSource<'_>, bias: &Tensor, train: &mut Option<Train<'_>>) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let q = self.heads(&ops::linear(&self.q, xs)?)?;
        let (k, v) = match kv {
            KvSource::Project(src) => (
                self.heads(&ops::linear(&self.k, src)?)?,
                self.heads(&ops::linear(&self.v, src)?)?,
            ),
            KvSource::Cached(entry, src) => {
                let (k, v) = (
                    self.heads(&ops::linear(&self.k, src)?)?,
                    self.heads(&ops::linear(&self.v, src)?)?,
                );
                let (k, v) = match &entry.0 {
                    Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
                    None => (k, v),
                };
                entry.0 = Some((k.clone(), v.clone()));
                (k, v)
            }
            KvSource::Fixed(k, v) => (k.clone(), v.clone()),
        };
        // T5 does not scale the scores (it is folded into the initialization).
        let dropout = train.as_mut().map(|t| (t.dropout, &mut *t.rng));
        let out = ops::attention(&q, &k, &v, 1.0, Some(bias), dropout)?
            .transpose(1, 2)?
            .reshape((b, t, self.n_heads * self.d_kv))?;
        ops::linear(&self.o, &out)
    }

    /// Position bias [1, H, Tq, Tk] for queries at `q0..q0+tq` and keys `0..tk`.
    fn position_bias(&self, q0: usize, tq: usize, tk: usize, bidirectional: bool, cfg: &T5Config) -> Result<Tensor> {
        let Some(table) = &self.relative_attention_bias else {
            candle_core::bail!("position bias asked of a layer without relative_attention_bias");
        };
        let buckets: Vec<u32> = (0..tq)
            .flat_map(|qi| {
                (0..tk).map(move |kj| {
                    relative_bucket(
                        kj as i64 - (q0 + qi) as i64,
                        bidirectional,
                        cfg.relative_attention_num_buckets,
                        cfg.relative_attention_max_distance,
                    )
                })
            })
            .collect();
        let idx = Tensor::from_vec(buckets, tq * tk, table.device())?;
        // [Tq·Tk, H] → [1, H, Tq, Tk]
        table
            .index_select(&idx, 0)?
            .reshape((tq, tk, self.n_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)
    }
}

enum KvSource<'a> {
    Project(&'a Tensor),
    Cached(&'a mut KvEntry, &'a Tensor),
    Fixed(&'a Tensor, &'a Tensor),
}

#[derive(Debug, Clone, Default)]
struct KvEntry(Option<(Tensor, Tensor)>);

#[derive(Debug, Clone)]
struct Ff {
    kind: FeedForward,
    wi: Option<Linear>,
    wi_0: Option<Linear>,
    wi_1: Option<Linear>,
    wo: Linear,
}

impl Ff {
    fn load(vb: VarBuilder, cfg: &T5Config, kind: FeedForward) -> Result<Self> {
        let (d, f) = (cfg.d_model, cfg.d_ff);
        let lin = |i, o, n| Linear::load(i, o, false, vb.pp(n));
        Ok(match kind {
            FeedForward::Relu => Self {
                kind,
                wi: Some(lin(d, f, "wi")?),
                wi_0: None,
                wi_1: None,
                wo: lin(f, d, "wo")?,
            },
            FeedForward::GatedGelu => Self {
                kind,
                wi: None,
                wi_0: Some(lin(d, f, "wi_0")?),
                wi_1: Some(lin(d, f, "wi_1")?),
                wo: lin(f, d, "wo")?,
            },
        })
    }

    fn forward(&self, xs: &Tensor, train: &mut Option<Train<'_>>) -> Result<Tensor> {
        let h = match (self.kind, &self.wi, &self.wi_0, &self.wi_1) {
            (FeedForward::Relu, Some(wi), _, _) => {
                let dropout = train.as_mut().map(|t| (t.dropout, &mut *t.rng));
                return ops::relu_ff(wi, &self.wo, xs, dropout);
            }
            (FeedForward::GatedGelu, _, Some(w0), Some(w1)) => {
                (ops::gelu_tanh(&ops::linear(w0, xs)?)? * ops::linear(w1, xs)?)?
            }
            _ => candle_core::bail!("feed-forward weights missing"),
        };
        ops::linear(&self.wo, &drop(&h, train)?)
    }
}

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    self_norm: Tensor,
    cross: Option<(Attention, Tensor)>,
    ff: Ff,
    ff_norm: Tensor,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &T5Config, decoder: bool, first: bool, ff: FeedForward) -> Result<Self> {
        let d = cfg.d_model;
        let l = vb.pp("layer");
        let cross = if decoder {
            Some((
                Attention::load(l.pp("1").pp("EncDecAttention"), cfg, false)?,
                l.pp("1").get(d, "layer_norm.weight")?,
            ))
        } else {
            None
        };
        let ff_idx = if decoder { "2" } else { "1" };
        Ok(Self {
            self_attn: Attention::load(l.pp("0").pp("SelfAttention"), cfg, first)?,
            self_norm: l.pp("0").get(d, "layer_norm.weight")?,
            cross,
            ff: Ff::load(l.pp(ff_idx).pp("DenseReluDense"), cfg, ff)?,
            ff_norm: l.pp(ff_idx).get(d, "layer_norm.weight")?,
        })
    }
}

/// Cross-attention keys/values and self-attention caches of a decoding batch.
pub struct DecoderCache {
    self_kv: Vec<KvEntry>,
    cross_kv: Vec<(Tensor, Tensor)>,
    len: usize,
}

/// A T5 model with frozen weights.
#[derive(Debug, Clone)]
pub struct T5 {
    shared: Tensor,
    encoder: Vec<Block>,
    encoder_norm: Tensor,
    decoder: Vec<Block>,
    decoder_norm: Tensor,
    lm_head: Linear,
    scale_output: bool,
    pub cfg: T5Config,
}

impl T5 {
    pub fn load(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        cfg.validate()?;
        let ff = cfg.feed_forward()?;
        let shared = vb.get((cfg.vocab_size, cfg.d_model), "shared.weight")?;
        let stack = |name: &str, n: usize, decoder: bool| -> Result<(Vec<Block>, Tensor)> {
            let v = vb.pp(name);
            let blocks = (0..n)
                .map(|i| Block::load(v.pp(format!("block.{i}")), cfg, decoder, i == 0, ff))
                .collect::<Result<Vec<_>>>()?;
            Ok((blocks, v.get(cfg.d_model, "final_layer_norm.weight")?))
        };
        let (encoder, encoder_norm) = stack("encoder", cfg.num_layers, false)?;
        let (decoder, decoder_norm) = stack("decoder", cfg.num_decoder_layers.unwrap_or(cfg.num_layers), true)?;
        let lm_head = if cfg.tie_word_embeddings {
            shared.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.d_model), "lm_head.weight")?
        };
        let lm_head = Linear::new(&candle_nn::Linear::new(lm_head, None))?;
        Ok(Self {
            shared,
            encoder,
            encoder_norm,
            decoder,
            decoder_norm,
            lm_head,
            scale_output: cfg.tie_word_embeddings,
            cfg: cfg.clone(),
        })
    }

    pub fn device(&self) -> &Device {
        self.shared.device()
    }

    pub fn dtype(&self) -> DType {
        self.shared.dtype()
    }

    pub fn hidden_size(&self) -> usize {
        self.cfg.d_model
    }

    /// The input embedding matrix [V, d].
    pub fn embeddings(&self) -> &Tensor {
        &self.shared
    }

    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.cfg.d_model);
        self.shared.index_select(&ids.flatten_all()?, 0)?.reshape(shape)
    }

    fn eps(&self) -> f64 {
        self.cfg.layer_norm_epsilon
    }

    /// Encoder over `embeds` [B, T, d] with `valid[b][t]` marking real columns; returns the final
    /// hidden states and the additive key mask [B, 1, 1, T] for cross-attention.
    pub fn encode(
        &self,
        embeds: &Tensor,
        valid: &[Vec<bool>],
        mut train: Option<Train<'_>>,
    ) -> Result<(Tensor, Tensor)> {
        let (b, t, _) = embeds.dims3()?;
        let mask: Vec<f32> = valid
            .iter()
            .flat_map(|v| v.iter().map(|&ok| if ok { 0.0 } else { f32::MIN }))
            .collect();
        let mask = ops::additive_mask(mask, (b, 1, 1, t), embeds.dtype(), embeds.device())?;
        let bias = match self.encoder.first() {
            Some(first) => first
                .self_attn
                .position_bias(0, t, t, true, &self.cfg)?
                .broadcast_add(&mask)?,
            None => mask.clone(),
        };
        let mut xs = drop(embeds, &mut train)?;
        for block in &self.encoder {
            let h = ops::rms_norm(&xs, &block.self_norm, self.eps())?;
            let a = block.self_attn.forward(&h, KvSource::Project(&h), &bias, &mut train)?;
            xs = (xs + drop(&a, &mut train)?)?;
            let h = ops::rms_norm(&xs, &block.ff_norm, self.eps())?;
            xs = (&xs + drop(&block.ff.forward(&h, &mut train)?, &mut train)?)?;
        }
        let out = drop(&ops::rms_norm(&xs, &self.encoder_norm, self.eps())?, &mut train)?;
        Ok((out, mask))
    }

    /// Decoder with teacher forcing over `ids` [B, T] (right-padded; causal attention keeps real
    /// positions from seeing the padding), returning hidden states [B, T, d] before the head.
    pub fn decode(
        &self,
        ids: &Tensor,
        enc: &Tensor,
        enc_mask: &Tensor,
        mut train: Option<Train<'_>>,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let causal: Vec<f32> = (0..t)
            .flat_map(|q| (0..t).map(move |k| if k <= q { 0.0 } else { f32::MIN }))
            .collect();
        let causal = ops::additive_mask(causal, (1, 1, t, t), self.dtype(), ids.device())?;
        let bias = match self.decoder.first() {
            Some(first) => first
                .self_attn
                .position_bias(0, t, t, false, &self.cfg)?
                .broadcast_add(&causal)?,
            None => causal,
        };
        let mut xs = drop(&self.embed(ids)?, &mut train)?;
        for block in &self.decoder {
            let h = ops::rms_norm(&xs, &block.self_norm, self.eps())?;
            let a = block.self_attn.forward(&h, KvSource::Project(&h), &bias, &mut train)?;
            xs = (xs + drop(&a, &mut train)?)?;
            if let Some((cross, norm)) = &block.cross {
                let h = ops::rms_norm(&xs, norm, self.eps())?;
                let c = cross.forward(&h, KvSource::Project(enc), enc_mask, &mut train)?;
                xs = (xs + drop(&c, &mut train)?)?;
            }
            let h = ops::rms_norm(&xs, &block.ff_norm, self.eps())?;
            xs = (&xs + drop(&block.ff.forward(&h, &mut train)?, &mut train)?)?;
        }
        drop(&ops::rms_norm(&xs, &self.decoder_norm, self.eps())?, &mut train)
    }

    /// Logits of decoder hidden states [.., d] → [.., V].
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let h = if self.scale_output {
            (hidden * (self.cfg.d_model as f64).powf(-0.5))?
        } else {
            hidden.clone()
        };
        ops::linear(&self.lm_head, &h)
    }

    /// Starts greedy decoding: cross-attention keys/values of every decoder layer.
    fn start_decoding(&self, enc: &Tensor) -> Result<DecoderCache> {
        let cross_kv = self
            .decoder
            .iter()
            .map(|b| match &b.cross {
                Some((c, _)) => Ok((c.heads(&ops::linear(&c.k, enc)?)?, c.heads(&ops::linear(&c.v, enc)?)?)),
                None => candle_core::bail!("decoder block without cross-attention"),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DecoderCache {
            self_kv: vec![KvEntry::default(); self.decoder.len()],
            cross_kv,
            len: 0,
        })
    }

    /// One decoding step for ids [B, 1] at position `cache.len`; returns hidden [B, 1, d].
    fn decode_step(&self, ids: &Tensor, enc_mask: &Tensor, cache: &mut DecoderCache) -> Result<Tensor> {
        let pos = cache.len;
        let bias = match self.decoder.first() {
            Some(first) => first.self_attn.position_bias(pos, 1, pos + 1, false, &self.cfg)?,
            None => Tensor::zeros((1, 1, 1, pos + 1), self.dtype(), self.device())?,
        };
        let mut xs = self.embed(ids)?;
        for (i, block) in self.decoder.iter().enumerate() {
            let h = ops::rms_norm(&xs, &block.self_norm, self.eps())?;
            let a = block
                .self_attn
                .forward(&h, KvSource::Cached(&mut cache.self_kv[i], &h), &bias, &mut None)?;
            xs = (xs + a)?;
            if let Some((cross, norm)) = &block.cross {
                let h = ops::rms_norm(&xs, norm, self.eps())?;
                let (k, v) = &cache.cross_kv[i];
                xs = (&xs + cross.forward(&h, KvSource::Fixed(k, v), enc_mask, &mut None)?)?;
            }
            let h = ops::rms_norm(&xs, &block.ff_norm, self.eps())?;
            xs = (&xs + block.ff.forward(&h, &mut None)?)?;
        }
        cache.len += 1;
        ops::rms_norm(&xs, &self.decoder_norm, self.eps())
    }
}

/// One seq2seq example: encoder input ids and target ids (ending with EOS, as T5 targets do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
}

/// Loss of a batch (mean NLL over all target tokens), each example's mean, and its target count.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub loss: Tensor,
    /// The NLL of every target token, examples in order (read by [`Self::per_example`]).
    pub per_token: Tensor,
    pub counts: Vec<usize>,
    /// Decoder logits [B, T, V] (right-padded targets).
    pub logits: Tensor,
}

impl LossOutput {
    /// Each example's mean NLL (NaN for one without targets): one read of the device.
    pub fn per_example(&self) -> Result<Vec<f32>> {
        crate::model::per_example_means(&self.per_token, &self.counts)
    }
}

/// Encoder input `[prompt][tokens][pads]` (right-padded, as HF tokenizers pad T5), a prompt per
/// row (rows may carry different prompts, of any length).
fn encode_prompted(
    model: &T5,
    prompts: &[&Tensor],
    inputs: &[&[u32]],
    train: Option<Train<'_>>,
) -> Result<(Tensor, Tensor)> {
    let (lens, width) = crate::model::row_lengths(prompts, inputs, T5_MAX_POSITIONS)?;
    let d = model.hidden_size();
    let mut rows = Vec::with_capacity(inputs.len());
    let mut valid = Vec::with_capacity(inputs.len());
    for ((ids, prompt), &len) in inputs.iter().zip(prompts).zip(&lens) {
        let mut parts = Vec::with_capacity(3);
        if prompt.dim(0)? > 0 {
            parts.push(prompt.to_dtype(model.dtype())?);
        }
        if !ids.is_empty() {
            parts.push(model.embed(&Tensor::from_slice(ids, ids.len(), model.device())?)?);
        }
        if width > len {
            parts.push(Tensor::zeros((width - len, d), model.dtype(), model.device())?);
        }
        rows.push(Tensor::cat(&parts, 0)?);
        valid.push((0..width).map(|c| c < len).collect::<Vec<_>>());
    }
    model.encode(&Tensor::stack(&rows, 0)?, &valid, train)
}

/// Teacher-forced NLL of `targets` (one per encoder row): the mean over all target tokens, and
/// each row's summed NLL and token count.
fn decode_nll(
    model: &T5,
    enc: &Tensor,
    enc_mask: &Tensor,
    targets: &[&[u32]],
    train: Option<Train<'_>>,
) -> Result<(Tensor, Tensor, Vec<usize>, Tensor)> {
    let start = model.cfg.decoder_start_token_id.unwrap_or(0);
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let longest = targets.iter().map(|t| t.len()).max().unwrap_or(0);
    if longest == 0 {
        candle_core::bail!("the batch has no target tokens");
    }
    crate::model::check_positions(0, longest, 0, T5_MAX_POSITIONS)?;
    let b = targets.len();
    let mut dec_ids = Vec::with_capacity(b * longest);
    let (mut rows, mut picked_targets, mut counts) = (Vec::new(), Vec::new(), Vec::new());
    for (i, target) in targets.iter().enumerate() {
        dec_ids.push(start);
        dec_ids.extend(target.iter().take(longest - 1));
        dec_ids.extend(std::iter::repeat_n(pad, longest - 1 - target.len().min(longest - 1)));
        for (j, &tok) in target.iter().enumerate() {
            rows.push((i * longest + j) as u32);
            picked_targets.push(tok);
        }
        counts.push(target.len());
    }
    let dec_ids = Tensor::from_vec(dec_ids, (b, longest), model.device())?;
    let hidden = model.decode(&dec_ids, enc, enc_mask, train)?;
    let logits = model.logits(&hidden)?;
    let picked = logits.reshape((b * longest, model.cfg.vocab_size))?;
    let picked = picked.index_select(&Tensor::from_slice(&rows, rows.len(), model.device())?, 0)?;
    let (loss, per_row) = ops::nll(
        &picked,
        &Tensor::from_slice(&picked_targets, picked_targets.len(), model.device())?,
    )?;
    Ok((loss, per_row, counts, logits))
}

/// Teacher-forced loss of `examples` under the prompt ([R, d]; a `Var` for training). `train`
/// turns dropout on.
pub fn loss(model: &T5, prompt: &Tensor, examples: &[Example], train: Option<Train<'_>>) -> Result<LossOutput> {
    loss_rows(model, &vec![prompt; examples.len()], examples, train)
}

/// [`loss`] with a prompt per example (a batch that mixes prompts).
pub fn loss_rows(
    model: &T5,
    prompts: &[&Tensor],
    examples: &[Example],
    mut train: Option<Train<'_>>,
) -> Result<LossOutput> {
    let inputs: Vec<&[u32]> = examples.iter().map(|e| e.input.as_slice()).collect();
    let enc_train = train.as_mut().map(|t| Train {
        dropout: t.dropout,
        rng: &mut *t.rng,
    });
    let (enc, enc_mask) = encode_prompted(model, prompts, &inputs, enc_train)?;
    teacher_forced(model, &enc, &enc_mask, examples, train)
}

/// The loss of `examples`' targets given their encoder states.
fn teacher_forced(
    model: &T5,
    enc: &Tensor,
    enc_mask: &Tensor,
    examples: &[Example],
    train: Option<Train<'_>>,
) -> Result<LossOutput> {
    let targets: Vec<&[u32]> = examples.iter().map(|e| e.target.as_slice()).collect();
    let (loss, per_token, counts, logits) = decode_nll(model, enc, enc_mask, &targets, train)?;
    Ok(LossOutput {
        loss,
        per_token,
        counts,
        logits,
    })
}

/// [`loss_rows`] (no dropout, no gradient) and [`greedy_rows`] of the same rows from one encoder
/// pass, which is most of T5's work: the loss decodes the targets teacher-forced, the greedy
/// decoding starts from the same encoder states.
pub fn loss_and_greedy_rows(
    model: &T5,
    prompts: &[&Tensor],
    examples: &[Example],
    max_new: usize,
) -> Result<(LossOutput, Vec<Vec<u32>>)> {
    crate::model::check_positions(0, 0, max_new, T5_MAX_POSITIONS)?;
    let detached: Vec<Tensor> = prompts.iter().map(|p| p.detach()).collect();
    let detached: Vec<&Tensor> = detached.iter().collect();
    let inputs: Vec<&[u32]> = examples.iter().map(|e| e.input.as_slice()).collect();
    let (enc, enc_mask) = encode_prompted(model, &detached, &inputs, None)?;
    let loss = teacher_forced(model, &enc, &enc_mask, examples, None)?;
    Ok((loss, decode_greedy(model, &enc, &enc_mask, max_new)?))
}

/// Rank classification: the summed NLL of every candidate target (`candidates[j]`, ending with
/// `</s>` as T5 targets do) for each input under its row's prompt, `out[b][j]`. The encoder runs
/// once per input; the decoder scores all candidates of all inputs as one batch.
pub fn rank(model: &T5, prompts: &[&Tensor], inputs: &[&[u32]], candidates: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
    if candidates.is_empty() || candidates.iter().any(Vec::is_empty) {
        candle_core::bail!("rank scoring needs candidates with at least one token each");
    }
    let detached: Vec<Tensor> = prompts.iter().map(|p| p.detach()).collect();
    let detached: Vec<&Tensor> = detached.iter().collect();
    let (enc, enc_mask) = encode_prompted(model, &detached, inputs, None)?;
    let l = candidates.len();
    let idx: Vec<u32> = (0..inputs.len() as u32)
        .flat_map(|i| std::iter::repeat_n(i, l))
        .collect();
    let idx = Tensor::from_slice(&idx, idx.len(), model.device())?;
    let (enc, enc_mask) = (enc.index_select(&idx, 0)?, enc_mask.index_select(&idx, 0)?);
    let targets: Vec<&[u32]> = (0..inputs.len())
        .flat_map(|_| candidates.iter().map(Vec::as_slice))
        .collect();
    let (_, per_token, counts, _) = decode_nll(model, &enc, &enc_mask, &targets, None)?;
    let sums = crate::model::group_sums(&crate::model::host::flat_f32(&per_token)?, &counts);
    Ok(sums.chunks(l).map(<[f32]>::to_vec).collect())
}

/// Greedy decoding with a KV cache: at most `max_new` tokens per input, stopping at EOS (not
/// included in the result).
pub fn greedy(model: &T5, prompt: &Tensor, inputs: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>> {
    greedy_rows(model, &vec![prompt; inputs.len()], inputs, max_new)
}

/// [`greedy`] with a prompt per input.
pub fn greedy_rows(model: &T5, prompts: &[&Tensor], inputs: &[Vec<u32>], max_new: usize) -> Result<Vec<Vec<u32>>> {
    crate::model::check_positions(0, 0, max_new, T5_MAX_POSITIONS)?;
    let seqs: Vec<&[u32]> = inputs.iter().map(Vec::as_slice).collect();
    let detached: Vec<Tensor> = prompts.iter().map(|p| p.detach()).collect();
    let detached: Vec<&Tensor> = detached.iter().collect();
    let (enc, enc_mask) = encode_prompted(model, &detached, &seqs, None)?;
    decode_greedy(model, &enc, &enc_mask, max_new)
}

/// Greedy decoding with a KV cache from encoder states [B, S, d].
fn decode_greedy(model: &T5, enc: &Tensor, enc_mask: &Tensor, max_new: usize) -> Result<Vec<Vec<u32>>> {
    let mut cache = model.start_decoding(enc)?;
    let eos = model.cfg.eos_token_id.unwrap_or(1);
    let b = enc.dim(0)?;
    let mut next = vec![model.cfg.decoder_start_token_id.unwrap_or(0); b];
    let mut out = vec![Vec::new(); b];
    let mut done = vec![false; b];
    for _ in 0..max_new {
        let ids = Tensor::from_slice(&next, (b, 1), model.device())?;
        let hidden = model.decode_step(&ids, enc_mask, &mut cache)?;
        next = crate::model::host::vec1(&model.logits(&hidden)?.squeeze(1)?.argmax(D::Minus1)?)?;
        for (i, &tok) in next.iter().enumerate() {
            if done[i] {
                continue;
            }
            if tok == eos {
                done[i] = true;
            } else {
                out[i].push(tok);
            }
        }
        if done.iter().all(|d| *d) {
            break;
        }
    }
    Ok(out)
}

/// Greedy decoding by recomputing the whole decoder at every step (no cache), to check [`greedy`].
pub fn greedy_recompute(model: &T5, prompt: &Tensor, input: &[u32], max_new: usize) -> Result<Vec<u32>> {
    let prompt = prompt.detach();
    let (enc, enc_mask) = encode_prompted(model, &[&prompt], &[input], None)?;
    let eos = model.cfg.eos_token_id.unwrap_or(1);
    let mut dec = vec![model.cfg.decoder_start_token_id.unwrap_or(0)];
    let mut out = Vec::new();
    for _ in 0..max_new {
        let ids = Tensor::from_slice(&dec, (1, dec.len()), model.device())?;
        let hidden = model.decode(&ids, &enc, &enc_mask, None)?;
        let last = hidden.narrow(1, dec.len() - 1, 1)?;
        let tok: u32 = crate::model::host::scalar(&model.logits(&last)?.flatten_all()?.argmax(0)?)?;
        if tok == eos {
            break;
        }
        out.push(tok);
        dec.push(tok);
    }
    Ok(out)
}
