//! Soft-prompt forward passes on candle, shared by the trainer and the browser: T5 (encoder-
//! decoder, prompt in front of the encoder input) and the LLaMA family (decoder-only, prompt in
//! front of the whole input). Verified against HF transformers + peft on tiny random models
//! (`tests/fixtures/models`, `shared/tests/models.rs`).

pub mod causal;
pub mod fused;
pub mod llama;
pub mod load;
pub mod ops;
pub mod t5;

pub use candle_core::{DType, Device, Tensor, Var};
