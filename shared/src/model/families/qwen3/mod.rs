//! Qwen3 (`model_type` "qwen3"): LLaMA with an RMSNorm over each head's queries and keys
//! (`q_norm`, `k_norm`, before the rotation), an explicit `head_dim`, biases as
//! `attention_bias` says (all four projections), windows as Qwen2's.

use crate::model::decoder::config::{Arch, DecoderConfig};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::parse_json;

pub const FAMILY: Family = Family {
    model_type: "qwen3",
    parse: |json| {
        let cfg: DecoderConfig = parse_json(json)?;
        let mut arch = Arch::llama("qwen3", &cfg, super::qwen2::qwen_windows)?;
        arch.qk_norm = true;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};
