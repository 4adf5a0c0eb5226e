//! Phi-3 and Phi-3.5 (`model_type` "phi3"): LLaMA with q/k/v in one `qkv_proj` and gate/up in
//! one `gate_up_proj` (split at load), every layer within `sliding_window` when set. Partial
//! rotation (Phi-4-mini) and `longrope` scaling (the 128k variants) are refused by the config's
//! checks.

use crate::model::decoder::config::{Arch, DecoderConfig};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::parse_json;

pub const FAMILY: Family = Family {
    model_type: "phi3",
    parse: |json| {
        let cfg: DecoderConfig = parse_json(json)?;
        let mut arch = Arch::llama("phi3", &cfg, Arch::all_sliding)?;
        arch.fused_projections = true;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};
