//! The tiny model fixtures (`tests/fixtures/models`), one per family or variant: the one list the
//! tests that run on every family read (`tests/families.rs` checks it is the folder's contents).
#![allow(dead_code)]

/// Every model fixture.
pub const MODELS: [&str; 10] = [
    "llama_tied",
    "llama_gqa_rope3",
    "qwen2_bias",
    "qwen3_qknorm_tied",
    "mistral_window",
    "phi3_fused",
    "gemma2_softcap",
    "gemma3_text",
    "t5_gated_untied",
    "t5_relu_tied",
];

/// The decoder-only ones.
pub fn decoders() -> impl Iterator<Item = &'static str> {
    MODELS.into_iter().filter(|m| !m.starts_with("t5"))
}
