//! Mistral (`model_type` "mistral"; Mistral-7B v0.1–v0.3, Ministral): LLaMA with every layer
//! attending within `sliding_window` positions when the config sets one (v0.3: `null`).

use crate::model::decoder::config::{Arch, DecoderConfig};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::parse_json;

pub const FAMILY: Family = Family {
    model_type: "mistral",
    parse: |json| {
        let cfg: DecoderConfig = parse_json(json)?;
        let arch = Arch::llama("mistral", &cfg, Arch::all_sliding)?;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};
