//! The model families tpv runs, one folder each, and the one registry from config.json's
//! `model_type` to them. Adding a family is a folder (its [`Family`]: how its config reads) and
//! one line below.

pub mod gemma2;
pub mod gemma3;
pub mod llama;
pub mod mistral;
pub mod phi3;
pub mod qwen2;
pub mod qwen3;
pub mod t5;

use super::family::{Family, Spec};

/// Every family, by `model_type`.
pub static FAMILIES: &[Family] = &[
    llama::FAMILY,
    mistral::FAMILY,
    qwen2::FAMILY,
    qwen3::FAMILY,
    phi3::FAMILY,
    gemma2::FAMILY,
    gemma3::FAMILY,
    t5::FAMILY,
];

/// The family of a `model_type`.
pub fn family(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.model_type == model_type)
}

/// Parses and checks `config.json` with its family's parser (its `model_type` picks it).
pub fn parse(config_json: &str) -> candle_core::Result<Box<dyn Spec>> {
    #[derive(serde::Deserialize)]
    struct ModelType {
        #[serde(default)]
        model_type: Option<String>,
    }
    let kind: ModelType = super::load::parse_json(config_json)?;
    let name = kind.model_type.unwrap_or_default();
    match family(&name) {
        Some(f) => (f.parse)(config_json),
        None => {
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
            candle_core::bail!(
                "config.json: model_type {name:?} is not supported (tpv runs {})",
                known.join(", ")
            )
        }
    }
}
