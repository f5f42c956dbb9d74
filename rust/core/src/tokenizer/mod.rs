//! Tokenizers, chat templates and incremental detokenization.
//!
//! One [`Tokenizer`] type serves every model source: GGUF metadata ([`gguf`]) and HF model directories
//! ([`hf`]) are both turned into a `tokenizers::Tokenizer` (the BPE itself is HF's, never ours), plus the
//! facts the engine needs beside encode/decode: the raw bytes of every token (for streaming and logprob
//! `bytes`), which ids are special, which ids end generation, whether to prepend BOS, and the chat template.
//!
//! BOS is handled here rather than by a tokenizers post-processor so that GGUF and HF models behave the
//! same: `encode(text, true)` prepends BOS exactly when [`Tokenizer::add_bos`] says so. A rendered chat
//! template already contains its special tokens, so prompts from [`ChatTemplate::render`] should be
//! encoded with `add_special_tokens = false`, as HF's `apply_chat_template(tokenize=True)` does.

mod clock;
pub mod conv_template;
mod conv_template_builtin;
mod detokenizer;
mod gguf;
mod hf;
mod python_format;
mod spm;
mod template;
mod token_bytes;
mod ugm;
mod wpm;

use std::collections::HashSet;

pub use conv_template::{ConvTemplate, RenderedPrompt};
pub use detokenizer::IncrementalDetokenizer;
pub use template::ChatTemplate;

use crate::error::{EngineError, Result};
use token_bytes::TokenBytes;

/// A special token the engine refers to by role (BOS, EOS), known by both id and text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoleToken {
    id: u32,
    text: String,
}

/// How decoded tokens are put together into text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenJoin {
    /// Token bytes follow each other directly (BPE and SentencePiece vocabularies).
    Concatenate,
    /// A tokenizer.json without a decoder: HF joins the token strings with single spaces.
    Spaces,
}

/// Everything a loader found, before the shared assembly in [`Tokenizer::assemble`].
struct TokenizerParts {
    inner: tokenizers::Tokenizer,
    bytes: TokenBytes,
    join: TokenJoin,
    special_ids: HashSet<u32>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    /// Further ids that end generation (eot/eom, generation_config's list), in priority order.
    extra_eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

/// A model's tokenizer. Immutable after loading, so one instance is shared by all requests.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bytes: TokenBytes,
    join: TokenJoin,
    special_ids: HashSet<u32>,
    bos: Option<RoleToken>,
    eos: Option<RoleToken>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    chat_template: Option<ChatTemplate>,
    /// An MLC conversation template (from mlc-chat-config.json): renders chat prompts in place of the Jinja one.
    conv_template: Option<ConvTemplate>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("eos_ids", &self.eos_ids)
            .field("add_bos", &self.add_bos)
            .field("chat_template", &self.chat_template.is_some())
            .field("conv_template", &self.conv_template.as_ref().map(|c| c.name.clone()))
            .finish()
    }
}

impl Tokenizer {
    /// From the tokenizer stored in GGUF metadata; `path` only names the file in errors.
    pub fn from_gguf(
        content: &candle_core::quantized::gguf_file::Content,
        path: &std::path::Path,
    ) -> Result<Self> {
        Ok(Self::assemble(gguf::load(content, path)?))
    }

    /// From an HF model directory (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`).
    pub fn from_hf_dir(dir: &std::path::Path) -> Result<Self> {
        Ok(Self::assemble(hf::load(dir)?))
    }

    fn assemble(parts: TokenizerParts) -> Self {
        // The text of a role token is what it decodes to, so that templates and stop checks agree
        // with the bytes the model emits.
        let role_token = |id: Option<u32>| {
            let id = id?;
            let bytes = parts.bytes.get(id);
            (!bytes.is_empty()).then(|| RoleToken {
                id,
                text: String::from_utf8_lossy(bytes).into_owned(),
            })
        };
        let bos = role_token(parts.bos_id);
        let eos = role_token(parts.eos_id);
        let mut eos_ids: Vec<u32> = Vec::new();
        for id in parts.eos_id.into_iter().chain(parts.extra_eos_ids) {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        let chat_template = parts.chat_template.and_then(|source| {
            let bos_text = bos.as_ref().map(|t| t.text.clone());
            let eos_text = eos.as_ref().map(|t| t.text.clone());
            match ChatTemplate::new(&source, bos_text, eos_text) {
                Ok(template) => Some(template),
                // Completions still work without a template; chat requests will report it missing.
                Err(e) => {
                    log::warn!("ignoring the model's chat template, it does not compile: {e}");
                    None
                }
            }
        });
        Tokenizer {
            inner: parts.inner,
            bytes: parts.bytes,
            join: parts.join,
            special_ids: parts.special_ids,
            bos,
            eos,
            eos_ids,
            add_bos: parts.add_bos,
            chat_template,
            conv_template: None,
        }
    }

    /// Renders chat prompts with MLC's conversation template `conv` from now on; its stop token ids end
    /// generation like EOS does.
    pub fn with_conv_template(mut self, conv: ConvTemplate) -> Self {
        for &id in conv.stop_token_ids() {
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
        self.conv_template = Some(conv);
        self
    }

    pub fn conv_template(&self) -> Option<&ConvTemplate> {
        self.conv_template.as_ref()
    }

    /// Whether chat requests can be rendered (a conversation template or a Jinja chat template).
    pub fn has_chat_template(&self) -> bool {
        self.conv_template.is_some() || self.chat_template.is_some()
    }

    /// The prompt text of a chat (`messages`: the OpenAI array), to be encoded without adding special tokens.
    /// An MLC conversation template's prefix token ids are written as their token text, which encodes back to
    /// the same ids; Jinja templates get `tools` in their context (conversation templates ignore them).
    pub fn render_chat(&self, messages: &serde_json::Value, add_generation_prompt: bool, tools: Option<&serde_json::Value>) -> Result<String> {
        self.render_chat_with(messages, add_generation_prompt, tools, None)
    }

    /// [`Self::render_chat`] with a request's `chat_template_kwargs` as extra Jinja variables (MLC
    /// conversation templates have no variables and ignore them).
    pub fn render_chat_with(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
        kwargs: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<String> {
        if let Some(conv) = &self.conv_template {
            let rendered = conv.render(messages, add_generation_prompt)?;
            let mut text = String::new();
            for &id in &rendered.prefix_token_ids {
                let token = self.inner.id_to_token(id).filter(|_| self.special_ids.contains(&id)).ok_or_else(|| {
                    EngineError::Template(format!("system_prefix_token_ids: {id} is not a special token of this tokenizer"))
                })?;
                text.push_str(&token);
            }
            text.push_str(&rendered.text);
            return Ok(text);
        }
        let template = self.chat_template.as_ref().ok_or_else(|| {
            EngineError::bad_request("messages", "this model has no chat template; use completions.create with a prompt")
        })?;
        template.render_with(messages, add_generation_prompt, tools, kwargs)
    }

    /// Token ids of `text`. Special-token text in `text` (e.g. `<|im_start|>`) becomes the special id.
    /// With `add_special_tokens`, BOS is prepended when the model asks for it ([`Self::add_bos`]).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(tokenizer_error)?;
        let bos = self
            .bos
            .as_ref()
            .filter(|_| add_special_tokens && self.add_bos);
        let mut ids = Vec::with_capacity(encoding.len() + 1);
        ids.extend(bos.map(|t| t.id));
        ids.extend_from_slice(encoding.get_ids());
        Ok(ids)
    }

    /// Text of `ids` as the tokenizer's decoder produces it (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(tokenizer_error)
    }

    /// Number of ids the tokenizer knows, added tokens included (the largest id + 1).
    pub fn vocab_size(&self) -> usize {
        self.bytes.len()
    }

    /// Id of a vocabulary entry, spelled as in the vocabulary (byte-level BPE spells a space `Ġ`).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The raw bytes `id` stands for; special tokens give the bytes of their text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bytes.get(id).to_vec()
    }

    pub(crate) fn token_bytes_ref(&self, id: u32) -> &[u8] {
        self.bytes.get(id)
    }

    pub(crate) fn token_join(&self) -> TokenJoin {
        self.join
    }

    /// Whether `id` is a special (control) token, the kind `skip_special_tokens` drops.
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|t| t.text.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|t| t.text.as_str())
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|t| t.id)
    }

    /// Every id that ends generation: EOS first, then end-of-turn / end-of-message ids and the
    /// generation config's list, without duplicates.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Whether prompts should start with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }
}

fn tokenizer_error(e: tokenizers::Error) -> EngineError {
    EngineError::Tokenizer(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn shared_types_are_send_and_sync() {
        assert_send_sync::<Tokenizer>();
        assert_send_sync::<ChatTemplate>();
        assert_send_sync::<IncrementalDetokenizer>();
    }
}
