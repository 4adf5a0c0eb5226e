//! Text in and out of a model: the tokenizer (HF `tokenizer.json`, or the one a GGUF file embeds)
//! and the chat template (`tokenizer_config.json` or GGUF metadata), rendered with a real Jinja
//! engine (minijinja with Python-compatible methods).

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::model::load::GgufExtras;

#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer_config.json: {0}")]
    Config(String),
}

type Result<T> = std::result::Result<T, TextError>;

fn tok_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

/// The parts of `tokenizer_config.json` that matter here.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenizerConfig {
    #[serde(default)]
    pub chat_template: Option<ChatTemplateField>,
    #[serde(default)]
    pub bos_token: Option<SpecialToken>,
    #[serde(default)]
    pub eos_token: Option<SpecialToken>,
    #[serde(default)]
    pub add_bos_token: Option<bool>,
}

/// `chat_template` is a string, or a list of named templates.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChatTemplateField {
    One(String),
    Named(Vec<NamedTemplate>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct NamedTemplate {
    pub name: String,
    pub template: String,
}

/// A special token as a string or an AddedToken object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SpecialToken {
    Text(String),
    Object { content: String },
}

impl SpecialToken {
    pub fn text(&self) -> &str {
        match self {
            Self::Text(s) => s,
            Self::Object { content } => content,
        }
    }
}

/// Tokenizer plus chat template.
#[derive(Clone)]
pub struct TextCodec {
    tokenizer: Tokenizer,
    chat_template: Option<String>,
    /// Where the chat template came from, for errors: `tokenizer_config.json` or the GGUF file.
    template_origin: &'static str,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

impl std::fmt::Debug for TextCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextCodec")
            .field("vocab", &self.tokenizer.get_vocab_size(true))
            .field("chat_template", &self.chat_template.is_some())
            .finish()
    }
}

impl TextCodec {
    /// From `tokenizer.json` bytes and, when present, `tokenizer_config.json` text.
    pub fn from_hf(tokenizer_json: &[u8], tokenizer_config: Option<&str>) -> Result<Self> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json).map_err(tok_err)?;
        let cfg: TokenizerConfig = match tokenizer_config {
            Some(text) => serde_json::from_str(text).map_err(|e| TextError::Config(e.to_string()))?,
            None => TokenizerConfig::default(),
        };
        let chat_template = cfg.chat_template.map(|t| match t {
            ChatTemplateField::One(s) => s,
            ChatTemplateField::Named(list) => list
                .iter()
                .find(|t| t.name == "default")
                .or(list.first())
                .map(|t| t.template.clone())
                .unwrap_or_default(),
        });
        Ok(Self {
            tokenizer,
            chat_template,
            template_origin: "tokenizer_config.json",
            bos_token: cfg.bos_token.map(|t| t.text().to_owned()),
            eos_token: cfg.eos_token.map(|t| t.text().to_owned()),
        })
    }

    /// The byte-level BPE tokenizer a GGUF file describes (`tokenizer.ggml.model = gpt2`), with
    /// its control tokens as special tokens and the split rules of its pre-tokenizer type.
    pub fn from_gguf(extras: &GgufExtras) -> Result<Self> {
        if extras.tokenizer_model.as_deref() != Some("gpt2") {
            return Err(TextError::Tokenizer(format!(
                "GGUF tokenizer {:?} is not supported (gpt2 byte-level BPE is)",
                extras.tokenizer_model
            )));
        }
        let vocab: tokenizers::models::bpe::Vocab = extras
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = extras
            .merges
            .iter()
            .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tok_err)?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(pretokenizer(extras.pretokenizer.as_deref())?));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        // Control tokens (type 3) stay whole and are skipped when decoding.
        let special: Vec<AddedToken> = extras
            .tokens
            .iter()
            .zip(&extras.token_types)
            .filter(|(_, ty)| **ty == 3)
            .map(|(t, _)| AddedToken::from(t.clone(), true))
            .collect();
        tokenizer.add_special_tokens(special).map_err(tok_err)?;
        let name = |id: Option<u32>| id.and_then(|i| extras.tokens.get(i as usize).cloned());
        Ok(Self {
            tokenizer,
            chat_template: extras.chat_template.clone(),
            template_origin: "the GGUF file's tokenizer.chat_template",
            bos_token: name(extras.bos_token_id),
            eos_token: name(extras.eos_token_id),
        })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Token ids of `text`, with the tokenizer's own special tokens (BOS for LLaMA, EOS for T5)
    /// when `add_special`.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode(text, add_special)
            .map_err(tok_err)?
            .get_ids()
            .to_vec())
    }

    /// Text of ids, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(tok_err)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The chat-templated text of one user turn (with the assistant turn opened when
    /// `add_generation_prompt`), as `apply_chat_template(..., tokenize=False)` renders it.
    pub fn chat(&self, user: &str, add_generation_prompt: bool) -> Result<String> {
        self.chat_with_system(None, user, add_generation_prompt)
    }

    /// [`Self::chat`] after a system turn with `system` as its content (`None`: no system turn,
    /// so the template's default, if it has one, applies).
    pub fn chat_with_system(&self, system: Option<&str>, user: &str, add_generation_prompt: bool) -> Result<String> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or_else(|| TextError::Template("the tokenizer has no chat template".into()))?;
        let mut messages = Vec::with_capacity(2);
        if let Some(s) = system {
            messages.push(("system", s));
        }
        messages.push(("user", user));
        render_chat(
            template,
            &messages,
            add_generation_prompt,
            self.bos_token.as_deref(),
            self.eos_token.as_deref(),
        )
        .map_err(|e| match e {
            TextError::Template(msg) => TextError::Template(format!("{} ({})", msg, self.template_origin)),
            other => other,
        })
    }
}

/// Instructions a chat template may execute for one rendering (minijinja's fuel). The templates
/// of the fixtures and of the families tpv knows use at most a few thousand for a system and a user
/// turn (`shared/tests/templates.rs` measures them); a hub's template is untrusted input, and this
/// stops one that loops without end.
pub const CHAT_TEMPLATE_FUEL: u64 = 200_000;

/// The longest chat template accepted, in bytes (real ones are under 20 KB).
pub const CHAT_TEMPLATE_MAX_BYTES: usize = 1 << 20;

/// The most text one rendering may write: this many bytes plus four times the messages' own.
pub const CHAT_OUTPUT_BASE_BYTES: usize = 1 << 20;

/// An `io::Write` that refuses to grow past `limit` bytes.
struct CappedText {
    out: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for CappedText {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output over its limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders an HF chat template for `messages` (role, content), within [`CHAT_TEMPLATE_FUEL`]
/// instructions and an output of [`CHAT_OUTPUT_BASE_BYTES`] plus four times the messages' bytes.
pub fn render_chat(
    template: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<String> {
    render_chat_measured(template, messages, add_generation_prompt, bos_token, eos_token).map(|(text, _)| text)
}

/// [`render_chat`] and the fuel (template instructions) the rendering used.
pub fn render_chat_measured(
    template: &str,
    messages: &[(&str, &str)],
    add_generation_prompt: bool,
    bos_token: Option<&str>,
    eos_token: Option<&str>,
) -> Result<(String, u64)> {
    if template.len() > CHAT_TEMPLATE_MAX_BYTES {
        return Err(TextError::Template(format!(
            "the template is {} bytes; the limit is {CHAT_TEMPLATE_MAX_BYTES}",
            template.len()
        )));
    }
    let mut env = minijinja::Environment::new();
    minijinja_contrib::add_to_environment(&mut env);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.set_fuel(Some(CHAT_TEMPLATE_FUEL));
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        },
    );
    env.add_template("chat", template)
        .map_err(|e| TextError::Template(e.to_string()))?;
    let content_bytes: usize = messages.iter().map(|(r, c)| r.len() + c.len()).sum();
    let limit = CHAT_OUTPUT_BASE_BYTES.saturating_add(content_bytes.saturating_mul(4));
    let messages: Vec<_> = messages
        .iter()
        .map(|(role, content)| minijinja::context! { role => role, content => content })
        .collect();
    let mut out = CappedText {
        out: Vec::new(),
        limit,
        exceeded: false,
    };
    let rendered = env.get_template("chat").and_then(|t| {
        t.render_captured_to(
            minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos_token.unwrap_or(""),
                eos_token => eos_token.unwrap_or(""),
            },
            &mut out,
        )
    });
    match rendered {
        Ok(captured) => {
            let used = captured.state().fuel_levels().map_or(0, |(consumed, _)| consumed);
            let text = String::from_utf8(out.out).map_err(|e| TextError::Template(e.to_string()))?;
            Ok((text, used))
        }
        Err(_) if out.exceeded => Err(TextError::Template(format!(
            "the rendered text grew past {limit} bytes (1 MiB plus four times the messages)"
        ))),
        Err(e) if e.kind() == minijinja::ErrorKind::OutOfFuel => Err(TextError::Template(format!(
            "the template ran more than {CHAT_TEMPLATE_FUEL} instructions"
        ))),
        Err(e) => Err(TextError::Template(e.to_string())),
    }
}

/// The pre-tokenizer of a GGUF `tokenizer.ggml.pre` type.
fn pretokenizer(kind: Option<&str>) -> Result<PreTokenizerWrapper> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match kind {
        // GPT-2's split regex inside ByteLevel.
        None | Some("default") | Some("gpt2") => byte_level.into(),
        // SmolLM: every digit on its own, then GPT-2's split.
        Some("smollm") => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        Some("llama3" | "llama-v3" | "llama-bpe" | "smaug-bpe" | "dbrx") => {
            let split = Split::new(
                SplitPattern::Regex(LLAMA3.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tok_err)?;
            Sequence::new(vec![split.into(), ByteLevel::new(false, true, false).into()]).into()
        }
        Some(other) => {
            return Err(TextError::Tokenizer(format!(
                "GGUF pre-tokenizer {other:?} is not supported"
            )));
        }
    })
}
