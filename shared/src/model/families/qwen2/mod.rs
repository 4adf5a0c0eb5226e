//! Qwen2 and Qwen2.5 (`model_type` "qwen2"): LLaMA with biases on the q/k/v projections (not
//! o_proj), tied or untied; sliding windows only with `use_sliding_window`, on the layers from
//! `max_window_layers` on (transformers' default `layer_types`).

use crate::model::decoder::config::{Arch, DecoderConfig};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::parse_json;

pub const FAMILY: Family = Family {
    model_type: "qwen2",
    parse: |json| {
        let cfg: DecoderConfig = parse_json(json)?;
        let mut arch = Arch::llama("qwen2", &cfg, qwen_windows)?;
        arch.qkv_bias = true;
        arch.o_bias = false;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};

/// Qwen2's and Qwen3's windows: `layer_types`, else sliding from layer `max_window_layers` on
/// when `use_sliding_window` (every released Qwen2.5/Qwen3 config has it false).
pub fn qwen_windows(cfg: &DecoderConfig) -> Result<Vec<Option<usize>>, crate::model::load::ConfigError> {
    if cfg.layer_types.is_none() && !cfg.use_sliding_window {
        return Arch::global(cfg);
    }
    let from = cfg.max_window_layers.unwrap_or(cfg.num_hidden_layers);
    cfg.windows(|i| cfg.use_sliding_window && i >= from)
}
