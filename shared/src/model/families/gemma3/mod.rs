//! Gemma 3 text models (`model_type` "gemma3_text": gemma-3-1b and the text tower's config):
//! Gemma 2's layer with Qwen3's per-head q/k norms (as (1 + w)), token embeddings scaled by
//! √hidden_size inside the embedding module (the prompt rows go in unscaled; origins are scaled
//! rows), every `sliding_window_pattern`-th layer global and the rest sliding, the global
//! layers rotating with `rope_theta` and `rope_scaling`, the sliding ones with
//! `rope_local_base_freq` unscaled. Logits soft-capped when `final_logit_softcapping` is set;
//! `attn_logit_softcapping` is ignored, as transformers (5.24) ignores it for Gemma 3.

use crate::model::decoder::config::{LayerKind, RopeScaling};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::families::gemma2::{gemma_arch, gemma_config};
use crate::model::family::Family;
use crate::model::load::check_count;

/// transformers' default `sliding_window_pattern` (and `rope_local_base_freq`).
const DEFAULT_PATTERN: usize = 6;
const DEFAULT_LOCAL_THETA: f64 = 10_000.0;

pub const FAMILY: Family = Family {
    model_type: "gemma3_text",
    parse: |json| {
        let cfg = gemma_config(json)?;
        let pattern = cfg.sliding_window_pattern.unwrap_or(DEFAULT_PATTERN);
        check_count("sliding_window_pattern", pattern, crate::model::load::limits::LAYERS)?;
        let mut arch = gemma_arch("gemma3_text", &cfg, |c| c.windows(|i| (i + 1) % pattern != 0))?;
        arch.qk_norm = true;
        arch.ropes.push((
            cfg.rope_local_base_freq.unwrap_or(DEFAULT_LOCAL_THETA),
            RopeScaling::None,
        ));
        for layer in &mut arch.layers {
            *layer = LayerKind {
                rope: usize::from(layer.window.is_some()),
                window: layer.window,
            };
        }
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};
