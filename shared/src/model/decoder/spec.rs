//! A decoder-only family's checked configuration ([`DecoderSpec`]: the config and what the
//! family makes of it, its [`Arch`]) as a [`Spec`], and [`Decoder`] as a [`LanguageModel`]: the
//! heads of [`crate::model::causal`].

use std::any::Any;
use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Decoder;
use super::config::{Arch, DecoderConfig, EmbedScale, LayerKind};
use crate::eval::{Encoded, causal_examples};
use crate::model::family::{Dims, LanguageModel, Model, Spec};
use crate::model::load::{ConfigError, Shapes, check_dims};
use crate::model::t5::Train;
use crate::model::{Loss, causal};
use crate::prompt::TaskType;

/// Bytes a layer keeps per token for the backward pass, per unit of the hidden size, in 16-bit
/// precision: tpv's own footprint, measured with `tpv bench --short 0 --long 1` (docs/numbers.md).
/// LLaMA family (`--model llama31-8b-shaped --dtype bf16`, the composed ops every GPU runs): 5.9 GB
/// over the weights for 1 × 164 tokens × 32 layers at d = 4096. Megatron keeps 34 (Korthikanti et
/// al. 2022); candle keeps every intermediate of the composed ops. Used for every decoder family.
const ACTIVATION_BYTES_PER_D: f64 = 264.0;

/// A decoder-only model's config and its family's reading of it.
#[derive(Debug, Clone)]
pub struct DecoderSpec {
    pub cfg: DecoderConfig,
    pub arch: Arch,
}

impl Arch {
    /// LLaMA's reading of a config: biases from `attention_bias` (all four projections) and
    /// `mlp_bias`, plain RMSNorm, head_dim^-½, one rotary table, the layers' windows as
    /// `windows` reads them (after every value is checked: a layer count of 2^60 never sizes
    /// anything). Other families start from it and change what differs.
    pub fn llama(
        model_type: &'static str,
        cfg: &DecoderConfig,
        windows: impl FnOnce(&DecoderConfig) -> std::result::Result<Vec<Option<usize>>, ConfigError>,
    ) -> std::result::Result<Self, ConfigError> {
        cfg.validate()?;
        let windows = windows(cfg)?;
        Ok(Self {
            model_type,
            qkv_bias: cfg.attention_bias,
            o_bias: cfg.attention_bias,
            mlp_bias: cfg.mlp_bias,
            qk_norm: false,
            norm_plus_one: false,
            activation: cfg.activation()?,
            sandwich_norms: false,
            embed_scale: EmbedScale::None,
            attn_scale: 1.0 / (cfg.head_dim() as f64).sqrt(),
            attn_softcap: None,
            final_softcap: None,
            layers: windows
                .into_iter()
                .map(|window| LayerKind { rope: 0, window })
                .collect(),
            ropes: vec![cfg.rope()?],
            fused_projections: false,
        })
    }

    /// Every layer global.
    pub fn global(cfg: &DecoderConfig) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        Ok(vec![None; cfg.num_hidden_layers])
    }

    /// Every layer within `sliding_window` when the config sets one (Mistral, Phi-3).
    pub fn all_sliding(cfg: &DecoderConfig) -> std::result::Result<Vec<Option<usize>>, ConfigError> {
        cfg.windows(|_| cfg.sliding_window.is_some())
    }
}

impl DecoderSpec {
    /// The spec of a checked config, boxed for the registry.
    pub fn boxed(cfg: DecoderConfig, arch: Arch) -> Box<dyn Spec> {
        Box::new(Self { cfg, arch })
    }
}

impl Spec for DecoderSpec {
    fn model_type(&self) -> &'static str {
        self.arch.model_type
    }

    fn task_type(&self) -> TaskType {
        TaskType::CausalLm
    }

    fn dims(&self) -> Dims {
        Dims {
            vocab: self.cfg.vocab_size,
            hidden: self.cfg.hidden_size,
            layers: self.cfg.num_hidden_layers,
            heads: self.cfg.num_attention_heads,
        }
    }

    fn max_positions(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn check_tensors(&self, shapes: &Shapes) -> std::result::Result<(), ConfigError> {
        let c = &self.cfg;
        c.check_tensors(shapes)?;
        if self.arch.fused_projections {
            let hd = c.head_dim();
            let rows = (c.num_attention_heads + 2 * c.num_kv_heads()).saturating_mul(hd);
            let layer = "model.layers.0";
            let field = "(num_attention_heads + 2 × num_key_value_heads) × head_dim";
            check_dims(
                shapes,
                &format!("{layer}.self_attn.qkv_proj.weight"),
                &[(field, rows), ("hidden_size", c.hidden_size)],
            )?;
            let ff = ("2 × intermediate_size", 2 * c.intermediate_size);
            check_dims(
                shapes,
                &format!("{layer}.mlp.gate_up_proj.weight"),
                &[ff, ("hidden_size", c.hidden_size)],
            )?;
        }
        if self.arch.qk_norm {
            let hd = ("head_dim", c.head_dim());
            check_dims(shapes, "model.layers.0.self_attn.q_norm.weight", &[hd])?;
        }
        Ok(())
    }

    fn adapt(&self, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        if self.arch.fused_projections {
            split_fused(&self.cfg, tensors)?;
        }
        Ok(())
    }

    fn build(&self, vb: VarBuilder) -> Result<Model> {
        Ok(Model::new(Decoder::load(vb, self)?))
    }

    fn forward_flops(&self, r: usize, b: usize, l: usize, _t: usize) -> f64 {
        let c = &self.cfg;
        let d = c.hidden_size as f64;
        let hd = c.head_dim() as f64;
        let q = c.num_attention_heads as f64 * hd;
        let kv = c.num_kv_heads() as f64 * hd;
        let s = (r + l) as f64;
        let per_token = 2.0 * (d * (q + 2.0 * kv) + q * d + 3.0 * d * c.intermediate_size as f64);
        let attention = 2.0 * 2.0 * s * s * q; // QKᵀ and AV (full, as computed)
        let layers = c.num_hidden_layers as f64;
        // The LM head runs at the loss positions: every input token (whole-sequence loss).
        let head = 2.0 * d * c.vocab_size as f64 * l as f64;
        b as f64 * (layers * (s * per_token + attention) + head)
    }

    fn activation_bytes_per_d(&self) -> f64 {
        ACTIVATION_BYTES_PER_D
    }

    fn parameters(&self) -> u64 {
        let c = &self.cfg;
        let a = &self.arch;
        let (d, hd, i) = (c.hidden_size as u64, c.head_dim() as u64, c.intermediate_size as u64);
        let (q, kv) = (c.num_attention_heads as u64 * hd, c.num_kv_heads() as u64 * hd);
        let embed = c.vocab_size as u64 * d;
        let attn = d * (q + 2 * kv) + q * d + u64::from(a.qkv_bias) * (q + 2 * kv) + u64::from(a.o_bias) * d;
        let mlp = 3 * d * i + u64::from(a.mlp_bias) * (2 * i + d);
        let norms = d * if a.sandwich_norms { 4 } else { 2 } + if a.qk_norm { 2 * hd } else { 0 };
        let head = if c.tie_word_embeddings { 0 } else { embed };
        embed + c.num_hidden_layers as u64 * (attn + mlp + norms) + d + head
    }
}

/// Phi-3's fused projections split into LLaMA's: `qkv_proj` rows are q (heads × head_dim), then
/// k, then v (kv heads × head_dim each); `gate_up_proj` rows are gate, then up.
fn split_fused(cfg: &DecoderConfig, tensors: &mut HashMap<String, Tensor>) -> Result<()> {
    let hd = cfg.head_dim();
    let (q, kv, ff) = (
        cfg.num_attention_heads * hd,
        cfg.num_kv_heads() * hd,
        cfg.intermediate_size,
    );
    for i in 0..cfg.num_hidden_layers {
        let at = |name: &str| format!("model.layers.{i}.{name}");
        let mut split = |fused: &str, parts: &[(&str, usize)]| -> Result<()> {
            let Some(w) = tensors.remove(&at(fused)) else {
                return Ok(()); // the loader names the missing tensor
            };
            let mut start = 0;
            for &(name, rows) in parts {
                tensors.insert(at(name), w.narrow(0, start, rows)?);
                start += rows;
            }
            if start != w.dim(0)? {
                candle_core::bail!("{} has {} rows, not {start}", at(fused), w.dim(0)?);
            }
            Ok(())
        };
        split(
            "self_attn.qkv_proj.weight",
            &[
                ("self_attn.q_proj.weight", q),
                ("self_attn.k_proj.weight", kv),
                ("self_attn.v_proj.weight", kv),
            ],
        )?;
        split(
            "mlp.gate_up_proj.weight",
            &[("mlp.gate_proj.weight", ff), ("mlp.up_proj.weight", ff)],
        )?;
    }
    Ok(())
}

impl LanguageModel for Decoder {
    fn spec(&self) -> &dyn Spec {
        &self.spec
    }

    fn embeddings(&self) -> &Tensor {
        Decoder::embeddings(self)
    }

    fn loss_rows(&self, prompts: &[&Tensor], batch: &[&Encoded], _train: Option<Train<'_>>) -> Result<Loss> {
        causal::loss_rows(self, prompts, &causal_examples(batch)?)
    }

    fn loss_grad_checkpointed(&self, prompts: &[&Tensor], batch: &[&Encoded], scale: f64) -> Result<(Loss, GradStore)> {
        causal::loss_grad_checkpointed(self, prompts, &causal_examples(batch)?, scale)
    }

    fn loss_and_greedy_rows(
        &self,
        prompts: &[&Tensor],
        batch: &[&Encoded],
        max_new: usize,
        eos: &[u32],
    ) -> Result<(Loss, Vec<Vec<u32>>)> {
        let examples = causal_examples(batch)?;
        let inputs: Vec<&[u32]> = batch.iter().map(|e| e.input()).collect();
        causal::loss_and_greedy_rows(self, prompts, &examples, &inputs, (max_new, eos))
    }

    fn greedy_rows(
        &self,
        prompts: &[&Tensor],
        inputs: &[Vec<u32>],
        max_new: usize,
        eos: &[u32],
    ) -> Result<Vec<Vec<u32>>> {
        causal::greedy_rows(self, prompts, inputs, max_new, eos)
    }

    fn rank_pass(&self, prompts: &[&Tensor], inputs: &[&[u32]], candidates: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        causal::rank(self, prompts, inputs, candidates)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
