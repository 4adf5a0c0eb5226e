//! LLaMA 2/3/3.1/3.2, SmolLM2, DeepSeek-LLM (`model_type` "llama"): the decoder as it is.

use crate::model::decoder::config::{Arch, DecoderConfig};
use crate::model::decoder::spec::DecoderSpec;
use crate::model::family::Family;
use crate::model::load::parse_json;

pub use crate::model::decoder::config::{RopeParameters, RopeScaling, TokenIds, inv_freq};

/// The name config.json's of LLaMA-family models were read as before there were other decoder
/// families (they all read the same struct).
pub type LlamaConfig = DecoderConfig;

pub const FAMILY: Family = Family {
    model_type: "llama",
    parse: |json| {
        let cfg: DecoderConfig = parse_json(json)?;
        let arch = Arch::llama("llama", &cfg, Arch::global)?;
        Ok(DecoderSpec::boxed(cfg, arch))
    },
};
