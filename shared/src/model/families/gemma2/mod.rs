//! Gemma 2 (`model_type` "gemma2"): RMSNorm as x̂ · (1 + w), four norms per layer (before and
//! after attention and the feed-forward block), GeGLU with tanh GELU, token embeddings scaled by
//! √hidden_size in the embedding module (the prompt rows go in unscaled, as with peft; origins
//! sampled from the vocabulary are scaled rows, as peft's initialization samples), scores scaled
//! by `query_pre_attn_scalar`^-½ and soft-capped (`attn_logit_softcapping`), soft-capped logits
//! (`final_logit_softcapping`), sliding-window layers alternating with global ones (layer 0
//! slides), the head tied to the embeddings.

use crate::model::decoder::config::{Arch, DecoderConfig, EmbedScale};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::ConfigError;

pub const FAMILY: Family = Family {
    model_type: "gemma2",
    parse: |json| {
        let cfg = gemma_config(json)?;
        let mut arch = gemma_arch("gemma2", &cfg, |c| c.windows(|i| (i + 1) % 2 != 0))?;
        arch.attn_softcap = cfg.attn_logit_softcapping;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};

/// A Gemma config.json: its head is tied unless it says otherwise (transformers' default for
/// Gemma, unlike LLaMA's).
pub fn gemma_config(json: &str) -> candle_core::Result<DecoderConfig> {
    let mut value: serde_json::Value = crate::model::load::parse_json(json)?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("tie_word_embeddings")
            .or_insert(serde_json::Value::Bool(true));
    }
    serde_json::from_value(value).map_err(|e| candle_core::Error::msg(format!("config.json: {e}")))
}

/// What Gemma 2 and 3 share: (1 + w) norms, four per layer, √d token-embedding scale,
/// `query_pre_attn_scalar`, the logits soft-capped where the config sets it.
pub fn gemma_arch(
    model_type: &'static str,
    cfg: &DecoderConfig,
    windows: impl FnOnce(&DecoderConfig) -> Result<Vec<Option<usize>>, ConfigError>,
) -> Result<Arch, ConfigError> {
    let mut arch = Arch::llama(model_type, cfg, windows)?;
    arch.norm_plus_one = true;
    arch.sandwich_norms = true;
    arch.embed_scale = EmbedScale::Tokens((cfg.hidden_size as f64).sqrt());
    let scalar = cfg.query_pre_attn_scalar.unwrap_or(cfg.head_dim() as f64);
    arch.attn_scale = 1.0 / scalar.sqrt();
    arch.final_softcap = cfg.final_logit_softcapping;
    Ok(arch)
}
