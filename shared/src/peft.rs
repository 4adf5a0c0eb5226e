//! HF peft prompt-tuning adapters, both ways.
//!
//! An adapter directory holds `adapter_config.json` and `adapter_model.safetensors` with one tensor
//! `prompt_embeddings` of shape [num_virtual_tokens × num_transformer_submodules, token_dim].
//! Seq2seq adapters (T5) store two blocks, but peft's prompt-tuning forward only puts the first
//! `num_virtual_tokens` rows in front of the encoder input; the second block is never read
//! (docs/method.md §7.1). Importing keeps only the used rows; exporting writes the shape peft expects, with the
//! unused block zero.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::prompt::{Layout, ModelRef, OriginRef, PromptKind, SoftPrompt, TaskType};
use crate::st::{self, Loaded};
use crate::tensor::PromptTensor;

pub const WEIGHTS_KEY: &str = "prompt_embeddings";
pub const CONFIG_FILE: &str = "adapter_config.json";
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// The fields of peft's `PromptTuningConfig` that matter here; every other key is kept in `extra`
/// and written back unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeftConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    pub num_virtual_tokens: usize,
    #[serde(default)]
    pub token_dim: Option<usize>,
    #[serde(default)]
    pub num_transformer_submodules: Option<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<usize>,
    #[serde(default)]
    pub num_layers: Option<usize>,
    #[serde(default)]
    pub prompt_tuning_init: Option<String>,
    #[serde(default)]
    pub prompt_tuning_init_text: Option<String>,
    #[serde(default)]
    pub tokenizer_name_or_path: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub inference_mode: Option<bool>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl PeftConfig {
    /// A prompt-tuning config with only `num_virtual_tokens` set.
    pub fn new(num_virtual_tokens: usize) -> Self {
        Self {
            peft_type: "PROMPT_TUNING".into(),
            task_type: None,
            num_virtual_tokens,
            token_dim: None,
            num_transformer_submodules: None,
            num_attention_heads: None,
            num_layers: None,
            prompt_tuning_init: None,
            prompt_tuning_init_text: None,
            tokenizer_name_or_path: None,
            base_model_name_or_path: None,
            revision: None,
            inference_mode: None,
            extra: Default::default(),
        }
    }

    pub fn parse(json: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(json).map_err(|e| Error::PeftConfig(e.to_string()))?;
        if config.peft_type != "PROMPT_TUNING" {
            return Err(Error::NotPromptTuning(config.peft_type));
        }
        if let Some(n) = config.num_transformer_submodules
            && !matches!(n, 1 | 2)
        {
            return Err(Error::PeftConfig(format!(
                "num_transformer_submodules is {n}; peft uses 1 (decoder-only) or 2 (encoder-decoder)"
            )));
        }
        if config.num_virtual_tokens == 0 {
            return Err(Error::PeftConfig("num_virtual_tokens is 0".into()));
        }
        Ok(config)
    }

    pub fn task_type(&self) -> Option<TaskType> {
        match self.task_type.as_deref() {
            Some("SEQ_2_SEQ_LM") => Some(TaskType::Seq2SeqLm),
            Some("CAUSAL_LM") => Some(TaskType::CausalLm),
            _ => None,
        }
    }

    /// `num_transformer_submodules`, or peft's default for the task type (2 for seq2seq, else 1).
    pub fn submodules(&self) -> usize {
        self.num_transformer_submodules
            .unwrap_or_else(|| self.task_type().map_or(1, TaskType::default_submodules))
    }
}

/// A prompt-tuning adapter as peft stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeftAdapter {
    pub config: PeftConfig,
    /// All stored rows, [num_virtual_tokens × submodules, token_dim].
    pub embeddings: PromptTensor,
    /// The stored dtype (peft may save BF16/F16); values here are f32.
    pub dtype: String,
}

impl PeftAdapter {
    /// Parses `adapter_config.json` (when present) and `adapter_model.safetensors`. Without a
    /// config, every row is taken as one causal block.
    pub fn from_parts(config_json: Option<&str>, weights: &[u8]) -> Result<Self> {
        let loaded = Loaded::parse(weights)?;
        let (embeddings, dtype) = loaded.matrix(WEIGHTS_KEY)?;
        let config = match config_json {
            Some(json) => PeftConfig::parse(json)?,
            None => PeftConfig {
                token_dim: Some(embeddings.dim()),
                num_transformer_submodules: Some(1),
                ..PeftConfig::new(embeddings.rows())
            },
        };
        let shape_error = || Error::PeftShape {
            shape: embeddings.shape(),
            num_virtual_tokens: config.num_virtual_tokens,
            submodules: config.submodules(),
            token_dim: config.token_dim.unwrap_or(embeddings.dim()),
        };
        let want_rows = config.num_virtual_tokens.checked_mul(config.submodules());
        if want_rows != Some(embeddings.rows()) || config.token_dim.is_some_and(|d| d != embeddings.dim()) {
            return Err(shape_error());
        }
        Ok(Self {
            config,
            embeddings,
            dtype: format!("{dtype:?}"),
        })
    }

    /// The rows the model reads: the first `num_virtual_tokens`.
    pub fn used_rows(&self) -> Result<PromptTensor> {
        self.embeddings.first_rows(self.config.num_virtual_tokens)
    }

    /// Converts to a soft prompt of `kind` (origin or task prompt). `origin` (an origin or any
    /// prompt with a stored origin) is recorded so the task prompt vector can be derived.
    pub fn to_prompt(&self, kind: PromptKind, origin: Option<&SoftPrompt>) -> Result<SoftPrompt> {
        let values = self.used_rows()?;
        let origin_values = match origin {
            Some(o) => {
                let t = o.origin_values().ok_or_else(|| Error::NoOrigin { label: o.label() })?;
                values.check_same_shape(t)?;
                Some(t.clone())
            }
            None => None,
        };
        let mut prompt = SoftPrompt::new(kind, values, None)?;
        if kind != PromptKind::Origin {
            prompt.origin = origin_values;
        }
        let meta = &mut prompt.meta;
        meta.model = self.config.base_model_name_or_path.as_ref().map(|id| ModelRef {
            id: id.clone(),
            revision: self.config.revision.clone(),
        });
        meta.layout = Layout {
            task_type: self.config.task_type(),
            num_transformer_submodules: self.config.submodules(),
        };
        meta.dtype = self.dtype.clone();
        meta.origin = origin.and_then(|o| o.meta.origin.clone());
        if kind == PromptKind::Origin && meta.origin.is_none() {
            meta.origin = Some(OriginRef {
                id: "origin".into(),
                seed: None,
                index: None,
                sampling: self
                    .config
                    .prompt_tuning_init
                    .clone()
                    .map(|s| format!("peft-{s}").to_lowercase()),
            });
        }
        meta.peft_config = serde_json::to_value(&self.config).ok();
        Ok(prompt)
    }

    /// The adapter peft loads for a prompt (not a vector: apply it to an origin first).
    pub fn from_prompt(prompt: &SoftPrompt) -> Result<Self> {
        if !prompt.kind().is_prompt() {
            return Err(Error::VectorIsNotAPrompt { label: prompt.label() });
        }
        let layout = prompt.meta.layout;
        let submodules = layout.num_transformer_submodules.max(1);
        let mut config: PeftConfig = prompt
            .meta
            .peft_config
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_else(|| PeftConfig::new(prompt.values.rows()));
        config.peft_type = "PROMPT_TUNING".into();
        config.num_virtual_tokens = prompt.values.rows();
        config.token_dim = Some(prompt.values.dim());
        config.num_transformer_submodules = Some(submodules);
        if let Some(t) = layout.task_type {
            config.task_type = Some(t.as_peft_str().into());
        }
        if let Some(m) = &prompt.meta.model {
            config.base_model_name_or_path = Some(m.id.clone());
            config.revision = m.revision.clone();
        }
        config.inference_mode = Some(true);
        Ok(Self {
            config,
            embeddings: prompt.values.padded_blocks(submodules),
            dtype: "F32".into(),
        })
    }

    /// `adapter_config.json` (pretty JSON) and `adapter_model.safetensors` bytes.
    pub fn to_files(&self) -> Result<(String, Vec<u8>)> {
        let json = serde_json::to_string_pretty(&self.config).map_err(|e| Error::PeftConfig(e.to_string()))?;
        let metadata = std::collections::BTreeMap::from([("format".to_owned(), "pt".to_owned())]);
        let weights = st::write(&[(WEIGHTS_KEY.to_owned(), &self.embeddings)], metadata)?;
        Ok((json, weights))
    }
}
