//! T5 as a [`Family`]: its config as a [`Spec`], the model as a [`LanguageModel`].

use std::any::Any;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::{T5, T5_MAX_POSITIONS, T5Config, Train};
use crate::eval::{Encoded, seq2seq_examples};
use crate::model::Loss;
use crate::model::family::{Dims, Family, LanguageModel, Model, Spec};
use crate::model::load::{ConfigError, Shapes, parse_json};
use crate::prompt::TaskType;

pub const FAMILY: Family = Family {
    model_type: "t5",
    parse: |json| {
        let cfg: T5Config = parse_json(json)?;
        cfg.validate()?;
        Ok(Box::new(cfg))
    },
};

/// T5 (`--model t5-base-shaped --dtype f32`, the CPU's fused ops): 4.6 GB over the weights for
/// 8 × 306 tokens × 12 encoder layers at d = 768.
const ACTIVATION_BYTES_PER_D: f64 = 78.0;

impl Spec for T5Config {
    fn model_type(&self) -> &'static str {
        "t5"
    }

    fn task_type(&self) -> TaskType {
        TaskType::Seq2SeqLm
    }

    fn dims(&self) -> Dims {
        Dims {
            vocab: self.vocab_size,
            hidden: self.d_model,
            layers: self.num_layers,
            heads: self.num_heads,
        }
    }

    fn max_positions(&self) -> usize {
        T5_MAX_POSITIONS
    }

    fn check_tensors(&self, shapes: &Shapes) -> std::result::Result<(), ConfigError> {
        T5Config::check_tensors(self, shapes)
    }

    fn build(&self, vb: VarBuilder) -> Result<Model> {
        Ok(Model::new(T5::load(vb, self)?))
    }

    fn forward_flops(&self, r: usize, b: usize, l: usize, t: usize) -> f64 {
        let d = self.d_model as f64;
        let inner = (self.num_heads * self.d_kv) as f64;
        let ff = self.d_ff as f64
            * if self.feed_forward_proj.contains("gated") {
                3.0
            } else {
                2.0
            };
        let (se, sd) = ((r + l) as f64, t as f64);
        let enc = self.num_layers as f64 * (se * 2.0 * (4.0 * d * inner + d * ff) + 4.0 * se * se * inner);
        let dec_layers = self.num_decoder_layers.unwrap_or(self.num_layers) as f64;
        let dec = dec_layers
            * (sd * 2.0 * (4.0 * d * inner + 2.0 * d * inner + d * ff) // self-attn, cross q/o, ff
                + se * 2.0 * 2.0 * d * inner // cross-attention k, v over the encoder output
                + 4.0 * sd * sd * inner
                + 4.0 * sd * se * inner);
        let head = 2.0 * d * self.vocab_size as f64 * sd;
        b as f64 * (enc + dec + head)
    }

    fn activation_bytes_per_d(&self) -> f64 {
        ACTIVATION_BYTES_PER_D
    }

    fn parameters(&self) -> u64 {
        let (d, inner) = (self.d_model as u64, (self.num_heads * self.d_kv) as u64);
        let ff = self.d_ff as u64 * d * if self.feed_forward_proj.contains("gated") { 3 } else { 2 };
        let bias = (self.relative_attention_num_buckets * self.num_heads) as u64;
        let encoder = self.num_layers as u64 * (4 * d * inner + ff + 2 * d) + bias + d;
        let dec_layers = self.num_decoder_layers.unwrap_or(self.num_layers) as u64;
        let decoder = dec_layers * (8 * d * inner + ff + 3 * d) + bias + d;
        let embed = self.vocab_size as u64 * d;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        embed + encoder + decoder + head
    }
}

/// T5's loss as the family-neutral one (its logits dropped).
fn neutral(out: super::LossOutput) -> Loss {
    Loss {
        loss: out.loss,
        per_token: out.per_token,
        counts: out.counts,
    }
}

impl LanguageModel for T5 {
    fn spec(&self) -> &dyn Spec {
        &self.cfg
    }

    fn embeddings(&self) -> &Tensor {
        T5::embeddings(self)
    }

    fn config_dropout(&self) -> f32 {
        self.cfg.dropout_rate as f32
    }

    fn loss_rows(&self, prompts: &[&Tensor], batch: &[&Encoded], train: Option<Train<'_>>) -> Result<Loss> {
        Ok(neutral(super::loss_rows(
            self,
            prompts,
            &seq2seq_examples(batch)?,
            train,
        )?))
    }

    fn loss_and_greedy_rows(
        &self,
        prompts: &[&Tensor],
        batch: &[&Encoded],
        max_new: usize,
        _eos: &[u32],
    ) -> Result<(Loss, Vec<Vec<u32>>)> {
        let (out, generated) = super::loss_and_greedy_rows(self, prompts, &seq2seq_examples(batch)?, max_new)?;
        Ok((neutral(out), generated))
    }

    fn greedy_rows(
        &self,
        prompts: &[&Tensor],
        inputs: &[Vec<u32>],
        max_new: usize,
        _eos: &[u32],
    ) -> Result<Vec<Vec<u32>>> {
        super::greedy_rows(self, prompts, inputs, max_new)
    }

    fn rank_pass(&self, prompts: &[&Tensor], inputs: &[&[u32]], candidates: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        super::rank(self, prompts, inputs, candidates)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
