//! The decoder-only transformer every decoder family runs (LLaMA 2/3/3.1, SmolLM2, Mistral,
//! Qwen2/2.5, Qwen3, Phi-3, Gemma 2/3): an input-embedding entry point, per-example positions, a
//! padding mask, sliding-window layers, a KV cache and hidden states at every position. What
//! differs between families is data ([`config::Arch`]), set by each family's folder.
//!
//! Parameter names mirror the HF checkpoint (`model.layers.N.self_attn.q_proj`, …). Every op has a
//! backward pass (see [`super::ops`]).

pub mod config;
pub mod spec;

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::VarBuilder;

use self::config::{Activation, Arch, DecoderConfig, EmbedScale};
pub use self::config::{RopeParameters, RopeScaling, TokenIds, inv_freq};
use self::spec::DecoderSpec;
use super::load::{ConfigError, check_positive};
use super::ops;
use super::ops::FrozenLinear as Linear;

/// An RMSNorm weight, as the family applies it: Gemma's (1 + w) is stored as such.
fn norm_weight(vb: &VarBuilder, size: usize, name: &str, arch: &Arch) -> Result<Tensor> {
    let w = vb.get(size, name)?;
    if arch.norm_plus_one { w + 1.0 } else { Ok(w) }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// Qwen3's and Gemma 3's RMSNorm over each head's queries and keys.
    qk_norm: Option<(Tensor, Tensor)>,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f64,
    softcap: Option<f64>,
    eps: f64,
}

impl Attention {
    fn load(vb: VarBuilder, cfg: &DecoderConfig, arch: &Arch) -> Result<Self> {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
        let lin = |i, o, bias, name| Linear::load(i, o, bias, vb.pp(name));
        let qk_norm = if arch.qk_norm {
            Some((
                norm_weight(&vb, hd, "q_norm.weight", arch)?,
                norm_weight(&vb, hd, "k_norm.weight", arch)?,
            ))
        } else {
            None
        };
        Ok(Self {
            q_proj: lin(d, h * hd, arch.qkv_bias, "q_proj")?,
            k_proj: lin(d, kv * hd, arch.qkv_bias, "k_proj")?,
            v_proj: lin(d, kv * hd, arch.qkv_bias, "v_proj")?,
            o_proj: lin(h * hd, d, arch.o_bias, "o_proj")?,
            qk_norm,
            n_heads: h,
            n_kv_heads: kv,
            head_dim: hd,
            scale: arch.attn_scale,
            softcap: arch.attn_softcap,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor, rot: &Rotary, mask: &Tensor, cache: Option<&mut KvEntry>) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        let heads = |proj: &Linear, n, norm: Option<&Tensor>| -> Result<Tensor> {
            let x = ops::linear(proj, xs)?.reshape((b, t, n, self.head_dim))?;
            let x = match norm {
                Some(w) => ops::rms_norm(&x, w, self.eps)?,
                None => x,
            };
            x.transpose(1, 2)?.contiguous()
        };
        let (qn, kn) = match &self.qk_norm {
            Some((q, k)) => (Some(q), Some(k)),
            None => (None, None),
        };
        let q = ops::rope(&heads(&self.q_proj, self.n_heads, qn)?, &rot.cos, &rot.sin)?;
        let mut k = ops::rope(&heads(&self.k_proj, self.n_kv_heads, kn)?, &rot.cos, &rot.sin)?;
        let mut v = heads(&self.v_proj, self.n_kv_heads, None)?;
        if let Some(entry) = cache {
            if let Some((pk, pv)) = &entry.0 {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            entry.0 = Some((k.clone(), v.clone()));
        }
        let out = match self.softcap {
            Some(cap) => ops::attention_softcapped(&q, &k, &v, self.scale, cap, mask)?,
            None => ops::attention(&q, &k, &v, self.scale, Some(mask), None)?,
        };
        let out = out.transpose(1, 2)?.reshape((b, t, self.n_heads * self.head_dim))?;
        ops::linear(&self.o_proj, &out)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    activation: Activation,
}

impl Mlp {
    fn load(vb: VarBuilder, cfg: &DecoderConfig, arch: &Arch) -> Result<Self> {
        let (d, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(d, i, arch.mlp_bias, vb.pp("gate_proj"))?,
            up_proj: Linear::load(d, i, arch.mlp_bias, vb.pp("up_proj"))?,
            down_proj: Linear::load(i, d, arch.mlp_bias, vb.pp("down_proj"))?,
            activation: arch.activation,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self.activation {
            Activation::Silu => ops::swiglu_ff(&self.gate_proj, &self.up_proj, &self.down_proj, xs),
            Activation::GeluTanh => ops::geglu_ff(&self.gate_proj, &self.up_proj, &self.down_proj, xs),
        }
    }
}

/// A layer's norms: before attention and before the feed-forward block, and (Gemma) on their
/// outputs too.
#[derive(Debug, Clone)]
struct Norms {
    input: Tensor,
    pre_ff: Tensor,
    post_attn: Option<Tensor>,
    post_ff: Option<Tensor>,
}

#[derive(Debug, Clone)]
struct Block {
    self_attn: Attention,
    mlp: Mlp,
    norms: Norms,
    eps: f64,
}

impl Block {
    fn load(vb: VarBuilder, cfg: &DecoderConfig, arch: &Arch) -> Result<Self> {
        let d = cfg.hidden_size;
        let norm = |name: &str| norm_weight(&vb, d, name, arch);
        // LLaMA's `post_attention_layernorm` is the norm before the feed-forward block; Gemma's
        // is on the attention output, with `pre_feedforward_layernorm` before the block.
        let norms = if arch.sandwich_norms {
            Norms {
                input: norm("input_layernorm.weight")?,
                pre_ff: norm("pre_feedforward_layernorm.weight")?,
                post_attn: Some(norm("post_attention_layernorm.weight")?),
                post_ff: Some(norm("post_feedforward_layernorm.weight")?),
            }
        } else {
            Norms {
                input: norm("input_layernorm.weight")?,
                pre_ff: norm("post_attention_layernorm.weight")?,
                post_attn: None,
                post_ff: None,
            }
        };
        Ok(Self {
            self_attn: Attention::load(vb.pp("self_attn"), cfg, arch)?,
            mlp: Mlp::load(vb.pp("mlp"), cfg, arch)?,
            norms,
            eps: cfg.rms_norm_eps,
        })
    }

    fn forward(&self, xs: &Tensor, rot: &Rotary, mask: &Tensor, cache: Option<&mut KvEntry>) -> Result<Tensor> {
        let post = |y: Tensor, w: &Option<Tensor>| match w {
            Some(w) => ops::rms_norm(&y, w, self.eps),
            None => Ok(y),
        };
        let h = ops::rms_norm(xs, &self.norms.input, self.eps)?;
        let a = post(self.self_attn.forward(&h, rot, mask, cache)?, &self.norms.post_attn)?;
        let xs = (xs + a)?;
        let h = ops::rms_norm(&xs, &self.norms.pre_ff, self.eps)?;
        let m = post(self.mlp.forward(&h)?, &self.norms.post_ff)?;
        xs + m
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
    /// `positions[b][s]`: the rotary position of key column s of sequence b (sliding windows
    /// count positions).
    positions: Vec<Vec<u32>>,
}

impl KvCache {
    pub fn new(num_layers: usize, batch: usize) -> Self {
        Self {
            layers: vec![KvEntry::default(); num_layers],
            valid: vec![Vec::new(); batch],
            positions: vec![Vec::new(); batch],
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
        for p in &mut self.positions {
            p.truncate(len);
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
        let positions = rows
            .iter()
            .map(|&r| self.positions.get(r as usize).cloned().unwrap_or_default())
            .collect();
        Ok(Self {
            layers,
            valid,
            positions,
        })
    }
}

/// A decoder-only causal LM with frozen weights.
#[derive(Debug, Clone)]
pub struct Decoder {
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: Tensor,
    lm_head: Linear,
    /// Inverse frequencies of each rotary table ([`config::Arch::ropes`]).
    inv_freqs: Vec<Vec<f32>>,
    pub spec: DecoderSpec,
}

/// The rotary tables and masks of one pass, one per kind of layer.
struct Pass {
    rots: Vec<Rotary>,
    /// The mask of global layers, and of each window size.
    masks: Vec<(Option<usize>, Tensor)>,
}

impl Pass {
    fn for_layer(&self, kind: config::LayerKind) -> Result<(&Rotary, &Tensor)> {
        let rot = self.rots.get(kind.rope);
        let mask = self.masks.iter().find(|(w, _)| *w == kind.window).map(|(_, m)| m);
        match (rot, mask) {
            (Some(r), Some(m)) => Ok((r, m)),
            _ => candle_core::bail!("no rotary table or mask for a layer"),
        }
    }
}

impl Decoder {
    /// Loads from HF-named tensors (`model.embed_tokens.weight`, …); a tied head reuses the
    /// input embeddings.
    pub fn load(vb: VarBuilder, spec: &DecoderSpec) -> Result<Self> {
        let (cfg, arch) = (&spec.cfg, &spec.arch);
        cfg.validate()?;
        let m = vb.pp("model");
        let raw = m.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(m.pp(format!("layers.{i}")), cfg, arch))
            .collect::<Result<Vec<_>>>()?;
        let norm = norm_weight(&m, cfg.hidden_size, "norm.weight", arch)?;
        let lm_head = if cfg.tie_word_embeddings {
            raw.clone()
        } else {
            vb.get((cfg.vocab_size, cfg.hidden_size), "lm_head.weight")?
        };
        let lm_head = Linear::new(&candle_nn::Linear::new(lm_head, None))?;
        let embed_tokens = match arch.embed_scale {
            EmbedScale::None => raw,
            // As Gemma's embedding module: the scale in the model's dtype, times the rows.
            EmbedScale::Tokens(s) => raw.affine(dtype_round(s, raw.dtype()), 0.0)?,
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freqs: arch
                .ropes
                .iter()
                .map(|(theta, scaling)| inv_freq(cfg.head_dim(), *theta, scaling))
                .collect(),
            spec: spec.clone(),
        })
    }

    /// Divides the rotary inverse frequencies by per-dimension factors: how GGUF files store
    /// LLaMA-3.1's rope scaling (`rope_freqs.weight`, head_dim/2 values).
    pub fn set_rope_freq_factors(&mut self, factors: &[f32]) -> Result<()> {
        for (i, &d) in factors.iter().enumerate() {
            // Each divides a rotary frequency, as a linear rope factor does.
            check_positive(
                &format!("rope_freqs.weight[{i}]"),
                f64::from(d),
                config::MIN_ROPE_FACTOR,
                f64::from(f32::MAX),
            )
            .map_err(|e| ConfigError { file: "GGUF file", ..e })?;
        }
        for inv in &mut self.inv_freqs {
            if factors.len() != inv.len() {
                candle_core::bail!("rope_freqs has {} values, head_dim/2 is {}", factors.len(), inv.len());
            }
            for (f, d) in inv.iter_mut().zip(factors) {
                *f /= d;
            }
        }
        Ok(())
    }

    pub fn cfg(&self) -> &DecoderConfig {
        &self.spec.cfg
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub fn max_positions(&self) -> usize {
        self.spec.cfg.max_position_embeddings
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    pub fn hidden_size(&self) -> usize {
        self.spec.cfg.hidden_size
    }

    /// The rows token ids are looked up as [V, d] (origins are sampled from them).
    pub fn embeddings(&self) -> &Tensor {
        &self.embed_tokens
    }

    /// Embeddings of token ids, any shape → shape + [d].
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let mut shape = ids.dims().to_vec();
        shape.push(self.hidden_size());
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
        let mask = causal_mask(&keys, past, t);
        self.forward_masked_data(embeds, positions, mask, cache, valid)
    }

    /// Runs the decoder on `embeds` [B, T, d] with an explicit additive attention mask, the data
    /// of [B, 1, T, past + T] row-major (0 where a query column may see a key column, `f32::MIN`
    /// elsewhere; made on the host, as the windows' masks are derived from it there), and
    /// rotary `positions[b]` per column. With a cache, the new columns are appended to it, `valid`
    /// saying which are real tokens. For layouts a causal mask cannot express, such as several
    /// continuations of one input side by side ([`super::causal::rank`]). Sliding-window layers
    /// also hide keys `window` or more positions before the query.
    pub fn forward_masked(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        mask: Vec<f32>,
        cache: Option<&mut KvCache>,
        valid: &[Vec<bool>],
    ) -> Result<Tensor> {
        let (b, t, _) = embeds.dims3()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        if mask.len() != b * t * (past + t) {
            candle_core::bail!("a mask of {} values for [{b}, 1, {t}, {}]", mask.len(), past + t);
        }
        self.forward_masked_data(embeds, positions, mask, cache, valid)
    }

    fn forward_masked_data(
        &self,
        embeds: &Tensor,
        positions: &[Vec<u32>],
        mask: Vec<f32>,
        mut cache: Option<&mut KvCache>,
        valid: &[Vec<bool>],
    ) -> Result<Tensor> {
        let key_positions = key_positions(cache.as_deref(), positions);
        let pass = self.pass(embeds, positions, &key_positions, mask)?;
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let (rot, mask) = pass.for_layer(self.spec.arch.layers[i])?;
            let entry = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            xs = layer.forward(&xs, rot, mask, entry)?;
        }
        if let Some(c) = cache {
            for (row, v) in c.valid.iter_mut().zip(valid) {
                row.extend_from_slice(v);
            }
            c.positions = key_positions;
        }
        ops::rms_norm(&xs, &self.norm, self.spec.cfg.rms_norm_eps)
    }

    /// The rotary tables and masks of a pass of `t` columns over `keys[b]` key positions (cached
    /// and new), from `mask` (the global layers' additive mask [B, 1, T, S], as data).
    fn pass(&self, embeds: &Tensor, positions: &[Vec<u32>], keys: &[Vec<u32>], mask: Vec<f32>) -> Result<Pass> {
        let (b, t, _) = embeds.dims3()?;
        let s = keys.first().map_or(0, Vec::len);
        let dev = embeds.device();
        let to_tensor = |data: Vec<f32>| ops::additive_mask(data, (b, 1, t, s), embeds.dtype(), dev);
        let mut windows: Vec<Option<usize>> = self.spec.arch.layers.iter().map(|l| l.window).collect();
        windows.sort_unstable();
        windows.dedup();
        let mut masks = Vec::with_capacity(windows.len());
        for &w in windows.iter().flatten() {
            masks.push((Some(w), to_tensor(window_mask(&mask, positions, keys, w, t))?));
        }
        if windows.contains(&None) {
            masks.push((None, to_tensor(mask)?));
        }
        let rots = self
            .inv_freqs
            .iter()
            .map(|inv| rotary(inv, positions, t, dev, self.dtype()))
            .collect::<Result<_>>()?;
        Ok(Pass { rots, masks })
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
        let pass = self.pass(embeds, positions, positions, causal_mask(valid, 0, t))?;
        // Untracked inputs: no layer keeps its activations for a backward pass.
        let mut inputs = vec![embeds.detach()];
        for (i, layer) in self.layers.iter().enumerate() {
            let (rot, mask) = pass.for_layer(self.spec.arch.layers[i])?;
            let next = layer.forward(&inputs[inputs.len() - 1], rot, mask, None)?;
            inputs.push(next);
        }
        let Some(last) = inputs.pop() else {
            candle_core::bail!("no layer input")
        };
        let last = candle_core::Var::from_tensor(&last)?;
        let loss = head(&ops::rms_norm(
            last.as_tensor(),
            &self.norm,
            self.spec.cfg.rms_norm_eps,
        )?)?;
        let mut grad = gradient_of(&loss, &last)?;
        for (i, (layer, input)) in self.layers.iter().zip(&inputs).enumerate().rev() {
            let (rot, mask) = pass.for_layer(self.spec.arch.layers[i])?;
            let x = candle_core::Var::from_tensor(input)?;
            let y = layer.forward(x.as_tensor(), rot, mask, None)?;
            // d(Σ y·g)/dx is the upstream gradient g carried through the layer.
            grad = gradient_of(&(y * &grad)?.sum_all()?, &x)?;
        }
        Ok((loss.detach(), grad))
    }

    /// Logits of hidden states [.., d] → [.., V] (Gemma 2: soft-capped, cap · tanh(x / cap)).
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        let logits = ops::linear(&self.lm_head, hidden)?;
        match self.spec.arch.final_softcap {
            Some(cap) => (logits / cap)?.tanh()? * cap,
            None => Ok(logits),
        }
    }
}

/// `s` as the model's dtype holds it (transformers multiplies by a tensor of that dtype).
fn dtype_round(s: f64, dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => f64::from(half::bf16::from_f64(s)),
        DType::F16 => f64::from(half::f16::from_f64(s)),
        DType::F32 => f64::from(s as f32),
        _ => s,
    }
}

/// The rotary position of every key column of a pass: the cached ones', then the new columns'.
fn key_positions(cache: Option<&KvCache>, positions: &[Vec<u32>]) -> Vec<Vec<u32>> {
    positions
        .iter()
        .enumerate()
        .map(|(b, p)| {
            let mut k = cache.and_then(|c| c.positions.get(b)).cloned().unwrap_or_default();
            k.extend_from_slice(p);
            k
        })
        .collect()
}

/// `mask` [B, 1, T, S] with the keys at or beyond `window` positions before each query hidden
/// too (transformers' sliding window: a query sees the `window` latest positions, its own
/// included).
fn window_mask(mask: &[f32], queries: &[Vec<u32>], keys: &[Vec<u32>], window: usize, t: usize) -> Vec<f32> {
    let mut out = mask.to_vec();
    let s = keys.first().map_or(0, Vec::len);
    for (b, (qp, kp)) in queries.iter().zip(keys).enumerate() {
        for (q, &pq) in qp.iter().enumerate().take(t) {
            let row = (b * t + q) * s;
            for (k, &pk) in kp.iter().enumerate() {
                if i64::from(pq) - i64::from(pk) >= window as i64
                    && let Some(cell) = out.get_mut(row + k)
                {
                    *cell = f32::MIN;
                }
            }
        }
    }
    out
}

/// cos/sin of `inv_freq` at a batch of positions, [B, 1, T, head_dim].
fn rotary(inv_freq: &[f32], positions: &[Vec<u32>], t: usize, dev: &Device, dtype: DType) -> Result<Rotary> {
    let hd = 2 * inv_freq.len();
    let (mut cos, mut sin) = (Vec::with_capacity(positions.len() * t * hd), Vec::new());
    sin.reserve(positions.len() * t * hd);
    for row in positions {
        for &p in row {
            let freqs: Vec<f32> = inv_freq.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(freqs.iter().map(|x| x.cos()));
                sin.extend(freqs.iter().map(|x| x.sin()));
            }
        }
    }
    let shape = (positions.len(), 1, t, hd);
    Ok(Rotary {
        cos: Tensor::from_vec(cos, shape, dev)?.to_dtype(dtype)?,
        sin: Tensor::from_vec(sin, shape, dev)?.to_dtype(dtype)?,
    })
}

/// Additive mask [B, 1, T, S] for T new query columns after `past` cached ones: a query may see a
/// key at or before its own column that is a real token. Blocked cells get f32::MIN (as HF), not
/// −∞, so a row with nothing visible (a padding query) stays finite.
fn causal_mask(keys: &[Vec<bool>], past: usize, t: usize) -> Vec<f32> {
    let s = past + t;
    let mut data = Vec::with_capacity(keys.len() * t * s);
    for valid in keys {
        for q in 0..t {
            data.extend((0..s).map(|k| if valid[k] && k <= past + q { 0.0 } else { f32::MIN }));
        }
    }
    data
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
