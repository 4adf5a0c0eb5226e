//! The one interface every model family implements, and the loaded model every caller holds.
//!
//! A family is a folder under `families/` that gives a [`Family`] (its `model_type` and a parser
//! of its `config.json`) and one line in [`super::families::FAMILIES`]. Its parser returns a
//! [`Spec`]: the checked configuration, which knows its shape (for `tpv bench` and the
//! preflight) and builds the frozen model, a [`LanguageModel`]. Training, evaluation, studies,
//! ATTEMPT and the browser's worker only ever see [`Model`].

use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::Loss;
use super::load::{ConfigError, Shapes};
use super::t5::Train;
use crate::eval::Encoded;
use crate::prompt::TaskType;

/// A model family: config.json's `model_type` and how its config becomes a [`Spec`].
pub struct Family {
    pub model_type: &'static str,
    /// Parses and checks config.json (every count, head dimension, epsilon and rope parameter).
    pub parse: fn(config_json: &str) -> Result<Box<dyn Spec>>,
}

/// The dimensions every family has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub vocab: usize,
    pub hidden: usize,
    /// Decoder-only: its layers; T5: the encoder's.
    pub layers: usize,
    pub heads: usize,
}

/// A family's checked configuration: its shape, and how to build the model from its weights.
pub trait Spec: std::fmt::Debug + Send + Sync {
    /// config.json's `model_type`.
    fn model_type(&self) -> &'static str;
    fn task_type(&self) -> TaskType;
    fn dims(&self) -> Dims;
    /// The most positions (prompt rows + tokens) a sequence may have.
    fn max_positions(&self) -> usize;
    /// The dimensions against the weights' shapes (from the files' headers), before anything
    /// is loaded: the error names the field and the tensor.
    fn check_tensors(&self, shapes: &Shapes) -> std::result::Result<(), ConfigError>;
    /// Renames or splits the checkpoint's tensors into the names [`Self::build`] asks for
    /// (Phi-3's fused projections); most families keep them.
    fn adapt(&self, _tensors: &mut HashMap<String, Tensor>) -> Result<()> {
        Ok(())
    }
    /// Builds the frozen model from tensors named as [`Self::adapt`] leaves them.
    fn build(&self, vb: VarBuilder) -> Result<Model>;
    /// Matmul FLOPs of one forward pass over `b` rows of `r` prompt rows and `l` input tokens
    /// (and `t` target tokens for an encoder-decoder), the LM head at `l` positions per row.
    fn forward_flops(&self, r: usize, b: usize, l: usize, t: usize) -> f64;
    /// Bytes a layer keeps per token for the backward pass, per unit of the hidden size, in
    /// 16-bit precision (measured: `tpv bench --short 0 --long 1`, docs/numbers.md).
    fn activation_bytes_per_d(&self) -> f64;
    /// The parameters the checkpoint holds (a tied head counted once), from the config alone.
    fn parameters(&self) -> u64;
}

/// A frozen model with a soft prompt in front: the heads training, evaluation, studies and the
/// browser use. Rows of a batch may carry different prompts.
pub trait LanguageModel: std::fmt::Debug + Send + Sync + Any {
    fn spec(&self) -> &dyn Spec;
    /// The rows a token id is looked up as [V, d] (origins are sampled from them; Gemma 3's are
    /// scaled by √d as its embedding module scales them).
    fn embeddings(&self) -> &Tensor;
    /// The dropout the model's config trains with (T5's `dropout_rate`; decoder-only: 0).
    fn config_dropout(&self) -> f32 {
        0.0
    }
    /// The loss of `batch`, row `i` under `prompts[i]`; `train` turns dropout on where the
    /// family has it. An example of the other task type is an error.
    fn loss_rows(&self, prompts: &[&Tensor], batch: &[&Encoded], train: Option<Train<'_>>) -> Result<Loss>;
    /// [`Self::loss_rows`] with gradient checkpointing: the loss (detached) and the gradients
    /// of `scale` × the loss w.r.t. the prompts' variables.
    fn loss_grad_checkpointed(
        &self,
        _prompts: &[&Tensor],
        _batch: &[&Encoded],
        _scale: f64,
    ) -> Result<(Loss, GradStore)> {
        candle_core::bail!(
            "gradient checkpointing is implemented for decoder-only models, not {}",
            self.spec().model_type()
        )
    }
    /// The loss of `batch` (no dropout, no gradient) and the greedy continuations of its inputs.
    fn loss_and_greedy_rows(
        &self,
        prompts: &[&Tensor],
        batch: &[&Encoded],
        max_new: usize,
        eos: &[u32],
    ) -> Result<(Loss, Vec<Vec<u32>>)>;
    /// Greedy continuations of `inputs`: at most `max_new` tokens each; decoder-only models stop
    /// after any of `eos`, T5 at its EOS.
    fn greedy_rows(
        &self,
        prompts: &[&Tensor],
        inputs: &[Vec<u32>],
        max_new: usize,
        eos: &[u32],
    ) -> Result<Vec<Vec<u32>>>;
    /// Each candidate's summed log-probability per row, in one pass ([`Model::rank`] groups
    /// the candidates).
    fn rank_pass(&self, prompts: &[&Tensor], inputs: &[&[u32]], candidates: &[Vec<u32>]) -> Result<Vec<Vec<f32>>>;
    fn as_any(&self) -> &dyn Any;
}

/// A loaded frozen model of any family (cheap to clone: the weights are shared).
#[derive(Debug, Clone)]
pub struct Model(Arc<dyn LanguageModel>);

impl std::ops::Deref for Model {
    type Target = dyn LanguageModel;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Model {
    pub fn new(model: impl LanguageModel) -> Self {
        Self(Arc::new(model))
    }

    /// The family's own type (e.g. [`super::decoder::Decoder`], [`super::t5::T5`]), for
    /// code and tests that need its own methods.
    pub fn downcast_ref<T: LanguageModel>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    pub fn hidden_size(&self) -> usize {
        self.spec().dims().hidden
    }

    pub fn max_positions(&self) -> usize {
        self.spec().max_positions()
    }

    pub fn task_type(&self) -> TaskType {
        self.spec().task_type()
    }

    /// config.json's `model_type` (`llama`, `qwen3`, `t5`, …).
    pub fn family(&self) -> &'static str {
        self.spec().model_type()
    }
}
